//! One entry point for every model format: an `.onnx` file, a Hugging Face checkpoint
//! folder, or a bare `config.json` (shape-only).

use std::path::{Path, PathBuf};

use shardc_ir::Graph;

use crate::frontend::hf::{self, HfError, LowerOptions};
use crate::frontend::onnx::{self, OnnxError};

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error(transparent)]
    Hf(#[from] HfError),
    #[error("{}: not found", .0.display())]
    NotFound(PathBuf),
}

/// A model in the IR, with what the reports say about where it came from.
#[derive(Debug)]
pub struct LoadedModel {
    pub graph: Graph,
    /// Folder that weight file names are relative to.
    pub weights_dir: PathBuf,
    /// One line on the source: format, opset or architecture, producer.
    pub format: String,
    /// Whether weights have files (false for a bare `config.json`).
    pub has_weights: bool,
    /// Initializers (ONNX) or checkpoint tensors (Hugging Face) the graph does not use.
    pub unused: Vec<String>,
    /// Why the graph has no units (an ONNX graph whose transformer structure was not
    /// found): it runs, but cannot be planned.
    pub no_units: Option<String>,
}

/// Load `path`: a directory is a Hugging Face checkpoint, a `.json` file its config
/// alone, anything else an ONNX file.
pub fn load(path: &Path, options: &LowerOptions) -> Result<LoadedModel, LoadError> {
    if !path.exists() {
        return Err(LoadError::NotFound(path.to_path_buf()));
    }
    let is_json = path.extension().is_some_and(|e| e == "json");
    if path.is_dir() || is_json {
        let m = hf::lower(path, options)?;
        let a = &m.arch;
        let format = if m.has_weights {
            format!(
                "Hugging Face checkpoint, {} ({} layers, hidden {}, {} heads / {} kv heads), {} safetensors file{}",
                a.model_type,
                a.layers,
                a.hidden,
                a.heads,
                a.kv_heads,
                m.files.len(),
                if m.files.len() == 1 { "" } else { "s" }
            )
        } else {
            format!(
                "config.json only (shape-only graph, {} weights), {} ({} layers, hidden {}, {} heads / {} kv heads)",
                a.dtype, a.model_type, a.layers, a.hidden, a.heads, a.kv_heads
            )
        };
        return Ok(LoadedModel {
            graph: m.graph,
            weights_dir: m.dir,
            format,
            has_weights: m.has_weights,
            unused: m.unused_tensors,
            no_units: None,
        });
    }
    let m = onnx::import(path)?;
    let weights_dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok(LoadedModel {
        graph: m.graph,
        weights_dir,
        format: format!("ONNX opset {}, {}", m.opset, m.producer),
        has_weights: true,
        unused: m.unused_initializers,
        no_units: m.structure.err(),
    })
}

//! One entry point for every model format: an `.onnx` file, a Hugging Face checkpoint
//! folder, or a bare `config.json` (shape-only).

use std::path::{Path, PathBuf};

use shardc_ir::Graph;

use crate::frontend::hf::{self, HfError, LowerOptions};
use crate::frontend::onnx::{self, OnnxError};
use crate::inputs::Input;
use shardc_format::plan::{Covers, InputFile};

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error(transparent)]
    Hf(#[from] HfError),
    #[error("{}: not found", .0.display())]
    NotFound(PathBuf),
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
}

/// A model in the IR, with what the reports say about where it came from.
#[derive(Debug)]
pub struct LoadedModel {
    pub graph: Graph,
    /// Folder that weight file names are relative to.
    pub weights_dir: PathBuf,
    /// One line on the source: format, opset or architecture, producer.
    pub format: String,
    /// How `plan.json` names the model: from its content, never its path.
    pub name: String,
    /// Every file read, in the order read (weights: their headers; a compile reads the
    /// rest of the files named here).
    pub inputs: Vec<Input>,
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
        let name = format!(
            "{} ({} layers, hidden {}){}",
            a.model_type,
            a.layers,
            a.hidden,
            if m.has_weights { "" } else { ", config.json only" }
        );
        let mut inputs = vec![if path.is_dir() {
            Input::named(&m.dir, "config", &m.config, Covers::File)
        } else {
            let mut i = Input::named(&m.dir, "config", &m.config, Covers::File);
            (i.path, i.record.name) = (path.to_path_buf(), None);
            i
        }];
        inputs.extend(m.index.iter().map(|d| Input::named(&m.dir, "index", d, Covers::File)));
        inputs.extend(m.headers.iter().map(|d| Input::named(&m.dir, "weights", d, Covers::Header)));
        return Ok(LoadedModel {
            graph: m.graph,
            weights_dir: m.dir,
            format,
            name,
            inputs,
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
    let format = format!("ONNX opset {}, {}", m.opset, m.producer);
    let mut inputs = vec![Input {
        path: path.to_path_buf(),
        record: InputFile {
            role: "onnx".into(),
            name: None,
            bytes: m.bytes,
            covers: Covers::File,
            blake3: Some(m.blake3.clone()),
        },
    }];
    for file in &m.external {
        // Spelled as the model's path was (no `./` before a bare name).
        let path = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.join(file),
            _ => PathBuf::from(file),
        };
        let bytes = std::fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|e| LoadError::Io { path: path.clone(), message: e.to_string() })?;
        let record = InputFile {
            role: "external data".into(),
            name: Some(file.clone()),
            bytes,
            covers: Covers::Size,
            blake3: None,
        };
        inputs.push(Input { path, record });
    }
    Ok(LoadedModel {
        graph: m.graph,
        weights_dir,
        name: format.clone(),
        inputs,
        format,
        has_weights: true,
        unused: m.unused_initializers,
        no_units: m.structure.err(),
    })
}

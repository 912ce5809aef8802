//! Sparse stand-in checkpoints: a real safetensors header for a model's config with a
//! data region that takes no disk space (a hole), for testing and benchmarking that
//! lowering reads headers only.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use shardc_ir::ValueDef;

use super::{lower, HfError, LowerOptions};

/// Write `dir/config.json` (a copy of `config`) and a sparse `dir/model.safetensors`
/// holding every tensor the config's lowering needs; returns the data size in bytes.
pub fn write_sparse_checkpoint(config: &Path, dir: &Path) -> Result<u64, HfError> {
    let io = |file: &Path| {
        let file = file.to_path_buf();
        move |source: std::io::Error| HfError::Io { file: file.clone(), source }
    };
    let target_config = dir.join("config.json");
    std::fs::copy(config, &target_config).map_err(io(&target_config))?;
    let shape_only = lower(&target_config, &LowerOptions::default())?;
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for value in &shape_only.graph.values {
        if let ValueDef::Weight(w) = &value.def {
            let end = offset + w.byte_len();
            header.insert(
                value.name.clone(),
                serde_json::json!({"dtype": w.dtype.safetensors_name(), "shape": w.shape, "data_offsets": [offset, end]}),
            );
            offset = end;
        }
    }
    let mut text = serde_json::Value::Object(header).to_string();
    // Pad the header to 8 bytes, as writers do, so data starts aligned.
    while (text.len() % 8) != 0 {
        text.push(' ');
    }
    let path = dir.join("model.safetensors");
    let mut f = File::create(&path).map_err(io(&path))?;
    f.write_all(&(text.len() as u64).to_le_bytes()).map_err(io(&path))?;
    f.write_all(text.as_bytes()).map_err(io(&path))?;
    f.set_len(8 + text.len() as u64 + offset).map_err(io(&path))?;
    Ok(offset)
}

//! Sparse stand-in checkpoints: a real safetensors header for a model's config with a
//! data region that takes no disk space (a hole), for testing and benchmarking that
//! lowering reads headers only.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use shardc_ir::ValueDef;

use super::safetensors::encode_header;
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
    let tensors: Vec<(&str, shardc_ir::DType, &[usize])> = shape_only
        .graph
        .values
        .iter()
        .filter_map(|v| match &v.def {
            ValueDef::Weight(w) => Some((v.name.as_str(), w.dtype, w.shape.as_slice())),
            _ => None,
        })
        .collect();
    let (header, spans) = encode_header(&tensors);
    let data: u64 = spans.iter().map(|(_, len)| len).sum();
    let path = dir.join("model.safetensors");
    let mut f = File::create(&path).map_err(io(&path))?;
    f.write_all(&header).map_err(io(&path))?;
    f.set_len(header.len() as u64 + data).map_err(io(&path))?;
    Ok(data)
}

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

/// Fill the data region of a checkpoint written by [`write_sparse_checkpoint`] with
/// pseudo-random f16 values (magnitudes in [2^-4, 2^-3), either sign; never NaN), the
/// same bytes every time: a stand-in for a real f16 model in benchmarks.
pub fn fill_random_f16(file: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek};
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(file)?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n)?;
    let start = 8 + u64::from_le_bytes(n);
    let total = f.metadata()?.len();
    f.seek(std::io::SeekFrom::Start(start))?;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut buf = vec![0u8; 1 << 22];
    let mut left = total.saturating_sub(start) as usize;
    while left > 0 {
        for c in buf.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let v = (state & 0x83FF_83FF_83FF_83FF) | 0x2C00_2C00_2C00_2C00;
            c.copy_from_slice(&v.to_le_bytes());
        }
        let k = left.min(buf.len());
        f.write_all(&buf[..k])?;
        left -= k;
    }
    Ok(())
}

//! Sparse stand-in checkpoints: a real safetensors header for a model's config with a
//! data region that takes no disk space (a hole), for testing and benchmarking that
//! lowering reads headers only.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use shardc_ir::{DType, ValueDef};

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

/// Fill the data of a checkpoint written by [`write_sparse_checkpoint`] (`dir`'s
/// `model.safetensors`) with pseudo-random values of each tensor's own type — f16, bf16
/// or f32, magnitudes in [2^-4, 2^-3), either sign, never NaN — the same bytes every
/// time: a stand-in for a real model in benchmarks. (Bit patterns of one type read as
/// another are not: f16 patterns read as f32 are ~10^-12 and make every activation
/// subnormal, which the processor computes many times slower.)
pub fn fill_random(dir: &Path) -> Result<(), HfError> {
    use std::io::{Seek, SeekFrom};
    let path = dir.join("model.safetensors");
    let io = |source: std::io::Error| HfError::Io { file: path.clone(), source };
    let (tensors, _) = super::safetensors::read_header(dir, "model.safetensors")?;
    let mut spans: Vec<(u64, u64, DType, &str)> =
        tensors.iter().map(|(name, t)| (t.location.offset, t.location.length, t.dtype, name.as_str())).collect();
    spans.sort();
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).map_err(io)?;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut buf = Vec::with_capacity(1 << 22);
    for (offset, length, dtype, name) in spans {
        // Sign and mantissa bits random, the exponent that of 2^-4, per 64-bit word.
        let (keep, set) = match dtype {
            DType::F16 => (0x83FF_83FF_83FF_83FFu64, 0x2C00_2C00_2C00_2C00u64),
            DType::BF16 => (0x807F_807F_807F_807F, 0x3D80_3D80_3D80_3D80),
            DType::F32 => (0x807F_FFFF_807F_FFFF, 0x3D80_0000_3D80_0000),
            other => {
                let message = format!("tensor `{name}`: no random {other:?} values to fill it with");
                return Err(HfError::Safetensors { file: path.clone(), message });
            }
        };
        f.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut left = length as usize;
        while left > 0 {
            let k = left.min(1 << 22);
            buf.clear();
            while buf.len() < k {
                buf.extend_from_slice(&((next() & keep) | set).to_le_bytes());
            }
            f.write_all(&buf[..k]).map_err(io)?;
            left -= k;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_fill_writes_each_tensors_own_type_at_a_sixteenth_to_an_eighth() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let config = std::fs::read_to_string(root.join("fixtures/models/llama/hf/config.json")).unwrap();
        for (dtype, width) in [("float32", 4), ("float16", 2), ("bfloat16", 2)] {
            let dir = tempfile::tempdir().unwrap();
            let source = dir.path().join("source.json");
            let text = config.replace("\"torch_dtype\": \"float32\"", &format!("\"torch_dtype\": \"{dtype}\""));
            std::fs::write(&source, text).unwrap();
            let model = dir.path().join("model");
            std::fs::create_dir(&model).unwrap();
            write_sparse_checkpoint(&source, &model).unwrap();
            fill_random(&model).unwrap();
            let first = std::fs::read(model.join("model.safetensors")).unwrap();
            fill_random(&model).unwrap();
            assert_eq!(first, std::fs::read(model.join("model.safetensors")).unwrap(), "{dtype}: same bytes");
            let (tensors, _) = super::super::safetensors::read_header(&model, "model.safetensors").unwrap();
            let mut values = 0;
            for t in tensors.values() {
                let at = t.location.offset as usize..(t.location.offset + t.location.length) as usize;
                for c in first[at].chunks_exact(width) {
                    let v = match t.dtype {
                        DType::F32 => f32::from_le_bytes(c.try_into().unwrap()),
                        DType::F16 => half::f16::from_le_bytes(c.try_into().unwrap()).to_f32(),
                        DType::BF16 => half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32(),
                        other => panic!("{other:?}"),
                    };
                    assert!((0.0625..0.125).contains(&v.abs()), "{dtype}: {v}");
                    values += 1;
                }
            }
            assert!(values > 30_000, "{dtype}: {values} values");
        }
    }
}

//! Writing a stage's `weights.safetensors`: weights copied from the memory-mapped
//! source files in bounded chunks, converted to the requested dtype on the way, names
//! sorted so the same inputs give the same bytes.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use memmap2::Mmap;
use shardc_ir::{DType, Graph, ValueDef, WeightLocation};

use super::EmitError;

/// Bytes converted per step (bounds memory whatever the model size).
const CHUNK_ELEMENTS: usize = 1 << 18;

fn io(path: &Path) -> impl Fn(std::io::Error) -> EmitError + '_ {
    move |e| EmitError::Io { path: path.to_path_buf(), message: e.to_string() }
}

/// Convert little-endian elements between float dtypes (same dtype: copy).
pub fn convert(from: DType, to: DType, src: &[u8], out: &mut Vec<u8>) {
    if from == to {
        out.extend_from_slice(src);
        return;
    }
    let read = |c: &[u8]| -> f32 {
        match from {
            DType::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
            DType::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
            DType::BF16 => half::bf16::from_le_bytes([c[0], c[1]]).to_f32(),
            DType::F64 => f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32,
            _ => 0.0,
        }
    };
    for c in src.chunks_exact(from.size_bytes()) {
        let v = read(c);
        match to {
            DType::F32 => out.extend(v.to_le_bytes()),
            DType::F16 => out.extend(half::f16::from_f32(v).to_le_bytes()),
            DType::BF16 => out.extend(half::bf16::from_f32(v).to_le_bytes()),
            DType::F64 => out.extend(f64::from(v).to_le_bytes()),
            _ => {}
        }
    }
}

/// Write every weight of `stage` (whose locations point into files under `source`)
/// to `path`, each converted to the dtype its weight reference now declares (the
/// source dtype is `stored[value]`); returns the new location of every weight.
pub fn write(
    stage: &Graph,
    stored: &HashMap<usize, (DType, WeightLocation)>,
    source: &Path,
    path: &Path,
    progress: &dyn Fn(u64),
) -> Result<HashMap<usize, WeightLocation>, EmitError> {
    let mut names: Vec<(String, usize)> = stage
        .values
        .iter()
        .enumerate()
        .filter(|(_, v)| matches!(v.def, ValueDef::Weight(_)))
        .map(|(i, v)| (v.name.clone(), i))
        .collect();
    names.sort();
    let mut header = BTreeMap::new();
    let mut offset = 0u64;
    let mut spans = Vec::new();
    for (name, i) in &names {
        let ValueDef::Weight(w) = &stage.values[*i].def else { continue };
        let len = w.byte_len();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": w.dtype.safetensors_name(), "shape": w.shape, "data_offsets": [offset, offset + len]}),
        );
        spans.push((*i, offset, len));
        offset += len;
    }
    let mut text = serde_json::to_string(&header).map_err(|e| EmitError::Io { path: path.to_path_buf(), message: e.to_string() })?;
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let data_start = 8 + text.len() as u64;
    let file = File::create(path).map_err(io(path))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(&(text.len() as u64).to_le_bytes()).map_err(io(path))?;
    out.write_all(text.as_bytes()).map_err(io(path))?;
    let mut maps: HashMap<String, Mmap> = HashMap::new();
    let mut buf = Vec::with_capacity(CHUNK_ELEMENTS * 8);
    let mut locations = HashMap::new();
    for (i, start, len) in spans {
        let ValueDef::Weight(w) = &stage.values[i].def else { continue };
        let (from, loc) = stored.get(&i).ok_or_else(|| EmitError::Weight {
            name: stage.values[i].name.clone(),
            message: "has no file to copy from (a config.json alone cannot be compiled)".into(),
        })?;
        if !maps.contains_key(&loc.file) {
            let src = source.join(&loc.file);
            let f = File::open(&src).map_err(io(&src))?;
            // SAFETY: read-only map of a model file that nothing in this process writes.
            let m = unsafe { Mmap::map(&f) }.map_err(io(&src))?;
            maps.insert(loc.file.clone(), m);
        }
        let map = &maps[&loc.file];
        let end = loc.offset.checked_add(loc.length).filter(|&e| e <= map.len() as u64).ok_or_else(|| EmitError::Weight {
            name: stage.values[i].name.clone(),
            message: format!("bytes {}..{} lie past the end of `{}`", loc.offset, loc.offset + loc.length, loc.file),
        })?;
        let bytes = &map[loc.offset as usize..end as usize];
        let step = CHUNK_ELEMENTS * from.size_bytes();
        for chunk in bytes.chunks(step) {
            buf.clear();
            convert(*from, w.dtype, chunk, &mut buf);
            out.write_all(&buf).map_err(io(path))?;
            progress(chunk.len() as u64);
        }
        locations.insert(i, WeightLocation { file: "weights.safetensors".into(), offset: data_start + start, length: len });
    }
    out.flush().map_err(io(path))?;
    out.into_inner().map_err(|e| EmitError::Io { path: path.to_path_buf(), message: e.to_string() })?.sync_all().map_err(io(path))?;
    Ok(locations)
}

//! Writing a stage's `weights.safetensors`: weights copied from the memory-mapped
//! source files in bounded chunks, converted to the requested dtype on the way, names
//! sorted so the same inputs give the same bytes.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;

use memmap2::Mmap;
use shardc_ir::{DType, Graph, ValueDef, WeightLocation};

use shardc_passes::partition::{Derived, Part};
use shardc_passes::quantize::{quantize_matrix, QuantizedMatrix};

use super::EmitError;
use crate::frontend::hf::safetensors::encode_header;

/// Elements copied per step: large enough that writes bypass the buffer.
const CHUNK_ELEMENTS: usize = 1 << 20;

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
    // Only f32, f16, bf16 and f64 are converted (`--dtype` takes those); callers copy
    // every other dtype as it is.
    for c in src.chunks_exact((from.bits() / 8).max(1) as usize) {
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

/// Quantize the model weight `d` derives from (read from its file's map, converted to
/// f32): both parts, data and scales.
fn quantized(name: &str, d: &Derived, map: &Mmap) -> Result<QuantizedMatrix, EmitError> {
    let fail = |message: String| EmitError::Weight { name: name.to_string(), message };
    let (from, loc) = &d.source;
    let bytes = loc
        .offset
        .checked_add(loc.length)
        .filter(|&e| e <= map.len() as u64)
        .map(|end| &map[loc.offset as usize..end as usize])
        .ok_or_else(|| fail(format!("its source bytes lie past the end of `{}`", loc.file)))?;
    let &[rows, cols] = d.shape.as_slice() else {
        return Err(fail(format!("is quantized from a weight of rank {}, not a matrix", d.shape.len())));
    };
    let mut raw = Vec::with_capacity(rows * cols * 4);
    convert(*from, DType::F32, bytes, &mut raw);
    let values: Vec<f32> = raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    quantize_matrix(&values, [rows, cols], d.axis, d.block, d.scheme).map_err(fail)
}

/// The new location of every weight, and the blake3 hash of the written file.
pub struct Written {
    pub locations: HashMap<usize, WeightLocation>,
    pub hash: String,
}

/// Bytes on their way to the hashing thread.
enum Chunk<'a> {
    /// Bytes written straight from a source map.
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
    /// Hashed up to here: release these source pages.
    Release(&'a Mmap, usize, usize),
}

/// Write every weight of `stage` (whose locations point into files under `source`)
/// to `path`, each converted to the dtype its weight reference now declares (the
/// source dtype is `stored[value]`). Source pages are released after each weight, so
/// resident memory stays bounded whatever the model size.
pub fn write(
    stage: &Graph,
    stored: &HashMap<usize, (DType, WeightLocation)>,
    derived: &HashMap<usize, Derived>,
    source: &Path,
    path: &Path,
    progress: &dyn Fn(u64),
) -> Result<Written, EmitError> {
    let mut names: Vec<(String, usize)> = stage
        .values
        .iter()
        .enumerate()
        .filter(|(_, v)| matches!(v.def, ValueDef::Weight(_)))
        .map(|(i, v)| (v.name.clone(), i))
        .collect();
    names.sort();
    let tensors: Vec<(&str, DType, &[usize])> = names
        .iter()
        .filter_map(|(name, i)| match &stage.values[*i].def {
            ValueDef::Weight(w) => Some((name.as_str(), w.dtype, w.shape.as_slice())),
            _ => None,
        })
        .collect();
    let (header_bytes, offsets) = encode_header(&tensors);
    let spans: Vec<(usize, u64, u64)> =
        names.iter().zip(offsets).map(|((_, i), (start, len))| (*i, start, len)).collect();
    let data_start = header_bytes.len() as u64;
    let mut out = File::create(path).map_err(io(path))?;
    let mut maps: HashMap<String, Mmap> = HashMap::new();
    for (i, _, _) in &spans {
        if let Some((_, loc)) = stored.get(i).or_else(|| derived.get(i).map(|d| &d.source)) {
            if !maps.contains_key(&loc.file) {
                let src = source.join(&loc.file);
                let f = File::open(&src).map_err(io(&src))?;
                // SAFETY: read-only map of a model file that nothing in this process writes.
                let m = unsafe { Mmap::map(&f) }.map_err(io(&src))?;
                maps.insert(loc.file.clone(), m);
            }
        }
    }
    let maps = &maps;
    let mut locations = HashMap::new();
    // A quantized weight's other part (its scales after its data), by source offset.
    let mut pending: HashMap<(String, u64), Vec<u8>> = HashMap::new();
    // Hash on a second thread while this one writes: the file's hash costs no extra pass.
    let hash = std::thread::scope(|scope| -> Result<String, EmitError> {
        let (send, receive) = std::sync::mpsc::sync_channel::<Chunk>(8);
        let hasher = scope.spawn(move || {
            let mut h = blake3::Hasher::new();
            for chunk in receive {
                match chunk {
                    Chunk::Borrowed(bytes) => {
                        h.update(bytes);
                    }
                    Chunk::Owned(v) => {
                        h.update(&v);
                    }
                    Chunk::Release(map, begin, len) => {
                        // Drop the weight's source pages from this process (the page
                        // cache keeps them), so resident memory stays bounded whatever
                        // the model size.
                        // SAFETY: the map is private and read-only; DontNeed only makes
                        // later reads fault pages in again from the file.
                        let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, begin, len) };
                    }
                }
            }
            h.finalize().to_hex().to_string()
        });
        out.write_all(&header_bytes).map_err(io(path))?;
        let _ = send.send(Chunk::Owned(header_bytes));
        for &(i, start, len) in &spans {
            let ValueDef::Weight(w) = &stage.values[i].def else { continue };
            if let Some(d) = derived.get(&i) {
                let name = &stage.values[i].name;
                let key = (d.source.1.file.clone(), d.source.1.offset);
                let bytes = match pending.remove(&key) {
                    Some(bytes) => bytes,
                    None => {
                        let m = quantized(name, d, &maps[&d.source.1.file])?;
                        let (this, other) = match d.part {
                            Part::Data => (m.data_bytes(d.scheme), m.scale_bytes()),
                            Part::Scale => (m.scale_bytes(), m.data_bytes(d.scheme)),
                        };
                        pending.insert(key, other);
                        this
                    }
                };
                if bytes.len() as u64 != len {
                    return Err(EmitError::Weight {
                        name: name.clone(),
                        message: format!("quantized to {} bytes, its header says {len}", bytes.len()),
                    });
                }
                out.write_all(&bytes).map_err(io(path))?;
                progress(bytes.len() as u64);
                let _ = send.send(Chunk::Owned(bytes));
                locations.insert(
                    i,
                    WeightLocation { file: "weights.safetensors".into(), offset: data_start + start, length: len },
                );
                continue;
            }
            let (from, loc) = stored.get(&i).ok_or_else(|| EmitError::Weight {
                name: stage.values[i].name.clone(),
                message: "has no file to copy from (a config.json alone cannot be compiled)".into(),
            })?;
            let map = &maps[&loc.file];
            let end = loc.offset.checked_add(loc.length).filter(|&e| e <= map.len() as u64).ok_or_else(|| {
                EmitError::Weight {
                    name: stage.values[i].name.clone(),
                    message: format!(
                        "bytes {}..{} lie past the end of `{}`",
                        loc.offset,
                        loc.offset + loc.length,
                        loc.file
                    ),
                }
            })?;
            if *from == w.dtype {
                // Same dtype: straight from the map; the hashing thread reads the same pages.
                for chunk in map[loc.offset as usize..end as usize].chunks(CHUNK_ELEMENTS) {
                    out.write_all(chunk).map_err(io(path))?;
                    let _ = send.send(Chunk::Borrowed(chunk));
                    progress(chunk.len() as u64);
                }
            } else {
                let bytes: &[u8] = &map[loc.offset as usize..end as usize];
                let (from_bytes, to_bytes) = ((from.bits() / 8) as usize, (w.dtype.bits() / 8) as usize);
                let step = CHUNK_ELEMENTS * from_bytes;
                for chunk in bytes.chunks(step) {
                    let mut buf = Vec::with_capacity(chunk.len() / from_bytes * to_bytes);
                    convert(*from, w.dtype, chunk, &mut buf);
                    out.write_all(&buf).map_err(io(path))?;
                    let _ = send.send(Chunk::Owned(buf));
                    progress(chunk.len() as u64);
                }
            }
            locations.insert(
                i,
                WeightLocation { file: "weights.safetensors".into(), offset: data_start + start, length: len },
            );
            let begin = (loc.offset as usize / 4096) * 4096;
            let _ = send.send(Chunk::Release(map, begin, end as usize - begin));
        }
        drop(send);
        hasher.join().map_err(|_| EmitError::Other("the hashing thread failed".into()))
    })?;
    Ok(Written { locations, hash })
}

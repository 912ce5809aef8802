//! Safetensors headers (and sharded checkpoints' index files), read without touching
//! tensor data.
//!
//! Format: an 8-byte little-endian header length `N`, `N` bytes of JSON mapping each
//! tensor name to `{dtype, shape, data_offsets: [begin, end]}` (plus an optional
//! `__metadata__` map of strings), then the data; offsets are relative to the data
//! start, `8 + N`. Headers are read and checked by the `safetensors` crate (the one
//! codec of weights and frames). Headers are *written* here ([`encode_header`]) for one
//! reason: the crate writes `__metadata__` from a `HashMap`, in an order that changes
//! from run to run, and a compile's output must be byte-identical.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use ::safetensors::SafeTensors;
use shardc_ir::{DType, WeightLocation};

use super::HfError;

/// One tensor of a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// File (relative to the checkpoint folder), absolute byte offset and length.
    pub location: WeightLocation,
}

/// Every tensor of a checkpoint, by name.
#[derive(Clone, Debug, Default)]
pub struct Checkpoint {
    pub tensors: BTreeMap<String, TensorInfo>,
    /// The safetensors files read, relative to the folder.
    pub files: Vec<String>,
    /// `model.safetensors.index.json`, when the checkpoint is sharded: the whole file.
    pub index: Option<Digest>,
    /// Each file of `files`: its size and the blake3 of its header (length and JSON),
    /// which is all a plan depends on.
    pub headers: Vec<Digest>,
}

/// A file read, by content: its name in the checkpoint folder, size and blake3 (of the
/// whole file, or of a safetensors file's header).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Digest {
    pub file: String,
    pub bytes: u64,
    pub blake3: String,
}

/// Read the header of one safetensors file; `rel` is its name relative to `dir`. The
/// `safetensors` crate reads and checks it (from a memory map: only the header's pages
/// are touched): header length against the file, JSON, dtypes, lengths against dtype
/// × shape, and offsets that tile the data exactly to the end of the file.
pub fn read_header(dir: &Path, rel: &str) -> Result<(BTreeMap<String, TensorInfo>, Digest), HfError> {
    let path = dir.join(rel);
    let bad = |message: String| HfError::Safetensors { file: path.clone(), message };
    let file = File::open(&path).map_err(|e| HfError::Io { file: path.clone(), source: e })?;
    // SAFETY: the map is read only, and only while this function runs; shardc never
    // writes its inputs. Another process rewriting the file meanwhile could change the
    // bytes under the checks (as it could between any two reads) or, by truncating it,
    // fault the read — the same contract as the weight maps the compile copies from.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| HfError::Io { file: path.clone(), source: e })?;
    let (n, header) =
        SafeTensors::read_metadata(&map[..]).map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
    let data_start = 8 + n as u64;
    let mut tensors = BTreeMap::new();
    for (name, info) in header.tensors() {
        let tbad = |message: String| bad(format!("tensor `{name}`: {message}"));
        let dtype = DType::from_safetensors(&info.dtype.to_string())
            .ok_or_else(|| tbad(format!("unsupported dtype `{}`", info.dtype)))?;
        let (begin, end) = info.data_offsets;
        let location =
            WeightLocation { file: rel.to_string(), offset: data_start + begin as u64, length: (end - begin) as u64 };
        tensors.insert(name, TensorInfo { dtype, shape: info.shape.clone(), location });
    }
    let digest = Digest {
        file: rel.to_string(),
        bytes: map.len() as u64,
        blake3: blake3::hash(&map[..data_start as usize]).to_hex().to_string(),
    };
    Ok((tensors, digest))
}

/// The start of a safetensors file holding `tensors` (name, dtype, shape) back to back
/// in the given order: the 8-byte header length and the JSON header, padded with
/// spaces to 8 bytes so the data starts aligned. Returns those bytes and each tensor's
/// (offset from the data start, length).
///
/// A dtype safetensors cannot name (the 4-bit types, the `fnuz` 8-bit floats) is
/// stored as its raw bytes, `U8` of shape `[bytes]`, and the header's `__metadata__`
/// says what they are: `shardc.dtype.NAME` = `i4[3, 4]` (dtype and shape as the text
/// IR spells them).
pub fn encode_header(tensors: &[(&str, DType, &[usize])]) -> (Vec<u8>, Vec<(u64, u64)>) {
    let mut header = serde_json::Map::new();
    let mut metadata = serde_json::Map::new();
    let mut spans = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for &(name, dtype, shape) in tensors {
        let elements = shape.iter().map(|&d| d as u64).product::<u64>();
        let len = dtype.byte_len(elements).unwrap_or(u64::MAX);
        let entry = match dtype.safetensors_name() {
            Some(st) => serde_json::json!({"dtype": st, "shape": shape, "data_offsets": [offset, offset + len]}),
            None => {
                let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
                metadata.insert(
                    format!("shardc.dtype.{name}"),
                    serde_json::Value::String(format!("{dtype}[{}]", dims.join(", "))),
                );
                serde_json::json!({"dtype": "U8", "shape": [len], "data_offsets": [offset, offset + len]})
            }
        };
        header.insert(name.to_string(), entry);
        spans.push((offset, len));
        offset += len;
    }
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::Value::Object(metadata));
    }
    let mut text = serde_json::Value::Object(header).to_string();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend(text.as_bytes());
    (bytes, spans)
}

/// Read a checkpoint folder: `model.safetensors`, or the shards an index file names.
pub fn read_checkpoint(dir: &Path) -> Result<Checkpoint, HfError> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        return read_sharded(dir, &index);
    }
    let single = dir.join("model.safetensors");
    if !single.exists() {
        return Err(HfError::NoWeights { dir: dir.to_path_buf() });
    }
    let (tensors, header) = read_header(dir, "model.safetensors")?;
    Ok(Checkpoint { tensors, files: vec!["model.safetensors".into()], index: None, headers: vec![header] })
}

fn read_sharded(dir: &Path, index: &Path) -> Result<Checkpoint, HfError> {
    let bad = |message: String| HfError::Index { file: index.to_path_buf(), message };
    let text =
        shardc_format::files::read_text(index).map_err(|e| HfError::Io { file: index.to_path_buf(), source: e })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let name = index.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let digest =
        Digest { file: name, bytes: text.len() as u64, blake3: blake3::hash(text.as_bytes()).to_hex().to_string() };
    let map = json["weight_map"].as_object().ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut by_shard: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (tensor, shard) in map {
        let shard = shard.as_str().ok_or_else(|| bad(format!("shard of `{tensor}` is not a string")))?;
        if shard.contains('/') || shard.contains('\\') || shard == ".." || shard.is_empty() {
            return Err(bad(format!("shard `{shard}` of `{tensor}` must be a file name in the checkpoint folder")));
        }
        by_shard.entry(shard.to_string()).or_default().push(tensor.clone());
    }
    let mut checkpoint = Checkpoint { index: Some(digest), ..Checkpoint::default() };
    for (shard, names) in &by_shard {
        if !dir.join(shard).is_file() {
            return Err(bad(format!("names shard `{shard}` (for `{}`), which does not exist", names[0])));
        }
        let (tensors, header) = read_header(dir, shard)?;
        checkpoint.headers.push(header);
        for name in names {
            let info = tensors.get(name).ok_or_else(|| bad(format!("says `{name}` is in `{shard}`, but it is not")))?;
            checkpoint.tensors.insert(name.clone(), info.clone());
        }
        checkpoint.files.push(shard.clone());
    }
    Ok(checkpoint)
}

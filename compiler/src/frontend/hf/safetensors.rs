//! Safetensors headers (and sharded checkpoints' index files), read without touching
//! tensor data.
//!
//! Format: an 8-byte little-endian header length `N`, `N` bytes of JSON mapping each
//! tensor name to `{dtype, shape, data_offsets: [begin, end]}` (plus an optional
//! `__metadata__` map of strings), then the data; offsets are relative to the data
//! start, `8 + N`. This reader checks what a lying file could get wrong: the header
//! length against the file size, unknown dtypes, lengths that disagree with dtype ×
//! shape, offsets past the end of the file, and tensors whose byte ranges overlap.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use shardc_ir::{DType, WeightLocation};

use super::HfError;

/// Largest header shardc accepts (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100 * 1024 * 1024;

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
}

/// Read the header of one safetensors file; `rel` is its name relative to `dir`.
pub fn read_header(dir: &Path, rel: &str) -> Result<BTreeMap<String, TensorInfo>, HfError> {
    let path = dir.join(rel);
    let bad = |message: String| HfError::Safetensors { file: path.clone(), message };
    let mut f = File::open(&path).map_err(|e| HfError::Io { file: path.clone(), source: e })?;
    let file_len = f.metadata().map_err(|e| HfError::Io { file: path.clone(), source: e })?.len();
    let mut len_bytes = [0u8; 8];
    f.read_exact(&mut len_bytes).map_err(|_| bad(format!("the file is {file_len} bytes, too short for a header")))?;
    let n = u64::from_le_bytes(len_bytes);
    if n > MAX_HEADER || 8 + n > file_len {
        return Err(bad(format!("header length {n} does not fit the file ({file_len} bytes)")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| bad(format!("cannot read the header: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let obj = json.as_object().ok_or_else(|| bad("header is not a JSON object".into()))?;
    let data_start = 8 + n;
    let data_len = file_len - data_start;
    let mut tensors = BTreeMap::new();
    let mut ranges: Vec<(u64, u64, &str)> = Vec::new();
    for (name, entry) in obj {
        if name == "__metadata__" {
            continue;
        }
        let tbad = |message: String| bad(format!("tensor `{name}`: {message}"));
        let dtype_name = entry["dtype"].as_str().ok_or_else(|| tbad("no dtype".into()))?;
        let dtype =
            DType::from_safetensors(dtype_name).ok_or_else(|| tbad(format!("unsupported dtype `{dtype_name}`")))?;
        let shape: Vec<usize> = entry["shape"]
            .as_array()
            .ok_or_else(|| tbad("no shape".into()))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| tbad("shape must be non-negative integers".into()))?;
        let offsets = entry["data_offsets"].as_array().ok_or_else(|| tbad("no data_offsets".into()))?;
        let (begin, end) = match offsets.as_slice() {
            [b, e] => (b.as_u64(), e.as_u64()),
            _ => (None, None),
        };
        let (Some(begin), Some(end)) = (begin, end) else {
            return Err(tbad("data_offsets must be two non-negative integers".into()));
        };
        if begin > end {
            return Err(tbad(format!("data_offsets [{begin}, {end}] are reversed")));
        }
        if end > data_len {
            return Err(tbad(format!("data_offsets [{begin}, {end}] run past the end of the data ({data_len} bytes)")));
        }
        let expected = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .and_then(|n| dtype.byte_len(n))
            .ok_or_else(|| tbad(format!("shape {shape:?} is too large")))?;
        if end - begin != expected {
            return Err(tbad(format!("{} bytes of data, but {dtype_name} {shape:?} needs {expected}", end - begin)));
        }
        ranges.push((begin, end, name));
        let location = WeightLocation { file: rel.to_string(), offset: data_start + begin, length: end - begin };
        tensors.insert(name.clone(), TensorInfo { dtype, shape, location });
    }
    ranges.sort();
    for pair in ranges.windows(2) {
        let ((_, end_a, a), (begin_b, _, b)) = (pair[0], pair[1]);
        if begin_b < end_a {
            return Err(bad(format!("tensors `{a}` and `{b}` overlap (bytes {begin_b}..{end_a})")));
        }
    }
    Ok(tensors)
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
    while text.len() % 8 != 0 {
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
    Ok(Checkpoint { tensors: read_header(dir, "model.safetensors")?, files: vec!["model.safetensors".into()] })
}

fn read_sharded(dir: &Path, index: &Path) -> Result<Checkpoint, HfError> {
    let bad = |message: String| HfError::Index { file: index.to_path_buf(), message };
    let text =
        shardc_format::files::read_text(index).map_err(|e| HfError::Io { file: index.to_path_buf(), source: e })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let map = json["weight_map"].as_object().ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut by_shard: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (tensor, shard) in map {
        let shard = shard.as_str().ok_or_else(|| bad(format!("shard of `{tensor}` is not a string")))?;
        if shard.contains('/') || shard.contains('\\') || shard == ".." || shard.is_empty() {
            return Err(bad(format!("shard `{shard}` of `{tensor}` must be a file name in the checkpoint folder")));
        }
        by_shard.entry(shard.to_string()).or_default().push(tensor.clone());
    }
    let mut checkpoint = Checkpoint::default();
    for (shard, names) in &by_shard {
        if !dir.join(shard).is_file() {
            return Err(bad(format!("names shard `{shard}` (for `{}`), which does not exist", names[0])));
        }
        let tensors = read_header(dir, shard)?;
        for name in names {
            let info = tensors.get(name).ok_or_else(|| bad(format!("says `{name}` is in `{shard}`, but it is not")))?;
            checkpoint.tensors.insert(name.clone(), info.clone());
        }
        checkpoint.files.push(shard.clone());
    }
    Ok(checkpoint)
}

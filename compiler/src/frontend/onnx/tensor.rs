//! Tensor payloads of ONNX `TensorProto`s: references into the model file or its
//! external data files, or small values decoded from the typed fields.
//!
//! The typed fields are decoded here by hand (`float_data`, `int32_data` holding every
//! narrow integer, bool and the bit patterns of f16/bf16, `int64_data`, `double_data`,
//! `uint64_data` holding u32 and u64), as the ONNX spec lays them out.

use std::collections::HashMap;
use std::path::{Component, Path};

use onnx_protobuf::{tensor_proto::DataLocation, TensorProto};
use shardc_ir::{DType, TensorData, ValueDef, WeightLocation, WeightRef};

use super::wire::{PayloadOwner, Span};
use super::{OnnxError, OnnxErrorKind, INLINE_MAX_ELEMENTS};

/// A tensor problem, before it is tied to the model file.
#[derive(Debug)]
pub enum TensorError {
    Kind(OnnxErrorKind),
    Node { node: String, message: String },
}

impl TensorError {
    pub fn at(self, file: &Path) -> OnnxError {
        let kind = match self {
            TensorError::Kind(k) => k,
            TensorError::Node { node, message } => OnnxErrorKind::Node { node, op: "Constant".into(), message },
        };
        OnnxError { file: file.to_path_buf(), kind }
    }
}

impl std::fmt::Display for TensorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TensorError::Kind(k) => k.fmt(f),
            TensorError::Node { node, message } => write!(f, "node `{node}`: {message}"),
        }
    }
}

impl From<OnnxErrorKind> for TensorError {
    fn from(k: OnnxErrorKind) -> Self {
        TensorError::Kind(k)
    }
}

/// Where a tensor's bytes are.
pub enum Payload {
    /// Bytes on disk (model file or external data), not read.
    Located { name: String, dtype: DType, shape: Vec<usize>, location: WeightLocation },
    /// Decoded from the message's typed fields.
    Inline(TensorData),
}

/// Reads tensor payloads for one model file.
pub struct TensorReader<'a> {
    pub map: &'a [u8],
    pub model_dir: &'a Path,
    pub model_file_name: &'a str,
    pub payloads: &'a HashMap<PayloadOwner, Span>,
    /// External data files located so far (names relative to the model's folder).
    pub external: std::cell::RefCell<std::collections::BTreeSet<String>>,
}

impl TensorReader<'_> {
    /// Locate (or decode) the payload of `t`, checking its length against dtype × shape.
    pub fn read(&self, t: &TensorProto, owner: PayloadOwner) -> Result<Payload, TensorError> {
        let name = t.name.clone();
        let bad = |message: String| OnnxErrorKind::Tensor { tensor: name.clone(), message };
        let dtype =
            DType::from_onnx(t.data_type).ok_or_else(|| bad(format!("unsupported data type code {}", t.data_type)))?;
        let mut shape = Vec::with_capacity(t.dims.len());
        for &d in &t.dims {
            shape.push(usize::try_from(d).map_err(|_| bad(format!("negative dimension {d} in {:?}", t.dims)))?);
        }
        let expected = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .and_then(|n| dtype.byte_len(n))
            .ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
        let length_error = |actual: u64| OnnxErrorKind::DataLength {
            tensor: name.clone(),
            dtype: dtype.to_string(),
            shape: shape.clone(),
            expected,
            actual,
        };

        if t.data_location.enum_value() == Ok(DataLocation::EXTERNAL) {
            let location = self.external(t, expected, &length_error)?;
            return Ok(Payload::Located { name, dtype, shape, location });
        }
        if let Some(span) = self.payloads.get(&owner) {
            if span.length != expected {
                return Err(length_error(span.length).into());
            }
            let location =
                WeightLocation { file: self.model_file_name.to_string(), offset: span.offset, length: span.length };
            return Ok(Payload::Located { name, dtype, shape, location });
        }
        let bytes = decode_typed_fields(t, dtype, &shape).map_err(bad)?;
        if bytes.len() as u64 != expected {
            return Err(length_error(bytes.len() as u64).into());
        }
        Ok(Payload::Inline(TensorData::from_le_bytes(dtype, shape, bytes).map_err(|e| bad(e.to_string()))?))
    }

    fn external(
        &self,
        t: &TensorProto,
        expected: u64,
        length_error: &dyn Fn(u64) -> OnnxErrorKind,
    ) -> Result<WeightLocation, TensorError> {
        let name = &t.name;
        let bad = |message: String| OnnxErrorKind::Tensor { tensor: name.clone(), message };
        let mut location = None;
        let mut offset = 0u64;
        let mut length = None;
        for entry in &t.external_data {
            let parse = |v: &str| {
                v.parse::<u64>().map_err(|_| bad(format!("external data {} `{v}` is not a number", entry.key)))
            };
            match entry.key.as_str() {
                "location" => location = Some(entry.value.clone()),
                "offset" => offset = parse(&entry.value)?,
                "length" => length = Some(parse(&entry.value)?),
                _ => {}
            }
        }
        let location = location.ok_or_else(|| bad("external data without a location".into()))?;
        let path_error = |reason: &str| OnnxErrorKind::ExternalPath {
            tensor: name.clone(),
            location: location.clone(),
            reason: reason.to_string(),
        };
        let rel = Path::new(&location);
        if rel.is_absolute() || location.starts_with('/') || location.starts_with('\\') {
            return Err(path_error("is absolute; external data must sit in the model's folder").into());
        }
        if rel.components().any(|c| matches!(c, Component::ParentDir)) || location.split(['/', '\\']).any(|c| c == "..")
        {
            return Err(path_error("contains `..`; external data must sit in the model's folder").into());
        }
        if !rel.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
            return Err(path_error("is not a plain relative path").into());
        }
        let full = self.model_dir.join(rel);
        let canonical = full.canonicalize().map_err(|e| path_error(&format!("cannot be opened: {e}")))?;
        let dir =
            self.model_dir.canonicalize().map_err(|e| path_error(&format!("model folder cannot be opened: {e}")))?;
        if !canonical.starts_with(&dir) {
            return Err(path_error("resolves (through a link) outside the model's folder").into());
        }
        let file_len = std::fs::metadata(&canonical).map_err(|e| path_error(&format!("cannot be read: {e}")))?.len();
        let length = length.unwrap_or(expected);
        if offset.checked_add(length).is_none_or(|end| end > file_len) {
            return Err(OnnxErrorKind::ExternalRange {
                tensor: name.clone(),
                data_file: location.clone(),
                offset,
                length,
                file_len,
            }
            .into());
        }
        if length != expected {
            return Err(length_error(length).into());
        }
        let file = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("/");
        self.external.borrow_mut().insert(file.clone());
        Ok(WeightLocation { file, offset, length })
    }

    /// Read the bytes of a small located tensor (inline constants only).
    fn bytes(&self, location: &WeightLocation) -> Result<Vec<u8>, OnnxErrorKind> {
        let range = location.offset as usize..(location.offset + location.length) as usize;
        if location.file == self.model_file_name {
            return Ok(self.map[range].to_vec());
        }
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(self.model_dir.join(&location.file))?;
        f.seek(SeekFrom::Start(location.offset))?;
        let mut buf = vec![0; location.length as usize];
        f.read_exact(&mut buf)?;
        Ok(buf)
    }
}

impl Payload {
    /// The IR definition: a weight reference, or an inline constant for small
    /// integer tensors (and, for `Constant` nodes, any small tensor).
    pub fn into_def(self, reader: &TensorReader, constant_node: bool) -> Result<ValueDef, TensorError> {
        match self {
            Payload::Inline(t) => Ok(ValueDef::Const(t)),
            Payload::Located { name, dtype, shape, location } => {
                let elements: usize = shape.iter().product();
                if elements <= INLINE_MAX_ELEMENTS && (constant_node || !dtype.is_float()) {
                    let bytes = reader.bytes(&location)?;
                    let t = TensorData::from_le_bytes(dtype, shape, bytes)
                        .map_err(|e| OnnxErrorKind::Tensor { tensor: name, message: e.to_string() })?;
                    Ok(ValueDef::Const(t))
                } else {
                    Ok(ValueDef::Weight(WeightRef { dtype, shape, location: Some(location) }))
                }
            }
        }
    }

    /// The tensor's values, read if located (attribute tensors are small).
    pub fn into_inline(self, reader: &TensorReader) -> Result<TensorData, TensorError> {
        match self {
            Payload::Inline(t) => Ok(t),
            Payload::Located { name, dtype, shape, location } => {
                let elements: usize = shape.iter().product();
                if elements > 1 << 16 {
                    return Err(OnnxErrorKind::Tensor {
                        tensor: name,
                        message: format!("attribute tensor of {elements} elements is too large to hold inline"),
                    }
                    .into());
                }
                let bytes = reader.bytes(&location)?;
                Ok(TensorData::from_le_bytes(dtype, shape, bytes)
                    .map_err(|e| OnnxErrorKind::Tensor { tensor: name, message: e.to_string() })?)
            }
        }
    }
}

/// Decode the typed repeated fields into little-endian element bytes, as the ONNX
/// spec lays them out: one element per `int32_data` entry for types of 8 bits or more
/// (16-bit floats and 8-bit floats as their bit patterns), one byte of two packed
/// elements per entry for the 4-bit types.
fn decode_typed_fields(t: &TensorProto, dtype: DType, shape: &[usize]) -> Result<Vec<u8>, String> {
    let elements: usize = shape.iter().product();
    let (entries, bytes): (usize, Vec<u8>) = match dtype {
        DType::F32 => (t.float_data.len(), t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        DType::F64 => (t.double_data.len(), t.double_data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        DType::I64 => (t.int64_data.len(), t.int64_data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        DType::U64 => (t.uint64_data.len(), t.uint64_data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        DType::U32 => (t.uint64_data.len(), t.uint64_data.iter().flat_map(|&v| (v as u32).to_le_bytes()).collect()),
        DType::I32 => (t.int32_data.len(), t.int32_data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        DType::I16 => (t.int32_data.len(), t.int32_data.iter().flat_map(|&v| (v as i16).to_le_bytes()).collect()),
        DType::U16 | DType::F16 | DType::BF16 => {
            (t.int32_data.len(), t.int32_data.iter().flat_map(|&v| (v as u16).to_le_bytes()).collect())
        }
        DType::I8
        | DType::U8
        | DType::F8E4M3FN
        | DType::F8E4M3FNUZ
        | DType::F8E5M2
        | DType::F8E5M2FNUZ
        | DType::F8E8M0 => (t.int32_data.len(), t.int32_data.iter().map(|&v| v as u8).collect()),
        DType::Bool => (t.int32_data.len(), t.int32_data.iter().map(|&v| u8::from(v != 0)).collect()),
        DType::I4 | DType::U4 | DType::F4E2M1 => {
            // Two elements per entry: the entry count is the packed byte count.
            let bytes: Vec<u8> = t.int32_data.iter().map(|&v| v as u8).collect();
            (bytes.len() * 2 - usize::from(elements % 2 == 1 && !bytes.is_empty()), bytes)
        }
    };
    if entries != elements {
        return Err(format!(
            "{} {shape:?} needs {elements} elements, the tensor holds {entries} (and no raw data)",
            dtype
        ));
    }
    Ok(bytes)
}

//! Tensor contents: small inline constants and references to weights on disk.

use crate::minifloat::RoundMode;
use crate::DType;

/// A small constant held in the IR: little-endian element bytes.
#[derive(Clone, PartialEq, Debug)]
pub struct TensorData {
    pub dtype: DType,
    pub shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// Why bytes could not become a [`TensorData`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{dtype} tensor of shape {shape:?} needs {expected} bytes, got {actual}")]
pub struct TensorSizeError {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub expected: usize,
    pub actual: usize,
}

impl TensorData {
    /// Wrap little-endian bytes; the length must be what elements × element bits take
    /// (4-bit elements packed two to a byte, low nibble first).
    pub fn from_le_bytes(dtype: DType, shape: Vec<usize>, bytes: Vec<u8>) -> Result<TensorData, TensorSizeError> {
        let elements = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        let expected = elements.and_then(|n| dtype.byte_len(n)).and_then(|b| usize::try_from(b).ok());
        if expected != Some(bytes.len()) {
            return Err(TensorSizeError {
                dtype,
                shape,
                expected: expected.unwrap_or(usize::MAX),
                actual: bytes.len(),
            });
        }
        Ok(TensorData { dtype, shape, bytes })
    }

    /// An i64 tensor.
    pub fn from_i64(shape: Vec<usize>, values: &[i64]) -> TensorData {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        TensorData { dtype: DType::I64, shape, bytes }
    }

    /// Build a tensor of `dtype` from f64 element values: floats rounded to the type
    /// (out-of-range values become what the type holds of them: infinity or NaN; the
    /// largest value in `f4e2m1`), integers truncated toward zero and wrapped to the
    /// type's width, bool non-zero.
    pub fn from_f64_values(dtype: DType, shape: Vec<usize>, values: &[f64]) -> TensorData {
        let mut bytes = Vec::with_capacity(dtype.byte_len(values.len() as u64).unwrap_or(0) as usize);
        let mut nibbles = Vec::new();
        for &v in values {
            match dtype {
                DType::F32 => bytes.extend((v as f32).to_le_bytes()),
                DType::F64 => bytes.extend(v.to_le_bytes()),
                DType::F16 => bytes.extend(half::f16::from_f64(v).to_le_bytes()),
                DType::BF16 => bytes.extend(half::bf16::from_f64(v).to_le_bytes()),
                DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ => {
                    bytes.push(dtype.minifloat().map_or(0, |f| f.encode(v as f32, false)))
                }
                DType::F8E8M0 => bytes.push(crate::minifloat::encode_e8m0(v as f32, true, RoundMode::Up)),
                DType::F4E2M1 => nibbles.push(crate::minifloat::Format::E2M1.encode(v as f32, false)),
                DType::I4 | DType::U4 => nibbles.push((v as i64 as u8) & 0x0F),
                DType::I8 => bytes.extend((v as i64 as i8).to_le_bytes()),
                DType::I16 => bytes.extend((v as i64 as i16).to_le_bytes()),
                DType::I32 => bytes.extend((v as i64 as i32).to_le_bytes()),
                DType::I64 => bytes.extend((v as i64).to_le_bytes()),
                DType::U8 => bytes.extend((v as i64 as u8).to_le_bytes()),
                DType::U16 => bytes.extend((v as i64 as u16).to_le_bytes()),
                DType::U32 => bytes.extend((v as i64 as u32).to_le_bytes()),
                DType::U64 => bytes.extend((v as u64).to_le_bytes()),
                DType::Bool => bytes.push(u8::from(v != 0.0)),
            }
        }
        if dtype.bits() == 4 {
            bytes = pack_nibbles(&nibbles);
        }
        TensorData { dtype, shape, bytes }
    }

    /// The raw little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements as i64, for integer and bool tensors (shape arithmetic).
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        if self.dtype.is_float() {
            return None;
        }
        self.i64_elements()
    }

    /// Elements as f64 (exact for every dtype except i64/u64 beyond 2^53).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        decode_f64(self.dtype, &self.bytes, self.len())
    }

    /// Exact elements of integer and bool tensors (u64 beyond `i64::MAX` wraps).
    pub fn i64_elements(&self) -> Option<Vec<i64>> {
        if self.dtype.is_float() {
            return None;
        }
        decode_i64(self.dtype, &self.bytes, self.len())
    }
}

/// Pack 4-bit codes two to a byte, low nibble first (ONNX's layout).
pub fn pack_nibbles(codes: &[u8]) -> Vec<u8> {
    codes.chunks(2).map(|p| (p[0] & 0x0F) | (p.get(1).copied().unwrap_or(0) << 4)).collect()
}

/// The 4-bit codes of `n` packed elements.
pub fn unpack_nibbles(bytes: &[u8], n: usize) -> Vec<u8> {
    (0..n).map(|i| bytes.get(i / 2).map_or(0, |b| if i % 2 == 0 { b & 0x0F } else { b >> 4 })).collect()
}

/// Exact integer (and bool) elements of `n` elements stored as `dtype`; `None` for floats
/// or too few bytes.
pub fn decode_i64(dtype: DType, bytes: &[u8], n: usize) -> Option<Vec<i64>> {
    let need = dtype.byte_len(n as u64)? as usize;
    if bytes.len() < need {
        return None;
    }
    let b = &bytes[..need];
    Some(match dtype {
        DType::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default())).collect(),
        DType::U64 => b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()) as i64).collect(),
        DType::I32 => {
            b.chunks_exact(4).map(|c| i64::from(i32::from_le_bytes(c.try_into().unwrap_or_default()))).collect()
        }
        DType::U32 => {
            b.chunks_exact(4).map(|c| i64::from(u32::from_le_bytes(c.try_into().unwrap_or_default()))).collect()
        }
        DType::I16 => b.chunks_exact(2).map(|c| i64::from(i16::from_le_bytes([c[0], c[1]]))).collect(),
        DType::U16 => b.chunks_exact(2).map(|c| i64::from(u16::from_le_bytes([c[0], c[1]]))).collect(),
        DType::I8 => b.iter().map(|&c| i64::from(c as i8)).collect(),
        DType::U8 => b.iter().map(|&c| i64::from(c)).collect(),
        DType::Bool => b.iter().map(|&c| i64::from(c != 0)).collect(),
        DType::I4 => unpack_nibbles(b, n).into_iter().map(|c| i64::from(((c << 4) as i8) >> 4)).collect(),
        DType::U4 => unpack_nibbles(b, n).into_iter().map(i64::from).collect(),
        _ => return None,
    })
}

/// Elements as f64 of `n` elements stored as `dtype` (missing bytes read as zero).
pub fn decode_f64(dtype: DType, bytes: &[u8], n: usize) -> Vec<f64> {
    if let Some(ints) = decode_i64(dtype, bytes, n) {
        return ints.into_iter().map(|v| if dtype == DType::U64 { v as u64 as f64 } else { v as f64 }).collect();
    }
    let code = |i: usize| bytes.get(i).copied().unwrap_or(0);
    match dtype {
        DType::F32 => (0..n).map(|i| f64::from(f32::from_le_bytes(std::array::from_fn(|k| code(4 * i + k))))).collect(),
        DType::F64 => (0..n).map(|i| f64::from_le_bytes(std::array::from_fn(|k| code(8 * i + k)))).collect(),
        DType::F16 => (0..n).map(|i| half::f16::from_le_bytes([code(2 * i), code(2 * i + 1)]).to_f64()).collect(),
        DType::BF16 => (0..n).map(|i| half::bf16::from_le_bytes([code(2 * i), code(2 * i + 1)]).to_f64()).collect(),
        DType::F8E8M0 => (0..n).map(|i| f64::from(crate::minifloat::decode_e8m0(code(i)))).collect(),
        DType::F4E2M1 => {
            unpack_nibbles(bytes, n).into_iter().map(|c| f64::from(crate::minifloat::Format::E2M1.decode(c))).collect()
        }
        d => match d.minifloat() {
            Some(f) => (0..n).map(|i| f64::from(f.decode(code(i)))).collect(),
            None => vec![0.0; n],
        },
    }
}

/// Where a weight's bytes are: a file (relative to the model's folder), a byte offset
/// and a length. Nothing reads them while compiling.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WeightLocation {
    pub file: String,
    pub offset: u64,
    pub length: u64,
}

/// A weight: its element type and shape, and where its bytes live (`None` for a
/// shape-only model planned without the files).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WeightRef {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub location: Option<WeightLocation>,
}

impl WeightRef {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }

    /// Bytes the weight takes at its dtype (saturating at `u64::MAX`).
    pub fn byte_len(&self) -> u64 {
        self.dtype.byte_len(self.elements()).unwrap_or(u64::MAX)
    }
}

impl TensorData {
    /// Build a tensor of integer or bool `dtype` from exact i64 values, wrapped to the
    /// type's width (bool: non-zero). Float dtypes go through f64.
    pub fn from_ints(dtype: DType, shape: Vec<usize>, values: &[i64]) -> TensorData {
        let mut bytes = Vec::with_capacity(dtype.byte_len(values.len() as u64).unwrap_or(0) as usize);
        for &v in values {
            match dtype {
                DType::I64 => bytes.extend(v.to_le_bytes()),
                DType::U64 => bytes.extend((v as u64).to_le_bytes()),
                DType::I32 => bytes.extend((v as i32).to_le_bytes()),
                DType::U32 => bytes.extend((v as u32).to_le_bytes()),
                DType::I16 => bytes.extend((v as i16).to_le_bytes()),
                DType::U16 => bytes.extend((v as u16).to_le_bytes()),
                DType::I8 => bytes.push(v as i8 as u8),
                DType::U8 => bytes.push(v as u8),
                DType::Bool => bytes.push(u8::from(v != 0)),
                DType::I4 | DType::U4 => {
                    let codes: Vec<u8> = values.iter().map(|&v| (v as u8) & 0x0F).collect();
                    return TensorData { dtype, shape, bytes: pack_nibbles(&codes) };
                }
                _ => {
                    return TensorData::from_f64_values(
                        dtype,
                        shape,
                        &values.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                    )
                }
            }
        }
        TensorData { dtype, shape, bytes }
    }
}

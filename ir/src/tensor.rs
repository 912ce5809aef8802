//! Tensor contents: small inline constants and references to weights on disk.

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
    /// Wrap little-endian bytes; the length must equal elements × element size.
    pub fn from_le_bytes(dtype: DType, shape: Vec<usize>, bytes: Vec<u8>) -> Result<TensorData, TensorSizeError> {
        let expected = shape.iter().product::<usize>() * dtype.size_bytes();
        if bytes.len() != expected {
            return Err(TensorSizeError { dtype, shape, expected, actual: bytes.len() });
        }
        Ok(TensorData { dtype, shape, bytes })
    }

    /// An i64 tensor.
    pub fn from_i64(shape: Vec<usize>, values: &[i64]) -> TensorData {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        TensorData { dtype: DType::I64, shape, bytes }
    }

    /// Build a tensor of `dtype` from f64 element values (rounded for integer types,
    /// non-zero for bool).
    pub fn from_f64_values(dtype: DType, shape: Vec<usize>, values: &[f64]) -> TensorData {
        let mut bytes = Vec::with_capacity(values.len() * dtype.size_bytes());
        for &v in values {
            match dtype {
                DType::F32 => bytes.extend((v as f32).to_le_bytes()),
                DType::F64 => bytes.extend(v.to_le_bytes()),
                DType::F16 => bytes.extend(half::f16::from_f64(v).to_le_bytes()),
                DType::BF16 => bytes.extend(half::bf16::from_f64(v).to_le_bytes()),
                DType::I8 => bytes.extend((v as i8).to_le_bytes()),
                DType::I16 => bytes.extend((v as i16).to_le_bytes()),
                DType::I32 => bytes.extend((v as i32).to_le_bytes()),
                DType::I64 => bytes.extend((v as i64).to_le_bytes()),
                DType::U8 => bytes.extend((v as u8).to_le_bytes()),
                DType::U16 => bytes.extend((v as u16).to_le_bytes()),
                DType::U32 => bytes.extend((v as u32).to_le_bytes()),
                DType::U64 => bytes.extend((v as u64).to_le_bytes()),
                DType::Bool => bytes.push(u8::from(v != 0.0)),
            }
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
        Some(self.to_f64_vec().into_iter().map(|v| v as i64).collect())
    }

    /// Elements as f64 (exact for every dtype except i64/u64 beyond 2^53).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        let n = self.dtype.size_bytes();
        self.bytes
            .chunks_exact(n)
            .map(|c| match self.dtype {
                DType::F32 => f32::from_le_bytes(c.try_into().unwrap_or_default()) as f64,
                DType::F64 => f64::from_le_bytes(c.try_into().unwrap_or_default()),
                DType::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f64(),
                DType::BF16 => half::bf16::from_le_bytes([c[0], c[1]]).to_f64(),
                DType::I8 => c[0] as i8 as f64,
                DType::U8 => c[0] as f64,
                DType::Bool => f64::from(u8::from(c[0] != 0)),
                DType::I16 => i16::from_le_bytes([c[0], c[1]]) as f64,
                DType::U16 => u16::from_le_bytes([c[0], c[1]]) as f64,
                DType::I32 => i32::from_le_bytes(c.try_into().unwrap_or_default()) as f64,
                DType::U32 => u32::from_le_bytes(c.try_into().unwrap_or_default()) as f64,
                DType::I64 => i64::from_le_bytes(c.try_into().unwrap_or_default()) as f64,
                DType::U64 => u64::from_le_bytes(c.try_into().unwrap_or_default()) as f64,
            })
            .collect()
    }

    /// Exact i64 elements for i64 tensors (no f64 round trip).
    pub fn i64_elements(&self) -> Option<Vec<i64>> {
        match self.dtype {
            DType::I64 => {
                Some(self.bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default())).collect())
            }
            _ => self.to_i64_vec(),
        }
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

    /// Bytes the weight takes at its dtype.
    pub fn byte_len(&self) -> u64 {
        self.elements() * self.dtype.size_bytes() as u64
    }
}

impl TensorData {
    /// Build a tensor of integer or bool `dtype` from exact i64 values (bool: non-zero).
    /// Float dtypes go through f64.
    pub fn from_ints(dtype: DType, shape: Vec<usize>, values: &[i64]) -> TensorData {
        let mut bytes = Vec::with_capacity(values.len() * dtype.size_bytes());
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
                DType::F32 | DType::F64 | DType::F16 | DType::BF16 => {
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

//! Runtime tensors: f32 compute for every float dtype, i64 for every integer dtype,
//! bool for bool. The IR dtype travels along so casts and outputs keep their types.

use ndarray::{ArrayD, IxDyn};
use shardc_ir::{DType, TensorData};

/// Element storage.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
    Bool(ArrayD<bool>),
}

/// A tensor value at run time.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// The IR dtype (f16/bf16/f64 values are held as f32, narrow integers as i64).
    pub dtype: DType,
    pub data: Data,
}

impl Tensor {
    /// An f32 tensor.
    pub fn f32(a: ArrayD<f32>) -> Tensor {
        Tensor { dtype: DType::F32, data: Data::F32(a) }
    }

    /// An i64 tensor.
    pub fn i64(a: ArrayD<i64>) -> Tensor {
        Tensor { dtype: DType::I64, data: Data::I64(a) }
    }

    /// A bool tensor.
    pub fn bool(a: ArrayD<bool>) -> Tensor {
        Tensor { dtype: DType::Bool, data: Data::Bool(a) }
    }

    /// Wrap storage with a dtype, choosing the storage class the dtype needs.
    pub fn with_dtype(dtype: DType, data: Data) -> Tensor {
        Tensor { dtype, data }
    }

    /// An i64 tensor from a shape and values (panics never: the caller gives a matching length).
    pub fn from_i64(shape: &[usize], values: Vec<i64>) -> Option<Tensor> {
        ArrayD::from_shape_vec(IxDyn(shape), values).ok().map(Tensor::i64)
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        match &self.data {
            Data::F32(a) => a.shape(),
            Data::I64(a) => a.shape(),
            Data::Bool(a) => a.shape(),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape().iter().product()
    }

    /// Bytes of its elements.
    pub fn byte_len(&self) -> usize {
        self.len()
            * match &self.data {
                Data::F32(_) => 4,
                Data::I64(_) => 8,
                Data::Bool(_) => 1,
            }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The f32 array, if this is a float tensor.
    pub fn as_f32(&self) -> Option<&ArrayD<f32>> {
        match &self.data {
            Data::F32(a) => Some(a),
            _ => None,
        }
    }

    /// The shape and the values in row-major order, if this is a float tensor; the
    /// storage itself when it already holds them so (no copy), else a copy.
    pub fn into_f32_values(self) -> Option<(Vec<usize>, Vec<f32>)> {
        let Data::F32(a) = self.data else { return None };
        let shape = a.shape().to_vec();
        if !a.is_standard_layout() {
            return Some((shape, a.iter().copied().collect()));
        }
        let n = a.len();
        let (mut v, offset) = a.into_raw_vec_and_offset();
        let start = offset.unwrap_or(0);
        if start != 0 || v.len() != n {
            // A view into a larger buffer: its elements are the contiguous run from `start`.
            v = v[start..start + n].to_vec();
        }
        Some((shape, v))
    }

    /// The i64 array, if this is an integer tensor.
    pub fn as_i64(&self) -> Option<&ArrayD<i64>> {
        match &self.data {
            Data::I64(a) => Some(a),
            _ => None,
        }
    }

    /// The bool array, if this is a bool tensor.
    pub fn as_bool(&self) -> Option<&ArrayD<bool>> {
        match &self.data {
            Data::Bool(a) => Some(a),
            _ => None,
        }
    }

    /// Values as i64 (integers as they are, bools as 0/1, floats truncated).
    pub fn to_i64_vec(&self) -> Vec<i64> {
        match &self.data {
            Data::F32(a) => a.iter().map(|&v| v as i64).collect(),
            Data::I64(a) => a.iter().copied().collect(),
            Data::Bool(a) => a.iter().map(|&v| i64::from(v)).collect(),
        }
    }

    /// Values as f32.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(a) => a.iter().copied().collect(),
            Data::I64(a) => a.iter().map(|&v| v as f32).collect(),
            Data::Bool(a) => a.iter().map(|&v| f32::from(u8::from(v))).collect(),
        }
    }

    /// Convert an IR constant.
    pub fn from_data(t: &TensorData) -> Result<Tensor, ndarray::ShapeError> {
        let shape = IxDyn(&t.shape);
        let data = if t.dtype.is_float() {
            Data::F32(ArrayD::from_shape_vec(shape, t.to_f64_vec().into_iter().map(|x| x as f32).collect())?)
        } else if t.dtype == DType::Bool {
            Data::Bool(ArrayD::from_shape_vec(shape, t.bytes().iter().map(|&b| b != 0).collect())?)
        } else {
            Data::I64(ArrayD::from_shape_vec(shape, t.i64_elements().unwrap_or_default())?)
        };
        Ok(Tensor { dtype: t.dtype, data })
    }

    /// The tensor as an IR constant: its elements encoded as its dtype.
    pub fn to_data(&self) -> Result<TensorData, String> {
        let shape = self.shape().to_vec();
        let out = match &self.data {
            Data::F32(a) => {
                let v: Vec<f64> = a.iter().map(|&x| f64::from(x)).collect();
                TensorData::from_f64_values(self.dtype, shape, &v)
            }
            Data::I64(a) => TensorData::from_ints(self.dtype, shape, &a.iter().copied().collect::<Vec<_>>()),
            Data::Bool(a) => {
                TensorData::from_ints(self.dtype, shape, &a.iter().map(|&b| i64::from(b)).collect::<Vec<_>>())
            }
        };
        Ok(out)
    }

    /// Hold exactly what the dtype holds: floats narrower than f32 rounded to their
    /// type, integers narrower than 64 bits wrapped to their width. Kernels compute in
    /// f32 and i64; the executor normalises every result.
    pub fn normalize(mut self) -> Tensor {
        let dtype = self.dtype;
        match &mut self.data {
            Data::F32(a) => match dtype {
                DType::F32 | DType::F64 => {}
                DType::F16 => a.mapv_inplace(|v| half::f16::from_f32(v).to_f32()),
                DType::BF16 => a.mapv_inplace(|v| half::bf16::from_f32(v).to_f32()),
                DType::F8E8M0 => a.mapv_inplace(|v| {
                    let code = shardc_ir::minifloat::encode_e8m0(v, true, shardc_ir::minifloat::RoundMode::Up);
                    shardc_ir::minifloat::decode_e8m0(code)
                }),
                d => {
                    // Not saturating: a result beyond the type's range is what the
                    // type holds of it (infinity or NaN), as IEEE arithmetic would give.
                    if let Some(f) = d.minifloat() {
                        a.mapv_inplace(|v| f.decode(f.encode(v, false)));
                    }
                }
            },
            Data::I64(a) => {
                if !matches!(dtype, DType::I64 | DType::U64) {
                    a.mapv_inplace(|v| wrap_int(v, dtype));
                }
            }
            Data::Bool(_) => {}
        }
        self
    }

    /// `f32[1, 3]`-style description, for error messages.
    pub fn describe(&self) -> String {
        describe(self.dtype, self.shape())
    }
}

/// `f32[1, 3]`-style description of a dtype and shape.
pub fn describe(dtype: DType, shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    format!("{dtype}[{}]", dims.join(", "))
}

/// The storage class a dtype uses.
pub fn storage_of(dtype: DType) -> &'static str {
    if dtype.is_float() {
        "f32"
    } else if dtype == DType::Bool {
        "bool"
    } else {
        "i64"
    }
}

/// Wrap an integer to the range of `dtype` (two's complement, as C casts do).
pub fn wrap_int(v: i64, dtype: DType) -> i64 {
    match dtype {
        DType::I4 => i64::from(((v as u8) << 4) as i8 >> 4),
        DType::U4 => v & 0x0F,
        DType::I8 => i64::from(v as i8),
        DType::U8 => i64::from(v as u8),
        DType::I16 => i64::from(v as i16),
        DType::U16 => i64::from(v as u16),
        DType::I32 => i64::from(v as i32),
        DType::U32 => i64::from(v as u32),
        _ => v,
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{s, ArrayD, IxDyn};

    use super::Tensor;

    #[test]
    fn float_values_come_out_in_row_major_order_whatever_the_layout() {
        let a = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![0., 1., 2., 3., 4., 5.]).unwrap();
        let plain = Tensor::f32(a.clone()).into_f32_values().unwrap();
        assert_eq!(plain, (vec![2, 3], vec![0., 1., 2., 3., 4., 5.]));
        // Column-major storage: the values are reordered, not handed over as stored.
        let turned = Tensor::f32(a.clone().reversed_axes()).into_f32_values().unwrap();
        assert_eq!(turned, (vec![3, 2], vec![0., 3., 1., 4., 2., 5.]));
        // A standard-layout view starting past the buffer's first element.
        let tail = a.slice_move(s![1.., ..]).into_dyn();
        assert!(tail.is_standard_layout());
        assert_eq!(Tensor::f32(tail).into_f32_values().unwrap(), (vec![1, 3], vec![3., 4., 5.]));
        assert_eq!(Tensor::i64(ArrayD::zeros(IxDyn(&[2]))).into_f32_values(), None);
    }
}

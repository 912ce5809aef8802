//! Quantisation ops.

use shardc_ir::ops::{DequantizeLinear, QuantizeLinear};
use shardc_ir::{DType, Dim};

use super::{required, In, Out};

/// `QuantizeLinear`: x's shape, the zero point's dtype (else `output_dtype`, else u8).
pub fn quantize(q: &QuantizeLinear, inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    let zp = inputs.get(2).copied().flatten().map(|z| z.dtype());
    let dtype = match (zp, q.output_dtype) {
        (Some(z), Some(o)) if z != o => return Err(format!("zero point is {z} but output_dtype is {o}")),
        (Some(z), _) => z,
        (None, Some(o)) => o,
        (None, None) => DType::U8,
    };
    if dtype.is_float() && dtype.minifloat().is_none() {
        return Err(format!("cannot quantize to {dtype}"));
    }
    Ok(vec![Out::new(dtype, x.shape().to_vec())])
}

/// `DequantizeLinear`: x's shape, the scale's dtype (or `output_dtype`).
pub fn dequantize(d: &DequantizeLinear, inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    let scale = required(inputs, 1)?;
    let dtype = d.output_dtype.unwrap_or(scale.dtype());
    Ok(vec![Out::new(dtype, x.shape().to_vec())])
}

/// `DynamicQuantizeLinear`: u8 values, an f32 scale and a u8 zero point.
pub fn dynamic(inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    Ok(vec![
        Out::new(DType::U8, x.shape().to_vec()),
        Out::new(DType::F32, Vec::<Dim>::new()),
        Out::new(DType::U8, Vec::<Dim>::new()),
    ])
}

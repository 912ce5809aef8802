//! `QuantizeLinear`, `DequantizeLinear` (per tensor, per axis, blocked) and
//! `DynamicQuantizeLinear`. Spec: <https://onnx.ai/onnx/operators/onnx__QuantizeLinear.html>.

use ndarray::{ArrayD, IxDyn};
use shardc_ir::ops::{DequantizeLinear, QuantizeLinear};
use shardc_ir::DType;

use super::{axis, input, optional, KernelResult};
use crate::tensor::{Data, Tensor};

/// For every element of a tensor of `shape`, the index of its scale: one scale, one
/// per index of `axis`, or one per block of `block` indices along `axis`.
fn scale_index(shape: &[usize], scale_shape: &[usize], ax: i64, block: i64) -> Result<Vec<usize>, String> {
    let n: usize = shape.iter().product();
    let scales: usize = scale_shape.iter().product();
    if scales == 1 && block == 0 {
        return Ok(vec![0; n]);
    }
    let a = axis(ax, shape.len())?;
    let strides: Vec<usize> = (0..shape.len()).map(|d| shape[d + 1..].iter().product()).collect();
    if block == 0 {
        if scale_shape.len() != 1 || scale_shape[0] != shape[a] {
            return Err(format!("per-axis scales {scale_shape:?} must have one per index of axis {a} ({})", shape[a]));
        }
        return Ok((0..n).map(|f| (f / strides[a]) % shape[a]).collect());
    }
    let b =
        usize::try_from(block).ok().filter(|&b| b > 0).ok_or_else(|| format!("block_size {block} is not positive"))?;
    if scale_shape.len() != shape.len() {
        return Err(format!("blocked scales {scale_shape:?} must have the input's rank {}", shape.len()));
    }
    for d in 0..shape.len() {
        let want = if d == a { shape[d].div_ceil(b) } else { shape[d] };
        if scale_shape[d] != want {
            return Err(format!("blocked scales {scale_shape:?} do not fit {shape:?} in blocks of {b} on axis {a}"));
        }
    }
    let sstrides: Vec<usize> = (0..scale_shape.len()).map(|d| scale_shape[d + 1..].iter().product()).collect();
    Ok((0..n)
        .map(|f| {
            (0..shape.len())
                .map(|d| {
                    let c = (f / strides[d]) % shape[d];
                    (if d == a { c / b } else { c }) * sstrides[d]
                })
                .sum()
        })
        .collect())
}

/// Round `v` to what `dtype` holds (the division's precision).
fn at_precision(v: f32, dtype: Option<DType>) -> f32 {
    match dtype {
        Some(DType::F16) => half::f16::from_f32(v).to_f32(),
        Some(DType::BF16) => half::bf16::from_f32(v).to_f32(),
        _ => v,
    }
}

/// `QuantizeLinear`: `saturate(round_half_even(x / scale) + zero_point)` for integer
/// targets, `cast(x / scale + zero_point)` for 8- and 4-bit floats.
pub fn quantize(q: &QuantizeLinear, inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    let scale = input(inputs, 1)?;
    let zp = optional(inputs, 2);
    let to = zp.map(|z| z.dtype).or(q.output_dtype).unwrap_or(DType::U8);
    if let Some(p) = q.precision {
        if !matches!(p, DType::F32 | DType::F16 | DType::BF16) {
            return Err(format!("precision {p} (expected f32, f16 or bf16)"));
        }
    }
    let xs = x.to_f32_vec();
    let ss = scale.to_f32_vec();
    let zs: Vec<f32> = match zp {
        Some(z) => {
            if z.shape() != scale.shape() && !(z.len() == 1 && scale.len() == 1) {
                return Err(format!("zero point {} and scale {} differ in shape", z.describe(), scale.describe()));
            }
            z.to_f32_vec()
        }
        None => vec![0.0; ss.len()],
    };
    let idx = scale_index(x.shape(), scale.shape(), q.axis, q.block_size)?;
    let quotient =
        |i: usize| at_precision(at_precision(xs[i], q.precision) / at_precision(ss[idx[i]], q.precision), q.precision);
    let shape = IxDyn(x.shape());
    let data = if let Some((lo, hi)) = to.int_range() {
        let v: Vec<i64> = (0..xs.len())
            .map(|i| {
                let r = quotient(i).round_ties_even() + zs[idx[i]];
                if r.is_nan() {
                    0
                } else {
                    (r as f64).clamp(lo as f64, hi as f64) as i64
                }
            })
            .collect();
        Data::I64(ArrayD::from_shape_vec(shape, v).map_err(|e| e.to_string())?)
    } else if let Some(f) = to.minifloat() {
        let v: Vec<f32> =
            (0..xs.len()).map(|i| f.decode(f.encode(quotient(i) + zs[idx[i]], q.saturate != 0))).collect();
        Data::F32(ArrayD::from_shape_vec(shape, v).map_err(|e| e.to_string())?)
    } else {
        return Err(format!("cannot quantize to {to}"));
    };
    Ok(vec![Tensor::with_dtype(to, data)])
}

/// `DequantizeLinear`: `(x − zero_point) · scale`.
pub fn dequantize(d: &DequantizeLinear, inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    let scale = input(inputs, 1)?;
    let xs = x.to_f32_vec();
    let ss = scale.to_f32_vec();
    let zs: Vec<f32> = match optional(inputs, 2) {
        Some(z) => {
            if z.dtype != x.dtype {
                return Err(format!("zero point {} must have the input's type {}", z.describe(), x.dtype));
            }
            if z.shape() != scale.shape() && !(z.len() == 1 && scale.len() == 1) {
                return Err(format!("zero point {} and scale {} differ in shape", z.describe(), scale.describe()));
            }
            z.to_f32_vec()
        }
        None => vec![0.0; ss.len()],
    };
    let idx = scale_index(x.shape(), scale.shape(), d.axis, d.block_size)?;
    // Integers are exact in f64; f32 would round i32 values beyond 2^24.
    let xi = x.as_i64();
    let v: Vec<f32> = (0..xs.len())
        .map(|i| {
            let xv = xi.map_or(f64::from(xs[i]), |a| a.as_slice().map_or(f64::from(xs[i]), |s| s[i] as f64));
            ((xv - f64::from(zs[idx[i]])) * f64::from(ss[idx[i]])) as f32
        })
        .collect();
    let to = d.output_dtype.unwrap_or(scale.dtype);
    Ok(vec![Tensor::with_dtype(to, Data::F32(ArrayD::from_shape_vec(IxDyn(x.shape()), v).map_err(|e| e.to_string())?))])
}

/// `DynamicQuantizeLinear`: u8 quantisation over `[min(0, x), max(0, x)]`.
pub fn dynamic(inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    let xs = x.to_f32_vec();
    let max = xs.iter().fold(0f32, |m, &v| m.max(v));
    let min = xs.iter().fold(0f32, |m, &v| m.min(v));
    let scale = if max == min { 1.0 } else { max - min } / 255.0;
    let zp = (0.0 - min / scale).clamp(0.0, 255.0).round_ties_even();
    let y: Vec<i64> = xs.iter().map(|&v| ((v / scale).round_ties_even() + zp).clamp(0.0, 255.0) as i64).collect();
    Ok(vec![
        Tensor::with_dtype(
            DType::U8,
            Data::I64(ArrayD::from_shape_vec(IxDyn(x.shape()), y).map_err(|e| e.to_string())?),
        ),
        Tensor::with_dtype(DType::F32, Data::F32(ArrayD::from_elem(IxDyn(&[]), scale))),
        Tensor::with_dtype(DType::U8, Data::I64(ArrayD::from_elem(IxDyn(&[]), zp as i64))),
    ])
}

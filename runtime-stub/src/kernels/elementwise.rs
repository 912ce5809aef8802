//! Elementwise kernels with numpy broadcasting.

use ndarray::{ArrayD, IxDyn, Zip};
use shardc_ir::{DType, Op};

use super::{broadcast_shape, input, KernelResult};
use crate::tensor::{Data, Tensor};

/// Apply `f` over two broadcast arrays.
fn zip<A: Copy, B: Copy, C>(a: &ArrayD<A>, b: &ArrayD<B>, f: impl Fn(A, B) -> C) -> Result<ArrayD<C>, String> {
    if a.shape() == b.shape() {
        return Ok(Zip::from(a).and(b).map_collect(|&x, &y| f(x, y)));
    }
    let shape = broadcast_shape(a.shape(), b.shape())?;
    let av = a.broadcast(IxDyn(&shape)).ok_or("broadcast failed")?;
    let bv = b.broadcast(IxDyn(&shape)).ok_or("broadcast failed")?;
    Ok(Zip::from(&av).and(&bv).map_collect(|&x, &y| f(x, y)))
}

fn mismatch(a: &Tensor, b: &Tensor) -> String {
    format!("operand types differ ({} vs {})", a.describe(), b.describe())
}

/// `Add`, `Sub`, `Mul`, `Div`, `Pow`, `Mod`.
pub fn binary(op: &Op, inputs: &[Option<&Tensor>]) -> KernelResult {
    let (a, b) = (input(inputs, 0)?, input(inputs, 1)?);
    let out = match (&a.data, &b.data) {
        (Data::F32(x), Data::F32(y)) => Data::F32(match op {
            Op::Add(_) => zip(x, y, |p, q| p + q)?,
            Op::Sub(_) => zip(x, y, |p, q| p - q)?,
            Op::Mul(_) => zip(x, y, |p, q| p * q)?,
            Op::Div(_) => zip(x, y, |p, q| p / q)?,
            Op::Pow(_) => pow(x, y)?,
            Op::Mod(m) if m.fmod == 1 => zip(x, y, |p, q| p % q)?,
            Op::Mod(_) => return Err("Mod with fmod=0 is only defined for integers".into()),
            _ => return Err(format!("{} is not a binary arithmetic op", op.name())),
        }),
        (Data::I64(x), Data::I64(y)) => {
            if matches!(op, Op::Div(_) | Op::Mod(_)) && y.iter().any(|&q| q == 0) {
                return Err("integer division by zero".into());
            }
            Data::I64(match op {
                Op::Add(_) => zip(x, y, i64::wrapping_add)?,
                Op::Sub(_) => zip(x, y, i64::wrapping_sub)?,
                Op::Mul(_) => zip(x, y, i64::wrapping_mul)?,
                Op::Div(_) => zip(x, y, i64::wrapping_div)?,
                Op::Pow(_) => zip(x, y, |p, q| p.wrapping_pow(q.clamp(0, u32::MAX as i64) as u32))?,
                Op::Mod(m) if m.fmod == 1 => zip(x, y, i64::wrapping_rem)?,
                Op::Mod(_) => zip(x, y, |p, q| p.wrapping_rem(q).wrapping_add(q).wrapping_rem(q))?,
                _ => return Err(format!("{} is not a binary arithmetic op", op.name())),
            })
        }
        (Data::F32(x), Data::I64(y)) if matches!(op, Op::Pow(_)) => Data::F32(pow(x, &y.mapv(|q| q as f32))?),
        _ => return Err(mismatch(a, b)),
    };
    Ok(vec![Tensor::with_dtype(a.dtype, out)])
}

/// `x ^ y` with fast paths for the constant exponents models use (GELU's cube, RMS's square).
fn pow(x: &ArrayD<f32>, y: &ArrayD<f32>) -> Result<ArrayD<f32>, String> {
    if y.len() == 1 {
        let e = y.iter().next().copied().unwrap_or(1.0);
        let shape = broadcast_shape(x.shape(), y.shape())?;
        let out = if e == 2.0 {
            x.mapv(|v| v * v)
        } else if e == 3.0 {
            x.mapv(|v| v * v * v)
        } else if e == 0.5 {
            x.mapv(f32::sqrt)
        } else {
            x.mapv(|v| v.powf(e))
        };
        return out.into_shape_with_order(IxDyn(&shape)).map_err(|e| e.to_string());
    }
    zip(x, y, f32::powf)
}

/// Variadic `Max` / `Min`.
pub fn variadic_extreme(op: &Op, inputs: &[Option<&Tensor>]) -> KernelResult {
    let max = matches!(op, Op::Max(_));
    let mut acc = input(inputs, 0)?.clone();
    for i in 1..inputs.len() {
        let b = input(inputs, i)?;
        acc.data = match (&acc.data, &b.data) {
            (Data::F32(x), Data::F32(y)) => Data::F32(zip(x, y, |p, q| if max { p.max(q) } else { p.min(q) })?),
            (Data::I64(x), Data::I64(y)) => Data::I64(zip(x, y, |p, q| if max { p.max(q) } else { p.min(q) })?),
            _ => return Err(mismatch(&acc, b)),
        };
    }
    Ok(vec![acc])
}

/// Comparisons and `And`/`Or`.
pub fn comparison(op: &Op, inputs: &[Option<&Tensor>]) -> KernelResult {
    let (a, b) = (input(inputs, 0)?, input(inputs, 1)?);
    fn cmp<T: Copy + PartialOrd>(op: &Op, x: &ArrayD<T>, y: &ArrayD<T>) -> Result<ArrayD<bool>, String> {
        match op {
            Op::Equal(_) => zip(x, y, |p, q| p == q),
            Op::Less(_) => zip(x, y, |p, q| p < q),
            Op::LessOrEqual(_) => zip(x, y, |p, q| p <= q),
            Op::Greater(_) => zip(x, y, |p, q| p > q),
            Op::GreaterOrEqual(_) => zip(x, y, |p, q| p >= q),
            _ => Err(format!("{} is not a comparison", op.name())),
        }
    }
    let out = match (&a.data, &b.data) {
        (Data::Bool(x), Data::Bool(y)) => match op {
            Op::And(_) => zip(x, y, |p, q| p && q)?,
            Op::Or(_) => zip(x, y, |p, q| p || q)?,
            _ => cmp(op, x, y)?,
        },
        (Data::F32(x), Data::F32(y)) => cmp(op, x, y)?,
        (Data::I64(x), Data::I64(y)) => cmp(op, x, y)?,
        _ => return Err(mismatch(a, b)),
    };
    Ok(vec![Tensor::bool(out)])
}

/// `Where(cond, x, y)`.
pub fn where_(inputs: &[Option<&Tensor>]) -> KernelResult {
    let c = input(inputs, 0)?;
    let (x, y) = (input(inputs, 1)?, input(inputs, 2)?);
    let cond = c.as_bool().ok_or_else(|| format!("condition must be bool, got {}", c.describe()))?;
    let shape = broadcast_shape(&broadcast_shape(cond.shape(), x.shape())?, y.shape())?;
    let cv = cond.broadcast(IxDyn(&shape)).ok_or("broadcast failed")?;
    fn pick<T: Copy>(
        cv: &ndarray::ArrayViewD<bool>,
        x: &ArrayD<T>,
        y: &ArrayD<T>,
        shape: &[usize],
    ) -> Result<ArrayD<T>, String> {
        let xv = x.broadcast(IxDyn(shape)).ok_or("broadcast failed")?;
        let yv = y.broadcast(IxDyn(shape)).ok_or("broadcast failed")?;
        Ok(Zip::from(cv).and(&xv).and(&yv).map_collect(|&c, &p, &q| if c { p } else { q }))
    }
    let data = match (&x.data, &y.data) {
        (Data::F32(p), Data::F32(q)) => Data::F32(pick(&cv, p, q, &shape)?),
        (Data::I64(p), Data::I64(q)) => Data::I64(pick(&cv, p, q, &shape)?),
        (Data::Bool(p), Data::Bool(q)) => Data::Bool(pick(&cv, p, q, &shape)?),
        _ => return Err(mismatch(x, y)),
    };
    Ok(vec![Tensor::with_dtype(x.dtype, data)])
}

/// Unary functions.
pub fn unary(op: &Op, inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    let data = match &x.data {
        Data::F32(a) => {
            let f: fn(f32) -> f32 = match op {
                Op::Neg(_) => |v| -v,
                Op::Abs(_) => f32::abs,
                Op::Sqrt(_) => f32::sqrt,
                Op::Reciprocal(_) => |v| 1.0 / v,
                Op::Exp(_) => f32::exp,
                Op::Log(_) => f32::ln,
                Op::Tanh(_) => tanh,
                Op::Sigmoid(_) => |v| 1.0 / (1.0 + (-v).exp()),
                Op::Sin(_) => f32::sin,
                Op::Cos(_) => f32::cos,
                Op::Erf(_) => libm::erff,
                Op::Relu(_) => |v| v.max(0.0),
                Op::Floor(_) => f32::floor,
                Op::Ceil(_) => f32::ceil,
                _ => return Err(format!("{} does not take {}", op.name(), x.describe())),
            };
            Data::F32(a.mapv(f))
        }
        Data::I64(a) => Data::I64(match op {
            Op::Neg(_) => a.mapv(i64::wrapping_neg),
            Op::Abs(_) => a.mapv(i64::wrapping_abs),
            Op::Relu(_) => a.mapv(|v| v.max(0)),
            Op::Floor(_) | Op::Ceil(_) => a.clone(),
            _ => return Err(format!("{} does not take {}", op.name(), x.describe())),
        }),
        Data::Bool(a) => match op {
            Op::Not(_) => Data::Bool(a.mapv(|v| !v)),
            _ => return Err(format!("{} does not take {}", op.name(), x.describe())),
        },
    };
    Ok(vec![Tensor::with_dtype(x.dtype, data)])
}

/// Wrap an integer to the range of `dtype`.
fn wrap_int(v: i64, dtype: DType) -> i64 {
    match dtype {
        DType::I8 => i64::from(v as i8),
        DType::U8 => i64::from(v as u8),
        DType::I16 => i64::from(v as i16),
        DType::U16 => i64::from(v as u16),
        DType::I32 => i64::from(v as i32),
        DType::U32 => i64::from(v as u32),
        _ => v,
    }
}

/// Round an f32 to what `dtype` can hold.
fn round_float(v: f32, dtype: DType) -> f32 {
    match dtype {
        DType::F16 => half::f16::from_f32(v).to_f32(),
        DType::BF16 => half::bf16::from_f32(v).to_f32(),
        _ => v,
    }
}

/// `Cast{to}`.
pub fn cast(to: DType, inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    let data = if to.is_float() {
        Data::F32(match &x.data {
            Data::F32(a) => a.mapv(|v| round_float(v, to)),
            Data::I64(a) => a.mapv(|v| round_float(v as f32, to)),
            Data::Bool(a) => a.mapv(|v| f32::from(u8::from(v))),
        })
    } else if to == DType::Bool {
        Data::Bool(match &x.data {
            Data::F32(a) => a.mapv(|v| v != 0.0),
            Data::I64(a) => a.mapv(|v| v != 0),
            Data::Bool(a) => a.clone(),
        })
    } else {
        Data::I64(match &x.data {
            // Float to integer truncates toward zero (saturating at the i64 range).
            Data::F32(a) => a.mapv(|v| wrap_int(v as i64, to)),
            Data::I64(a) => a.mapv(|v| wrap_int(v, to)),
            Data::Bool(a) => a.mapv(i64::from),
        })
    };
    Ok(vec![Tensor::with_dtype(to, data)])
}

/// tanh through one `exp`: `sign(x) · (1 − e^(−2|x|)) / (1 + e^(−2|x|))`; within a few
/// ulps of `f32::tanh` and several times faster than libm's.
fn tanh(x: f32) -> f32 {
    if x.abs() < 0.0625 {
        // Near zero the subtraction would cancel; the odd Taylor series is exact enough.
        let x2 = x * x;
        return x * (1.0 - x2 * (1.0 / 3.0 - x2 * (2.0 / 15.0 - x2 * (17.0 / 315.0))));
    }
    let e = (-2.0 * x.abs()).exp();
    ((1.0 - e) / (1.0 + e)).copysign(x)
}

#[cfg(test)]
mod tests {
    #[test]
    fn fast_tanh_matches_std() {
        let mut worst = 0f32;
        for i in -40000..=40000 {
            let x = i as f32 * 0.00025;
            let (a, b) = (super::tanh(x), x.tanh());
            worst = worst.max((a - b).abs() / b.abs().max(1e-30));
        }
        assert!(worst < 2e-6, "worst relative error {worst}");
    }
}

//! Unary elementwise kernels: activations, math functions, predicates.

use shardc_ir::Op;

use ndarray::ArrayD;

use super::{input, Floats, KernelResult};
use crate::tensor::{Data, Tensor};

use super::simd::{exp, sigmoid};

fn softplus(v: f32) -> f32 {
    // ln(1 + e^v), exact for large v where e^v would overflow.
    if v > 20.0 {
        v
    } else {
        v.exp().ln_1p()
    }
}

/// The elementwise unary family.
pub fn unary(op: &Op, inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    let data = match &x.data {
        Data::F32(a) => Data::F32(float_unary(op, Floats::Borrowed(a), &|| x.describe())?),
        Data::I64(a) => Data::I64(match op {
            Op::Neg(_) => a.mapv(i64::wrapping_neg),
            Op::Abs(_) => a.mapv(i64::wrapping_abs),
            Op::Relu(_) => a.mapv(|v| v.max(0)),
            Op::Sign(_) => a.mapv(i64::signum),
            Op::BitwiseNot(_) => a.mapv(|v| !v),
            Op::Floor(_) | Op::Ceil(_) | Op::Round(_) | Op::Identity(_) => a.clone(),
            _ => return Err(format!("{} does not take {}", op.name(), x.describe())),
        }),
        Data::Bool(a) => match op {
            Op::Not(_) => Data::Bool(a.mapv(|v| !v)),
            Op::Identity(_) => Data::Bool(a.clone()),
            _ => return Err(format!("{} does not take {}", op.name(), x.describe())),
        },
    };
    Ok(vec![Tensor::with_dtype(x.dtype, data)])
}

/// A unary op of floats (`what` describes the input, for the error when `op` takes
/// none), into `a`'s storage when it is handed over.
pub(super) fn float_unary(op: &Op, a: Floats, what: &dyn Fn() -> String) -> Result<ArrayD<f32>, String> {
    Ok(match op {
        Op::Neg(_) => a.map(|v| -v),
        Op::Abs(_) => a.map(f32::abs),
        Op::Sqrt(_) => a.map(f32::sqrt),
        Op::Reciprocal(_) => a.map(|v| 1.0 / v),
        Op::Exp(_) => a.map(exp),
        Op::Log(_) => a.map(f32::ln),
        Op::Tanh(_) => a.map(tanh),
        Op::Sigmoid(_) => a.map(sigmoid),
        Op::Sin(_) => a.map(f32::sin),
        Op::Cos(_) => a.map(f32::cos),
        Op::Tan(_) => a.map(f32::tan),
        Op::Asin(_) => a.map(f32::asin),
        Op::Acos(_) => a.map(f32::acos),
        Op::Atan(_) => a.map(f32::atan),
        Op::Sinh(_) => a.map(f32::sinh),
        Op::Cosh(_) => a.map(f32::cosh),
        Op::Asinh(_) => a.map(f32::asinh),
        Op::Acosh(_) => a.map(f32::acosh),
        Op::Atanh(_) => a.map(f32::atanh),
        Op::Erf(_) => a.map(libm::erff),
        Op::Relu(_) => a.map(|v| if v < 0.0 { 0.0 } else { v }),
        Op::Floor(_) => a.map(f32::floor),
        Op::Ceil(_) => a.map(f32::ceil),
        Op::Round(_) => a.map(f32::round_ties_even),
        Op::Sign(_) => a.map(|v| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                v
            }
        }),
        Op::Softplus(_) => a.map(softplus),
        Op::Softsign(_) => a.map(|v| v / (1.0 + v.abs())),
        Op::LeakyRelu(l) => a.map(|v| if v < 0.0 { l.alpha * v } else { v }),
        Op::Elu(e) => a.map(|v| if v < 0.0 { e.alpha * (v.exp() - 1.0) } else { v }),
        Op::Selu(s) => a.map(|v| s.gamma * if v <= 0.0 { s.alpha * (v.exp() - 1.0) } else { v }),
        Op::Celu(c) => a.map(|v| v.max(0.0) + (c.alpha * ((v / c.alpha).exp() - 1.0)).min(0.0)),
        Op::HardSigmoid(h) => a.map(|v| (h.alpha * v + h.beta).clamp(0.0, 1.0)),
        Op::HardSwish(_) => a.map(|v| v * (v / 6.0 + 0.5).clamp(0.0, 1.0)),
        Op::ThresholdedRelu(t) => a.map(|v| if v > t.alpha { v } else { 0.0 }),
        Op::Shrink(s) => a.map(|v| {
            if v < -s.lambd {
                v + s.bias
            } else if v > s.lambd {
                v - s.bias
            } else {
                0.0
            }
        }),
        Op::Mish(_) => a.map(|v| v * tanh(softplus(v))),
        Op::Swish(s) => a.map(|v| v * sigmoid(s.alpha * v)),
        Op::Gelu(g) => match g.approximate.as_str() {
            "none" => a.map(|v| 0.5 * v * (1.0 + libm::erff(v * std::f32::consts::FRAC_1_SQRT_2))),
            "tanh" => {
                let k = (2.0 / std::f32::consts::PI).sqrt();
                a.map(|v| 0.5 * v * (1.0 + tanh(k * (v + 0.044715 * v * v * v))))
            }
            other => return Err(format!("Gelu approximate `{other}` (expected none or tanh)")),
        },
        Op::Identity(_) => a.into_owned(),
        _ => return Err(format!("{} does not take {}", op.name(), what())),
    })
}

/// `IsNaN`, `IsInf{detect_negative,detect_positive}`.
pub fn predicate(op: &Op, inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    let a = x.as_f32().ok_or_else(|| format!("{} takes floats, got {}", op.name(), x.describe()))?;
    let out = match op {
        Op::IsNaN(_) => a.mapv(f32::is_nan),
        Op::IsInf(i) => a.mapv(|v| {
            (v == f32::INFINITY && i.detect_positive != 0) || (v == f32::NEG_INFINITY && i.detect_negative != 0)
        }),
        _ => return Err(format!("{} is not a predicate", op.name())),
    };
    Ok(vec![Tensor::bool(out)])
}

/// tanh through one `exp`: `sign(x) · (1 − e^(−2|x|)) / (1 + e^(−2|x|))`; within a few
/// ulps of `f32::tanh` and several times faster than libm's.
#[inline]
pub(crate) fn tanh(x: f32) -> f32 {
    // Near zero the subtraction would cancel; the odd Taylor series is exact enough.
    // Both are computed and one kept, so a loop of it vectorises (NaN stays NaN).
    let x2 = x * x;
    let near = x * (1.0 - x2 * (1.0 / 3.0 - x2 * (2.0 / 15.0 - x2 * (17.0 / 315.0))));
    let e = exp(-2.0 * x.abs());
    let far = ((1.0 - e) / (1.0 + e)).copysign(x);
    if x.abs() < 0.0625 {
        near
    } else {
        far
    }
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

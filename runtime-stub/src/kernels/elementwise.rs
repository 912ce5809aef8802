//! Elementwise kernels with numpy broadcasting.

use ndarray::{ArrayD, IxDyn, Zip};
use shardc_ir::minifloat::{decode_e8m0, encode_e8m0, RoundMode};
use shardc_ir::{DType, Op};

use super::{broadcast_shape, input, optional, Floats, KernelResult};
use crate::tensor::{wrap_int, Data, Tensor};

/// Apply `f` over two broadcast arrays.
pub(crate) fn zip<A: Copy, B: Copy, C>(
    a: &ArrayD<A>,
    b: &ArrayD<B>,
    f: impl Fn(A, B) -> C,
) -> Result<ArrayD<C>, String> {
    if a.shape() == b.shape() {
        return Ok(Zip::from(a).and(b).map_collect(|&x, &y| f(x, y)));
    }
    let shape = broadcast_shape(a.shape(), b.shape())?;
    let av = a.broadcast(IxDyn(&shape)).ok_or("broadcast failed")?;
    let bv = b.broadcast(IxDyn(&shape)).ok_or("broadcast failed")?;
    Ok(Zip::from(&av).and(&bv).map_collect(|&x, &y| f(x, y)))
}

/// [`zip`] of floats, computed into an operand handed over when it is laid out in
/// order with the result's shape; else over the run's threads when the result is
/// large (each element computed alone, so the same bits on any count and either way):
/// operands in order with a plain broadcast (either way round) by
/// [`crate::threads::zip`], any others by `ndarray`'s parallel `Zip`.
fn zip_f32(a: Floats, b: Floats, f: impl Fn(f32, f32) -> f32 + Sync + Send) -> Result<ArrayD<f32>, String> {
    let shape = broadcast_shape(a.view().shape(), b.view().shape())?;
    let fits = |x: &ArrayD<f32>| x.shape() == shape.as_slice() && x.is_standard_layout();
    match (a, b) {
        (Floats::Owned(mut x), y) if fits(&x) => {
            into(&mut x, y.view(), f)?;
            Ok(x)
        }
        (x, Floats::Owned(mut y)) if fits(&y) => {
            into(&mut y, x.view(), |q, p| f(p, q))?;
            Ok(y)
        }
        (a, b) => {
            let (a, b) = (a.view(), b.view());
            let Some(pool) = crate::threads::current() else { return zip(a, b, f) };
            if shape.iter().product::<usize>() < crate::threads::SPLIT_ELEMENTS {
                return zip(a, b, f);
            }
            let by_hand =
                crate::threads::zip(pool, a, b, &f).or_else(|| crate::threads::zip(pool, b, a, |y, x| f(x, y)));
            if let Some(out) = by_hand {
                return Ok(out);
            }
            let av = a.broadcast(IxDyn(&shape)).ok_or("broadcast failed")?;
            let bv = b.broadcast(IxDyn(&shape)).ok_or("broadcast failed")?;
            Ok(pool.install(|| Zip::from(&av).and(&bv).par_map_collect(|&x, &y| f(x, y))))
        }
    }
}

/// `x = f(x, y)` element by element, `y` broadcast to `x`'s shape.
fn into(x: &mut ArrayD<f32>, y: &ArrayD<f32>, f: impl Fn(f32, f32) -> f32 + Sync + Send) -> Result<(), String> {
    let yv = y.broadcast(x.raw_dim()).ok_or("broadcast failed")?;
    crate::threads::blocks(x.view_mut(), yv, |xs, ys| Zip::from(xs).and(&ys).for_each(|p, &q| *p = f(*p, q)));
    Ok(())
}

fn mismatch(a: &Tensor, b: &Tensor) -> String {
    format!("operand types differ ({} vs {})", a.describe(), b.describe())
}

/// NaN-propagating maximum and minimum (numpy's `maximum`/`minimum`).
fn fmax(p: f32, q: f32) -> f32 {
    if p.is_nan() || q.is_nan() {
        f32::NAN
    } else {
        p.max(q)
    }
}

fn fmin(p: f32, q: f32) -> f32 {
    if p.is_nan() || q.is_nan() {
        f32::NAN
    } else {
        p.min(q)
    }
}

/// Integer power with wrapping, negative exponents as numpy would refuse them: 0.
fn ipow(p: i64, q: i64) -> i64 {
    if q < 0 {
        return match p {
            1 => 1,
            -1 if q % 2 == 0 => 1,
            -1 => -1,
            _ => 0,
        };
    }
    p.wrapping_pow(q.min(u32::MAX as i64) as u32)
}

/// The binary family: `Add` … `Mod`, bit operations and `PRelu`.
pub fn binary(op: &Op, inputs: &[Option<&Tensor>]) -> KernelResult {
    let (a, b) = (input(inputs, 0)?, input(inputs, 1)?);
    let unsigned = a.dtype.is_unsigned();
    let out = match (&a.data, &b.data) {
        (Data::F32(x), Data::F32(y)) => {
            Data::F32(float_binary(op, Floats::Borrowed(x), Floats::Borrowed(y), &|| a.describe())?)
        }
        (Data::I64(x), Data::I64(y)) => {
            if matches!(op, Op::Div(_) | Op::Mod(_)) && y.iter().any(|&q| q == 0) {
                return Err("integer division by zero".into());
            }
            Data::I64(match op {
                Op::Add(_) => zip(x, y, i64::wrapping_add)?,
                Op::Sub(_) => zip(x, y, i64::wrapping_sub)?,
                Op::Mul(_) => zip(x, y, i64::wrapping_mul)?,
                Op::Div(_) if a.dtype == DType::U64 => zip(x, y, |p, q| ((p as u64) / (q as u64)) as i64)?,
                Op::Div(_) => zip(x, y, i64::wrapping_div)?,
                Op::Pow(_) => zip(x, y, ipow)?,
                Op::Mod(m) if m.fmod == 1 => zip(x, y, i64::wrapping_rem)?,
                Op::Mod(_) if a.dtype == DType::U64 => zip(x, y, |p, q| ((p as u64) % (q as u64)) as i64)?,
                Op::Mod(_) => zip(x, y, |p, q| p.wrapping_rem(q).wrapping_add(q).wrapping_rem(q))?,
                Op::BitShift(s) => {
                    let left = match s.direction.as_str() {
                        "LEFT" => true,
                        "RIGHT" => false,
                        d => return Err(format!("BitShift direction `{d}` (expected LEFT or RIGHT)")),
                    };
                    if !unsigned {
                        return Err(format!("BitShift takes unsigned integers, got {}", a.describe()));
                    }
                    let bits = a.dtype.bits() as i64;
                    zip(x, y, |p, q| {
                        if !(0..bits).contains(&q) {
                            0
                        } else if left {
                            ((p as u64) << q) as i64
                        } else {
                            ((p as u64) >> q) as i64
                        }
                    })?
                }
                Op::BitwiseAnd(_) => zip(x, y, |p, q| p & q)?,
                Op::BitwiseOr(_) => zip(x, y, |p, q| p | q)?,
                Op::BitwiseXor(_) => zip(x, y, |p, q| p ^ q)?,
                Op::PRelu(_) => zip(x, y, |p, q| if p < 0 { q.wrapping_mul(p) } else { p })?,
                _ => return Err(format!("{} does not take {}", op.name(), a.describe())),
            })
        }
        (Data::F32(x), Data::I64(y)) if matches!(op, Op::Pow(_)) => Data::F32(pow(x, &y.mapv(|q| q as f32))?),
        (Data::I64(x), Data::F32(y)) if matches!(op, Op::Pow(_)) => {
            // An integer base keeps its type: the float power truncated.
            Data::I64(zip(x, y, |p, q| (p as f64).powf(f64::from(q)) as i64)?)
        }
        _ => return Err(mismatch(a, b)),
    };
    Ok(vec![Tensor::with_dtype(a.dtype, out)])
}

/// A binary op of floats (`what` describes input 0, for the error when `op` takes
/// none), into the storage of an input handed over when it has the result's shape.
pub(super) fn float_binary(op: &Op, x: Floats, y: Floats, what: &dyn Fn() -> String) -> Result<ArrayD<f32>, String> {
    Ok(match op {
        Op::Add(_) => zip_f32(x, y, |p, q| p + q)?,
        Op::Sub(_) => zip_f32(x, y, |p, q| p - q)?,
        Op::Mul(_) => zip_f32(x, y, |p, q| p * q)?,
        Op::Div(_) => zip_f32(x, y, |p, q| p / q)?,
        Op::Pow(_) => pow(x.view(), y.view())?,
        Op::Mod(m) if m.fmod == 1 => zip(x.view(), y.view(), |p, q| p % q)?,
        Op::Mod(_) => return Err("Mod of floats needs fmod = 1".into()),
        Op::PRelu(_) => zip(x.view(), y.view(), |p, q| if p < 0.0 { q * p } else { p })?,
        _ => return Err(format!("{} does not take {}", op.name(), what())),
    })
}

/// `x ^ y` with fast paths for the constant exponents models use (GELU's cube, RMS's square).
fn pow(x: &ArrayD<f32>, y: &ArrayD<f32>) -> Result<ArrayD<f32>, String> {
    if y.len() == 1 && y.ndim() <= x.ndim() {
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

/// Variadic `Max`, `Min`, `Sum`, `Mean`.
pub fn variadic(op: &Op, inputs: &[Option<&Tensor>]) -> KernelResult {
    let mut acc = input(inputs, 0)?.clone();
    for i in 1..inputs.len() {
        let b = input(inputs, i)?;
        acc.data = match (&acc.data, &b.data) {
            (Data::F32(x), Data::F32(y)) => Data::F32(match op {
                Op::Max(_) => zip(x, y, fmax)?,
                Op::Min(_) => zip(x, y, fmin)?,
                _ => zip(x, y, |p, q| p + q)?,
            }),
            (Data::I64(x), Data::I64(y)) => Data::I64(match op {
                Op::Max(_) if acc.dtype == DType::U64 => zip(x, y, |p, q| (p as u64).max(q as u64) as i64)?,
                Op::Min(_) if acc.dtype == DType::U64 => zip(x, y, |p, q| (p as u64).min(q as u64) as i64)?,
                Op::Max(_) => zip(x, y, i64::max)?,
                Op::Min(_) => zip(x, y, i64::min)?,
                _ => zip(x, y, i64::wrapping_add)?,
            }),
            _ => return Err(mismatch(&acc, b)),
        };
    }
    if matches!(op, Op::Mean(_)) {
        let n = inputs.len();
        acc.data = match acc.data {
            Data::F32(x) => Data::F32(x.mapv(|v| v / n as f32)),
            Data::I64(x) => Data::I64(x.mapv(|v| v / n as i64)),
            Data::Bool(_) => return Err("Mean of bools".into()),
        };
    }
    Ok(vec![acc])
}

/// Comparisons and `And`/`Or`/`Xor`.
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
            Op::Xor(_) => zip(x, y, |p, q| p != q)?,
            _ => cmp(op, x, y)?,
        },
        (Data::F32(x), Data::F32(y)) => cmp(op, x, y)?,
        (Data::I64(x), Data::I64(y)) if a.dtype == DType::U64 => cmp(op, &x.mapv(|v| v as u64), &y.mapv(|v| v as u64))?,
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

/// `Cast{to,saturate,round_mode}` (and `CastLike` with the target's dtype).
pub fn cast(to: DType, saturate: bool, round_mode: &str, inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    let round = RoundMode::parse(round_mode)
        .ok_or_else(|| format!("round_mode `{round_mode}` (expected up, down or nearest)"))?;
    let data = if to.is_float() {
        let values = match &x.data {
            Data::F32(a) => a.clone(),
            Data::I64(a) if x.dtype == DType::U64 => a.mapv(|v| v as u64 as f32),
            Data::I64(a) => a.mapv(|v| v as f32),
            Data::Bool(a) => a.mapv(|v| f32::from(u8::from(v))),
        };
        Data::F32(match (to, to.minifloat()) {
            (_, Some(f)) => values.mapv(|v| f.decode(f.encode(v, saturate))),
            (DType::F8E8M0, _) => values.mapv(|v| decode_e8m0(encode_e8m0(v, saturate, round))),
            (DType::F16, _) => values.mapv(|v| half::f16::from_f32(v).to_f32()),
            (DType::BF16, _) => values.mapv(|v| half::bf16::from_f32(v).to_f32()),
            _ => values,
        })
    } else if to == DType::Bool {
        Data::Bool(match &x.data {
            Data::F32(a) => a.mapv(|v| v != 0.0),
            Data::I64(a) => a.mapv(|v| v != 0),
            Data::Bool(a) => a.clone(),
        })
    } else {
        Data::I64(match &x.data {
            // Float to integer truncates toward zero, then wraps to the width (numpy's
            // and ml_dtypes' conversions, which generate ONNX's expected values).
            Data::F32(a) => a.mapv(|v| wrap_int(v as i64, to)),
            Data::I64(a) => a.mapv(|v| wrap_int(v, to)),
            Data::Bool(a) => a.mapv(i64::from),
        })
    };
    Ok(vec![Tensor::with_dtype(to, data)])
}

/// `Clip(x[, min[, max]])`: `min(max(x, min), max)`, as numpy's `clip`.
pub fn clip(inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    let bound = |slot: usize| -> Result<Option<&Tensor>, String> {
        match optional(inputs, slot) {
            Some(b) if b.len() != 1 => Err(format!("bound (input {slot}) must be a scalar, got {}", b.describe())),
            b => Ok(b),
        }
    };
    let (lo, hi) = (bound(1)?, bound(2)?);
    let data = match &x.data {
        Data::F32(a) => {
            let get = |t: Option<&Tensor>, default: f32| -> Result<f32, String> {
                match t {
                    None => Ok(default),
                    Some(t) => t.as_f32().and_then(|v| v.iter().next().copied()).ok_or_else(|| mismatch(x, t)),
                }
            };
            let (lo, hi) = (get(lo, f32::NEG_INFINITY)?, get(hi, f32::INFINITY)?);
            Data::F32(a.mapv(|v| if v.is_nan() { v } else { v.max(lo).min(hi) }))
        }
        Data::I64(a) => {
            let get = |t: Option<&Tensor>, default: i64| -> Result<i64, String> {
                match t {
                    None => Ok(default),
                    Some(t) => t.as_i64().and_then(|v| v.iter().next().copied()).ok_or_else(|| mismatch(x, t)),
                }
            };
            let (lo, hi) = (get(lo, i64::MIN)?, get(hi, i64::MAX)?);
            Data::I64(a.mapv(|v| v.max(lo).min(hi)))
        }
        Data::Bool(_) => return Err("Clip does not take bool".into()),
    };
    Ok(vec![Tensor::with_dtype(x.dtype, data)])
}

/// `Dropout(data[, ratio[, training_mode]])`: in inference the data unchanged and an
/// all-true mask. Training mode is random unless the ratio is 0; it is refused.
pub fn dropout(inputs: &[Option<&Tensor>], n_outputs: usize) -> KernelResult {
    let x = input(inputs, 0)?;
    let training = match optional(inputs, 2) {
        Some(t) => t.as_bool().and_then(|a| a.iter().next().copied()).ok_or("training_mode must be a bool scalar")?,
        None => false,
    };
    if training {
        let ratio = match optional(inputs, 1) {
            Some(r) => r.to_f32_vec().first().copied().ok_or("ratio is empty")?,
            None => 0.5,
        };
        if ratio != 0.0 {
            return Err(format!(
                "training-mode Dropout with ratio {ratio} drops elements at random; shardc runs inference only"
            ));
        }
    }
    let mut outs = vec![x.clone()];
    if n_outputs > 1 {
        outs.push(Tensor::bool(ArrayD::from_elem(IxDyn(x.shape()), true)));
    }
    Ok(outs)
}

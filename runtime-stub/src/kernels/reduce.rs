//! Reductions and scans.

use ndarray::{ArrayD, Axis, IxDyn};

/// A reduction of one lane.
type Lane<T> = Box<dyn Fn(ndarray::ArrayView1<T>) -> T + Sync>;

use shardc_ir::Op;

use super::{axis, input, ints, optional, KernelResult};
use crate::tensor::{Data, Tensor};

/// `ReduceX(data[, axes])` for every reduction op: over the axes in input 1 (every
/// axis when absent or empty, unless `noop_with_empty_axes`). Reductions over no
/// elements give the op's identity (0 for sums, 1 for products, −∞/+∞ for max/min,
/// −∞ for the logs of sums).
pub fn reduce(op: &Op, inputs: &[Option<&Tensor>]) -> KernelResult {
    let (keepdims, noop) = op.reduction().ok_or_else(|| format!("{} is not a reduction", op.name()))?;
    let t = input(inputs, 0)?;
    let rank = t.shape().len();
    let axes: Vec<i64> = match optional(inputs, 1) {
        Some(a) => ints(a, "axes")?,
        None => Vec::new(),
    };
    if axes.is_empty() && noop {
        return Ok(vec![t.clone()]);
    }
    let mut axes: Vec<usize> = if axes.is_empty() {
        (0..rank).collect()
    } else {
        axes.iter().map(|&a| axis(a, rank)).collect::<Result<_, _>>()?
    };
    axes.sort_unstable();
    axes.dedup();
    // The reduced axes moved last and flattened: each row is one output element's
    // lane, reduced at once (L2, log-sum and friends are not per-axis repeatable).
    // Rows over the run's threads when many elements (each row reduced alone: the same
    // bits on any count); the input read in place when its reduced axes are last.
    fn go<T: Copy + Send + Sync>(
        a: &ArrayD<T>,
        axes: &[usize],
        keep: bool,
        f: impl Fn(ndarray::ArrayView1<T>) -> T + Sync,
    ) -> Result<ArrayD<T>, String> {
        use rayon::prelude::*;
        let rank = a.ndim();
        let kept: Vec<usize> = (0..rank).filter(|d| !axes.contains(d)).collect();
        let perm: Vec<usize> = kept.iter().chain(axes).copied().collect();
        let rows: usize = kept.iter().map(|&d| a.shape()[d]).product();
        let width: usize = axes.iter().map(|&d| a.shape()[d]).product();
        let moved = a.view().permuted_axes(IxDyn(&perm));
        let moved = if moved.is_standard_layout() {
            ndarray::CowArray::from(moved)
        } else {
            ndarray::CowArray::from(crate::threads::standard(moved))
        };
        let flat = moved.view().into_shape_with_order((rows, width)).map_err(|e| e.to_string())?;
        let values: Vec<T> = match crate::threads::current() {
            Some(pool) if rows > 1 && rows.saturating_mul(width) >= crate::threads::SPLIT_ELEMENTS => {
                pool.install(|| (0..rows).into_par_iter().map(|r| f(flat.row(r))).collect())
            }
            _ => flat.outer_iter().map(&f).collect(),
        };
        let shape: Vec<usize> =
            (0..rank).filter_map(|d| if axes.contains(&d) { keep.then_some(1) } else { Some(a.shape()[d]) }).collect();
        ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|e| e.to_string())
    }
    let data = match &t.data {
        Data::F32(a) => {
            // Accumulate in f64: sums of thousands of f32 values keep their digits.
            let sum = |l: ndarray::ArrayView1<f32>| l.iter().map(|&v| f64::from(v)).sum::<f64>();
            let f: Lane<f32> = match op {
                Op::ReduceMean(_) => Box::new(move |l| (sum(l) / l.len() as f64) as f32),
                Op::ReduceSum(_) => Box::new(move |l| sum(l) as f32),
                Op::ReduceMax(_) => Box::new(|l| {
                    l.fold(f32::NEG_INFINITY, |m, &v| if v.is_nan() || m.is_nan() { f32::NAN } else { m.max(v) })
                }),
                Op::ReduceMin(_) => Box::new(|l| {
                    l.fold(f32::INFINITY, |m, &v| if v.is_nan() || m.is_nan() { f32::NAN } else { m.min(v) })
                }),
                Op::ReduceProd(_) => Box::new(|l| l.iter().map(|&v| f64::from(v)).product::<f64>() as f32),
                Op::ReduceL1(_) => Box::new(|l| l.iter().map(|&v| f64::from(v.abs())).sum::<f64>() as f32),
                Op::ReduceL2(_) => {
                    Box::new(|l| l.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt() as f32)
                }
                Op::ReduceSumSquare(_) => {
                    Box::new(|l| l.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() as f32)
                }
                Op::ReduceLogSum(_) => Box::new(move |l| sum(l).ln() as f32),
                Op::ReduceLogSumExp(_) => Box::new(|l| {
                    let m = l.fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
                    if m.is_infinite() {
                        return m as f32;
                    }
                    (m + l.iter().map(|&v| (f64::from(v) - m).exp()).sum::<f64>().ln()) as f32
                }),
                _ => return Err(format!("{} is not a reduction", op.name())),
            };
            Data::F32(go(a, &axes, keepdims, f)?)
        }
        Data::I64(a) => {
            let f: Lane<i64> = match op {
                Op::ReduceMean(_) => {
                    Box::new(|l| l.iter().fold(0i64, |s, &v| s.wrapping_add(v)) / l.len().max(1) as i64)
                }
                Op::ReduceSum(_) => Box::new(|l| l.iter().fold(0i64, |s, &v| s.wrapping_add(v))),
                Op::ReduceMax(_) => Box::new(|l| l.fold(i64::MIN, |m, &v| m.max(v))),
                Op::ReduceMin(_) => Box::new(|l| l.fold(i64::MAX, |m, &v| m.min(v))),
                Op::ReduceProd(_) => Box::new(|l| l.iter().fold(1i64, |s, &v| s.wrapping_mul(v))),
                Op::ReduceL1(_) => Box::new(|l| l.iter().fold(0i64, |s, &v| s.wrapping_add(v.wrapping_abs()))),
                Op::ReduceSumSquare(_) => Box::new(|l| l.iter().fold(0i64, |s, &v| s.wrapping_add(v.wrapping_mul(v)))),
                Op::ReduceL2(_) => {
                    Box::new(|l| (l.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt()) as i64)
                }
                _ => return Err(format!("{} does not take {}", op.name(), t.describe())),
            };
            Data::I64(go(a, &axes, keepdims, f)?)
        }
        Data::Bool(a) => match op {
            Op::ReduceMax(_) => Data::Bool(go(a, &axes, keepdims, |l| l.iter().any(|&v| v))?),
            Op::ReduceMin(_) => Data::Bool(go(a, &axes, keepdims, |l| l.iter().all(|&v| v))?),
            _ => return Err(format!("{} does not take {}", op.name(), t.describe())),
        },
    };
    Ok(vec![Tensor::with_dtype(t.dtype, data)])
}

/// `ArgMax` / `ArgMin{axis,keepdims,select_last_index}`.
pub fn arg(max: bool, ax: i64, keepdims: bool, last: bool, inputs: &[Option<&Tensor>]) -> KernelResult {
    let t = input(inputs, 0)?;
    let ax = axis(ax, t.shape().len())?;
    let values: ArrayD<f64> = match &t.data {
        Data::F32(a) => a.mapv(f64::from),
        Data::I64(a) => a.mapv(|v| v as f64),
        Data::Bool(a) => a.mapv(|v| f64::from(u8::from(v))),
    };
    if t.shape()[ax] == 0 {
        return Err(format!("{} over an empty axis", if max { "ArgMax" } else { "ArgMin" }));
    }
    let mut out = values.map_axis(Axis(ax), |lane| {
        let mut best = 0usize;
        for (i, &v) in lane.iter().enumerate() {
            let b = lane[best];
            let better = if max { v > b } else { v < b };
            if better || (last && v == b) {
                best = i;
            }
        }
        best as i64
    });
    if keepdims {
        out.insert_axis_inplace(Axis(ax));
    }
    Ok(vec![Tensor::i64(out)])
}

/// `CumSum{exclusive,reverse}(x, axis)`.
pub fn cumsum(exclusive: bool, reverse: bool, inputs: &[Option<&Tensor>]) -> KernelResult {
    let t = input(inputs, 0)?;
    let a = *ints(input(inputs, 1)?, "axis")?.first().ok_or("axis is empty")?;
    let ax = Axis(axis(a, t.shape().len())?);
    fn scan<T: Copy + std::ops::Add<Output = T> + Default>(
        a: &ArrayD<T>,
        ax: Axis,
        exclusive: bool,
        reverse: bool,
    ) -> ArrayD<T> {
        let mut out = a.clone();
        for mut lane in out.lanes_mut(ax) {
            let n = lane.len();
            let mut acc = T::default();
            for step in 0..n {
                let i = if reverse { n - 1 - step } else { step };
                let v = lane[i];
                if exclusive {
                    lane[i] = acc;
                    acc = acc + v;
                } else {
                    acc = acc + v;
                    lane[i] = acc;
                }
            }
        }
        out
    }
    let data = match &t.data {
        Data::F32(x) => Data::F32(scan(x, ax, exclusive, reverse)),
        Data::I64(x) => Data::I64(scan(x, ax, exclusive, reverse)),
        Data::Bool(_) => return Err(format!("cannot sum {}", t.describe())),
    };
    Ok(vec![Tensor::with_dtype(t.dtype, data)])
}

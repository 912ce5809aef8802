//! Reductions and scans.

use ndarray::{ArrayD, Axis};

use super::{axis, input, ints, optional, KernelResult};
use crate::tensor::{Data, Tensor};

/// Which reduction.
#[derive(Clone, Copy)]
pub enum Kind {
    Mean,
    Sum,
    Max,
}

/// `ReduceMean`, `ReduceSum`, `ReduceMax` over `axes` (attribute, else input 1).
pub fn reduce(
    kind: Kind,
    attr_axes: Option<&[i64]>,
    keepdims: i64,
    noop_with_empty_axes: i64,
    inputs: &[Option<&Tensor>],
) -> KernelResult {
    let t = input(inputs, 0)?;
    let rank = t.shape().len();
    let axes: Vec<i64> = match (attr_axes, optional(inputs, 1)) {
        (Some(a), _) => a.to_vec(),
        (None, Some(a)) => ints(a, "axes")?,
        (None, None) => Vec::new(),
    };
    if axes.is_empty() && noop_with_empty_axes != 0 {
        return Ok(vec![t.clone()]);
    }
    let mut axes: Vec<usize> = if axes.is_empty() {
        (0..rank).collect()
    } else {
        axes.iter().map(|&a| axis(a, rank)).collect::<Result<_, _>>()?
    };
    axes.sort_unstable();
    axes.dedup();
    fn go<T: Copy>(a: &ArrayD<T>, axes: &[usize], keep: bool, f: impl Fn(ndarray::ArrayView1<T>) -> T) -> ArrayD<T> {
        let mut out = a.clone();
        for &ax in axes.iter().rev() {
            out = out.map_axis(Axis(ax), &f);
            if keep {
                out.insert_axis_inplace(Axis(ax));
            }
        }
        out
    }
    let keep = keepdims != 0;
    let data = match (&t.data, kind) {
        (Data::F32(a), Kind::Mean) => Data::F32(go(a, &axes, keep, |l| l.sum() / l.len().max(1) as f32)),
        (Data::F32(a), Kind::Sum) => Data::F32(go(a, &axes, keep, |l| l.sum())),
        (Data::F32(a), Kind::Max) => Data::F32(go(a, &axes, keep, |l| l.fold(f32::NEG_INFINITY, |m, &v| m.max(v)))),
        (Data::I64(a), Kind::Mean) => Data::I64(go(a, &axes, keep, |l| l.sum() / l.len().max(1) as i64)),
        (Data::I64(a), Kind::Sum) => Data::I64(go(a, &axes, keep, |l| l.sum())),
        (Data::I64(a), Kind::Max) => Data::I64(go(a, &axes, keep, |l| l.fold(i64::MIN, |m, &v| m.max(v)))),
        (Data::Bool(_), _) => return Err(format!("cannot reduce {}", t.describe())),
    };
    Ok(vec![Tensor::with_dtype(t.dtype, data)])
}

/// `ArgMax{axis,keepdims,select_last_index}`.
pub fn argmax(ax: i64, keepdims: bool, last: bool, inputs: &[Option<&Tensor>]) -> KernelResult {
    let t = input(inputs, 0)?;
    let ax = axis(ax, t.shape().len())?;
    let values: ArrayD<f32> = match &t.data {
        Data::F32(a) => a.clone(),
        Data::I64(a) => a.mapv(|v| v as f32),
        Data::Bool(a) => a.mapv(|v| f32::from(u8::from(v))),
    };
    let mut out = values.map_axis(Axis(ax), |lane| {
        let mut best = 0usize;
        for (i, &v) in lane.iter().enumerate() {
            let b = lane[best];
            if v > b || (last && v == b) {
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

//! Normalisations along an axis: softmax and its kin, layer, RMS, Lp and
//! mean-variance normalisation.

use ndarray::{ArrayD, Axis, IxDyn};
use shardc_ir::ops::LayerNormalization;
use shardc_ir::DType;

use super::linalg::floats;
use super::simd::softmax_rows;
use super::{axis, input, optional, Floats, KernelResult};
use crate::tensor::{Data, Tensor};

/// `Softmax{axis}` (numerically stable).
pub fn softmax(ax: i64, inputs: &[Option<&Tensor>]) -> KernelResult {
    let t = input(inputs, 0)?;
    let out = softmax_floats(ax, Floats::Borrowed(floats(t, "input")?))?;
    Ok(vec![Tensor::with_dtype(t.dtype, crate::tensor::Data::F32(out))])
}

/// Softmax along `ax` of `x`, into its storage when handed over.
pub(super) fn softmax_floats(ax: i64, x: Floats) -> Result<ArrayD<f32>, String> {
    let ax = axis(ax, x.view().ndim())?;
    let width = x.view().shape()[ax];
    let mut out = match x {
        Floats::Owned(a) if a.is_standard_layout() => a,
        x => crate::threads::standard(x.view().view()),
    };
    let empty = out.is_empty();
    let last = ax + 1 == out.ndim();
    match out.as_slice_mut() {
        _ if empty => {}
        Some(xs) if last => crate::threads::each_row(xs, width, |rows| softmax_rows(rows, width)),
        _ => {
            for mut lane in out.lanes_mut(Axis(ax)) {
                let mut row = lane.to_vec();
                softmax_rows(&mut row, width);
                lane.iter_mut().zip(row).for_each(|(v, r)| *v = r);
            }
        }
    }
    Ok(out)
}

/// `LayerNormalization{axis,epsilon}(X, scale[, bias])` → Y[, Mean, InvStdDev].
pub fn layer_norm(l: &LayerNormalization, inputs: &[Option<&Tensor>], n_outputs: usize) -> KernelResult {
    let t = input(inputs, 0)?;
    let x = floats(t, "X")?;
    let ax = axis(l.axis, x.ndim())?;
    let outer: usize = x.shape()[..ax].iter().product();
    let inner: usize = x.shape()[ax..].iter().product();
    let norm_shape = IxDyn(&x.shape()[ax..]);
    let scale = floats(input(inputs, 1)?, "scale")?;
    let scale: Vec<f32> =
        scale.broadcast(norm_shape.clone()).ok_or("scale does not broadcast")?.iter().copied().collect();
    let bias: Option<Vec<f32>> = match optional(inputs, 2) {
        Some(b) => {
            Some(floats(b, "B")?.broadcast(norm_shape).ok_or("bias does not broadcast")?.iter().copied().collect())
        }
        None => None,
    };
    let xs = x.as_standard_layout();
    let xs = xs.as_slice().ok_or("input is not contiguous")?;
    // Mean and 1/σ of a row.
    let stats = |row: &[f32]| {
        let mean = row.iter().sum::<f32>() / inner as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / inner as f32;
        (mean, 1.0 / (var + l.epsilon).sqrt())
    };
    let mut y = vec![0f32; xs.len()];
    // Rows over the run's threads (each row computed alone: the same bits on any count).
    crate::threads::each_row_at(&mut y, inner, |first, block| {
        for (r, out) in block.chunks_mut(inner.max(1)).enumerate() {
            let row = &xs[(first + r) * inner..][..inner];
            let (mean, inv_std) = stats(row);
            for i in 0..inner {
                let v = (row[i] - mean) * inv_std * scale[i];
                out[i] = match &bias {
                    Some(b) => v + b[i],
                    None => v,
                };
            }
        }
    });
    let (means, inv_stds): (Vec<f32>, Vec<f32>) = if n_outputs > 1 {
        (0..outer).map(|r| stats(&xs[r * inner..(r + 1) * inner])).unzip()
    } else {
        Default::default()
    };
    let mut outs = vec![Tensor::with_dtype(
        t.dtype,
        crate::tensor::Data::F32(ArrayD::from_shape_vec(IxDyn(x.shape()), y).map_err(|e| e.to_string())?),
    )];
    let mut stat_shape = x.shape()[..ax].to_vec();
    stat_shape.resize(x.ndim(), 1);
    for stats in [means, inv_stds].into_iter().take(n_outputs.saturating_sub(1)) {
        let a = ArrayD::from_shape_vec(IxDyn(&stat_shape), stats).map_err(|e| e.to_string())?;
        outs.push(Tensor::with_dtype(DType::F32, crate::tensor::Data::F32(a)));
    }
    Ok(outs)
}

/// Softmax-like lane operations along `axis`.
fn along_axis(t: &Tensor, ax: i64, f: impl Fn(&mut ndarray::ArrayViewMut1<f32>)) -> KernelResult {
    let x = floats(t, "input")?;
    let ax = axis(ax, x.ndim())?;
    let mut out = x.as_standard_layout().into_owned();
    for mut lane in out.lanes_mut(Axis(ax)) {
        f(&mut lane);
    }
    Ok(vec![Tensor::with_dtype(t.dtype, Data::F32(out))])
}

/// `LogSoftmax{axis}`: `x − max − ln Σ e^(x − max)`.
pub fn log_softmax(ax: i64, inputs: &[Option<&Tensor>]) -> KernelResult {
    along_axis(input(inputs, 0)?, ax, |lane| {
        let max = lane.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let sum: f64 = lane.iter().map(|&v| f64::from(v - max).exp()).sum();
        let log = sum.ln() as f32;
        lane.mapv_inplace(|v| v - max - log);
    })
}

/// `Hardmax{axis}`: 1 at the first maximum of each lane, 0 elsewhere.
pub fn hardmax(ax: i64, inputs: &[Option<&Tensor>]) -> KernelResult {
    along_axis(input(inputs, 0)?, ax, |lane| {
        let mut best = 0;
        for (i, &v) in lane.iter().enumerate() {
            if v > lane[best] {
                best = i;
            }
        }
        for (i, v) in lane.iter_mut().enumerate() {
            *v = if i == best { 1.0 } else { 0.0 };
        }
    })
}

/// `LpNormalization{axis,p}`: `x / (Σ |x|^p)^(1/p)` along `axis`.
pub fn lp_normalization(ax: i64, p: i64, inputs: &[Option<&Tensor>]) -> KernelResult {
    if p != 1 && p != 2 {
        return Err(format!("p = {p} (expected 1 or 2)"));
    }
    along_axis(input(inputs, 0)?, ax, |lane| {
        let norm = if p == 1 {
            lane.iter().map(|&v| f64::from(v.abs())).sum::<f64>()
        } else {
            lane.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt()
        } as f32;
        lane.mapv_inplace(|v| v / norm);
    })
}

/// Rows `[outer, inner]` of a tensor normalised over `axis..rank`, with `scale` (and
/// `bias`) broadcast to the normalised shape.
fn normalised_rows(x: &ArrayD<f32>, ax: usize) -> (usize, usize) {
    (x.shape()[..ax].iter().product(), x.shape()[ax..].iter().product())
}

/// `RMSNormalization{axis,epsilon}(X, scale)`.
pub fn rms_norm(ax: i64, epsilon: f32, inputs: &[Option<&Tensor>]) -> KernelResult {
    let t = input(inputs, 0)?;
    let x = floats(t, "X")?;
    let ax = axis(ax, x.ndim())?;
    let (outer, inner) = normalised_rows(x, ax);
    let scale = floats(input(inputs, 1)?, "scale")?;
    let scale: Vec<f32> =
        scale.broadcast(IxDyn(&x.shape()[ax..])).ok_or("scale does not broadcast")?.iter().copied().collect();
    let xs = x.as_standard_layout();
    let xs = xs.as_slice().ok_or("input is not contiguous")?;
    let mut y = vec![0f32; xs.len()];
    for r in 0..outer {
        let row = &xs[r * inner..(r + 1) * inner];
        let mean_sq = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / inner.max(1) as f64;
        let inv = 1.0 / ((mean_sq as f32) + epsilon).sqrt();
        for i in 0..inner {
            y[r * inner + i] = row[i] * inv * scale[i];
        }
    }
    let out = ArrayD::from_shape_vec(IxDyn(x.shape()), y).map_err(|e| e.to_string())?;
    Ok(vec![Tensor::with_dtype(t.dtype, Data::F32(out))])
}

/// `MeanVarianceNormalization{axes}`: `(X − E[X]) / (sqrt(E[X²] − E[X]²) + 1e-9)`, as
/// the op's ONNX function defines it.
pub fn mean_variance_normalization(axes: &[i64], inputs: &[Option<&Tensor>]) -> KernelResult {
    let t = input(inputs, 0)?;
    let x = floats(t, "X")?;
    let rank = x.ndim();
    let mut axes: Vec<usize> = axes.iter().map(|&a| axis(a, rank)).collect::<Result<_, _>>()?;
    axes.sort_unstable();
    axes.dedup();
    let mut mean = x.mapv(f64::from);
    let mut mean_sq = x.mapv(|v| f64::from(v) * f64::from(v));
    for &a in axes.iter().rev() {
        let n = x.shape()[a].max(1) as f64;
        mean = mean.sum_axis(Axis(a)).insert_axis(Axis(a)).mapv(|v| v / n);
        mean_sq = mean_sq.sum_axis(Axis(a)).insert_axis(Axis(a)).mapv(|v| v / n);
    }
    let mean = mean.broadcast(x.raw_dim()).ok_or("broadcast failed")?.to_owned();
    let mean_sq = mean_sq.broadcast(x.raw_dim()).ok_or("broadcast failed")?.to_owned();
    let mut out = x.to_owned();
    ndarray::Zip::from(&mut out).and(&mean).and(&mean_sq).for_each(|o, &m, &s| {
        let std = (s - m * m).sqrt();
        *o = ((f64::from(*o) - m) / (std + 1e-9)) as f32;
    });
    Ok(vec![Tensor::with_dtype(t.dtype, Data::F32(out))])
}

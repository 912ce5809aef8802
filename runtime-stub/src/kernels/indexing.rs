//! Indexing kernels: gathers, selections by value or position, reordering along an axis.

use ndarray::{ArrayD, Axis, IxDyn};
use shardc_ir::DType;

use super::movement::reshaped;
use super::{array, axis, input, ints, KernelResult};
use crate::tensor::{Data, Tensor};

/// Row-major strides of a shape.
pub(super) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Normalise index `i` into `0..n`, or say which index was out of range.
pub(super) fn index(i: i64, n: usize, what: &str) -> Result<usize, String> {
    let j = if i < 0 { i + n as i64 } else { i };
    if (0..n as i64).contains(&j) {
        Ok(j as usize)
    } else {
        Err(format!("{what} index {i} is out of range for size {n}"))
    }
}

/// `Gather{axis}`.
pub fn gather(ax: i64, inputs: &[Option<&Tensor>]) -> KernelResult {
    let (x, idx) = (input(inputs, 0)?, input(inputs, 1)?);
    let ax = axis(ax, x.shape().len())?;
    let n = x.shape()[ax] as i64;
    let indices: Vec<usize> = ints(idx, "indices")?
        .into_iter()
        .map(|i| {
            let j = if i < 0 { i + n } else { i };
            if (0..n).contains(&j) {
                Ok(j as usize)
            } else {
                Err(format!("index {i} is out of range for axis {ax} of size {n}"))
            }
        })
        .collect::<Result<_, _>>()?;
    let mut shape = x.shape()[..ax].to_vec();
    shape.extend_from_slice(idx.shape());
    shape.extend_from_slice(&x.shape()[ax + 1..]);
    Ok(vec![map_data!(x, |a| reshaped(&a.select(Axis(ax), &indices), &shape)?)])
}

/// `Gather{axis: 0}` of rows of a matrix kept transposed: `data` is the matrix's
/// transpose `[K, N]`, the result the rows `indices` of the `[N, K]` matrix, shaped
/// `indices.shape + [K]` (each row read as a column of `data`).
pub fn gather_columns(inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    let data = input(inputs, 0)?;
    if data.shape().len() != 2 {
        return Err(format!("a transposed table must be 2-D, got {}", data.describe()));
    }
    let columns = gather(1, inputs)?.into_iter().next().ok_or("no lookup")?;
    // [K, indices…] → [indices…, K].
    let rank = columns.shape().len();
    let order: Vec<usize> = (1..rank).chain([0]).collect();
    Ok(map_data!(&columns, |a| a.view().permuted_axes(IxDyn(&order)).as_standard_layout().into_owned()))
}

/// `GatherElements{axis}(data, indices)`.
pub fn gather_elements(ax: i64, inputs: &[Option<&Tensor>]) -> KernelResult {
    let (x, idx) = (input(inputs, 0)?, input(inputs, 1)?);
    let rank = x.shape().len();
    let ax = axis(ax, rank)?;
    if idx.shape().len() != rank {
        return Err(format!("indices {} must have the data's rank {rank}", idx.describe()));
    }
    let indices = ints(idx, "indices")?;
    let (xs, is) = (strides(x.shape()), strides(idx.shape()));
    let n = x.shape()[ax];
    let mut offsets = Vec::with_capacity(indices.len());
    for (flat, &i) in indices.iter().enumerate() {
        let mut off = 0;
        for d in 0..rank {
            let coord = (flat / is[d]) % idx.shape()[d].max(1);
            let c = if d == ax { index(i, n, "GatherElements")? } else { coord };
            if d != ax && c >= x.shape()[d] {
                return Err(format!("indices {} exceed the data {} on axis {d}", idx.describe(), x.describe()));
            }
            off += c * xs[d];
        }
        offsets.push(off);
    }
    let shape = idx.shape().to_vec();
    fn pick<T: Clone>(a: &ArrayD<T>, offsets: &[usize], shape: &[usize]) -> Result<ArrayD<T>, String> {
        let flat = a.as_standard_layout();
        let s = flat.as_slice().ok_or("data is not contiguous")?;
        array(shape, offsets.iter().map(|&o| s[o].clone()).collect())
    }
    Ok(vec![map_data!(x, |a| pick(a, &offsets, &shape)?)])
}

/// `GatherND{batch_dims}(data, indices)`.
pub fn gather_nd(batch_dims: i64, inputs: &[Option<&Tensor>]) -> KernelResult {
    let (x, idx) = (input(inputs, 0)?, input(inputs, 1)?);
    let b = usize::try_from(batch_dims).map_err(|_| "batch_dims is negative".to_string())?;
    let ishape = idx.shape();
    let k = *ishape.last().ok_or("indices must have rank >= 1")?;
    let xshape = x.shape();
    if b >= ishape.len() || b + k > xshape.len() || ishape[..b] != xshape[..b] {
        return Err(format!("indices {} do not fit data {} with batch_dims {b}", idx.describe(), x.describe()));
    }
    let indices = ints(idx, "indices")?;
    let xs = strides(xshape);
    let inner: usize = xshape[b + k..].iter().product();
    let batches: usize = xshape[..b].iter().product();
    let per_batch = ishape[b..ishape.len() - 1].iter().product::<usize>();
    let mut offsets = Vec::with_capacity(batches * per_batch);
    for batch in 0..batches {
        let mut base = 0;
        let mut rem = batch;
        for d in (0..b).rev() {
            base += (rem % xshape[d]) * xs[d];
            rem /= xshape[d];
        }
        for t in 0..per_batch {
            let tuple = &indices[(batch * per_batch + t) * k..(batch * per_batch + t + 1) * k];
            let mut off = base;
            for (j, &i) in tuple.iter().enumerate() {
                off += index(i, xshape[b + j], "GatherND")? * xs[b + j];
            }
            offsets.push(off);
        }
    }
    let mut shape = ishape[..ishape.len() - 1].to_vec();
    shape.extend_from_slice(&xshape[b + k..]);
    fn pick<T: Clone>(a: &ArrayD<T>, offsets: &[usize], inner: usize, shape: &[usize]) -> Result<ArrayD<T>, String> {
        let flat = a.as_standard_layout();
        let s = flat.as_slice().ok_or("data is not contiguous")?;
        let mut v = Vec::with_capacity(offsets.len() * inner);
        for &o in offsets {
            v.extend_from_slice(&s[o..o + inner]);
        }
        array(shape, v)
    }
    Ok(vec![map_data!(x, |a| pick(a, &offsets, inner, &shape)?)])
}

/// `NonZero`: the coordinates of the non-zero elements, `[rank, count]`, row-major order.
pub fn non_zero(inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    let shape = x.shape().to_vec();
    let nz: Vec<bool> = match &x.data {
        Data::F32(a) => a.iter().map(|&v| v != 0.0).collect(),
        Data::I64(a) => a.iter().map(|&v| v != 0).collect(),
        Data::Bool(a) => a.iter().copied().collect(),
    };
    let st = strides(&shape);
    let hits: Vec<usize> = nz.iter().enumerate().filter(|(_, &b)| b).map(|(i, _)| i).collect();
    let mut out = vec![0i64; shape.len() * hits.len()];
    for (k, &flat) in hits.iter().enumerate() {
        for d in 0..shape.len() {
            out[d * hits.len() + k] = ((flat / st[d]) % shape[d]) as i64;
        }
    }
    Ok(vec![Tensor::i64(array(&[shape.len(), hits.len()], out)?)])
}

/// `OneHot{axis}(indices, depth, values)`: negative indices count from the end.
pub fn one_hot(ax: i64, inputs: &[Option<&Tensor>]) -> KernelResult {
    let (idx, depth, values) = (input(inputs, 0)?, input(inputs, 1)?, input(inputs, 2)?);
    let depth = depth.to_f32_vec().first().copied().ok_or("depth is empty")? as i64;
    if depth <= 0 {
        return Err(format!("depth {depth} must be positive"));
    }
    if values.len() != 2 {
        return Err(format!("values must hold two elements, got {}", values.describe()));
    }
    let rank = idx.shape().len() + 1;
    let ax = axis(ax, rank)?;
    let indices: Vec<i64> = idx.to_f32_vec().into_iter().map(|v| v as i64).collect();
    let mut shape = idx.shape().to_vec();
    shape.insert(ax, depth as usize);
    let outer: usize = idx.shape()[..ax].iter().product();
    let inner: usize = idx.shape()[ax..].iter().product();
    let d = depth as usize;
    let hot = |o: usize, k: usize, i: usize| {
        let v = indices[o * inner + i];
        let v = if v < 0 { v + depth } else { v };
        v == k as i64
    };
    let positions: Vec<bool> = (0..outer)
        .flat_map(|o| (0..d).flat_map(move |k| (0..inner).map(move |i| (o, k, i))))
        .map(|(o, k, i)| hot(o, k, i))
        .collect();
    let data = match &values.data {
        Data::F32(v) => {
            let (off, on) = (v[[0]], v[[1]]);
            Data::F32(array(&shape, positions.iter().map(|&h| if h { on } else { off }).collect())?)
        }
        Data::I64(v) => {
            let (off, on) = (v[[0]], v[[1]]);
            Data::I64(array(&shape, positions.iter().map(|&h| if h { on } else { off }).collect())?)
        }
        Data::Bool(v) => {
            let (off, on) = (v[[0]], v[[1]]);
            Data::Bool(array(&shape, positions.iter().map(|&h| if h { on } else { off }).collect())?)
        }
    };
    Ok(vec![Tensor::with_dtype(values.dtype, data)])
}

/// `TopK{axis,largest,sorted}(X, K)`: values and indices; ties keep the lower index first.
pub fn top_k(ax: i64, largest: bool, inputs: &[Option<&Tensor>]) -> KernelResult {
    let (x, k) = (input(inputs, 0)?, input(inputs, 1)?);
    let rank = x.shape().len();
    let ax = axis(ax, rank)?;
    let k = *ints(k, "K")?.first().ok_or("K is empty")?;
    let n = x.shape()[ax];
    let k = usize::try_from(k).ok().filter(|&k| k <= n).ok_or_else(|| format!("K = {k} is outside 0..={n}"))?;
    let mut shape = x.shape().to_vec();
    shape[ax] = k;
    let st = strides(x.shape());
    let outer: usize = x.shape()[..ax].iter().product();
    let inner: usize = x.shape()[ax + 1..].iter().product();
    let values: Vec<f64> = match &x.data {
        Data::F32(a) => a.iter().map(|&v| f64::from(v)).collect(),
        Data::I64(a) if x.dtype == DType::U64 => a.iter().map(|&v| v as u64 as f64).collect(),
        Data::I64(a) => a.iter().map(|&v| v as f64).collect(),
        Data::Bool(_) => return Err("TopK does not take bool".into()),
    };
    let mut picks = vec![0usize; outer * k * inner];
    for o in 0..outer {
        for i in 0..inner {
            let base = o * n * inner + i;
            let mut order: Vec<usize> = (0..n).collect();
            let key = |j: usize| values[base + j * st[ax]];
            order.sort_by(|&p, &q| {
                let (a, b) = (key(p), key(q));
                let ord = if largest { b.total_cmp(&a) } else { a.total_cmp(&b) };
                ord.then(p.cmp(&q))
            });
            for (r, &j) in order.iter().take(k).enumerate() {
                picks[(o * k + r) * inner + i] = j;
            }
        }
    }
    let offset = |flat: usize| {
        let (o, rest) = (flat / (k * inner), flat % (k * inner));
        let i = rest % inner;
        o * n * inner + picks[flat] * inner + i
    };
    let data = match &x.data {
        Data::F32(a) => {
            let s: Vec<f32> = a.iter().copied().collect();
            Data::F32(array(&shape, (0..picks.len()).map(|f| s[offset(f)]).collect())?)
        }
        Data::I64(a) => {
            let s: Vec<i64> = a.iter().copied().collect();
            Data::I64(array(&shape, (0..picks.len()).map(|f| s[offset(f)]).collect())?)
        }
        Data::Bool(_) => return Err("TopK does not take bool".into()),
    };
    let indices = array(&shape, picks.iter().map(|&j| j as i64).collect())?;
    Ok(vec![Tensor::with_dtype(x.dtype, data), Tensor::i64(indices)])
}

/// `ReverseSequence{batch_axis,time_axis}(input, sequence_lens)`.
pub fn reverse_sequence(batch_axis: i64, time_axis: i64, inputs: &[Option<&Tensor>]) -> KernelResult {
    let (x, lens) = (input(inputs, 0)?, input(inputs, 1)?);
    let rank = x.shape().len();
    let (b, t) = (axis(batch_axis, rank)?, axis(time_axis, rank)?);
    if b == t || rank < 2 {
        return Err("batch_axis and time_axis must be two different axes".into());
    }
    let lens = ints(lens, "sequence_lens")?;
    if lens.len() != x.shape()[b] {
        return Err(format!("{} sequence lengths for a batch of {}", lens.len(), x.shape()[b]));
    }
    let st = strides(x.shape());
    let total = x.len();
    let mut src = Vec::with_capacity(total);
    for flat in 0..total {
        let bi = (flat / st[b]) % x.shape()[b];
        let ti = (flat / st[t]) % x.shape()[t];
        let len = lens[bi].clamp(0, x.shape()[t] as i64) as usize;
        let tj = if ti < len { len - 1 - ti } else { ti };
        src.push(flat - ti * st[t] + tj * st[t]);
    }
    fn pick<T: Clone>(a: &ArrayD<T>, src: &[usize]) -> Result<ArrayD<T>, String> {
        let flat = a.as_standard_layout();
        let s = flat.as_slice().ok_or("data is not contiguous")?;
        array(a.shape(), src.iter().map(|&i| s[i].clone()).collect())
    }
    Ok(vec![map_data!(x, |a| pick(a, &src)?)])
}

//! Shape and data-movement kernels.

use ndarray::{concatenate, ArrayD, ArrayViewD, Axis, IxDyn, Slice};
use shardc_ir::ops::Shape;
use shardc_ir::{DType, TensorData};

use super::{array, axis, broadcast_shape, input, ints, optional, KernelResult};
use crate::tensor::{Data, Tensor};

/// Apply a shape-generic transformation to whatever storage a tensor has.
macro_rules! map_data {
    ($t:expr, |$a:ident| $body:expr) => {{
        let t: &Tensor = $t;
        let data = match &t.data {
            Data::F32($a) => Data::F32($body),
            Data::I64($a) => Data::I64($body),
            Data::Bool($a) => Data::Bool($body),
        };
        Tensor::with_dtype(t.dtype, data)
    }};
}

fn reshaped<T: Clone>(a: &ArrayD<T>, shape: &[usize]) -> Result<ArrayD<T>, String> {
    a.to_shape(IxDyn(shape)).map(|c| c.into_owned()).map_err(|e| e.to_string())
}

/// `Shape{start,end}`.
pub fn shape(s: &Shape, inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    let r = x.shape().len() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let (start, end) = (clamp(s.start), clamp(s.end.unwrap_or(r)));
    let dims: Vec<i64> = x.shape()[start..end.max(start)].iter().map(|&d| d as i64).collect();
    Ok(vec![Tensor::i64(array(&[dims.len()], dims)?)])
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

/// `Reshape{allowzero}(x, shape)`.
pub fn reshape(allowzero: i64, inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    let target = ints(input(inputs, 1)?, "the target shape")?;
    let total: usize = x.len();
    let mut shape = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            0 if allowzero == 0 => shape.push(*x.shape().get(i).ok_or("0 copies a missing dim")?),
            -1 => {
                infer_at = Some(i);
                shape.push(1);
            }
            t if t < 0 => return Err(format!("invalid target dim {t}")),
            t => shape.push(t as usize),
        }
    }
    if let Some(i) = infer_at {
        let rest: usize = shape.iter().enumerate().filter(|(k, _)| *k != i).map(|(_, d)| d).product();
        if rest == 0 || total % rest != 0 {
            return Err(format!("cannot reshape {:?} into {target:?}", x.shape()));
        }
        shape[i] = total / rest;
    }
    if shape.iter().product::<usize>() != total {
        return Err(format!("cannot reshape {:?} into {shape:?}", x.shape()));
    }
    Ok(vec![map_data!(x, |a| reshaped(a, &shape)?)])
}

/// `Unsqueeze(x, axes)`.
pub fn unsqueeze(inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    let axes = ints(input(inputs, 1)?, "axes")?;
    let rank = x.shape().len() + axes.len();
    let norm: Vec<usize> = axes.iter().map(|&a| axis(a, rank)).collect::<Result<_, _>>()?;
    let mut dims = x.shape().iter();
    let shape: Vec<usize> =
        (0..rank).map(|i| if norm.contains(&i) { 1 } else { dims.next().copied().unwrap_or(1) }).collect();
    Ok(vec![map_data!(x, |a| reshaped(a, &shape)?)])
}

/// `Squeeze(x[, axes])`.
pub fn squeeze(inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    let rank = x.shape().len();
    let axes: Vec<usize> = match optional(inputs, 1) {
        Some(t) => ints(t, "axes")?.iter().map(|&a| axis(a, rank)).collect::<Result<_, _>>()?,
        None => (0..rank).filter(|&i| x.shape()[i] == 1).collect(),
    };
    if let Some(&bad) = axes.iter().find(|&&a| x.shape()[a] != 1) {
        return Err(format!("cannot squeeze axis {bad} of size {}", x.shape()[bad]));
    }
    let shape: Vec<usize> = x.shape().iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d).collect();
    Ok(vec![map_data!(x, |a| reshaped(a, &shape)?)])
}

/// `Concat{axis}`.
pub fn concat(ax: i64, inputs: &[Option<&Tensor>]) -> KernelResult {
    let ts: Vec<&Tensor> = (0..inputs.len()).map(|i| input(inputs, i)).collect::<Result<_, _>>()?;
    let first = ts[0];
    let ax = Axis(axis(ax, first.shape().len())?);
    let data = match &first.data {
        Data::F32(_) => {
            let v: Vec<ArrayViewD<f32>> =
                ts.iter().map(|t| t.as_f32().map(|a| a.view()).ok_or("mixed dtypes")).collect::<Result<_, _>>()?;
            Data::F32(concatenate(ax, &v).map_err(|e| e.to_string())?)
        }
        Data::I64(_) => {
            let v: Vec<ArrayViewD<i64>> =
                ts.iter().map(|t| t.as_i64().map(|a| a.view()).ok_or("mixed dtypes")).collect::<Result<_, _>>()?;
            Data::I64(concatenate(ax, &v).map_err(|e| e.to_string())?)
        }
        Data::Bool(_) => {
            let v: Vec<ArrayViewD<bool>> =
                ts.iter().map(|t| t.as_bool().map(|a| a.view()).ok_or("mixed dtypes")).collect::<Result<_, _>>()?;
            Data::Bool(concatenate(ax, &v).map_err(|e| e.to_string())?)
        }
    };
    Ok(vec![Tensor::with_dtype(first.dtype, data)])
}

/// `Transpose{perm}`.
pub fn transpose(perm: Option<&[i64]>, inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    let rank = x.shape().len();
    let perm: Vec<usize> = match perm {
        Some(p) => p.iter().map(|&a| axis(a, rank)).collect::<Result<_, _>>()?,
        None => (0..rank).rev().collect(),
    };
    if perm.len() != rank {
        return Err(format!("perm {perm:?} does not match rank {rank}"));
    }
    Ok(vec![map_data!(x, |a| a.view().permuted_axes(IxDyn(&perm)).as_standard_layout().into_owned())])
}

/// Resolve one axis of an ONNX slice into an ndarray slice.
fn slice_axis(dim: usize, start: i64, end: i64, step: i64) -> Result<Slice, String> {
    if step == 0 {
        return Err("slice step 0".into());
    }
    let n = dim as i64;
    if step > 0 {
        let s = if start < 0 { start + n } else { start }.clamp(0, n);
        let e = if end < 0 { end + n } else { end }.clamp(0, n);
        Ok(Slice::new(s as isize, Some(e.max(s) as isize), step as isize))
    } else {
        let s = if start < 0 { start + n } else { start }.clamp(-1, n - 1);
        let e = if end < 0 { end + n } else { end }.clamp(-1, n - 1);
        // ndarray walks [lo, hi) backwards from hi - 1: hi = s + 1, lo = e + 1.
        let (lo, hi) = (e + 1, (s + 1).max(e + 1));
        Ok(Slice::new(lo as isize, Some(hi as isize), step as isize))
    }
}

/// `Slice(x, starts, ends[, axes[, steps]])`.
pub fn slice(inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    let starts = ints(input(inputs, 1)?, "starts")?;
    let ends = ints(input(inputs, 2)?, "ends")?;
    let rank = x.shape().len();
    let axes: Vec<usize> = match optional(inputs, 3) {
        Some(t) => ints(t, "axes")?.iter().map(|&a| axis(a, rank)).collect::<Result<_, _>>()?,
        None => (0..starts.len()).collect(),
    };
    let steps = match optional(inputs, 4) {
        Some(t) => ints(t, "steps")?,
        None => vec![1; starts.len()],
    };
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err("starts, ends, axes and steps differ in length".into());
    }
    let mut slices = Vec::new();
    for i in 0..starts.len() {
        slices.push((axes[i], slice_axis(x.shape()[axes[i]], starts[i], ends[i], steps[i])?));
    }
    Ok(vec![map_data!(x, |a| {
        let mut v = a.view();
        for (ax, s) in &slices {
            v.slice_axis_inplace(Axis(*ax), *s);
        }
        v.to_owned()
    })])
}

/// `Split{axis,num_outputs}(x[, split])`.
pub fn split(ax: i64, num_outputs: Option<i64>, inputs: &[Option<&Tensor>], n_outputs: usize) -> KernelResult {
    let x = input(inputs, 0)?;
    let ax = axis(ax, x.shape().len())?;
    let d = x.shape()[ax];
    let sizes: Vec<usize> = match optional(inputs, 1) {
        Some(t) => ints(t, "split")?.into_iter().map(|s| s.max(0) as usize).collect(),
        None => {
            let n = num_outputs.map_or(n_outputs, |n| n.max(1) as usize);
            let part = d.div_ceil(n);
            (0..n).map(|i| part.min(d.saturating_sub(i * part))).collect()
        }
    };
    if sizes.iter().sum::<usize>() != d {
        return Err(format!("split sizes {sizes:?} do not add up to {d}"));
    }
    let mut start = 0;
    let mut outs = Vec::new();
    for s in sizes {
        let sl = Slice::new(start as isize, Some((start + s) as isize), 1);
        outs.push(map_data!(x, |a| a.slice_axis(Axis(ax), sl).to_owned()));
        start += s;
    }
    Ok(outs)
}

/// `Expand(x, shape)`.
pub fn expand(inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    let target: Vec<usize> = ints(input(inputs, 1)?, "the shape")?.into_iter().map(|v| v.max(0) as usize).collect();
    let shape = broadcast_shape(x.shape(), &target)?;
    Ok(vec![map_data!(x, |a| a.broadcast(IxDyn(&shape)).ok_or("broadcast failed")?.to_owned())])
}

/// `Tile(x, repeats)`.
pub fn tile(inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    let repeats = ints(input(inputs, 1)?, "repeats")?;
    if repeats.len() != x.shape().len() {
        return Err(format!("{} repeats for rank {}", repeats.len(), x.shape().len()));
    }
    fn tile_array<T: Clone>(a: &ArrayD<T>, repeats: &[i64]) -> Result<ArrayD<T>, String> {
        let mut out = a.clone();
        for (ax, &r) in repeats.iter().enumerate() {
            let views = vec![out.view(); r.max(0) as usize];
            out = concatenate(Axis(ax), &views).map_err(|e| e.to_string())?;
        }
        Ok(out)
    }
    Ok(vec![map_data!(x, |a| tile_array(a, &repeats)?)])
}

/// `Range(start, limit, delta)`.
pub fn range(inputs: &[Option<&Tensor>]) -> KernelResult {
    let (s, l, d) = (input(inputs, 0)?, input(inputs, 1)?, input(inputs, 2)?);
    match (&s.data, &l.data, &d.data) {
        (Data::I64(s), Data::I64(l), Data::I64(d)) => {
            let (s, l, d) = (scalar(s)?, scalar(l)?, scalar(d)?);
            if d == 0 {
                return Err("Range with delta 0".into());
            }
            let n = ((l - s) + d - d.signum()) / d;
            let v: Vec<i64> = (0..n.max(0)).map(|i| s + i * d).collect();
            Ok(vec![Tensor::i64(array(&[v.len()], v)?)])
        }
        (Data::F32(sa), Data::F32(la), Data::F32(da)) => {
            let (s0, l0, d0) = (scalar(sa)?, scalar(la)?, scalar(da)?);
            if d0 == 0.0 {
                return Err("Range with delta 0".into());
            }
            let n = ((l0 - s0) / d0).ceil().max(0.0) as usize;
            let v: Vec<f32> = (0..n).map(|i| s0 + i as f32 * d0).collect();
            Ok(vec![Tensor::with_dtype(s.dtype, Data::F32(array(&[v.len()], v)?))])
        }
        _ => Err("start, limit and delta must share one numeric type".into()),
    }
}

fn scalar<T: Copy>(a: &ArrayD<T>) -> Result<T, String> {
    if a.len() != 1 {
        return Err(format!("expected a scalar, got shape {:?}", a.shape()));
    }
    a.iter().next().copied().ok_or_else(|| "empty scalar".into())
}

/// `ConstantOfShape{value}(shape)`.
pub fn constant_of_shape(value: Option<&TensorData>, inputs: &[Option<&Tensor>]) -> KernelResult {
    let shape: Vec<usize> = ints(input(inputs, 0)?, "the shape")?.into_iter().map(|v| v.max(0) as usize).collect();
    let fill = match value {
        Some(t) => Tensor::from_data(t).map_err(|e| e.to_string())?,
        None => Tensor::f32(ArrayD::zeros(IxDyn(&[1]))),
    };
    let data = match &fill.data {
        Data::F32(a) => Data::F32(ArrayD::from_elem(IxDyn(&shape), scalar(a)?)),
        Data::I64(a) => Data::I64(ArrayD::from_elem(IxDyn(&shape), scalar(a)?)),
        Data::Bool(a) => Data::Bool(ArrayD::from_elem(IxDyn(&shape), scalar(a)?)),
    };
    let dtype = value.map_or(DType::F32, |v| v.dtype);
    Ok(vec![Tensor::with_dtype(dtype, data)])
}

/// `Trilu{upper}(x[, k])`: keep the upper (or lower) triangle of the last two dims.
pub fn trilu(upper: i64, inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    let k = match optional(inputs, 1) {
        Some(t) => *ints(t, "k")?.first().ok_or("k is empty")?,
        None => 0,
    };
    let rank = x.shape().len();
    if rank < 2 {
        return Err(format!("Trilu needs rank >= 2, got {}", x.describe()));
    }
    let (rows, cols) = (x.shape()[rank - 2], x.shape()[rank - 1]);
    let keep = |flat: usize| {
        let j = (flat % cols) as i64;
        let i = ((flat / cols) % rows) as i64;
        if upper != 0 {
            j - i >= k
        } else {
            j - i <= k
        }
    };
    fn mask<T: Clone>(a: &ArrayD<T>, zero: T, keep: impl Fn(usize) -> bool) -> ArrayD<T> {
        let v: Vec<T> = a.iter().enumerate().map(|(f, x)| if keep(f) { x.clone() } else { zero.clone() }).collect();
        ArrayD::from_shape_vec(IxDyn(a.shape()), v).unwrap_or_else(|_| a.clone())
    }
    Ok(vec![map_data!(x, |a| mask(a, Default::default(), keep))])
}

/// `ScatterND{reduction}(data, indices, updates)`.
pub fn scatter_nd(reduction: &str, inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    let indices = input(inputs, 1)?;
    let updates = input(inputs, 2)?;
    let idx = ints(indices, "indices")?;
    let k = *indices.shape().last().ok_or("indices must have rank >= 1")?;
    let shape = x.shape().to_vec();
    if k > shape.len() {
        return Err(format!("index tuples of length {k} for data of rank {}", shape.len()));
    }
    let inner: usize = shape[k..].iter().product();
    let tuples = idx.len().checked_div(k).unwrap_or(0);
    if updates.len() != tuples * inner {
        return Err(format!("updates {} do not match {tuples} index tuples of {inner} elements", updates.describe()));
    }
    let mut offsets = Vec::with_capacity(tuples);
    for t in 0..tuples {
        let mut off = 0usize;
        for (d, &i) in idx[t * k..(t + 1) * k].iter().enumerate() {
            let n = shape[d] as i64;
            let j = if i < 0 { i + n } else { i };
            if !(0..n).contains(&j) {
                return Err(format!("index {i} is out of range for dim {d} of size {n}"));
            }
            off = off * shape[d] + j as usize;
        }
        offsets.push(off * inner);
    }
    fn apply<T: Copy>(
        data: &ArrayD<T>,
        upd: &ArrayD<T>,
        offsets: &[usize],
        inner: usize,
        f: impl Fn(T, T) -> T,
    ) -> Result<ArrayD<T>, String> {
        let mut out: Vec<T> = data.iter().copied().collect();
        let upd: Vec<T> = upd.iter().copied().collect();
        for (t, &off) in offsets.iter().enumerate() {
            for e in 0..inner {
                out[off + e] = f(out[off + e], upd[t * inner + e]);
            }
        }
        array(data.shape(), out)
    }
    let data = match (reduction, &x.data, &updates.data) {
        ("none", Data::F32(a), Data::F32(u)) => Data::F32(apply(a, u, &offsets, inner, |_, n| n)?),
        ("add", Data::F32(a), Data::F32(u)) => Data::F32(apply(a, u, &offsets, inner, |o, n| o + n)?),
        ("mul", Data::F32(a), Data::F32(u)) => Data::F32(apply(a, u, &offsets, inner, |o, n| o * n)?),
        ("max", Data::F32(a), Data::F32(u)) => Data::F32(apply(a, u, &offsets, inner, f32::max)?),
        ("min", Data::F32(a), Data::F32(u)) => Data::F32(apply(a, u, &offsets, inner, f32::min)?),
        ("none", Data::I64(a), Data::I64(u)) => Data::I64(apply(a, u, &offsets, inner, |_, n| n)?),
        ("add", Data::I64(a), Data::I64(u)) => Data::I64(apply(a, u, &offsets, inner, i64::wrapping_add)?),
        ("mul", Data::I64(a), Data::I64(u)) => Data::I64(apply(a, u, &offsets, inner, i64::wrapping_mul)?),
        ("max", Data::I64(a), Data::I64(u)) => Data::I64(apply(a, u, &offsets, inner, i64::max)?),
        ("min", Data::I64(a), Data::I64(u)) => Data::I64(apply(a, u, &offsets, inner, i64::min)?),
        ("none", Data::Bool(a), Data::Bool(u)) => Data::Bool(apply(a, u, &offsets, inner, |_, n| n)?),
        (r, _, _) => return Err(format!("reduction `{r}` over {} is not supported", x.describe())),
    };
    Ok(vec![Tensor::with_dtype(x.dtype, data)])
}

/// Row-major strides of a shape.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Normalise index `i` into `0..n`, or say which index was out of range.
fn index(i: i64, n: usize, what: &str) -> Result<usize, String> {
    let j = if i < 0 { i + n as i64 } else { i };
    if (0..n as i64).contains(&j) {
        Ok(j as usize)
    } else {
        Err(format!("{what} index {i} is out of range for size {n}"))
    }
}

/// `Size`.
pub fn size(inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    Ok(vec![Tensor::i64(array(&[], vec![x.len() as i64])?)])
}

/// `Flatten{axis}`.
pub fn flatten(ax: i64, inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    let r = x.shape().len() as i64;
    let a = if ax < 0 { ax + r } else { ax };
    if !(0..=r).contains(&a) {
        return Err(format!("axis {ax} is out of range for rank {r}"));
    }
    let a = a as usize;
    let shape = [x.shape()[..a].iter().product::<usize>(), x.shape()[a..].iter().product::<usize>()];
    Ok(vec![map_data!(x, |d| reshaped(d, &shape)?)])
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

/// How a scatter combines an existing element with an update.
fn combine<T: Copy + PartialOrd>(
    reduction: &str,
    add: fn(T, T) -> T,
    mul: fn(T, T) -> T,
) -> Result<impl Fn(T, T) -> T, String> {
    let r = match reduction {
        "none" => 0,
        "add" => 1,
        "mul" => 2,
        "max" => 3,
        "min" => 4,
        other => return Err(format!("reduction `{other}` (expected none, add, mul, max or min)")),
    };
    Ok(move |old: T, new: T| match r {
        0 => new,
        1 => add(old, new),
        2 => mul(old, new),
        3 => {
            if new > old {
                new
            } else {
                old
            }
        }
        _ => {
            if new < old {
                new
            } else {
                old
            }
        }
    })
}

/// `ScatterElements{axis,reduction}(data, indices, updates)`.
pub fn scatter_elements(ax: i64, reduction: &str, inputs: &[Option<&Tensor>]) -> KernelResult {
    let (x, idx, upd) = (input(inputs, 0)?, input(inputs, 1)?, input(inputs, 2)?);
    let rank = x.shape().len();
    let ax = axis(ax, rank)?;
    if idx.shape() != upd.shape() || idx.shape().len() != rank {
        return Err(format!(
            "indices {} and updates {} must match, at the data's rank",
            idx.describe(),
            upd.describe()
        ));
    }
    let indices = ints(idx, "indices")?;
    let (xs, is) = (strides(x.shape()), strides(idx.shape()));
    let mut offsets = Vec::with_capacity(indices.len());
    for (flat, &i) in indices.iter().enumerate() {
        let mut off = 0;
        for d in 0..rank {
            let c = if d == ax {
                index(i, x.shape()[ax], "ScatterElements")?
            } else {
                (flat / is[d]) % idx.shape()[d].max(1)
            };
            if c >= x.shape()[d] {
                return Err(format!("indices {} exceed the data {} on axis {d}", idx.describe(), x.describe()));
            }
            off += c * xs[d];
        }
        offsets.push(off);
    }
    fn apply<T: Copy>(
        a: &ArrayD<T>,
        u: &ArrayD<T>,
        offsets: &[usize],
        f: impl Fn(T, T) -> T,
    ) -> Result<ArrayD<T>, String> {
        let mut out: Vec<T> = a.iter().copied().collect();
        for (&o, &v) in offsets.iter().zip(u.iter()) {
            out[o] = f(out[o], v);
        }
        array(a.shape(), out)
    }
    let data = match (&x.data, &upd.data) {
        (Data::F32(a), Data::F32(u)) => {
            Data::F32(apply(a, u, &offsets, combine(reduction, |p, q| p + q, |p, q| p * q)?)?)
        }
        (Data::I64(a), Data::I64(u)) => {
            Data::I64(apply(a, u, &offsets, combine(reduction, i64::wrapping_add, i64::wrapping_mul)?)?)
        }
        (Data::Bool(a), Data::Bool(u)) if reduction == "none" => Data::Bool(apply(a, u, &offsets, |_, n| n)?),
        _ => return Err(format!("cannot scatter {} into {}", upd.describe(), x.describe())),
    };
    Ok(vec![Tensor::with_dtype(x.dtype, data)])
}

/// `Pad{mode}(data, pads[, constant_value[, axes]])`: constant, edge, reflect or wrap;
/// negative pads crop.
pub fn pad(mode: &str, inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    let rank = x.shape().len();
    let pads = ints(input(inputs, 1)?, "pads")?;
    let axes: Vec<usize> = match optional(inputs, 3) {
        Some(t) => ints(t, "axes")?.iter().map(|&a| axis(a, rank)).collect::<Result<_, _>>()?,
        None => (0..rank).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(format!("{} pads for {} axes", pads.len(), axes.len()));
    }
    let mut begin = vec![0i64; rank];
    let mut end = vec![0i64; rank];
    for (k, &a) in axes.iter().enumerate() {
        begin[a] = pads[k];
        end[a] = pads[k + axes.len()];
    }
    let in_shape = x.shape().to_vec();
    let mut out_shape = Vec::with_capacity(rank);
    for d in 0..rank {
        let n = in_shape[d] as i64 + begin[d] + end[d];
        if n < 0 {
            return Err(format!("pads make axis {d} negative"));
        }
        out_shape.push(n as usize);
    }
    // For every output coordinate, the input coordinate it reads (None: the constant).
    let source = |d: usize, o: usize| -> Result<Option<usize>, String> {
        let n = in_shape[d] as i64;
        let i = o as i64 - begin[d];
        if (0..n).contains(&i) {
            return Ok(Some(i as usize));
        }
        Ok(match mode {
            "constant" => None,
            _ if n == 0 => return Err(format!("cannot pad an empty axis {d} in `{mode}` mode")),
            "edge" => Some(i.clamp(0, n - 1) as usize),
            "wrap" => Some(i.rem_euclid(n) as usize),
            "reflect" => {
                if n == 1 {
                    Some(0)
                } else {
                    let period = 2 * (n - 1);
                    let m = i.rem_euclid(period);
                    Some(if m < n { m } else { period - m } as usize)
                }
            }
            other => return Err(format!("pad mode `{other}` (expected constant, edge, reflect or wrap)")),
        })
    };
    let maps: Vec<Vec<Option<usize>>> = (0..rank)
        .map(|d| (0..out_shape[d]).map(|o| source(d, o)).collect::<Result<_, _>>())
        .collect::<Result<_, _>>()?;
    let xs = strides(&in_shape);
    let total: usize = out_shape.iter().product();
    let mut offsets = Vec::with_capacity(total);
    let os = strides(&out_shape);
    for flat in 0..total {
        let mut off = Some(0usize);
        for d in 0..rank {
            let o = (flat / os[d]) % out_shape[d];
            off = match (off, maps[d][o]) {
                (Some(acc), Some(i)) => Some(acc + i * xs[d]),
                _ => None,
            };
        }
        offsets.push(off);
    }
    fn fill<T: Clone>(
        a: &ArrayD<T>,
        offsets: &[Option<usize>],
        value: T,
        shape: &[usize],
    ) -> Result<ArrayD<T>, String> {
        let flat = a.as_standard_layout();
        let s = flat.as_slice().ok_or("data is not contiguous")?;
        array(shape, offsets.iter().map(|o| o.map_or_else(|| value.clone(), |i| s[i].clone())).collect())
    }
    let value = optional(inputs, 2);
    let data = match &x.data {
        Data::F32(a) => {
            let v = value.map(|t| t.to_f32_vec().first().copied().unwrap_or(0.0)).unwrap_or(0.0);
            Data::F32(fill(a, &offsets, v, &out_shape)?)
        }
        Data::I64(a) => {
            let v = value.map(|t| t.to_i64_vec().first().copied().unwrap_or(0)).unwrap_or(0);
            Data::I64(fill(a, &offsets, v, &out_shape)?)
        }
        Data::Bool(a) => {
            let v = value.map(|t| t.to_i64_vec().first().copied().unwrap_or(0) != 0).unwrap_or(false);
            Data::Bool(fill(a, &offsets, v, &out_shape)?)
        }
    };
    Ok(vec![Tensor::with_dtype(x.dtype, data)])
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

/// `EyeLike{dtype,k}`.
pub fn eye_like(dtype: Option<DType>, k: i64, inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    let [r, c] = x.shape() else { return Err(format!("EyeLike needs a 2-D input, got {}", x.describe())) };
    let (r, c) = (*r, *c);
    let dtype = dtype.unwrap_or(x.dtype);
    let ones: Vec<bool> = (0..r * c).map(|f| (f % c) as i64 - (f / c) as i64 == k).collect();
    let data = if dtype.is_float() {
        Data::F32(array(&[r, c], ones.iter().map(|&b| f32::from(u8::from(b))).collect())?)
    } else if dtype == DType::Bool {
        Data::Bool(array(&[r, c], ones)?)
    } else {
        Data::I64(array(&[r, c], ones.iter().map(|&b| i64::from(b)).collect())?)
    };
    Ok(vec![Tensor::with_dtype(dtype, data)])
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

/// `TensorScatter{axis,mode}(past_cache, update[, write_indices])`: the update's
/// sequence written into a copy of the cache along `axis`, per batch entry at
/// `write_indices[b]` (0 when absent); `circular` wraps around the cache.
pub fn tensor_scatter(ax: i64, mode: &str, inputs: &[Option<&Tensor>]) -> KernelResult {
    let (cache, update) = (input(inputs, 0)?, input(inputs, 1)?);
    let rank = cache.shape().len();
    let ax = axis(ax, rank)?;
    if ax == 0 || update.shape().len() != rank {
        return Err("the cache and the update need one rank and a sequence axis after the batch".into());
    }
    for d in 0..rank {
        if d != ax && cache.shape()[d] != update.shape()[d] {
            return Err(format!(
                "update {} does not match cache {} off axis {ax}",
                update.describe(),
                cache.describe()
            ));
        }
    }
    let circular = match mode {
        "linear" => false,
        "circular" => true,
        other => return Err(format!("mode `{other}` (expected linear or circular)")),
    };
    let batch = cache.shape()[0];
    let starts = match optional(inputs, 2) {
        Some(w) => ints(w, "write_indices")?,
        None => vec![0; batch],
    };
    if starts.len() != batch {
        return Err(format!("{} write indices for a batch of {batch}", starts.len()));
    }
    let (cs, us) = (strides(cache.shape()), strides(update.shape()));
    let max_seq = cache.shape()[ax];
    let mut moves = Vec::with_capacity(update.len());
    for flat in 0..update.len() {
        let bi = flat / us[0];
        let s = (flat / us[ax]) % update.shape()[ax];
        let mut pos = starts[bi] + s as i64;
        if circular {
            pos = pos.rem_euclid(max_seq as i64);
        }
        if !(0..max_seq as i64).contains(&pos) {
            return Err(format!("write position {pos} is outside the cache's {max_seq}"));
        }
        let coords_off = flat - s * us[ax];
        // Re-express the update's coordinates in the cache's strides.
        let mut off = 0;
        for d in 0..rank {
            let c = if d == ax { pos as usize } else { (coords_off / us[d]) % update.shape()[d] };
            off += c * cs[d];
        }
        moves.push(off);
    }
    fn write<T: Copy>(c: &ArrayD<T>, u: &ArrayD<T>, moves: &[usize]) -> Result<ArrayD<T>, String> {
        let mut out: Vec<T> = c.iter().copied().collect();
        for (&m, &v) in moves.iter().zip(u.iter()) {
            out[m] = v;
        }
        array(c.shape(), out)
    }
    let data = match (&cache.data, &update.data) {
        (Data::F32(c), Data::F32(u)) => Data::F32(write(c, u, &moves)?),
        (Data::I64(c), Data::I64(u)) => Data::I64(write(c, u, &moves)?),
        (Data::Bool(c), Data::Bool(u)) => Data::Bool(write(c, u, &moves)?),
        _ => return Err(format!("cannot write {} into {}", update.describe(), cache.describe())),
    };
    Ok(vec![Tensor::with_dtype(cache.dtype, data)])
}

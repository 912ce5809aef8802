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
    let tuples = if k == 0 { 0 } else { idx.len() / k };
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

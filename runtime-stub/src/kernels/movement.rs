//! Shape and data-movement kernels.

use ndarray::{ArrayD, Axis, IxDyn, Slice};
use shardc_ir::ops::Shape;
use shardc_ir::{DType, TensorData};

use super::indexing::strides;
use super::{array, axis, broadcast_shape, input, ints, optional, KernelResult};
use crate::tensor::{Data, Tensor};

/// `a` in another shape of the same size.
pub(super) fn reshaped<T: Clone>(a: &ArrayD<T>, shape: &[usize]) -> Result<ArrayD<T>, String> {
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

/// `Concat{axis}`.
pub fn concat(ax: i64, inputs: &[Option<&Tensor>]) -> KernelResult {
    let ts: Vec<&Tensor> = (0..inputs.len()).map(|i| input(inputs, i)).collect::<Result<_, _>>()?;
    let first = ts[0];
    let ax = axis(ax, first.shape().len())?;
    let data = match &first.data {
        Data::F32(_) => {
            Data::F32(joined(ax, &ts.iter().map(|t| t.as_f32().ok_or("mixed dtypes")).collect::<Result<Vec<_>, _>>()?)?)
        }
        Data::I64(_) => {
            Data::I64(joined(ax, &ts.iter().map(|t| t.as_i64().ok_or("mixed dtypes")).collect::<Result<Vec<_>, _>>()?)?)
        }
        Data::Bool(_) => Data::Bool(joined(
            ax,
            &ts.iter().map(|t| t.as_bool().ok_or("mixed dtypes")).collect::<Result<Vec<_>, _>>()?,
        )?),
    };
    Ok(vec![Tensor::with_dtype(first.dtype, data)])
}

/// `parts` joined along `ax`, in standard (row-major) order whatever their layouts:
/// for each index before `ax`, each part's block after it in turn. (`ndarray`'s
/// `concatenate` lays the result out with `ax` outermost, which makes every later
/// element-wise kernel on it walk memory out of order.)
fn joined<T: Clone>(ax: usize, parts: &[&ArrayD<T>]) -> Result<ArrayD<T>, String> {
    let first = parts[0].shape();
    let mut shape = first.to_vec();
    shape[ax] = 0;
    for p in parts {
        let s = p.shape();
        if s.len() != first.len() || s.iter().zip(first).enumerate().any(|(i, (a, b))| i != ax && a != b) {
            return Err(format!("Concat inputs {first:?} and {s:?} differ off axis {ax}"));
        }
        shape[ax] += s[ax];
    }
    let outer: usize = first[..ax].iter().product();
    let inner: usize = first[ax + 1..].iter().product();
    let parts: Vec<_> = parts.iter().map(|p| p.as_standard_layout()).collect();
    let slices: Vec<&[T]> =
        parts.iter().map(|p| p.as_slice().ok_or("a part is not contiguous")).collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for (p, xs) in parts.iter().zip(&slices) {
            let block = p.shape()[ax] * inner;
            out.extend_from_slice(&xs[o * block..(o + 1) * block]);
        }
    }
    ArrayD::from_shape_vec(IxDyn(&shape), out).map_err(|e| e.to_string())
}

/// A `Transpose` perm for rank `rank` (reversed when absent), checked to be one.
pub fn permutation(perm: Option<&[i64]>, rank: usize) -> Result<Vec<usize>, String> {
    let perm: Vec<usize> = match perm {
        Some(p) => p.iter().map(|&a| axis(a, rank)).collect::<Result<_, _>>()?,
        None => (0..rank).rev().collect(),
    };
    let mut seen = vec![false; rank];
    if perm.len() != rank || perm.iter().any(|&a| std::mem::replace(&mut seen[a], true)) {
        return Err(format!("perm {perm:?} is not a permutation of rank {rank}"));
    }
    Ok(perm)
}

/// `Transpose{perm}`.
pub fn transpose(perm: Option<&[i64]>, inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    let perm = permutation(perm, x.shape().len())?;
    Ok(vec![map_data!(x, |a| crate::threads::standard(a.view().permuted_axes(IxDyn(&perm))))])
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
        crate::threads::standard(v)
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
        outs.push(map_data!(x, |a| crate::threads::standard(a.slice_axis(Axis(ax), sl))));
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
            out = if r <= 0 {
                out.slice_axis(Axis(ax), Slice::from(0..0)).to_owned()
            } else {
                joined(ax, &vec![&out; r as usize])?
            };
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

/// `Size`.
pub fn size(inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    Ok(vec![Tensor::i64(array(&[], vec![x.len() as i64])?)])
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

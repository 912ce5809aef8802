//! Shape and data-movement ops.

use shardc_ir::ops::{Concat, ConstantOfShape, Reshape, Shape, Split, Transpose};
use shardc_ir::{DType, Dim};

use super::{axis, broadcast, const_ints, element_count, required, In, Out};

/// Threshold above which a known `end` of a slice means "to the end".
const SLICE_TO_END: i64 = i32::MAX as i64;

fn contents_dims<'a>(inputs: &[Option<In<'a>>], slot: usize, what: &str) -> Result<&'a [Dim], String> {
    required(inputs, slot)?.contents.ok_or_else(|| format!("{what} (input {slot}) must be known at compile time"))
}

/// `Shape{start,end}`: the dims as an i64 vector.
pub fn shape(s: &Shape, inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    let r = x.rank() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let start = clamp(s.start);
    let end = clamp(s.end.unwrap_or(r));
    let dims: Vec<Dim> = x.shape().get(start..end.max(start)).unwrap_or_default().to_vec();
    let n = dims.len() as i64;
    Ok(vec![Out::with_contents(DType::I64, vec![Dim::known(n)], Some(dims))])
}

/// `Reshape{allowzero}`.
pub fn reshape(r: &Reshape, inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    let target = contents_dims(inputs, 1, "the target shape")?;
    let mut out = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, t) in target.iter().enumerate() {
        match t.as_known() {
            Some(0) if r.allowzero == 0 => {
                out.push(x.shape().get(i).cloned().ok_or_else(|| format!("target dim {i} copies a missing input dim"))?)
            }
            Some(-1) => {
                if infer_at.replace(i).is_some() {
                    return Err("the target shape has more than one -1".into());
                }
                out.push(Dim::Unknown);
            }
            Some(v) if v < -1 => return Err(format!("target dim {v} is invalid")),
            _ => out.push(t.clone()),
        }
    }
    let total = Dim::product(x.shape());
    if let Some(i) = infer_at {
        let rest = Dim::product(out.iter().enumerate().filter(|(k, _)| *k != i).map(|(_, d)| d));
        out[i] = total.div_exact(&rest).unwrap_or(Dim::Unknown);
    } else if let (Some(a), Some(b)) = (total.as_known(), Dim::product(&out).as_known()) {
        if a != b {
            return Err(format!("cannot reshape {a} elements into {b}"));
        }
    }
    Ok(vec![Out::with_contents(x.dtype(), out, x.contents.map(<[Dim]>::to_vec))])
}

/// `Unsqueeze(x, axes)`.
pub fn unsqueeze(inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    let axes = const_ints(inputs, 1, "axes")?;
    let rank = x.rank() + axes.len();
    let mut norm = axes.iter().map(|&a| axis(a, rank)).collect::<Result<Vec<_>, _>>()?;
    norm.sort_unstable();
    norm.dedup();
    if norm.len() != axes.len() {
        return Err(format!("repeated axis in {axes:?}"));
    }
    let mut dims = x.shape().iter().cloned();
    let shape = (0..rank)
        .map(|i| if norm.contains(&i) { Dim::known(1) } else { dims.next().unwrap_or(Dim::Unknown) })
        .collect();
    Ok(vec![Out::with_contents(x.dtype(), shape, x.contents.map(<[Dim]>::to_vec))])
}

/// `Squeeze(x[, axes])`.
pub fn squeeze(inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    let axes: Vec<usize> = match inputs.get(1).copied().flatten() {
        Some(_) => const_ints(inputs, 1, "axes")?.iter().map(|&a| axis(a, x.rank())).collect::<Result<_, _>>()?,
        None => {
            if x.shape().iter().any(|d| d.as_known().is_none()) {
                return Err("Squeeze without axes needs every dim known".into());
            }
            (0..x.rank()).filter(|&i| x.shape()[i].as_known() == Some(1)).collect()
        }
    };
    for &a in &axes {
        if let Some(n) = x.shape()[a].as_known() {
            if n != 1 {
                return Err(format!("cannot squeeze axis {a} of size {n}"));
            }
        }
    }
    let shape = x.shape().iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, d)| d.clone()).collect();
    Ok(vec![Out::with_contents(x.dtype(), shape, x.contents.map(<[Dim]>::to_vec))])
}

/// `Concat{axis}`.
pub fn concat(c: &Concat, inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let ins: Vec<In> = (0..inputs.len()).map(|i| required(inputs, i)).collect::<Result<_, _>>()?;
    let first = ins[0];
    let ax = axis(c.axis, first.rank())?;
    let mut shape = first.shape().to_vec();
    for (k, input) in ins.iter().enumerate().skip(1) {
        if input.rank() != first.rank() {
            return Err(format!("input {k} has rank {}, input 0 has {}", input.rank(), first.rank()));
        }
        if input.dtype() != first.dtype() {
            return Err(format!("input {k} is {}, input 0 is {}", input.dtype(), first.dtype()));
        }
        for (i, d) in input.shape().iter().enumerate() {
            if i == ax {
                shape[i] = shape[i].add(d);
            } else if !shape[i].is_determined() {
                shape[i] = d.clone();
            }
        }
    }
    let contents = if first.rank() == 1 {
        ins.iter().map(|i| i.contents).collect::<Option<Vec<_>>>().map(|cs| cs.concat())
    } else {
        None
    };
    Ok(vec![Out::with_contents(first.dtype(), shape, contents)])
}

/// `Transpose{perm}`.
pub fn transpose(t: &Transpose, inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    let r = x.rank();
    let perm: Vec<usize> = match &t.perm {
        Some(p) => p.iter().map(|&a| axis(a, r)).collect::<Result<_, _>>()?,
        None => (0..r).rev().collect(),
    };
    let mut sorted = perm.clone();
    sorted.sort_unstable();
    if sorted != (0..r).collect::<Vec<_>>() {
        return Err(format!("perm {perm:?} is not a permutation of rank {r}"));
    }
    let shape = perm.iter().map(|&p| x.shape()[p].clone()).collect();
    Ok(vec![Out::new(x.dtype(), shape)])
}

/// `Slice(data, starts, ends[, axes[, steps]])`.
pub fn slice(inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    let starts = contents_dims(inputs, 1, "starts")?;
    let ends = contents_dims(inputs, 2, "ends")?;
    if starts.len() != ends.len() {
        return Err(format!("{} starts but {} ends", starts.len(), ends.len()));
    }
    let axes: Vec<usize> = match inputs.get(3).copied().flatten() {
        Some(_) => const_ints(inputs, 3, "axes")?.iter().map(|&a| axis(a, x.rank())).collect::<Result<_, _>>()?,
        None => (0..starts.len()).collect(),
    };
    let steps: Vec<i64> = match inputs.get(4).copied().flatten() {
        Some(_) => const_ints(inputs, 4, "steps")?,
        None => vec![1; starts.len()],
    };
    if axes.len() != starts.len() || steps.len() != starts.len() {
        return Err("starts, ends, axes and steps differ in length".into());
    }
    let mut shape = x.shape().to_vec();
    let mut ranges = Vec::new();
    for (((&ax, s), e), &step) in axes.iter().zip(starts).zip(ends).zip(&steps) {
        if step == 0 {
            return Err("slice step 0".into());
        }
        let d = &x.shape()[ax];
        let (len, range) = slice_len(d, s, e, step);
        shape[ax] = len;
        ranges.push((ax, range));
    }
    let mut contents = None;
    if let (Some(c), 1) = (x.contents, x.rank()) {
        if let [(0, Some((s, e, step)))] = ranges.as_slice() {
            let mut v = Vec::new();
            let mut i = *s;
            while (*step > 0 && i < *e) || (*step < 0 && i > *e) {
                v.push(c.get(usize::try_from(i).ok().ok_or("slice index")?).cloned().ok_or("slice index")?);
                i += step;
            }
            contents = Some(v);
        }
    }
    Ok(vec![Out::with_contents(x.dtype(), shape, contents)])
}

/// Length of a slice of a dim, and the concrete (start, end, step) when all are known.
fn slice_len(d: &Dim, s: &Dim, e: &Dim, step: i64) -> (Dim, Option<(i64, i64, i64)>) {
    if let (Some(n), Some(s), Some(e)) = (d.as_known(), s.as_known(), e.as_known()) {
        let (s, e) = if step > 0 {
            let s = if s < 0 { s + n } else { s }.clamp(0, n);
            let e = if e < 0 { e + n } else { e }.clamp(0, n);
            (s, e)
        } else {
            let s = if s < 0 { s + n } else { s }.clamp(0, n - 1);
            let e = if e < 0 { e + n } else { e }.clamp(-1, n - 1);
            (s, e)
        };
        let span = if step > 0 { e - s } else { s - e };
        let len = if span <= 0 { 0 } else { (span + step.abs() - 1) / step.abs() };
        return (Dim::known(len), Some((s, e, step)));
    }
    if step != 1 {
        return (Dim::Unknown, None);
    }
    // Symbolic: negative known indices count from the end; a known end past any size
    // means the end; symbolic indices are assumed in range (a model indexing past a
    // dim it sized itself would be wrong anyway).
    let start = match s.as_known() {
        Some(v) if v < 0 => d.add(&Dim::known(v)),
        _ => s.clone(),
    };
    let end = match e.as_known() {
        Some(v) if v >= SLICE_TO_END => d.clone(),
        Some(v) if v < 0 => d.add(&Dim::known(v)),
        Some(_) if !d.provably_ge(e) => return (Dim::Unknown, None),
        _ => e.clone(),
    };
    (end.sub(&start), None)
}

/// `Split{axis,num_outputs}(x[, split])`.
pub fn split(s: &Split, inputs: &[Option<In>], n_outputs: usize) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    let ax = axis(s.axis, x.rank())?;
    let d = &x.shape()[ax];
    let sizes: Vec<Dim> = match inputs.get(1).copied().flatten() {
        Some(_) => const_ints(inputs, 1, "split sizes")?.into_iter().map(Dim::known).collect(),
        None => {
            let n = s.num_outputs.unwrap_or(n_outputs as i64);
            if n <= 0 {
                return Err(format!("cannot split into {n} parts"));
            }
            match d.as_known() {
                Some(total) => {
                    let part = (total + n - 1) / n;
                    (0..n).map(|i| Dim::known(part.min(total - i * part).max(0))).collect()
                }
                None => vec![d.div_exact(&Dim::known(n)).unwrap_or(Dim::Unknown); n as usize],
            }
        }
    };
    if sizes.len() != n_outputs {
        return Err(format!("{} split sizes for {n_outputs} outputs", sizes.len()));
    }
    let sum = sizes.iter().try_fold(0, |acc, s| Some(acc + s.as_known()?));
    if let (Some(total), Some(sum)) = (d.as_known(), sum) {
        if total != sum {
            return Err(format!("split sizes add up to {sum}, axis {ax} has {total}"));
        }
    }
    Ok(sizes
        .into_iter()
        .map(|size| {
            let mut shape = x.shape().to_vec();
            shape[ax] = size;
            Out::new(x.dtype(), shape)
        })
        .collect())
}

/// `Expand(x, shape)`: bidirectional broadcast.
pub fn expand(inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    let target = contents_dims(inputs, 1, "the target shape")?;
    let shape = broadcast(x.shape(), target)?;
    Ok(vec![Out::new(x.dtype(), shape)])
}

/// `Tile(x, repeats)`.
pub fn tile(inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    let repeats = contents_dims(inputs, 1, "repeats")?;
    if repeats.len() != x.rank() {
        return Err(format!("{} repeats for rank {}", repeats.len(), x.rank()));
    }
    let shape = x.shape().iter().zip(repeats).map(|(d, r)| d.mul(r)).collect();
    Ok(vec![Out::new(x.dtype(), shape)])
}

/// `Range(start, limit, delta)`.
pub fn range(inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let start = required(inputs, 0)?;
    let scalar = |i: usize| -> Result<Option<Dim>, String> {
        let v = required(inputs, i)?;
        if element_count(v.shape()) != Some(1) {
            return Err(format!("input {i} must be a scalar"));
        }
        Ok(v.contents.and_then(|c| c.first().cloned()))
    };
    let (s, l, d) = (scalar(0)?, scalar(1)?, scalar(2)?);
    let (len, contents) = match (s, l, d.as_ref().and_then(Dim::as_known)) {
        (Some(s), Some(l), Some(delta)) if delta != 0 => match (s.as_known(), l.as_known()) {
            (Some(a), Some(b)) => {
                let n = ((b - a) + delta - delta.signum()) / delta;
                let n = n.max(0);
                let values = (0..n).map(|i| Dim::known(a + i * delta)).collect();
                (Dim::known(n), Some(values))
            }
            _ if delta == 1 => (l.sub(&s), None),
            _ => (Dim::Unknown, None),
        },
        _ => (Dim::Unknown, None),
    };
    Ok(vec![Out::with_contents(start.dtype(), vec![len], contents)])
}

/// `ConstantOfShape{value}(shape)`.
pub fn constant_of_shape(c: &ConstantOfShape, inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let shape = contents_dims(inputs, 0, "the shape")?.to_vec();
    let (dtype, fill) = match &c.value {
        Some(t) => (t.dtype, t.i64_elements().and_then(|v| v.first().copied())),
        None => (DType::F32, None),
    };
    let contents = match (element_count(&shape), fill) {
        (Some(n), Some(v)) => Some(vec![Dim::known(v); n]),
        _ => None,
    };
    Ok(vec![Out::with_contents(dtype, shape, contents)])
}

/// `Size`: the element count as an i64 scalar.
pub fn size(inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    Ok(vec![Out::with_contents(DType::I64, vec![], Some(vec![Dim::product(x.shape())]))])
}

/// `Flatten{axis}`: `[prod(dims[..axis]), prod(dims[axis..])]`.
pub fn flatten(ax: i64, inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    let r = x.rank() as i64;
    let a = if ax < 0 { ax + r } else { ax };
    if !(0..=r).contains(&a) {
        return Err(format!("axis {ax} is out of range for rank {r}"));
    }
    let a = a as usize;
    let shape = vec![Dim::product(&x.shape()[..a]), Dim::product(&x.shape()[a..])];
    Ok(vec![Out::with_contents(x.dtype(), shape, x.contents.map(<[Dim]>::to_vec))])
}

/// `Pad(data, pads[, constant_value[, axes]])`.
pub fn pad(inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    let pads = contents_dims(inputs, 1, "pads")?;
    let axes: Vec<usize> = match inputs.get(3).copied().flatten() {
        Some(_) => const_ints(inputs, 3, "axes")?.iter().map(|&a| axis(a, x.rank())).collect::<Result<_, _>>()?,
        None => (0..x.rank()).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(format!("{} pads for {} axes (need two per axis)", pads.len(), axes.len()));
    }
    if let Some(v) = inputs.get(2).copied().flatten() {
        if v.dtype() != x.dtype() {
            return Err(format!("constant_value is {}, the data {}", v.dtype(), x.dtype()));
        }
    }
    let mut shape = x.shape().to_vec();
    for (k, &a) in axes.iter().enumerate() {
        shape[a] = shape[a].add(&pads[k]).add(&pads[k + axes.len()]);
        if shape[a].as_known().is_some_and(|n| n < 0) {
            return Err(format!("pads make axis {a} negative"));
        }
    }
    Ok(vec![Out::new(x.dtype(), shape)])
}

/// `EyeLike{dtype}`: the input's 2-D shape.
pub fn eye_like(dtype: Option<DType>, inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    if x.rank() != 2 {
        return Err(format!("EyeLike needs a 2-D input, got rank {}", x.rank()));
    }
    Ok(vec![Out::new(dtype.unwrap_or(x.dtype()), x.shape().to_vec())])
}

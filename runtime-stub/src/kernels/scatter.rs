//! Scatter kernels: writing updates into a copy of a tensor at given indices, with
//! ONNX's reductions.

use ndarray::ArrayD;

use super::indexing::{index, strides};
use super::{array, axis, input, ints, optional, KernelResult};
use crate::tensor::{Data, Tensor};

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

//! Indexing ops: gathers and selections by value or position.

use shardc_ir::ops::Gather;
use shardc_ir::{DType, Dim};

use super::{axis, element_count, required, In, Out};

/// `Gather{axis}`.
pub fn gather(g: &Gather, inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let data = required(inputs, 0)?;
    let indices = required(inputs, 1)?;
    if !indices.dtype().is_integer() {
        return Err(format!("indices must be integers, are {}", indices.dtype()));
    }
    let ax = axis(g.axis, data.rank())?;
    let mut shape = data.shape()[..ax].to_vec();
    shape.extend_from_slice(indices.shape());
    shape.extend_from_slice(&data.shape()[ax + 1..]);
    let axis_len = data.shape()[ax].as_known();
    let mut contents = None;
    if let (Some(d), Some(idx)) = (data.contents, indices.known_ints()) {
        if data.rank() == 1 {
            let picked: Option<Vec<Dim>> = idx
                .iter()
                .map(|&i| {
                    let n = d.len() as i64;
                    let j = if i < 0 { i + n } else { i };
                    d.get(usize::try_from(j).ok()?).cloned()
                })
                .collect();
            contents = picked;
        }
    }
    if let (Some(n), Some(idx)) = (axis_len, indices.known_ints()) {
        if let Some(bad) = idx.iter().find(|&&i| i < -n || i >= n) {
            return Err(format!("index {bad} is out of range for axis {ax} of size {n}"));
        }
    }
    Ok(vec![Out::with_contents(data.dtype(), shape, contents)])
}

/// `GatherElements{axis}`: the indices' shape, the data's type.
pub fn gather_elements(ax: i64, inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let data = required(inputs, 0)?;
    let indices = required(inputs, 1)?;
    if !indices.dtype().is_integer() {
        return Err(format!("indices must be integers, are {}", indices.dtype()));
    }
    if indices.rank() != data.rank() {
        return Err(format!("indices have rank {}, data {}", indices.rank(), data.rank()));
    }
    axis(ax, data.rank())?;
    Ok(vec![Out::new(data.dtype(), indices.shape().to_vec())])
}

/// `GatherND{batch_dims}`: `indices[..-1] ++ data[batch_dims + indices[-1]..]`.
pub fn gather_nd(batch_dims: i64, inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let data = required(inputs, 0)?;
    let indices = required(inputs, 1)?;
    if !indices.dtype().is_integer() {
        return Err(format!("indices must be integers, are {}", indices.dtype()));
    }
    let b = usize::try_from(batch_dims).map_err(|_| format!("batch_dims {batch_dims} is negative"))?;
    let Some(last) = indices.shape().last() else { return Err("indices must have rank at least 1".into()) };
    let k = last.as_known().ok_or("the last dim of indices must be known")?;
    let k = usize::try_from(k).map_err(|_| "the last dim of indices is negative".to_string())?;
    if b >= indices.rank() || b + k > data.rank() {
        return Err(format!(
            "batch_dims {b} and index tuples of {k} do not fit data of rank {} and indices of rank {}",
            data.rank(),
            indices.rank()
        ));
    }
    let mut shape = indices.shape()[..indices.rank() - 1].to_vec();
    shape.extend_from_slice(&data.shape()[b + k..]);
    Ok(vec![Out::new(data.dtype(), shape)])
}

/// `NonZero`: `[rank, count]` i64, the count known only from known contents.
pub fn non_zero(inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    let count = x
        .known_ints()
        .filter(|_| element_count(x.shape()).is_some())
        .map_or(Dim::Unknown, |v| Dim::known(v.iter().filter(|&&e| e != 0).count() as i64));
    Ok(vec![Out::new(DType::I64, vec![Dim::known(x.rank() as i64), count])])
}

/// `OneHot{axis}(indices, depth, values)`: a new axis of `depth` at `axis`.
pub fn one_hot(ax: i64, inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let indices = required(inputs, 0)?;
    let depth = required(inputs, 1)?;
    let values = required(inputs, 2)?;
    if element_count(values.shape()).is_some_and(|n| n != 2) {
        return Err("values must hold two elements (off, on)".into());
    }
    let rank = indices.rank() + 1;
    let a = axis(ax, rank)?;
    let d = match depth.contents.and_then(|c| c.first().cloned()) {
        Some(d) => d,
        None => Dim::Unknown,
    };
    let mut shape = indices.shape().to_vec();
    shape.insert(a, d);
    Ok(vec![Out::new(values.dtype(), shape)])
}

/// `TopK{axis}(X, K)`: values and i64 indices with `K` along `axis`.
pub fn top_k(ax: i64, inputs: &[Option<In>]) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    let k = required(inputs, 1)?;
    if k.dtype() != DType::I64 || element_count(k.shape()).is_some_and(|n| n != 1) {
        return Err("K must be an i64 tensor of one element".into());
    }
    let a = axis(ax, x.rank())?;
    let mut shape = x.shape().to_vec();
    shape[a] = k.contents.and_then(|c| c.first().cloned()).unwrap_or(Dim::Unknown);
    if let (Some(kv), Some(n)) = (shape[a].as_known(), x.shape()[a].as_known()) {
        if kv < 0 || kv > n {
            return Err(format!("K = {kv} is outside 0..={n}"));
        }
    }
    Ok(vec![Out::new(x.dtype(), shape.clone()), Out::new(DType::I64, shape)])
}

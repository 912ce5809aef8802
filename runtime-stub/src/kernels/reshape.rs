//! The reshaping ops (`Reshape`, `Unsqueeze`, `Squeeze`, `Flatten`): a new shape for
//! the same elements, kept in place when the input is handed over.

use ndarray::{ArrayD, IxDyn};
use shardc_ir::Op;

use super::movement::reshaped;
use super::{axis, input, ints, optional, KernelResult};
use crate::tensor::{Data, Tensor};

/// The shape a reshaping op (`Reshape`, `Unsqueeze`, `Squeeze`, `Flatten`) gives an
/// input of shape `x`; `None` for any other op.
pub(super) fn new_shape(op: &Op, x: &[usize], inputs: &[Option<&Tensor>]) -> Option<Result<Vec<usize>, String>> {
    Some(match op {
        Op::Reshape(r) => reshape_target(r.allowzero, x, inputs),
        Op::Unsqueeze(_) => unsqueeze_target(x, inputs),
        Op::Squeeze(_) => squeeze_target(x, inputs),
        Op::Flatten(f) => flatten_target(f.axis, x),
        _ => return None,
    })
}

/// `Reshape`, `Unsqueeze`, `Squeeze` or `Flatten` of input 0.
pub fn reshape_op(op: &Op, inputs: &[Option<&Tensor>]) -> KernelResult {
    let x = input(inputs, 0)?;
    let shape = new_shape(op, x.shape(), inputs).ok_or("not a reshaping op")??;
    Ok(vec![map_data!(x, |a| reshaped(a, &shape)?)])
}

/// `x` in another shape of the same size: its own elements when they are laid out in
/// order, else a copy.
pub(super) fn reshaped_owned(x: Tensor, shape: &[usize]) -> Result<Tensor, String> {
    fn owned<T: Clone>(a: ArrayD<T>, shape: &[usize]) -> Result<ArrayD<T>, String> {
        if a.is_standard_layout() {
            a.into_shape_with_order(IxDyn(shape)).map_err(|e| e.to_string())
        } else {
            reshaped(&a, shape)
        }
    }
    let data = match x.data {
        Data::F32(a) => Data::F32(owned(a, shape)?),
        Data::I64(a) => Data::I64(owned(a, shape)?),
        Data::Bool(a) => Data::Bool(owned(a, shape)?),
    };
    Ok(Tensor::with_dtype(x.dtype, data))
}

/// `Reshape{allowzero}(x, shape)`.
fn reshape_target(allowzero: i64, x: &[usize], inputs: &[Option<&Tensor>]) -> Result<Vec<usize>, String> {
    let target = ints(input(inputs, 1)?, "the target shape")?;
    let total: usize = x.iter().product();
    let mut shape = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            0 if allowzero == 0 => shape.push(*x.get(i).ok_or("0 copies a missing dim")?),
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
        if rest == 0 || !total.is_multiple_of(rest) {
            return Err(format!("cannot reshape {x:?} into {target:?}"));
        }
        shape[i] = total / rest;
    }
    if shape.iter().product::<usize>() != total {
        return Err(format!("cannot reshape {x:?} into {shape:?}"));
    }
    Ok(shape)
}

/// `Unsqueeze(x, axes)`.
fn unsqueeze_target(x: &[usize], inputs: &[Option<&Tensor>]) -> Result<Vec<usize>, String> {
    let axes = ints(input(inputs, 1)?, "axes")?;
    let rank = x.len() + axes.len();
    let norm: Vec<usize> = axes.iter().map(|&a| axis(a, rank)).collect::<Result<_, _>>()?;
    let mut dims = x.iter();
    Ok((0..rank).map(|i| if norm.contains(&i) { 1 } else { dims.next().copied().unwrap_or(1) }).collect())
}

/// `Squeeze(x[, axes])`.
fn squeeze_target(x: &[usize], inputs: &[Option<&Tensor>]) -> Result<Vec<usize>, String> {
    let rank = x.len();
    let axes: Vec<usize> = match optional(inputs, 1) {
        Some(t) => ints(t, "axes")?.iter().map(|&a| axis(a, rank)).collect::<Result<_, _>>()?,
        None => (0..rank).filter(|&i| x[i] == 1).collect(),
    };
    if let Some(&bad) = axes.iter().find(|&&a| x[a] != 1) {
        return Err(format!("cannot squeeze axis {bad} of size {}", x[bad]));
    }
    Ok(x.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d).collect())
}

/// `Flatten{axis}`: the dims before `axis` in one, those from it in another.
fn flatten_target(ax: i64, x: &[usize]) -> Result<Vec<usize>, String> {
    let r = x.len() as i64;
    let a = if ax < 0 { ax + r } else { ax };
    if !(0..=r).contains(&a) {
        return Err(format!("axis {ax} is out of range for rank {r}"));
    }
    let a = a as usize;
    Ok(vec![x[..a].iter().product::<usize>(), x[a..].iter().product::<usize>()])
}

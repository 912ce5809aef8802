//! Reductions.

use shardc_ir::{DType, Dim};

use super::{axis, required, In, Out};

/// A reduction over the axes in input 1 (every axis when absent or empty, unless
/// `noop_with_empty_axes`).
pub fn reduce(inputs: &[Option<In>], keepdims: bool, noop_with_empty_axes: bool) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    let axes: Vec<i64> = match inputs.get(1).copied().flatten() {
        Some(input) => input.known_ints().ok_or("axes (input 1) must be known at compile time")?,
        None => Vec::new(),
    };
    if axes.is_empty() && noop_with_empty_axes {
        return Ok(vec![Out::new(x.dtype(), x.shape().to_vec())]);
    }
    let axes: Vec<usize> = if axes.is_empty() {
        (0..x.rank()).collect()
    } else {
        axes.iter().map(|&a| axis(a, x.rank())).collect::<Result<_, _>>()?
    };
    Ok(vec![Out::new(x.dtype(), reduced_shape(x.shape(), &axes, keepdims))])
}

/// `ArgMax` / `ArgMin{axis,keepdims}`: i64 indices.
pub fn arg(inputs: &[Option<In>], ax: i64, keepdims: bool) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    let a = axis(ax, x.rank())?;
    Ok(vec![Out::new(DType::I64, reduced_shape(x.shape(), &[a], keepdims))])
}

fn reduced_shape(shape: &[Dim], axes: &[usize], keepdims: bool) -> Vec<Dim> {
    let mut out = Vec::new();
    for (i, d) in shape.iter().enumerate() {
        if !axes.contains(&i) {
            out.push(d.clone());
        } else if keepdims {
            out.push(Dim::known(1));
        }
    }
    out
}

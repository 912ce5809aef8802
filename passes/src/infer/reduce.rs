//! Reductions.

use shardc_ir::{DType, Dim};

use super::{axis, required, In, Out};

/// A reduction over `axes` (attribute, else input 1, else every axis unless
/// `noop_with_empty_axes`); `arg` reductions produce i64 indices.
pub fn reduce(
    inputs: &[Option<In>],
    attr_axes: Option<&[i64]>,
    keepdims: i64,
    noop_with_empty_axes: i64,
    arg: bool,
) -> Result<Vec<Out>, String> {
    let x = required(inputs, 0)?;
    let axes: Vec<i64> = match (attr_axes, inputs.get(1).copied().flatten()) {
        (Some(a), _) => a.to_vec(),
        (None, Some(input)) => input.known_ints().ok_or("axes (input 1) must be known at compile time")?,
        (None, None) => Vec::new(),
    };
    let axes: Vec<usize> = if axes.is_empty() {
        if noop_with_empty_axes != 0 {
            Vec::new()
        } else {
            (0..x.rank()).collect()
        }
    } else {
        axes.iter().map(|&a| axis(a, x.rank())).collect::<Result<_, _>>()?
    };
    let mut shape = Vec::new();
    for (i, d) in x.shape().iter().enumerate() {
        if !axes.contains(&i) {
            shape.push(d.clone());
        } else if keepdims != 0 {
            shape.push(Dim::known(1));
        }
    }
    Ok(vec![Out::new(if arg { DType::I64 } else { x.dtype() }, shape)])
}

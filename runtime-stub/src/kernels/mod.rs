//! Reference CPU kernels, one function per op family; f32 compute.
//!
//! Every op of the op set has a kernel (the dispatch below is an exhaustive match).
//! Kernels return a message; the executor wraps it with the node's name.

mod elementwise;
mod linalg;
mod movement;
mod reduce;

use ndarray::{ArrayD, IxDyn};
use shardc_ir::Op;

use crate::tensor::Tensor;

/// Result of a kernel: its outputs, or what went wrong.
pub type KernelResult = Result<Vec<Tensor>, String>;

/// Run one op.
pub fn run(op: &Op, inputs: &[Option<&Tensor>], n_outputs: usize) -> KernelResult {
    use elementwise as e;
    match op {
        Op::Add(_) | Op::Sub(_) | Op::Mul(_) | Op::Div(_) | Op::Pow(_) | Op::Mod(_) => e::binary(op, inputs),
        Op::Max(_) | Op::Min(_) => e::variadic_extreme(op, inputs),
        Op::Equal(_)
        | Op::Less(_)
        | Op::LessOrEqual(_)
        | Op::Greater(_)
        | Op::GreaterOrEqual(_)
        | Op::And(_)
        | Op::Or(_) => e::comparison(op, inputs),
        Op::Where(_) => e::where_(inputs),
        Op::Neg(_)
        | Op::Abs(_)
        | Op::Sqrt(_)
        | Op::Reciprocal(_)
        | Op::Exp(_)
        | Op::Log(_)
        | Op::Tanh(_)
        | Op::Sigmoid(_)
        | Op::Sin(_)
        | Op::Cos(_)
        | Op::Erf(_)
        | Op::Relu(_)
        | Op::Not(_)
        | Op::Floor(_)
        | Op::Ceil(_) => e::unary(op, inputs),
        Op::Identity(_) => Ok(vec![input(inputs, 0)?.clone()]),
        Op::Cast(c) => e::cast(c.to, inputs),
        Op::Shape(s) => movement::shape(s, inputs),
        Op::Gather(g) => movement::gather(g.axis, inputs),
        Op::Reshape(r) => movement::reshape(r.allowzero, inputs),
        Op::Unsqueeze(_) => movement::unsqueeze(inputs),
        Op::Squeeze(_) => movement::squeeze(inputs),
        Op::Concat(c) => movement::concat(c.axis, inputs),
        Op::Transpose(t) => movement::transpose(t.perm.as_deref(), inputs),
        Op::Slice(_) => movement::slice(inputs),
        Op::Split(s) => movement::split(s.axis, s.num_outputs, inputs, n_outputs),
        Op::Expand(_) => movement::expand(inputs),
        Op::Tile(_) => movement::tile(inputs),
        Op::Range(_) => movement::range(inputs),
        Op::ConstantOfShape(c) => movement::constant_of_shape(c.value.as_ref(), inputs),
        Op::Trilu(t) => movement::trilu(t.upper, inputs),
        Op::CumSum(c) => reduce::cumsum(c.exclusive != 0, c.reverse != 0, inputs),
        Op::ScatterND(s) => movement::scatter_nd(&s.reduction, inputs),
        Op::MatMul(_) => linalg::matmul(inputs),
        Op::Gemm(g) => linalg::gemm(g, inputs),
        Op::Softmax(s) => linalg::softmax(s.axis, inputs),
        Op::LayerNormalization(l) => linalg::layer_norm(l, inputs, n_outputs),
        Op::ReduceMean(r) => {
            reduce::reduce(reduce::Kind::Mean, r.axes.as_deref(), r.keepdims, r.noop_with_empty_axes, inputs)
        }
        Op::ReduceMax(r) => {
            reduce::reduce(reduce::Kind::Max, r.axes.as_deref(), r.keepdims, r.noop_with_empty_axes, inputs)
        }
        Op::ReduceSum(r) => reduce::reduce(reduce::Kind::Sum, None, r.keepdims, r.noop_with_empty_axes, inputs),
        Op::ArgMax(a) => reduce::argmax(a.axis, a.keepdims != 0, a.select_last_index != 0, inputs),
    }
}

/// Required input `slot`.
pub(crate) fn input<'a>(inputs: &[Option<&'a Tensor>], slot: usize) -> Result<&'a Tensor, String> {
    inputs.get(slot).copied().flatten().ok_or_else(|| format!("missing input {slot}"))
}

/// Optional input `slot`.
pub(crate) fn optional<'a>(inputs: &[Option<&'a Tensor>], slot: usize) -> Option<&'a Tensor> {
    inputs.get(slot).copied().flatten()
}

/// Normalise a possibly negative axis.
pub(crate) fn axis(a: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let x = if a < 0 { a + r } else { a };
    if (0..r).contains(&x) {
        Ok(x as usize)
    } else {
        Err(format!("axis {a} is out of range for rank {rank}"))
    }
}

/// Numpy broadcast of two shapes.
pub(crate) fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let rank = a.len().max(b.len());
    (0..rank)
        .map(|i| {
            let da = if i + a.len() >= rank { a[i + a.len() - rank] } else { 1 };
            let db = if i + b.len() >= rank { b[i + b.len() - rank] } else { 1 };
            match (da, db) {
                (x, y) if x == y => Ok(x),
                (1, y) => Ok(y),
                (x, 1) => Ok(x),
                _ => Err(format!("cannot broadcast {a:?} with {b:?}")),
            }
        })
        .collect()
}

/// A vector of i64 values from an integer input (axes, shapes, indices).
pub(crate) fn ints(t: &Tensor, what: &str) -> Result<Vec<i64>, String> {
    t.as_i64()
        .map(|a| a.iter().copied().collect())
        .ok_or_else(|| format!("{what} must be integers, got {}", t.describe()))
}

/// Build an array, turning a shape mismatch into a message.
pub(crate) fn array<T>(shape: &[usize], values: Vec<T>) -> Result<ArrayD<T>, String> {
    ArrayD::from_shape_vec(IxDyn(shape), values).map_err(|e| e.to_string())
}

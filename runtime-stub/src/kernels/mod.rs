//! Reference CPU kernels, one function per op family; f32 compute.
//!
//! Every op of the op set has a kernel (the dispatch below is an exhaustive match).
//! Kernels return a message; the executor wraps it with the node's name.

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

mod attention;
mod elementwise;
mod indexing;
mod linalg;
mod movement;
mod norm;
mod quant;
mod reduce;
mod reshape;
#[cfg(test)]
mod reuse_tests;
mod rows;
mod scatter;
pub(crate) mod simd;
mod unary;

use ndarray::{ArrayD, Dimension, IxDyn};
use shardc_ir::Op;

use crate::tensor::Tensor;
pub(crate) use indexing::gather_columns;
pub(crate) use linalg::{matmul, part_width, sgemm, SPLIT_FROM};
pub(crate) use rows::MAX_ROWS;

/// A float input of an element-wise kernel: borrowed from the step's values, or
/// handed over at its last use so its storage takes the output (no new buffer, no
/// fresh pages to fault in).
pub(crate) enum Floats<'a> {
    Borrowed(&'a ArrayD<f32>),
    Owned(ArrayD<f32>),
}

impl Floats<'_> {
    /// The array read.
    pub(crate) fn view(&self) -> &ArrayD<f32> {
        match self {
            Floats::Borrowed(a) => a,
            Floats::Owned(a) => a,
        }
    }

    /// `f` of each element (the same bits either way).
    pub(crate) fn map(self, f: impl Fn(f32) -> f32 + Sync) -> ArrayD<f32> {
        match self {
            Floats::Borrowed(a) => crate::threads::map(a, f),
            Floats::Owned(mut a) => {
                crate::threads::map_in_place(&mut a, f);
                a
            }
        }
    }

    /// The array itself.
    pub(crate) fn into_owned(self) -> ArrayD<f32> {
        match self {
            Floats::Borrowed(a) => a.clone(),
            Floats::Owned(a) => a,
        }
    }
}

/// The binary (`Add` … `Mod`, bit operations, `PRelu`) element-wise family, as a pattern.
macro_rules! binary_ops {
    () => {
        Op::Add(_)
            | Op::Sub(_)
            | Op::Mul(_)
            | Op::Div(_)
            | Op::Pow(_)
            | Op::Mod(_)
            | Op::BitShift(_)
            | Op::BitwiseAnd(_)
            | Op::BitwiseOr(_)
            | Op::BitwiseXor(_)
            | Op::PRelu(_)
    };
}

/// The unary element-wise family, as a pattern.
macro_rules! unary_ops {
    () => {
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
            | Op::Tan(_)
            | Op::Asin(_)
            | Op::Acos(_)
            | Op::Atan(_)
            | Op::Sinh(_)
            | Op::Cosh(_)
            | Op::Asinh(_)
            | Op::Acosh(_)
            | Op::Atanh(_)
            | Op::Erf(_)
            | Op::Relu(_)
            | Op::Not(_)
            | Op::BitwiseNot(_)
            | Op::Floor(_)
            | Op::Ceil(_)
            | Op::Round(_)
            | Op::Sign(_)
            | Op::Softplus(_)
            | Op::Softsign(_)
            | Op::LeakyRelu(_)
            | Op::Elu(_)
            | Op::Selu(_)
            | Op::Celu(_)
            | Op::HardSigmoid(_)
            | Op::HardSwish(_)
            | Op::ThresholdedRelu(_)
            | Op::Shrink(_)
            | Op::Mish(_)
            | Op::Swish(_)
            | Op::Gelu(_)
            | Op::Identity(_)
    };
}

/// The unary element-wise family.
fn is_unary(op: &Op) -> bool {
    matches!(op, unary_ops!())
}

/// Whether [`run_into`] can compute `op` into input `k`'s storage.
pub fn takes_over(op: &Op, k: usize) -> bool {
    match op {
        Op::Add(_) | Op::Sub(_) | Op::Mul(_) | Op::Div(_) => k < 2,
        Op::Reshape(_) | Op::Unsqueeze(_) | Op::Squeeze(_) | Op::Flatten(_) | Op::Softmax(_) => k == 0,
        _ => k == 0 && is_unary(op),
    }
}

/// [`run`] with input `k` handed over by value (its last use; `inputs[k]` is not
/// read), so the output can take its storage: a reshape keeps its elements where they
/// are, an element-wise op or a softmax writes over them. The same values as [`run`].
pub fn run_into(op: &Op, k: usize, x: Tensor, inputs: &[Option<&Tensor>], n_outputs: usize) -> KernelResult {
    use crate::tensor::Data;
    let dtype = x.dtype;
    let wrap = |a: Result<ArrayD<f32>, String>| a.map(|a| vec![Tensor::with_dtype(dtype, Data::F32(a))]);
    let x = match (op, x.data) {
        (Op::Reshape(_) | Op::Unsqueeze(_) | Op::Squeeze(_) | Op::Flatten(_), data) if k == 0 => {
            let x = Tensor::with_dtype(dtype, data);
            match reshape::new_shape(op, x.shape(), inputs) {
                Some(Ok(shape)) => return reshape::reshaped_owned(x, &shape).map(|t| vec![t]),
                Some(Err(e)) => return Err(e),
                None => x,
            }
        }
        (Op::Softmax(s), Data::F32(a)) if k == 0 => return wrap(norm::softmax_floats(s.axis, Floats::Owned(a))),
        (_, Data::F32(a)) if k == 0 && is_unary(op) => {
            let dims = a.raw_dim();
            let what = || crate::tensor::describe(dtype, dims.slice());
            return wrap(unary::float_unary(op, Floats::Owned(a), &what));
        }
        (Op::Add(_) | Op::Sub(_) | Op::Mul(_) | Op::Div(_), Data::F32(a))
            if k < 2 && optional(inputs, 1 - k).is_some_and(|t| t.as_f32().is_some()) =>
        {
            let other = input(inputs, 1 - k)?;
            let floats = Floats::Borrowed(other.as_f32().ok_or("operand types differ")?);
            // The result has input 0's type, as `run` gives it.
            let first = if k == 0 { dtype } else { other.dtype };
            let what = || format!("{first}");
            let (x, y) = if k == 0 { (Floats::Owned(a), floats) } else { (floats, Floats::Owned(a)) };
            let out = elementwise::float_binary(op, x, y, &what)?;
            return Ok(vec![Tensor::with_dtype(first, Data::F32(out))]);
        }
        (_, data) => Tensor::with_dtype(dtype, data),
    };
    let mut refs = inputs.to_vec();
    if let Some(slot) = refs.get_mut(k) {
        *slot = Some(&x);
    }
    run(op, &refs, n_outputs)
}

/// Result of a kernel: its outputs, or what went wrong.
pub type KernelResult = Result<Vec<Tensor>, String>;

/// Run one op.
pub fn run(op: &Op, inputs: &[Option<&Tensor>], n_outputs: usize) -> KernelResult {
    use elementwise as e;
    match op {
        binary_ops!() => e::binary(op, inputs),
        Op::Max(_) | Op::Min(_) | Op::Sum(_) | Op::Mean(_) => e::variadic(op, inputs),
        Op::Equal(_)
        | Op::Less(_)
        | Op::LessOrEqual(_)
        | Op::Greater(_)
        | Op::GreaterOrEqual(_)
        | Op::And(_)
        | Op::Or(_)
        | Op::Xor(_) => e::comparison(op, inputs),
        Op::Where(_) => e::where_(inputs),
        unary_ops!() => unary::unary(op, inputs),
        Op::IsNaN(_) | Op::IsInf(_) => unary::predicate(op, inputs),
        Op::Cast(c) => e::cast(c.to, c.saturate != 0, &c.round_mode, inputs),
        Op::CastLike(c) => e::cast(input(inputs, 1)?.dtype, c.saturate != 0, &c.round_mode, inputs),
        Op::Clip(_) => e::clip(inputs),
        Op::Dropout(_) => e::dropout(inputs, n_outputs),
        Op::Shape(s) => movement::shape(s, inputs),
        Op::Size(_) => movement::size(inputs),
        Op::Gather(g) => indexing::gather(g.axis, inputs),
        Op::GatherElements(g) => indexing::gather_elements(g.axis, inputs),
        Op::GatherND(g) => indexing::gather_nd(g.batch_dims, inputs),
        Op::Reshape(_) | Op::Unsqueeze(_) | Op::Squeeze(_) | Op::Flatten(_) => reshape::reshape_op(op, inputs),
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
        Op::ScatterND(s) => scatter::scatter_nd(&s.reduction, inputs),
        Op::ScatterElements(s) => scatter::scatter_elements(s.axis, &s.reduction, inputs),
        Op::Pad(p) => movement::pad(&p.mode, inputs),
        Op::NonZero(_) => indexing::non_zero(inputs),
        Op::OneHot(o) => indexing::one_hot(o.axis, inputs),
        Op::EyeLike(e) => movement::eye_like(e.dtype, e.k, inputs),
        Op::TopK(t) => indexing::top_k(t.axis, t.largest != 0, inputs),
        Op::ReverseSequence(r) => indexing::reverse_sequence(r.batch_axis, r.time_axis, inputs),
        Op::TensorScatter(t) => scatter::tensor_scatter(t.axis, &t.mode, inputs),
        Op::MatMul(_) => linalg::matmul(inputs, None),
        Op::Gemm(g) => linalg::gemm(g, inputs),
        Op::Einsum(e) => linalg::einsum(&e.equation, inputs),
        Op::MatMulInteger(_) => linalg::matmul_integer(inputs),
        Op::Softmax(s) => norm::softmax(s.axis, inputs),
        Op::LogSoftmax(s) => norm::log_softmax(s.axis, inputs),
        Op::Hardmax(h) => norm::hardmax(h.axis, inputs),
        Op::LayerNormalization(l) => norm::layer_norm(l, inputs, n_outputs),
        Op::RMSNormalization(r) => norm::rms_norm(r.axis, r.epsilon, inputs),
        Op::LpNormalization(l) => norm::lp_normalization(l.axis, l.p, inputs),
        Op::MeanVarianceNormalization(m) => norm::mean_variance_normalization(&m.axes, inputs),
        Op::Attention(a) => attention::attention(a, inputs, n_outputs),
        Op::RotaryEmbedding(r) => attention::rotary(r, inputs),
        Op::ReduceMean(_)
        | Op::ReduceSum(_)
        | Op::ReduceMax(_)
        | Op::ReduceMin(_)
        | Op::ReduceProd(_)
        | Op::ReduceL1(_)
        | Op::ReduceL2(_)
        | Op::ReduceLogSum(_)
        | Op::ReduceLogSumExp(_)
        | Op::ReduceSumSquare(_) => reduce::reduce(op, inputs),
        Op::ArgMax(a) => reduce::arg(true, a.axis, a.keepdims != 0, a.select_last_index != 0, inputs),
        Op::ArgMin(a) => reduce::arg(false, a.axis, a.keepdims != 0, a.select_last_index != 0, inputs),
        Op::QuantizeLinear(q) => quant::quantize(q, inputs),
        Op::DequantizeLinear(d) => quant::dequantize(d, inputs),
        Op::DynamicQuantizeLinear(_) => quant::dynamic(inputs),
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

//! Type, shape and value inference: the engine behind `infer-shapes` and `simplify`.
//!
//! Walking the nodes in order, it computes every value's dtype and symbolic shape,
//! and — for small integer tensors, the shape arithmetic of exported graphs — their
//! *contents* as symbolic [`Dim`]s. Contents are what let `Reshape(x, Concat(Gather(
//! Shape(x), 0), [64]))` come out as `[batch, 64]` rather than unknown; `simplify`
//! folds every node whose contents are all known numbers into a constant.
//!
//! Symbols stand for sizes, so they are assumed non-negative (see
//! [`Dim::lower_bound`]): `Equal(seq, -1)` is false, which is what lets the
//! `Where(Equal(shape, -1), 1, shape)` pattern of `expand` exports resolve.

mod elementwise;
mod indexing;
mod linalg;
mod movement;
mod quant;
mod reduce;

use std::collections::BTreeMap;

use shardc_ir::{DType, Dim, Family, Graph, Op, TensorType, ValueDef};

/// Contents are tracked for integer and bool tensors of at most this many elements.
pub const MAX_TRACKED_ELEMENTS: usize = 64;

/// What inference learned about every value (indexed by value id).
#[derive(Debug, Clone)]
pub struct Facts {
    pub types: Vec<Option<TensorType>>,
    pub contents: Vec<Option<Vec<Dim>>>,
}

/// A node whose types could not be inferred.
#[derive(Debug, Clone)]
pub struct NodeError {
    pub node: usize,
    pub message: String,
}

/// What a rule sees of one input.
#[derive(Clone, Copy)]
pub struct In<'a> {
    pub ty: &'a TensorType,
    pub contents: Option<&'a [Dim]>,
}

impl In<'_> {
    fn rank(&self) -> usize {
        self.ty.rank()
    }

    fn dtype(&self) -> DType {
        self.ty.dtype
    }

    fn shape(&self) -> &[Dim] {
        &self.ty.shape
    }

    /// Contents that are all known numbers.
    fn known_ints(&self) -> Option<Vec<i64>> {
        self.contents?.iter().map(Dim::as_known).collect()
    }
}

/// What a rule produces for one output.
#[derive(Clone, Debug)]
pub struct Out {
    pub ty: TensorType,
    pub contents: Option<Vec<Dim>>,
}

impl Out {
    fn new(dtype: DType, shape: Vec<Dim>) -> Out {
        Out { ty: TensorType::new(dtype, shape), contents: None }
    }

    fn with_contents(dtype: DType, shape: Vec<Dim>, contents: Option<Vec<Dim>>) -> Out {
        let mut out = Out::new(dtype, shape);
        out.contents = contents.filter(|c| trackable(&out.ty, c.len()));
        out
    }
}

/// True when contents of `len` elements may be tracked for a value of type `ty`.
fn trackable(ty: &TensorType, len: usize) -> bool {
    !ty.dtype.is_float() && len <= MAX_TRACKED_ELEMENTS && element_count(&ty.shape).is_some_and(|n| n == len)
}

/// The number of elements, when every dim is a known number.
pub fn element_count(shape: &[Dim]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, d| {
        let n = usize::try_from(d.as_known()?).ok()?;
        acc.checked_mul(n)
    })
}

/// Infer the facts of every value. `input_contents` gives the values of graph inputs
/// known for this run (by name), which shape arithmetic may use.
pub fn infer(graph: &Graph, input_contents: &BTreeMap<String, Vec<i64>>) -> Result<Facts, NodeError> {
    let n = graph.values.len();
    let mut facts = Facts { types: vec![None; n], contents: vec![None; n] };
    for (i, value) in graph.values.iter().enumerate() {
        match &value.def {
            ValueDef::Input => {
                facts.types[i] = value.ty.clone();
                if let (Some(ty), Some(v)) = (&value.ty, input_contents.get(&value.name)) {
                    if trackable(ty, v.len()) {
                        facts.contents[i] = Some(v.iter().map(|&x| Dim::known(x)).collect());
                    }
                }
            }
            ValueDef::Weight(w) => facts.types[i] = Some(TensorType::known(w.dtype, &w.shape)),
            ValueDef::Const(t) => {
                let ty = TensorType::known(t.dtype, &t.shape);
                if trackable(&ty, t.len()) {
                    facts.contents[i] = t.i64_elements().map(|v| v.into_iter().map(Dim::known).collect());
                }
                facts.types[i] = Some(ty);
            }
            ValueDef::Node(_) => {}
        }
    }
    for (index, node) in graph.nodes.iter().enumerate() {
        let fail = |message: String| NodeError { node: index, message };
        let mut inputs = Vec::with_capacity(node.inputs.len());
        for (slot, input) in node.inputs.iter().enumerate() {
            match input {
                None => inputs.push(None),
                Some(v) => {
                    let ty = facts.types[v.index()]
                        .as_ref()
                        .ok_or_else(|| fail(format!("input {slot} `{}` has no type", graph.value(*v).name)))?;
                    inputs.push(Some(In { ty, contents: facts.contents[v.index()].as_deref() }));
                }
            }
        }
        let outs = infer_node(&node.op, &inputs, node.outputs.len()).map_err(fail)?;
        if outs.len() != node.outputs.len() {
            return Err(fail(format!("produces {} outputs, the node lists {}", outs.len(), node.outputs.len())));
        }
        let outs: Vec<(usize, Out)> = node.outputs.iter().map(|v| v.index()).zip(outs).collect();
        for (v, out) in outs {
            facts.contents[v] = out.contents;
            facts.types[v] = Some(out.ty);
        }
    }
    Ok(facts)
}

/// The input at `slot`, which the op requires.
fn required<'a>(inputs: &[Option<In<'a>>], slot: usize) -> Result<In<'a>, String> {
    inputs.get(slot).copied().flatten().ok_or_else(|| format!("missing input {slot}"))
}

/// Known integer contents of input `slot` (axes, sizes, indices).
fn const_ints(inputs: &[Option<In>], slot: usize, what: &str) -> Result<Vec<i64>, String> {
    required(inputs, slot)?.known_ints().ok_or_else(|| format!("{what} (input {slot}) must be known at compile time"))
}

/// Normalise a possibly negative axis.
fn axis(a: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let x = if a < 0 { a + r } else { a };
    if (0..r).contains(&x) {
        Ok(x as usize)
    } else {
        Err(format!("axis {a} is out of range for rank {rank}"))
    }
}

/// Numpy broadcasting of two shapes.
fn broadcast(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, String> {
    let rank = a.len().max(b.len());
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        let da = if i + a.len() >= rank { &a[i + a.len() - rank] } else { &Dim::known(1) };
        let db = if i + b.len() >= rank { &b[i + b.len() - rank] } else { &Dim::known(1) };
        out.push(
            broadcast_dim(da, db)
                .ok_or_else(|| format!("cannot broadcast [{}] with [{}]", dims_text(a), dims_text(b)))?,
        );
    }
    Ok(out)
}

fn broadcast_dim(a: &Dim, b: &Dim) -> Option<Dim> {
    if a == b {
        Some(a.clone())
    } else if a.as_known() == Some(1) {
        Some(b.clone())
    } else if b.as_known() == Some(1) {
        Some(a.clone())
    } else if !a.is_determined() || !b.is_determined() {
        // One side unknown: the other (not 1) decides, when it is not 1 itself.
        Some(if a.is_determined() {
            a.clone()
        } else if b.is_determined() {
            b.clone()
        } else {
            Dim::Unknown
        })
    } else {
        None
    }
}

fn dims_text(d: &[Dim]) -> String {
    d.iter().map(Dim::to_string).collect::<Vec<_>>().join(", ")
}

/// Contents of an elementwise op over broadcast inputs, when every input has them.
fn broadcast_contents(inputs: &[In], out_shape: &[Dim], f: impl Fn(&[&Dim]) -> Option<Dim>) -> Option<Vec<Dim>> {
    let out_dims: Vec<usize> = out_shape.iter().map(|d| usize::try_from(d.as_known()?).ok()).collect::<Option<_>>()?;
    let total: usize = out_dims.iter().product();
    if total > MAX_TRACKED_ELEMENTS {
        return None;
    }
    let rank = out_dims.len();
    let mut strides = Vec::new();
    for input in inputs {
        let contents = input.contents?;
        let dims: Vec<usize> =
            input.shape().iter().map(|d| usize::try_from(d.as_known()?).ok()).collect::<Option<_>>()?;
        let mut s = vec![0usize; rank];
        let mut acc = 1;
        for k in (0..dims.len()).rev() {
            let o = rank - dims.len() + k;
            s[o] = if dims[k] == 1 { 0 } else { acc };
            acc *= dims[k];
        }
        strides.push((s, contents));
    }
    let mut out = Vec::with_capacity(total);
    for flat in 0..total {
        let mut rem = flat;
        let mut idx = vec![0usize; rank];
        for k in (0..rank).rev() {
            idx[k] = rem % out_dims[k].max(1);
            rem /= out_dims[k].max(1);
        }
        let args: Vec<&Dim> = strides
            .iter()
            .map(|(s, c)| c.get(idx.iter().zip(s).map(|(i, s)| i * s).sum::<usize>()))
            .collect::<Option<_>>()?;
        out.push(f(&args)?);
    }
    Some(out)
}

/// Infer the outputs of one op.
pub fn infer_node(op: &Op, inputs: &[Option<In>], n_outputs: usize) -> Result<Vec<Out>, String> {
    match op.family() {
        Family::Binary | Family::Variadic => return elementwise::arithmetic(op, inputs),
        Family::Comparison | Family::Logical => return elementwise::comparison(op, inputs),
        Family::Unary => return elementwise::unary(op, inputs),
        Family::Predicate => return elementwise::predicate(inputs),
        Family::Other => {}
    }
    if let Some((keepdims, noop)) = op.reduction() {
        return reduce::reduce(inputs, keepdims, noop);
    }
    match op {
        Op::Where(_) => elementwise::where_(inputs),
        Op::Cast(c) => elementwise::cast(c.to, inputs),
        Op::CastLike(_) => {
            let target = required(inputs, 1)?;
            elementwise::cast(target.dtype(), inputs)
        }
        Op::Clip(_) => elementwise::clip(inputs),
        Op::Dropout(_) => elementwise::dropout(inputs, n_outputs),
        Op::Shape(s) => movement::shape(s, inputs),
        Op::Size(_) => movement::size(inputs),
        Op::Gather(g) => indexing::gather(g, inputs),
        Op::GatherElements(g) => indexing::gather_elements(g.axis, inputs),
        Op::GatherND(g) => indexing::gather_nd(g.batch_dims, inputs),
        Op::Reshape(r) => movement::reshape(r, inputs),
        Op::Unsqueeze(_) => movement::unsqueeze(inputs),
        Op::Squeeze(_) => movement::squeeze(inputs),
        Op::Flatten(f) => movement::flatten(f.axis, inputs),
        Op::Concat(c) => movement::concat(c, inputs),
        Op::Transpose(t) => movement::transpose(t, inputs),
        Op::Slice(_) => movement::slice(inputs),
        Op::Split(s) => movement::split(s, inputs, n_outputs),
        Op::Expand(_) => movement::expand(inputs),
        Op::Tile(_) => movement::tile(inputs),
        Op::Range(_) => movement::range(inputs),
        Op::ConstantOfShape(c) => movement::constant_of_shape(c, inputs),
        Op::Pad(_) => movement::pad(inputs),
        Op::NonZero(_) => indexing::non_zero(inputs),
        Op::OneHot(o) => indexing::one_hot(o.axis, inputs),
        Op::EyeLike(e) => movement::eye_like(e.dtype, inputs),
        Op::TopK(t) => indexing::top_k(t.axis, inputs),
        Op::Trilu(_)
        | Op::CumSum(_)
        | Op::Softmax(_)
        | Op::LogSoftmax(_)
        | Op::Hardmax(_)
        | Op::LpNormalization(_)
        | Op::MeanVarianceNormalization(_)
        | Op::ScatterND(_)
        | Op::ScatterElements(_)
        | Op::ReverseSequence(_)
        | Op::TensorScatter(_)
        | Op::RotaryEmbedding(_)
        | Op::RMSNormalization(_) => elementwise::same_as_first(inputs),
        Op::MatMul(_) => linalg::matmul(inputs),
        Op::MatMulInteger(_) => linalg::matmul_integer(inputs),
        Op::Gemm(g) => linalg::gemm(g, inputs),
        Op::Einsum(e) => linalg::einsum(&e.equation, inputs),
        Op::LayerNormalization(l) => linalg::layer_norm(l, inputs, n_outputs),
        Op::Attention(a) => linalg::attention(a, inputs, n_outputs),
        Op::ArgMax(a) => reduce::arg(inputs, a.axis, a.keepdims != 0),
        Op::ArgMin(a) => reduce::arg(inputs, a.axis, a.keepdims != 0),
        Op::QuantizeLinear(q) => quant::quantize(q, inputs),
        Op::DequantizeLinear(d) => quant::dequantize(d, inputs),
        Op::DynamicQuantizeLinear(_) => quant::dynamic(inputs),
        // Families and reductions handled above.
        _ => Err(format!("no inference rule for {}", op.name())),
    }
}

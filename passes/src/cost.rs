//! `cost`: FLOPs and bytes moved per node for a workload, prefill and decode apart.
//!
//! Shapes are symbolic; a [`Phase`] of a [`Workload`] binds the symbols: prefill runs
//! `prompt_len` tokens with no past, decode runs one token at context `max_context`
//! (`past = max_context − 1`). A graph without a KV cache re-runs the whole context to
//! decode a token, so its decode phase binds `seq = max_context`. Nodes whose inputs
//! are all weights and constants (a weight's cast to f32) run once at load and cost
//! nothing per token; reading their results counts the stored weight bytes.

use std::collections::HashMap;

use shardc_ir::{DType, Dim, Graph, Node, Op, ValueDef, ValueId};

pub use shardc_format::plan::Workload;

/// Whether a graph has a KV cache (its frontend recorded cache pairs).
pub fn has_past(graph: &Graph) -> bool {
    !graph.cache.is_empty()
}

/// The float dtype that holds most of the float weight bytes (`None` without float
/// weights): the dtype the model computes in and keeps its KV cache in. Quantized
/// integer weights do not count (they are dequantized to a float type to be used).
pub fn dominant_weight_dtype(graph: &Graph) -> Option<DType> {
    let mut by_dtype: std::collections::BTreeMap<DType, u64> = std::collections::BTreeMap::new();
    for v in &graph.values {
        if let ValueDef::Weight(w) = &v.def {
            if !w.dtype.is_ieee_float() {
                continue;
            }
            *by_dtype.entry(w.dtype).or_default() += w.byte_len();
        }
    }
    by_dtype.into_iter().max_by_key(|(_, b)| *b).map(|(d, _)| d)
}

/// Prefill or one decode step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Prefill,
    Decode,
}

impl Phase {
    /// Symbol sizes of this phase of `workload` for a graph (with a KV cache when `has_past`).
    pub fn bindings(self, workload: &Workload, has_past: bool) -> HashMap<String, i64> {
        let (seq, past) = match (self, has_past) {
            (Phase::Prefill, _) => (workload.prompt_len, 0),
            (Phase::Decode, true) => (1, workload.max_context.saturating_sub(1)),
            (Phase::Decode, false) => (workload.max_context, 0),
        };
        HashMap::from([
            ("batch".to_string(), workload.batch as i64),
            ("seq".to_string(), seq as i64),
            ("past".to_string(), past as i64),
        ])
    }
}

/// FLOPs and bytes of one node.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NodeCost {
    pub flops: f64,
    /// Bytes read (activations and weights) and written.
    pub bytes: f64,
}

/// Why costs could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "cost: value `{value}` has shape {shape}, {}",
    if unsized_symbols.is_empty() {
        "which has not been inferred (run infer-shapes first)".to_string()
    } else {
        format!(
            "and the workload sizes only the batch, sequence and past symbols (named from the token input and the \
             KV cache), not {}",
            unsized_symbols.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
        )
    }
)]
pub struct CostError {
    pub value: String,
    pub shape: String,
    /// The symbols of the shape the workload does not size.
    pub unsized_symbols: Vec<String>,
}

/// Per-value facts the cost model needs.
pub struct Sizes {
    /// Elements of each value under the bindings.
    pub elements: Vec<f64>,
    /// Bytes of each value; for results of constant nodes, the stored weight bytes.
    pub bytes: Vec<f64>,
    /// Whether a value is a weight, a constant, or computed from those alone.
    pub constant: Vec<bool>,
}

/// Evaluate every value's size under `bindings`.
pub fn sizes(graph: &Graph, bindings: &HashMap<String, i64>) -> Result<Sizes, CostError> {
    let shardc_ir::Constants { node: constant_node, value: constant } = graph.constants();
    let mut elements = vec![0.0; graph.values.len()];
    let mut bytes = vec![0.0; graph.values.len()];
    for (i, value) in graph.values.iter().enumerate() {
        let Some(ty) = &value.ty else {
            return Err(CostError { value: value.name.clone(), shape: "?".into(), unsized_symbols: vec![] });
        };
        let mut n = 1.0;
        for d in &ty.shape {
            n *= d.eval(bindings).ok_or_else(|| CostError {
                value: value.name.clone(),
                shape: shardc_ir::text::print::type_text(Some(ty)),
                unsized_symbols: d.symbols().into_iter().filter(|s| !bindings.contains_key(s)).collect(),
            })? as f64;
        }
        elements[i] = n;
        bytes[i] = n * f64::from(ty.dtype.bits()) / 8.0;
    }
    // Results of load-time nodes weigh what their weights weigh on disk.
    for (i, node) in graph.nodes.iter().enumerate() {
        if constant_node[i] {
            let stored: f64 = node.inputs.iter().flatten().map(|v| bytes[v.index()]).sum();
            for &o in &node.outputs {
                bytes[o.index()] = stored / node.outputs.len() as f64;
            }
        }
    }
    Ok(Sizes { elements, bytes, constant })
}

/// Costs of every node under `bindings` (zero for load-time nodes).
pub fn node_costs(graph: &Graph, bindings: &HashMap<String, i64>) -> Result<Vec<NodeCost>, CostError> {
    let s = sizes(graph, bindings)?;
    let constant_node = graph.constants().node;
    let dims = |v: ValueId| -> Vec<f64> {
        graph
            .value(v)
            .ty
            .as_ref()
            .map(|t| t.shape.iter().map(|d: &Dim| d.eval(bindings).unwrap_or(0) as f64).collect())
            .unwrap_or_default()
    };
    Ok(graph
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            if constant_node[i] {
                return NodeCost::default();
            }
            let out: f64 = node.outputs.iter().map(|o| s.elements[o.index()]).sum();
            let first_in = node.inputs.first().copied().flatten().map_or(0.0, |v| s.elements[v.index()]);
            let flops = flops(node, &dims, out, first_in);
            // An embedding lookup reads the rows it gathers, not the table.
            let gather = matches!(node.op, Op::Gather(_));
            let read: f64 = node
                .inputs
                .iter()
                .flatten()
                .map(|v| if gather && s.constant[v.index()] { 0.0 } else { s.bytes[v.index()] })
                .sum();
            let written: f64 = node.outputs.iter().map(|o| s.bytes[o.index()]).sum();
            let gathered = if matches!(node.op, Op::Gather(_)) { written } else { 0.0 };
            NodeCost { flops, bytes: read + written + gathered }
        })
        .collect())
}

/// FLOPs of one node: `out` output elements, `first_in` elements of its first input,
/// `dims` the bound dims of a value.
fn flops(node: &Node, dims: &dyn Fn(ValueId) -> Vec<f64>, out: f64, first_in: f64) -> f64 {
    let input = |slot: usize| node.inputs.get(slot).copied().flatten().map(dims).unwrap_or_default();
    // Transcendental functions cost a few multiply-adds per element.
    let transcendental = 4.0;
    match &node.op {
        Op::MatMul(_) | Op::MatMulInteger(_) => 2.0 * out * input(0).last().copied().unwrap_or(0.0),
        Op::Gemm(g) => {
            let a = input(0);
            let k = if g.transA != 0 { a.first() } else { a.last() }.copied().unwrap_or(0.0);
            2.0 * out * k + if node.inputs.get(2).copied().flatten().is_some() { out } else { 0.0 }
        }
        Op::Einsum(e) => {
            // Every combination of label values is one multiply-add per extra operand.
            let ranks: Vec<usize> = (0..node.inputs.len()).map(|i| input(i).len()).collect();
            let mut sizes: std::collections::HashMap<char, f64> = std::collections::HashMap::new();
            if let Ok((labels, _)) = shardc_ir::einsum::Equation::parse(&e.equation).and_then(|eq| eq.labels(&ranks)) {
                for (i, ls) in labels.iter().enumerate() {
                    for (l, d) in ls.iter().zip(input(i)) {
                        let s = sizes.entry(*l).or_insert(d);
                        *s = s.max(d);
                    }
                }
            }
            2.0 * sizes.values().product::<f64>() * node.inputs.len().saturating_sub(1).max(1) as f64
        }
        Op::Attention(_) => {
            // Scores and context: two products over every (query, key) pair, plus softmax.
            let q = input(0);
            let v = input(2);
            let q_elems: f64 = q.iter().product();
            let per_query_head = if q.len() == 4 { q[3] } else { 1.0 };
            let v_head = v.last().copied().unwrap_or(0.0);
            let total = input(4).get(2).copied().unwrap_or(0.0)
                + if v.len() == 4 { v[2] } else { v.get(1).copied().unwrap_or(0.0) };
            let queries = if per_query_head > 0.0 { q_elems / per_query_head } else { 0.0 };
            queries * total * (2.0 * per_query_head + 2.0 * v_head + 5.0)
        }
        Op::Softmax(_) | Op::LogSoftmax(_) => 5.0 * out,
        Op::LayerNormalization(_) | Op::MeanVarianceNormalization(_) => 8.0 * first_in,
        Op::RMSNormalization(_) | Op::LpNormalization(_) => 4.0 * first_in,
        Op::RotaryEmbedding(_) => 3.0 * out,
        Op::ReduceMean(_)
        | Op::ReduceSum(_)
        | Op::ReduceMax(_)
        | Op::ReduceMin(_)
        | Op::ReduceProd(_)
        | Op::ReduceL1(_)
        | Op::ReduceSumSquare(_)
        | Op::ArgMax(_)
        | Op::ArgMin(_)
        | Op::CumSum(_)
        | Op::Hardmax(_)
        | Op::TopK(_) => first_in,
        Op::ReduceL2(_) | Op::ReduceLogSum(_) | Op::ReduceLogSumExp(_) => transcendental * first_in,
        Op::Where(_)
        | Op::Clip(_)
        | Op::Trilu(_)
        | Op::QuantizeLinear(_)
        | Op::DequantizeLinear(_)
        | Op::OneHot(_)
        | Op::EyeLike(_)
        | Op::NonZero(_) => out,
        Op::DynamicQuantizeLinear(_) => 3.0 * out,
        Op::Cast(_)
        | Op::CastLike(_)
        | Op::Dropout(_)
        | Op::Shape(_)
        | Op::Size(_)
        | Op::Gather(_)
        | Op::GatherElements(_)
        | Op::GatherND(_)
        | Op::Reshape(_)
        | Op::Unsqueeze(_)
        | Op::Squeeze(_)
        | Op::Flatten(_)
        | Op::Concat(_)
        | Op::Transpose(_)
        | Op::Slice(_)
        | Op::Split(_)
        | Op::Expand(_)
        | Op::Tile(_)
        | Op::Range(_)
        | Op::ConstantOfShape(_)
        | Op::ScatterND(_)
        | Op::ScatterElements(_)
        | Op::Pad(_)
        | Op::ReverseSequence(_)
        | Op::TensorScatter(_) => 0.0,
        // Element-wise: one operation per output element and extra operand.
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
        | Op::Max(_)
        | Op::Min(_)
        | Op::Sum(_)
        | Op::Mean(_)
        | Op::Equal(_)
        | Op::Less(_)
        | Op::LessOrEqual(_)
        | Op::Greater(_)
        | Op::GreaterOrEqual(_)
        | Op::And(_)
        | Op::Or(_)
        | Op::Xor(_)
        | Op::IsNaN(_)
        | Op::IsInf(_) => out * node.inputs.len().saturating_sub(1).max(1) as f64,
        Op::Neg(_)
        | Op::Abs(_)
        | Op::Relu(_)
        | Op::Not(_)
        | Op::BitwiseNot(_)
        | Op::Floor(_)
        | Op::Ceil(_)
        | Op::Round(_)
        | Op::Sign(_)
        | Op::Reciprocal(_)
        | Op::LeakyRelu(_)
        | Op::ThresholdedRelu(_)
        | Op::Shrink(_)
        | Op::HardSigmoid(_)
        | Op::HardSwish(_)
        | Op::Softsign(_) => out,
        Op::Identity(_) => 0.0,
        Op::Sqrt(_)
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
        | Op::Softplus(_)
        | Op::Elu(_)
        | Op::Selu(_)
        | Op::Celu(_)
        | Op::Mish(_)
        | Op::Swish(_)
        | Op::Gelu(_) => transcendental * out,
    }
}

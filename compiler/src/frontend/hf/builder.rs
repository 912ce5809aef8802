//! A small graph builder for the lowerings: scoped node names (`/model/layers.3/mlp/...`,
//! so layers are recognisable), constants, checked weights, and the pieces
//! transformer blocks share (linear layers, norms, activations, shape arithmetic).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use shardc_ir::ops::*;
use shardc_ir::{DType, Dim, Graph, Op, TensorData, TensorType, Unit, ValueDef, ValueId, WeightRef};

use super::config::Activation;
use super::safetensors::Checkpoint;
use super::HfError;

/// Builds one graph.
pub struct Builder<'a> {
    pub graph: Graph,
    /// The checkpoint, or `None` for a shape-only graph.
    checkpoint: Option<&'a Checkpoint>,
    /// Where error messages say the checkpoint is.
    source: PathBuf,
    /// Dtype of weights in a shape-only graph.
    shape_only_dtype: DType,
    scope: String,
    names: HashSet<String>,
    weights: HashMap<String, ValueId>,
    /// Checkpoint tensors the lowering read.
    pub used: BTreeSet<String>,
    /// `Concat(batch, seq, n)` shape tensors, by `n`.
    shapes3: HashMap<i64, ValueId>,
    /// `[batch, seq]` of the input ids.
    pub batch_seq: Option<ValueId>,
    /// The unit every node added now belongs to.
    pub unit: Unit,
}

impl<'a> Builder<'a> {
    pub fn new(
        name: &str,
        checkpoint: Option<&'a Checkpoint>,
        source: PathBuf,
        shape_only_dtype: DType,
    ) -> Builder<'a> {
        Builder {
            graph: Graph::new(name),
            checkpoint,
            source,
            shape_only_dtype,
            scope: String::new(),
            names: HashSet::new(),
            weights: HashMap::new(),
            used: BTreeSet::new(),
            shapes3: HashMap::new(),
            batch_seq: None,
            unit: Unit::Embed,
        }
    }

    /// Run `f` with `part` appended to the node-name scope.
    pub fn scoped<T>(&mut self, part: &str, f: impl FnOnce(&mut Self) -> T) -> T {
        let saved = self.scope.clone();
        self.scope = format!("{saved}/{part}");
        let out = f(self);
        self.scope = saved;
        out
    }

    fn unique(&mut self, base: String) -> String {
        let mut name = base.clone();
        let mut i = 1;
        while !self.names.insert(name.clone()) {
            name = format!("{base}_{i}");
            i += 1;
        }
        name
    }

    /// A graph input.
    pub fn input(&mut self, name: &str, dtype: DType, dims: Vec<Dim>) -> ValueId {
        self.names.insert(name.to_string());
        self.graph.add_input(name, TensorType::new(dtype, dims))
    }

    /// A node with several outputs.
    pub fn op_n(&mut self, label: &str, op: Op, inputs: Vec<Option<ValueId>>, outputs: usize) -> Vec<ValueId> {
        let node_name = self.unique(format!("{}/{label}", self.scope));
        let outs: Vec<String> = (0..outputs).map(|k| self.unique(format!("{node_name}_output_{k}"))).collect();
        let nid = self.graph.add_node(node_name, op, inputs, &outs);
        self.graph.nodes[nid.index()].unit = Some(self.unit);
        self.graph.node(nid).outputs.clone()
    }

    /// A node with one output.
    pub fn op(&mut self, label: &str, op: Op, inputs: &[ValueId]) -> ValueId {
        self.op_n(label, op, inputs.iter().map(|&v| Some(v)).collect(), 1)[0]
    }

    /// Name a graph output: rename the value and list it.
    pub fn output(&mut self, v: ValueId, name: &str) {
        self.names.insert(name.to_string());
        self.graph.value_mut(v).name = name.to_string();
        self.graph.outputs.push(v);
    }

    fn constant(&mut self, label: &str, data: TensorData) -> ValueId {
        let name = self.unique(format!("{}/{label}", self.scope));
        let ty = TensorType::known(data.dtype, &data.shape);
        self.graph.add_value(name, Some(ty), ValueDef::Const(data))
    }

    /// An i64 constant.
    pub fn ints(&mut self, label: &str, shape: &[usize], values: &[i64]) -> ValueId {
        self.constant(label, TensorData::from_i64(shape.to_vec(), values))
    }

    /// An f32 constant.
    pub fn floats(&mut self, label: &str, shape: &[usize], values: &[f64]) -> ValueId {
        self.constant(label, TensorData::from_f64_values(DType::F32, shape.to_vec(), values))
    }

    /// An f32 scalar.
    pub fn scalar(&mut self, label: &str, value: f64) -> ValueId {
        self.floats(label, &[], &[value])
    }

    /// A checkpoint weight of the given shape, as f32 (cast when stored narrower).
    /// Names are tried as given, then without a leading `transformer.` or `model.`
    /// (hub checkpoints of GPT-2 and BLOOM omit it).
    pub fn weight(&mut self, name: &str, shape: &[usize]) -> Result<ValueId, HfError> {
        if let Some(&v) = self.weights.get(name) {
            return Ok(v);
        }
        let (stored_name, info) = match self.checkpoint {
            None => (name.to_string(), None),
            Some(ck) => {
                let candidates = [Some(name), name.strip_prefix("transformer."), name.strip_prefix("model.")];
                let found =
                    candidates.into_iter().flatten().find_map(|n| ck.tensors.get(n).map(|t| (n.to_string(), t)));
                let (n, t) = found.ok_or_else(|| HfError::Tensor {
                    dir: self.source.clone(),
                    tensor: name.to_string(),
                    message: format!("is missing from the checkpoint (expected {shape:?})"),
                })?;
                (n, Some(t))
            }
        };
        let w = match info {
            None => WeightRef { dtype: self.shape_only_dtype, shape: shape.to_vec(), location: None },
            Some(t) => {
                let err = |message: String| HfError::Tensor {
                    dir: self.source.clone(),
                    tensor: stored_name.clone(),
                    message,
                };
                if t.shape != shape {
                    return Err(err(format!("has shape {:?}, but the config implies {shape:?}", t.shape)));
                }
                if !t.dtype.is_float() {
                    return Err(err(format!("is {}, expected a floating-point weight", t.dtype)));
                }
                WeightRef { dtype: t.dtype, shape: t.shape.clone(), location: Some(t.location.clone()) }
            }
        };
        self.used.insert(stored_name.clone());
        let dtype = w.dtype;
        let ty = TensorType::known(dtype, shape);
        let mut v = self.graph.add_value(stored_name.clone(), Some(ty), ValueDef::Weight(w));
        self.names.insert(stored_name.clone());
        if dtype != DType::F32 {
            let saved = std::mem::replace(&mut self.scope, format!("/{stored_name}"));
            v = self.op("Cast", Op::Cast(Cast { to: DType::F32, saturate: 1, round_mode: "up".into() }), &[v]);
            self.scope = saved;
        }
        self.weights.insert(name.to_string(), v);
        Ok(v)
    }

    /// `Concat([batch, seq], [n])`: the shape `[batch, seq, n]`.
    pub fn shape3(&mut self, n: i64) -> ValueId {
        if let Some(&v) = self.shapes3.get(&n) {
            return v;
        }
        let bs = self.batch_seq.expect("batch_seq is set before any linear layer");
        let saved = std::mem::take(&mut self.scope);
        let tail = self.ints(&format!("shape/dim_{n}"), &[1], &[n]);
        let v = self.op(&format!("shape/batch_seq_{n}"), Op::Concat(Concat { axis: 0 }), &[bs, tail]);
        self.scope = saved;
        self.shapes3.insert(n, v);
        v
    }

    /// `x [batch, seq, in] → [batch, seq, out]` through a `Gemm` on `[batch·seq, in]`.
    /// `weight_out_in` weights are stored `[out, in]` (`nn.Linear`); otherwise `[in, out]`
    /// (GPT-2's `Conv1D`).
    pub fn linear(
        &mut self,
        label: &str,
        x: ValueId,
        weight: &str,
        bias: Option<&str>,
        (d_in, d_out): (usize, usize),
        weight_out_in: bool,
    ) -> Result<ValueId, HfError> {
        let w_shape = if weight_out_in { [d_out, d_in] } else { [d_in, d_out] };
        let w = self.weight(weight, &w_shape)?;
        let b = match bias {
            Some(name) => Some(self.weight(name, &[d_out])?),
            None => None,
        };
        let shape_out = self.shape3(d_out as i64);
        self.scoped(label, |b_| {
            let rows = b_.ints("rows", &[2], &[-1, d_in as i64]);
            let x2 = b_.op("Reshape", Op::Reshape(Reshape { allowzero: 0 }), &[x, rows]);
            let gemm = Op::Gemm(Gemm { alpha: 1.0, beta: 1.0, transA: 0, transB: i64::from(weight_out_in) });
            let y2 = b_.op_n("Gemm", gemm, vec![Some(x2), Some(w), b], 1)[0];
            Ok(b_.op("Reshape_1", Op::Reshape(Reshape { allowzero: 0 }), &[y2, shape_out]))
        })
    }

    /// `LayerNormalization` over the last axis with scale and bias weights.
    pub fn layer_norm(
        &mut self,
        label: &str,
        x: ValueId,
        prefix: &str,
        dim: usize,
        eps: f64,
    ) -> Result<ValueId, HfError> {
        let w = self.weight(&format!("{prefix}.weight"), &[dim])?;
        let b = self.weight(&format!("{prefix}.bias"), &[dim])?;
        let op = Op::LayerNormalization(LayerNormalization { axis: -1, epsilon: eps as f32, stash_type: 1 });
        Ok(self.scoped(label, |b_| b_.op("LayerNormalization", op, &[x, w, b])))
    }

    /// RMSNorm: `x / sqrt(mean(x²) + eps) · weight`.
    pub fn rms_norm(
        &mut self,
        label: &str,
        x: ValueId,
        weight: &str,
        dim: usize,
        eps: f64,
    ) -> Result<ValueId, HfError> {
        let w = self.weight(weight, &[dim])?;
        self.rms_norm_with(label, x, w, eps)
    }

    /// RMSNorm of `x` by the last axis, scaled by the value `w`.
    fn rms_norm_with(&mut self, label: &str, x: ValueId, w: ValueId, eps: f64) -> Result<ValueId, HfError> {
        Ok(self.scoped(label, |b| {
            let sq = b.op("Mul", Op::Mul(Mul {}), &[x, x]);
            let last = b.ints("axes", &[1], &[-1]);
            let mean =
                b.op("ReduceMean", Op::ReduceMean(ReduceMean { keepdims: 1, noop_with_empty_axes: 0 }), &[sq, last]);
            let e = b.scalar("eps", eps);
            let var = b.op("Add", Op::Add(Add {}), &[mean, e]);
            let std = b.op("Sqrt", Op::Sqrt(Sqrt {}), &[var]);
            let inv = b.op("Reciprocal", Op::Reciprocal(Reciprocal {}), &[std]);
            let normed = b.op("Mul_1", Op::Mul(Mul {}), &[x, inv]);
            b.op("Mul_2", Op::Mul(Mul {}), &[w, normed])
        }))
    }

    /// Gemma's RMSNorm: `x / sqrt(mean(x²) + eps) · (1 + weight)`.
    pub fn rms_norm_plus_one(
        &mut self,
        label: &str,
        x: ValueId,
        weight: &str,
        dim: usize,
        eps: f64,
    ) -> Result<ValueId, HfError> {
        let w = self.weight(weight, &[dim])?;
        let w1 = self.scoped(label, |b| {
            let one = b.scalar("one", 1.0);
            b.op("Add_one", Op::Add(Add {}), &[w, one])
        });
        self.rms_norm_with(label, x, w1, eps)
    }

    /// The dtype `name` is stored as (the shape-only dtype without a checkpoint).
    pub fn weight_dtype(&self, name: &str) -> DType {
        let stored = self.checkpoint.and_then(|ck| {
            [Some(name), name.strip_prefix("transformer."), name.strip_prefix("model.")]
                .into_iter()
                .flatten()
                .find_map(|n| ck.tensors.get(n))
        });
        stored.map_or(self.shape_only_dtype, |t| t.dtype)
    }

    /// The MLP activation.
    pub fn activation(&mut self, x: ValueId, act: Activation) -> ValueId {
        match act {
            Activation::Silu => {
                let s = self.op("Sigmoid", Op::Sigmoid(Sigmoid {}), &[x]);
                self.op("Mul", Op::Mul(Mul {}), &[x, s])
            }
            Activation::Gelu => {
                // 0.5 · x · (1 + erf(x / √2))
                let r2 = self.scalar("sqrt2", std::f64::consts::SQRT_2);
                let d = self.op("Div", Op::Div(Div {}), &[x, r2]);
                let e = self.op("Erf", Op::Erf(Erf {}), &[d]);
                let one = self.scalar("one", 1.0);
                let a = self.op("Add", Op::Add(Add {}), &[e, one]);
                let xa = self.op("Mul", Op::Mul(Mul {}), &[x, a]);
                let half = self.scalar("half", 0.5);
                self.op("Mul_1", Op::Mul(Mul {}), &[xa, half])
            }
            Activation::GeluTanh => {
                // 0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))
                let three = self.scalar("three", 3.0);
                let cube = self.op("Pow", Op::Pow(Pow {}), &[x, three]);
                let c = self.scalar("coeff", 0.044715);
                let cx3 = self.op("Mul", Op::Mul(Mul {}), &[cube, c]);
                let inner = self.op("Add", Op::Add(Add {}), &[x, cx3]);
                let k = self.scalar("sqrt_2_over_pi", (2.0 / std::f64::consts::PI).sqrt());
                let scaled = self.op("Mul_1", Op::Mul(Mul {}), &[inner, k]);
                let t = self.op("Tanh", Op::Tanh(Tanh {}), &[scaled]);
                let one = self.scalar("one", 1.0);
                let a = self.op("Add_1", Op::Add(Add {}), &[t, one]);
                let xa = self.op("Mul_2", Op::Mul(Mul {}), &[x, a]);
                let half = self.scalar("half", 0.5);
                self.op("Mul_3", Op::Mul(Mul {}), &[xa, half])
            }
        }
    }

    /// `[batch, seq, heads·dim] → [batch, heads, seq, dim]`.
    pub fn split_heads(&mut self, x: ValueId, heads: usize, dim: usize) -> ValueId {
        let target = self.ints("heads_shape", &[4], &[0, 0, heads as i64, dim as i64]);
        let r = self.op("Reshape", Op::Reshape(Reshape { allowzero: 0 }), &[x, target]);
        self.op("Transpose", Op::Transpose(Transpose { perm: Some(vec![0, 2, 1, 3]) }), &[r])
    }

    /// `[batch, heads, seq, dim] → [batch, seq, heads·dim]`.
    pub fn merge_heads(&mut self, x: ValueId, width: usize) -> ValueId {
        let t = self.op("Transpose_merge", Op::Transpose(Transpose { perm: Some(vec![0, 2, 1, 3]) }), &[x]);
        let target = self.shape3(width as i64);
        self.op("Reshape_merge", Op::Reshape(Reshape { allowzero: 0 }), &[t, target])
    }
}

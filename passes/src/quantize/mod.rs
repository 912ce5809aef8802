//! `quantize`: weight-only quantization of the matrix weights (`--quantize int8|int4`).
//!
//! A weight `W` whose every reader is a matrix product reading it as its second operand
//! (`Gemm` B, `MatMul` B, directly or through a `Cast`) is replaced by
//! `DequantizeLinear(Wq, scale)` — standard ONNX (opset 21: blocked quantization, 4-bit
//! types) — whose result the products read as they read `W`:
//!
//! - `Wq`: `W`'s shape in `i8` or `i4`, symmetric (no zero point): `round(W / scale)`,
//!   clamped to `[-127, 127]` or `[-7, 7]`;
//! - `scale`: f32, one per group of `group_size` consecutive elements along the
//!   reduction axis (`K` of the product; the last group may be shorter), or for int8
//!   without a group size one per output channel. f32 rather than f16: an f16 scale
//!   makes `DequantizeLinear`'s output f16 (opset 21 gives it the scale's type; opset
//!   23's `output_dtype` is beyond the ONNX Runtime CI pins), which rounds every
//!   dequantized weight — a rounding a kernel cannot fold into one multiplication per
//!   group, so it would have to expand each weight. f32 scales keep the product exact
//!   with the scale applied per group; they cost 1 bit per weight at groups of 32
//!   (4 + 1 bits for int4, against 4.5 with f16).
//!
//! The dequantized result is f32 (the scale's type); a `Cast` to `W`'s dtype follows
//! when `W` was not f32, unless every reader is a cast already. Norms, biases, and by default the
//! embedding table and the head stay as they are (`embeddings` includes them: a table
//! read by `Gather` is grouped along its rows' hidden axis). Cost and memory models see
//! the quantized bytes: a node whose inputs are all weights weighs what they weigh.

use std::collections::HashMap;

use shardc_ir::ops::{Cast, DequantizeLinear};
use shardc_ir::{DType, Graph, Op, TensorType, Unit, ValueDef, ValueId, WeightRef};

mod matrix;

pub use matrix::{quantize_matrix, QuantizedMatrix};

/// The quantized integer type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Int8,
    Int4,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Int8 => "int8",
            Scheme::Int4 => "int4",
        }
    }

    /// The IR dtype of quantized data.
    pub fn dtype(self) -> DType {
        match self {
            Scheme::Int8 => DType::I8,
            Scheme::Int4 => DType::I4,
        }
    }

    /// Largest magnitude a quantized element takes (symmetric range).
    pub fn max_level(self) -> f32 {
        match self {
            Scheme::Int8 => 127.0,
            Scheme::Int4 => 7.0,
        }
    }
}

impl std::str::FromStr for Scheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "int8" => Ok(Scheme::Int8),
            "int4" => Ok(Scheme::Int4),
            _ => Err(format!("unknown quantization `{s}` (int8, int4)")),
        }
    }
}

/// Default group size of int4.
pub const DEFAULT_INT4_GROUP: usize = 32;

/// Largest group size.
pub const MAX_GROUP: usize = 1 << 16;

/// The dtype of the scales.
pub const SCALE_DTYPE: DType = DType::F32;

/// How to quantize.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quantization {
    pub scheme: Scheme,
    /// Elements per scale along the reduction axis; `None`: one scale per output
    /// channel (int8 only).
    pub group_size: Option<usize>,
    /// Also the embedding table and the head.
    pub embeddings: bool,
}

impl Quantization {
    /// Checked settings: int4 defaults to groups of 32 and needs groups (a scale per
    /// output channel is too coarse for 16 levels); a group is 1 to 65536 elements.
    pub fn new(scheme: Scheme, group_size: Option<usize>, embeddings: bool) -> Result<Quantization, String> {
        let group_size = match (scheme, group_size) {
            (Scheme::Int4, None) => Some(DEFAULT_INT4_GROUP),
            (_, g) => g,
        };
        if let Some(g) = group_size {
            if g == 0 || g > MAX_GROUP {
                return Err(format!("--group-size must be between 1 and {MAX_GROUP}, got {g}"));
            }
        }
        Ok(Quantization { scheme, group_size, embeddings })
    }

    /// Text for reports: `int4, groups of 32, f32 scales`.
    pub fn describe(&self) -> String {
        let groups = match self.group_size {
            Some(g) => format!("groups of {g} along the reduction axis"),
            None => "one scale per output channel".into(),
        };
        let which = if self.embeddings { ", embedding and head included" } else { "" };
        format!("{}, symmetric, {groups}, {SCALE_DTYPE} scales{which}", self.scheme.name())
    }
}

/// One weight the pass quantized, and how (what writing it needs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quantized {
    /// The original weight's name (its source in the model's files), dtype and shape.
    pub source: String,
    pub source_dtype: DType,
    pub shape: Vec<usize>,
    pub scheme: Scheme,
    /// The new weights, by name: quantized data and scales.
    pub data: String,
    pub scale: String,
    /// The axis the groups (or, per channel, the scales) run along.
    pub axis: usize,
    /// Elements per group along `axis`; `None`: per channel (`axis` is the channel's).
    pub block: Option<usize>,
}

/// What the pass did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub weights: Vec<Quantized>,
    /// Bytes of the quantized weights before (at their dtype) and after (data and
    /// scales).
    pub bytes_before: u64,
    pub bytes_after: u64,
}

impl Summary {
    /// Bytes of the quantized weights had they been stored as `dtype` (`None`: as they
    /// are in the model).
    pub fn bytes_before_at(&self, dtype: Option<DType>) -> u64 {
        self.weights
            .iter()
            .map(|q| {
                let elements: u64 = q.shape.iter().map(|&d| d as u64).product();
                dtype.unwrap_or(q.source_dtype).byte_len(elements).unwrap_or(u64::MAX)
            })
            .fold(0u64, u64::saturating_add)
    }
}

/// Whether weight `v` is a quantization parameter: every reader takes it as a scale or
/// zero point (`DequantizeLinear`/`QuantizeLinear` inputs 1 and 2, `MatMulInteger`
/// inputs 2 and 3) and none as data. Such weights keep their dtype when the others are
/// stored as `--dtype`, and are not counted as parameters.
pub fn is_quantization_parameter(graph: &Graph, uses: &[Vec<shardc_ir::NodeId>], v: ValueId) -> bool {
    reads_all(graph, uses, v, |op, slot| match op {
        Op::DequantizeLinear(_) | Op::QuantizeLinear(_) => slot >= 1,
        Op::MatMulInteger(_) => slot >= 2,
        _ => false,
    })
}

/// Whether weight `v` holds quantized values: every reader takes it as the data of a
/// `DequantizeLinear` (input 0), as an operand of a `MatMulInteger` (inputs 0, 1), or
/// as the table of a `Gather` whose rows are such data (a quantized embedding) — the
/// model's parameters in a quantized graph, whatever their integer type.
pub fn is_quantized_data(graph: &Graph, uses: &[Vec<shardc_ir::NodeId>], v: ValueId) -> bool {
    let gathered = |n: shardc_ir::NodeId| {
        let node = graph.node(n);
        node.outputs.len() == 1
            && reads_all(graph, uses, node.outputs[0], |op, slot| matches!(op, Op::DequantizeLinear(_)) && slot == 0)
    };
    !uses[v.index()].is_empty()
        && uses[v.index()].iter().all(|&n| {
            let node = graph.node(n);
            node.inputs.iter().enumerate().all(|(slot, i)| {
                *i != Some(v)
                    || match node.op {
                        Op::DequantizeLinear(_) => slot == 0,
                        Op::MatMulInteger(_) => slot <= 1,
                        Op::Gather(_) => slot == 0 && gathered(n),
                        _ => false,
                    }
            })
        })
}

/// Whether `v` has readers and every input slot reading it passes `ok(op, slot)`.
fn reads_all(graph: &Graph, uses: &[Vec<shardc_ir::NodeId>], v: ValueId, ok: impl Fn(&Op, usize) -> bool) -> bool {
    !uses[v.index()].is_empty()
        && uses[v.index()].iter().all(|&n| {
            let node = graph.node(n);
            node.inputs.iter().enumerate().all(|(slot, i)| *i != Some(v) || ok(&node.op, slot))
        })
}

/// The axis along which a weight is reduced by every product that reads it (directly
/// or through casts), when all its readers are products (or, with `embeddings`,
/// lookups), and none is in the head unless `embeddings`.
fn reduction_axis(graph: &Graph, uses: &[Vec<shardc_ir::NodeId>], w: ValueId, embeddings: bool) -> Option<usize> {
    let mut axis = None;
    let mut readers = vec![w];
    let mut any = false;
    while let Some(v) = readers.pop() {
        for &n in &uses[v.index()] {
            let node = graph.node(n);
            let slot = node.inputs.iter().position(|i| *i == Some(v))?;
            let here = match (&node.op, slot) {
                (Op::Cast(_), 0) => {
                    readers.extend(node.outputs.iter().copied());
                    continue;
                }
                (Op::Gemm(g), 1) => Some(if g.transB != 0 { 1 } else { 0 }),
                (Op::MatMul(_), 1) => Some(0),
                // A lookup table: rows are tokens, quantized along their hidden axis.
                (Op::Gather(g), 0) if embeddings && g.axis == 0 => Some(1),
                _ => None,
            }?;
            if node.unit == Some(Unit::Head) && !embeddings {
                return None;
            }
            if axis.is_some_and(|a| a != here) {
                return None;
            }
            axis = Some(here);
            any = true;
        }
    }
    any.then_some(axis).flatten()
}

/// Quantize `graph`'s matrix weights as `q` says. Weights it creates have no location:
/// their bytes are computed from the originals when a package is written.
pub fn quantize(graph: &Graph, q: &Quantization) -> (Graph, Summary) {
    let uses = graph.uses();
    let mut out = Graph::new(graph.name.clone());
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    let mut summary = Summary::default();
    // Per quantized weight: (original, data, scale, axis of the op's attribute, block).
    let mut pending: Vec<(ValueId, ValueId, ValueId, usize, Option<usize>)> = Vec::new();
    for (i, v) in graph.values.iter().enumerate() {
        let id = ValueId(i as u32);
        match &v.def {
            ValueDef::Input => {
                let ty = v.ty.clone().unwrap_or_else(|| TensorType::new(DType::F32, vec![]));
                map.insert(id, out.add_input(v.name.clone(), ty));
            }
            ValueDef::Weight(w) => {
                let axis = (w.shape.len() == 2 && w.dtype.is_ieee_float())
                    .then(|| reduction_axis(graph, &uses, id, q.embeddings))
                    .flatten();
                let Some(k_axis) = axis else {
                    map.insert(id, out.add_value(v.name.clone(), v.ty.clone(), v.def.clone()));
                    continue;
                };
                let (scale_shape, attr_axis, block) = match q.group_size {
                    Some(g) => {
                        let mut s = w.shape.clone();
                        s[k_axis] = w.shape[k_axis].div_ceil(g);
                        (s, k_axis, Some(g))
                    }
                    None => {
                        let channel = 1 - k_axis;
                        (vec![w.shape[channel]], channel, None)
                    }
                };
                let data_w = WeightRef { dtype: q.scheme.dtype(), shape: w.shape.clone(), location: None };
                let scale_w = WeightRef { dtype: SCALE_DTYPE, shape: scale_shape.clone(), location: None };
                summary.bytes_before += w.byte_len();
                summary.bytes_after += data_w.byte_len() + scale_w.byte_len();
                let data_name = format!("{}:{}", v.name, q.scheme.name());
                let scale_name = format!("{}:scale", v.name);
                let data = out.add_value(
                    data_name.clone(),
                    Some(TensorType::known(data_w.dtype, &data_w.shape)),
                    ValueDef::Weight(data_w),
                );
                let scale = out.add_value(
                    scale_name.clone(),
                    Some(TensorType::known(SCALE_DTYPE, &scale_shape)),
                    ValueDef::Weight(scale_w),
                );
                summary.weights.push(Quantized {
                    source: v.name.clone(),
                    source_dtype: w.dtype,
                    shape: w.shape.clone(),
                    scheme: q.scheme,
                    data: data_name,
                    scale: scale_name,
                    axis: attr_axis,
                    block,
                });
                pending.push((id, data, scale, attr_axis, block));
            }
            ValueDef::Const(_) => {
                map.insert(id, out.add_value(v.name.clone(), v.ty.clone(), v.def.clone()));
            }
            ValueDef::Node(_) => {}
        }
    }
    for (w, data, scale, axis, block) in pending {
        let original = graph.value(w);
        let ValueDef::Weight(wr) = &original.def else { continue };
        let unit = uses[w.index()].first().and_then(|n| graph.node(*n).unit);
        let op = Op::DequantizeLinear(DequantizeLinear {
            axis: axis as i64,
            block_size: block.unwrap_or(0) as i64,
            output_dtype: None,
        });
        let name = format!("{}:dequantize", original.name);
        let nid = out.add_node(name, op, vec![Some(data), Some(scale)], &[format!("{}:dequantized", original.name)]);
        out.nodes[nid.index()].unit = unit;
        let mut result = out.node(nid).outputs[0];
        out.value_mut(result).ty = Some(TensorType::known(SCALE_DTYPE, &wr.shape));
        let only_casts = uses[w.index()].iter().all(|n| matches!(graph.node(*n).op, Op::Cast(_)));
        if wr.dtype != SCALE_DTYPE && !only_casts {
            let cast = Op::Cast(Cast { to: wr.dtype, saturate: 1, round_mode: "up".into() });
            let name = format!("{}:dequantized_as_{}", original.name, wr.dtype);
            let cid = out.add_node(name.clone(), cast, vec![Some(result)], &[name]);
            out.nodes[cid.index()].unit = unit;
            result = out.node(cid).outputs[0];
            out.value_mut(result).ty = original.ty.clone();
        }
        map.insert(w, result);
    }
    for node in &graph.nodes {
        let inputs = node.inputs.iter().map(|v| v.map(|v| map[&v])).collect();
        map.extend(out.append_copy(graph, node, inputs));
    }
    out.carry_over(graph, &map);
    (out, summary)
}

#[cfg(test)]
mod tests;

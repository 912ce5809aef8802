//! Opsets 7 through 24 of the default domain, converted to the IR's op forms (each
//! op's latest version up to opset 24).
//!
//! What changes with the opset, and how an older node is converted:
//! - attributes that later became inputs become constant inputs: `axes` of
//!   `Squeeze`/`Unsqueeze` (< 13), of `ReduceSum` (< 13) and the other reductions
//!   (< 18); `split` of `Split` (< 13); `starts`/`ends`/`axes` of `Slice` (< 10);
//!   `min`/`max` of `Clip` (< 11) and `pads`/`value` of `Pad` (< 11), cast to the
//!   input's type with `CastLike`; `k` of `TopK` (< 10);
//! - `Softmax`, `LogSoftmax` and `Hardmax` before 13 work on the input flattened to
//!   2-D at `axis` (default 1): `Flatten`, the op on the last axis, `Reshape` back;
//! - `Dropout`'s `ratio` attribute (< 12) only matters in training: dropped;
//! - `Scatter` (9, 10) is `ScatterElements`;
//! - an op that does not exist yet at the model's opset, an attribute added after it,
//!   or an input added after it, is refused by name.

use shardc_ir::ops::*;
use shardc_ir::{AttrValue, DType, Op, TensorData, ValueId};

/// Opsets of the default (`ai.onnx`) domain shardc reads.
pub const OPSETS: std::ops::RangeInclusive<i64> = 7..=24;

/// ONNX op types the frontend reads that are not IR ops: `Constant` becomes a constant
/// value, `Scatter` the `ScatterElements` it was renamed to.
pub const CONVERTED: &[&str] = &["Constant", "Scatter"];

/// Where a conversion puts the constants and nodes it adds before the node itself.
pub trait Sink {
    /// A constant value.
    fn constant(&mut self, data: TensorData) -> ValueId;
    /// A single-output node placed before the converted node.
    fn node(&mut self, op: Op, inputs: Vec<Option<ValueId>>) -> ValueId;
}

/// Ops whose definition did not change from opset 1 to opset 7: a model of opset 1
/// to 6 that uses only these is read as if it were opset 7.
pub fn same_since_opset_1(op_type: &str) -> bool {
    matches!(
        op_type,
        "Not" | "Identity" | "Shape" | "Size" | "Transpose" | "Gather" | "MatMul" | "Flatten" | "Constant"
    )
}

/// The opset in which an op first appears (for ops older than opset 7, 1).
fn introduced(op_type: &str) -> i64 {
    match op_type {
        "Mod" | "ThresholdedRelu" | "IsInf" | "QuantizeLinear" | "DequantizeLinear" | "MatMulInteger"
        | "ReverseSequence" => 10,
        "BitShift"
        | "Round"
        | "GatherElements"
        | "GatherND"
        | "Range"
        | "CumSum"
        | "ScatterND"
        | "ScatterElements"
        | "DynamicQuantizeLinear" => 11,
        "Celu" | "Einsum" | "LessOrEqual" | "GreaterOrEqual" => 12,
        "HardSwish" | "Trilu" => 14,
        "CastLike" => 15,
        "LayerNormalization" => 17,
        "BitwiseAnd" | "BitwiseOr" | "BitwiseXor" | "BitwiseNot" | "Mish" => 18,
        "Gelu" => 20,
        "RMSNormalization" | "Attention" | "RotaryEmbedding" => 23,
        "Swish" | "TensorScatter" => 24,
        "Where"
        | "Sign"
        | "IsNaN"
        | "Erf"
        | "Sinh"
        | "Cosh"
        | "Asinh"
        | "Acosh"
        | "Atanh"
        | "Shrink"
        | "ConstantOfShape"
        | "NonZero"
        | "OneHot"
        | "EyeLike"
        | "MeanVarianceNormalization"
        | "Scatter" => 9,
        "Expand" => 8,
        _ => 1,
    }
}

/// Attributes added to an op after it first appeared: (attribute, opset it came in).
fn later_attributes(op_type: &str) -> &'static [(&'static str, i64)] {
    match op_type {
        "Cast" => &[("saturate", 19), ("round_mode", 24)],
        "CastLike" => &[("saturate", 19), ("round_mode", 24)],
        "Reshape" => &[("allowzero", 14)],
        "Shape" => &[("start", 15), ("end", 15)],
        "Split" => &[("num_outputs", 18)],
        "ReduceSum" => &[("noop_with_empty_axes", 13)],
        "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1" | "ReduceL2" | "ReduceLogSum"
        | "ReduceLogSumExp" | "ReduceSumSquare" => &[("noop_with_empty_axes", 18)],
        "ArgMax" | "ArgMin" => &[("select_last_index", 12)],
        "GatherND" => &[("batch_dims", 12)],
        "TopK" => &[("largest", 11), ("sorted", 11)],
        "ScatterND" | "ScatterElements" => &[("reduction", 16)],
        "QuantizeLinear" => {
            &[("axis", 13), ("saturate", 19), ("block_size", 21), ("output_dtype", 21), ("precision", 23)]
        }
        "DequantizeLinear" => &[("axis", 13), ("block_size", 21), ("output_dtype", 23)],
        "Dropout" => &[("seed", 12)],
        _ => &[],
    }
}

/// The most inputs an op takes at `opset`, where that changed after opset 7.
fn max_inputs(op_type: &str, opset: i64) -> Option<usize> {
    match op_type {
        "Attention" if opset < 24 => Some(6),
        "Pad" if opset < 11 => Some(1),
        "Pad" if opset < 18 => Some(3),
        "Clip" if opset < 11 => Some(1),
        "Slice" if opset < 10 => Some(1),
        "Dropout" if opset < 12 => Some(1),
        "TopK" if opset < 10 => Some(1),
        "Squeeze" | "Unsqueeze" if opset < 13 => Some(1),
        "Split" if opset < 13 => Some(1),
        "ReduceSum" if opset < 13 => Some(1),
        "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1" | "ReduceL2" | "ReduceLogSum"
        | "ReduceLogSumExp" | "ReduceSumSquare"
            if opset < 18 =>
        {
            Some(1)
        }
        _ => None,
    }
}

fn take_ints(attrs: &mut Attrs, name: &str) -> Result<Option<Vec<i64>>, String> {
    match attrs.remove(name) {
        None => Ok(None),
        Some(AttrValue::Ints(v)) => Ok(Some(v)),
        Some(AttrValue::Int(i)) => Ok(Some(vec![i])),
        Some(other) => Err(format!("attribute `{name}` must be ints, got {}", other.kind())),
    }
}

fn take_float(attrs: &mut Attrs, name: &str) -> Result<Option<f32>, String> {
    match attrs.remove(name) {
        None => Ok(None),
        Some(AttrValue::Float(f)) => Ok(Some(f)),
        Some(AttrValue::Int(i)) => Ok(Some(i as f32)),
        Some(other) => Err(format!("attribute `{name}` must be a float, got {}", other.kind())),
    }
}

fn ints_const(sink: &mut dyn Sink, values: &[i64]) -> ValueId {
    sink.constant(TensorData::from_i64(vec![values.len()], values))
}

/// `value` as a scalar of the type of `like`.
fn scalar_like(sink: &mut dyn Sink, value: f32, like: Option<ValueId>) -> ValueId {
    let c = sink.constant(TensorData::from_f64_values(DType::F32, vec![], &[f64::from(value)]));
    sink.node(Op::CastLike(CastLike { saturate: 1, round_mode: "up".into() }), vec![Some(c), like])
}

/// Convert one node of `op_type` at `opset` into an IR op and its inputs, adding the
/// constants and nodes it needs first through `sink`.
pub fn convert(
    op_type: &str,
    opset: i64,
    mut attrs: Attrs,
    mut inputs: Vec<Option<ValueId>>,
    sink: &mut dyn Sink,
) -> Result<(Op, Vec<Option<ValueId>>), String> {
    let first = introduced(op_type);
    if opset < first {
        return Err(format!("`{op_type}` does not exist in opset {opset} (it came in opset {first})"));
    }
    for &(attr, since) in later_attributes(op_type) {
        if opset < since && attrs.contains_key(attr) {
            return Err(format!(
                "attribute `{attr}` of `{op_type}` does not exist in opset {opset} (it came in opset {since})"
            ));
        }
    }
    if let Some(max) = max_inputs(op_type, opset) {
        if inputs.len() > max {
            return Err(format!(
                "`{op_type}` takes at most {max} inputs in opset {opset}, the node has {}",
                inputs.len()
            ));
        }
    }
    // ONNX writes 0 for "unset" in these dtype attributes.
    if matches!(op_type, "QuantizeLinear" | "DequantizeLinear") {
        for name in ["output_dtype", "precision"] {
            if attrs.get(name) == Some(&AttrValue::Int(0)) {
                attrs.remove(name);
            }
        }
    }
    let mut op_type = op_type.to_string();
    match op_type.as_str() {
        "Squeeze" | "Unsqueeze" if opset < 13 => {
            if let Some(axes) = take_ints(&mut attrs, "axes")? {
                inputs.push(Some(ints_const(sink, &axes)));
            }
        }
        "ReduceSum" if opset < 13 => move_axes(&mut attrs, &mut inputs, sink)?,
        "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1" | "ReduceL2" | "ReduceLogSum"
        | "ReduceLogSumExp" | "ReduceSumSquare"
            if opset < 18 =>
        {
            move_axes(&mut attrs, &mut inputs, sink)?
        }
        "Split" if opset < 13 => {
            if let Some(split) = take_ints(&mut attrs, "split")? {
                inputs.push(Some(ints_const(sink, &split)));
            }
        }
        "Slice" if opset < 10 => {
            let starts = take_ints(&mut attrs, "starts")?.ok_or("Slice needs `starts`")?;
            let ends = take_ints(&mut attrs, "ends")?.ok_or("Slice needs `ends`")?;
            inputs.push(Some(ints_const(sink, &starts)));
            inputs.push(Some(ints_const(sink, &ends)));
            if let Some(axes) = take_ints(&mut attrs, "axes")? {
                inputs.push(Some(ints_const(sink, &axes)));
            }
        }
        "Clip" if opset < 11 => {
            let x = inputs.first().copied().flatten();
            let min = take_float(&mut attrs, "min")?.unwrap_or(f32::MIN);
            let max = take_float(&mut attrs, "max")?.unwrap_or(f32::MAX);
            let lo = scalar_like(sink, min, x);
            let hi = scalar_like(sink, max, x);
            inputs.extend([Some(lo), Some(hi)]);
        }
        "Pad" if opset < 11 => {
            let x = inputs.first().copied().flatten();
            let pads = take_ints(&mut attrs, "pads")?.ok_or("Pad needs `pads`")?;
            let value = take_float(&mut attrs, "value")?.unwrap_or(0.0);
            inputs.push(Some(ints_const(sink, &pads)));
            inputs.push(Some(scalar_like(sink, value, x)));
        }
        "Dropout" if opset < 12 => {
            take_float(&mut attrs, "ratio")?;
        }
        "TopK" if opset < 10 => {
            let k = take_ints(&mut attrs, "k")?.ok_or("TopK needs `k`")?;
            inputs.push(Some(ints_const(sink, &k)));
        }
        "Scatter" => op_type = "ScatterElements".into(),
        "Softmax" | "LogSoftmax" | "Hardmax" if opset < 13 => {
            // The input flattened to 2-D at `axis` (default 1), the op over the second
            // dim, the result reshaped back.
            let axis = match attrs.remove("axis") {
                None => 1,
                Some(AttrValue::Int(a)) => a,
                Some(other) => return Err(format!("attribute `axis` must be an int, got {}", other.kind())),
            };
            if let Some(extra) = attrs.keys().next() {
                return Err(format!("`{op_type}` has no attribute `{extra}`"));
            }
            let x = inputs.first().copied().flatten();
            let shape = sink.node(Op::Shape(Shape { start: 0, end: None }), vec![x]);
            let flat = sink.node(Op::Flatten(Flatten { axis }), vec![x]);
            let op = match op_type.as_str() {
                "Softmax" => Op::Softmax(Softmax { axis: -1 }),
                "LogSoftmax" => Op::LogSoftmax(LogSoftmax { axis: -1 }),
                _ => Op::Hardmax(Hardmax { axis: -1 }),
            };
            let y = sink.node(op, vec![Some(flat)]);
            return Ok((Op::Reshape(Reshape { allowzero: 0 }), vec![Some(y), Some(shape)]));
        }
        _ => {}
    }
    let op = Op::from_attrs(&op_type, attrs).map_err(|e| e.to_string())?;
    Ok((op, inputs))
}

/// A reduction's `axes` attribute as input 1.
fn move_axes(attrs: &mut Attrs, inputs: &mut Vec<Option<ValueId>>, sink: &mut dyn Sink) -> Result<(), String> {
    if let Some(axes) = take_ints(attrs, "axes")? {
        inputs.push(Some(ints_const(sink, &axes)));
    }
    Ok(())
}

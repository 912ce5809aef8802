//! A stage graph as an ONNX model that ONNX Runtime runs as shipped (at the lowest
//! opset, 17 or later, whose op definitions are the IR's — see [`opset_of`]):
//! weights are initializers with external data pointing into `weights.safetensors`
//! (offset = 8 + header length + tensor offset), small constants are inline
//! initializers, and symbolic dims become `dim_param`s spelled as in the text IR.

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataLocation;
use onnx_protobuf::tensor_shape_proto::{dimension, Dimension};
use onnx_protobuf::{
    type_proto, AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use shardc_ir::{AttrValue, DType, Graph, Op, TensorData, TensorType, ValueDef, ValueId};

use super::EmitError;

/// The lowest opset an emitted model imports.
pub const MIN_OPSET: i64 = 17;

/// The opset at which ONNX defines `op`, as the node uses it, the way the IR does:
/// the version that introduced the forms and attributes in use.
fn op_opset(op: &Op, inputs: usize) -> i64 {
    use Op::*;
    match op {
        ReduceMean(_) | ReduceMax(_) | ReduceMin(_) | ReduceProd(_) | ReduceL1(_) | ReduceL2(_) | ReduceLogSum(_)
        | ReduceLogSumExp(_) | ReduceSumSquare(_) => 18,
        Split(s) if s.num_outputs.is_some() => 18,
        Pad(p) if p.mode == "wrap" => 19,
        Pad(_) if inputs > 3 => 18,
        Cast(c) if c.round_mode != "up" => 24,
        Cast(c) if c.saturate != 1 => 19,
        CastLike(c) if c.round_mode != "up" => 24,
        CastLike(c) if c.saturate != 1 => 19,
        ScatterND(s) if matches!(s.reduction.as_str(), "max" | "min") => 18,
        ScatterElements(s) if matches!(s.reduction.as_str(), "max" | "min") => 18,
        ScatterND(s) if s.reduction != "none" => 16,
        ScatterElements(s) if s.reduction != "none" => 16,
        QuantizeLinear(q) if q.precision.is_some() => 23,
        QuantizeLinear(q) if q.block_size != 0 || q.output_dtype.is_some() => 21,
        // Opset 19 allows f16 and bf16 scales (the IR allows them at any version).
        QuantizeLinear(_) => 19,
        DequantizeLinear(d) if d.output_dtype.is_some() => 23,
        DequantizeLinear(d) if d.block_size != 0 => 21,
        DequantizeLinear(_) => 19,
        Attention(_) if inputs > 6 => 24,
        Gelu(_) => 20,
        RMSNormalization(_) | RotaryEmbedding(_) | Attention(_) => 23,
        Swish(_) | TensorScatter(_) => 24,
        BitwiseAnd(_) | BitwiseOr(_) | BitwiseXor(_) | BitwiseNot(_) | Mish(_) => 18,
        _ => MIN_OPSET,
    }
}

/// The opset at which element type `dtype` may appear.
fn dtype_opset(dtype: DType) -> i64 {
    match dtype {
        DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ => 19,
        DType::I4 | DType::U4 => 21,
        DType::F4E2M1 => 23,
        DType::F8E8M0 => 24,
        _ => MIN_OPSET,
    }
}

/// The opset a stage graph's model imports: the lowest at which every op, as used,
/// and every element type has the IR's definition.
pub fn opset_of(graph: &Graph) -> i64 {
    let ops = graph.nodes.iter().map(|n| op_opset(&n.op, n.inputs.len()));
    let types = graph.values.iter().filter_map(|v| v.ty.as_ref()).map(|t| dtype_opset(t.dtype));
    ops.chain(types).fold(MIN_OPSET, i64::max)
}

fn value_info(name: &str, ty: Option<&TensorType>) -> ValueInfoProto {
    let mut vi = ValueInfoProto::new();
    vi.name = name.to_string();
    if let Some(ty) = ty {
        let mut shape = TensorShapeProto::new();
        for d in &ty.shape {
            let mut dim = Dimension::new();
            dim.value = Some(match d.as_known() {
                Some(n) => dimension::Value::DimValue(n),
                None => dimension::Value::DimParam(d.to_string()),
            });
            shape.dim.push(dim);
        }
        let mut t = type_proto::Tensor::new();
        t.elem_type = ty.dtype.onnx_code();
        t.shape = Some(shape).into();
        let mut tp = TypeProto::new();
        tp.value = Some(type_proto::Value::TensorType(t));
        vi.type_ = Some(tp).into();
    }
    vi
}

fn inline_tensor(name: &str, t: &TensorData) -> TensorProto {
    let mut p = TensorProto::new();
    p.name = name.to_string();
    p.data_type = t.dtype.onnx_code();
    p.dims = t.shape.iter().map(|&d| d as i64).collect();
    p.raw_data = t.bytes().to_vec();
    p
}

fn attribute(name: &str, value: &AttrValue) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.to_string();
    match value {
        AttrValue::Int(i) => {
            a.type_ = AttributeType::INT.into();
            a.i = *i;
        }
        AttrValue::Float(f) => {
            a.type_ = AttributeType::FLOAT.into();
            a.f = *f;
        }
        AttrValue::Ints(v) => {
            a.type_ = AttributeType::INTS.into();
            a.ints = v.clone();
        }
        AttrValue::Floats(v) => {
            a.type_ = AttributeType::FLOATS.into();
            a.floats = v.clone();
        }
        AttrValue::Str(s) => {
            a.type_ = AttributeType::STRING.into();
            a.s = s.as_bytes().to_vec();
        }
        AttrValue::DType(d) => {
            a.type_ = AttributeType::INT.into();
            a.i = i64::from(d.onnx_code());
        }
        AttrValue::Tensor(t) => {
            a.type_ = AttributeType::TENSOR.into();
            a.t = Some(inline_tensor("", t)).into();
        }
    }
    a
}

/// Serialise `graph` (whose weights already point into `weights.safetensors`).
pub fn to_onnx(graph: &Graph) -> Result<Vec<u8>, EmitError> {
    let name = |v: ValueId| graph.value(v).name.clone();
    let mut g = GraphProto::new();
    g.name = graph.name.clone();
    for &v in &graph.inputs {
        g.input.push(value_info(&name(v), graph.value(v).ty.as_ref()));
    }
    for &v in &graph.outputs {
        g.output.push(value_info(&name(v), graph.value(v).ty.as_ref()));
    }
    for value in &graph.values {
        match &value.def {
            ValueDef::Weight(w) => {
                let loc = w.location.as_ref().ok_or_else(|| EmitError::Weight {
                    name: value.name.clone(),
                    message: "has no location in weights.safetensors".into(),
                })?;
                let mut t = TensorProto::new();
                t.name = value.name.clone();
                t.data_type = w.dtype.onnx_code();
                t.dims = w.shape.iter().map(|&d| d as i64).collect();
                t.data_location = DataLocation::EXTERNAL.into();
                for (k, v) in [
                    ("location", loc.file.clone()),
                    ("offset", loc.offset.to_string()),
                    ("length", loc.length.to_string()),
                ] {
                    let mut e = StringStringEntryProto::new();
                    e.key = k.into();
                    e.value = v;
                    t.external_data.push(e);
                }
                g.initializer.push(t);
            }
            ValueDef::Const(c) => g.initializer.push(inline_tensor(&value.name, c)),
            _ => {}
        }
    }
    for node in &graph.nodes {
        let mut n = NodeProto::new();
        n.name = node.name.clone();
        n.op_type = node.op.name().to_string();
        n.input = node.inputs.iter().map(|v| v.map(name).unwrap_or_default()).collect();
        n.output = node.outputs.iter().map(|&v| name(v)).collect();
        n.attribute = node.op.attributes().iter().map(|(k, v)| attribute(k, v)).collect();
        g.node.push(n);
    }
    let mut opset = OperatorSetIdProto::new();
    opset.version = opset_of(graph);
    // The IR version that introduced each opset (onnx/helper.py's table).
    let ir_version = match opset.version {
        ..=18 => 8,
        19 | 20 => 9,
        21 | 22 => 10,
        _ => 11,
    };
    let mut m = ModelProto::new();
    m.ir_version = ir_version;
    m.producer_name = "shardc".into();
    m.producer_version = env!("CARGO_PKG_VERSION").into();
    m.opset_import.push(opset);
    m.graph = Some(g).into();
    m.write_to_bytes()
        .map_err(|e| EmitError::Io { path: Default::default(), message: format!("serialising ONNX: {e}") })
}

//! Models at older opsets: each attribute that later became an input, and each op
//! whose meaning changed, gives the answer the model's own opset defines; what does
//! not exist at the model's opset is refused by name.

use std::path::{Path, PathBuf};

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_shape_proto::{dimension, Dimension};
use onnx_protobuf::{
    type_proto, AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, TensorShapeProto,
    TypeProto, ValueInfoProto,
};
use shardc::frontend::onnx;
use shardc_ir::{DType, TensorData};

enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
}

fn value_info(name: &str, elem_type: i32, rank: usize) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    for i in 0..rank {
        let mut dim = Dimension::new();
        dim.value = Some(dimension::Value::DimParam(format!("{name}_{i}")));
        shape.dim.push(dim);
    }
    let mut tensor = type_proto::Tensor::new();
    tensor.elem_type = elem_type;
    tensor.shape = Some(shape).into();
    let mut ty = TypeProto::new();
    ty.value = Some(type_proto::Value::TensorType(tensor));
    let mut vi = ValueInfoProto::new();
    vi.name = name.into();
    vi.type_ = Some(ty).into();
    vi
}

/// A model of one node `op` at `opset` over f32 inputs `x`, `x1`, ... of the given
/// ranks, with `outputs` f32 outputs (of unknown shape).
fn one_node(opset: i64, op: &str, input_ranks: &[usize], attrs: Vec<(&str, Attr)>, outputs: &[(&str, i32)]) -> PathBuf {
    let mut node = NodeProto::new();
    node.name = "n".into();
    node.op_type = op.into();
    let mut graph = GraphProto::new();
    graph.name = "g".into();
    for (i, &rank) in input_ranks.iter().enumerate() {
        let name = if i == 0 { "x".to_string() } else { format!("x{i}") };
        graph.input.push(value_info(&name, 1, rank));
        node.input.push(name);
    }
    for &(name, elem_type) in outputs {
        let mut vi = ValueInfoProto::new();
        vi.name = name.into();
        let mut tensor = type_proto::Tensor::new();
        tensor.elem_type = elem_type;
        let mut ty = TypeProto::new();
        ty.value = Some(type_proto::Value::TensorType(tensor));
        vi.type_ = Some(ty).into();
        graph.output.push(vi);
        node.output.push(name.into());
    }
    for (name, value) in attrs {
        let mut a = AttributeProto::new();
        a.name = name.into();
        match value {
            Attr::Int(i) => {
                a.type_ = AttributeType::INT.into();
                a.i = i;
            }
            Attr::Ints(v) => {
                a.type_ = AttributeType::INTS.into();
                a.ints = v;
            }
            Attr::Float(f) => {
                a.type_ = AttributeType::FLOAT.into();
                a.f = f;
            }
        }
        node.attribute.push(a);
    }
    graph.node.push(node);
    let mut set = OperatorSetIdProto::new();
    set.version = opset;
    let mut model = ModelProto::new();
    model.ir_version = 7;
    model.opset_import.push(set);
    model.graph = Some(graph).into();
    let dir = tempfile::tempdir().unwrap().keep();
    let path = dir.join("model.onnx");
    std::fs::write(&path, model.write_to_bytes().unwrap()).unwrap();
    path
}

fn f32s(shape: &[usize], values: &[f64]) -> TensorData {
    TensorData::from_f64_values(DType::F32, shape.to_vec(), values)
}

/// Import and run the model on `x` (and `x1`, ...); the outputs' shapes and values.
fn run(path: &Path, inputs: Vec<TensorData>) -> Vec<(Vec<usize>, Vec<f64>)> {
    let model = onnx::import(path).unwrap_or_else(|e| panic!("{e}"));
    let inputs = inputs
        .into_iter()
        .enumerate()
        .map(|(i, t)| (if i == 0 { "x".to_string() } else { format!("x{i}") }, t))
        .collect();
    let outputs = shardc::run::run_graph(model.graph, path.parent().unwrap(), inputs).unwrap_or_else(|e| panic!("{e}"));
    outputs.into_iter().map(|(_, t)| (t.shape.clone(), t.to_f64_vec())).collect()
}

fn close(actual: &[f64], expected: &[f64]) {
    assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
    for (a, e) in actual.iter().zip(expected) {
        assert!((a - e).abs() <= 1e-6 * e.abs().max(1.0), "{actual:?} vs {expected:?}");
    }
}

fn refused(path: &Path, message: &str) {
    let err = onnx::import(path).map(|_| ()).expect_err("must be refused").to_string();
    assert!(err.contains(message), "error lacks `{message}`: {err}");
}

const X23: [f64; 6] = [1.0, -2.0, 3.0, -4.0, 5.0, -6.0];

#[test]
fn squeeze_and_unsqueeze_axes_attributes_before_13() {
    let out = run(
        &one_node(11, "Squeeze", &[3], vec![("axes", Attr::Ints(vec![0, -1]))], &[("y", 1)]),
        vec![f32s(&[1, 6, 1], &X23)],
    );
    assert_eq!(out[0].0, [6]);
    close(&out[0].1, &X23);
    let out = run(
        &one_node(11, "Unsqueeze", &[2], vec![("axes", Attr::Ints(vec![0, 3]))], &[("y", 1)]),
        vec![f32s(&[2, 3], &X23)],
    );
    assert_eq!(out[0].0, [1, 2, 3, 1]);
    // Opset 13 takes the axes as an input: the attribute is refused.
    refused(&one_node(13, "Squeeze", &[3], vec![("axes", Attr::Ints(vec![0]))], &[("y", 1)]), "no attribute `axes`");
}

#[test]
fn reduction_axes_attributes_before_13_and_18() {
    let x = f32s(&[2, 3], &X23);
    let attrs = || vec![("axes", Attr::Ints(vec![1])), ("keepdims", Attr::Int(0))];
    let out = run(&one_node(11, "ReduceSum", &[2], attrs(), &[("y", 1)]), vec![x.clone()]);
    assert_eq!(out[0].0, [2]);
    close(&out[0].1, &[2.0, -5.0]);
    let out = run(&one_node(17, "ReduceMean", &[2], attrs(), &[("y", 1)]), vec![x.clone()]);
    close(&out[0].1, &[2.0 / 3.0, -5.0 / 3.0]);
    let out = run(&one_node(12, "ReduceMax", &[2], vec![("axes", Attr::Ints(vec![0]))], &[("y", 1)]), vec![x.clone()]);
    assert_eq!(out[0].0, [1, 3]);
    close(&out[0].1, &[1.0, 5.0, 3.0]);
    // No axes: every axis, at every opset.
    let out = run(&one_node(11, "ReduceSum", &[2], vec![], &[("y", 1)]), vec![x]);
    close(&out[0].1, &[-3.0]);
    refused(&one_node(18, "ReduceMean", &[2], attrs(), &[("y", 1)]), "no attribute `axes`");
    refused(
        &one_node(13, "ReduceMean", &[2], vec![("noop_with_empty_axes", Attr::Int(1))], &[("y", 1)]),
        "attribute `noop_with_empty_axes` of `ReduceMean` does not exist in opset 13 (it came in opset 18)",
    );
}

#[test]
fn softmax_before_13_normalises_the_input_flattened_at_axis() {
    // Shape [2, 2, 2], axis 1: before opset 13 each of the 2 rows of 4 elements sums
    // to 1; from 13 on, each pair along axis 1.
    let values: Vec<f64> = (0..8).map(|i| f64::from(i) * 0.5).collect();
    let x = f32s(&[2, 2, 2], &values);
    let softmax = |v: &[f64]| {
        let m = v.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = v.iter().map(|a| (a - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.into_iter().map(|a| a / s).collect::<Vec<f64>>()
    };
    let old = run(&one_node(11, "Softmax", &[3], vec![("axis", Attr::Int(1))], &[("y", 1)]), vec![x.clone()]);
    assert_eq!(old[0].0, [2, 2, 2]);
    let expected: Vec<f64> = values.chunks(4).flat_map(softmax).collect();
    close(&old[0].1, &expected);
    let new = run(&one_node(13, "Softmax", &[3], vec![("axis", Attr::Int(1))], &[("y", 1)]), vec![x.clone()]);
    let mut expected = vec![0.0; 8];
    for b in 0..2 {
        for k in 0..2 {
            let idx = [b * 4 + k, b * 4 + 2 + k];
            let s = softmax(&[values[idx[0]], values[idx[1]]]);
            expected[idx[0]] = s[0];
            expected[idx[1]] = s[1];
        }
    }
    close(&new[0].1, &expected);
    // The default axis was 1 before 13 (the last axis after).
    let default = run(&one_node(12, "LogSoftmax", &[3], vec![], &[("y", 1)]), vec![x]);
    let expected: Vec<f64> = values.chunks(4).flat_map(|c| softmax(c).into_iter().map(f64::ln)).collect();
    close(&default[0].1, &expected);
}

#[test]
fn slice_clip_pad_topk_split_attributes_in_old_opsets() {
    let x = f32s(&[2, 3], &X23);
    let slice = one_node(
        9,
        "Slice",
        &[2],
        vec![("starts", Attr::Ints(vec![1])), ("ends", Attr::Ints(vec![i64::MAX])), ("axes", Attr::Ints(vec![1]))],
        &[("y", 1)],
    );
    let out = run(&slice, vec![x.clone()]);
    assert_eq!(out[0].0, [2, 2]);
    close(&out[0].1, &[-2.0, 3.0, 5.0, -6.0]);

    let clip = one_node(10, "Clip", &[2], vec![("min", Attr::Float(-2.5)), ("max", Attr::Float(3.5))], &[("y", 1)]);
    close(&run(&clip, vec![x.clone()])[0].1, &[1.0, -2.0, 3.0, -2.5, 3.5, -2.5]);
    // Only a minimum: no upper bound.
    let clip = one_node(6, "Clip", &[2], vec![("min", Attr::Float(0.0))], &[("y", 1)]);
    refused(&clip, "opset 6 of the default domain is not supported");
    let clip = one_node(7, "Clip", &[2], vec![("min", Attr::Float(0.0))], &[("y", 1)]);
    close(&run(&clip, vec![x.clone()])[0].1, &[1.0, 0.0, 3.0, 0.0, 5.0, 0.0]);
    refused(
        &one_node(10, "Clip", &[2, 0, 0], vec![], &[("y", 1)]),
        "`Clip` takes at most 1 inputs in opset 10, the node has 3",
    );

    let pad = one_node(
        10,
        "Pad",
        &[2],
        vec![("pads", Attr::Ints(vec![0, 1, 1, 0])), ("value", Attr::Float(9.0))],
        &[("y", 1)],
    );
    let out = run(&pad, vec![x.clone()]);
    assert_eq!(out[0].0, [3, 4]);
    close(&out[0].1, &[9.0, 1.0, -2.0, 3.0, 9.0, -4.0, 5.0, -6.0, 9.0, 9.0, 9.0, 9.0]);

    let topk = one_node(9, "TopK", &[2], vec![("k", Attr::Ints(vec![2]))], &[("values", 1), ("indices", 7)]);
    let out = run(&topk, vec![x.clone()]);
    assert_eq!(out[0].0, [2, 2]);
    close(&out[0].1, &[3.0, 1.0, 5.0, -4.0]);
    close(&out[1].1, &[2.0, 0.0, 1.0, 0.0]);
    refused(
        &one_node(10, "TopK", &[2, 1], vec![("largest", Attr::Int(0))], &[("values", 1), ("indices", 7)]),
        "attribute `largest` of `TopK` does not exist in opset 10 (it came in opset 11)",
    );

    let split = one_node(
        11,
        "Split",
        &[2],
        vec![("axis", Attr::Int(1)), ("split", Attr::Ints(vec![1, 2]))],
        &[("a", 1), ("b", 1)],
    );
    let out = run(&split, vec![x]);
    assert_eq!(out[0].0, [2, 1]);
    assert_eq!(out[1].0, [2, 2]);
    close(&out[1].1, &[-2.0, 3.0, 5.0, -6.0]);
}

#[test]
fn what_the_opset_lacks_is_refused_by_name() {
    refused(
        &one_node(17, "Gelu", &[2], vec![], &[("y", 1)]),
        "`Gelu` does not exist in opset 17 (it came in opset 20)",
    );
    refused(
        &one_node(13, "Reshape", &[2, 1], vec![("allowzero", Attr::Int(1))], &[("y", 1)]),
        "attribute `allowzero` of `Reshape` does not exist in opset 13 (it came in opset 14)",
    );
    refused(
        &one_node(25, "Relu", &[2], vec![], &[("y", 1)]),
        "opset 25 of the default domain is not supported (shardc reads opsets 7 to 24)",
    );
    refused(
        &one_node(5, "Relu", &[2], vec![], &[("y", 1)]),
        "before 7 only ops that did not change until opset 7, and `Relu` did",
    );
    // An op unchanged since opset 1 is read from an opset-1 model.
    let out = run(&one_node(1, "Transpose", &[2], vec![], &[("y", 1)]), vec![f32s(&[2, 3], &X23)]);
    assert_eq!(out[0].0, [3, 2]);
    close(&out[0].1, &[1.0, -4.0, -2.0, 5.0, 3.0, -6.0]);
}

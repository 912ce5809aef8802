//! Bad input ends in a clear error naming the file and the node or tensor, a non-zero
//! exit from the CLI, and no panic.

mod common;

use std::path::{Path, PathBuf};

use onnx_protobuf::tensor_proto::DataLocation;
use onnx_protobuf::tensor_shape_proto::{dimension, Dimension};
use onnx_protobuf::{
    type_proto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use shardc::frontend::onnx;

fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    for &d in dims {
        let mut dim = Dimension::new();
        dim.value = Some(dimension::Value::DimValue(d));
        shape.dim.push(dim);
    }
    let mut tensor = type_proto::Tensor::new();
    tensor.elem_type = 1;
    tensor.shape = Some(shape).into();
    let mut ty = TypeProto::new();
    ty.value = Some(type_proto::Value::TensorType(tensor));
    let mut vi = ValueInfoProto::new();
    vi.name = name.into();
    vi.type_ = Some(ty).into();
    vi
}

fn node(name: &str, op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    let mut n = NodeProto::new();
    n.name = name.into();
    n.op_type = op.into();
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = outputs.iter().map(|s| s.to_string()).collect();
    n
}

/// `y = x + w`, with `w` a 2×3 f32 initializer in raw data.
fn tiny_model() -> ModelProto {
    let mut w = TensorProto::new();
    w.name = "w".into();
    w.data_type = 1;
    w.dims = vec![2, 3];
    w.raw_data = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let mut graph = GraphProto::new();
    graph.name = "tiny".into();
    graph.input.push(value_info("x", &[2, 3]));
    graph.output.push(value_info("y", &[2, 3]));
    graph.initializer.push(w);
    graph.node.push(node("add", "Add", &["x", "w"], &["y"]));
    let mut opset = OperatorSetIdProto::new();
    opset.version = 17;
    let mut model = ModelProto::new();
    model.ir_version = 8;
    model.opset_import.push(opset);
    model.graph = Some(graph).into();
    model
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn write_model(dir: &Path, model: &ModelProto) -> PathBuf {
    write(dir, "model.onnx", &model.write_to_bytes().unwrap())
}

fn external(model: &mut ModelProto, location: &str, offset: u64, length: u64) {
    let w = &mut model.graph.as_mut().unwrap().initializer[0];
    w.raw_data.clear();
    w.data_location = DataLocation::EXTERNAL.into();
    for (k, v) in [("location", location.to_string()), ("offset", offset.to_string()), ("length", length.to_string())] {
        let mut e = StringStringEntryProto::new();
        e.key = k.into();
        e.value = v;
        w.external_data.push(e);
    }
}

/// The library error and the CLI's stderr both name the file and contain `expected`;
/// the CLI exits non-zero without panicking.
fn assert_rejected(path: &Path, expected: &[&str]) {
    let err = onnx::import(path).expect_err("bad input must be rejected").to_string();
    assert!(err.contains(&path.display().to_string()), "error does not name the file: {err}");
    for e in expected {
        assert!(err.contains(e), "error lacks `{e}`: {err}");
    }
    for args in [vec!["inspect"], vec!["ir", "--after", "simplify"]] {
        let out = common::shardc_command().args(&args).arg(path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?} {}: {stderr}", path.display());
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        for e in expected {
            assert!(stderr.contains(e), "stderr lacks `{e}`: {stderr}");
        }
        assert!(out.stdout.is_empty(), "printed output for a bad model");
    }
}

#[test]
fn the_tiny_model_itself_imports() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_model(dir.path(), &tiny_model());
    let model = onnx::import(&path).unwrap();
    assert_eq!(model.graph.nodes.len(), 1);
}

#[test]
fn truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(common::fixture_onnx("gpt2")).unwrap();
    let path = write(dir.path(), "model.onnx", &bytes[..bytes.len() * 6 / 10]);
    assert_rejected(&path, &["not a valid ONNX protobuf", "truncated"]);
}

#[test]
fn bytes_that_are_not_protobuf() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "model.onnx", b"this is a plain text file, not an ONNX model\n");
    assert_rejected(&path, &["not a valid ONNX protobuf"]);
    let empty = write(dir.path(), "empty.onnx", b"");
    assert_rejected(&empty, &["the file is empty"]);
}

#[test]
fn external_data_location_that_is_absolute() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = tiny_model();
    external(&mut model, "/etc/passwd", 0, 24);
    let path = write_model(dir.path(), &model);
    assert_rejected(&path, &["tensor `w`", "`/etc/passwd`", "is absolute"]);
}

#[test]
fn external_data_location_with_dotdot() {
    let dir = tempfile::tempdir().unwrap();
    let inner = dir.path().join("model");
    std::fs::create_dir(&inner).unwrap();
    write(dir.path(), "secret.bin", &[0; 64]);
    let mut model = tiny_model();
    external(&mut model, "../secret.bin", 0, 24);
    let path = write_model(&inner, &model);
    assert_rejected(&path, &["tensor `w`", "`../secret.bin`", "contains `..`"]);
}

#[test]
fn external_data_past_the_end_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "weights.bin", &[0; 16]);
    let mut model = tiny_model();
    external(&mut model, "weights.bin", 8, 24);
    let path = write_model(dir.path(), &model);
    assert_rejected(
        &path,
        &["tensor `w`", "runs past the end of `weights.bin`", "offset 8 + length 24 > file size 16"],
    );
}

#[test]
fn external_data_that_is_fine_imports() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "weights.bin", &[0; 40]);
    let mut model = tiny_model();
    external(&mut model, "weights.bin", 16, 24);
    let path = write_model(dir.path(), &model);
    let graph = onnx::import(&path).unwrap().graph;
    let text = shardc_ir::text::print(&graph);
    assert!(text.contains(r#"weight %1 "w": f32[2, 3] = "weights.bin" @ 16 + 24"#), "{text}");
}

#[test]
fn graph_with_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = tiny_model();
    let graph = model.graph.as_mut().unwrap();
    graph.node.clear();
    graph.node.push(node("first", "Add", &["x", "b"], &["a"]));
    graph.node.push(node("second", "Add", &["a", "w"], &["b"]));
    graph.node.push(node("last", "Add", &["b", "w"], &["y"]));
    let path = write_model(dir.path(), &model);
    assert_rejected(&path, &["the graph has a cycle through nodes `first` -> `second`"]);
}

#[test]
fn nodes_out_of_order_are_sorted() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = tiny_model();
    let graph = model.graph.as_mut().unwrap();
    graph.node.clear();
    graph.node.push(node("second", "Add", &["a", "w"], &["y"]));
    graph.node.push(node("first", "Add", &["x", "w"], &["a"]));
    let path = write_model(dir.path(), &model);
    let graph = onnx::import(&path).unwrap().graph;
    let names: Vec<&str> = graph.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["first", "second"]);
}

#[test]
fn op_outside_the_op_set() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = tiny_model();
    model.graph.as_mut().unwrap().node[0].op_type = "NonMaxSuppression".into();
    let path = write_model(dir.path(), &model);
    assert_rejected(&path, &["node `add` (NonMaxSuppression)", "unsupported op `NonMaxSuppression`"]);
}

#[test]
fn attribute_the_op_does_not_have() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = tiny_model();
    let mut attr = onnx_protobuf::AttributeProto::new();
    attr.name = "axis".into();
    attr.type_ = onnx_protobuf::attribute_proto::AttributeType::INT.into();
    attr.i = 1;
    model.graph.as_mut().unwrap().node[0].attribute.push(attr);
    let path = write_model(dir.path(), &model);
    assert_rejected(&path, &["node `add` (Add)", "no attribute `axis`"]);
}

#[test]
fn initializer_length_disagrees_with_its_type() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = tiny_model();
    model.graph.as_mut().unwrap().initializer[0].raw_data.truncate(20);
    let path = write_model(dir.path(), &model);
    assert_rejected(&path, &["tensor `w`: 20 bytes of data, but f32 [2, 3] needs 24"]);
}

#[test]
fn input_nothing_defines() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = tiny_model();
    model.graph.as_mut().unwrap().node[0].input[1] = "missing".into();
    let path = write_model(dir.path(), &model);
    assert_rejected(&path, &["value `missing` (input of node `add`) is not defined"]);
}

#[test]
fn shapes_that_cannot_broadcast_name_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = tiny_model();
    model.graph.as_mut().unwrap().initializer[0].dims = vec![3, 2];
    let path = write_model(dir.path(), &model);
    let graph = onnx::import(&path).unwrap().graph;
    let mut g = graph.clone();
    let err = shardc_passes::run_pipeline(&mut g, &mut shardc_passes::Ctx::default(), None).unwrap_err();
    assert_eq!(err.to_string(), "pass `infer-shapes`: node `add` (Add): cannot broadcast [2, 3] with [3, 2]");
    let out = common::shardc_command().arg("inspect").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot broadcast"));
}

#[test]
fn unknown_pass_and_missing_file() {
    let out =
        common::shardc_command().args(["ir", "--after", "bogus"]).arg(common::fixture_onnx("gpt2")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown pass `bogus` (passes: infer-shapes, simplify)"));
    let out = common::shardc_command().args(["inspect", "/nonexistent/model.onnx"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model.onnx: not found"));
}

//! Models quantized before they reach shardc, as `onnxruntime.quantization` writes them
//! (`fixtures/quantize_onnx.py`): MatMulInteger + DynamicQuantizeLinear, QDQ with
//! quantized activations, blocked int4/uint4 DequantizeLinear. They run as ONNX
//! Runtime runs them, count their parameters once, plan by the bytes they store, and
//! refuse what shardc cannot do by name.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::{fixture_dir, shardc_text};

/// The fixtures with an ONNX Runtime reference, and the fixture each was made from.
const WITH_REFERENCE: [(&str, &str); 7] = [
    ("llama-dynamic-s8", "llama/model.onnx"),
    ("llama-dynamic-u8-pc", "llama/model.onnx"),
    ("llama-qdq-u8s8", "llama/model.onnx"),
    ("llama-qdq-s8-pc", "llama/model.onnx"),
    ("llama31-int4-qdq", "llama31/dynamo.onnx"),
    ("llama31-uint4-qdq", "llama31/dynamo.onnx"),
    ("bert-dynamic-s8", "bert/dynamo.onnx"),
];

fn model(name: &str) -> String {
    fixture_dir(&format!("quantized/{name}")).join("model.onnx").display().to_string()
}

/// Every tensor of a safetensors file, as raw bytes with dtype and shape.
fn tensors(path: &PathBuf) -> BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensors().into_iter().map(|(n, t)| (n, (t.dtype(), t.shape().to_vec(), t.data().to_vec()))).collect()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn quantized_models_compute_what_onnx_runtime_computes() {
    let dir = tempfile::tempdir().unwrap();
    for (name, _) in WITH_REFERENCE {
        let reference = tensors(&fixture_dir(&format!("quantized/{name}")).join("reference.safetensors"));
        // The graph's inputs: input_ids, or the encoder's three.
        let inputs: Vec<_> = reference
            .iter()
            .filter(|(n, _)| ["input_ids", "attention_mask", "token_type_ids"].contains(&n.as_str()))
            .map(|(n, (d, s, b))| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        let inputs_path = dir.path().join(format!("{name}.in.safetensors"));
        safetensors::serialize_to_file(inputs, None, &inputs_path).unwrap();
        let outputs_path = dir.path().join(format!("{name}.out.safetensors"));
        let (code, _, stderr) = shardc_text(&[
            "run",
            &model(name),
            "--inputs",
            &inputs_path.display().to_string(),
            "--outputs",
            &outputs_path.display().to_string(),
        ]);
        assert_eq!(code, 0, "{name}: {stderr}");
        let got = tensors(&outputs_path);
        let mut compared = 0;
        for (output, (_, shape, bytes)) in &got {
            let (_, ref_shape, ref_bytes) = &reference[output];
            assert_eq!(shape, ref_shape, "{name}: {output}");
            let (a, b) = (f32s(bytes), f32s(ref_bytes));
            let max = b.iter().fold(1f32, |m, v| m.max(v.abs()));
            let diff = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(diff <= 1e-4 * max, "{name}: {output} differs from ONNX Runtime by {diff} (max {max})");
            compared += 1;
        }
        assert!(compared > 0, "{name}: no output compared");
    }
}

/// `inspect --json` of a model: (parameters, weight bytes).
fn inspected(model: &str) -> (u64, u64) {
    let (code, stdout, stderr) = shardc_text(&["inspect", model, "--json"]);
    assert_eq!(code, 0, "{model}: {stderr}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let bytes = r["weights_by_dtype"].as_object().unwrap().values().map(|t| t["bytes"].as_u64().unwrap()).sum();
    (r["parameters"].as_u64().unwrap(), bytes)
}

fn planned_memory(model: &str) -> f64 {
    let devices = common::root().join("fixtures/devices/loopback-2.toml").display().to_string();
    let args = ["plan", model, "--devices", &devices, "--prompt-len", "16", "--max-context", "64", "--json"];
    let (code, stdout, stderr) = shardc_text(&args);
    assert_eq!(code, 0, "{model}: {stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    plan["stages"].as_array().unwrap().iter().map(|s| s["memory_bytes"].as_f64().unwrap()).sum()
}

#[test]
fn quantized_models_count_each_parameter_once_and_plan_by_their_stored_bytes() {
    for (name, source) in WITH_REFERENCE {
        let source = common::root().join("fixtures/models").join(source).display().to_string();
        let (params, bytes) = inspected(&model(name));
        let (source_params, source_bytes) = inspected(&source);
        // Quantized data is counted whatever its integer type (a lookup table read
        // through a Gather, a norm's 64 int8 values held inline); scales, zero points
        // and shape constants are not.
        assert_eq!(params, source_params, "{name}: parameters of the quantized model and of {source}");
        assert!(bytes * 2 < source_bytes, "{name}: {bytes} B against {source_bytes} B as f32");
        // The plan holds the bytes the file stores: what the f32 model needs less what
        // quantizing saved, within what the quantized graph's own activations add (its
        // integer copies of activations and i32 products; the cache stays f32).
        let (memory, source_memory) = (planned_memory(&model(name)), planned_memory(&source));
        let saved = (source_bytes - bytes) as f64;
        assert!(
            (source_memory - memory - saved).abs() <= 0.05 * saved,
            "{name}: plans {memory} B against {source_memory} B for {source}, but stores {saved} B less"
        );
    }
}

#[test]
fn what_shardc_cannot_do_with_quantized_models_is_refused_by_name() {
    // onnxruntime's own 4-bit operator is outside the ONNX standard.
    let nbits = model("llama31-matmulnbits");
    let (code, _, stderr) = shardc_text(&["inspect", &nbits]);
    assert_ne!(code, 0);
    assert!(stderr.contains("MatMulNBits") && stderr.contains("com.microsoft"), "{stderr}");
    // Quantizing a model that is quantized already would plan nothing new.
    let devices = common::root().join("fixtures/devices/loopback-2.toml").display().to_string();
    for (name, _) in [WITH_REFERENCE[0], WITH_REFERENCE[4]] {
        for command in ["plan", "compare"] {
            let (code, stdout, stderr) =
                shardc_text(&[command, &model(name), "--devices", &devices, "--quantize", "int4"]);
            assert_eq!(code, 1, "{name} {command}: {stdout}");
            assert!(
                stderr.contains("--quantize int4: the model has no float matrix weight to quantize")
                    && stderr.contains("quantized already"),
                "{name} {command}: {stderr}"
            );
        }
    }
}

/// The runtime reads imported quantized weights as stored: every product (and lookup)
/// over a dequantized 2-D weight — signed or unsigned codes, with zero points or
/// without — is fused, so no weight is dequantized whole.
#[test]
fn imported_dequantized_weights_are_read_as_stored() {
    use shardc_ir::{Op, ValueDef};
    for (name, with_zero) in
        [("llama-qdq-s8-pc", true), ("llama-qdq-u8s8", true), ("llama31-int4-qdq", false), ("llama31-uint4-qdq", true)]
    {
        let (graph, _) = common::lowered(&fixture_dir(&format!("quantized/{name}")).join("model.onnx"), None);
        let fused = shardc_runtime::quantized::fused_products(&graph);
        let uses = graph.uses();
        let mut products = 0;
        for (i, node) in graph.nodes.iter().enumerate() {
            let Op::DequantizeLinear(_) = node.op else { continue };
            let data = node.inputs[0].unwrap();
            let ValueDef::Weight(w) = &graph.value(data).def else { continue };
            if w.shape.len() != 2 {
                continue;
            }
            // The reader of this weight's dequantized values.
            let readers = &uses[node.outputs[0].index()];
            assert_eq!(readers.len(), 1, "{name}: {}", graph.value(data).name);
            let reader = readers[0].index();
            let f = fused[reader].as_ref().unwrap_or_else(|| {
                panic!(
                    "{name}: {} ({}) reads {} dequantized, not fused",
                    graph.nodes[reader].name,
                    graph.nodes[reader].op.name(),
                    graph.value(data).name
                )
            });
            assert_eq!((f.data, f.chain.contains(&i)), (data, true), "{name}");
            assert_eq!(f.zero.is_some(), with_zero, "{name}: zero point");
            products += 1;
        }
        assert!(products >= 10, "{name}: {products} dequantized matrices");
    }
}

//! The `shardc` binary on the fixtures.

mod common;

use common::{fixture_onnx, meta, FIXTURES};

use common::shardc_text as shardc;

#[test]
fn inspect_json_matches_the_generator() {
    for name in FIXTURES {
        let path = fixture_onnx(name);
        let (code, stdout, stderr) = shardc(&["inspect", path.to_str().unwrap(), "--json"]);
        assert_eq!(code, 0, "{stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let meta = meta(name);
        assert_eq!(report["parameters"], meta["onnx_parameter_count"], "{name}");
        assert_eq!(report["transformer_layers"], meta["num_layers"], "{name}");
        assert_eq!(report["inputs"][0]["type"], "i64[batch, seq]");
        assert_eq!(report["outputs"][0]["type"], "f32[batch, seq, 256]");
        assert_eq!(report["unknown_dims"], 0);
    }
}

#[test]
fn inspect_text_reads_at_a_glance() {
    let path = fixture_onnx("gpt2");
    let (code, stdout, _) = shardc(&["inspect", path.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(stdout.contains("input       input_ids: i64[batch, seq]"), "{stdout}");
    assert!(stdout.contains("parameters  102,848"), "{stdout}");
    assert!(stdout.contains("layers      2 transformer layers recognised"), "{stdout}");
}

#[test]
fn ir_prints_parseable_text_after_each_pass() {
    let path = fixture_onnx("llama");
    for after in [None, Some("infer-shapes"), Some("simplify")] {
        let mut args = vec!["ir", path.to_str().unwrap()];
        if let Some(a) = after {
            args.extend(["--after", a]);
        }
        let (code, stdout, stderr) = shardc(&args);
        assert_eq!(code, 0, "{stderr}");
        let graph = shardc_ir::text::parse(&stdout).unwrap();
        shardc_ir::verify(&graph).unwrap();
        assert_eq!(shardc_ir::text::print(&graph), stdout);
    }
}

#[test]
fn same_input_same_output() {
    let path = fixture_onnx("bloom");
    let a = shardc(&["ir", path.to_str().unwrap(), "--after", "simplify"]);
    let b = shardc(&["ir", path.to_str().unwrap(), "--after", "simplify"]);
    assert_eq!(a, b);
}

#[test]
fn run_prints_top_k_and_the_greedy_continuation() {
    let meta = meta("gpt2");
    let ids: Vec<String> = meta["input_ids"].as_array().unwrap().iter().map(|v| v.to_string()).collect();
    let expected: Vec<i64> = meta["greedy_tokens"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let path = fixture_onnx("gpt2");
    let ids_arg = ids.join(",");
    let (code, stdout, stderr) = shardc(&[
        "run",
        path.to_str().unwrap(),
        "--input-ids",
        &ids_arg,
        "--max-new-tokens",
        "8",
        "--json",
        "--top-k",
        "3",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let generated: Vec<i64> = report["generated"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(generated, expected);
    assert_eq!(report["top_k"].as_array().unwrap().len(), 3);
    // The top-1 id is the first generated token.
    assert_eq!(report["top_k"][0]["id"].as_i64(), Some(expected[0]));

    let (code, stdout, _) = shardc(&["run", path.to_str().unwrap(), "--input-ids", &ids_arg, "--max-new-tokens", "2"]);
    assert_eq!(code, 0);
    assert!(stdout.contains(&format!("generated   {},{} (2 tokens", expected[0], expected[1])), "{stdout}");
}

#[test]
fn run_rejects_token_ids_outside_the_vocabulary() {
    let path = fixture_onnx("llama");
    let (code, _, stderr) = shardc(&["run", path.to_str().unwrap(), "--input-ids", "1,2,256"]);
    assert_eq!(code, 1);
    assert_eq!(stderr.trim(), "error: token id 256 is outside the vocabulary (0..256)");
}

#[test]
fn run_on_a_checkpoint_generates_with_the_kv_cache() {
    for name in ["gpt2", "qwen2", "bloom"] {
        let meta = meta(name);
        let ids: Vec<String> = meta["input_ids"].as_array().unwrap().iter().map(|v| v.to_string()).collect();
        let expected: Vec<i64> =
            meta["greedy_tokens"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        let dir = common::fixture_dir(name).join("hf");
        let (code, stdout, stderr) =
            shardc(&["run", dir.to_str().unwrap(), "--input-ids", &ids.join(","), "--max-new-tokens", "8", "--json"]);
        assert_eq!(code, 0, "{stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(report["kv_cache"], true);
        let generated: Vec<i64> = report["generated"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(generated, expected, "{name}");
    }
}

#[test]
fn inspect_on_a_checkpoint_reports_unused_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let src = common::fixture_dir("gpt2").join("hf");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    // The checkpoint plus one tensor the lowering has no use for (like GPT-2's
    // `attn.bias` buffers on the Hub).
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let extra = vec![0u8; 16];
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = st.tensors().into_iter().collect();
    views.push((
        "transformer.h.0.attn.masked_bias".into(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &extra).unwrap(),
    ));
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    let (code, stdout, stderr) = shardc(&["inspect", dir.path().to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["unused_tensors"], serde_json::json!(["transformer.h.0.attn.masked_bias"]));
    assert_eq!(report["parameters"], meta("gpt2")["torch_parameter_count"]);
    assert_eq!(report["outputs"][1]["type"], "f32[batch, 4, past+seq, 16]");
}

//! Bad checkpoints and configs: a clear error naming the file and the key or tensor,
//! exit status 1 from the CLI, no panic.

mod common;

use std::path::{Path, PathBuf};

use common::fixture_dir;
use shardc::frontend::hf::LowerOptions;

/// A copy of the llama fixture checkpoint in a temporary folder.
fn llama_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture_dir("llama").join("hf").join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> PathBuf {
    let path = dir.join("config.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(json.as_object_mut().unwrap());
    std::fs::write(&path, json.to_string()).unwrap();
    path
}

/// A safetensors file with a hand-written header and `data_len` bytes of data.
fn raw_safetensors(path: &Path, header: &str, data_len: usize) {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend(vec![0u8; data_len]);
    std::fs::write(path, bytes).unwrap();
}

fn assert_rejected(path: &Path, args: &[&str], expected: &[&str]) {
    let max_context =
        args.iter().position(|&a| a == "--max-context").and_then(|i| args.get(i + 1)).map(|v| v.parse().unwrap());
    let err = match shardc::load::load(path, &LowerOptions { max_context, ..LowerOptions::default() }) {
        Ok(_) => panic!("{} must be rejected", path.display()),
        Err(e) => e.to_string(),
    };
    for e in expected {
        assert!(err.contains(e), "error lacks `{e}`: {err}");
    }
    let out = common::shardc_command().arg("inspect").arg(path).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for e in expected {
        assert!(stderr.contains(e), "stderr lacks `{e}`: {stderr}");
    }
}

#[test]
fn folder_without_config() {
    let dir = llama_copy();
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    assert_rejected(dir.path(), &[], &["no config.json"]);
}

#[test]
fn folder_without_weights() {
    let dir = llama_copy();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert_rejected(dir.path(), &[], &["no model.safetensors and no model.safetensors.index.json"]);
}

#[test]
fn tensor_missing_from_the_checkpoint() {
    let dir = llama_copy();
    edit_config(dir.path(), |c| {
        c.insert("num_hidden_layers".into(), 3.into());
    });
    assert_rejected(
        dir.path(),
        &[],
        &["tensor `model.layers.2.input_layernorm.weight` is missing from the checkpoint (expected [64])"],
    );
}

#[test]
fn shape_that_disagrees_with_the_config() {
    let dir = llama_copy();
    edit_config(dir.path(), |c| {
        c.insert("intermediate_size".into(), 96.into());
    });
    assert_rejected(
        dir.path(),
        &[],
        &["tensor `model.layers.0.mlp.gate_proj.weight` has shape [128, 64], but the config implies [96, 64]"],
    );
}

#[test]
fn index_naming_a_missing_shard() {
    let dir = llama_copy();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let index = r#"{"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}"#;
    std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
    assert_rejected(
        dir.path(),
        &[],
        &[
            "model.safetensors.index.json",
            "names shard `model-00001-of-00002.safetensors` (for `model.embed_tokens.weight`), which does not exist",
        ],
    );
    let index = r#"{"weight_map": {"model.embed_tokens.weight": "../elsewhere.safetensors"}}"#;
    std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
    assert_rejected(dir.path(), &[], &["must be a file name in the checkpoint folder"]);
}

#[test]
fn header_with_overlapping_tensors() {
    let dir = llama_copy();
    let header = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#;
    raw_safetensors(&dir.path().join("model.safetensors"), header, 24);
    assert_rejected(dir.path(), &[], &["model.safetensors", "invalid offset for tensor `b`"]);
}

#[test]
fn header_running_past_the_file() {
    let dir = llama_copy();
    let header = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    raw_safetensors(&dir.path().join("model.safetensors"), header, 8);
    assert_rejected(dir.path(), &[], &["model.safetensors", "file not fully covered"]);
    // A header length larger than the file.
    std::fs::write(dir.path().join("model.safetensors"), 1_000_000u64.to_le_bytes()).unwrap();
    assert_rejected(dir.path(), &[], &["model.safetensors", "invalid header length"]);
    // Lengths that disagree with dtype × shape.
    let header = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}}"#;
    raw_safetensors(&dir.path().join("model.safetensors"), header, 12);
    assert_rejected(dir.path(), &[], &["model.safetensors", "invalid shape, data type, or offset for tensor"]);
}

#[test]
fn options_the_lowering_does_not_handle() {
    let dir = llama_copy();
    let config = edit_config(dir.path(), |c| {
        c.insert("model_type".into(), "falcon".into());
    });
    assert_rejected(
        &config,
        &[],
        &["config key `model_type`: `falcon` is not supported (supported: gpt2, llama, mistral, qwen2, qwen3, gemma, \
           gemma2, gemma3_text, phi3, bloom)"],
    );
    // Settings that change what is computed and that the lowering does not implement.
    for (key, value, message) in [
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "mrope", "factor": 2.0}),
            "rope type `mrope` is not supported",
        ),
        ("rope_scaling", serde_json::json!({"rope_type": "linear"}), "rope type `linear` needs `factor`"),
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "linear", "factor": 2.0, "beta_fast": 4}),
            "`beta_fast` is not a parameter of rope type `linear`",
        ),
        ("partial_rotary_factor", serde_json::json!(0.5), "partial_rotary_factor 0.5 is not supported for `llama`"),
        ("quantization_config", serde_json::json!({"quant_method": "gptq"}), "config key `quantization_config`"),
        ("is_encoder_decoder", serde_json::json!(true), "config key `is_encoder_decoder`"),
        ("pruned_heads", serde_json::json!({"0": [1]}), "config key `pruned_heads`"),
        ("hidden_act", serde_json::json!("relu2"), "config key `hidden_act`"),
    ] {
        let config = edit_config(dir.path(), |c| {
            c.insert("model_type".into(), "llama".into());
            c.remove("rope_scaling");
            c.remove("partial_rotary_factor");
            c.remove("quantization_config");
            c.remove("is_encoder_decoder");
            c.remove("pruned_heads");
            c.insert("hidden_act".into(), "silu".into());
            c.insert(key.into(), value.clone());
        });
        assert_rejected(&config, &[], &[message]);
    }
}

/// A key shardc does not know is refused by name, since it may change what is
/// computed; `--ignore-config-key` is the user's statement that it does not.
#[test]
fn unknown_config_keys_are_refused_unless_ignored() {
    let dir = llama_copy();
    let config = edit_config(dir.path(), |c| {
        c.insert("attention_temperature".into(), 0.7.into());
        c.insert("zz_other".into(), 1.into());
    });
    assert_rejected(
        &config,
        &[],
        &[
            "config key `attention_temperature`: is not a key shardc knows for `llama`",
            "pass --ignore-config-key attention_temperature",
            "(other unknown keys: zz_other)",
        ],
    );
    let ignored = |keys: &[&str]| LowerOptions {
        ignore_config_keys: keys.iter().map(|k| k.to_string()).collect(),
        ..LowerOptions::default()
    };
    let err = shardc::load::load(&config, &ignored(&["attention_temperature"])).unwrap_err().to_string();
    assert!(err.contains("config key `zz_other`"), "{err}");
    assert!(shardc::load::load(&config, &ignored(&["attention_temperature", "zz_other"])).is_ok());
    let out = common::shardc_command()
        .arg("inspect")
        .arg(&config)
        .args(["--ignore-config-key", "attention_temperature", "--ignore-config-key", "zz_other"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A key that is read cannot be ignored away: its value still has to be supported.
    let config = edit_config(dir.path(), |c| {
        c.remove("attention_temperature");
        c.remove("zz_other");
        c.insert("rope_scaling".into(), serde_json::json!({"rope_type": "mrope"}));
    });
    let err = shardc::load::load(&config, &ignored(&["rope_scaling"])).unwrap_err().to_string();
    assert!(err.contains("rope type `mrope` is not supported"), "{err}");
}

/// A sliding window shorter than the context is computed as a window, as
/// transformers does, rather than refused or ignored.
#[test]
fn sliding_window_shorter_than_the_context_is_honoured() {
    let mistral = common::root().join("fixtures/configs/mistral-7b/config.json");
    let model =
        shardc::load::load(&mistral, &LowerOptions { max_context: Some(8192), ..LowerOptions::default() }).unwrap();
    let text = shardc_ir::text::print(&model.graph);
    assert!(text.contains("Where_window_4096"), "a 4096-token window mask in the graph");
}

#[test]
fn config_alone_cannot_run() {
    let config = common::root().join("fixtures/configs/gpt2/config.json");
    let out = common::shardc_command().arg("run").arg(&config).args(["--input-ids", "1,2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("a config.json alone has no weights to run"));
}

//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The fixture models `fixtures/generate.py` wrote.
pub const FIXTURES: &[&str] = &["gpt2", "llama", "qwen2", "bloom", "llama32"];

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// `fixtures/models/<name>/`.
pub fn fixture_dir(name: &str) -> PathBuf {
    root().join("fixtures/models").join(name)
}

/// `fixtures/models/<name>/model.onnx`.
pub fn fixture_onnx(name: &str) -> PathBuf {
    fixture_dir(name).join("model.onnx")
}

/// The facts the generator recorded beside a fixture.
pub fn meta(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture_dir(name).join("meta.json")).expect("meta.json");
    serde_json::from_str(&text).expect("meta.json is JSON")
}

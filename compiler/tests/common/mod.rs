//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

pub mod net;

/// The fixture models `fixtures/generate.py` wrote.
pub const FIXTURES: &[&str] = &["gpt2", "llama", "qwen2", "bloom", "llama32"];

/// The language models `fixtures/generate_current.py` wrote with the current toolchain
/// (checkpoint, dynamo export, TorchScript export).
pub const CURRENT: &[&str] = &["llama31", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3"];

/// Its one-layer Llama checkpoints, one per rope type.
pub const ROPES: &[&str] =
    &["rope-default", "rope-linear", "rope-dynamic", "rope-llama3", "rope-yarn", "rope-longrope"];

/// The ONNX exports of a current fixture, by exporter.
pub const EXPORTERS: &[&str] = &["dynamo", "torchscript"];

/// The `shardc` binary under test, for the caller to add arguments to.
pub fn shardc_command() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_shardc"))
}

/// `shardc ARGS…`, run to the end: its exit status, stdout and stderr.
pub fn shardc<I, S>(args: I) -> std::process::Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    shardc_command().args(args).output().expect("run shardc")
}

/// `shardc ARGS…` as (exit code, stdout, stderr).
pub fn shardc_text(args: &[&str]) -> (i32, String, String) {
    let out = shardc(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A model of any format loaded as `shardc` loads it (context `max_context`, or what
/// the model supports) and run through the pass pipeline, verified after each pass;
/// with the folder its weight files are relative to.
pub fn lowered(model: &std::path::Path, max_context: Option<usize>) -> (shardc_ir::Graph, PathBuf) {
    let options = shardc::frontend::hf::LowerOptions { max_context, ..Default::default() };
    let loaded = shardc::load::load(model, &options).unwrap_or_else(|e| panic!("{}: {e}", model.display()));
    let mut graph = loaded.graph;
    let mut ctx = shardc_passes::Ctx { verify_each: true, ..Default::default() };
    shardc_passes::run_pipeline(&mut graph, &mut ctx, None).unwrap_or_else(|e| panic!("{}: {e}", model.display()));
    (graph, loaded.weights_dir)
}

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

/// What `fixtures/generate.py` recorded from PyTorch.
pub struct Reference {
    pub input_ids: Vec<i64>,
    pub logits: Vec<f32>,
    pub greedy: Vec<i64>,
}

impl Reference {
    /// Largest |logit| of the reference.
    pub fn max_abs(&self) -> f32 {
        self.logits.iter().fold(0f32, |m, v| m.max(v.abs()))
    }

    /// Largest |difference| between `got` and the reference logits.
    pub fn max_diff(&self, got: &[f32]) -> f32 {
        got.iter().zip(&self.logits).fold(0f32, |m, (a, b)| m.max((a - b).abs()))
    }
}

/// Read `reference.safetensors` of a fixture.
pub fn reference(name: &str) -> Reference {
    let bytes = std::fs::read(fixture_dir(name).join("reference.safetensors")).expect("reference.safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let i64s = |t: &str| -> Vec<i64> {
        st.tensor(t)
            .expect(t)
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect()
    };
    let logits = st
        .tensor("logits")
        .expect("logits")
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect();
    Reference { input_ids: i64s("input_ids"), logits, greedy: i64s("greedy_tokens") }
}

/// Insta settings: snapshots under `snapshots/`, named without the module.
pub fn snapshot_settings() -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(root().join("snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings
}

/// What the tests ask the planner for the fixtures: batch 1, a 16-token prompt, a
/// 64-token context, a 10% margin.
pub fn fixture_request(objective: shardc_passes::plan::Objective, standby: usize) -> shardc_passes::partition::Request {
    let workload = shardc_passes::cost::Workload { batch: 1, prompt_len: 16, max_context: 64 };
    shardc_passes::partition::Request { standby, ..shardc_passes::partition::Request::new(workload, objective) }
}

/// Make every manifest of `out` hash the current bytes of the shared file `file` (what
/// someone who can write the whole output folder would do), so that the checks behind
/// the hashes are reached.
#[allow(dead_code)]
pub fn reshare(out: &std::path::Path, file: &str) {
    let hash = blake3::hash(&std::fs::read(out.join(file)).unwrap()).to_hex().to_string();
    for e in std::fs::read_dir(out).unwrap().flatten() {
        let path = e.path().join("manifest.json");
        if path.is_file() {
            let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            m["shared"][file] = hash.clone().into();
            std::fs::write(&path, serde_json::to_string_pretty(&m).unwrap()).unwrap();
        }
    }
}

/// Every file under `dir`, by path relative to it, with its bytes, sorted.
#[allow(dead_code)]
pub fn files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

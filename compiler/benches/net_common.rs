//! What the runtime benchmarks over `shardc-run serve` processes share: the
//! Llama-shaped model (random f16 weights, made here, not committed), its compile, a
//! loopback cluster file and the device processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use shardc::frontend::hf::sparse::{fill_random, write_sparse_checkpoint};

pub const CONFIG: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
  "hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 16,
  "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 8192,
  "max_position_embeddings": 512, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
  "tie_word_embeddings": false, "torch_dtype": "float16"
}
"#;

pub const MODEL_TEXT: &str = "Llama, hidden 512, 16 layers, vocab 8192, f16 (random)";

/// The fidelity and thread benchmarks' models: (name, config, `--dtype` the packages
/// store). Their checkpoints are made once under `target/bench-models/fidelity-NAME`.
pub const MODELS: [(&str, &str, &str); 3] = [
    (
        "gpt2-small",
        r#"{ "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 768, "n_layer": 12,
  "n_head": 12, "n_positions": 1024, "n_ctx": 1024, "vocab_size": 50257, "activation_function": "gelu_new",
  "layer_norm_epsilon": 1e-05, "n_inner": null, "tie_word_embeddings": true, "torch_dtype": "float32" }"#,
        "f32",
    ),
    (
        "llama-12",
        r#"{ "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
  "hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12,
  "num_attention_heads": 12, "num_key_value_heads": 12, "vocab_size": 32000,
  "max_position_embeddings": 1024, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
  "tie_word_embeddings": false, "torch_dtype": "float32" }"#,
        "f32",
    ),
    (
        "qwen2-0.5b",
        r#"{ "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
  "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
  "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
  "max_position_embeddings": 4096, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "tie_word_embeddings": true, "torch_dtype": "float16", "use_sliding_window": false }"#,
        "f16",
    ),
];

pub fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The release `shardc-run` beside this benchmark's `shardc`.
pub fn shardc_run() -> PathBuf {
    let run = Path::new(env!("CARGO_BIN_EXE_shardc")).with_file_name("shardc-run");
    if !run.exists() {
        eprintln!("{} is missing: cargo build --release -p shardc-runtime", run.display());
        std::process::exit(1);
    }
    run
}

pub struct Devices(pub Vec<Child>);

impl Drop for Devices {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The model (made once under target/bench-models), compiled for three loopback devices
/// into `scratch/out` with `extra` compile flags; a cluster file and a secret beside it.
/// Returns (out, cluster, secret).
pub fn prepare(scratch: &Path, extra: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let model = random_model("balance-llama", CONFIG);
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).expect("mkdir");
    let out = scratch.join("out");
    let compiled = Command::new(env!("CARGO_BIN_EXE_shardc"))
        .arg("compile")
        .arg(&model)
        .args(["--devices", root().join("fixtures/devices/loopback-3.toml").to_str().unwrap_or_default()])
        .args(["--prompt-len", "16", "--max-context", "256", "-o"])
        .arg(&out)
        .args(extra)
        .output()
        .expect("compile");
    if !compiled.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&compiled.stderr));
        std::process::exit(1);
    }
    print!("{}", String::from_utf8_lossy(&compiled.stdout));
    let cluster = scratch.join("cluster.toml");
    // Below Linux's ephemeral ports (32768+), which outgoing connections take.
    let base = 28000 + (std::process::id() % 1000) as u16 * 4;
    std::fs::write(
        &cluster,
        format!(
            "client = \"tcp://127.0.0.1:{}\"\n[devices]\ndev-a = \"tcp://127.0.0.1:{}\"\ndev-b = \"tcp://127.0.0.1:{}\"\ndev-c = \"tcp://127.0.0.1:{}\"\n",
            base,
            base + 1,
            base + 2,
            base + 3
        ),
    )
    .expect("cluster");
    let secret = scratch.join("secret");
    std::fs::write(&secret, format!("benchmark secret {}", std::process::id())).expect("secret");
    (out, cluster, secret)
}

/// The median of some measurements (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A checkpoint of `config` with random weights of its own type, made once under
/// target/bench-models/NAME.
pub fn random_model(name: &str, config: &str) -> PathBuf {
    let model = root().join("target/bench-models").join(name);
    if !model.join("model.safetensors").exists() {
        std::fs::create_dir_all(&model).expect("mkdir");
        let source = model.join("source-config.json");
        std::fs::write(&source, config).expect("config");
        write_sparse_checkpoint(&source, &model).expect("checkpoint");
        fill_random(&model).expect("fill");
    }
    model
}

/// How frames travel: sealed with the secret, or `--insecure`.
pub fn net_args(secret: Option<&Path>) -> Vec<String> {
    match secret {
        Some(s) => vec!["--secret-file".into(), s.display().to_string()],
        None => vec!["--insecure".into()],
    }
}

/// `shardc-run serve` for the three devices, each with the flags `extra` gives it.
pub fn serve(out: &Path, cluster: &Path, secret: Option<&Path>, extra: impl Fn(&str) -> Vec<String>) -> Devices {
    let run = shardc_run();
    Devices(
        ["dev-a", "dev-b", "dev-c"]
            .iter()
            .map(|d| {
                let mut c = Command::new(&run);
                // One thread per device: three devices and the client share this host's cores,
                // and the figures in BENCHMARKS.md were taken so.
                c.arg("serve").arg(out).args(["--device", d, "--cluster", cluster.to_str().unwrap_or_default()]);
                c.args(["--threads", "1"]);
                c.args(net_args(secret)).args(extra(d));
                c.stderr(Stdio::null()).spawn().expect("serve")
            })
            .collect(),
    )
}

/// Per request, when each token was known (ms since the start), from a `--json` report.
pub fn token_ms(report: &serde_json::Value) -> Vec<Vec<f64>> {
    report["token_ms"]
        .as_array()
        .expect("token_ms")
        .iter()
        .map(|r| r.as_array().expect("times").iter().filter_map(|t| t.as_f64()).collect())
        .collect()
}

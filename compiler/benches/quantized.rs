//! Quantized weights in the runtime: decode tokens per second of int8 and int4 packages
//! against f32 packages of the same model, three `shardc-run serve` processes on
//! loopback, variants alternating in this run; and each device's resident memory (peak,
//! from /proc) against what its package's weights take and what the plan predicts.
//! Targets (issue 15): int8 ≥ 2× and int4 ≥ 3× the f32 decode rate. `+e`: the embedding
//! table and the head quantized too (`--quantize-embeddings`).
//!
//! Run: `cargo build --release -p shardc-runtime && cargo bench -p shardc --bench quantized`
//! Options (environment): `QUANT_RUNS` (default 3), `QUANT_TOKENS` (default 64).

#[path = "net_common.rs"]
#[allow(dead_code)]
mod net_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use net_common::{env, random_model, root, serve, shardc_run, token_ms};

const CONFIG: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
  "hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12,
  "num_attention_heads": 12, "num_key_value_heads": 12, "vocab_size": 32000,
  "max_position_embeddings": 1024, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
  "tie_word_embeddings": false, "torch_dtype": "float16"
}
"#;

/// Decode tokens per second of one request: every token after the first.
fn decode_rate(report: &serde_json::Value) -> f64 {
    let t = &token_ms(report)[0];
    (t.len() - 1) as f64 / ((t[t.len() - 1] - t[0]) / 1e3)
}

/// Peak and current resident memory of a process, bytes (`VmHWM`, `VmRSS`).
fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / (1u64 << 20) as f64)
}

struct Variant {
    name: &'static str,
    flags: &'static [&'static str],
    out: PathBuf,
    rates: Vec<f64>,
    /// Per device: peak resident bytes (largest over runs).
    peak: Vec<u64>,
    tokens: Option<serde_json::Value>,
}

fn compile(model: &Path, out: &Path, flags: &[&str]) {
    let st = Command::new(env!("CARGO_BIN_EXE_shardc"))
        .arg("compile")
        .arg(model)
        .args(["--devices", root().join("fixtures/devices/loopback-3.toml").to_str().unwrap_or_default()])
        .args(["--objective", "throughput", "--prompt-len", "16", "--max-context", "256", "--force", "-q", "-o"])
        .arg(out)
        .args(flags)
        .output()
        .expect("compile");
    if !st.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&st.stderr));
        std::process::exit(1);
    }
}

fn main() {
    let run = shardc_run();
    let runs: usize = env("QUANT_RUNS", "3").parse().expect("QUANT_RUNS");
    let tokens = env("QUANT_TOKENS", "64");
    let model = random_model("quant-llama", CONFIG);
    let scratch = root().join("target/bench-models/quant-out");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).expect("mkdir");
    let mut variants: Vec<Variant> = [
        ("f32", &["--dtype", "f32"][..]),
        ("int8", &["--quantize", "int8"][..]),
        ("int4", &["--quantize", "int4"][..]),
        ("int8+e", &["--quantize", "int8", "--quantize-embeddings"][..]),
        ("int4+e", &["--quantize", "int4", "--quantize-embeddings"][..]),
    ]
    .into_iter()
    .map(|(name, flags)| {
        let out = scratch.join(name.replace('+', "-"));
        compile(&model, &out, flags);
        Variant { name, flags, out, rates: Vec::new(), peak: vec![0; 3], tokens: None }
    })
    .collect();
    // One cluster for all: variants run one after the other.
    let cluster = scratch.join("cluster.toml");
    let base = 28000 + (std::process::id() % 1000) as u16 * 4;
    let addr = |i: u16| format!("tcp://127.0.0.1:{}", base + i);
    std::fs::write(
        &cluster,
        format!(
            "client = \"{}\"\n[devices]\ndev-a = \"{}\"\ndev-b = \"{}\"\ndev-c = \"{}\"\n",
            addr(0),
            addr(1),
            addr(2),
            addr(3)
        ),
    )
    .expect("cluster");
    let prompt: Vec<String> = (1..=16).map(|i| (i * 37 % 32000).to_string()).collect();
    let prompt = prompt.join(",");
    println!("Llama, hidden 768, 12 layers, vocab 32000 (random f16 weights), 3 devices on loopback, one request,");
    println!("16-token prompt, {tokens} new tokens, --insecure; medians of {runs} runs, variants alternating");
    for _ in 0..runs {
        for v in &mut variants {
            let devices = serve(&v.out, &cluster, None, |_| Vec::new());
            let out = Command::new(&run)
                .arg("generate")
                .arg(&v.out)
                .args(["--cluster", cluster.to_str().unwrap_or_default(), "--insecure", "--json", "--no-balance"])
                .args(["--input-ids", &prompt, "--max-new-tokens", &tokens, "--start-timeout", "120"])
                .output()
                .expect("generate");
            if !out.status.success() {
                eprintln!("{}: {}", v.name, String::from_utf8_lossy(&out.stderr));
                std::process::exit(1);
            }
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
            v.rates.push(decode_rate(&report));
            for (i, d) in devices.0.iter().enumerate() {
                v.peak[i] = v.peak[i].max(memory_of(d.id()).0);
            }
            v.tokens.get_or_insert(report["tokens"].clone());
            drop(devices);
        }
    }
    let median = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    let base_rate = median(&variants[0].rates);
    println!("\n{:<7} {:>14} {:>9}   {:<40}", "weights", "decode tok/s", "vs f32", "compile flags");
    for v in &variants {
        let r = median(&v.rates);
        println!("{:<7} {:>14.2} {:>8.2}x   {}", v.name, r, r / base_rate, v.flags.join(" "));
    }
    println!(
        "\n{:<7} {:<7} {:>14} {:>14} {:>16} {:>10}",
        "weights", "device", "weights file", "plan memory", "peak resident", "/ plan"
    );
    for v in &variants {
        let plan: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(v.out.join("plan.json")).expect("plan")).expect("plan");
        for (i, d) in ["dev-a", "dev-b", "dev-c"].iter().enumerate() {
            let file = std::fs::metadata(v.out.join(d).join("weights.safetensors")).map_or(0, |m| m.len());
            let stage = plan["stages"].as_array().and_then(|s| s.iter().find(|s| s["device"] == *d));
            let predicted = stage.and_then(|s| s["memory_bytes"].as_f64()).unwrap_or(0.0);
            let peak = v.peak[i] as f64;
            println!(
                "{:<7} {:<7} {:>14} {:>14} {:>16} {:>9.2}x",
                v.name,
                d,
                mib(file as f64),
                mib(predicted),
                mib(peak),
                if predicted > 0.0 { peak / predicted } else { 0.0 }
            );
        }
    }
    for v in &variants[1..] {
        let same = v.tokens == variants[0].tokens;
        println!(
            "tokens of {} {} f32's (random weights: quantization moves them)",
            v.name,
            if same { "equal" } else { "differ from" }
        );
    }
}

//! Runtime load balancing: three `shardc-run serve` processes on loopback run a
//! Llama-shaped model (random f16 weights, made by this program, not committed);
//! `dev-b` becomes 3× slower after a number of decode steps. The same generation runs
//! with balancing and with `--no-balance`, alternating, in this run: tokens per second
//! after the slowdown, their ratio, and what each rebalance took.
//!
//! Run: `cargo build --release -p shardc-runtime && cargo bench -p shardc --bench balance`
//! Options (environment): `BALANCE_REQUESTS` (default 2), `BALANCE_OBJECTIVE`
//! (default throughput), `BALANCE_STANDBY` (default 8), `BALANCE_RUNS` (default 3).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use shardc::frontend::hf::sparse::{fill_random_f16, write_sparse_checkpoint};

const CONFIG: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
  "hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 16,
  "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 8192,
  "max_position_embeddings": 512, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
  "tie_word_embeddings": false, "torch_dtype": "float16"
}
"#;

const SLOW_AFTER: usize = 16;
const TOKENS: usize = 112;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

struct Devices(Vec<Child>);

impl Drop for Devices {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Tokens per second over the tokens of decode steps after the slowdown, all requests.
fn rate_after(report: &serde_json::Value) -> f64 {
    let times: Vec<Vec<f64>> = report["token_ms"]
        .as_array()
        .expect("token_ms")
        .iter()
        .map(|r| r.as_array().expect("times").iter().filter_map(|t| t.as_f64()).collect())
        .collect();
    let start = times.iter().map(|t| t[SLOW_AFTER]).fold(f64::INFINITY, f64::min);
    let end = times.iter().map(|t| t[t.len() - 1]).fold(0.0, f64::max);
    let count: usize = times.iter().map(|t| t.len() - SLOW_AFTER - 1).sum();
    count as f64 / ((end - start) / 1e3)
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let run = Path::new(env!("CARGO_BIN_EXE_shardc")).with_file_name("shardc-run");
    if !run.exists() {
        eprintln!("{} is missing: cargo build --release -p shardc-runtime", run.display());
        std::process::exit(1);
    }
    let requests = env("BALANCE_REQUESTS", "2");
    let objective = env("BALANCE_OBJECTIVE", "throughput");
    let standby = env("BALANCE_STANDBY", "8");
    let runs: usize = env("BALANCE_RUNS", "3").parse().expect("BALANCE_RUNS");
    let model = root.join("target/bench-models/balance-llama");
    if !model.join("model.safetensors").exists() {
        std::fs::create_dir_all(&model).expect("mkdir");
        let config = model.join("source-config.json");
        std::fs::write(&config, CONFIG).expect("config");
        write_sparse_checkpoint(&config, &model).expect("checkpoint");
        fill_random_f16(&model.join("model.safetensors")).expect("fill");
    }
    let scratch = root.join("target/bench-models/balance-out");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).expect("mkdir");
    let out = scratch.join("out");
    let compiled = Command::new(env!("CARGO_BIN_EXE_shardc"))
        .arg("compile")
        .arg(&model)
        .args(["--devices", root.join("fixtures/devices/loopback-3.toml").to_str().unwrap_or_default()])
        .args(["--objective", &objective, "--prompt-len", "16", "--max-context", "256", "--standby", &standby, "-o"])
        .arg(&out)
        .output()
        .expect("compile");
    if !compiled.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&compiled.stderr));
        std::process::exit(1);
    }
    print!("{}", String::from_utf8_lossy(&compiled.stdout));
    let cluster = scratch.join("cluster.toml");
    let base = 31000 + (std::process::id() % 1000) as u16 * 4;
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
    let prompt: Vec<String> = (1..=16).map(|i| (i * 37 % 8192).to_string()).collect();
    let prompt = prompt.join(",");
    let secret = scratch.join("secret");
    std::fs::write(&secret, format!("balance benchmark secret {}", std::process::id())).expect("secret");
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut rebalances = Vec::new();
    let mut tokens: Option<serde_json::Value> = None;
    for i in 0..runs * 2 {
        let balance = i % 2 == 0;
        let _devices = Devices(
            ["dev-a", "dev-b", "dev-c"]
                .iter()
                .map(|d| {
                    let mut c = Command::new(&run);
                    c.arg("serve").arg(&out).args(["--device", d, "--cluster", cluster.to_str().unwrap_or_default()]);
                    c.arg("--secret-file").arg(&secret);
                    if *d == "dev-b" {
                        c.args(["--slowdown-after", &format!("{SLOW_AFTER}:3")]);
                    }
                    c.stderr(Stdio::null()).spawn().expect("serve")
                })
                .collect(),
        );
        let mut gen = Command::new(&run);
        gen.arg("generate").arg(&out).args(["--cluster", cluster.to_str().unwrap_or_default()]);
        gen.arg("--secret-file").arg(&secret);
        gen.args(["--input-ids", &prompt, "--max-new-tokens", &TOKENS.to_string(), "--requests", &requests]);
        gen.args(["--timeout", "60", "--json"]);
        if !balance {
            gen.arg("--no-balance");
        }
        let result = gen.output().expect("generate");
        if !result.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&result.stderr));
            std::process::exit(1);
        }
        let report: serde_json::Value = serde_json::from_slice(&result.stdout).expect("json");
        match &tokens {
            None => tokens = Some(report["tokens"].clone()),
            Some(t) => assert_eq!(*t, report["tokens"], "balancing changed the tokens"),
        }
        let rate = rate_after(&report);
        rates[usize::from(!balance)].push(rate);
        let mut line = format!(
            "run {:>2} {:<12} {rate:>7.2} tokens/s after the slowdown",
            i / 2 + 1,
            if balance { "balanced" } else { "--no-balance" }
        );
        if balance {
            for d in report["balance"]["decisions"].as_array().into_iter().flatten().filter(|d| d["moved"] == true) {
                let (drain, switch) = (d["drain_ms"].as_f64().unwrap_or(0.0), d["switch_ms"].as_f64().unwrap_or(0.0));
                rebalances.push((drain, switch, d["kv_bytes"].as_u64().unwrap_or(0)));
                let plan = |k: &str| {
                    d[k].as_array()
                        .into_iter()
                        .flatten()
                        .map(|s| {
                            format!("{}", s["units"][1].as_u64().unwrap_or(0) - s["units"][0].as_u64().unwrap_or(0))
                        })
                        .collect::<Vec<_>>()
                        .join("/")
                };
                line += &format!(
                    "; moved after {} steps, units {} -> {} (gain {:.2}× predicted), drain {drain:.1} ms + switch {switch:.1} ms, {} KV bytes",
                    d["after_steps"], plan("old"), plan("new"), d["predicted_gain"].as_f64().unwrap_or(0.0), d["kv_bytes"]
                );
            }
        }
        println!("{line}");
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (with, without) = (median(&mut rates[0]), median(&mut rates[1]));
    println!(
        "model: Llama, hidden 512, 16 layers, vocab 8192, f16 (random); {requests} requests x {TOKENS} tokens; dev-b 3x slower after {SLOW_AFTER} steps; objective {objective}, standby {standby}"
    );
    println!("tokens/s after the slowdown (median of {runs}): balanced {with:.2}, without {without:.2}");
    println!("ratio balanced / without: {:.2} (target >= 1.25)", with / without);
    if !rebalances.is_empty() {
        let n = rebalances.len() as f64;
        let drain = rebalances.iter().map(|r| r.0).sum::<f64>() / n;
        let switch = rebalances.iter().map(|r| r.1).sum::<f64>() / n;
        println!(
            "rebalance: {} moves, mean drain {drain:.1} ms + switch {switch:.1} ms = {:.1} ms, KV cache moved {} bytes per move (mean)",
            rebalances.len(),
            drain + switch,
            rebalances.iter().map(|r| r.2).sum::<u64>() / rebalances.len() as u64
        );
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

//! The reference interpreter against ONNX Runtime (one thread each) on a
//! GPT-2-small-shaped model, 128-token prefill, measured in the same run.
//!
//! Setup (the model is about 500 MB and not committed):
//!   python benches/make_gpt2_small.py target/bench-models/gpt2-small
//! Run:
//!   SHARDC_BENCH_PYTHON=/path/to/python-with-onnxruntime \
//!     cargo bench -p shardc --bench interpreter
//! `SHARDC_BENCH_MODEL` overrides the model path.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use shardc::frontend::onnx;
use shardc_passes::{run_pipeline, Ctx};
use shardc_runtime::generate::logits;
use shardc_runtime::Session;

const TOKENS: usize = 128;
const RUNS: usize = 11;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = std::env::var_os("SHARDC_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/bench-models/gpt2-small/model.onnx"));
    if !model.exists() {
        eprintln!("no model at {}; see the setup in benches/interpreter.rs", model.display());
        std::process::exit(2);
    }
    let python = std::env::var("SHARDC_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());

    let ids: Vec<i64> = (0..TOKENS as i64).map(|i| i * 7919 % 50257).collect();
    let t = Instant::now();
    let mut graph = onnx::import(&model).expect("import").graph;
    run_pipeline(&mut graph, &mut Ctx::default(), None).expect("passes");
    let compile = t.elapsed();
    let session = Session::new(graph, model.parent().expect("model folder"));
    let first = logits(&session, &ids).expect("run");
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(logits(&session, &ids).expect("run"));
            t.elapsed()
        })
        .collect();
    times.sort();
    let ours = times[RUNS / 2].as_secs_f64() * 1e3;
    session.enable_profile();
    logits(&session, &ids).expect("run");
    let mut profile: Vec<_> = session.take_profile().into_iter().collect();
    profile.sort_by_key(|p| std::cmp::Reverse(p.1.time));

    let out = Command::new(&python)
        .arg(root.join("benches/ort_prefill.py"))
        .arg(&model)
        .arg(TOKENS.to_string())
        .arg(RUNS.to_string())
        .output()
        .expect("run python");
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        std::process::exit(1);
    }
    let ort: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ort JSON");
    let ort_ms = ort["median_ms"].as_f64().expect("median_ms");
    let ort_last: Vec<f32> =
        ort["last_logits"].as_array().expect("logits").iter().map(|v| v.as_f64().unwrap_or(f64::NAN) as f32).collect();
    let diff = first.last().iter().zip(&ort_last).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let max_ref = ort_last.iter().fold(0f32, |m, v| m.max(v.abs()));

    println!("model: {} ({TOKENS}-token prefill, median of {RUNS}, one thread each)", model.display());
    println!("import + passes:          {:>9.1} ms (once)", compile.as_secs_f64() * 1e3);
    println!("shardc interpreter:       {ours:>9.1} ms");
    println!("onnxruntime {:<12} {ort_ms:>9.1} ms", ort["onnxruntime"].as_str().unwrap_or("?"));
    println!("ratio shardc / ort:       {:>9.2} (target <= 2)", ours / ort_ms);
    println!("time by op in one run (top 8):");
    for (op, t) in profile.iter().take(8) {
        println!("  {op:<20} {:>4} calls {:>9.1} ms", t.calls, t.time.as_secs_f64() * 1e3);
    }
    println!("last-position logits: max |diff| {diff:.2e} (max |logit| {max_ref:.2})");
}

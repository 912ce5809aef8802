//! What encryption costs: three `shardc-run serve` processes on loopback run the
//! balance benchmark's model; the same generation runs with frames sealed
//! (XChaCha20-Poly1305, `--secret-file`) and in the clear (`--insecure`), alternating,
//! in this run. Prints decode tokens per second of each, their ratio (target: sealed ≥
//! 0.95 × clear), and the sealing throughput of one process on frames of decode and
//! prefill size.
//!
//! Run: `cargo build --release -p shardc-runtime && cargo bench -p shardc --bench encryption`
//! Options (environment): `ENCRYPTION_RUNS` (default 5), `ENCRYPTION_REQUESTS` (default 1).

#[path = "net_common.rs"]
#[allow(dead_code)]
mod net_common;

use std::process::Command;
use std::time::Instant;

use net_common::{env, net_args, prepare, serve, shardc_run, token_ms, MODEL_TEXT};

const TOKENS: usize = 112;

/// Decode tokens per second: every token after each request's first, all requests.
fn decode_rate(report: &serde_json::Value) -> f64 {
    let times = token_ms(report);
    let start = times.iter().map(|t| t[0]).fold(f64::INFINITY, f64::min);
    let end = times.iter().map(|t| t[t.len() - 1]).fold(0.0, f64::max);
    let count: usize = times.iter().map(|t| t.len() - 1).sum();
    count as f64 / ((end - start) / 1e3)
}

/// Seal and open `bytes`-sized bodies for ~0.3 s: MB/s through both.
fn sealing_rate(bytes: usize) -> f64 {
    use shardc_runtime::wire::Wire;
    let key = [7u8; 32];
    let mut tx = Wire::new(Some(&key), 1 << 30).expect("wire");
    let rx = Wire::new(Some(&key), 1 << 30).expect("wire");
    let body = vec![0x5au8; bytes];
    let started = Instant::now();
    let mut n = 0usize;
    while started.elapsed().as_secs_f64() < 0.3 {
        let mut parts = tx.seal(&[1; 16], body.clone()).expect("seal");
        let (_, back) = rx.open(&mut parts).expect("open");
        assert_eq!(back.len(), bytes);
        n += 1;
    }
    (n * bytes) as f64 / started.elapsed().as_secs_f64() / 1e6
}

fn main() {
    let run = shardc_run();
    let runs: usize = env("ENCRYPTION_RUNS", "5").parse().expect("ENCRYPTION_RUNS");
    let requests = env("ENCRYPTION_REQUESTS", "1");
    let scratch = net_common::root().join("target/bench-models/encryption-out");
    let (out, cluster, secret) = prepare(&scratch, &["--objective", "throughput"]);
    let prompt: Vec<String> = (1..=16).map(|i| (i * 37 % 8192).to_string()).collect();
    let prompt = prompt.join(",");
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut tokens: Option<serde_json::Value> = None;
    for i in 0..runs * 2 {
        let sealed = i % 2 == 0;
        let key = sealed.then_some(secret.as_path());
        let _devices = serve(&out, &cluster, key, |_| vec![]);
        let mut gen = Command::new(&run);
        gen.arg("generate").arg(&out).args(["--cluster", cluster.to_str().unwrap_or_default()]);
        gen.args(net_args(key));
        gen.args(["--input-ids", &prompt, "--max-new-tokens", &TOKENS.to_string(), "--requests", &requests]);
        gen.args(["--timeout", "60", "--no-balance", "--json"]);
        let result = gen.output().expect("generate");
        if !result.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&result.stderr));
            std::process::exit(1);
        }
        let report: serde_json::Value = serde_json::from_slice(&result.stdout).expect("json");
        match &tokens {
            None => tokens = Some(report["tokens"].clone()),
            Some(t) => assert_eq!(*t, report["tokens"], "encryption changed the tokens"),
        }
        let rate = decode_rate(&report);
        rates[usize::from(!sealed)].push(rate);
        println!(
            "run {:>2} {:<10} {rate:>7.2} decode tokens/s",
            i / 2 + 1,
            if sealed { "sealed" } else { "--insecure" }
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (sealed, clear) = (median(&mut rates[0]), median(&mut rates[1]));
    println!("model: {MODEL_TEXT}; {requests} request(s) x {TOKENS} tokens over 3 serve processes on loopback");
    println!("decode tokens/s (median of {runs}): sealed {sealed:.2}, --insecure {clear:.2}");
    println!(
        "ratio sealed / insecure: {:.3} (target >= 0.95; cost {:.1}%)",
        sealed / clear,
        (1.0 - sealed / clear) * 100.0
    );
    for (what, bytes) in [
        ("decode hidden state (1 x 512 f32)", 512 * 4),
        ("prefill hidden state (16 x 512 f32)", 16 * 512 * 4),
        ("KV handover (1 MiB)", 1 << 20),
    ] {
        println!("seal + open, {what}: {:.0} MB/s on one core", sealing_rate(bytes));
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

//! Runtime load balancing: three `shardc-run serve` processes on loopback run a
//! Llama-shaped model (random f16 weights, made by this program, not committed);
//! `dev-b` becomes 3× slower after a number of decode steps. The same generation runs
//! with balancing and with `--no-balance`, alternating, in this run: tokens per second
//! after the slowdown, their ratio, and what each rebalance took.
//!
//! Run: `cargo build --release -p shardc-runtime && cargo bench -p shardc --bench balance`
//! Options (environment): `BALANCE_REQUESTS` (default 2), `BALANCE_OBJECTIVE`
//! (default throughput), `BALANCE_STANDBY` (default 8), `BALANCE_RUNS` (default 3).

#[path = "net_common.rs"]
#[allow(dead_code)]
mod net_common;

use std::process::Command;

use net_common::{env, net_args, prepare, serve, shardc_run, token_ms, MODEL_TEXT};

const SLOW_AFTER: usize = 16;
const TOKENS: usize = 112;

/// Tokens per second over the tokens of decode steps after the slowdown, all requests.
fn rate_after(report: &serde_json::Value) -> f64 {
    let times = token_ms(report);
    let start = times.iter().map(|t| t[SLOW_AFTER]).fold(f64::INFINITY, f64::min);
    let end = times.iter().map(|t| t[t.len() - 1]).fold(0.0, f64::max);
    let count: usize = times.iter().map(|t| t.len() - SLOW_AFTER - 1).sum();
    count as f64 / ((end - start) / 1e3)
}

/// The measured gain of a move made after `after_steps` decode steps (all requests):
/// the median interval between a request's tokens over the (at most 16) steps before it,
/// from the first slowed step, over the median after it, from 4 steps past the move
/// (the drain and switch left out). Both intervals are with the same requests in flight.
fn measured_gain(report: &serde_json::Value, after_steps: u64) -> Option<f64> {
    let times = token_ms(report);
    let at = after_steps as usize / times.len().max(1);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| v[v.len() / 2])
    };
    let intervals = |from: usize, to: usize| -> Vec<f64> {
        times.iter().flat_map(|t| (from.max(1)..to.min(t.len())).map(move |i| t[i] - t[i - 1])).collect()
    };
    let before = median(intervals(at.saturating_sub(16).max(SLOW_AFTER + 2), at))?;
    let after = median(intervals(at + 4, usize::MAX))?;
    Some(before / after)
}

fn main() {
    let run = shardc_run();
    let requests = env("BALANCE_REQUESTS", "2");
    let objective = env("BALANCE_OBJECTIVE", "throughput");
    let standby = env("BALANCE_STANDBY", "8");
    let runs: usize = env("BALANCE_RUNS", "3").parse().expect("BALANCE_RUNS");
    let scratch = net_common::root().join("target/bench-models/balance-out");
    let (out, cluster, secret) = prepare(&scratch, &["--objective", &objective, "--standby", &standby]);
    let prompt: Vec<String> = (1..=16).map(|i| (i * 37 % 8192).to_string()).collect();
    let prompt = prompt.join(",");
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut rebalances = Vec::new();
    let mut gains: Vec<(f64, f64)> = Vec::new();
    let mut tokens: Option<serde_json::Value> = None;
    for i in 0..runs * 2 {
        let balance = i % 2 == 0;
        let slow = |d: &str| {
            if d == "dev-b" {
                vec!["--slowdown-after".to_string(), format!("{SLOW_AFTER}:3")]
            } else {
                vec![]
            }
        };
        let _devices = serve(&out, &cluster, Some(&secret), slow);
        let mut gen = Command::new(&run);
        gen.arg("generate").arg(&out).args(["--cluster", cluster.to_str().unwrap_or_default()]);
        gen.args(net_args(Some(&secret)));
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
                let predicted = d["predicted_gain"].as_f64().unwrap_or(0.0);
                let measured = measured_gain(&report, d["after_steps"].as_u64().unwrap_or(0)).unwrap_or(f64::NAN);
                gains.push((predicted, measured));
                line += &format!(
                    "; moved after {} steps, units {} -> {} (gain {predicted:.2}× predicted, {measured:.2}× measured), drain {drain:.1} ms + switch {switch:.1} ms, {} KV bytes",
                    d["after_steps"], plan("old"), plan("new"), d["kv_bytes"]
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
        "model: {MODEL_TEXT}; {requests} requests x {TOKENS} tokens; dev-b 3x slower after {SLOW_AFTER} steps; objective {objective}, standby {standby}"
    );
    println!("tokens/s after the slowdown (median of {runs}): balanced {with:.2}, without {without:.2}");
    println!("ratio balanced / without: {:.2} (target >= 1.25)", with / without);
    for (predicted, measured) in &gains {
        println!(
            "move: predicted gain {predicted:.2}×, measured {measured:.2}× (token interval before / after): predicted / measured − 1 = {:+.1}% (target: within 15%)",
            100.0 * (predicted / measured - 1.0)
        );
    }
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

//! Batched decode: the tokens/s of four requests in flight against one, in the same
//! run, one thread per device — first a model's session alone (the steps of four
//! requests as one `Session::run_batch` against one request's step, and against the
//! four steps one by one), then `shardc-run local` on packages for one device and for
//! three (`--requests 4` batched, `--requests 4 --no-batch`, `--requests 1`). Models:
//! the fidelity bench's GPT-2-small and 12-layer Llama (random f32 weights, made once
//! under `target/bench-models/fidelity-*`). It also checks that every request's tokens
//! are the same batched and alone.
//!
//! Run: `cargo bench -p shardc --bench batch` (`BATCH_MODELS=gpt2-small` for one model,
//! `BATCH_SESSION_ONLY=1` for the session figures alone, `BATCH_PROFILE=1` for time by op,
//! `BATCH_THREADS=N` for N threads per device instead of one).

#[allow(dead_code)]
mod net_common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use net_common::{env, median, random_model, root, shardc_run, token_ms, MODELS};
use shardc::frontend::hf::LowerOptions;
use shardc_passes::{run_pipeline, Ctx};
use shardc_runtime::generate::{argmax, empty_cache, CacheLayout};
use shardc_runtime::{Session, Tensor};

const REQUESTS: usize = 4;
const PROMPT: usize = 32;
const STEPS: usize = 16;
const NEW_TOKENS: usize = 32;

/// A step's inputs: token ids and the cache.
fn inputs(layout: &CacheLayout, ids: &[i64], cache: &[Tensor]) -> Vec<(String, Tensor)> {
    let mut v = vec![(layout.ids.clone(), Tensor::from_i64(&[1, ids.len()], ids.to_vec()).expect("ids"))];
    v.extend(layout.entries.iter().map(|e| e.0.clone()).zip(cache.iter().cloned()));
    v
}

fn main() {
    // As the binaries that serve a package do.
    shardc_runtime::weights::bound_allocator_cache();
    let only = env("BATCH_MODELS", "gpt2-small,llama-12");
    let threads: usize = env("BATCH_THREADS", "1").parse().expect("BATCH_THREADS: a count");
    println!("{REQUESTS} requests in flight against 1, {threads} thread(s) per device; decode steps after {PROMPT}-token prompts");
    for (name, config, _) in MODELS {
        if !only.split(',').any(|m| m == name) {
            continue;
        }
        let model = random_model(&format!("fidelity-{name}"), config);
        session_figures(name, &model, threads);
        for devices in [1, 3].into_iter().filter(|_| std::env::var("BATCH_SESSION_ONLY").is_err()) {
            local_figures(name, &model, devices, threads);
        }
    }
}

/// One session on `threads` threads: a step of one request, the steps of four batched,
/// and one by one.
fn session_figures(name: &str, model: &Path, threads: usize) {
    let loaded = shardc::load::load(model, &LowerOptions::default()).expect("load");
    let mut graph = loaded.graph;
    run_pipeline(&mut graph, &mut Ctx::default(), None).expect("passes");
    let mut session = Session::new(graph, &loaded.weights_dir);
    session.set_threads(threads).expect("threads");
    session.warm().expect("warm");
    let layout = CacheLayout::of(&session).expect("layout").expect("a KV cache");
    let vocab = 1000;
    let mut caches: Vec<Vec<Tensor>> = Vec::new();
    let mut feed: Vec<i64> = Vec::new();
    for r in 0..REQUESTS {
        let ids: Vec<i64> = (0..PROMPT as i64).map(|i| (i * 7919 + r as i64 * 104729) % vocab + 1).collect();
        let (cache, token) =
            step_out(&layout, session.run(inputs(&layout, &ids, &empty_cache(&layout))).expect("prefill"));
        caches.push(cache);
        feed.push(token);
    }
    let (mut one, mut batched, mut by_one) = (Vec::new(), Vec::new(), Vec::new());
    let mut same = true;
    for _ in 0..STEPS {
        let steps: Vec<Vec<(String, Tensor)>> =
            (0..REQUESTS).map(|r| inputs(&layout, &[feed[r]], &caches[r])).collect();
        let t = Instant::now();
        session.run(steps[0].clone()).expect("step");
        one.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let alone: Vec<_> = steps.iter().map(|s| session.run(s.clone()).expect("step")).collect();
        by_one.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let together = session.run_batch(steps);
        batched.push(t.elapsed().as_secs_f64() * 1e3);
        for (r, (a, b)) in alone.into_iter().zip(together).enumerate() {
            let b = b.expect("batched step");
            same &= a == b;
            let (cache, token) = step_out(&layout, b);
            caches[r] = cache;
            feed[r] = token;
        }
    }
    if std::env::var("BATCH_PROFILE").is_ok() {
        let steps: Vec<Vec<(String, Tensor)>> =
            (0..REQUESTS).map(|r| inputs(&layout, &[feed[r]], &caches[r])).collect();
        for (what, batch) in [("1 request", &steps[..1]), ("batched", &steps[..])] {
            session.enable_profile();
            session.run_batch(batch.to_vec());
            let mut p: Vec<_> = session.take_profile().into_iter().collect();
            p.sort_by_key(|x| std::cmp::Reverse(x.1.time));
            for (op, t) in p.iter().take(10) {
                eprintln!("{what:<10} {op:<14} {:>4} calls {:>8.2} ms", t.calls, t.time.as_secs_f64() * 1e3);
            }
        }
    }
    let (one, batched, by_one) = (median(one), median(batched), median(by_one));
    let rate = |ms: f64, n: usize| n as f64 * 1e3 / ms;
    println!(
        "{name:<11} session   1 request {:>7.2} ms/step {:>6.1} tok/s | {REQUESTS} batched {:>7.2} ms {:>6.1} tok/s ({:.2}x) | {REQUESTS} one by one {:>7.2} ms {:>6.1} tok/s ({:.2}x) | same outputs: {same}",
        one,
        rate(one, 1),
        batched,
        rate(batched, REQUESTS),
        rate(batched, REQUESTS) / rate(one, 1),
        by_one,
        rate(by_one, REQUESTS),
        rate(by_one, REQUESTS) / rate(one, 1),
    );
    assert!(same, "{name}: batched steps differ from steps alone");
}

/// The cache and the greedy next token of a decode or prompt step's outputs.
fn step_out(layout: &CacheLayout, outputs: Vec<(String, Tensor)>) -> (Vec<Tensor>, i64) {
    let mut outputs: std::collections::HashMap<String, Tensor> = outputs.into_iter().collect();
    let cache = layout.entries.iter().map(|e| outputs.remove(&e.1).expect("present")).collect();
    let logits = outputs.into_values().find(|t| t.shape().len() == 3).expect("logits");
    let vocab = *logits.shape().last().expect("vocab");
    let values = logits.to_f32_vec();
    (cache, argmax(&values[values.len() - vocab..]) as i64)
}

/// `shardc-run local` over packages for `devices` devices: decode tokens/s with four
/// requests (batched, and one by one) against one.
fn local_figures(name: &str, model: &Path, devices: usize, threads: usize) {
    let scratch = root().join("target/bench-models/batch-scratch");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).expect("scratch");
    let profile = match devices {
        1 => {
            let p = scratch.join("one.toml");
            let text =
                "[[device]]\nname = \"solo\"\nmemory = \"8 GiB\"\nflops = \"10 GFLOP/s\"\nbandwidth = \"10 GB/s\"\n";
            std::fs::write(&p, text).expect("profile");
            p
        }
        _ => root().join("fixtures/devices/lingualinked-3.toml"),
    };
    let out = scratch.join("out");
    let compiled = Command::new(env!("CARGO_BIN_EXE_shardc"))
        .arg("compile")
        .arg(model)
        .arg("--devices")
        .arg(&profile)
        .args(["--objective", "throughput", "--prompt-len", "16", "--max-context", "128", "-o"])
        .arg(&out)
        .output()
        .expect("compile");
    assert!(compiled.status.success(), "{}", String::from_utf8_lossy(&compiled.stderr));
    let ids: Vec<String> = (0..16).map(|i| (i * 37 + 5).to_string()).collect();
    let run = |requests: usize, batch: bool| -> (f64, Vec<Vec<i64>>) {
        let mut c = Command::new(shardc_run());
        c.args(["--threads", &threads.to_string(), "local"]).arg(&out).args(["--input-ids", &ids.join(",")]);
        c.args(["--max-new-tokens", &NEW_TOKENS.to_string(), "--requests", &requests.to_string(), "--json"]);
        if !batch {
            c.arg("--no-batch");
        }
        let o = c.output().expect("local");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        let times = token_ms(&report);
        // Decode tokens over the time from the last request's first token to the end.
        let start = times.iter().filter_map(|t| t.first().copied()).fold(0.0, f64::max);
        let end = times.iter().filter_map(|t| t.last().copied()).fold(0.0, f64::max);
        let tokens: usize = times.iter().map(|t| t.len().saturating_sub(1)).sum();
        let generated: Vec<Vec<i64>> = report["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .map(|r| r.as_array().expect("request").iter().filter_map(|t| t.as_i64()).collect())
            .collect();
        (tokens as f64 * 1e3 / (end - start), generated)
    };
    let mut rates = [Vec::new(), Vec::new(), Vec::new()];
    let mut tokens = Vec::new();
    for _ in 0..3 {
        for (k, (requests, batch)) in [(1, true), (REQUESTS, true), (REQUESTS, false)].into_iter().enumerate() {
            let (rate, generated) = run(requests, batch);
            rates[k].push(rate);
            tokens.extend(generated);
        }
    }
    let [one, batched, by_one] = rates.map(median);
    let same = tokens.windows(2).all(|w| w[0] == w[1]);
    println!(
        "{name:<11} {devices} device{} 1 request {one:>6.1} tok/s | {REQUESTS} batched {batched:>6.1} tok/s ({:.2}x) | {REQUESTS} --no-batch {by_one:>6.1} tok/s ({:.2}x) | same tokens: {same}",
        if devices == 1 { " " } else { "s" },
        batched / one,
        by_one / one,
    );
    assert!(same, "{name}: tokens differ between runs");
    let _ = std::fs::remove_dir_all(&scratch);
}

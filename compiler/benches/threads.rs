//! The interpreter on one thread against two (or `THREADS_MAX`), in the same process
//! and the same run: a 128-token prompt step and a decode step after it, for the
//! fidelity bench's models (GPT-2-small, a 12-layer Llama, the Qwen2-0.5B shape; random
//! weights, made once under `target/bench-models/fidelity-*`, not committed). The
//! counts alternate run by run; each figure is the median. It also checks that the
//! logits are the same bits and greedy tokens the same on every count.
//!
//! Run: `cargo bench -p shardc --bench threads` (`THREADS_MODELS=gpt2-small,...` for
//! some of the models; `THREADS_MAX=N` for 1..N threads; `THREADS_PROFILE=1` to print
//! where a prompt step's time goes, by op, on each count).

#[allow(dead_code)]
mod net_common;

use std::time::Instant;

use net_common::{env, median, random_model, MODELS};
use shardc::frontend::hf::LowerOptions;
use shardc_passes::{run_pipeline, Ctx};
use shardc_runtime::generate::{cached_step, empty_cache, greedy_cached, CacheLayout, Logits};
use shardc_runtime::{Session, Tensor};

const PROMPT: usize = 128;
const PREFILL_RUNS: usize = 5;
const DECODE_RUNS: usize = 15;

fn bits(l: &Logits) -> Vec<u32> {
    l.values.iter().map(|v| v.to_bits()).collect()
}

fn main() {
    // As the binaries that serve a package do.
    shardc_runtime::weights::bound_allocator_cache();
    let only = env("THREADS_MODELS", "");
    let most: usize = env("THREADS_MAX", "2").parse().expect("THREADS_MAX");
    let counts: Vec<usize> = (1..=most.max(1)).collect();
    println!(
        "{:<12} {:>7} {:>12} {:>9} {:>12} {:>9} {:>22}",
        "model", "threads", "prompt step", "speed-up", "decode step", "speed-up", "same logits and tokens"
    );
    for (name, config, _) in MODELS {
        if !only.is_empty() && !only.split(',').any(|m| m == name) {
            continue;
        }
        let model = random_model(&format!("fidelity-{name}"), config);
        let loaded = shardc::load::load(&model, &LowerOptions::default()).expect("load");
        let mut graph = loaded.graph;
        run_pipeline(&mut graph, &mut Ctx::default(), None).expect("passes");
        let mut session = Session::new(graph, &loaded.weights_dir);
        session.warm().expect("warm");
        let layout = CacheLayout::of(&session).expect("layout").expect("a KV cache");
        let ids: Vec<i64> = (0..PROMPT as i64).map(|i| i * 7919 % 30000 + 1).collect();
        // Each count once before timing (the first run of a count starts its pool).
        let mut reference: Option<(Vec<u32>, Vec<u32>, Vec<i64>)> = None;
        let mut cache: Vec<Tensor> = Vec::new();
        let mut same = true;
        for &n in &counts {
            session.set_threads(n).expect("threads");
            let (prefill, next) = cached_step(&session, &layout, &ids, empty_cache(&layout)).expect("prefill");
            let (decode, _) = cached_step(&session, &layout, &[7], next.clone()).expect("decode");
            let tokens = greedy_cached(&session, &layout, &ids[..32], 16).expect("tokens");
            let got = (bits(&prefill), bits(&decode), tokens);
            match &reference {
                None => reference = Some(got),
                Some(r) => same &= *r == got,
            }
            cache = next;
        }
        if std::env::var("THREADS_PROFILE").is_ok() {
            for &n in &counts {
                session.set_threads(n).expect("threads");
                session.enable_profile();
                cached_step(&session, &layout, &ids, empty_cache(&layout)).expect("prefill");
                let mut p: Vec<_> = session.take_profile().into_iter().collect();
                p.sort_by_key(|x| std::cmp::Reverse(x.1.time));
                for (op, t) in p.iter().take(8) {
                    eprintln!("{n} threads {op:<14} {:>4} calls {:>8.1} ms", t.calls, t.time.as_secs_f64() * 1e3);
                }
            }
        }
        let mut prefill_ms = vec![Vec::new(); counts.len()];
        let mut decode_ms = vec![Vec::new(); counts.len()];
        for run in 0..DECODE_RUNS {
            for (i, &n) in counts.iter().enumerate() {
                session.set_threads(n).expect("threads");
                if run < PREFILL_RUNS {
                    let t = Instant::now();
                    std::hint::black_box(cached_step(&session, &layout, &ids, empty_cache(&layout)).expect("prefill"));
                    prefill_ms[i].push(t.elapsed().as_secs_f64() * 1e3);
                }
                let t = Instant::now();
                std::hint::black_box(cached_step(&session, &layout, &[7], cache.clone()).expect("decode"));
                decode_ms[i].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let (p1, d1) = (median(prefill_ms[0].clone()), median(decode_ms[0].clone()));
        for (i, &n) in counts.iter().enumerate() {
            let (p, d) = (median(prefill_ms[i].clone()), median(decode_ms[i].clone()));
            println!(
                "{:<12} {:>7} {:>9.1} ms {:>8.2}x {:>9.2} ms {:>8.2}x {:>22}",
                name,
                n,
                p,
                p1 / p,
                d,
                d1 / d,
                if i == 0 {
                    ""
                } else if same {
                    "yes"
                } else {
                    "NO"
                }
            );
        }
        assert!(same, "{name}: logits or tokens differ between thread counts");
    }
}

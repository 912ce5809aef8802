//! The runtime against ONNX Runtime on the very package shardc emits (one device, the
//! same graph: `shard.ir` in shardc's runtime, `shard.onnx` in ONNX Runtime), one thread
//! each, in the same run: a 128-token prompt step and a decode step after it, for the
//! fidelity bench's GPT-2-small and 12-layer Llama (random f32 weights, made once under
//! `target/bench-models/fidelity-*`). Checks that both give the same last logits.
//!
//! Run: `SHARDC_BENCH_PYTHON=target/ci-venv/bin/python cargo bench -p shardc --bench ort`
//! (a Python with the pins of `.ci/run`: `onnxruntime==1.20.1`, `numpy==1.26.4`;
//! `ORT_MODELS=gpt2-small` for one model; `ORT_PROFILE=1` prints shardc's time by op).

#[allow(dead_code)]
mod net_common;

use std::process::Command;
use std::time::Instant;

use net_common::{env, median, random_model, root, MODELS};
use shardc_runtime::generate::{cache_entries, empty_cache, ids_input, CacheLayout, Runner};
use shardc_runtime::{package, Session, Tensor};

const PROMPT: usize = 128;
const RUNS: usize = 7;

fn main() {
    // As the binaries that serve a package do.
    shardc_runtime::weights::bound_allocator_cache();
    let rss_before = shardc_runtime::weights::resident_bytes().unwrap_or(0);
    let python = env("SHARDC_BENCH_PYTHON", "target/ci-venv/bin/python");
    let python = root().join(python);
    let only = env("ORT_MODELS", "gpt2-small,llama-12");
    let alone = std::env::var_os("ORT_ALONE").is_some();
    if !alone {
        println!(
            "{:<11} {:>14} {:>12} {:>6} {:>14} {:>12} {:>6}  last logits max |diff|",
            "model", "prefill shardc", "onnxruntime", "ratio", "decode shardc", "onnxruntime", "ratio"
        );
    }
    for (name, config, _) in MODELS {
        if !only.split(',').any(|m| m == name) {
            continue;
        }
        if !alone {
            // Each model in a process of its own, as a device serves one package: its
            // resident memory is then its own, not also what the allocator kept from the
            // model before.
            let status = Command::new(std::env::current_exe().expect("this bench"))
                .args(std::env::args_os().skip(1))
                .env("ORT_MODELS", name)
                .env("ORT_ALONE", "1")
                .status()
                .expect("the bench for one model");
            assert!(status.success(), "{name}: {status}");
            continue;
        }
        let model = random_model(&format!("fidelity-{name}"), config);
        let scratch = root().join("target/bench-models/ort-scratch");
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).expect("scratch");
        let profile = scratch.join("one.toml");
        let device =
            "[[device]]\nname = \"solo\"\nmemory = \"8 GiB\"\nflops = \"10 GFLOP/s\"\nbandwidth = \"10 GB/s\"\n";
        std::fs::write(&profile, device).expect("profile");
        let out = scratch.join("out");
        let compiled = Command::new(env!("CARGO_BIN_EXE_shardc"))
            .arg("compile")
            .arg(&model)
            .arg("--devices")
            .arg(&profile)
            .args(["--prompt-len", &PROMPT.to_string(), "--max-context", "256", "-o"])
            .arg(&out)
            .output()
            .expect("compile");
        assert!(compiled.status.success(), "{}", String::from_utf8_lossy(&compiled.stderr));
        let pkg = out.join("solo");
        let (manifest, graph) = package::load(&pkg).expect("package");
        let weights = package::weights(&pkg, &manifest, &[&graph]).expect("weights");
        let mut session = Session::with_weights(graph, weights);
        session.set_threads(1).expect("threads");
        let warm_started = Instant::now();
        session.warm().expect("warm");
        let warm_ms = warm_started.elapsed().as_secs_f64() * 1e3;
        let layout = CacheLayout::of(&session).expect("layout").expect("a KV cache");
        let logits_name = session.outputs().into_iter().find(|o| !layout.entries.iter().any(|e| &e.1 == o));
        let logits_name = logits_name.expect("a logits output");
        let ids: Vec<i64> = (0..PROMPT as i64).map(|i| i * 7919 % 30000 + 1).collect();

        // shardc: the prompt step, then a decode step (token 7) on its cache.
        let step = |ids: &[i64], cache: Vec<Tensor>| {
            let mut inputs = vec![(layout.ids.clone(), Tensor::from_i64(&[1, ids.len()], ids.to_vec()).expect("ids"))];
            inputs.extend(layout.entries.iter().map(|e| e.0.clone()).zip(cache));
            let t = Instant::now();
            let outputs: std::collections::HashMap<String, Tensor> =
                session.run(inputs).expect("step").into_iter().collect();
            (t.elapsed().as_secs_f64() * 1e3, outputs)
        };
        let last = |outputs: &std::collections::HashMap<String, Tensor>| {
            let v = outputs[&logits_name].to_f32_vec();
            let vocab = *outputs[&logits_name].shape().last().expect("vocab");
            v[v.len() - vocab..].to_vec()
        };
        let (first_ms, first) = step(&ids, empty_cache(&layout));
        let (second_ms, _) = step(&ids, empty_cache(&layout));
        let cache: Vec<Tensor> = layout.entries.iter().map(|e| first[&e.1].clone()).collect();
        let (_, second) = step(&[7], cache.clone());
        let (mut prefill, mut decode) = (Vec::new(), Vec::new());
        let measure = |prefill: &mut Vec<f64>, decode: &mut Vec<f64>| {
            for _ in 0..RUNS {
                prefill.push(step(&ids, empty_cache(&layout)).0);
                let mut d: Vec<f64> = (0..3).map(|_| step(&[7], cache.clone()).0).collect();
                decode.push(median(std::mem::take(&mut d)));
            }
        };
        measure(&mut prefill, &mut decode);
        if std::env::var_os("ORT_PROFILE").is_some() {
            for (what, ids, cache) in [("prefill", &ids[..], empty_cache(&layout)), ("decode", &[7][..], cache.clone())]
            {
                session.enable_profile();
                step(ids, cache);
                let mut p: Vec<_> = session.take_profile().into_iter().collect();
                p.sort_by_key(|x| std::cmp::Reverse(x.1.time));
                for (op, t) in p.iter().take(8) {
                    eprintln!("{name} {what:<8} {op:<14} {:>4} calls {:>8.2} ms", t.calls, t.time.as_secs_f64() * 1e3);
                }
            }
        }

        // ONNX Runtime on the same package's shard.onnx, between two halves of shardc's.
        let spec = serde_json::json!({
            "model": pkg.join("shard.onnx"),
            "token_input": ids_input(&session).expect("token input"),
            "logits": logits_name,
            "cache": cache_entries(session.graph()).iter().map(|c| [c.past.clone(), c.present.clone()]).collect::<Vec<_>>(),
            "ids": ids,
            "runs": RUNS,
        });
        let spec_file = scratch.join("spec.json");
        std::fs::write(&spec_file, spec.to_string()).expect("spec");
        let ran = Command::new(&python)
            .arg(root().join("benches/ort_steps.py"))
            .arg(&spec_file)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e} (set SHARDC_BENCH_PYTHON)", python.display()));
        assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
        let ort: serde_json::Value = serde_json::from_slice(&ran.stdout).expect("json");
        drop(ran);
        measure(&mut prefill, &mut decode);

        let floats = |v: &serde_json::Value| -> Vec<f32> {
            v.as_array().expect("logits").iter().map(|x| x.as_f64().unwrap_or(f64::NAN) as f32).collect()
        };
        let diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        let (d1, d2) = (
            diff(&last(&first), &floats(&ort["prefill_logits"])),
            diff(&last(&second), &floats(&ort["decode_logits"])),
        );
        let scale = last(&first).iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
        drop((first, second));
        let version = ort["onnxruntime"].as_str().unwrap_or("?").to_string();
        assert!(d1 <= 1e-3 * scale && d2 <= 1e-3 * scale, "{name}: logits differ from ONNX Runtime's: {d1}, {d2}");
        let (p, d) = (median(prefill), median(decode));
        let (op, od) = (ort["prefill_ms"].as_f64().expect("ms"), ort["decode_ms"].as_f64().expect("ms"));
        // ONNX Runtime's logits (kept as JSON) are not the device's memory.
        drop(ort);
        println!(
            "{name:<11} {p:>11.1} ms {op:>9.1} ms {:>6.2} {d:>11.2} ms {od:>9.2} ms {:>6.2}  {d1:.1e} / {d2:.1e} (onnxruntime {})",
            p / op,
            d / od,
            version,
        );
        // Start-up and memory: the first prompt step after warming against the second;
        // this process's resident memory after the steps (less what it held before the
        // first model), and once the allocator gave back what the steps freed (as a
        // device does when idle), against the package's weight bytes, the KV cache of the
        // prompt and 64 MB (the cache held is the prompt's).
        let weight_bytes = std::fs::metadata(pkg.join("weights.safetensors")).map(|m| m.len()).unwrap_or(0);
        let kv_bytes: usize = cache.iter().map(|t| t.to_f32_vec().len() * 4).sum();
        let rss = shardc_runtime::weights::resident_bytes().unwrap_or(0).saturating_sub(rss_before);
        // And once the allocator has given back what the steps freed (a device idle).
        shardc_runtime::weights::give_back_free_memory();
        let idle = shardc_runtime::weights::resident_bytes().unwrap_or(0).saturating_sub(rss_before);
        let mb = |b: u64| b as f64 / (1 << 20) as f64;
        println!(
            "{name:<11} start-up: warm {warm_ms:.0} ms, first prompt step {first_ms:.1} ms, second {second_ms:.1} ms ({:.2}x); resident {:.0} MB, idle {:.0} MB, against weights {:.0} MB + KV {:.1} MB + 64 MB = {:.0} MB",
            first_ms / second_ms,
            mb(rss),
            mb(idle),
            mb(weight_bytes),
            mb(kv_bytes as u64),
            mb(weight_bytes + kv_bytes as u64 + (64 << 20)),
        );
        let _ = std::fs::remove_dir_all(&scratch);
    }
}

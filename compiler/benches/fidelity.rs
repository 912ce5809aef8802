//! Fidelity of the cost model (issue 16, item 3): predicted against measured prefill
//! and decode time per stage, for three models on this host, one device and three
//! `shardc-run local` devices, from this host's own `shardc profile` (no calibration).
//! The profile is `shardc profile --model MODEL --weight-type TYPE` (the type the
//! packages store), once per model, as a user would measure a device for a model.
//! Predictions are for the run's own work (`shardc plan --calibrate RUN.json` reports
//! them beside the measured times: the prompt, and the middle decode step's context).
//!
//! Run: `cargo build --release -p shardc-runtime && cargo bench -p shardc --bench fidelity`
//! Options (environment): `FIDELITY_MODELS` (comma-separated names, default all),
//! `FIDELITY_PROMPT` (default 32), `FIDELITY_TOKENS` (default 32), `FIDELITY_PROFILE`
//! (a profile TOML of this host to use instead of measuring one).
//! The models (random weights, not committed) are made once under target/bench-models.

#[path = "net_common.rs"]
#[allow(dead_code)]
mod net_common;

use std::path::PathBuf;
use std::process::Command;

use net_common::{env, random_model, root, shardc_run, MODELS};

/// Wait until written files are on disk: write-back of a compile's packages beside a
/// measurement takes memory bandwidth from it.
fn sync() {
    let _ = Command::new("sync").status();
}

fn shardc(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_shardc")).args(args).output().expect("shardc");
    if !out.status.success() {
        eprintln!("shardc {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        std::process::exit(1);
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// This host's device entry, renamed `name`.
fn entry(profile: &str, name: &str) -> String {
    let (_, rest) = profile.split_once("name = ").expect("a device entry");
    let (_, rest) = rest.split_once('\n').expect("a device entry");
    format!("[[device]]\nname = \"{name}\"\n{rest}\n")
}

#[derive(Clone)]
struct Row {
    model: &'static str,
    devices: usize,
    device: String,
    units: String,
    /// Median over the runs, and the least and most (prefill, decode).
    measured: [f64; 2],
    spread: [[f64; 2]; 2],
    predicted: [f64; 2],
}

/// Runs of each compile (the same packages).
const REPEATS: usize = 3;

fn main() {
    let run = shardc_run();
    let prompt: usize = env("FIDELITY_PROMPT", "32").parse().expect("FIDELITY_PROMPT");
    let tokens: usize = env("FIDELITY_TOKENS", "32").parse().expect("FIDELITY_TOKENS");
    let only = env("FIDELITY_MODELS", "");
    let scratch = root().join("target/bench-models/fidelity");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).expect("mkdir");
    let given = std::env::var_os("FIDELITY_PROFILE").map(|p| std::fs::read_to_string(p).expect("FIDELITY_PROFILE"));
    let link = "[default_link]\nbandwidth = \"10 Gbit/s\"\nlatency = \"50 us\"\n";
    let ids: Vec<String> = (0..prompt).map(|i| (i * 37 % 30000 + 1).to_string()).collect();
    let ids = ids.join(",");
    let context = (prompt + tokens).to_string();
    let prompt_len = prompt.to_string();
    let mut rows = Vec::new();
    for (name, config, dtype) in MODELS {
        if !only.is_empty() && !only.split(',').any(|m| m == name) {
            continue;
        }
        let model = random_model(&format!("fidelity-{name}"), config);
        let model = model.to_str().expect("path");
        // This host as `shardc profile --model` measures it for this model's products.
        sync();
        let profile = match &given {
            Some(p) => p.clone(),
            None => shardc(&["profile", "--name", "host", "--model", model, "--weight-type", dtype, "--threads", "1"]),
        };
        let profiles: Vec<(usize, PathBuf)> = [1usize, 3]
            .iter()
            .map(|&n| {
                let text: String = ["dev-a", "dev-b", "dev-c"][..n].iter().map(|d| entry(&profile, d)).collect();
                let path = scratch.join(format!("{name}-host{n}.toml"));
                std::fs::write(&path, format!("{text}{link}")).expect("profile");
                (n, path)
            })
            .collect();
        let head: Vec<&str> = profile.lines().take_while(|l| !l.starts_with("[device.kernels.matmul]")).collect();
        println!("{name}: this host, `shardc profile --model` (start):\n{}", head.join("\n"));
        for (n, devices) in &profiles {
            let out = scratch.join(format!("{name}-{n}"));
            let common = [
                "--devices",
                devices.to_str().expect("path"),
                "--objective",
                "throughput",
                "--prompt-len",
                &prompt_len,
                "--max-context",
                &context,
                "--dtype",
                dtype,
            ];
            let mut args = vec!["compile", model];
            args.extend(common);
            args.extend(["--force", "-q", "-o", out.to_str().expect("path")]);
            shardc(&args);
            sync();
            // REPEATS runs; per stage the median of what they measured, and their spread.
            let mut runs: Vec<Vec<Row>> = Vec::new();
            for r in 0..REPEATS {
                let ran = Command::new(&run)
                    .arg("local")
                    .args(["--threads", "1"])
                    .arg(&out)
                    .args(["--input-ids", &ids, "--max-new-tokens", &tokens.to_string(), "--json", "--no-balance"])
                    .arg("--insecure")
                    .output()
                    .expect("shardc-run");
                if !ran.status.success() {
                    eprintln!("{}", String::from_utf8_lossy(&ran.stderr));
                    std::process::exit(1);
                }
                let report = scratch.join(format!("{name}-{n}-{r}.json"));
                std::fs::write(&report, &ran.stdout).expect("report");
                let mut args = vec!["plan", model];
                args.extend(common);
                args.extend(["--json", "--calibrate", report.to_str().expect("path")]);
                let plan: serde_json::Value = serde_json::from_str(&shardc(&args)).expect("plan JSON");
                let stages = plan["calibration"]["devices"].as_array().expect("calibrated devices");
                runs.push(
                    stages
                        .iter()
                        .map(|d| {
                            let f = |k: &str| d[k].as_f64().unwrap_or(f64::NAN);
                            let unit = |i: usize| d["units"][i].as_str().unwrap_or("?").to_string();
                            Row {
                                model: name,
                                devices: *n,
                                device: d["device"].as_str().unwrap_or("?").to_string(),
                                units: format!("{} .. {}", unit(0), unit(1)),
                                measured: [f("measured_prefill_ms"), f("measured_decode_ms")],
                                spread: [[0.0; 2]; 2],
                                predicted: [f("predicted_prefill_ms"), f("predicted_decode_ms")],
                            }
                        })
                        .collect(),
                );
            }
            for (i, mut row) in runs[0].clone().into_iter().enumerate() {
                for phase in 0..2 {
                    let mut v: Vec<f64> = runs.iter().map(|r| r[i].measured[phase]).collect();
                    v.sort_by(f64::total_cmp);
                    row.measured[phase] = v[v.len() / 2];
                    row.spread[phase] = [v[0], v[v.len() - 1]];
                }
                rows.push(row);
            }
        }
    }
    report(&rows, prompt, tokens);
}

fn report(rows: &[Row], prompt: usize, tokens: usize) {
    println!("\n{prompt}-token prompt, {tokens} new tokens; predicted / measured − 1 per stage (target: within 10%)");
    println!("measured: median of {REPEATS} runs (least – most)");
    println!(
        "| model | devices | stage | units | prefill measured | predicted | error | decode step measured | predicted | error |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut worst = [0f64; 2];
    for r in rows {
        let err = |i: usize| r.predicted[i] / r.measured[i] - 1.0;
        for (i, w) in worst.iter_mut().enumerate() {
            *w = w.max(err(i).abs());
        }
        println!(
            "| {} | {} | {} | {} | {:.1} ms ({:.1}–{:.1}) | {:.1} ms | {:+.1}% | {:.2} ms ({:.2}–{:.2}) | {:.2} ms | {:+.1}% |",
            r.model,
            r.devices,
            r.device,
            r.units,
            r.measured[0],
            r.spread[0][0],
            r.spread[0][1],
            r.predicted[0],
            100.0 * err(0),
            r.measured[1],
            r.spread[1][0],
            r.spread[1][1],
            r.predicted[1],
            100.0 * err(1)
        );
    }
    println!("largest error: prefill {:.1}%, decode {:.1}%", 100.0 * worst[0], 100.0 * worst[1]);
}

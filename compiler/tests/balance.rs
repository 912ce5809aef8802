//! Runtime load balancing over real `shardc-run` processes: a device slowed 3× in the
//! middle of generation loses units to its neighbours while every request still gets
//! the reference tokens; a run with no slowdown never moves.
//!
//! The tests of this file run one at a time: the no-move test measures stage times, and
//! the other test's processes would be noise in them.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use common::net::{cluster, compile, ids, port_base, serve, shardc_run};
use common::{fixture_dir, root};
use shardc::frontend::hf::LowerOptions;
use shardc_passes::{run_pipeline, Ctx};
use shardc_runtime::generate::{greedy_cached, CacheLayout};
use shardc_runtime::Session;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const TOKENS: usize = 40;

/// The whole model's greedy tokens in this process (its first 8 are PyTorch's).
fn reference_tokens(prompt: &[i64]) -> Vec<i64> {
    let loaded =
        shardc::load::load(&fixture_dir("llama32").join("hf"), &LowerOptions { max_context: Some(64) }).unwrap();
    let mut graph = loaded.graph;
    run_pipeline(&mut graph, &mut Ctx::default(), None).unwrap();
    let session = Session::new(graph, &loaded.weights_dir);
    let layout = CacheLayout::of(&session).unwrap().unwrap();
    greedy_cached(&session, &layout, prompt, TOKENS).unwrap()
}

fn generate(out: &Path, cluster_file: &Path, prompt: &str, extra: &[&str]) -> serde_json::Value {
    let gen = Command::new(shardc_run())
        .arg("generate")
        .arg(out)
        .args(["--cluster", cluster_file.to_str().unwrap(), "--input-ids", prompt])
        .args(["--max-new-tokens", &TOKENS.to_string(), "--requests", "2", "--timeout", "20", "--json"])
        .args(extra)
        .output()
        .unwrap();
    assert!(gen.status.success(), "{}", String::from_utf8_lossy(&gen.stderr));
    serde_json::from_slice(&gen.stdout).unwrap()
}

fn tokens(report: &serde_json::Value, r: usize) -> Vec<i64> {
    report["tokens"][r].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect()
}

fn units(stage: &serde_json::Value) -> u64 {
    stage["units"][1].as_u64().unwrap() - stage["units"][0].as_u64().unwrap()
}

#[test]
fn a_device_slowed_three_times_mid_generation_hands_units_to_its_neighbours() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    compile(&fixture_dir("llama32").join("hf"), &out, &["--standby", "8"]);
    let (prompt, pytorch) = ids("llama32");
    let ids: Vec<i64> = prompt.split(',').map(|t| t.parse().unwrap()).collect();
    let expected = reference_tokens(&ids);
    assert_eq!(expected[..8], pytorch[..], "the interpreter's reference");
    let compiled: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("balance.json")).unwrap()).unwrap();
    let b_units = |plan: &serde_json::Value| {
        let s = &plan[1];
        s["end"].as_u64().unwrap() - s["start"].as_u64().unwrap()
    };
    let compiled_b = b_units(&compiled["plan"]);

    for (k, balance) in [true, false].into_iter().enumerate() {
        let (cluster_file, _) = cluster(dir.path(), port_base(40 + k as u16));
        let mut devices = serve(&out, &cluster_file, &[]);
        // dev-b again, 3× slower after 8 decode steps.
        let _ = devices.0[1].kill();
        let _ = devices.0[1].wait();
        devices.0[1] = Command::new(shardc_run())
            .arg("serve")
            .arg(&out)
            .args(["--device", "dev-b", "--cluster", cluster_file.to_str().unwrap(), "--slowdown-after", "8:3"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let report = generate(&out, &cluster_file, &prompt, if balance { &[] } else { &["--no-balance"] });
        // No request lost, none changed.
        for r in 0..2 {
            assert_eq!(tokens(&report, r), expected, "request {r}, balancing {balance}");
        }
        if !balance {
            assert!(report["balance"].is_null());
            continue;
        }
        let b = &report["balance"];
        let decisions = b["decisions"].as_array().unwrap();
        let moves: Vec<&serde_json::Value> = decisions.iter().filter(|d| d["moved"] == true).collect();
        assert!(!moves.is_empty(), "no move: {b:#}");
        assert_eq!(b["moves"].as_u64().unwrap() as usize, moves.len());
        // dev-b ends with fewer units; its neighbours took them.
        let fin = &b["plan"];
        assert_eq!(fin[1]["device"], "dev-b");
        assert!(units(&fin[1]) < compiled_b, "dev-b still has {} units: {b:#}", units(&fin[1]));
        for d in &moves {
            // Each move is logged with its measurements, both plans and what it took.
            assert_eq!(d["measured_ms"].as_array().unwrap().len(), 3);
            assert!(d["predicted_gain"].as_f64().unwrap() > 1.15, "{d:#}");
            assert!(d["new_token_ms"].as_f64().unwrap() < d["old_token_ms"].as_f64().unwrap());
            assert!(d["switch_ms"].as_f64().is_some() && d["drain_ms"].as_f64().is_some(), "{d:#}");
            // Layers changed devices, so KV cache moved with them.
            assert!(d["kv_bytes"].as_u64().unwrap() > 0, "{d:#}");
        }
        // The slowdown starts after step 8: no move is decided on times before it.
        assert!(moves[0]["after_steps"].as_u64().unwrap() > 8, "{:#}", moves[0]);
        // No move undoes an earlier one.
        for (i, a) in moves.iter().enumerate() {
            for later in &moves[i + 1..] {
                assert_ne!(later["new"], a["old"], "oscillation: {b:#}");
            }
        }
    }
}

#[test]
fn a_balanced_run_makes_no_move() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    compile(&fixture_dir("llama32").join("hf"), &out, &["--standby", "8"]);
    let (cluster_file, _) = cluster(dir.path(), port_base(47));
    let _devices = serve(&out, &cluster_file, &[]);
    let (prompt, pytorch) = ids("llama32");
    let report = generate(&out, &cluster_file, &prompt, &[]);
    let b = &report["balance"];
    let decisions = b["decisions"].as_array().unwrap();
    // It looked, repeatedly, and stayed.
    assert!(decisions.len() >= 8, "only {} decisions: {b:#}", decisions.len());
    assert_eq!(b["moves"], 0, "{b:#}");
    assert!(decisions.iter().all(|d| d["moved"] == false && d["old"] == d["new"]));
    assert_eq!(tokens(&report, 0)[..8], pytorch[..]);
    let _ = root();
}

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

use common::fixture_dir;
use common::net::{
    cluster, compile, generate_command, ids, port_base, secret_of, serve, serve_command, serve_each, shardc_run,
};
use shardc_runtime::generate::{greedy_cached, CacheLayout};
use shardc_runtime::Session;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const TOKENS: usize = 40;

/// The whole model's greedy tokens in this process (its first 8 are PyTorch's).
fn reference_tokens(prompt: &[i64]) -> Vec<i64> {
    let (graph, weights_dir) = common::lowered(&fixture_dir("llama32").join("hf"), Some(64));
    let session = Session::new(graph, &weights_dir);
    let layout = CacheLayout::of(&session).unwrap().unwrap();
    greedy_cached(&session, &layout, prompt, TOKENS).unwrap()
}

fn generate(out: &Path, cluster_file: &Path, prompt: &str, extra: &[&str]) -> serde_json::Value {
    let gen = generate_command(out, cluster_file, prompt)
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
        // dev-b 3× slower after 8 decode steps.
        let slow = |d: &str| if d == "dev-b" { vec!["--slowdown-after", "8:3"] } else { vec![] };
        let _devices = serve_each(&out, &cluster_file, slow);
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
        // (after_steps counts the decode steps of both requests.)
        assert!(moves[0]["after_steps"].as_u64().unwrap() > 16, "{:#}", moves[0]);
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
}

/// Open a session on dev-a (as the client), send `info` as a `rebalance` message and
/// return the `ready` it answers.
fn ask_to_rebalance(out: &Path, salt: u16, info: &str) -> serde_json::Value {
    use shardc_runtime::frame::{self, Body, Frame, Kind};
    use shardc_runtime::wire::Wire;
    let dir = out.parent().unwrap();
    let (cluster_file, addrs) = cluster(dir, port_base(salt));
    let _devices = serve(out, &cluster_file, &[]);
    let key = shardc_runtime::node::key_from_secret(&std::fs::read(secret_of(&cluster_file)).unwrap()).unwrap();
    let mut wire = Wire::new(Some(&key), 1 << 20).unwrap();
    let session = [7u8; 16];
    let ctx = zmq::Context::new();
    let pull = ctx.socket(zmq::PULL).unwrap();
    pull.bind(&addrs[0]).unwrap();
    let push = ctx.socket(zmq::PUSH).unwrap();
    push.connect(&addrs[1]).unwrap();
    let receive = || {
        assert!(pull.poll(zmq::POLLIN, 20_000).unwrap() > 0, "no answer from dev-a");
        let mut parts = pull.recv_multipart(0).unwrap();
        let (_, body) = wire_open(&key, &mut parts);
        frame::decode(&body, 1 << 20).unwrap()
    };
    push.send_multipart(wire.seal(&session, frame::encode(&Frame::control("client", Body::Open)).unwrap()).unwrap(), 0)
        .unwrap();
    assert_eq!(receive().body, Body::Opened);
    // A body the device may not understand: sent as it is, in a rebalance frame's metadata.
    let frame = match serde_json::from_str(info) {
        Ok(plan) => frame::encode(&Frame::control("client", Body::Rebalance(plan))).unwrap(),
        Err(_) => {
            let meta =
                frame::Meta { kind: Kind::Rebalance, request: 0, step: 0, sender: "client".into(), info: info.into() };
            safetensors::serialize(Vec::<(&str, safetensors::tensor::TensorView)>::new(), Some(meta.to_map())).unwrap()
        }
    };
    push.send_multipart(wire.seal(&session, frame).unwrap(), 0).unwrap();
    let ready = receive();
    assert_eq!(ready.sender, "dev-a");
    let Body::Ready(ready) = ready.body else { panic!("not a ready message: {ready:?}") };
    serde_json::to_value(ready).unwrap()
}

fn wire_open(key: &[u8; 32], parts: &mut [Vec<u8>]) -> (shardc_runtime::wire::Envelope, Vec<u8>) {
    shardc_runtime::wire::Wire::new(Some(key), 1 << 20).unwrap().open(parts).unwrap()
}

#[test]
fn devices_refuse_moves_they_cannot_make_and_keep_serving() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    compile(&fixture_dir("llama32").join("hf"), &plain, &[]);
    let plan = r#"{"epoch": 1, "stages": ["dev-a", "dev-b", "dev-c"], "ranges": [[0, 30], [30, 40], [40, 66]],
        "requests": [], "routes": {}}"#;
    let ready = ask_to_rebalance(&plain, 50, plan);
    assert!(ready["error"].as_str().unwrap().contains("compiled without --standby"), "{ready}");
    let standby = dir.path().join("standby");
    compile(&fixture_dir("llama32").join("hf"), &standby, &["--standby", "2"]);
    // Beyond the held units.
    let ready = ask_to_rebalance(&standby, 51, plan);
    assert!(ready["error"].as_str().unwrap().contains("but the package holds units"), "{ready}");
    // Ranges that do not tile the model, a body that is not a plan.
    let gap = plan.replace("[30, 40]", "[31, 40]");
    let ready = ask_to_rebalance(&standby, 52, &gap);
    assert!(ready["error"].as_str().unwrap().contains("do not tile the model"), "{ready}");
    let ready = ask_to_rebalance(&standby, 53, "{\"epoch\": 1}");
    assert!(ready["error"].as_str().unwrap().contains("malformed rebalance message"), "{ready}");
    // Routes that disagree with the stage: refused before anything changes.
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(standby.join("balance.json")).unwrap()).unwrap();
    let a_end = spec["plan"][0]["end"].as_u64().unwrap();
    let b_end = spec["plan"][1]["end"].as_u64().unwrap();
    let shifted = format!(
        r#"{{"epoch": 1, "stages": ["dev-a", "dev-b", "dev-c"], "ranges": [[0, {}], [{}, {b_end}], [{b_end}, 66]],
            "requests": [], "routes": {{}}}}"#,
        a_end + 1,
        a_end + 1
    );
    let ready = ask_to_rebalance(&standby, 54, &shifted);
    assert!(ready["error"].as_str().unwrap().contains("but the routes bring"), "{ready}");
    // The device is still serving: a generation through all three.
    let (cluster_file, _) = cluster(dir.path(), port_base(55));
    let _devices = serve(&standby, &cluster_file, &[]);
    let (prompt, pytorch) = ids("llama32");
    let gen = generate_command(&standby, &cluster_file, &prompt).arg("--json").output().unwrap();
    assert!(gen.status.success(), "{}", String::from_utf8_lossy(&gen.stderr));
    let report: serde_json::Value = serde_json::from_slice(&gen.stdout).unwrap();
    assert_eq!(tokens(&report, 0), pytorch);
}

#[test]
fn bad_balance_options_and_files_are_refused() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    compile(&fixture_dir("gpt2").join("hf"), &out, &["--standby", "1"]);
    let (cluster_file, _) = cluster(dir.path(), port_base(57));
    for (args, message) in [
        (vec!["--slowdown-after", "12"], "expected STEPS:F"),
        (vec!["--slowdown-after", "x:3"], "is not a number of decode steps"),
        (vec!["--slowdown-after", "4:0.5"], "must be at least 1"),
        (vec!["--slowdown", "3", "--slowdown-after", "4:3"], "cannot be used with"),
    ] {
        let st = serve_command(&out, "dev-a", &cluster_file).args(&args).output().unwrap();
        assert!(!st.status.success());
        let err = String::from_utf8_lossy(&st.stderr);
        assert!(err.contains(message), "{args:?}: {err}");
    }
    // generate fails, saying why.
    let refused = |extra: &[&str]| {
        let gen = generate_command(&out, &cluster_file, "1,2,3").args(["--timeout", "1"]).args(extra).output().unwrap();
        assert!(!gen.status.success());
        String::from_utf8_lossy(&gen.stderr).into_owned()
    };
    // A balance.json whose stage lies outside what it holds.
    let path = out.join("balance.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["held"][0][1] = serde_json::json!(1);
    std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let err = refused(&[]);
    assert!(err.contains("balance.json") && err.contains("does not match the packages'"), "{err}");
    common::reshare(&out, "balance.json");
    let err = refused(&[]);
    assert!(err.contains("balance.json") && err.contains("do not contain its own"), "{err}");
    std::fs::write(&path, b"{\"format\": 1}").unwrap();
    common::reshare(&out, "balance.json");
    assert!(refused(&["--balance-window", "0"]).contains("--balance-window must be at least 1"));
    let err = refused(&[]);
    assert!(err.contains("balance.json: not a balance file"), "{err}");
}

#[test]
fn in_one_process_a_slowed_thread_loses_units_too() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    compile(&fixture_dir("llama32").join("hf"), &out, &["--standby", "8"]);
    let (prompt, pytorch) = ids("llama32");
    let local = Command::new(shardc_run())
        .arg("local")
        .arg(&out)
        .args(["--input-ids", &prompt, "--max-new-tokens", &TOKENS.to_string(), "--requests", "2", "--json"])
        .args(["--slow-device", "dev-b:8:3", "--timeout", "20"])
        .output()
        .unwrap();
    assert!(local.status.success(), "{}", String::from_utf8_lossy(&local.stderr));
    let report: serde_json::Value = serde_json::from_slice(&local.stdout).unwrap();
    let b = &report["balance"];
    assert!(b["moves"].as_u64().unwrap() >= 1, "{b:#}");
    assert!(units(&b["plan"][1]) < units(&b["decisions"][0]["old"][1]), "{b:#}");
    for r in 0..2 {
        assert_eq!(tokens(&report, r)[..8], pytorch[..], "request {r}");
    }
}

//! `shardc compile --standby N`: packages that also hold the units beyond their
//! boundaries, every stage the runtime can cut from them computing the model exactly,
//! and routes that agree with the transmission map.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{fixture_dir, fixture_onnx, reference, root};
use shardc::emit::{compile, CompileOptions};
use shardc_passes::devices;
use shardc_passes::plan::{Objective, Strategy};
use shardc_runtime::balance::BalanceSpec;
use shardc_runtime::generate::{self, CacheLayout};
use shardc_runtime::package::{load, load_manifest, load_standby, HeldUnits};
use shardc_runtime::pipeline::Pipeline;
use shardc_runtime::Session;

fn compile_standby(model: &Path, out: &Path, standby: usize) -> serde_json::Value {
    let (graph, weights_dir) = common::lowered(model, Some(64));
    let profile = devices::load(&root().join("fixtures/devices/loopback-3.toml")).unwrap();
    let opts = CompileOptions {
        strategy: Strategy::Ilp,
        request: common::fixture_request(Objective::Throughput, standby),
        force: false,
        model_name: "fixture".into(),
        devices_name: "loopback-3".into(),
        inputs: Vec::new(),
        records: Vec::new(),
        progress: false,
    };
    compile(&graph, &weights_dir, &profile, &opts, out).unwrap();
    serde_json::from_slice(&std::fs::read(out.join("plan.json")).unwrap()).unwrap()
}

fn names(g: &shardc_ir::Graph, values: &[shardc_ir::ValueId]) -> BTreeSet<String> {
    values.iter().map(|&v| g.value(v).name.clone()).collect()
}

/// Run the stages `ranges` cut from the held units and compare with the reference.
fn check_plan(name: &str, held: &[HeldUnits], out: &Path, devices: &[String], ranges: &[[usize; 2]]) {
    let sessions = held
        .iter()
        .zip(ranges)
        .zip(devices)
        .map(|((h, r), d)| Session::new(h.stage(*r).unwrap(), &out.join(d)))
        .collect();
    let pipeline = Pipeline::new(sessions);
    let r = reference(name);
    let (logits, tokens) = match CacheLayout::of(&pipeline).unwrap() {
        Some(layout) => (
            generate::cached_prefill(&pipeline, &layout, &r.input_ids).unwrap(),
            generate::greedy_cached(&pipeline, &layout, &r.input_ids, 8).unwrap(),
        ),
        None => {
            (generate::logits(&pipeline, &r.input_ids).unwrap(), generate::greedy(&pipeline, &r.input_ids, 8).unwrap())
        }
    };
    let diff = r.max_diff(&logits.values);
    assert!(diff <= 1e-4 * r.max_abs().max(1.0), "{name} {ranges:?}: logits differ by {diff}");
    assert_eq!(tokens, r.greedy, "{name} {ranges:?}");
}

#[test]
fn standby_packages_cut_every_allowed_stage_exactly() {
    for (name, model, standby) in [
        ("gpt2", fixture_dir("gpt2").join("hf"), 2),
        ("llama", fixture_onnx("llama"), 1),
        ("bloom", fixture_dir("bloom").join("hf"), 2),
        ("llama32", fixture_dir("llama32").join("hf"), 3),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let plan = compile_standby(&model, &out, standby);
        let spec = BalanceSpec::load(&out).unwrap().expect("balance.json");
        let devices = spec.stage_devices(&spec.plan);
        // plan.json counts the held units: within N of each boundary, inside the budget.
        for (s, st) in spec.plan.iter().enumerate() {
            let report = &plan["stages"][s];
            let h = &report["held"];
            let [h0, h1] = spec.held[s];
            assert_eq!(h["units"], serde_json::json!([h0, h1]), "{name}");
            assert!(h0 <= st.start && st.start - h0 <= standby && st.end <= h1 && h1 - st.end <= standby, "{name}");
            let (held_mem, mem, budget) = (
                h["memory_bytes"].as_f64().unwrap(),
                report["memory_bytes"].as_f64().unwrap(),
                report["budget_bytes"].as_f64().unwrap(),
            );
            assert!(mem <= held_mem && held_mem <= budget, "{name}: {mem} {held_mem} {budget}");
            assert_eq!(h["first_unit"], spec.units[h0], "{name}");
        }
        // The routes of the compiled plan are the transmission map's.
        let routes = spec.routes(&spec.plan);
        let mut held = Vec::new();
        for d in &devices {
            let (m, graph) = load(&out.join(d)).unwrap();
            for port in &m.inputs {
                assert!(routes[&port.name].to.iter().any(|e| e.is_device(d)), "{name}: {} to {d}", port.name);
                assert_eq!(routes[&port.name].from, port.peers[0], "{name}: {} to {d}", port.name);
            }
            for port in &m.outputs {
                assert!(routes[&port.name].from.is_device(d), "{name}: {}", port.name);
                assert_eq!(routes[&port.name].to, port.peers, "{name}: {} from {d}", port.name);
            }
            let taken = routes.values().filter(|r| r.to.iter().any(|e| e.is_device(d))).count();
            assert_eq!(taken, m.inputs.len(), "{name}: {d} is routed tensors it does not take");
            // The runtime's cut of the compiled range is the compiled stage.
            let h = load_standby(&out.join(d), &m).unwrap().expect("standby units");
            let s = devices.iter().position(|x| x == d).unwrap();
            let own = h.stage([spec.plan[s].start, spec.plan[s].end]).unwrap();
            assert_eq!(names(&own, &own.inputs), names(&graph, &graph.inputs), "{name} {d}");
            assert_eq!(names(&own, &own.outputs), names(&graph, &graph.outputs), "{name} {d}");
            assert_eq!(own.nodes.len(), graph.nodes.len(), "{name} {d}");
            held.push(h);
        }
        // Every plan the standby units allow (each boundary at its extremes and in place).
        let candidates = |s: usize| {
            let b = spec.plan[s].end;
            let lo = spec.held[s + 1][0].max(spec.plan[s].start + 1);
            let hi = spec.held[s][1].min(spec.plan[s + 1].end - 1);
            let mut v = vec![lo, b, hi];
            v.dedup();
            v
        };
        let mut plans = 0;
        for b1 in candidates(0) {
            for b2 in candidates(1) {
                if b1 < b2 {
                    check_plan(name, &held, &out, &devices, &[[0, b1], [b1, b2], [b2, spec.units.len()]]);
                    plans += 1;
                }
            }
        }
        assert!(plans >= 4, "{name}: only {plans} plans");
        // Units outside what a package holds are refused, naming them.
        let err = held[0].stage([0, spec.held[0][1] + 1]).unwrap_err();
        assert!(err.contains("the package holds units"), "{err}");
    }
}

#[test]
fn standby_compiles_are_byte_identical_and_a_zero_standby_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture_dir("qwen2").join("hf");
    compile_standby(&model, &dir.path().join("a"), 2);
    compile_standby(&model, &dir.path().join("b"), 2);
    compile_standby(&model, &dir.path().join("c"), 0);
    let files = |d: &str| {
        let mut out = Vec::new();
        for e in walk(&dir.path().join(d)) {
            out.push((e.strip_prefix(dir.path().join(d)).unwrap().display().to_string(), std::fs::read(&e).unwrap()));
        }
        out.sort();
        out
    };
    let (a, b, c) = (files("a"), files("b"), files("c"));
    assert_eq!(a, b);
    // balance.json, and standby.ir + standby.json per package.
    assert_eq!(a.len(), c.len() + 1 + 3 * 2);
    assert!(!dir.path().join("c/balance.json").exists());
    let m = load_manifest(&dir.path().join("c/dev-a")).unwrap();
    assert!(m.held.is_none());
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

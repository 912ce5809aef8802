//! Planning time of the exact strategy (`ilp`) on large instances, against the
//! file-order DP measured in the same run, and the `compare` table of BLOOM on
//! LinguaLinked's three phones.
//!
//! Run: `cargo bench -p shardc --bench planning`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shardc::frontend::hf::LowerOptions;
use shardc::render;
use shardc_passes::cost::Workload;
use shardc_passes::devices;
use shardc_passes::partition::{self, Request};
use shardc_passes::plan::{solve, Objective, Strategy};
use shardc_passes::{run_pipeline, Ctx};

fn graph(path: &Path, context: usize) -> shardc_ir::Graph {
    let mut g = shardc::load::load(path, &LowerOptions { max_context: Some(context), ..LowerOptions::default() })
        .expect("load")
        .graph;
    run_pipeline(&mut g, &mut Ctx::default(), None).expect("passes");
    g
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let context = 4096;
    println!("exact planning (ilp) vs file-order DP, context {context}, prompt 128, median of 5");
    println!(
        "{:<12} {:<9} {:<11} {:>6} {:>10} {:>16} {:>10} {:>8}",
        "model", "devices", "objective", "units", "ilp", "status", "dp", "ilp/dp"
    );
    for (model, profile) in [("llama-3-70b", "edge-16"), ("llama-3-8b", "lab-8")] {
        let g = graph(&root.join(format!("fixtures/configs/{model}/config.json")), context);
        let p = devices::load(&root.join(format!("fixtures/devices/{profile}.toml"))).expect("profile");
        for objective in [Objective::Latency, Objective::Throughput] {
            let req = Request {
                workload: Workload { batch: 1, prompt_len: 128, max_context: context as u64 },
                objective,
                margin: 0.1,
                time_limit: Duration::from_secs(10),
                node_limit: shardc_passes::plan::DEFAULT_NODE_LIMIT,
                compute_dtype: None,
                standby: 0,
                dtype: None,
                quantize: None,
                calibration: None,
            };
            let prep = partition::prepare(&g, &p, &req).expect("prepare");
            let mut status = String::new();
            let ilp = median(
                (0..5)
                    .map(|_| {
                        let t = Instant::now();
                        let o = solve(&prep.model.problem, Strategy::Ilp, &prep.opts);
                        let took = t.elapsed();
                        status = format!(
                            "{}{}",
                            o.status.engine,
                            if o.status.optimal { " optimal" } else { " NOT optimal" }
                        );
                        took
                    })
                    .collect(),
            );
            let dp = median(
                (0..5)
                    .map(|_| {
                        let t = Instant::now();
                        std::hint::black_box(solve(&prep.model.problem, Strategy::Dp, &prep.opts));
                        t.elapsed()
                    })
                    .collect(),
            );
            println!(
                "{:<12} {:<9} {:<11} {:>6} {:>8.1}ms {:>16} {:>8.1}ms {:>8.2}",
                model,
                profile,
                format!("{objective:?}"),
                prep.model.problem.units(),
                ilp.as_secs_f64() * 1e3,
                status,
                dp.as_secs_f64() * 1e3,
                ilp.as_secs_f64() / dp.as_secs_f64()
            );
        }
    }
    println!();
    println!("BLOOM on lingualinked-3.toml, throughput objective, weights sized as f16, context 1024");
    let p = devices::load(&root.join("fixtures/devices/lingualinked-3.toml")).expect("profile");
    for model in ["bloom-1b1", "bloom-3b", "bloom-7b1"] {
        let g = graph(&root.join(format!("fixtures/configs/{model}/config.json")), 1024);
        let req = Request {
            workload: Workload { batch: 1, prompt_len: 128, max_context: 1024 },
            objective: Objective::Throughput,
            margin: 0.1,
            time_limit: Duration::from_secs(10),
            node_limit: shardc_passes::plan::DEFAULT_NODE_LIMIT,
            compute_dtype: Some("f16".into()),
            standby: 0,
            dtype: Some(shardc_ir::DType::F16),
            quantize: None,
            calibration: None,
        };
        match partition::compare(&g, &p, &req) {
            Ok(rows) => {
                print!("{model}\n{}", render::compare_text(&rows, req.objective));
                let tps = |s: Strategy| rows.iter().find(|r| r.strategy == s).and_then(|r| r.pipelined_tokens_per_s);
                let ilp = tps(Strategy::Ilp).unwrap_or(0.0);
                let ratio = |s: Strategy| tps(s).map_or("does not fit".to_string(), |t| format!("{:.2}x", ilp / t));
                println!(
                    "  ilp decode throughput over uniform: {}, over proportional: {}",
                    ratio(Strategy::Uniform),
                    ratio(Strategy::Proportional)
                );
            }
            Err(e) => println!("{model}: {e}"),
        }
    }
}

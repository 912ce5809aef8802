//! Planning time of the exact strategy (`ilp`) on large instances, against the
//! file-order DP measured in the same run: the fixture profiles, then random
//! heterogeneous profiles of 8, 16 and 32 devices (every device its own memory, FLOP/s
//! and bandwidth; one default link, or devices on three sites with fast links within
//! a site, or every pair its own link); and the `compare` table of BLOOM on
//! LinguaLinked's three phones.
//!
//! Run: `cargo bench -p shardc --bench planning` (`-- random [SIZES]` for the random profiles only, of those sizes)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shardc::frontend::hf::LowerOptions;
use shardc::render;
use shardc_passes::cost::Workload;
use shardc_passes::devices::{self, Device, Link, Profile};
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

/// Prompt 128, batch 1, the command line's defaults but the time limit.
fn request(objective: Objective, context: usize, time_limit: Duration) -> Request {
    let workload = Workload { batch: 1, prompt_len: 128, max_context: context as u64 };
    Request { time_limit, ..Request::new(workload, objective) }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// xorshift64*: seeded, so every run plans the same profiles.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        lo + (hi - lo) * (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Copy, Debug)]
enum Links {
    Default,
    Sites,
    EveryPair,
}

/// `n` devices that are all different, with about `total` bytes of memory among them.
fn random_profile(rng: &mut Rng, n: usize, total: f64, links: Links) -> Profile {
    let giga = 1e9;
    let devices = (0..n)
        .map(|i| Device {
            name: format!("r{i:02}"),
            memory: total / n as f64 * rng.uniform(0.4, 1.6),
            flops: [("*".to_string(), rng.uniform(50.0, 1500.0) * giga)].into(),
            bandwidth: rng.uniform(20.0, 100.0) * giga,
            kernels: None,
        })
        .collect();
    let default_link = Link { bandwidth: 125e6, latency: 2e-3 };
    let mut map = std::collections::BTreeMap::new();
    let site: Vec<usize> = (0..n).map(|_| rng.uniform(0.0, 3.0) as usize).collect();
    for a in 0..n {
        for b in a + 1..n {
            match links {
                Links::Default => {}
                Links::Sites if site[a] == site[b] => {
                    map.insert((a, b), Link { bandwidth: 1.25e9, latency: 0.3e-3 });
                }
                Links::Sites => {}
                Links::EveryPair => {
                    let link = Link { bandwidth: rng.uniform(12.5e6, 1.25e9), latency: rng.uniform(0.2e-3, 20e-3) };
                    map.insert((a, b), link);
                }
            }
        }
    }
    Profile { devices, default_link, links: map }
}

fn random_profiles(root: &Path, sizes: &[usize]) {
    let context = 4096;
    let g = graph(&root.join("fixtures/configs/llama-3-70b/config.json"), context);
    println!("Llama-3-70B (162 units), random profiles (seeded): ilp (one run each) against the file-order DP");
    println!(
        "{:<8} {:<10} {:<11} {:>4} {:>10} {:>28} {:>9} {:>10}",
        "devices", "links", "objective", "seed", "ilp", "status", "dp", "ilp/dp value"
    );
    let mut worst: Vec<(usize, &str, f64, f64)> = Vec::new();
    for &n in sizes {
        for links in [Links::Default, Links::Sites, Links::EveryPair] {
            for seed in 1..=4u64 {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (seed * 1_000_003 + n as u64));
                // About twice what the model needs, so that a choice of devices remains.
                let p = random_profile(&mut rng, n, 300e9, links);
                for objective in [Objective::Latency, Objective::Throughput] {
                    let req = request(objective, context, Duration::from_secs(30));
                    let prep = partition::prepare(&g, &p, &req).expect("prepare");
                    let t = Instant::now();
                    let o = solve(&prep.model.problem, Strategy::Ilp, &prep.opts);
                    let took = t.elapsed().as_secs_f64();
                    let t = Instant::now();
                    let dp = solve(&prep.model.problem, Strategy::Dp, &prep.opts);
                    let dp_took = t.elapsed().as_secs_f64();
                    let value = |o: &shardc_passes::plan::Outcome| {
                        o.figures.as_ref().filter(|f| f.feasible).map(|f| f.objective)
                    };
                    let status = if o.status.optimal {
                        format!("{} optimal", o.status.engine)
                    } else {
                        format!("{} gap {:.2}%", o.status.engine, o.status.gap.unwrap_or(f64::NAN) * 100.0)
                    };
                    let ratio = match (value(&o), value(&dp)) {
                        (Some(a), Some(b)) => format!("{:.4}", a / b),
                        (Some(_), None) => "dp: none".into(),
                        (None, _) => "none".into(),
                    };
                    if let (Some(a), Some(b)) = (value(&o), value(&dp)) {
                        assert!(a <= b * (1.0 + 1e-9), "ilp {a} worse than dp {b}");
                    }
                    let label = match links {
                        Links::Default => "default",
                        Links::Sites => "sites",
                        Links::EveryPair => "every pair",
                    };
                    println!(
                        "{:<8} {:<10} {:<11} {:>4} {:>8.1}ms {:>28} {:>7.1}ms {:>10}",
                        n,
                        label,
                        format!("{objective:?}"),
                        seed,
                        took * 1e3,
                        status,
                        dp_took * 1e3,
                        ratio
                    );
                    worst.push((
                        n,
                        label,
                        took,
                        if o.status.optimal { 0.0 } else { o.status.gap.unwrap_or(f64::INFINITY) },
                    ));
                }
            }
        }
    }
    println!();
    println!("{:<8} {:<10} {:>10} {:>12}", "devices", "links", "max time", "max gap");
    for &n in sizes {
        for label in ["default", "sites", "every pair"] {
            let rows: Vec<_> = worst.iter().filter(|r| r.0 == n && r.1 == label).collect();
            let time = rows.iter().map(|r| r.2).fold(0.0, f64::max);
            let gap = rows.iter().map(|r| r.3).fold(0.0, f64::max);
            println!("{:<8} {:<10} {:>8.1}ms {:>11.2}%", n, label, time * 1e3, gap * 100.0);
        }
    }
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "random") {
        let sizes: Vec<usize> = args[at + 1..].iter().filter_map(|a| a.parse().ok()).collect();
        random_profiles(&root, if sizes.is_empty() { &[8, 16, 32] } else { &sizes });
        return;
    }
    let context = 4096;
    println!("exact planning (ilp) vs file-order DP, context {context}, prompt 128, median of 5");
    println!(
        "{:<12} {:<9} {:<11} {:>6} {:>10} {:>16} {:>10} {:>8}",
        "model", "devices", "objective", "units", "ilp", "status", "dp", "ilp/dp"
    );
    for (model, profile) in [("llama-3-70b", "edge-16"), ("llama-3-70b", "distinct-16"), ("llama-3-8b", "lab-8")] {
        let g = graph(&root.join(format!("fixtures/configs/{model}/config.json")), context);
        let p = devices::load(&root.join(format!("fixtures/devices/{profile}.toml"))).expect("profile");
        for objective in [Objective::Latency, Objective::Throughput] {
            let req = request(objective, context, Duration::from_secs(10));
            let prep = partition::prepare(&g, &p, &req).expect("prepare");
            let mut status = String::new();
            let ilp = median(
                (0..5)
                    .map(|_| {
                        let t = Instant::now();
                        let o = solve(&prep.model.problem, Strategy::Ilp, &prep.opts);
                        let took = t.elapsed();
                        status = match (o.status.optimal, o.status.gap) {
                            (true, _) => format!("{} optimal", o.status.engine),
                            (false, Some(gap)) => format!("{} gap {:.2}%", o.status.engine, gap * 100.0),
                            (false, None) => format!("{} NOT optimal", o.status.engine),
                        };
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
            compute_dtype: Some("f16".into()),
            dtype: Some(shardc_ir::DType::F16),
            ..request(Objective::Throughput, 1024, Duration::from_secs(10))
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
    println!();
    random_profiles(&root, &[8, 16, 32]);
}

//! Property test: on random small instances the exact strategies equal exhaustive
//! search, and no strategy beats `ilp`.

use std::time::Duration;

use shardc_passes::devices::Link;
use shardc_passes::plan::{
    exhaustive, order_dp, solve, DeviceId, Engine, Objective, Problem, SharedWeight, SolveOptions, Strategy, UnitId,
};

/// xorshift64*: a small deterministic generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn instance(rng: &mut Rng, objective: Objective) -> Problem {
    let units = 1 + rng.below(10);
    let devices = 1 + rng.below(4);
    // Device specs; sometimes a copy of an earlier device, so classes form.
    let mut speed = Vec::new();
    let mut budget = Vec::new();
    for d in 0..devices {
        if d > 0 && rng.below(3) == 0 {
            let src = rng.below(d);
            speed.push(speed[src]);
            budget.push(budget[src]);
        } else {
            speed.push(rng.uniform(0.5, 4.0));
            budget.push(rng.uniform(1.0, 6.0));
        }
    }
    let work: Vec<f64> = (0..units).map(|_| rng.uniform(0.1, 2.0)).collect();
    let prefill = speed.iter().map(|s| work.iter().map(|w| 0.01 * w / s).collect()).collect();
    let decode = speed.iter().map(|s| work.iter().map(|w| 0.001 * w / s * 3.0).collect()).collect();
    let private_bytes: Vec<f64> = (0..units).map(|_| rng.uniform(0.2, 2.0)).collect();
    let activation_bytes: Vec<f64> = (0..units).map(|_| rng.uniform(0.0, 0.5)).collect();
    let shared = if units > 2 && rng.below(3) == 0 {
        vec![SharedWeight { bytes: rng.uniform(0.1, 1.0), units: vec![UnitId(0), UnitId(units - 1)] }]
    } else {
        vec![]
    };
    let default = Link { bandwidth: rng.uniform(10.0, 200.0), latency: rng.uniform(0.0, 0.002) };
    let mut links = vec![vec![default; devices]; devices];
    // Symmetric: both triangles written together, so by index.
    #[allow(clippy::needless_range_loop)]
    for a in 0..devices {
        for b in a + 1..devices {
            // Copies keep their original's links only sometimes: classes may split.
            if rng.below(4) == 0 {
                let l = Link { bandwidth: rng.uniform(10.0, 200.0), latency: rng.uniform(0.0, 0.002) };
                links[a][b] = l;
                links[b][a] = l;
            }
        }
    }
    let cut_prefill: Vec<f64> = (0..units.saturating_sub(1)).map(|_| rng.uniform(0.1, 1.0)).collect();
    let cut_decode = cut_prefill.iter().map(|c| c / 10.0).collect();
    Problem {
        prefill,
        decode,
        private_bytes,
        activation_bytes,
        shared,
        budget,
        cut_prefill,
        cut_decode,
        links,
        decode_tokens: rng.uniform(0.0, 50.0).floor(),
        objective,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-12)
}

#[test]
fn ilp_equals_exhaustive_search_and_beats_every_baseline() {
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let mut infeasible = 0;
    let mut classes_seen = 0;
    for case in 0..240 {
        let objective = if case % 2 == 0 { Objective::Latency } else { Objective::Throughput };
        let p = instance(&mut rng, objective);
        if shardc_passes::plan::class_dp::classes(&p).len() < p.devices() {
            classes_seen += 1;
        }
        let opts = SolveOptions {
            time_limit: Duration::from_secs(30),
            node_limit: 1_000_000,
            search_nodes: 1_000_000,
            groups: (0..p.units()).collect(),
            engine: None,
        };
        let truth = exhaustive::solve(&p);
        let ilp = solve(&p, Strategy::Ilp, &opts);
        let milp = solve(&p, Strategy::Ilp, &SolveOptions { engine: Some(Engine::Milp), ..opts.clone() });
        let search = solve(&p, Strategy::Ilp, &SolveOptions { engine: Some(Engine::Search), ..opts.clone() });
        match &truth {
            None => {
                infeasible += 1;
                assert!(ilp.plan.is_none(), "case {case}: class-dp found a plan for an infeasible instance");
                assert!(milp.plan.is_none(), "case {case}: milp found a plan for an infeasible instance");
                assert!(search.plan.is_none(), "case {case}: search found a plan for an infeasible instance");
                assert!(search.status.optimal, "case {case}: search did not prove infeasibility: {:?}", search.status);
            }
            Some((_, best)) => {
                for (name, o) in [("class-dp", &ilp), ("milp", &milp), ("search", &search)] {
                    let f = o
                        .figures
                        .as_ref()
                        .unwrap_or_else(|| panic!("case {case}: {name} found no plan ({:?})", o.status));
                    assert!(f.feasible, "case {case}: {name} plan infeasible");
                    assert!(close(f.objective, *best), "case {case}: {name} {} vs exhaustive {best}", f.objective);
                    assert!(o.status.optimal, "case {case}: {name} not proven optimal: {:?}", o.status);
                }
            }
        }
        let ilp_value = ilp.figures.as_ref().map(|f| f.objective);
        for strategy in [Strategy::Dp, Strategy::Proportional, Strategy::Uniform] {
            let o = solve(&p, strategy, &opts);
            if let Some(f) = o.figures.filter(|f| f.feasible) {
                let best = ilp_value.unwrap_or_else(|| panic!("case {case}: {strategy:?} feasible where ilp is not"));
                assert!(
                    f.objective >= best * (1.0 - 1e-9),
                    "case {case}: {strategy:?} {} beats ilp {best}",
                    f.objective
                );
            }
        }
    }
    assert!(infeasible >= 10, "only {infeasible} infeasible instances: the generator should make some");
    assert!(classes_seen >= 10, "only {classes_seen} instances with interchangeable devices");
}

/// Over every plan that keeps `order`'s devices, in order, each inside its held units:
/// the best feasible objective, and per stage the units some such plan gives it.
fn bounded_brute_force(
    p: &Problem,
    order: &[DeviceId],
    held: &[std::ops::Range<usize>],
) -> (Option<f64>, Vec<std::collections::BTreeSet<usize>>) {
    let mut best: Option<f64> = None;
    let mut reached = vec![std::collections::BTreeSet::new(); order.len()];
    exhaustive::each_plan_within(p, order, held, &mut |plan| {
        for (s, r) in plan.iter().zip(&mut reached) {
            r.extend(s.start..s.end);
        }
        if let Ok(f) = p.evaluate(plan) {
            if f.feasible && best.is_none_or(|b| f.objective < b) {
                best = Some(f.objective);
            }
        }
    });
    (best, reached)
}

#[test]
fn bounded_replanning_equals_brute_force_within_the_standby_units() {
    let mut rng = Rng(0x5EED_1234_ABCD_0002);
    let mut moved = 0;
    let mut checked = 0;
    for case in 0..300 {
        let objective = if case % 2 == 0 { Objective::Latency } else { Objective::Throughput };
        let p = instance(&mut rng, objective);
        let Some((plan, _)) = exhaustive::solve(&p) else { continue };
        let n = rng.below(3);
        let held = p.standby(&plan, n);
        for (s, h) in plan.iter().zip(&held) {
            assert!(h.start <= s.start && s.end <= h.end, "case {case}: held {h:?} does not contain {s:?}");
            assert!(h.start + n >= s.start && s.end + n >= h.end, "case {case}: held {h:?} beyond {n} of {s:?}");
            assert!(h.start <= s.start && s.end <= h.end && h.start < h.end, "case {case}: {h:?} misses {s:?}");
            assert!(p.memory(h.start, h.end) <= p.budget[s.device], "case {case}: held units exceed the budget");
        }
        // Measured speeds: one device slowed.
        let mut factor = vec![1.0; p.devices()];
        factor[plan[rng.below(plan.len())].device] = 1.0 + rng.uniform(0.0, 4.0);
        let q = p.slowed(&factor);
        let order: Vec<DeviceId> = plan.iter().map(|s| s.device).collect();
        let got = order_dp::solve_in(&q, &order, Some(&held));
        let (truth, reached) = bounded_brute_force(&q, &order, &held);
        // Every held unit is one its stage can reach: no weights held for nothing.
        for (j, (h, r)) in held.iter().zip(&reached).enumerate() {
            assert!(h.clone().eq(r.iter().copied()), "case {case}: stage {j} holds {h:?} but can reach {r:?}");
        }
        checked += 1;
        match (got, truth) {
            (Some((new, value)), Some(best)) => {
                assert!(close(value, best), "case {case}: bounded dp {value} vs brute force {best}");
                let f = q.evaluate(&new).unwrap();
                assert!(close(f.objective, value), "case {case}: reported value is not the plan's");
                assert!(new.iter().map(|s| s.device).eq(order.iter().copied()), "case {case}: device order changed");
                moved += usize::from(new != plan);
            }
            // The compiled plan itself is always a candidate.
            (got, truth) => panic!("case {case}: bounded dp {got:?} vs brute force {truth:?}"),
        }
    }
    assert!(checked >= 120, "only {checked} feasible instances");
    assert!(moved >= 20, "only {moved} instances where a boundary moved");
}

#[test]
fn a_node_budget_bounds_the_integer_program_the_same_way_on_any_machine() {
    let mut rng = Rng(0x5EED_1234_ABCD_0002);
    let mut cut_short = 0;
    for case in 0..60 {
        let objective = if case % 2 == 0 { Objective::Latency } else { Objective::Throughput };
        let p = instance(&mut rng, objective);
        let opts = SolveOptions {
            time_limit: Duration::from_secs(60),
            node_limit: 1,
            search_nodes: 1_000_000,
            groups: (0..p.units()).collect(),
            engine: Some(Engine::Milp),
        };
        let first = solve(&p, Strategy::Ilp, &opts);
        // The same budget on a "slower machine": another run, the same answer.
        let second = solve(&p, Strategy::Ilp, &opts);
        assert_eq!(first.plan, second.plan, "case {case}");
        assert_eq!((first.status.optimal, first.status.gap), (second.status.optimal, second.status.gap), "case {case}");
        if first.plan.is_some() && !first.status.optimal {
            cut_short += 1;
            let note = first.status.note.clone().unwrap_or_default();
            assert!(!note.contains("time limit"), "case {case}: the node budget stopped it, not the clock: {note}");
        }
    }
    assert!(cut_short > 0, "some instances need more than one node, so the budget was what stopped them");
}

/// Devices that are all different (no interchangeable classes) on 12–40 units, with one
/// default link, devices on sites, or every pair its own link.
fn distinct_instance(rng: &mut Rng, objective: Objective, links_kind: usize) -> Problem {
    let units = 12 + rng.below(29);
    let devices = 5 + rng.below(5);
    let mut p = instance(rng, objective);
    let work: Vec<f64> =
        (0..units).map(|u| if u % 2 == 0 { rng.uniform(0.2, 0.4) } else { rng.uniform(1.0, 1.6) }).collect();
    let speed: Vec<f64> = (0..devices).map(|_| rng.uniform(0.5, 4.0)).collect();
    let lean: Vec<f64> = (0..devices).map(|_| rng.uniform(0.5, 2.0)).collect();
    p.prefill = speed.iter().zip(&lean).map(|(s, l)| work.iter().map(|w| 0.01 * w / s * l).collect()).collect();
    p.decode = speed.iter().map(|s| work.iter().map(|w| 0.003 * w / s).collect()).collect();
    p.private_bytes = work.clone();
    p.activation_bytes = (0..units).map(|_| rng.uniform(0.0, 0.2)).collect();
    p.shared = if rng.below(3) == 0 {
        vec![SharedWeight { bytes: rng.uniform(0.1, 1.0), units: vec![UnitId(0), UnitId(units - 1)] }]
    } else {
        vec![]
    };
    let total: f64 = work.iter().sum();
    p.budget = (0..devices).map(|_| total / devices as f64 * rng.uniform(0.6, 2.5)).collect();
    // Links from negligible to costlier than a stage, so they bind in some instances.
    let scale = [1e4, 1e2, 1.0][rng.below(3)];
    let default = Link { bandwidth: scale * rng.uniform(1.0, 10.0), latency: rng.uniform(0.0, 0.002) };
    let site: Vec<usize> = (0..devices).map(|_| rng.below(3)).collect();
    p.links = vec![vec![default; devices]; devices];
    for a in 0..devices {
        for b in a + 1..devices {
            let own = match links_kind {
                0 => None,
                1 => (site[a] == site[b]).then_some(Link { bandwidth: default.bandwidth * 10.0, latency: 0.0 }),
                _ => Some(Link { bandwidth: scale * rng.uniform(1.0, 10.0), latency: rng.uniform(0.0, 0.002) }),
            };
            if let Some(l) = own {
                p.links[a][b] = l;
                p.links[b][a] = l;
            }
        }
    }
    p.cut_prefill = (0..units - 1).map(|_| rng.uniform(0.1, 1.0)).collect();
    p.cut_decode = p.cut_prefill.iter().map(|c| c / 10.0).collect();
    p.decode_tokens = rng.uniform(0.0, 200.0).floor();
    p
}

fn options() -> SolveOptions {
    SolveOptions {
        time_limit: Duration::from_secs(60),
        node_limit: 1,
        search_nodes: 50_000_000,
        groups: Vec::new(),
        engine: Some(Engine::Search),
    }
}

#[test]
fn the_search_over_distinct_devices_equals_the_exact_dp() {
    let mut rng = Rng(0x5EED_1234_ABCD_0003);
    let (mut binding, mut free, mut infeasible) = (0, 0, 0);
    for case in 0..150 {
        let objective = if case % 2 == 0 { Objective::Latency } else { Objective::Throughput };
        let p = distinct_instance(&mut rng, objective, case % 3);
        assert_eq!(shardc_passes::plan::class_dp::classes(&p).len(), p.devices(), "case {case}: devices alike");
        // Every device its own class: the class DP is the exhaustive DP over device sets.
        let truth = shardc_passes::plan::class_dp::solve(&p).expect("small enough for the class DP");
        let opts = SolveOptions { groups: (0..p.units()).collect(), ..options() };
        let search = solve(&p, Strategy::Ilp, &opts);
        assert_eq!(search.status.engine, "search", "case {case}");
        assert!(search.status.optimal, "case {case}: not proven: {:?}", search.status);
        match truth {
            None => {
                infeasible += 1;
                assert!(search.plan.is_none(), "case {case}: a plan for an infeasible instance");
            }
            Some((_, best)) => {
                let f = search.figures.as_ref().unwrap_or_else(|| panic!("case {case}: no plan ({:?})", search.status));
                assert!(f.feasible, "case {case}: plan infeasible");
                assert!(close(f.objective, best), "case {case}: search {} vs exact {best}", f.objective);
                // The dearest link anywhere: above the optimum, links constrain the search.
                let mut links = 0.0f64;
                for c in 0..p.units() - 1 {
                    for a in DeviceId::all(p.devices()) {
                        for b in DeviceId::all(p.devices()).filter(|&b| b != a) {
                            links = links.max(p.link_cost(c, a, b));
                        }
                    }
                }
                if objective == Objective::Throughput {
                    if links > best {
                        binding += 1;
                    } else {
                        free += 1;
                    }
                }
            }
        }
    }
    assert!(binding >= 5 && free >= 5, "links bind in {binding} throughput instances, not in {free}");
    assert!(infeasible >= 3, "only {infeasible} infeasible instances");
}

#[test]
fn a_node_budget_bounds_the_search_the_same_way_on_any_machine() {
    let mut rng = Rng(0x5EED_1234_ABCD_0004);
    let mut cut_short = 0;
    for case in 0..60 {
        let objective = if case % 2 == 0 { Objective::Latency } else { Objective::Throughput };
        let p = distinct_instance(&mut rng, objective, case % 3);
        let opts = SolveOptions { groups: (0..p.units()).collect(), search_nodes: 40, ..options() };
        let first = solve(&p, Strategy::Ilp, &opts);
        let second = solve(&p, Strategy::Ilp, &opts);
        assert_eq!(first.plan, second.plan, "case {case}");
        assert_eq!((first.status.optimal, first.status.gap), (second.status.optimal, second.status.gap), "case {case}");
        let Some((_, best)) = shardc_passes::plan::class_dp::solve(&p).expect("small") else { continue };
        let dp = solve(&p, Strategy::Dp, &opts).figures.filter(|f| f.feasible).map(|f| f.objective);
        if let Some(f) = first.figures.as_ref() {
            assert!(f.objective >= best * (1.0 - 1e-9), "case {case}: better than the optimum");
            if let Some(dp) = dp {
                assert!(f.objective <= dp * (1.0 + 1e-9), "case {case}: worse than dp");
            }
            if !first.status.optimal {
                cut_short += 1;
                let gap = first.status.gap.expect("a gap when not proven");
                // The gap is certified: the optimum lies within it.
                assert!(
                    best >= f.objective * (1.0 - gap) * (1.0 - 1e-9),
                    "case {case}: optimum {best} below the bound"
                );
                let note = first.status.note.clone().unwrap_or_default();
                assert!(note.contains("budget of 40 nodes"), "case {case}: {note}");
            }
        }
    }
    assert!(cut_short >= 5, "only {cut_short} instances need more than the budget");
}

#[test]
fn the_priced_feasibility_tests_agree_with_the_class_dp_beyond_twenty_devices() {
    // 21-26 devices in three to five kinds: the class DP solves them exactly; the search,
    // forced, takes every device as its own (above the dense table's 20 devices and
    // with links too cheap to bind: the priced depth-first tests).
    let mut rng = Rng(0x5EED_1234_ABCD_0005);
    let mut proven = 0;
    for case in 0..30 {
        let mut p = distinct_instance(&mut rng, Objective::Throughput, 0);
        let kinds = 3 + rng.below(3);
        let devices = 21 + rng.below(6);
        let kind: Vec<usize> = (0..devices).map(|d| if d < kinds { d } else { rng.below(kinds) }).collect();
        let spec: Vec<(Vec<f64>, Vec<f64>, f64)> = (0..kinds)
            .map(|k| {
                (p.prefill[k % p.devices()].clone(), p.decode[k % p.devices()].clone(), p.budget[k % p.devices()] / 3.0)
            })
            .collect();
        p.prefill = kind.iter().map(|&k| spec[k].0.clone()).collect();
        p.decode = kind.iter().map(|&k| spec[k].1.clone()).collect();
        p.budget = kind.iter().map(|&k| spec[k].2).collect();
        p.links = vec![vec![Link { bandwidth: 1e9, latency: 0.0 }; devices]; devices];
        let truth = shardc_passes::plan::class_dp::solve(&p).expect("few kinds");
        let opts = SolveOptions { groups: (0..p.units()).collect(), search_nodes: 2_000_000, ..options() };
        let search = solve(&p, Strategy::Ilp, &opts);
        let Some((_, best)) = truth else {
            assert!(search.plan.is_none(), "case {case}: a plan for an infeasible instance");
            continue;
        };
        let f = search.figures.as_ref().unwrap_or_else(|| panic!("case {case}: no plan ({:?})", search.status));
        assert!(
            f.feasible && f.objective >= best * (1.0 - 1e-9),
            "case {case}: {} beats the optimum {best}",
            f.objective
        );
        if search.status.optimal {
            proven += 1;
            assert!(close(f.objective, best), "case {case}: proven {} vs exact {best}", f.objective);
        } else {
            let gap = search.status.gap.expect("a gap when not proven");
            assert!(best >= f.objective * (1.0 - gap) * (1.0 - 1e-9), "case {case}: optimum {best} below the bound");
        }
    }
    assert!(proven >= 10, "only {proven} proven");
}

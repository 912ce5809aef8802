//! Partitioning: assign contiguous runs of units (stages) to devices.
//!
//! Strategies, side by side on one [`Problem`] and measured by one evaluator:
//! - `uniform`: equal layer counts over the devices in file order (DeepSpeed-style);
//! - `proportional`: layers by memory share over the devices in file order (exo-style);
//! - `dp`: exact for the file's device order, devices may be skipped (EdgeShard,
//!   PipeEdge);
//! - `ilp`: exact over which devices to use and in which order. Instances whose
//!   interchangeable-device state space is small enough go to [`class_dp`] (proven
//!   optimal); others, up to [`distinct::MAX_DEVICES`] devices, to the branch and
//!   bound of [`distinct`], seeded with `dp`'s plan and stopped at a node budget,
//!   reporting optimality or its gap; beyond that, the integer program in [`milp`]
//!   (`microlp`).

pub mod class_dp;
pub mod distinct;
pub mod exhaustive;
pub mod milp;
pub mod model;
pub mod order_dp;

use std::time::{Duration, Instant};

pub use shardc_format::plan::{SolverStatus, Strategy};
pub use shardc_format::problem::{
    self, DeviceId, Figures, Objective, Plan, Problem, SharedWeight, Stage, StageId, UnitId,
};

/// A strategy's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub strategy: Strategy,
    /// The plan, feasible or not (`uniform` and `proportional` do not look at memory).
    pub plan: Option<Plan>,
    pub figures: Option<Figures>,
    pub status: SolverStatus,
}

/// Options of a solve.
#[derive(Clone, Debug)]
pub struct SolveOptions {
    /// Time limit of the integer program (a safety net: see `node_limit`).
    pub time_limit: Duration,
    /// Branch-and-bound nodes the integer program may solve: what bounds its search,
    /// so that the plan depends on the inputs alone, not on the machine's speed.
    pub node_limit: u64,
    /// Search nodes the distinct-device branch and bound may use (bounds it the same way
    /// on any machine).
    pub search_nodes: u64,
    /// Group (transformer layer) of each unit, for `uniform` and `proportional`.
    pub groups: Vec<usize>,
    /// Force the `ilp` strategy onto one engine (tests and benchmarks).
    pub engine: Option<Engine>,
}

/// The engines of the `ilp` strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    ClassDp,
    Search,
    Milp,
}

/// Default branch-and-bound node budget of the integer program (`--node-limit`).
pub const DEFAULT_NODE_LIMIT: u64 = 2000;

/// Largest integer program (binaries: units × devices) tried; measured, `microlp`
/// proves nothing beyond a few hundred in its time limit, and memory grows with it.
pub const MAX_MILP_BINARIES: usize = 4096;

/// Run one strategy.
pub fn solve(p: &Problem, strategy: Strategy, opts: &SolveOptions) -> Outcome {
    let started = Instant::now();
    let file_order: Vec<DeviceId> = DeviceId::all(p.devices()).collect();
    let (plan, engine, optimal, gap, note) = match strategy {
        Strategy::Uniform => {
            let plan = by_shares(p, &opts.groups, &vec![1.0; p.devices()]);
            (Some(plan), "uniform", false, None, None)
        }
        Strategy::Proportional => {
            let plan = by_shares(p, &opts.groups, &p.budget);
            (Some(plan), "proportional", false, None, None)
        }
        Strategy::Dp => match order_dp::solve(p, &file_order) {
            Some((plan, _)) => (Some(plan), "order-dp", false, None, None),
            None => {
                (None, "order-dp", false, None, Some("the devices cannot hold the model in file order".to_string()))
            }
        },
        Strategy::Ilp => {
            let engine = opts.engine.unwrap_or(if class_dp::fits(p) {
                Engine::ClassDp
            } else if p.devices() <= distinct::MAX_DEVICES {
                Engine::Search
            } else {
                Engine::Milp
            });
            let structured = if engine == Engine::ClassDp { class_dp::solve(p) } else { None };
            match structured {
                Some(Some((plan, _))) => (Some(plan), "class-dp", true, None, None),
                Some(None) => {
                    (None, "class-dp", true, None, Some("no choice of devices can hold the model".to_string()))
                }
                None if engine == Engine::Search => search(p, &file_order, opts),
                None if p.units() * p.devices() > MAX_MILP_BINARIES => {
                    let note = format!(
                        "{} units on {} distinct devices would need {} binaries, more than the {MAX_MILP_BINARIES} the integer program takes on; planned in file order by the exact order DP (not proven optimal over the choice and order of devices)",
                        p.units(),
                        p.devices(),
                        p.units() * p.devices()
                    );
                    match order_dp::solve(p, &file_order) {
                        Some((plan, _)) => (Some(plan), "order-dp", false, None, Some(note)),
                        None => (
                            None,
                            "order-dp",
                            false,
                            None,
                            Some(note + "; the devices cannot hold the model in file order"),
                        ),
                    }
                }
                None => {
                    let warm = order_dp::solve(p, &file_order).map(|(plan, _)| plan);
                    let (found, status) = milp::solve(p, warm.as_deref(), opts.time_limit, opts.node_limit);
                    // The program fixes the device order; the order's exact split can only improve it.
                    let found = found.map(|(plan, value)| {
                        let order: Vec<DeviceId> = plan.iter().map(|s| s.device).collect();
                        match order_dp::solve(p, &order) {
                            Some((better, v)) if v < value => (better, v),
                            _ => (plan, value),
                        }
                    });
                    let found = match (found, warm) {
                        (Some(f), _) => Some(f.0),
                        (None, w) => w,
                    };
                    match status {
                        milp::MilpStatus::Optimal => (found, "milp", true, None, None),
                        milp::MilpStatus::Feasible { gap, timed_out: false } => (found, "milp", false, gap, None),
                        milp::MilpStatus::Feasible { gap, timed_out: true } => {
                            let note = format!(
                                "the integer program stopped at its {:.0} s time limit before its {} node budget: another machine may choose another plan; raise --time-limit (or lower --node-limit) for a plan that depends on the inputs alone",
                                opts.time_limit.as_secs_f64(),
                                opts.node_limit
                            );
                            (found, "milp", false, gap, Some(note))
                        }
                        milp::MilpStatus::Infeasible => {
                            (None, "milp", true, None, Some("no choice of devices can hold the model".to_string()))
                        }
                        milp::MilpStatus::Unknown(why) => {
                            let why = if found.is_some() {
                                why + "; planned in file order by the exact order DP"
                            } else {
                                why
                            };
                            (found, "milp", false, None, Some(why))
                        }
                    }
                }
            }
        }
    };
    let figures = plan.as_ref().and_then(|pl| p.evaluate(pl).ok());
    let note = note.or_else(|| match &figures {
        Some(f) if !f.feasible => Some("a stage exceeds its device's memory".to_string()),
        _ => None,
    });
    Outcome {
        strategy,
        plan,
        figures,
        status: SolverStatus {
            engine: engine.to_string(),
            optimal,
            gap,
            time_ms: started.elapsed().as_secs_f64() * 1e3,
            note,
        },
    }
}

type Answer = (Option<Plan>, &'static str, bool, Option<f64>, Option<String>);

/// The distinct-device branch and bound, seeded with the file-order DP's plan (so it
/// never returns a worse one).
fn search(p: &Problem, file_order: &[DeviceId], opts: &SolveOptions) -> Answer {
    let warm = distinct::plan_in_order(p, file_order);
    let limits = distinct::Limits { nodes: opts.search_nodes, time: opts.time_limit };
    let Some(found) = distinct::solve(p, warm.clone(), limits) else {
        return (warm.map(|w| w.0), "order-dp", false, None, Some("the search declined the instance".into()));
    };
    let proven = found.proven();
    let gap = if proven { None } else { found.gap() };
    let note = match (&found.plan, proven) {
        (None, true) => Some("no choice of devices can hold the model".to_string()),
        (None, false) => Some(format!(
            "the search stopped after {} nodes before finding a plan or proving there is none",
            found.nodes
        )),
        (Some(_), false) if found.timed_out => Some(format!(
            "the search stopped at its {:.0} s time limit before its {} node budget: another machine may choose another plan; raise --time-limit for a plan that depends on the inputs alone",
            opts.time_limit.as_secs_f64(),
            opts.search_nodes
        )),
        (Some(_), false) => Some(format!("the search stopped at its budget of {} nodes", opts.search_nodes)),
        (Some(_), true) => None,
    };
    (found.plan.map(|f| f.0), "search", proven, gap, note)
}

/// Split the groups over the devices in file order by `shares` (largest remainder);
/// devices whose share rounds to nothing are skipped.
fn by_shares(p: &Problem, groups: &[usize], shares: &[f64]) -> Plan {
    let n_groups = groups.iter().max().map_or(0, |g| g + 1);
    let devices = p.devices().min(n_groups.max(1));
    let total: f64 = shares[..devices].iter().sum();
    let exact: Vec<f64> = shares[..devices].iter().map(|s| s / total * n_groups as f64).collect();
    let mut counts: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut rest = n_groups - counts.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..devices).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())).then(a.cmp(&b)));
    for &d in order.iter().cycle().take(devices * 2) {
        if rest == 0 {
            break;
        }
        counts[d] += 1;
        rest -= 1;
    }
    let mut plan = Vec::new();
    let mut group_start = 0;
    for (d, &count) in counts.iter().enumerate() {
        if count == 0 {
            continue;
        }
        let group_end = group_start + count;
        let start = groups.iter().position(|&g| g >= group_start).unwrap_or(p.units());
        let end = groups.iter().position(|&g| g >= group_end).unwrap_or(p.units());
        if end > start {
            plan.push(Stage { device: DeviceId(d), start, end });
        }
        group_start = group_end;
    }
    plan
}

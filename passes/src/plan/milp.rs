//! The partitioning problem as a mixed-integer program, solved with `microlp`.
//!
//! Variables: `x[u][d]` (unit `u` runs on device `d`, binary), `s[u][d]` (a block
//! of `d` starts at `u`, binary; at most one per device, so every device runs one
//! contiguous block and the order of the blocks is the pipeline order),
//! `v[u][a][b]` (the cut after `u` goes from `a` to `b`, continuous in [0, 1], pushed
//! to `max(0, x[u][a] + x[u+1][b] − 1)` by the objective), `e[w][d]` (shared weight
//! `w` stored on `d`), `peak[d]` (largest activation on `d`), and for the throughput
//! objective the bottleneck `t`. Memory rows are scaled by each budget and times are
//! in milliseconds, which keeps coefficients within the solver's range.

use std::time::Duration;

use microlp::{ComparisonOp, OptimizationDirection, Problem as Lp, Variable};

use super::problem::{DeviceId, Objective, Plan, Problem, Stage};

/// How a MILP solve ended.
#[derive(Clone, Debug, PartialEq)]
pub enum MilpStatus {
    /// Proven optimal.
    Optimal,
    /// Stopped by its node budget (or, when `timed_out`, by the time limit first)
    /// with a feasible plan; relative gap to the best bound.
    Feasible { gap: Option<f64>, timed_out: bool },
    /// Proven infeasible.
    Infeasible,
    /// Stopped before any plan was found, or the solver failed.
    Unknown(String),
}

/// Solve within a budget of branch-and-bound nodes (deterministic: the same problem
/// gives the same plan on any machine) and a time limit (a safety net: a plan it cuts
/// short depends on the machine's speed, and says so), seeded with `warm` when given.
pub fn solve(
    p: &Problem,
    warm: Option<&[Stage]>,
    limit: Duration,
    node_limit: u64,
) -> (Option<(Plan, f64)>, MilpStatus) {
    let n = p.units();
    let nd = p.devices();
    let ms = 1e3;
    let mut lp = Lp::new(OptimizationDirection::Minimize);
    lp.set_time_limit(limit);
    let latency = p.objective == Objective::Latency;
    let t = (!latency).then(|| lp.add_var(1.0, (0.0, f64::INFINITY)));
    let mut x = vec![Vec::with_capacity(nd); n];
    for (u, row) in x.iter_mut().enumerate() {
        for d in DeviceId::all(nd) {
            let cost = if latency { p.stage_latency(d, u, u + 1) * ms } else { 0.0 };
            row.push(lp.add_binary_var(cost));
        }
    }
    let mut s = vec![Vec::with_capacity(nd); n];
    for row in s.iter_mut() {
        for _ in 0..nd {
            row.push(lp.add_binary_var(0.0));
        }
    }
    // Every unit on exactly one device.
    for row in &x {
        lp.add_constraint(row.iter().map(|&v| (v, 1.0)).collect::<Vec<_>>(), ComparisonOp::Eq, 1.0);
    }
    // Block starts: s[u][d] >= x[u][d] - x[u-1][d]; one start per device.
    for d in DeviceId::all(nd) {
        lp.add_constraint([(s[0][d], 1.0), (x[0][d], -1.0)], ComparisonOp::Ge, 0.0);
        for u in 1..n {
            lp.add_constraint([(s[u][d], 1.0), (x[u][d], -1.0), (x[u - 1][d], 1.0)], ComparisonOp::Ge, 0.0);
        }
        lp.add_constraint((0..n).map(|u| (s[u][d], 1.0)).collect::<Vec<_>>(), ComparisonOp::Le, 1.0);
    }
    // Cuts between different devices.
    for u in 0..n.saturating_sub(1) {
        for a in DeviceId::all(nd) {
            for b in DeviceId::all(nd) {
                if a == b {
                    continue;
                }
                let cost = p.link_cost(u, a, b) * ms;
                let v = lp.add_var(if latency { cost } else { 0.0 }, (0.0, 1.0));
                lp.add_constraint([(v, 1.0), (x[u][a], -1.0), (x[u + 1][b], -1.0)], ComparisonOp::Ge, -1.0);
                if let Some(t) = t {
                    lp.add_constraint([(t, 1.0), (v, -cost)], ComparisonOp::Ge, 0.0);
                }
            }
        }
    }
    // Memory, scaled by each budget: private + shared + peak <= 1.
    for d in DeviceId::all(nd) {
        let budget = p.budget[d];
        let peak = lp.add_var(0.0, (0.0, f64::INFINITY));
        let mut row: Vec<(Variable, f64)> = (0..n).map(|u| (x[u][d], p.private_bytes[u] / budget)).collect();
        for (row_u, activation) in x.iter().zip(&p.activation_bytes) {
            lp.add_constraint([(peak, 1.0), (row_u[d], -activation / budget)], ComparisonOp::Ge, 0.0);
        }
        row.push((peak, 1.0));
        for w in &p.shared {
            let e = lp.add_var(0.0, (0.0, 1.0));
            for &u in &w.units {
                lp.add_constraint([(e, 1.0), (x[u][d], -1.0)], ComparisonOp::Ge, 0.0);
            }
            row.push((e, w.bytes / budget));
        }
        lp.add_constraint(row, ComparisonOp::Le, 1.0);
        if let Some(t) = t {
            let mut r: Vec<(Variable, f64)> = (0..n).map(|u| (x[u][d], -p.decode[d][u] * ms)).collect();
            r.push((t, 1.0));
            lp.add_constraint(r, ComparisonOp::Ge, 0.0);
        }
    }
    let mut options = microlp::SolveOptions::default();
    options.time_limit = Some(limit);
    options.node_limit = Some(node_limit);
    if let Some(plan) = warm {
        let mut hint = Vec::new();
        for st in plan {
            for u in st.start..st.end {
                for d in DeviceId::all(nd) {
                    hint.push((x[u][d], f64::from(u8::from(d == st.device))));
                    hint.push((s[u][d], f64::from(u8::from(d == st.device && u == st.start))));
                }
            }
        }
        options.warm_start = Some(hint);
    }
    let outcome = match lp.solve_with(options) {
        Ok(o) => o,
        Err(microlp::Error::Infeasible) => return (None, MilpStatus::Infeasible),
        Err(e) => return (None, MilpStatus::Unknown(e.to_string())),
    };
    let optimal = outcome.termination_reason() == microlp::TerminationReason::ProvenOptimal;
    let Some(solution) = outcome.solution() else {
        return (
            None,
            MilpStatus::Unknown(match outcome.termination_reason() {
                microlp::TerminationReason::TimeLimit => format!(
                    "the integer program stopped at its {:.0} s time limit before finding a plan: another machine may find one; raise --time-limit for a plan that depends on the inputs alone",
                    limit.as_secs_f64()
                ),
                other => format!("the integer program stopped ({other:?}) before finding a plan"),
            }),
        );
    };
    let gap = solution.gap();
    // Read the blocks back: device of each unit, then runs.
    let mut plan: Plan = Vec::new();
    for (u, row) in x.iter().enumerate() {
        let d = DeviceId::all(nd)
            .max_by(|&a, &b| solution.var_value(row[a]).total_cmp(&solution.var_value(row[b])))
            .unwrap_or(DeviceId(0));
        match plan.last_mut() {
            Some(st) if st.device == d => st.end = u + 1,
            _ => plan.push(Stage { device: d, start: u, end: u + 1 }),
        }
    }
    let value = match p.evaluate(&plan) {
        Ok(f) if f.feasible => f.objective,
        Ok(_) => return (None, MilpStatus::Unknown("the solver's plan exceeds a memory budget".into())),
        Err(e) => return (None, MilpStatus::Unknown(format!("the solver's plan is malformed: {e}"))),
    };
    let timed_out = outcome.termination_reason() == microlp::TerminationReason::TimeLimit;
    let status = if optimal { MilpStatus::Optimal } else { MilpStatus::Feasible { gap, timed_out } };
    (Some((plan, value)), status)
}

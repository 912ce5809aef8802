//! Exact search over which devices to use and in which order when the devices are
//! all different (no interchangeable classes for [`super::class_dp`] to count).
//!
//! Both objectives search device sequences; what differs is how a partial sequence is
//! bounded:
//! - latency ([`latency`]): best-first branch and bound. A partial plan is a set of
//!   used devices, the last of them and, per unit position, the cheapest way to cover
//!   the units before it with exactly those devices ending on that one. Its bound adds
//!   the cheapest completion when devices may be reused, each use priced by a
//!   Lagrange multiplier of "every device at most once" (chosen by subgradient ascent
//!   at the root), less the multipliers of the devices still free. The relaxed
//!   completions never take a device again two stages later, and never take again the
//!   few devices the relaxed plans reused most (their use is part of the state).
//!   Partial plans with the same devices and last device are merged: a position
//!   another one reaches cheaper is dropped. The incumbent is improved by a local
//!   search over device orders ([`improve`]) before and after the ascent.
//! - throughput ([`bottleneck`]): the optimum is one of finitely many stage or link
//!   times; bisection over them, each step a depth-first search for a sequence that
//!   keeps every stage and link within the candidate, pruned when the units left
//!   exceed the longest runs the free devices could take, and by the positions
//!   already reached with the same devices and last device.
//!
//! Both stop at a budget of search nodes (the plan depends on the inputs alone) or at
//! a time limit (a safety net that says so), with the best plan found and a proven
//! lower bound on the optimum, so the status line gives the gap.

pub mod bottleneck;
mod improve;
mod knapsack;
mod lagrange;
pub mod latency;

use std::time::{Duration, Instant};

use super::problem::{DeviceId, Objective, Plan, Problem};

/// Most devices the search takes on (a device set is a 64-bit mask).
pub const MAX_DEVICES: usize = 64;

/// Default budget of search nodes: one-stage extensions of a partial plan (per device
/// set for latency; per set in a feasibility test for throughput). Measured: a few
/// seconds of search on this project's 2-core machine.
pub const DEFAULT_NODES: u64 = 2_000_000;

/// What the search found.
#[derive(Clone, Debug)]
pub struct Found {
    /// The best plan and its objective, if any plan fits.
    pub plan: Option<(Plan, f64)>,
    /// A proven lower bound on the optimum (infinite when proven infeasible).
    pub lower: f64,
    /// Search nodes used (one-stage extensions formed).
    pub nodes: u64,
    /// The time limit, not the node budget, ended the search.
    pub timed_out: bool,
}

impl Found {
    /// Proven optimal (or proven infeasible).
    pub fn proven(&self) -> bool {
        match &self.plan {
            Some((_, value)) => self.lower >= value * (1.0 - REL_EPS) - ABS_EPS,
            None => self.lower == f64::INFINITY,
        }
    }

    /// Relative gap between the plan and the lower bound.
    pub fn gap(&self) -> Option<f64> {
        let (_, value) = self.plan.as_ref()?;
        Some(if *value > 0.0 { ((value - self.lower) / value).max(0.0) } else { 0.0 })
    }
}

/// Relative tolerance of comparisons between sums formed in different orders.
pub(crate) const REL_EPS: f64 = 1e-9;
pub(crate) const ABS_EPS: f64 = 1e-15;

/// Limits of one search.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub nodes: u64,
    pub time: Duration,
}

/// The search, or `None` when there are more devices than it takes on.
pub fn solve(p: &Problem, incumbent: Option<(Plan, f64)>, limits: Limits) -> Option<Found> {
    if p.devices() > MAX_DEVICES || p.units() == 0 {
        return None;
    }
    let t = Tables::new(p);
    let clock = Clock { started: Instant::now(), limit: limits.time };
    Some(match p.objective {
        Objective::Latency => latency::solve(&t, incumbent, limits.nodes, &clock),
        Objective::Throughput => bottleneck::solve(&t, incumbent, limits.nodes, &clock),
    })
}

pub(crate) struct Clock {
    started: Instant,
    limit: Duration,
}

impl Clock {
    pub(crate) fn out(&self) -> bool {
        self.started.elapsed() > self.limit
    }
}

/// Per-device prefix sums and memory reach.
pub(crate) struct Tables<'a> {
    pub p: &'a Problem,
    pub n: usize,
    pub nd: usize,
    /// `acc[d][u]`: objective cost of units `0..u` on `d`.
    pub acc: Vec<Vec<f64>>,
    /// `reach[d][s]`: farthest end of a stage starting at `s` on `d` that fits its memory.
    pub reach: Vec<Vec<usize>>,
    /// Prefix sums of each unit's decode time summed over the devices (a size).
    pub weight: Vec<f64>,
    /// Objective cost of the link across each cut, `[cut][a][b]`.
    links: Vec<f64>,
    /// The costliest of them.
    pub max_link: f64,
    /// Link class of each device (the index of its first member): partial plans that
    /// end on devices of one class continue at the same link costs, so they are merged.
    pub link_class: Vec<usize>,
    /// For a device interchangeable with earlier ones (same speeds, memory and links),
    /// the set of those: a plan can always use such devices in index order, so a search
    /// takes a device only after its twins before it.
    pub twins_before: Vec<u64>,
}

impl Tables<'_> {
    /// Whether `d` may join a partial plan using `set`.
    pub fn may_use(&self, set: u64, d: usize) -> bool {
        set & (1 << d) == 0 && set & self.twins_before[d] == self.twins_before[d]
    }
}

impl<'a> Tables<'a> {
    pub fn new(p: &'a Problem) -> Self {
        let n = p.units();
        let nd = p.devices();
        let acc = DeviceId::all(nd)
            .map(|d| {
                let mut acc = Vec::with_capacity(n + 1);
                acc.push(0.0);
                for u in 0..n {
                    let unit = p.stage_cost(d, u, u + 1);
                    acc.push(acc[u] + unit);
                }
                acc
            })
            .collect();
        let reach = DeviceId::all(nd).map(|d| reaches(n, |s, e| e <= n && p.memory(s, e) <= p.budget[d])).collect();
        let mut links = Vec::with_capacity(n.saturating_sub(1) * nd * nd);
        for cut in 0..n.saturating_sub(1) {
            for a in DeviceId::all(nd) {
                links.extend(DeviceId::all(nd).map(|b| p.link_cost(cut, a, b)));
            }
        }
        let mut weight = vec![0.0];
        for u in 0..n {
            let w: f64 = p.decode.iter().map(|row| row[u]).sum();
            weight.push(weight[u] + w);
        }
        let mut twins_before = vec![0u64; nd];
        for class in super::class_dp::classes(p) {
            for (i, d) in class.iter().enumerate() {
                twins_before[d.index()] = class[..i].iter().fold(0, |m, e| m | 1 << e.index());
            }
        }
        let max_link = links.iter().copied().filter(|x| !x.is_nan()).fold(0.0, f64::max);
        Tables { p, n, nd, acc, reach, weight, links, max_link, link_class: link_classes(p), twins_before }
    }

    pub fn stage(&self, d: usize, start: usize, end: usize) -> f64 {
        self.acc[d][end] - self.acc[d][start]
    }

    /// Link cost across the cut before unit `start` (`start >= 1`).
    pub fn link(&self, start: usize, a: usize, b: usize) -> f64 {
        self.links[((start - 1) * self.nd + a) * self.nd + b]
    }

    /// The exact split for a device sequence (the search's own sums are only used to
    /// compare), evaluated the way every strategy is.
    pub fn plan_for(&self, order: &[usize]) -> Option<(Plan, f64)> {
        let order: Vec<DeviceId> = order.iter().map(|&d| DeviceId(d)).collect();
        plan_in_order(self.p, &order)
    }
}

/// The best feasible plan using devices of `order` in that order (order DP) and its
/// objective as [`Problem::evaluate`] gives it.
pub fn plan_in_order(p: &Problem, order: &[DeviceId]) -> Option<(Plan, f64)> {
    let (plan, _) = super::order_dp::solve(p, order)?;
    let f = p.evaluate(&plan).ok().filter(|f| f.feasible)?;
    Some((plan, f.objective))
}

/// For each start `s < n`, the farthest end `e >= s` with `fits(s, e)`, for a predicate
/// monotone in both ends (true for a shorter run inside a fitting one): the end never
/// falls as the start grows, so one pass finds them all.
pub(crate) fn reaches(n: usize, fits: impl Fn(usize, usize) -> bool) -> Vec<usize> {
    let mut end = 0;
    (0..n)
        .map(|s| {
            end = end.max(s);
            while fits(s, end + 1) {
                end += 1;
            }
            end
        })
        .collect()
}

/// Devices whose links to every other device are the same (devices on one site of a
/// per-pair profile; every device of a profile with only a default link) form a class.
fn link_classes(p: &Problem) -> Vec<usize> {
    let nd = p.devices();
    let alike = |a: DeviceId, b: DeviceId| {
        DeviceId::all(nd).filter(|&x| x != a && x != b).all(|x| p.links[a][x] == p.links[b][x])
    };
    let mut class = vec![usize::MAX; nd];
    for d in DeviceId::all(nd) {
        if class[d] != usize::MAX {
            continue;
        }
        class[d] = d.index();
        let mut members = vec![d];
        for e in DeviceId::all(nd).skip(d.index() + 1) {
            if class[e] == usize::MAX && members.iter().all(|&m| alike(m, e)) {
                class[e] = d.index();
                members.push(e);
            }
        }
    }
    class
}

/// Keep the better of two plans.
pub(crate) fn better(a: Option<(Plan, f64)>, b: Option<(Plan, f64)>) -> Option<(Plan, f64)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.1 < a.1 { b } else { a }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use crate::plan::problem::{Link, Objective, Problem};

    /// A latency problem of `units` units (light and heavy in turn) on devices of the
    /// given speeds and memories, every pair its own link.
    pub fn problem(speed: &[f64], budget: &[f64], units: usize) -> Problem {
        let work: Vec<f64> = (0..units).map(|u| [0.3, 1.2, 0.25, 1.4, 0.35, 1.1, 0.3, 1.5][u % 8]).collect();
        let per = |scale: f64| speed.iter().map(|s| work.iter().map(|w| scale * w / s).collect()).collect();
        let nd = speed.len();
        let mut links = vec![vec![Link { bandwidth: 50.0, latency: 0.001 }; nd]; nd];
        for a in 0..nd {
            for b in a + 1..nd {
                let bandwidth = [5.0, 400.0, 20.0, 90.0, 50.0][(a * 7 + b * 3) % 5];
                links[a][b] = Link { bandwidth, latency: 0.0005 };
                links[b][a] = links[a][b];
            }
        }
        Problem {
            prefill: per(0.01),
            decode: per(0.003),
            private_bytes: work.clone(),
            activation_bytes: vec![0.05; units],
            shared: vec![],
            budget: budget.to_vec(),
            cut_prefill: vec![0.5; units - 1],
            cut_decode: vec![0.05; units - 1],
            links,
            decode_tokens: 20.0,
            objective: Objective::Latency,
        }
    }

    pub fn permutations(items: Vec<usize>) -> Vec<Vec<usize>> {
        if items.len() <= 1 {
            return vec![items];
        }
        let mut out = Vec::new();
        for i in 0..items.len() {
            let mut rest = items.clone();
            let first = rest.remove(i);
            for mut p in permutations(rest) {
                p.insert(0, first);
                out.push(p);
            }
        }
        out
    }
}

//! Runtime load balancing: what a compile with `--standby` tells the runtime
//! (`balance.json`), routing for any plan, and the balancer that watches per-stage
//! times and decides when moving stage boundaries pays.
//!
//! The balancer keeps each stage's decode compute times (per step, slowdowns
//! included) over a sliding window. Every half window it turns the medians into one
//! speed factor per device — measured over what the compile-time cost model predicted
//! for the units the device runs — scales the compile-time [`Problem`] by them, and
//! re-plans with [`order_dp::solve_in`]: same devices in the same order, each confined
//! to the units whose weights its package holds, judged by the time per token for the
//! requests actually in flight (see [`token_time`]). It moves only when the predicted gain
//! clears the threshold plus the window's own noise (the widest relative interquartile
//! range), twice in a row (half a window apart); after a move the window starts again,
//! so a decision is always made on times measured under the plan in force.

use std::collections::VecDeque;

use serde::Serialize;
pub use shardc_format::balance::{BalanceSpec, Crossing, Route, StageView, FORMAT};
use shardc_passes::plan::{order_dp, DeviceId, Objective, Problem, Stage};

/// When to re-plan.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct BalanceOptions {
    /// Decode steps per stage the decision looks at.
    pub window: usize,
    /// Move only when the predicted objective improves by more than this fraction.
    pub threshold: f64,
}

impl Default for BalanceOptions {
    fn default() -> Self {
        BalanceOptions { window: 8, threshold: 0.15 }
    }
}

/// One look at the measured times, and what came of it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    /// Decode steps the client had completed (all requests) when it decided.
    pub after_steps: u64,
    /// Per stage: median decode compute per step over the window, ms.
    pub measured_ms: Vec<f64>,
    /// Per stage: what the compile-time cost model predicts for the same units, ms.
    pub modelled_ms: Vec<f64>,
    /// Per stage: measured over modelled, the device's speed factor.
    pub factor: Vec<f64>,
    pub old: Vec<StageView>,
    /// The plan after the decision: the best the standby units allow when moving, else
    /// the old one.
    pub new: Vec<StageView>,
    /// Requests in flight when deciding.
    pub in_flight: usize,
    /// Predicted time per generated token with that many requests in flight, under
    /// measured speeds: max(sum of stage and link times / in flight, slowest stage or
    /// link), ms. For the plan in force and for the best plan the standby units allow.
    pub old_token_ms: f64,
    pub new_token_ms: f64,
    /// old / new token time.
    pub predicted_gain: f64,
    /// The widest interquartile range of a stage's window, relative to its median.
    pub noise: f64,
    /// The gain a move needed: 1 + threshold + noise.
    pub required_gain: f64,
    /// The best move cleared the bar for the first time: it is made if the next look
    /// (half a window later) agrees.
    pub confirming: bool,
    pub moved: bool,
    /// For moves: waiting for in-flight steps, then switching (plan sent to every
    /// device until all reported ready, KV cache moved), ms, and KV-cache bytes moved.
    pub drain_ms: Option<f64>,
    pub switch_ms: Option<f64>,
    pub kv_bytes: Option<u64>,
}

/// Seconds per generated token of `plan` with `k` requests in flight: the requests
/// share the pipeline, so a token takes the sum of stage and link times over `k`, but
/// never less than the slowest stage or link. Prefill is over by the time anyone re-plans.
pub fn token_time(q: &Problem, plan: &[Stage], k: usize) -> f64 {
    q.evaluate(plan).map_or(f64::INFINITY, |f| {
        if f.feasible {
            (f.decode_s / k as f64).max(f.bottleneck_s)
        } else {
            f64::INFINITY
        }
    })
}

/// The best plan within the held units for `k` requests in flight: the bounded
/// planner's answers for the sum (one request) and for the slowest stage (a full
/// pipeline), whichever gives the shorter token time — or the plan in force. Returns
/// it with the token times of the plan in force and of it.
pub fn replan(q: &Problem, plan: &[Stage], held: &[std::ops::Range<usize>], k: usize) -> (Vec<Stage>, f64, f64) {
    let order: Vec<DeviceId> = plan.iter().map(|s| s.device).collect();
    let old = token_time(q, plan, k);
    let mut best = (plan.to_vec(), old);
    for objective in [Objective::Latency, Objective::Throughput] {
        let mut p = q.clone();
        p.objective = objective;
        p.decode_tokens = 1.0;
        p.prefill.iter_mut().flatten().for_each(|t| *t = 0.0);
        p.cut_prefill.iter_mut().for_each(|b| *b = 0.0);
        if let Some((candidate, _)) = order_dp::solve_in(&p, &order, Some(held)) {
            let t = token_time(q, &candidate, k);
            if t < best.1 {
                best = (candidate, t);
            }
        }
    }
    (best.0, old, best.1)
}

/// Watches stage times and proposes moves.
pub struct Balancer {
    pub spec: BalanceSpec,
    pub opts: BalanceOptions,
    /// The plan in force.
    pub plan: Vec<Stage>,
    samples: Vec<VecDeque<f64>>,
    fresh: Vec<usize>,
    /// The last look found a move that cleared the bar.
    cleared_last: bool,
    pub decisions: Vec<Decision>,
}

/// Longest window (decode steps per stage) the balancer keeps.
pub const MAX_WINDOW: usize = 4096;

/// The `q` quantile (0..=1) of a window, interpolating between order statistics.
fn quantile(v: &VecDeque<f64>, q: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().collect();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return 0.0;
    }
    let x = q * (s.len() - 1) as f64;
    let (i, f) = (x.floor() as usize, x - x.floor());
    s[i] + f * (s[(i + 1).min(s.len() - 1)] - s[i])
}

impl Balancer {
    pub fn new(spec: BalanceSpec, opts: BalanceOptions) -> Balancer {
        let n = spec.plan.len();
        let window = opts.window.clamp(1, MAX_WINDOW);
        Balancer {
            plan: spec.plan.clone(),
            spec,
            opts: BalanceOptions { window, ..opts },
            samples: vec![VecDeque::with_capacity(window); n],
            fresh: vec![0; n],
            cleared_last: false,
            decisions: Vec::new(),
        }
    }

    /// A decode step's compute time on a stage.
    pub fn record(&mut self, stage: usize, compute_ms: f64) {
        let Some(s) = self.samples.get_mut(stage) else { return };
        if s.len() == self.opts.window {
            s.pop_front();
        }
        s.push_back(compute_ms);
        self.fresh[stage] += 1;
    }

    /// Look at the window when every stage has a full window and half a window of new
    /// times; returns the new plan when moving pays. The decision is recorded.
    pub fn evaluate(&mut self, after_steps: u64, in_flight: usize) -> Option<Vec<Stage>> {
        let w = self.opts.window;
        if self.samples.iter().any(|s| s.len() < w) || self.fresh.iter().any(|&f| f < w.div_ceil(2)) {
            return None;
        }
        self.fresh.iter_mut().for_each(|f| *f = 0);
        let p = &self.spec.problem;
        let measured_ms: Vec<f64> = self.samples.iter().map(|w| quantile(w, 0.5)).collect();
        // How much the times wander within the window: the widest interquartile range
        // relative to its median. A move must beat the threshold by that much too, so
        // noise alone never moves a boundary (and a slowdown that is still arriving
        // waits until the window has settled).
        let noise = self
            .samples
            .iter()
            .zip(&measured_ms)
            .map(|(w, m)| if *m > 0.0 { (quantile(w, 0.75) - quantile(w, 0.25)) / m } else { 0.0 })
            .fold(0.0, f64::max);
        let required_gain = 1.0 + self.opts.threshold + noise;
        let modelled_ms: Vec<f64> =
            self.plan.iter().map(|s| p.decode[s.device][s.start..s.end].iter().sum::<f64>() * 1e3).collect();
        let factor: Vec<f64> =
            measured_ms.iter().zip(&modelled_ms).map(|(m, p)| if *p > 0.0 && *m > 0.0 { m / p } else { 1.0 }).collect();
        let mut by_device = vec![1.0; p.devices()];
        for (s, f) in self.plan.iter().zip(&factor) {
            by_device[s.device] = *f;
        }
        let q = p.slowed(&by_device);
        let k = in_flight.max(1);
        let (best, old_token, best_token) = replan(&q, &self.plan, &self.spec.held_ranges(), k);
        let gain = if best_token > 0.0 { old_token / best_token } else { 1.0 };
        // A move must clear the bar twice in a row: a burst on one window moves nothing.
        let clears = best != self.plan && gain > required_gain;
        let moved = clears && self.cleared_last;
        self.cleared_last = clears && !moved;
        let new = if moved { best } else { self.plan.clone() };
        self.decisions.push(Decision {
            after_steps,
            measured_ms,
            modelled_ms,
            factor,
            old: self.spec.view(&self.plan),
            new: self.spec.view(&new),
            in_flight: k,
            old_token_ms: old_token * 1e3,
            new_token_ms: if moved { best_token * 1e3 } else { old_token * 1e3 },
            predicted_gain: gain,
            noise,
            required_gain,
            confirming: clears && !moved,
            moved,
            drain_ms: None,
            switch_ms: None,
            kv_bytes: None,
        });
        moved.then_some(new)
    }

    /// The move proposed last is in force: times start again.
    pub fn applied(&mut self, plan: Vec<Stage>, drain_ms: f64, switch_ms: f64, kv_bytes: u64) {
        self.plan = plan;
        self.samples.iter_mut().for_each(VecDeque::clear);
        self.fresh.iter_mut().for_each(|f| *f = 0);
        self.cleared_last = false;
        if let Some(d) = self.decisions.last_mut() {
            d.drain_ms = Some(drain_ms);
            d.switch_ms = Some(switch_ms);
            d.kv_bytes = Some(kv_bytes);
        }
    }
}

impl Decision {
    /// One line for the log.
    pub fn to_text(&self) -> String {
        let plan = |v: &[StageView]| {
            v.iter().map(|s| format!("{} {}..{}", s.device, s.units[0], s.units[1])).collect::<Vec<_>>().join(", ")
        };
        let measured = self.measured_ms.iter().map(|m| format!("{m:.2}")).collect::<Vec<_>>().join("/");
        let factor = self.factor.iter().map(|f| format!("{f:.2}")).collect::<Vec<_>>().join("/");
        let mut s = format!(
            "balance after {} steps, {} in flight: measured {measured} ms (× model {factor}); plan [{}] {:.2} ms/token",
            self.after_steps,
            self.in_flight,
            plan(&self.old),
            self.old_token_ms
        );
        if self.moved {
            s += &format!(
                " -> [{}] {:.2} ms/token, predicted gain {:.2}×: moving",
                plan(&self.new),
                self.new_token_ms,
                self.predicted_gain
            );
        } else {
            let verdict = if self.confirming { "clears it once, looking again" } else { "staying" };
            s += &format!(
                ", best move gains {:.2}× (needs {:.2}×, noise {:.0}%): {verdict}",
                self.predicted_gain,
                self.required_gain,
                self.noise * 100.0,
            );
        }
        if let (Some(d), Some(w), Some(k)) = (self.drain_ms, self.switch_ms, self.kv_bytes) {
            s += &format!(" (drained {d:.1} ms, switched {w:.1} ms, {k} KV-cache bytes moved)");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardc_passes::devices::Link;
    use shardc_passes::plan::UnitId;

    /// Three equal devices, 12 equal units (1 ms each), 4 per stage, 2 standby units.
    fn spec() -> BalanceSpec {
        let (u, d) = (12, 3);
        let problem = Problem {
            prefill: vec![vec![0.01; u]; d],
            decode: vec![vec![0.001; u]; d],
            private_bytes: vec![1.0; u],
            activation_bytes: vec![0.0; u],
            shared: vec![],
            budget: vec![100.0; d],
            cut_prefill: vec![0.0; u - 1],
            cut_decode: vec![0.0; u - 1],
            links: vec![vec![Link { bandwidth: f64::INFINITY, latency: 0.0 }; d]; d],
            decode_tokens: 16.0,
            objective: Objective::Throughput,
        };
        let plan: Vec<Stage> = (0..3).map(|s| Stage { device: DeviceId(s), start: 4 * s, end: 4 * s + 4 }).collect();
        let held = problem.standby(&plan, 2).iter().map(|r| [r.start, r.end]).collect();
        BalanceSpec {
            format: FORMAT,
            units: (0..u).map(|i| format!("unit {i}")).collect(),
            devices: vec!["a".into(), "b".into(), "c".into()],
            plan,
            held,
            problem,
            crossings: vec![
                Crossing { tensor: "input_ids".into(), from: None, to: vec![UnitId(0)], output: false },
                Crossing { tensor: "h3".into(), from: Some(UnitId(3)), to: vec![UnitId(4)], output: false },
                Crossing { tensor: "h5".into(), from: Some(UnitId(5)), to: vec![UnitId(6), UnitId(10)], output: false },
                Crossing { tensor: "logits".into(), from: Some(UnitId(11)), to: vec![], output: true },
            ],
        }
    }

    /// One step on every stage, the middle one `slow` times slower, with jitter.
    fn step(b: &mut Balancer, slow: f64, jitter: f64, i: usize) {
        for s in 0..3 {
            let units = (b.plan[s].end - b.plan[s].start) as f64;
            let wobble = 1.0 + jitter * (((i * 7 + s * 3) % 5) as f64 - 2.0) / 2.0;
            b.record(s, units * if s == 1 { slow } else { 1.0 } * wobble);
        }
    }

    #[test]
    fn routes_follow_the_plan() {
        let e = |n: &str| shardc_format::Endpoint::parse(n).unwrap();
        let s = spec();
        let r = s.routes(&s.plan);
        assert_eq!(r["input_ids"], Route { from: e("client"), to: vec![e("a")] });
        assert_eq!(r["h3"], Route { from: e("a"), to: vec![e("b")] });
        // Long-range: straight to both readers.
        assert_eq!(r["h5"], Route { from: e("b"), to: vec![e("c")] });
        assert_eq!(r["logits"], Route { from: e("c"), to: vec![e("client")] });
        let moved = vec![
            Stage { device: DeviceId(0), start: 0, end: 6 },
            Stage { device: DeviceId(1), start: 6, end: 7 },
            Stage { device: DeviceId(2), start: 7, end: 12 },
        ];
        let r = s.routes(&moved);
        assert!(!r.contains_key("h3"), "h3 stays on a");
        assert_eq!(r["h5"], Route { from: e("a"), to: vec![e("b"), e("c")] });
    }

    #[test]
    fn a_steady_pipeline_never_moves_and_a_slowed_stage_loses_units_after_confirmation() {
        let mut b = Balancer::new(spec(), BalanceOptions::default());
        for i in 0..200 {
            step(&mut b, 1.0, 0.1, i);
            assert_eq!(b.evaluate(i as u64, 2), None, "moved on noise: {:?}", b.decisions.last());
        }
        assert!(b.decisions.len() > 40);
        // Slowed 3×: the window fills, the move clears the bar, then again, then moves.
        let mut moved = None;
        for i in 0..40 {
            step(&mut b, 3.0, 0.1, i);
            if let Some(p) = b.evaluate(200 + i as u64, 2) {
                moved = Some((i, p));
                break;
            }
        }
        let (at, plan) = moved.expect("no move after a 3x slowdown");
        assert!((8..=16).contains(&at), "moved after {at} steps");
        let last = b.decisions.last().unwrap();
        assert!(last.moved && b.decisions[b.decisions.len() - 2].confirming);
        assert!(plan[1].end - plan[1].start < 4, "{plan:?}");
        for (s, h) in plan.iter().zip(&b.spec.held) {
            assert!(h[0] <= s.start && s.end <= h[1], "{plan:?} leaves the held units");
        }
        b.applied(plan.clone(), 1.0, 1.0, 10);
        // Under the new plan the times agree with it: no further move.
        for i in 0..60 {
            step(&mut b, 3.0, 0.1, i);
            assert_eq!(b.evaluate(300 + i as u64, 2), None, "{:?}", b.decisions.last());
        }
        // The device recovers: with the pipeline full (with two requests in flight, the
        // sum of the stages decides, which the move did not change), it gets units back.
        let mut back = None;
        for i in 0..40 {
            step(&mut b, 1.0, 0.1, i);
            if let Some(p) = b.evaluate(400 + i as u64, 3) {
                back = Some(p);
                break;
            }
        }
        let back = back.expect("no move back after the device recovered");
        assert!(back[1].end - back[1].start > plan[1].end - plan[1].start, "{back:?}");
    }

    #[test]
    fn a_single_burst_moves_nothing() {
        let mut b = Balancer::new(spec(), BalanceOptions::default());
        for i in 0..40 {
            // Four slow steps in the middle of the run.
            let slow = if (20..24).contains(&i) { 3.0 } else { 1.0 };
            step(&mut b, slow, 0.0, i);
            assert_eq!(b.evaluate(i as u64, 2), None, "{:?}", b.decisions.last());
        }
    }

    #[test]
    fn one_request_in_flight_minimises_the_sum() {
        let s = spec();
        let q = s.problem.slowed(&[1.0, 3.0, 1.0]);
        let held = s.held_ranges();
        let (one, old1, new1) = replan(&q, &s.plan, &held, 1);
        let (full, old3, new3) = replan(&q, &s.plan, &held, 3);
        // One request: as few units on the slow device as the standby units allow.
        assert_eq!(one[1].end - one[1].start, 1, "{one:?}");
        assert!((old1 - 0.020).abs() < 1e-12 && new1 < old1);
        // A full pipeline: the slowest stage decides.
        assert!((old3 - 0.012).abs() < 1e-12 && new3 < old3 && new3 >= 0.0045 - 1e-12, "{full:?} {new3}");
    }
}

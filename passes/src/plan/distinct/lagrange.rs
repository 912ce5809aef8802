//! The Lagrangian relaxation of "each device at most once" that bounds the latency
//! search: cheapest completions when devices may be reused, each use priced by its
//! multiplier, and the multipliers by subgradient ascent.

use std::collections::HashSet;

use super::{better, Clock, Tables, ABS_EPS, REL_EPS};
use crate::plan::problem::Plan;

const INF: f64 = f64::INFINITY;

/// Subgradient steps at the root.
const ROOT_STEPS: usize = 400;

/// Cheapest completions when devices may be reused, each use priced by its multiplier.
pub(super) struct Relaxed {
    /// `after[e][a]`: cheapest completion of units `e..` after a stage on `a` ending at
    /// `e` (0 at the end).
    pub after: Vec<Vec<f64>>,
    /// Cheapest whole relaxed plan, multipliers included.
    root: f64,
    /// Its devices, in order (a device may repeat, never twice in a row).
    path: Vec<usize>,
}

pub(super) fn relax(t: &Tables, lambda: &[f64]) -> Relaxed {
    let (n, nd) = (t.n, t.nd);
    // first[b]: cheapest completion from the current position whose next stage is on b.
    let mut first = vec![vec![INF; nd]; n];
    let mut first_end = vec![vec![0usize; nd]; n];
    let mut after = vec![vec![INF; nd]; n + 1];
    let mut after_next = vec![vec![usize::MAX; nd]; n + 1];
    after[n] = vec![0.0; nd];
    for s in (0..n).rev() {
        for b in 0..nd {
            let (mut best, mut arg) = (INF, s);
            let ends = s + 1..=t.reach[b][s];
            for (e, (acc, rest)) in ends.clone().zip(t.acc[b][ends.clone()].iter().zip(&after[ends])) {
                let v = acc + rest[b];
                if v < best {
                    (best, arg) = (v, e);
                }
            }
            if best < INF {
                first[s][b] = best - t.acc[b][s] + lambda[b];
                first_end[s][b] = arg;
            }
        }
        if s == 0 {
            break;
        }
        for a in 0..nd {
            let (mut best, mut arg) = (INF, usize::MAX);
            for (c, &f) in first[s].iter().enumerate() {
                if c != a && f < INF {
                    let v = t.link(s, a, c) + f;
                    if v < best {
                        (best, arg) = (v, c);
                    }
                }
            }
            after[s][a] = best;
            after_next[s][a] = arg;
        }
    }
    let (mut root, mut dev) = (INF, usize::MAX);
    for (b, &f) in first[0].iter().enumerate() {
        if f < root {
            (root, dev) = (f, b);
        }
    }
    let mut path = Vec::new();
    let mut s = 0;
    while root < INF && s < n {
        path.push(dev);
        let e = first_end[s][dev];
        if e >= n {
            break;
        }
        dev = after_next[e][dev];
        s = e;
    }
    Relaxed { after, root, path }
}

/// A device order to try from a relaxed path: its devices once each, then the rest by
/// ascending multiplier (cheap devices the path did not need).
fn order_from(path: &[usize], lambda: &[f64]) -> Vec<usize> {
    let mut seen = vec![false; lambda.len()];
    let mut order: Vec<usize> = path.iter().copied().filter(|&d| !std::mem::replace(&mut seen[d], true)).collect();
    let mut rest: Vec<usize> = (0..lambda.len()).filter(|&d| !seen[d]).collect();
    rest.sort_by(|&a, &b| lambda[a].total_cmp(&lambda[b]).then(a.cmp(&b)));
    order.extend(rest);
    order
}

/// Subgradient ascent on the multipliers of "each device at most once"; improves the
/// incumbent from the relaxed paths on the way.
pub(super) fn multipliers(t: &Tables, best: &mut Option<(Plan, f64)>, clock: &Clock) -> (Vec<f64>, f64) {
    let nd = t.nd;
    let mut lambda = vec![0.0; nd];
    let (mut best_lambda, mut best_bound) = (lambda.clone(), -INF);
    let mut theta = 1.0;
    let mut stall = 0;
    let mut tried: HashSet<Vec<usize>> = HashSet::new();
    for _ in 0..ROOT_STEPS {
        let r = relax(t, &lambda);
        if r.root == INF {
            // Nothing covers the units even with devices reused.
            return (lambda, INF);
        }
        let bound = r.root - lambda.iter().sum::<f64>();
        if bound > best_bound {
            (best_lambda, best_bound, stall) = (lambda.clone(), bound, 0);
        } else {
            stall += 1;
            if stall >= 8 {
                (theta, stall) = (theta / 2.0, 0);
            }
        }
        let order = order_from(&r.path, &lambda);
        if tried.insert(order.clone()) {
            *best = better(best.take(), t.plan_for(&order));
        }
        let ub = best.as_ref().map_or(INF, |b| b.1);
        if best_bound >= ub * (1.0 - REL_EPS) - ABS_EPS || clock.out() || theta < 1e-6 {
            break;
        }
        let mut count = vec![0.0f64; nd];
        for &d in &r.path {
            count[d] += 1.0;
        }
        let g: Vec<f64> = count.iter().map(|c| c - 1.0).collect();
        let norm: f64 = g.iter().map(|x| x * x).sum();
        let target = if ub < INF { ub - bound } else { 0.1 * bound.abs().max(1e-9) };
        let step = theta * target.max(1e-12 * ub.min(bound.abs().max(1.0))) / norm.max(1.0);
        for (l, gd) in lambda.iter_mut().zip(&g) {
            *l = (*l + step * gd).max(0.0);
        }
    }
    (best_lambda, best_bound)
}

//! The Lagrangian relaxation of "each device at most once" that bounds the latency
//! search: cheapest completions when devices may be reused, each use priced by its
//! multiplier, and the multipliers by subgradient ascent.

use std::collections::HashSet;

use super::{better, Clock, Tables, ABS_EPS, REL_EPS};
use crate::plan::problem::Plan;

const INF: f64 = f64::INFINITY;

/// Subgradient steps at the root.
const ROOT_STEPS: usize = 400;

/// Cheapest completions when devices may be reused, each use priced by its multiplier,
/// but never in two stages with one other between (no `a, b, a`): without that, the
/// relaxed plans alternate between two cheap devices and the bound stays 1–2 % low.
pub(super) struct Relaxed {
    /// `after[e][a]`: cheapest completion of units `e..` after a stage on `a` ending at
    /// `e` (0 at the end).
    pub after: Vec<Vec<f64>>,
    /// Cheapest whole relaxed plan, multipliers included.
    root: f64,
    /// Its devices, in order (a device may repeat, never within two stages).
    path: Vec<usize>,
}

/// No device: the key of a completion that ends with the units.
const NONE: u32 = u32::MAX;

/// The two cheapest completions of one state whose next devices differ, each with
/// where it came from (`at`: an end position, or a device; `pick`: which of the two
/// entries of the state it continues).
#[derive(Clone, Copy, Debug)]
struct Two {
    v: [f64; 2],
    key: [u32; 2],
    at: [u32; 2],
    pick: [u8; 2],
}

impl Two {
    const EMPTY: Two = Two { v: [INF; 2], key: [NONE; 2], at: [0; 2], pick: [0; 2] };

    fn offer(&mut self, v: f64, key: u32, at: u32, pick: u8) {
        if v < self.v[0] {
            if key != self.key[0] {
                (self.v[1], self.key[1], self.at[1], self.pick[1]) = (self.v[0], self.key[0], self.at[0], self.pick[0]);
            }
            (self.v[0], self.key[0], self.at[0], self.pick[0]) = (v, key, at, pick);
        } else if v < self.v[1] && key != self.key[0] {
            (self.v[1], self.key[1], self.at[1], self.pick[1]) = (v, key, at, pick);
        }
    }

    /// The cheaper entry whose next device is not `not`.
    fn without(&self, not: u32) -> Option<usize> {
        let i = usize::from(self.key[0] == not);
        (self.v[i] < INF).then_some(i)
    }
}

pub(super) fn relax(t: &Tables, lambda: &[f64]) -> Relaxed {
    let (n, nd) = (t.n, t.nd);
    // first[s][b]: cheapest completions from s whose next stage is on b, keyed by the
    // device of the stage after that one (`at`: where b's stage ends).
    let mut first = vec![vec![Two::EMPTY; nd]; n];
    // then[e][a]: cheapest completions after a stage on a ending at e, keyed by the next
    // device c, whose own next device is not a (`at`: c).
    let mut then = vec![vec![Two::EMPTY; nd]; n + 1];
    for s in (0..n).rev() {
        for b in 0..nd {
            let mut two = Two::EMPTY;
            let base = lambda[b] - t.acc[b][s];
            for e in s + 1..=t.reach[b][s] {
                let stage = base + t.acc[b][e];
                if e == n {
                    two.offer(stage, NONE, e as u32, 0);
                    continue;
                }
                let next = &then[e][b];
                for i in 0..2 {
                    if next.v[i] < INF {
                        two.offer(stage + next.v[i], next.key[i], e as u32, i as u8);
                    }
                }
            }
            first[s][b] = two;
        }
        if s == 0 {
            break;
        }
        for a in 0..nd {
            let mut two = Two::EMPTY;
            for (c, f) in first[s].iter().enumerate() {
                if c == a {
                    continue;
                }
                if let Some(i) = f.without(a as u32) {
                    two.offer(t.link(s, a, c) + f.v[i], c as u32, c as u32, i as u8);
                }
            }
            then[s][a] = two;
        }
    }
    let after = then.iter().map(|row| row.iter().map(|two| two.v[0]).collect()).collect();
    let mut after: Vec<Vec<f64>> = after;
    after[n] = vec![0.0; nd];
    let (mut root, mut dev) = (INF, usize::MAX);
    for (b, f) in first[0].iter().enumerate() {
        if f.v[0] < root {
            (root, dev) = (f.v[0], b);
        }
    }
    let mut path = Vec::new();
    if root < INF {
        // Walk the entries back: first[s][dev] entry `i`, then then[e][dev] entry `pick`.
        let (mut s, mut i) = (0usize, 0usize);
        while path.len() <= n {
            path.push(dev);
            let f = &first[s][dev];
            let e = f.at[i] as usize;
            if e >= n {
                break;
            }
            let next = &then[e][dev];
            let j = f.pick[i] as usize;
            (s, dev, i) = (e, next.at[j] as usize, next.pick[j] as usize);
        }
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

//! The Lagrangian relaxation of "each device at most once" that bounds the latency
//! search: cheapest completions when devices may be reused (never two stages apart,
//! and a few critical devices never), each use priced by its multiplier, and the
//! multipliers by subgradient ascent.

use std::collections::HashSet;

use super::{better, Clock, Tables, ABS_EPS, REL_EPS};
use crate::plan::problem::Plan;

const INF: f64 = f64::INFINITY;

/// Subgradient steps at the root.
const ROOT_STEPS: usize = 400;
/// Subgradient steps after critical devices are added (each step costs up to
/// 2^[`MAX_CRITICAL`] times one of the root's).
const CRITICAL_STEPS: usize = 40;

/// Devices the relaxation keeps to one use each exactly, by carrying which of them a
/// plan has used in its state (each doubles the work); the others are priced.
#[derive(Clone, Debug, Default)]
pub(super) struct Critical {
    /// The devices, at most [`MAX_CRITICAL`].
    pub devices: Vec<usize>,
}

/// Most critical devices.
pub(super) const MAX_CRITICAL: usize = 4;

impl Critical {
    /// The bit of device `d` in a mask of used critical devices (0: not critical).
    pub fn bit(&self, d: usize) -> usize {
        self.devices.iter().position(|&c| c == d).map_or(0, |i| 1 << i)
    }

    /// The mask of the critical devices in a device set.
    pub fn mask(&self, set: u64) -> usize {
        self.devices.iter().enumerate().filter(|(_, &d)| set & (1 << d) != 0).fold(0, |m, (i, _)| m | 1 << i)
    }

    /// How many masks there are: 2 to the number of critical devices.
    pub fn masks(&self) -> usize {
        1 << self.devices.len()
    }

    /// Where the state (position `s`, device `d`, mask `m`) of `nd` devices sits in a
    /// table laid out by position, then device, then mask.
    pub fn at(&self, nd: usize, s: usize, d: usize, m: usize) -> usize {
        (s * nd + d) * self.masks() + m
    }
}

/// How many times each of `nd` devices appears in `path`.
fn uses(path: &[usize], nd: usize) -> Vec<usize> {
    let mut count = vec![0; nd];
    for &d in path {
        count[d] += 1;
    }
    count
}

/// Cheapest completions when devices may be reused, each use priced by its multiplier,
/// but never in two stages with one other between (no `a, b, a`), and the critical
/// devices never twice: without the first, the relaxed plans alternate between two
/// cheap devices and the bound stays 1–2 % low; the critical devices are those that
/// the relaxed plans still take several times.
pub(super) struct Relaxed {
    /// `after[critical.at(nd, e, a, m)]`: cheapest completion of units `e..` after a
    /// stage on `a` ending at `e`, the critical devices of mask `m` used (0 at the end).
    pub after: Vec<f64>,
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

pub(super) fn relax(t: &Tables, lambda: &[f64], critical: &Critical) -> Relaxed {
    let (n, nd, masks) = (t.n, t.nd, critical.masks());
    let bits: Vec<usize> = (0..nd).map(|d| critical.bit(d)).collect();
    let at = |s: usize, d: usize, m: usize| critical.at(nd, s, d, m);
    // first[(s, b, m)]: cheapest completions from s whose next stage is on b, the
    // critical devices of m used (b among them if critical), keyed by the device of the
    // stage after b's (`at`: where b's stage ends).
    let mut first = vec![Two::EMPTY; n * nd * masks];
    // then[(e, a, m)]: cheapest completions after a stage on a ending at e, keyed by the
    // next device c, whose own next device is not a (`at`: c).
    let mut then = vec![Two::EMPTY; (n + 1) * nd * masks];
    for s in (0..n).rev() {
        for b in 0..nd {
            let base = lambda[b] - t.acc[b][s];
            for m in (0..masks).filter(|m| m & bits[b] == bits[b]) {
                let mut two = Two::EMPTY;
                for e in s + 1..=t.reach[b][s] {
                    let stage = base + t.acc[b][e];
                    if e == n {
                        two.offer(stage, NONE, e as u32, 0);
                        continue;
                    }
                    let next = &then[at(e, b, m)];
                    for i in 0..2 {
                        if next.v[i] < INF {
                            two.offer(stage + next.v[i], next.key[i], e as u32, i as u8);
                        }
                    }
                }
                first[at(s, b, m)] = two;
            }
        }
        if s == 0 {
            break;
        }
        for a in 0..nd {
            for m in (0..masks).filter(|m| m & bits[a] == bits[a]) {
                let mut two = Two::EMPTY;
                for c in (0..nd).filter(|&c| c != a && m & bits[c] == 0) {
                    let f = &first[at(s, c, m | bits[c])];
                    if let Some(i) = f.without(a as u32) {
                        two.offer(t.link(s, a, c) + f.v[i], c as u32, c as u32, i as u8);
                    }
                }
                then[at(s, a, m)] = two;
            }
        }
    }
    let mut after: Vec<f64> = then.iter().map(|two| two.v[0]).collect();
    after[n * nd * masks..].fill(0.0);
    let (mut root, mut dev) = (INF, usize::MAX);
    for b in 0..nd {
        let v = first[at(0, b, bits[b])].v[0];
        if v < root {
            (root, dev) = (v, b);
        }
    }
    let mut path = Vec::new();
    if root < INF {
        // Walk the entries back: first[s][dev] entry `i`, then then[e][dev] entry `pick`.
        let (mut s, mut i, mut m) = (0usize, 0usize, bits[dev]);
        while path.len() <= n {
            path.push(dev);
            let f = &first[at(s, dev, m)];
            let e = f.at[i] as usize;
            if e >= n {
                break;
            }
            let next = &then[at(e, dev, m)];
            let j = f.pick[i] as usize;
            (s, dev, i) = (e, next.at[j] as usize, next.pick[j] as usize);
            m |= bits[dev];
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

/// Subgradient ascent on the multipliers of "each device at most once" from `start`
/// (multipliers and step scale), at most `steps` steps; improves the incumbent from the
/// relaxed paths on the way. The best multipliers, their bound and relaxed path.
fn ascend(
    t: &Tables,
    critical: &Critical,
    start: (Vec<f64>, f64),
    steps: usize,
    best: &mut Option<(Plan, f64)>,
    clock: &Clock,
) -> (Vec<f64>, f64, Vec<usize>) {
    let nd = t.nd;
    let (mut lambda, mut theta) = start;
    let (mut best_lambda, mut best_bound, mut best_path) = (lambda.clone(), -INF, Vec::new());
    let mut stall = 0;
    let mut tried: HashSet<Vec<usize>> = HashSet::new();
    for _ in 0..steps {
        let r = relax(t, &lambda, critical);
        if r.root == INF {
            // Nothing covers the units even with devices reused.
            return (lambda, INF, Vec::new());
        }
        let bound = r.root - lambda.iter().sum::<f64>();
        if bound > best_bound {
            (best_lambda, best_bound, best_path, stall) = (lambda.clone(), bound, r.path.clone(), 0);
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
        let g: Vec<f64> = uses(&r.path, nd).iter().map(|&c| c as f64 - 1.0).collect();
        let norm: f64 = g.iter().map(|x| x * x).sum();
        let target = if ub < INF { ub - bound } else { 0.1 * bound.abs().max(1e-9) };
        let step = theta * target.max(1e-12 * ub.min(bound.abs().max(1.0))) / norm.max(1.0);
        for (l, gd) in lambda.iter_mut().zip(&g) {
            *l = (*l + step * gd).max(0.0);
        }
    }
    (best_lambda, best_bound, best_path)
}

/// Multipliers of "each device at most once" by subgradient ascent, first with no
/// critical device, then with the devices the best relaxed plan still used several
/// times kept to one use (the most used first, at most [`MAX_CRITICAL`]); improves the
/// incumbent from the relaxed plans on the way. Returns the critical devices, the
/// multipliers and the bound.
pub(super) fn multipliers(t: &Tables, best: &mut Option<(Plan, f64)>, clock: &Clock) -> (Critical, Vec<f64>, f64) {
    let mut critical = Critical::default();
    let (lambda, bound, path) = ascend(t, &critical, (vec![0.0; t.nd], 1.0), ROOT_STEPS, best, clock);
    let count = uses(&path, t.nd);
    let mut repeated: Vec<usize> = (0..t.nd).filter(|&d| count[d] > 1).collect();
    if bound == INF || repeated.is_empty() || clock.out() {
        return (critical, lambda, bound);
    }
    repeated.sort_by_key(|&d| (std::cmp::Reverse(count[d]), d));
    critical.devices.extend(repeated.into_iter().take(MAX_CRITICAL));
    // At the same multipliers the bound can only rise: the first step keeps it.
    let (lambda, bound, _) = ascend(t, &critical, (lambda, 0.25), CRITICAL_STEPS, best, clock);
    (critical, lambda, bound)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{permutations, problem};
    use super::*;

    #[test]
    fn relaxed_plans_bound_the_optimum_and_keep_their_rules() {
        // Six devices of different speeds, each holding a few of the 16 units.
        let p = problem(&[1.0, 2.5, 0.7, 1.8, 3.0, 1.2], &[3.5, 2.5, 5.0, 3.0, 2.5, 4.0], 16);
        let t = Tables::new(&p);
        let mut work = Vec::new();
        let optimum = permutations((0..6).collect()).iter().map(|o| t.order_cost(o, &mut work)).fold(INF, f64::min);
        assert!(optimum.is_finite());
        let sets: [&[usize]; 4] = [&[], &[4], &[4, 1, 3], &[0, 1, 2, 3, 4, 5]];
        let lambdas = [vec![0.0; 6], vec![0.05, 0.2, 0.0, 0.1, 0.3, 0.02], vec![0.4; 6]];
        let mut looser = INF;
        for lambda in &lambdas {
            for devices in sets {
                let critical = Critical { devices: devices.to_vec() };
                let r = relax(&t, lambda, &critical);
                let bound = r.root - lambda.iter().sum::<f64>();
                assert!(bound <= optimum * (1.0 + 1e-12), "{devices:?} {lambda:?}: bound {bound} over {optimum}");
                for w in r.path.windows(2) {
                    assert_ne!(w[0], w[1], "{:?}: a device twice in a row", r.path);
                }
                for w in r.path.windows(3) {
                    assert_ne!(w[0], w[2], "{:?}: a device again two stages later", r.path);
                }
                for d in devices {
                    assert!(r.path.iter().filter(|&x| x == d).count() <= 1, "{:?}: critical {d} twice", r.path);
                }
                if devices.is_empty() && lambda.iter().all(|&l| l == 0.0) {
                    looser = bound;
                }
                // Every device critical and no prices: the relaxation is the problem.
                if devices.len() == 6 && lambda.iter().all(|&l| l == 0.0) {
                    assert!((bound - optimum).abs() <= 1e-12 * optimum, "exact: {bound} against {optimum}");
                    assert!(looser < bound, "critical devices tighten the bound here ({looser} against {bound})");
                }
            }
        }
    }
}

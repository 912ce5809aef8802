//! A second lower bound for the latency search, strong where the Lagrangian one is weak:
//! every device holds at most one stage (which the relaxation only prices), but where
//! the stages sit is forgotten, only how many units of each kind they hold together.
//!
//! Units of one kind cost the same on every device and take the same bytes, so for a
//! model of identical layers a plan is little more than a choice of stage sizes per
//! device: a 0/1 knapsack over devices whose state counts the units covered per kind.
//! Each device's options are its real stages (start, end within its memory), the
//! cheapest for each count vector, with the link into the stage at the cheapest sender
//! for that cut. Any plan is one option per device it uses with the counts summing to
//! the model's, so the knapsack's optimum is at most the plan's cost.

use std::collections::HashMap;

use super::Tables;
use crate::plan::problem::DeviceId;

const INF: f64 = f64::INFINITY;

/// Most knapsack states (count vectors) taken on; beyond it units are grouped coarser.
const MAX_STATES: usize = 1 << 18;

/// Most state updates (over all devices' options) before units are grouped coarser:
/// about a fifth of a second here (Llama-3-70B on 16 devices: 78 M).
const MAX_WORK: usize = 400_000_000;

/// How finely units are told apart: by everything that prices or places them, by their
/// bytes alone, or not at all (the first and last unit always stand alone: the stage
/// holding the first needs no link in).
#[derive(Clone, Copy, Debug)]
enum Grain {
    Full,
    Bytes,
    None,
}

/// A kind per unit at `grain`, numbered from 0 by how many units it has, the most
/// first (ties: in order of first appearance).
fn kinds(t: &Tables, grain: Grain) -> Vec<usize> {
    let (p, n) = (t.p, t.n);
    let mut seen: HashMap<Vec<u64>, usize> = HashMap::new();
    let kind: Vec<usize> = (0..n)
        .map(|u| {
            let mut key = vec![if u == 0 || u + 1 == n { u as u64 + 1 } else { 0 }];
            if matches!(grain, Grain::Full) {
                for d in DeviceId::all(t.nd) {
                    key.extend([p.prefill[d][u].to_bits(), p.decode[d][u].to_bits()]);
                }
            }
            if !matches!(grain, Grain::None) {
                key.extend([p.private_bytes[u].to_bits(), p.activation_bytes[u].to_bits()]);
                let shares = p.shared.iter().enumerate().filter(|(_, w)| w.units.iter().any(|x| x.0 == u));
                key.extend(shares.map(|(i, _)| u64::MAX - i as u64));
            }
            let next = seen.len();
            *seen.entry(key).or_insert(next)
        })
        .collect();
    // Renumber by how many units each kind has, the most first (then by first unit).
    let mut total = vec![0; seen.len()];
    for &k in &kind {
        total[k] += 1;
    }
    let mut order: Vec<usize> = (0..total.len()).collect();
    order.sort_by_key(|&k| std::cmp::Reverse(total[k]));
    let mut rank = vec![0; order.len()];
    for (r, &k) in order.iter().enumerate() {
        rank[k] = r;
    }
    kind.into_iter().map(|k| rank[k]).collect()
}

/// Units per kind, and the mixed-radix strides that number the count vectors.
struct Radix {
    total: Vec<usize>,
    stride: Vec<usize>,
    states: usize,
}

impl Radix {
    fn new(kind: &[usize]) -> Radix {
        let nk = kind.iter().max().map_or(0, |k| k + 1);
        let mut total = vec![0; nk];
        for &k in kind {
            total[k] += 1;
        }
        let mut stride = Vec::with_capacity(nk);
        let mut states = 1usize;
        for &c in &total {
            stride.push(states);
            states = states.saturating_mul(c + 1);
        }
        Radix { total, stride, states }
    }

    /// How many states option `o` fits (has room for its units in).
    fn fits(&self, o: &Choice) -> usize {
        self.total.iter().zip(&o.count).fold(1usize, |w, (t, c)| w.saturating_mul(t + 1 - c))
    }

    /// Take option `o` from every state of `old` it fits, into `g`. The first kind
    /// (the most units) has stride 1, so the states differing only in it are one run.
    fn add(&self, g: &mut [f64], old: &[f64], o: &Choice) {
        let nk = self.total.len();
        let run = self.total[0] + 1 - o.count[0];
        let mut digit = vec![0; nk];
        loop {
            let from: usize = (1..nk).map(|k| digit[k] * self.stride[k]).sum();
            let to = from + o.offset;
            for (g, old) in g[to..to + run].iter_mut().zip(&old[from..from + run]) {
                *g = g.min(old + o.cost);
            }
            let mut k = 1;
            loop {
                if k == nk {
                    return;
                }
                digit[k] += 1;
                if digit[k] + o.count[k] <= self.total[k] {
                    break;
                }
                digit[k] = 0;
                k += 1;
            }
        }
    }
}

/// One stage size a device can take: units per kind, that vector's state offset, cost.
struct Choice {
    count: Vec<usize>,
    offset: usize,
    cost: f64,
}

/// The cheapest stage of each count vector on device `d` (link in included).
fn options(t: &Tables, kind: &[usize], radix: &Radix, d: usize) -> Vec<Choice> {
    let (n, nd) = (t.n, t.nd);
    let mut best: HashMap<Vec<usize>, f64> = HashMap::new();
    let mut count = vec![0; radix.total.len()];
    for s in 0..n {
        let link = if s == 0 { 0.0 } else { (0..nd).filter(|&a| a != d).map(|a| t.link(s, a, d)).fold(INF, f64::min) };
        count.fill(0);
        for e in s + 1..=t.reach[d][s] {
            count[kind[e - 1]] += 1;
            let cost = t.stage(d, s, e) + link;
            let slot = best.entry(count.clone()).or_insert(INF);
            *slot = slot.min(cost);
        }
    }
    let mut out: Vec<Choice> = best
        .into_iter()
        .map(|(count, cost)| {
            let offset = count.iter().zip(&radix.stride).map(|(c, s)| c * s).sum();
            Choice { count, offset, cost }
        })
        .collect();
    // The bound is a minimum whatever the order; a fixed order keeps its sums the same.
    out.sort_by_key(|o| o.offset);
    out
}

/// The bound: the cheapest choice of at most one stage per device covering every unit
/// (infinite if none does), at the finest grain whose work stays within bounds.
pub(super) fn bound(t: &Tables) -> f64 {
    [Grain::Full, Grain::Bytes].into_iter().find_map(|g| bound_at(t, g)).unwrap_or_else(|| {
        // Three kinds (first, last, the rest) and each option a real stage: at most
        // 4n states and n² options per device.
        bound_at(t, Grain::None).unwrap_or(0.0)
    })
}

/// The bound with units told apart at `grain`; None if that takes more than
/// [`MAX_STATES`] states or [`MAX_WORK`] updates (never at [`Grain::None`]).
fn bound_at(t: &Tables, grain: Grain) -> Option<f64> {
    let kind = kinds(t, grain);
    let radix = Radix::new(&kind);
    let coarsest = matches!(grain, Grain::None);
    if radix.states > MAX_STATES && !coarsest {
        return None;
    }
    let options: Vec<Vec<Choice>> = (0..t.nd).map(|d| options(t, &kind, &radix, d)).collect();
    let work = options.iter().flatten().fold(0usize, |w, o| w.saturating_add(radix.fits(o)));
    if work > MAX_WORK && !coarsest {
        return None;
    }
    let mut g = vec![INF; radix.states];
    g[0] = 0.0;
    for device in &options {
        let old = g.clone();
        for o in device {
            radix.add(&mut g, &old, o);
        }
    }
    Some(g[radix.states - 1])
}

#[cfg(test)]
mod tests {
    use super::super::tests::{permutations, problem};
    use super::*;
    use crate::plan::problem::Link;

    #[test]
    fn one_stage_per_device_bounds_the_optimum_and_is_exact_when_places_do_not_matter() {
        let optimum = |t: &Tables| {
            let mut work = Vec::new();
            permutations((0..t.nd).collect()).iter().map(|o| t.order_cost(o, &mut work)).fold(INF, f64::min)
        };
        // Units of four kinds and links that differ per pair: a bound, not always exact.
        let speeds: [&[f64]; 3] = [&[1.0, 2.5, 0.7, 1.8, 3.0], &[0.5, 0.6, 2.0, 1.1, 1.4], &[2.0, 2.0, 1.0, 0.3, 0.9]];
        let mut strict = 0;
        for speed in speeds {
            let p = problem(speed, &[3.5, 2.5, 5.0, 3.0, 2.5], 16);
            let t = Tables::new(&p);
            let (b, o) = (bound(&t), optimum(&t));
            assert!(o.is_finite() && b <= o * (1.0 + 1e-12), "bound {b} over the optimum {o}");
            assert!(b > 0.5 * o, "bound {b} against {o}");
            strict += usize::from(b < o * (1.0 - 1e-9));
            // Coarser kinds relax more: never above the finer bound.
            let mut finer = b;
            for grain in [Grain::Bytes, Grain::None] {
                let coarse = bound_at(&t, grain).unwrap();
                assert!(coarse <= finer * (1.0 + 1e-12) && coarse > 0.3 * o, "{grain:?}: {coarse} against {finer}");
                finer = coarse;
            }
        }
        assert!(strict > 0, "the per-pair links and kinds leave some gap");
        // Identical units and one link everywhere: any sizes can go in any order.
        for speed in speeds {
            let mut p = problem(speed, &[3.5, 2.5, 5.0, 3.0, 2.5], 16);
            let per = |row: &mut Vec<f64>| {
                let mean = row.iter().sum::<f64>() / row.len() as f64;
                row.fill(mean);
            };
            p.prefill.iter_mut().chain(p.decode.iter_mut()).for_each(per);
            p.private_bytes.fill(0.8);
            p.links.iter_mut().flatten().for_each(|l| *l = Link { bandwidth: 30.0, latency: 0.002 });
            let t = Tables::new(&p);
            let (b, o) = (bound(&t), optimum(&t));
            assert!(o.is_finite() && (b - o).abs() <= 1e-12 * o, "bound {b} against the optimum {o}");
        }
    }
}

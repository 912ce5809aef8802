//! Throughput objective: bisection over the candidate bottlenecks, each a depth-first
//! feasibility search over device sequences.

use std::collections::HashMap;

use super::{better, reaches, Clock, Found, Tables};
use crate::plan::problem::Plan;

/// Most devices for the dense feasibility table (2^20 entries of 4 bytes).
const DENSE_DEVICES: usize = 20;

/// Subgradient steps of the device prices per feasibility test.
const PRICE_STEPS: usize = 300;

/// What the prices say about a candidate.
enum Prices {
    Refuted,
    Best { price: Vec<f64>, to_go: Vec<f64> },
}

/// Positions as a bit set.
#[derive(Clone, Debug, PartialEq)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n / 64 + 1])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &x)| (0..64).filter(move |b| x >> b & 1 == 1).map(move |b| w * 64 + b))
    }
    fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }
    /// Remove `seen`'s positions from `self`, then add `self`'s to `seen`.
    fn subtract_into(&mut self, seen: &mut Bits) {
        for (a, b) in self.0.iter_mut().zip(&mut seen.0) {
            *a &= !*b;
            *b |= *a;
        }
    }
}

/// Answer of one feasibility search.
enum Answer {
    /// A device sequence that keeps every stage and link within the candidate.
    Yes(Vec<usize>),
    No,
    /// The node budget or the clock ran out.
    Unknown,
}

/// One feasibility search: is there a plan whose every stage and link costs at most `cap`?
struct Check<'t, 'p> {
    t: &'t Tables<'p>,
    cap: f64,
    /// `reach[d][s]`: farthest end of a stage from `s` on `d` within memory and `cap`.
    reach: Vec<Vec<usize>>,
    /// Longest run of units each device can take anywhere.
    longest: Vec<usize>,
    /// Largest weight (summed decode time over all devices) of a run each device can
    /// take anywhere: a second capacity test, for units of different sizes.
    heaviest: Vec<f64>,
    /// Devices, longest run first.
    by_run: Vec<usize>,
    seen: HashMap<(u64, usize), Bits>,
    /// No link anywhere costs more than the candidate: a partial plan is then worth its
    /// farthest position alone (a later start never reaches less), kept per key here.
    links_free: bool,
    farthest: HashMap<(u64, usize), usize>,
    /// Device prices and the cheapest priced path from each position ([`Check::prices`];
    /// zero when links bind).
    price: Vec<f64>,
    to_go: Vec<f64>,
    /// Sum of the prices.
    priced: f64,
    nodes: u64,
    budget: u64,
}

impl Check<'_, '_> {
    fn new<'t, 'p>(t: &'t Tables<'p>, cap: f64, budget: u64) -> Check<'t, 'p> {
        let reach: Vec<Vec<usize>> =
            (0..t.nd).map(|d| reaches(t.n, |s, e| e <= t.reach[d][s] && t.stage(d, s, e) <= cap)).collect();
        let longest: Vec<usize> =
            reach.iter().map(|r| r.iter().enumerate().map(|(s, &e)| e - s).max().unwrap_or(0)).collect();
        let heaviest: Vec<f64> = reach
            .iter()
            .map(|r| r.iter().enumerate().map(|(s, &e)| t.weight[e] - t.weight[s]).fold(0.0, f64::max))
            .collect();
        let mut by_run: Vec<usize> = (0..t.nd).collect();
        by_run.sort_by(|&a, &b| longest[b].cmp(&longest[a]).then(a.cmp(&b)));
        let links_free = t.max_link <= cap;
        Check {
            t,
            cap,
            reach,
            longest,
            heaviest,
            by_run,
            seen: HashMap::new(),
            links_free,
            farthest: HashMap::new(),
            price: vec![0.0; t.nd],
            to_go: vec![0.0; t.n + 1],
            priced: 0.0,
            nodes: 0,
            budget,
        }
    }

    /// Weight of the units from `p` to the end.
    fn weight_left(&self, p: usize) -> f64 {
        self.t.weight[self.t.n] - self.t.weight[p]
    }

    fn run(&mut self, clock: &Clock) -> Answer {
        let n = self.t.n;
        let capacity: usize = self.longest.iter().sum();
        let heavy: f64 = self.heaviest.iter().sum();
        if capacity < n || heavy < self.weight_left(0) * (1.0 - 1e-12) {
            return Answer::No;
        }
        if self.links_free && self.t.nd <= DENSE_DEVICES {
            return self.dense();
        }
        if self.links_free {
            match self.prices() {
                Prices::Refuted => return Answer::No,
                Prices::Best { price, to_go } => {
                    self.priced = price.iter().sum();
                    (self.price, self.to_go) = (price, to_go);
                }
            }
        }
        let mut start = Bits::new(n);
        start.set(0);
        let mut seq = Vec::new();
        match self.go(0, None, &start, (capacity, heavy, self.priced), &mut seq, clock) {
            Some(true) => Answer::Yes(seq),
            Some(false) => Answer::No,
            None => Answer::Unknown,
        }
    }

    /// Every device set in increasing order (a set's subsets come before it), each with
    /// the farthest position its devices reach in some order: exact when no link binds.
    fn dense(&mut self) -> Answer {
        let (n, nd) = (self.t.n, self.t.nd);
        let sets = 1usize << nd;
        // u32::MAX: the set cannot be used as a prefix.
        let mut far = vec![u32::MAX; sets];
        far[0] = 0;
        for set in 0..sets {
            let here = far[set];
            if here == u32::MAX {
                continue;
            }
            // Bounded by 2^20 sets: not held to the budget.
            self.nodes += 1;
            for b in 0..nd {
                if !self.t.may_use(set as u64, b) {
                    continue;
                }
                let to = self.reach[b][here as usize];
                if to == here as usize {
                    continue;
                }
                let slot = &mut far[set | 1 << b];
                if *slot == u32::MAX || (to as u32) > *slot {
                    *slot = to as u32;
                }
                if to == n {
                    // Walk back: a device of the set whose stage reached this far.
                    let mut seq = Vec::new();
                    let (mut set, mut at) = (set | 1 << b, n);
                    while set != 0 {
                        let Some(d) = (0..nd).find(|&d| {
                            let rest = far[set & !(1 << d)];
                            set & (1 << d) != 0
                                && rest != u32::MAX
                                && (rest as usize) < at
                                && self.reach[d][rest as usize] >= at
                        }) else {
                            return Answer::Unknown;
                        };
                        seq.push(d);
                        set &= !(1 << d);
                        at = far[set] as usize;
                    }
                    seq.reverse();
                    return Answer::Yes(seq);
                }
            }
        }
        Answer::No
    }

    /// `to_go[p]`: the cheapest way from `p` to the end when every stage costs its
    /// device's price and devices may be reused (a stage runs as far as it reaches: from
    /// farther on, never more is needed), and the device of its first stage.
    fn priced_paths(&self, price: &[f64]) -> (Vec<f64>, Vec<usize>) {
        let n = self.t.n;
        let mut to_go = vec![f64::INFINITY; n + 1];
        let mut first = vec![usize::MAX; n + 1];
        to_go[n] = 0.0;
        for p in (0..n).rev() {
            for (d, reach) in self.reach.iter().enumerate() {
                let e = reach[p];
                if e > p && price[d] + to_go[e] < to_go[p] {
                    (to_go[p], first[p]) = (price[d] + to_go[e], d);
                }
            }
        }
        (to_go, first)
    }

    /// Prices of the devices (Lagrange multipliers of "each device once") by subgradient
    /// ascent. A plan uses each device once at most, so from any position its devices'
    /// prices sum to at most the prices of the devices still free; when even the
    /// cheapest priced path from the start costs more than every price together, no
    /// plan keeps its stages within the candidate. Otherwise the best prices found, for
    /// the search to prune with.
    fn prices(&self) -> Prices {
        let (n, nd) = (self.t.n, self.t.nd);
        let mut price = vec![1.0 / nd as f64; nd];
        let mut best: Option<(f64, Vec<f64>, Vec<f64>)> = None;
        let mut theta = 1.0;
        let mut stall = 0;
        for _ in 0..PRICE_STEPS {
            let (to_go, first) = self.priced_paths(&price);
            let total: f64 = price.iter().sum();
            let margin = to_go[0] - total;
            if margin > 1e-9 * total {
                return Prices::Refuted;
            }
            if best.as_ref().is_none_or(|b| margin > b.0) {
                best = Some((margin, price.clone(), to_go));
                stall = 0;
            } else {
                stall += 1;
                if stall >= 10 {
                    (theta, stall) = (theta / 2.0, 0);
                }
            }
            let mut count = vec![0.0f64; nd];
            let mut p = 0;
            while p < n {
                let d = first[p];
                count[d] += 1.0;
                p = self.reach[d][p];
            }
            let norm: f64 = count.iter().map(|c| (c - 1.0) * (c - 1.0)).sum();
            // Aim a little past zero: refuting needs the margin positive.
            let step = theta * (0.01 * total - margin) / norm.max(1.0);
            for (x, c) in price.iter_mut().zip(&count) {
                *x = (*x + step * (c - 1.0)).max(0.0);
            }
            let sum: f64 = price.iter().sum();
            if sum <= 0.0 || theta < 1e-6 {
                break;
            }
            price.iter_mut().for_each(|x| *x /= sum);
        }
        let (_, price, to_go) = best.unwrap_or_else(|| (0.0, vec![0.0; nd], vec![0.0; n + 1]));
        Prices::Best { price, to_go }
    }

    /// From the positions `at` (where the next stage may start), with devices `set`
    /// used, the last `last`, and `free` units, weight and price of longest and
    /// heaviest runs left on the others.
    /// `Some(true)` with `seq` completed, `Some(false)` if no completion, `None` when out of budget.
    fn go(
        &mut self,
        set: u64,
        last: Option<usize>,
        at: &Bits,
        free: (usize, f64, f64),
        seq: &mut Vec<usize>,
        clock: &Clock,
    ) -> Option<bool> {
        let n = self.t.n;
        for i in 0..self.by_run.len() {
            let b = self.by_run[i];
            if !self.t.may_use(set, b) {
                continue;
            }
            self.nodes += 1;
            if self.nodes > self.budget || (self.nodes.is_multiple_of(4096) && clock.out()) {
                return None;
            }
            let mut next = Bits::new(n);
            let mut far = 0;
            // With links free `at` holds one position, the farthest.
            for s in at.ones() {
                if s >= n || self.reach[b][s] == s || last.is_some_and(|a| self.t.link(s, a, b) > self.cap) {
                    continue;
                }
                if !self.links_free {
                    for e in s + 1..=self.reach[b][s] {
                        next.set(e);
                    }
                }
                far = far.max(self.reach[b][s]);
            }
            if far == 0 {
                continue;
            }
            if far == n {
                seq.push(b);
                return Some(true);
            }
            let free = (free.0 - self.longest[b], free.1 - self.heaviest[b], free.2 - self.price[b]);
            // Even the longest (heaviest) runs of every free device cannot reach the end,
            // or every way on costs more than the free devices' prices.
            if n - far > free.0
                || self.weight_left(far) > free.1 * (1.0 + 1e-12)
                || (self.links_free && self.to_go[far] > free.2 + 1e-9 * self.priced)
            {
                continue;
            }
            let key = (set | 1 << b, self.t.link_class[b]);
            if self.links_free {
                let before = self.farthest.entry(key).or_insert(0);
                if *before >= far {
                    continue;
                }
                *before = far;
                next.set(far);
            } else {
                let seen = self.seen.entry(key).or_insert_with(|| Bits::new(n));
                next.subtract_into(seen);
                if next.is_empty() {
                    continue;
                }
            }
            seq.push(b);
            match self.go(set | 1 << b, Some(b), &next, free, seq, clock) {
                Some(false) => {
                    seq.pop();
                }
                other => return other,
            }
        }
        Some(false)
    }
}

pub(super) fn solve(t: &Tables, incumbent: Option<(Plan, f64)>, budget: u64, clock: &Clock) -> Found {
    let (n, nd) = (t.n, t.nd);
    let mut best = incumbent;
    let upper = best.as_ref().map_or(f64::INFINITY, |b| b.1);
    // Every unit runs somewhere: no plan beats the slowest unit on its fastest device.
    let floor = (0..n).map(|u| (0..nd).map(|d| t.stage(d, u, u + 1)).fold(f64::INFINITY, f64::min)).fold(0.0, f64::max);
    // The optimum is the cost of one of its stages or links.
    let mut cands: Vec<f64> = Vec::new();
    for d in 0..nd {
        for s in 0..n {
            for e in s + 1..=t.reach[d][s] {
                cands.push(t.stage(d, s, e));
            }
        }
    }
    for s in 1..n {
        for a in 0..nd {
            cands.extend((0..nd).filter(|&b| b != a).map(|b| t.link(s, a, b)));
        }
    }
    // Allow for the incumbent's sums being formed in another order.
    cands.retain(|&c| c >= floor && c <= upper * (1.0 + 1e-9));
    cands.sort_by(f64::total_cmp);
    cands.dedup();
    // lo: candidates below index lo are proven infeasible; hi: the search range's end,
    // first at the incumbent (known feasible).
    let (mut lo, mut hi) = (0usize, cands.partition_point(|&c| c < upper * (1.0 - 1e-9)));
    let mut nodes = 0u64;
    let mut timed_out = false;
    let mut unknown = false;
    let mut first = true;
    while lo < hi {
        // First the candidate just below the incumbent: one refusal proves it optimal.
        let mid = if std::mem::take(&mut first) { hi - 1 } else { lo + (hi - lo) / 2 };
        let left = budget.saturating_sub(nodes);
        if left == 0 || clock.out() {
            timed_out = left > 0;
            unknown = true;
            break;
        }
        // A quarter of what is left per test: one undecided test near the optimum leaves
        // budget for the tests below it, which bound the gap.
        let mut check = Check::new(t, cands[mid], left.div_ceil(4));
        let answer = check.run(clock);
        nodes += check.nodes;
        match answer {
            Answer::Yes(seq) => {
                best = better(best, t.plan_for(&seq));
                hi = mid;
            }
            Answer::No => lo = mid + 1,
            Answer::Unknown => {
                // Look below for proofs; what lies between stays unproven.
                unknown = true;
                timed_out |= clock.out();
                hi = mid;
            }
        }
    }
    let lower = match (cands.get(lo), &best) {
        // Every candidate up to the incumbent proven infeasible: it is optimal.
        (None, Some((_, v))) if !unknown => *v,
        (None, None) => f64::INFINITY,
        (Some(&c), _) => c,
        (None, Some(_)) => cands.last().copied().unwrap_or(floor),
    };
    let lower = if best.is_none() && !unknown { f64::INFINITY } else { lower };
    Found { plan: best, lower, nodes, timed_out }
}

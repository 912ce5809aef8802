//! Latency objective: best-first branch and bound with a Lagrangian completion bound.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;

use super::improve::{full_order, EVALUATIONS};
use super::knapsack;
use super::lagrange::{multipliers, relax, Critical};
use super::{better, Clock, Found, Tables, ABS_EPS, REL_EPS};
use crate::plan::problem::Plan;

const INF: f64 = f64::INFINITY;

/// How a row entry was reached: the stage's start, its device and the link class of
/// the device before (`u32::MAX`: none, the first stage).
#[derive(Clone, Copy, Debug)]
struct Back {
    start: u32,
    device: u32,
    before: u32,
}

/// Costs of covering units up to each position, over a window of positions.
#[derive(Clone, Debug)]
struct Row {
    lo: usize,
    v: Vec<f64>,
    back: Vec<Back>,
}

impl Row {
    fn get(&self, e: usize) -> f64 {
        e.checked_sub(self.lo).and_then(|i| self.v.get(i)).copied().unwrap_or(INF)
    }

    /// Narrow the window to the entries `span` (indices into it).
    fn narrow(&mut self, span: Range<usize>) {
        if span.start > 0 || span.end < self.v.len() {
            self.v.truncate(span.end);
            self.back.truncate(span.end);
            self.v.drain(..span.start);
            self.back.drain(..span.start);
            self.lo += span.start;
        }
    }

    /// Pointwise minimum with `other`, widening the window as needed.
    fn merge(&mut self, other: Row) {
        let lo = self.lo.min(other.lo);
        let hi = (self.lo + self.v.len()).max(other.lo + other.v.len());
        if lo != self.lo || hi != self.lo + self.v.len() {
            let none = Back { start: 0, device: 0, before: 0 };
            let (mut v, mut back) = (vec![INF; hi - lo], vec![none; hi - lo]);
            let at = self.lo - lo;
            v[at..at + self.v.len()].copy_from_slice(&self.v);
            back[at..at + self.v.len()].copy_from_slice(&self.back);
            (self.lo, self.v, self.back) = (lo, v, back);
        }
        for (i, (x, b)) in other.v.into_iter().zip(other.back).enumerate() {
            let at = other.lo + i - self.lo;
            if x < self.v[at] {
                (self.v[at], self.back[at]) = (x, b);
            }
        }
    }
}

/// The next stage on `b` after a row whose last device is `last` (of link class
/// `class`; None: the first stage): for each end, the cheapest start the row allows
/// (sliding-window minimum, since the memory reach never falls as the start grows).
/// The row is left in `sc` (`v` and `back` from position `lo`, returned).
fn extend(t: &Tables, row: &Row, last: Option<(usize, usize)>, b: usize, sc: &mut Scratch) -> Option<usize> {
    let n = t.n;
    let reach = &t.reach[b];
    let starts = row.lo..(row.lo + row.v.len()).min(n);
    let lo = starts.clone().find(|&s| row.get(s) < INF && reach[s] > s)? + 1;
    let hi = starts.clone().filter(|&s| row.get(s) < INF).map(|s| reach[s]).max()?;
    let before = last.map_or(u32::MAX, |(_, c)| c as u32);
    sc.v.clear();
    sc.v.resize(hi + 1 - lo, INF);
    sc.back.clear();
    sc.back.resize(hi + 1 - lo, Back { start: 0, device: b as u32, before });
    let (v, back, window) = (&mut sc.v, &mut sc.back, &mut sc.window);
    window.clear();
    let mut next = lo - 1;
    for e in lo..=hi {
        while next < e && next < starts.end {
            let c = row.get(next);
            if c < INF {
                let link = last.map_or(0.0, |(a, _)| t.link(next, a, b));
                let base = c + link - t.acc[b][next];
                while window.back().is_some_and(|&(_, x)| x >= base) {
                    window.pop_back();
                }
                window.push_back((next, base));
            }
            next += 1;
        }
        while window.front().is_some_and(|&(s, _)| reach[s] < e) {
            window.pop_front();
        }
        if let Some(&(s, base)) = window.front() {
            v[e - lo] = base + t.acc[b][e];
            back[e - lo].start = s as u32;
        }
    }
    Some(lo)
}

/// Buffers [`extend`] reuses from one extension to the next.
#[derive(Default)]
struct Scratch {
    v: Vec<f64>,
    back: Vec<Back>,
    window: VecDeque<(usize, f64)>,
}

/// Partial plans with one set of devices whose last device is of one link class.
struct Entry {
    /// A device of the class in the set (the links from any of them cost the same).
    last: usize,
    row: Row,
}

type Key = (u64, usize);

/// The layered search's state.
struct Layers<'t, 'p> {
    t: &'t Tables<'p>,
    lambda: Vec<f64>,
    total: f64,
    /// `after[critical.at(nd, e, class, m)]`: cheapest relaxed completion from `e` after
    /// a device of `class`, the critical devices of mask `m` used.
    after: Vec<f64>,
    critical: Critical,
    upper: f64,
    /// Key whose row holds the best complete plan the search found.
    own: Option<Key>,
    frontier: BTreeMap<Key, Entry>,
    done: HashMap<Key, Entry>,
    scratch: Scratch,
}

impl Layers<'_, '_> {
    /// Multipliers of the devices not in `set`.
    fn free(&self, set: u64) -> f64 {
        self.total - (0..self.t.nd).filter(|&d| set & (1 << d) != 0).map(|d| self.lambda[d]).sum::<f64>()
    }

    fn keep(&self, bound: f64) -> bool {
        bound < self.upper * (1.0 - REL_EPS) - ABS_EPS
    }

    /// Drop the positions of a row of `key` (starting at position `lo`) whose bound
    /// cannot beat the incumbent (positions at the end stay, for the walk back): the least
    /// bound left (infinite if none) and the span of the finite entries left.
    fn cut(&self, key: Key, lo: usize, v: &mut [f64]) -> (f64, Range<usize>) {
        let slack = self.free(key.0);
        let mask = self.critical.mask(key.0);
        let after = |e: usize| self.after[self.critical.at(self.t.nd, e, key.1, mask)];
        let mut least = INF;
        let (mut first, mut end) = (v.len(), 0);
        for (i, x) in v.iter_mut().enumerate() {
            let e = lo + i;
            if *x == INF {
                continue;
            }
            if e < self.t.n {
                let bound = *x + after(e) - slack;
                if !self.keep(bound) {
                    *x = INF;
                    continue;
                }
                least = least.min(bound);
            }
            first = first.min(i);
            end = i + 1;
        }
        (least, first..end.max(first))
    }

    /// [`Layers::cut`] on an entry, its row narrowed to what is left; the least bound.
    fn prune(&self, key: Key, entry: &mut Entry) -> f64 {
        let (least, span) = self.cut(key, entry.row.lo, &mut entry.row.v);
        entry.row.narrow(span);
        least
    }

    /// Drop the positions that the same devices but one, ending in the same link class,
    /// reach as cheaply: every completion of this key is open to that one too.
    fn dominated(&self, key: Key, entry: &mut Entry) {
        for d in 0..self.t.nd {
            if key.0 & (1 << d) == 0 {
                continue;
            }
            let Some(fewer) = self.done.get(&(key.0 & !(1 << d), key.1)) else { continue };
            for (i, x) in entry.row.v.iter_mut().enumerate() {
                let e = entry.row.lo + i;
                if e < self.t.n && fewer.row.get(e) <= *x {
                    *x = INF;
                }
            }
        }
    }

    /// Add every one-stage extension of a row (of key `from`; None: the empty plan);
    /// returns how many were formed.
    fn expand(&mut self, from: Option<(Key, usize)>, row: &Row) -> u64 {
        let t = self.t;
        let set = from.map_or(0, |((set, _), _)| set);
        let last = from.map(|((_, class), last)| (last, class));
        let mut made = 0;
        let mut sc = std::mem::take(&mut self.scratch);
        for b in 0..t.nd {
            if !t.may_use(set, b) {
                continue;
            }
            let Some(lo) = extend(t, row, last, b, &mut sc) else { continue };
            made += 1;
            let key = (set | 1 << b, t.link_class[b]);
            if let Some(&complete) = t.n.checked_sub(lo).and_then(|i| sc.v.get(i)) {
                if complete < self.upper {
                    self.upper = complete;
                    self.own = Some(key);
                }
            }
            let (_, span) = self.cut(key, lo, &mut sc.v);
            if span.is_empty() {
                continue;
            }
            let child = Row { lo: lo + span.start, v: sc.v[span.clone()].to_vec(), back: sc.back[span].to_vec() };
            match self.frontier.get_mut(&key) {
                Some(e) => e.row.merge(child),
                None => {
                    self.frontier.insert(key, Entry { last: b, row: child });
                }
            }
        }
        self.scratch = sc;
        made
    }

    /// The devices of the best complete plan, walked back through the rows.
    fn order(&self) -> Option<Vec<usize>> {
        let (mut key, mut pos) = (self.own?, self.t.n);
        let mut order = Vec::new();
        loop {
            let entry = self.done.get(&key).or_else(|| self.frontier.get(&key))?;
            let back = *pos.checked_sub(entry.row.lo).and_then(|i| entry.row.back.get(i))?;
            order.push(back.device as usize);
            if back.before == u32::MAX {
                break;
            }
            key = (key.0 & !(1 << back.device), back.before as usize);
            pos = back.start as usize;
        }
        order.reverse();
        Some(order)
    }
}

/// The incumbent after [`Tables::improve`] on its device order.
fn polish(t: &Tables, incumbent: Option<(Plan, f64)>) -> Option<(Plan, f64)> {
    let used: Vec<usize> = incumbent.as_ref()?.0.iter().map(|s| s.device.index()).collect();
    let (order, _) = t.improve(full_order(&used, t.nd), EVALUATIONS);
    better(incumbent, t.plan_for(&order))
}

pub(super) fn solve(t: &Tables, incumbent: Option<(Plan, f64)>, budget: u64, clock: &Clock) -> Found {
    let (n, nd) = (t.n, t.nd);
    // A better incumbent aims the subgradient steps better and prunes more.
    let mut best = polish(t, incumbent);
    // Devices kept to one stage each, places forgotten: exact for identical layers on
    // like links, and cheap; when it meets the incumbent nothing is left to search.
    let tally = knapsack::bound(t);
    if tally == INF || best.as_ref().is_some_and(|b| tally >= b.1 * (1.0 - REL_EPS) - ABS_EPS) {
        let lower = best.as_ref().map_or(INF, |b| b.1);
        return Found { plan: best, lower, nodes: 0, timed_out: false };
    }
    let (critical, lambda, root_bound) = multipliers(t, &mut best, clock);
    let best = polish(t, best);
    if root_bound == INF {
        return Found { plan: None, lower: INF, nodes: 0, timed_out: false };
    }
    let root_bound = root_bound.max(tally);
    let relaxed = relax(t, &lambda, &critical);
    let mut after = vec![INF; relaxed.after.len()];
    for e in 0..=n {
        for a in 0..nd {
            for m in 0..critical.masks() {
                let c = &mut after[critical.at(nd, e, t.link_class[a], m)];
                *c = c.min(relaxed.after[critical.at(nd, e, a, m)]);
            }
        }
    }
    let mut s = Layers {
        t,
        total: lambda.iter().sum(),
        lambda,
        after,
        critical,
        upper: best.as_ref().map_or(INF, |b| b.1),
        own: None,
        frontier: BTreeMap::new(),
        done: HashMap::new(),
        scratch: Scratch::default(),
    };
    let root = Row { lo: 0, v: vec![0.0], back: vec![Back { start: 0, device: 0, before: u32::MAX }] };
    let mut nodes = s.expand(None, &root);
    let mut stopped: Option<bool> = None;
    // Keys in increasing order of their device set: every subset of a set comes first,
    // so a key's row is complete when it is taken.
    while let Some((key, mut entry)) = s.frontier.pop_first() {
        s.dominated(key, &mut entry);
        let live = s.prune(key, &mut entry) < INF;
        if live {
            if nodes >= budget || clock.out() {
                stopped = Some(nodes < budget);
                s.frontier.insert(key, entry);
                break;
            }
            nodes += s.expand(Some((key, entry.last)), &entry.row);
        }
        s.done.insert(key, entry);
    }
    let lower = match stopped {
        None => INF,
        // Every plan not yet found continues some key left in the frontier.
        Some(_) => {
            let mut frontier = std::mem::take(&mut s.frontier);
            let least = frontier.iter_mut().map(|(&key, entry)| s.prune(key, entry)).fold(INF, f64::min);
            s.frontier = frontier;
            least.max(root_bound)
        }
    };
    let plan = match s.order() {
        Some(order) => better(best, t.plan_for(&order)),
        None => best,
    };
    let lower = if stopped.is_none() {
        plan.as_ref().map_or(INF, |p| p.1)
    } else {
        lower.min(plan.as_ref().map_or(INF, |p| p.1))
    };
    Found { plan, lower, nodes, timed_out: stopped == Some(true) }
}

//! Exact search over which devices to use and in which order, exploiting that devices
//! with the same speeds, budget and links are interchangeable.
//!
//! Devices fall into classes of identical devices; a plan is then a sequence of
//! classes (each used at most as often as it has members) with a split of the units.
//! A dynamic program over (how many of each class are used, class of the last stage,
//! units covered) is exact for both objectives: the latency objective adds stage and
//! link costs, the throughput objective takes their maximum, and both are monotone in
//! the prefix. Its size is the product of (class size + 1) over classes, times the
//! number of classes and units; [`solve`] declines instances where that exceeds
//! [`MAX_STATES`] (many distinct devices), which the integer program then handles.

use super::problem::{DeviceId, Plan, Problem, Stage};

/// Largest state space the search takes on.
pub const MAX_STATES: usize = 40_000_000;

/// Classes of interchangeable devices, each a list of devices.
pub fn classes(p: &Problem) -> Vec<Vec<DeviceId>> {
    let mut classes: Vec<Vec<DeviceId>> = Vec::new();
    'device: for d in DeviceId::all(p.devices()) {
        for class in &mut classes {
            let r = class[0];
            let same_spec = p.budget[r] == p.budget[d] && p.prefill[r] == p.prefill[d] && p.decode[r] == p.decode[d];
            if !same_spec {
                continue;
            }
            let same_links =
                DeviceId::all(p.devices()).filter(|&x| x != r && x != d).all(|x| p.links[r][x] == p.links[d][x])
                    && class.iter().skip(1).all(|&m| p.links[r][m] == p.links[d][m] || m == d)
                    && class.iter().all(|&m| m == r || p.links[r][m] == p.links[r][d]);
            if same_links {
                class.push(d);
                continue 'device;
            }
        }
        classes.push(vec![d]);
    }
    classes
}

/// Whether the instance is small enough for this search.
pub fn fits(p: &Problem) -> bool {
    states(p, &classes(p)).is_some()
}

fn states(p: &Problem, classes: &[Vec<DeviceId>]) -> Option<usize> {
    let vectors = classes.iter().try_fold(1usize, |v, c| v.checked_mul(c.len() + 1))?;
    vectors.checked_mul(classes.len())?.checked_mul(p.units() + 1).filter(|&s| s <= MAX_STATES)
}

/// The exact optimum, `Some(None)` when nothing fits, or `None` when the instance is
/// too large for this search.
pub fn solve(p: &Problem) -> Option<Option<(Plan, f64)>> {
    let n = p.units();
    let classes = classes(p);
    states(p, &classes)?;
    let c_count = classes.len();
    let mut radix = Vec::with_capacity(c_count);
    let mut vectors = 1usize;
    for class in &classes {
        radix.push(vectors);
        vectors = vectors.checked_mul(class.len() + 1)?;
    }
    let states = vectors.checked_mul(c_count)?.checked_mul(n + 1)?;
    if states > MAX_STATES {
        return None;
    }
    let rep: Vec<DeviceId> = classes.iter().map(|c| c[0]).collect();
    // Link between consecutive stages on classes a then b.
    let link_device = |a: usize, b: usize| -> Option<(DeviceId, DeviceId)> {
        if a != b {
            Some((rep[a], rep[b]))
        } else {
            classes[a].get(1).map(|&second| (rep[a], second))
        }
    };
    // Farthest end of a stage starting at `i` on each class, by memory.
    let reach: Vec<Vec<usize>> = rep
        .iter()
        .map(|&d| {
            (0..n)
                .map(|i| {
                    let mut end = i;
                    while end < n && p.memory(i, end + 1) <= p.budget[d] {
                        end += 1;
                    }
                    end
                })
                .collect()
        })
        .collect();
    let idx = |v: usize, c: usize, pos: usize| (v * c_count + c) * (n + 1) + pos;
    let mut cost = vec![f64::INFINITY; states];
    // Back pointer: previous class (u16::MAX for the first stage) and previous position.
    let mut back = vec![(u16::MAX, 0u32); states];
    let count_of = |v: usize, c: usize| (v / radix[c]) % (classes[c].len() + 1);
    for c in 0..c_count {
        for end in 1..=reach[c][0] {
            let s = idx(radix[c], c, end);
            cost[s] = p.stage_cost(rep[c], 0, end);
        }
    }
    for pos in 1..n {
        for v in 0..vectors {
            for c in 0..c_count {
                let here = cost[idx(v, c, pos)];
                if !here.is_finite() {
                    continue;
                }
                for c2 in 0..c_count {
                    if count_of(v, c2) == classes[c2].len() {
                        continue;
                    }
                    let Some((a, b)) = link_device(c, c2) else { continue };
                    let before = p.combine(here, p.link_cost(pos - 1, a, b));
                    let v2 = v + radix[c2];
                    for end in pos + 1..=reach[c2][pos] {
                        let total = p.combine(before, p.stage_cost(rep[c2], pos, end));
                        let s = idx(v2, c2, end);
                        if total < cost[s] {
                            cost[s] = total;
                            back[s] = (c as u16, pos as u32);
                        }
                    }
                }
            }
        }
    }
    let mut best: Option<(usize, usize, f64)> = None;
    for v in 0..vectors {
        for c in 0..c_count {
            let x = cost[idx(v, c, n)];
            if x.is_finite() && best.is_none_or(|(_, _, b)| x < b) {
                best = Some((v, c, x));
            }
        }
    }
    let Some((mut v, mut c, value)) = best else { return Some(None) };
    // Walk back to the sequence of (class, start, end).
    let mut stages = Vec::new();
    let mut end = n;
    loop {
        let (prev_c, prev_pos) = back[idx(v, c, end)];
        let start = if prev_c == u16::MAX { 0 } else { prev_pos as usize };
        stages.push((c, start, end));
        if prev_c == u16::MAX {
            break;
        }
        v -= radix[c];
        c = prev_c as usize;
        end = start;
    }
    stages.reverse();
    // Hand out the members of each class in order.
    let mut next = vec![0usize; c_count];
    let plan: Plan = stages
        .into_iter()
        .map(|(c, start, end)| {
            let device = classes[c][next[c]];
            next[c] += 1;
            Stage { device, start, end }
        })
        .collect();
    Some(Some((plan, value)))
}

//! Exact dynamic program for a fixed device order (devices may be skipped): the
//! EdgeShard/PipeEdge-style baseline, the completion step of other searches, and —
//! with every device kept and each confined to the units it holds — the re-planner
//! of runtime load balancing.

use std::ops::Range;

use super::problem::{DeviceId, Plan, Problem, Stage};

/// The best plan using devices in `order` (any subsequence of it), or `None`.
pub fn solve(p: &Problem, order: &[DeviceId]) -> Option<(Plan, f64)> {
    solve_in(p, order, None)
}

/// With `held`: the best plan that keeps every device of `order`, in that order, each
/// on a non-empty run of units inside `held[j]` (the units whose weights it has).
/// Without: as [`solve`].
pub fn solve_in(p: &Problem, order: &[DeviceId], held: Option<&[Range<usize>]>) -> Option<(Plan, f64)> {
    let n = p.units();
    let m = order.len();
    if held.is_some_and(|h| h.len() != m) {
        return None;
    }
    let inside = |j: usize, start: usize, end: usize| held.is_none_or(|h| h[j].start <= start && end <= h[j].end);
    // best[i][j]: best objective covering units 0..i with the last stage on order[j].
    let inf = f64::INFINITY;
    let mut best = vec![vec![inf; m]; n + 1];
    let mut back: Vec<Vec<Option<(usize, usize)>>> = vec![vec![None; m]; n + 1];
    for (j, &d) in order.iter().enumerate() {
        // Stages on device order[j], after a stage on an earlier device (or first).
        for start in 0..n {
            if start == 0 && held.is_some() && j > 0 {
                continue;
            }
            let (prev_cost, prev) = if start == 0 {
                (None, None)
            } else {
                // Best predecessor ending at `start` on an earlier device in the order
                // (the one just before when every device is kept).
                let mut pick: Option<(f64, usize)> = None;
                let first = if held.is_some() { j.saturating_sub(1) } else { 0 };
                for (jj, &dd) in order.iter().enumerate().take(j).skip(first) {
                    let c = best[start][jj];
                    if c.is_finite() {
                        let total = p.combine(c, p.link_cost(start - 1, dd, d));
                        if pick.is_none_or(|(b, _)| total < b) {
                            pick = Some((total, jj));
                        }
                    }
                }
                match pick {
                    Some((c, jj)) => (Some(c), Some(jj)),
                    None => continue,
                }
            };
            for end in start + 1..=n {
                if p.memory(start, end) > p.budget[d] {
                    break;
                }
                if !inside(j, start, end) {
                    continue;
                }
                let stage = p.stage_cost(d, start, end);
                let total = match prev_cost {
                    Some(c) => p.combine(c, stage),
                    None => stage,
                };
                if total < best[end][j] {
                    best[end][j] = total;
                    back[end][j] = Some((start, prev.unwrap_or(usize::MAX)));
                }
            }
        }
    }
    let (j, &cost) = best[n]
        .iter()
        .enumerate()
        .filter(|(j, c)| c.is_finite() && (held.is_none() || *j == m - 1))
        .min_by(|a, b| a.1.total_cmp(b.1))?;
    let mut plan = Vec::new();
    let (mut end, mut j) = (n, j);
    while end > 0 {
        let (start, prev) = back[end][j]?;
        plan.push(Stage { device: order[j], start, end });
        end = start;
        j = prev;
    }
    plan.reverse();
    Some((plan, cost))
}

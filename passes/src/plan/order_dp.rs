//! Exact dynamic program for a fixed device order (devices may be skipped): the
//! EdgeShard/PipeEdge-style baseline, and the completion step of other searches.

use super::problem::{Plan, Problem, Stage};

/// The best plan using devices in `order` (any subsequence of it), or `None`.
pub fn solve(p: &Problem, order: &[usize]) -> Option<(Plan, f64)> {
    let n = p.units();
    let m = order.len();
    // best[i][j]: best objective covering units 0..i with the last stage on order[j].
    let inf = f64::INFINITY;
    let mut best = vec![vec![inf; m]; n + 1];
    let mut back: Vec<Vec<Option<(usize, usize)>>> = vec![vec![None; m]; n + 1];
    for (j, &d) in order.iter().enumerate() {
        // Stages on device order[j], after a stage on an earlier device (or first).
        for start in 0..n {
            let (prev_cost, prev) = if start == 0 {
                (None, None)
            } else {
                // Best predecessor ending at `start` on an earlier device in the order.
                let mut pick: Option<(f64, usize)> = None;
                for (jj, &dd) in order.iter().enumerate().take(j) {
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
    let (j, &cost) = best[n].iter().enumerate().filter(|(_, c)| c.is_finite()).min_by(|a, b| a.1.total_cmp(b.1))?;
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

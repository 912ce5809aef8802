//! Exhaustive search over every ordered device subset and every split: the ground
//! truth the other strategies are tested against (small instances only).

use super::problem::{DeviceId, Plan, Problem, Stage};

/// The best feasible plan and its objective, or `None` when nothing fits.
pub fn solve(p: &Problem) -> Option<(Plan, f64)> {
    let mut best: Option<(Plan, f64)> = None;
    let n = p.units();
    let mut order = Vec::new();
    let mut used = vec![false; p.devices()];
    orders(p, n, &mut order, &mut used, &mut best);
    best
}

fn orders(p: &Problem, n: usize, order: &mut Vec<DeviceId>, used: &mut [bool], best: &mut Option<(Plan, f64)>) {
    if !order.is_empty() && order.len() <= n {
        splits(p, order, 0, &mut Vec::new(), best);
    }
    if order.len() == n.min(p.devices()) {
        return;
    }
    for d in DeviceId::all(p.devices()) {
        if !used[d.index()] {
            used[d.index()] = true;
            order.push(d);
            orders(p, n, order, used, best);
            order.pop();
            used[d.index()] = false;
        }
    }
}

fn splits(p: &Problem, order: &[DeviceId], start: usize, stages: &mut Plan, best: &mut Option<(Plan, f64)>) {
    let k = stages.len();
    if k == order.len() - 1 {
        stages.push(Stage { device: order[k], start, end: p.units() });
        if let Ok(f) = p.evaluate(stages) {
            if f.feasible && best.as_ref().is_none_or(|(_, b)| f.objective < *b) {
                *best = Some((stages.clone(), f.objective));
            }
        }
        stages.pop();
        return;
    }
    let remaining = order.len() - k - 1;
    for end in start + 1..=p.units() - remaining {
        stages.push(Stage { device: order[k], start, end });
        splits(p, order, end, stages, best);
        stages.pop();
    }
}

/// Call `f` with every plan that uses `order`'s devices in that order, one stage each,
/// stage `k` starting and ending inside `held[k]` — feasible or not: the ground truth
/// of replanning within standby units (small instances only).
pub fn each_plan_within(p: &Problem, order: &[DeviceId], held: &[std::ops::Range<usize>], f: &mut dyn FnMut(&Plan)) {
    fn go(
        p: &Problem,
        order: &[DeviceId],
        held: &[std::ops::Range<usize>],
        stages: &mut Plan,
        f: &mut dyn FnMut(&Plan),
    ) {
        let k = stages.len();
        let start = stages.last().map_or(0, |s| s.end);
        if k == order.len() {
            if start == p.units() {
                f(stages);
            }
            return;
        }
        let Some(h) = held.get(k) else { return };
        if !h.contains(&start) {
            return;
        }
        for end in start + 1..=h.end.min(p.units()) {
            stages.push(Stage { device: order[k], start, end });
            go(p, order, held, stages, f);
            stages.pop();
        }
    }
    go(p, order, held, &mut Vec::new(), f);
}

//! Local search over device orders for the latency objective: the incumbent that the
//! branch and bound prunes against, and the subgradient ascent aims its steps at.
//!
//! An order is a permutation of every device; its plan is the best split that uses
//! devices in that order, any of them skipped ([`Tables::order_cost`]). A move takes
//! one device out and puts it back at another position (a device skipped in the plan
//! moved into it is a device added; a used one moved behind the skipped ones is one
//! removed), or swaps two devices. Moves are tried in a fixed order, round after round,
//! each taken when it lowers the cost, until a round takes none or the budget of
//! evaluations is spent: the result depends on the inputs alone.

use super::Tables;

const INF: f64 = f64::INFINITY;

/// Most order evaluations of one call (each a dynamic program over units × devices).
pub(super) const EVALUATIONS: usize = 20_000;

impl Tables<'_> {
    /// The latency-objective cost of the best plan using devices in `order` (any
    /// subsequence of it) with `work` as scratch, or infinite when none fits: the sums
    /// the search compares, not the evaluated figures.
    pub(super) fn order_cost(&self, order: &[usize], work: &mut Vec<f64>) -> f64 {
        work.clear();
        self.order_cost_from(order, work, 0)
    }

    /// [`Tables::order_cost`] when `work` already holds the rows of `order[..from]`
    /// (an order that differs from the last one costed from position `from` on).
    fn order_cost_from(&self, order: &[usize], work: &mut Vec<f64>, from: usize) -> f64 {
        let (n, m) = (self.n, order.len());
        // work[j * (n + 1) + e]: cheapest cover of units 0..e whose last stage is on order[j].
        work.truncate(from * (n + 1));
        work.resize(m * (n + 1), INF);
        let mut window: std::collections::VecDeque<(usize, f64)> = std::collections::VecDeque::new();
        for (j, &d) in order.iter().enumerate().skip(from) {
            let reach = &self.reach[d];
            let acc = &self.acc[d];
            window.clear();
            let mut next = 0;
            for e in 1..=n {
                // Starts up to e - 1 enter the window with their cheapest way in.
                while next < e {
                    let s = next;
                    next += 1;
                    let before = if s == 0 {
                        0.0
                    } else {
                        let mut c = INF;
                        for (jj, &dd) in order[..j].iter().enumerate() {
                            let x = work[jj * (n + 1) + s];
                            if x < INF {
                                c = c.min(x + self.link(s, dd, d));
                            }
                        }
                        c
                    };
                    if before == INF || reach[s] <= s {
                        continue;
                    }
                    let base = before - acc[s];
                    while window.back().is_some_and(|&(_, x)| x >= base) {
                        window.pop_back();
                    }
                    window.push_back((s, base));
                }
                while window.front().is_some_and(|&(s, _)| reach[s] < e) {
                    window.pop_front();
                }
                if let Some(&(_, base)) = window.front() {
                    work[j * (n + 1) + e] = base + acc[e];
                }
            }
        }
        (0..m).map(|j| work[j * (n + 1) + n]).fold(INF, f64::min)
    }

    /// Improve `order` by moving one device at a time while that lowers its cost: moves
    /// tried in turn, going on after one that is taken, until a whole round takes none
    /// or `budget` evaluations are spent. The order and its cost.
    pub(super) fn improve(&self, mut order: Vec<usize>, budget: usize) -> (Vec<usize>, f64) {
        let (mut base, mut work) = (Vec::new(), Vec::new());
        let mut cost = self.order_cost(&order, &mut base);
        let m = order.len();
        let mut trial = Vec::with_capacity(m);
        // Moves: (i, j, false) takes the device at i out and puts it back at j;
        // (i, j, true) swaps the devices at i and j.
        let moves: Vec<(usize, usize, bool)> = (0..m)
            .flat_map(|i| (0..m).filter(move |&j| j != i).map(move |j| (i, j, false)))
            .chain((0..m).flat_map(|i| (i + 1..m).map(move |j| (i, j, true))))
            .collect();
        let mut since = 0;
        for &(i, j, swap) in moves.iter().cycle().take(budget) {
            if since == moves.len() {
                break;
            }
            since += 1;
            trial.clear();
            trial.extend_from_slice(&order);
            if swap {
                trial.swap(i, j);
            } else {
                let d = trial.remove(i);
                trial.insert(j, d);
            }
            // The rows before the first position the move changes stay.
            let from = i.min(j);
            work.clear();
            work.extend_from_slice(&base[..from * (self.n + 1)]);
            let c = self.order_cost_from(&trial, &mut work, from);
            if c < cost * (1.0 - 1e-12) {
                (cost, since) = (c, 0);
                std::mem::swap(&mut order, &mut trial);
                std::mem::swap(&mut base, &mut work);
            }
        }
        (order, cost)
    }
}

/// Every device once: those of `used` in their order, then the rest in index order.
pub(super) fn full_order(used: &[usize], devices: usize) -> Vec<usize> {
    let mut order = used.to_vec();
    order.extend((0..devices).filter(|d| !used.contains(d)));
    order
}

#[cfg(test)]
mod tests {
    use super::super::tests::{permutations, problem};
    use super::*;
    use crate::plan::problem::DeviceId;

    #[test]
    fn an_order_costs_what_the_order_dp_finds_and_moves_only_lower_it() {
        let p = problem(&[1.0, 2.5, 0.7, 1.8], &[2.5, 2.0, 4.0, 3.0], 8);
        let t = Tables::new(&p);
        let mut work = Vec::new();
        let orders = permutations((0..4).collect());
        let costs: Vec<f64> = orders.iter().map(|o| t.order_cost(o, &mut work)).collect();
        let least = costs.iter().copied().fold(INF, f64::min);
        let most = costs.iter().copied().filter(|c| c.is_finite()).fold(0.0, f64::max);
        assert!(least.is_finite() && most > least * 1.05, "orders differ: {least} .. {most}");
        for (order, &cost) in orders.iter().zip(&costs) {
            let ids: Vec<DeviceId> = order.iter().map(|&d| DeviceId(d)).collect();
            let exact = super::super::plan_in_order(&p, &ids).map_or(INF, |(_, v)| v);
            assert!(cost == exact || (cost - exact).abs() <= 1e-9 * exact, "{order:?}: {cost} against {exact}");
            // On four devices moving one at a time reaches the best order from any.
            let (better, improved) = t.improve(order.clone(), EVALUATIONS);
            assert!((improved - least).abs() <= 1e-12 * least, "{order:?}: improved to {improved}, best {least}");
            assert_eq!(t.order_cost(&better, &mut work), improved);
            let mut sorted = better.clone();
            sorted.sort();
            assert_eq!(sorted, vec![0, 1, 2, 3], "a permutation stays one");
        }
    }
}

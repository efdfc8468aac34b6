//! The choice of one candidate per group under a byte budget with the least total
//! measured loss: a multiple-choice knapsack solved by the convex-hull greedy
//! (the Lagrangian relaxation's solution path; Sinha & Zoltners 1979, the same
//! marginal-return rule as rate–distortion bit allocation, Shoham & Gersho 1988).
//!
//! Per group the measured points `(bytes, loss)` are reduced to their lower convex
//! hull (dominated and non-convex points dropped). Every group starts at its cheapest
//! point; hull segments of all groups are then taken in order of loss removed per byte
//! (ties: lower group index, then earlier segment), each only when it fits in what is
//! left of the budget; a group whose next segment does not fit takes no later one.
//! The result never exceeds the budget, no group's next hull point fits in what is
//! left ("within one step"), and it is optimal whenever the budget falls on a point of
//! the Lagrangian path (every group's slope threshold the same). Deterministic: no
//! floating-point sums decide the order, only per-segment slopes and indices.

/// One measured candidate of a group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// bytes the group takes at this candidate
    pub bytes: u64,
    /// the measured loss (ΔKL) of this candidate
    pub loss: f64,
}

/// Why no choice exists.
#[derive(Debug, Clone, PartialEq)]
pub enum ChooseError {
    /// the cheapest candidate of every group already exceeds the budget
    BudgetTooSmall { minimum: u64 },
    /// a group has no candidate
    EmptyGroup(usize),
}

/// The candidate index chosen per group.
pub fn choose(groups: &[Vec<Point>], budget: u64) -> Result<Vec<usize>, ChooseError> {
    let hulls: Vec<Vec<usize>> = groups
        .iter()
        .enumerate()
        .map(|(g, pts)| {
            if pts.is_empty() {
                Err(ChooseError::EmptyGroup(g))
            } else {
                Ok(lower_hull(pts))
            }
        })
        .collect::<Result<_, _>>()?;
    let minimum: u64 = groups.iter().zip(&hulls).map(|(p, h)| p[h[0]].bytes).sum();
    if minimum > budget {
        return Err(ChooseError::BudgetTooSmall { minimum });
    }
    // (slope, group, segment)
    let mut segs: Vec<(f64, usize, usize)> = Vec::new();
    for (g, h) in hulls.iter().enumerate() {
        for s in 1..h.len() {
            let (a, b) = (groups[g][h[s - 1]], groups[g][h[s]]);
            segs.push(((a.loss - b.loss) / (b.bytes - a.bytes) as f64, g, s));
        }
    }
    segs.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    let mut at = vec![0usize; groups.len()];
    let mut frozen = vec![false; groups.len()];
    let mut left = budget - minimum;
    for (_, g, s) in segs {
        if frozen[g] || at[g] + 1 != s {
            continue;
        }
        let cost = groups[g][hulls[g][s]].bytes - groups[g][hulls[g][s - 1]].bytes;
        if cost <= left {
            left -= cost;
            at[g] = s;
        } else {
            frozen[g] = true;
        }
    }
    Ok(at.iter().zip(&hulls).map(|(&s, h)| h[s]).collect())
}

/// Indices of the lower convex hull of `pts` in increasing bytes (and decreasing
/// loss): the cheapest point (least loss among equally cheap, then lowest index),
/// then only points that lower the loss at a decreasing rate per byte.
pub fn lower_hull(pts: &[Point]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..pts.len()).collect();
    order.sort_by(|&a, &b| {
        pts[a]
            .bytes
            .cmp(&pts[b].bytes)
            .then(pts[a].loss.total_cmp(&pts[b].loss))
            .then(a.cmp(&b))
    });
    let mut hull: Vec<usize> = Vec::new();
    for i in order {
        let p = pts[i];
        if let Some(&last) = hull.last() {
            // same size or no less loss: dominated
            if p.bytes == pts[last].bytes || p.loss >= pts[last].loss {
                continue;
            }
        }
        // drop points above the chord from their predecessor to p
        while hull.len() >= 2 {
            let (a, b) = (pts[hull[hull.len() - 2]], pts[hull[hull.len() - 1]]);
            let s_ab = (a.loss - b.loss) / (b.bytes - a.bytes) as f64;
            let s_bp = (b.loss - p.loss) / (p.bytes - b.bytes) as f64;
            if s_bp >= s_ab {
                hull.pop();
            } else {
                break;
            }
        }
        hull.push(i);
    }
    hull
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn f(&mut self) -> f64 {
            (self.next() % 1_000_000) as f64 / 1_000_000.0
        }
    }

    fn total(groups: &[Vec<Point>], pick: &[usize]) -> (u64, f64) {
        pick.iter().enumerate().fold((0, 0.0), |(b, l), (g, &i)| {
            (b + groups[g][i].bytes, l + groups[g][i].loss)
        })
    }

    /// The best choice by enumeration: (bytes, loss) of the least loss within budget.
    fn brute(groups: &[Vec<Point>], budget: u64) -> Option<f64> {
        let mut best: Option<f64> = None;
        let mut idx = vec![0usize; groups.len()];
        loop {
            let (b, l) = total(groups, &idx);
            if b <= budget && best.is_none_or(|x| l < x) {
                best = Some(l);
            }
            let mut g = 0;
            loop {
                if g == groups.len() {
                    return best;
                }
                idx[g] += 1;
                if idx[g] < groups[g].len() {
                    break;
                }
                idx[g] = 0;
                g += 1;
            }
        }
    }

    /// Curves shaped like measured ones: sizes of k-quant candidates, loss falling
    /// with bytes (noisily, sometimes not convex, sometimes not monotone).
    fn random_groups(r: &mut Rng, n: usize) -> Vec<Vec<Point>> {
        (0..n)
            .map(|_| {
                let numel = 256 * (1 + r.next() % 64);
                let sens = 0.01 + r.f();
                [3.4375, 4.5, 5.5, 6.5625, 8.5]
                    .iter()
                    .map(|bpw| Point {
                        bytes: (numel as f64 * bpw / 8.0) as u64,
                        loss: sens * (2f64).powf(-1.6 * bpw) * (0.7 + 0.6 * r.f()),
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn hull_drops_dominated_and_concave_points() {
        let p = |bytes, loss| Point { bytes, loss };
        let pts = vec![p(10, 1.0), p(20, 0.9), p(30, 0.2), p(40, 0.3), p(50, 0.1)];
        // (20, 0.9) lies above the chord 10→30; (40, 0.3) is dominated by (30, 0.2)
        assert_eq!(lower_hull(&pts), vec![0, 2, 4]);
        let tie = vec![p(10, 1.0), p(10, 0.5), p(20, 0.5)];
        assert_eq!(lower_hull(&tie), vec![1]);
    }

    #[test]
    fn meets_the_budget_and_stops_within_one_step() {
        let mut r = Rng(0x9e3779b97f4a7c15);
        for _ in 0..200 {
            let n = 1 + (r.next() % 6) as usize;
            let groups = random_groups(&mut r, n);
            let lo: u64 = groups.iter().map(|g| g[0].bytes).sum();
            let hi: u64 = groups.iter().map(|g| g[4].bytes).sum();
            let budget = lo + r.next() % (hi - lo + 1);
            let pick = choose(&groups, budget).unwrap();
            let (bytes, _) = total(&groups, &pick);
            assert!(bytes <= budget);
            // no group's next hull point fits in what is left
            for (g, pts) in groups.iter().enumerate() {
                let h = lower_hull(pts);
                let k = h.iter().position(|&i| i == pick[g]).expect("on the hull");
                if let Some(&next) = h.get(k + 1) {
                    assert!(pts[next].bytes - pts[pick[g]].bytes > budget - bytes);
                }
            }
            assert_eq!(choose(&groups, budget).unwrap(), pick, "deterministic");
        }
    }

    #[test]
    fn optimal_on_convex_curves_at_lagrangian_budgets() {
        // on the budgets the greedy passes through when nothing is frozen (every
        // prefix of the slope order), the greedy choice is the brute-force optimum
        let mut r = Rng(7);
        for _ in 0..60 {
            let n = 1 + (r.next() % 5) as usize;
            let groups: Vec<Vec<Point>> = random_groups(&mut r, n)
                .into_iter()
                .map(|g| {
                    let h = lower_hull(&g);
                    h.into_iter().map(|i| g[i]).collect()
                })
                .collect();
            let mut segs: Vec<(f64, u64)> = Vec::new();
            for g in &groups {
                for w in g.windows(2) {
                    segs.push((
                        (w[0].loss - w[1].loss) / (w[1].bytes - w[0].bytes) as f64,
                        w[1].bytes - w[0].bytes,
                    ));
                }
            }
            segs.sort_by(|a, b| b.0.total_cmp(&a.0));
            let mut budget: u64 = groups.iter().map(|g| g[0].bytes).sum();
            for (_, cost) in segs {
                budget += cost;
                let pick = choose(&groups, budget).unwrap();
                let (b, l) = total(&groups, &pick);
                assert!(b <= budget);
                let best = brute(&groups, budget).unwrap();
                assert!(l <= best + 1e-12, "greedy {l} vs optimum {best}");
            }
        }
    }

    #[test]
    fn close_to_brute_force_at_any_budget() {
        // anywhere else the greedy loses at most the loss one segment would remove
        let mut r = Rng(12345);
        for _ in 0..150 {
            let n = 1 + (r.next() % 5) as usize;
            let groups = random_groups(&mut r, n);
            let lo: u64 = groups.iter().map(|g| g[0].bytes).sum();
            let hi: u64 = groups.iter().map(|g| g[4].bytes).sum();
            let budget = lo + r.next() % (hi - lo + 1);
            let (_, l) = total(&groups, &choose(&groups, budget).unwrap());
            let best = brute(&groups, budget).unwrap();
            let max_step = groups
                .iter()
                .flat_map(|g| {
                    let h = lower_hull(g);
                    h.windows(2)
                        .map(|w| g[w[0]].loss - g[w[1]].loss)
                        .collect::<Vec<_>>()
                })
                .fold(0.0, f64::max);
            assert!(l >= best - 1e-12);
            assert!(l <= best + max_step + 1e-12, "greedy {l}, optimum {best}");
        }
    }

    #[test]
    fn refuses_an_impossible_budget() {
        let g = vec![vec![
            Point {
                bytes: 100,
                loss: 1.0,
            },
            Point {
                bytes: 200,
                loss: 0.5,
            },
        ]];
        assert_eq!(
            choose(&g, 99),
            Err(ChooseError::BudgetTooSmall { minimum: 100 })
        );
        assert_eq!(choose(&g, 199).unwrap(), vec![0]);
        assert_eq!(choose(&g, 200).unwrap(), vec![1]);
        assert_eq!(choose(&[vec![]], 10), Err(ChooseError::EmptyGroup(0)));
    }
}

//! Pareto fronts of two objectives, both minimised: the one definition behind a two-objective
//! search's split (MOTPE) and the front `compare --pareto` and the report mark.

/// True when `a` is no worse than `b` in both objectives and better in one.
pub fn dominates(a: (f64, f64), b: (f64, f64)) -> bool {
    a.0 <= b.0 && a.1 <= b.1 && (a.0 < b.0 || a.1 < b.1)
}

/// The indices of `points` by non-domination rank: the first front is the Pareto front, the
/// second the front once it is removed, and so on. Each front in index order.
pub fn fronts(points: &[(f64, f64)]) -> Vec<Vec<usize>> {
    let mut left: Vec<usize> = (0..points.len()).collect();
    let mut out = Vec::new();
    while !left.is_empty() {
        let front: Vec<usize> = (left.iter().copied())
            .filter(|&i| !left.iter().any(|&j| dominates(points[j], points[i])))
            .collect();
        left.retain(|i| !front.contains(i));
        out.push(front);
    }
    out
}

/// Each member of `front`'s exclusive share of the area the front dominates, up to a reference
/// point a tenth of the spread beyond the worst of `points` (so the extremes count too). In
/// the order of `front`.
pub fn contributions(points: &[(f64, f64)], front: &[usize]) -> Vec<f64> {
    let beyond = |f: fn(&(f64, f64)) -> f64| {
        let (lo, hi) =
            (points.iter().map(f)).fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
        hi + 0.1 * (hi - lo) + 1e-12 * (1.0 + hi.abs())
    };
    let reference = (beyond(|p| p.0), beyond(|p| p.1));
    let mut sorted: Vec<usize> = (0..front.len()).collect();
    let at = |k: usize| points[front[k]];
    sorted.sort_by(|&a, &b| {
        at(a)
            .0
            .total_cmp(&at(b).0)
            .then(at(b).1.total_cmp(&at(a).1))
    });
    let mut c = vec![0.0; front.len()];
    for (k, &a) in sorted.iter().enumerate() {
        let p = at(a);
        let next_x = sorted.get(k + 1).map_or(reference.0, |&b| at(b).0);
        let prev_y = if k == 0 {
            reference.1
        } else {
            at(sorted[k - 1]).1
        };
        c[a] = (next_x - p.0).max(0.0) * (prev_y - p.1).max(0.0);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fronts_peel_the_non_dominated_points_in_turn() {
        // (loss, cost): 0, 1 and 3 trade off; 2 is dominated by 1; 4 by everything but 3.
        let p = [(1.0, 9.0), (2.0, 4.0), (3.0, 5.0), (5.0, 1.0), (6.0, 8.0)];
        assert_eq!(fronts(&p), vec![vec![0, 1, 3], vec![2], vec![4]]);
        assert!(dominates(p[1], p[2]) && !dominates(p[0], p[1]));
        // Equal points dominate neither: both on the front.
        assert_eq!(fronts(&[(1.0, 1.0), (1.0, 1.0)]), vec![vec![0, 1]]);
    }

    #[test]
    fn a_point_that_fills_a_gap_contributes_more_than_one_beside_another() {
        // Two nearly equal points share their area; the isolated middle one owns its own.
        let p = [(1.0, 10.0), (5.0, 5.0), (9.0, 1.0), (9.1, 0.99)];
        let front = &fronts(&p)[0];
        assert_eq!(front, &vec![0, 1, 2, 3]);
        let c = contributions(&p, front);
        assert!(c[1] > c[2] && c[1] > c[3], "{c:?}");
        assert!(c.iter().all(|&x| x > 0.0), "the extremes count: {c:?}");
    }
}

//! The Tree-structured Parzen Estimator (Bergstra et al. 2011), as Optuna's `TPESampler`: split
//! the finished trials into a good group (the best `γ(n) = min(⌈n/10⌉, 25)`) and a bad one (the
//! rest, and every pruned or failed trial), fit a Parzen density to each group, draw candidates
//! (mostly) from the good density and keep the one that maximises `l(x)/g(x)`, divided by
//! `cost(x)^weight` when the caller weighs cost ([`Cost`]). The density is either joint over
//! the keys ([`Joint`], Optuna's `multivariate=True`: a trial's values stay together, the
//! sweep's default) or one per key ([`Parzen`] for numbers, truncated Gaussians around the
//! observations plus a wide prior; category counts plus one for every category, as the `tpe`
//! crate, for choices). The first `startup` proposals are a Latin hypercube ([`stratified`]).
//! A share of the candidates ([`Settings::explore`]) is drawn from the whole space instead of
//! the good density, so that a region the good group has left can still win on `l(x)/g(x)`.
//!
//! A proposal is a pure function of (seed, proposal index, the history it sees): the same
//! history gives the same proposal, which is what makes a search resumable.

use crate::pareto;
use crate::rng::Rng;

/// A key's domain, in the units the sweep file gives.
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    Uniform(f64, f64),
    /// Searched in log space.
    LogUniform(f64, f64),
    /// Inclusive integer range.
    Int(i64, i64),
    /// A choice among `n` values (the value is the index).
    Choice(usize),
}

/// One finished trial: its point and its score (lower is better), `None` for a trial that
/// ended badly (pruned, diverged, failed): always in the bad group.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub x: Vec<f64>,
    pub score: Option<f64>,
    /// A second objective (a cost, lower is better), when the search has two: the good group
    /// is then taken along the Pareto front ([`rank`]).
    pub second: Option<f64>,
}

/// The sampler's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Proposals drawn at random before the model takes over.
    pub startup: usize,
    /// Candidates drawn from the good density per proposal.
    pub candidates: usize,
    pub seed: u64,
    /// One joint density over all keys (Optuna's `multivariate=True`) instead of one per key:
    /// a trial's values stay together, so a size tried at a poor learning rate counts against
    /// that pair, not against the size at every rate.
    pub joint: bool,
    /// The share of the candidates drawn uniformly from the whole space, the rest from the good
    /// density. Drawn from `l(x)` alone, every candidate sits near the good group, so once the
    /// search has settled (a cheap size found first, then dozens of trials around it) the ratio
    /// `l/g` is only ever compared among its neighbours, and a size whose first trials were at
    /// poor learning rates is never a candidate again (the Zen 1 race's seed 3: 40 of 56 trials
    /// at hidden 128 × 1 layer). From the whole space, such a region's candidates score on
    /// `l/g` as any other: where few bad trials lie, `g` is low and the ratio high. That trap
    /// was the fixed-spread category kernel's; with Optuna's the joint model mostly finds such
    /// a region by itself, though a short search can still settle before it does (Zen 4's 红楼梦
    /// race, one seed in five), so a sweep's default draws half its candidates wide at first and
    /// none later ([`Settings::explore_fade`], [`crate::sweep::plan::DEFAULT_EXPLORE`]).
    pub explore: f64,
    /// Proposals from the model over which `explore` falls linearly to 0; 0 holds it for the
    /// whole search. Wide draws matter while the model rests on few trials (a short search can
    /// settle on a size before it has tried the best one); later they only dilute the draws
    /// around what the search has found.
    pub explore_fade: usize,
}

impl Dim {
    /// The internal (continuous) interval: log for log-uniform, ±0.5 around integers.
    fn bounds(&self) -> (f64, f64) {
        match *self {
            Dim::Uniform(a, b) => (a, b),
            Dim::LogUniform(a, b) => (a.ln(), b.ln()),
            Dim::Int(a, b) => (a as f64 - 0.5, b as f64 + 0.5),
            Dim::Choice(n) => (0.0, n as f64),
        }
    }

    fn internal(&self, v: f64) -> f64 {
        match self {
            Dim::LogUniform(..) => v.max(1e-300).ln(),
            _ => v,
        }
    }

    fn external(&self, u: f64) -> f64 {
        let (lo, hi) = self.bounds();
        let u = u.clamp(lo, hi);
        match *self {
            Dim::LogUniform(a, b) => u.exp().clamp(a, b),
            Dim::Int(a, b) => (u.round() as i64).clamp(a, b) as f64,
            _ => u,
        }
    }

    fn uniform(&self, rng: &mut Rng) -> f64 {
        match *self {
            Dim::Choice(n) => (rng.next_u64() % n.max(1) as u64) as f64,
            _ => {
                let (lo, hi) = self.bounds();
                self.external(lo + (hi - lo) * rng.uniform_f64())
            }
        }
    }
}

/// Error function (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7).
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let y = 1.0
        - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t
            + 0.254_829_592)
            * t
            * (-x * x).exp();
    if x >= 0.0 {
        y
    } else {
        -y
    }
}

fn normal_cdf(z: f64) -> f64 {
    0.5 * (1.0 + erf(z / std::f64::consts::SQRT_2))
}

/// A mixture of Gaussians truncated to `[lo, hi]`, equal weights: one per observation and a
/// prior (centred, as wide as the interval).
struct Parzen {
    mus: Vec<f64>,
    sigmas: Vec<f64>,
    lo: f64,
    hi: f64,
}

impl Parzen {
    fn fit(points: &[f64], lo: f64, hi: f64) -> Self {
        let range = (hi - lo).max(1e-12);
        let mut mus: Vec<f64> = points.to_vec();
        mus.push(0.5 * (lo + hi));
        let prior = mus.len() - 1;
        // Bandwidth of each point: the larger gap to its sorted neighbours (the bounds at the
        // ends), clipped to [range / min(100, n + 1), range] ("magic clip").
        let mut order: Vec<usize> = (0..mus.len()).collect();
        order.sort_by(|&a, &b| mus[a].total_cmp(&mus[b]));
        let mut sigmas = vec![range; mus.len()];
        let min_sigma = smallest_sigma(range, mus.len());
        // The outermost points use their one neighbour, not the bound (Optuna's default).
        for (r, &i) in order.iter().enumerate() {
            let left = (r > 0).then(|| mus[i] - mus[order[r - 1]]);
            let right = (r + 1 < order.len()).then(|| mus[order[r + 1]] - mus[i]);
            let gap = match (left, right) {
                (Some(a), Some(b)) => a.max(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => range,
            };
            sigmas[i] = gap.clamp(min_sigma, range);
        }
        sigmas[prior] = range;
        Parzen {
            mus,
            sigmas,
            lo,
            hi,
        }
    }

    fn log_pdf(&self, u: f64) -> f64 {
        let n = self.mus.len() as f64;
        let p: f64 = (self.mus.iter().zip(&self.sigmas))
            .map(|(&m, &s)| truncated_log_pdf(u, m, s, self.lo, self.hi).exp())
            .sum();
        (p / n).max(1e-300).ln()
    }

    fn sample(&self, rng: &mut Rng) -> f64 {
        let i = (rng.next_u64() % self.mus.len() as u64) as usize;
        truncated_sample(self.mus[i], self.sigmas[i], self.lo, self.hi, rng)
    }
}

/// The narrowest bandwidth either density gives a component: `range / min(100, components + 1)`
/// (Optuna's "magic clip"), so that a few close observations do not make needle-thin peaks.
fn smallest_sigma(range: f64, components: usize) -> f64 {
    range / 100f64.min(components as f64 + 1.0)
}

/// Log density at `u` of a Gaussian (`m`, `s`) truncated to `[lo, hi]`.
fn truncated_log_pdf(u: f64, m: f64, s: f64, lo: f64, hi: f64) -> f64 {
    let mass = normal_cdf((hi - m) / s) - normal_cdf((lo - m) / s);
    let z = (u - m) / s;
    -0.5 * z * z - (s * (2.0 * std::f64::consts::PI).sqrt() * mass.max(1e-12)).ln()
}

/// A draw from that truncated Gaussian (by rejection; uniform if it keeps missing).
fn truncated_sample(m: f64, s: f64, lo: f64, hi: f64, rng: &mut Rng) -> f64 {
    for _ in 0..100 {
        let u = m + s * rng.normal() as f64;
        if (lo..=hi).contains(&u) {
            return u;
        }
    }
    lo + (hi - lo) * rng.uniform_f64()
}

/// One key of a [`Joint`] density: per component, a truncated Gaussian or category weights.
enum Kernel {
    Numeric {
        mus: Vec<f64>,
        sigma: f64,
        lo: f64,
        hi: f64,
    },
    Choice(Vec<Vec<f64>>),
}

/// A joint density over all keys, Optuna's multivariate TPE: one component per observation,
/// the product of a kernel per key around its values, plus a prior component (centred and as
/// wide as each interval; every category alike). A numeric key's bandwidth is Scott's rule as
/// Optuna's (`0.2 · n^(−1/(d+4))` of the interval, clipped as [`Parzen`]'s); a category
/// kernel is Optuna's too: 1 on its own category plus `1/(n+1)` on every category, normalised,
/// so it sharpens as its group grows. A fixed spread (a third of each trial's weight on the
/// other sizes, whatever the group's size) let forty trials of one size at one rate make
/// every other size at that rate look tried and bad, and the search never left that size.
struct Joint {
    kernels: Vec<Kernel>,
    /// Components, the prior last.
    n: usize,
}

impl Joint {
    fn fit(points: &[Vec<f64>], dims: &[Dim]) -> Self {
        let n = points.len();
        let scott = 0.2 * (n.max(1) as f64).powf(-1.0 / (dims.len() as f64 + 4.0));
        let kernels = (dims.iter().enumerate())
            .map(|(d, dim)| match *dim {
                Dim::Choice(k) => {
                    let k = k.max(1);
                    let prior = 1.0 / (n as f64 + 1.0);
                    let total = 1.0 + k as f64 * prior;
                    let mut rows: Vec<Vec<f64>> = (points.iter())
                        .map(|p| {
                            let mut w = vec![prior / total; k];
                            if let Some(c) = w.get_mut(p[d] as usize) {
                                *c += 1.0 / total;
                            }
                            w
                        })
                        .collect();
                    rows.push(vec![1.0 / k as f64; k]);
                    Kernel::Choice(rows)
                }
                _ => {
                    let (lo, hi) = dim.bounds();
                    let range = (hi - lo).max(1e-12);
                    let mut mus: Vec<f64> = points.iter().map(|p| dim.internal(p[d])).collect();
                    mus.push(0.5 * (lo + hi));
                    let sigma = (scott * range).clamp(smallest_sigma(range, mus.len()), range);
                    Kernel::Numeric { mus, sigma, lo, hi }
                }
            })
            .collect();
        Joint { kernels, n: n + 1 }
    }

    /// The prior component is as wide as each interval.
    fn sigma(&self, c: usize, sigma: f64, lo: f64, hi: f64) -> f64 {
        if c + 1 == self.n {
            hi - lo
        } else {
            sigma
        }
    }

    /// Log density at `u` (internal units, categories as indices).
    fn log_pdf(&self, u: &[f64]) -> f64 {
        let logs: Vec<f64> = (0..self.n)
            .map(|c| {
                (self.kernels.iter().zip(u))
                    .map(|(k, &x)| match k {
                        Kernel::Numeric { mus, sigma, lo, hi } => {
                            let s = self.sigma(c, *sigma, *lo, *hi);
                            truncated_log_pdf(x, mus[c], s, *lo, *hi)
                        }
                        Kernel::Choice(rows) => rows[c][x as usize].max(1e-300).ln(),
                    })
                    .sum()
            })
            .collect();
        let top = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        top + logs.iter().map(|l| (l - top).exp()).sum::<f64>().ln() - (self.n as f64).ln()
    }

    /// A draw: one component, then each key from its kernel (internal units).
    fn sample(&self, rng: &mut Rng) -> Vec<f64> {
        let c = (rng.next_u64() % self.n as u64) as usize;
        (self.kernels.iter())
            .map(|k| match k {
                Kernel::Numeric { mus, sigma, lo, hi } => {
                    truncated_sample(mus[c], self.sigma(c, *sigma, *lo, *hi), *lo, *hi, rng)
                }
                Kernel::Choice(rows) => sample_category(&rows[c], rng),
            })
            .collect()
    }
}

/// Category weights: counts plus a prior of one per category. Optuna's prior of total weight one
/// lets two early trials at one category outweigh the rest for the whole search; one per
/// category kept the right category in play on the importance comparison's third objective
/// (BENCHMARKS.md, issue 20).
fn category_weights(points: &[f64], n: usize) -> Vec<f64> {
    let mut w = vec![1.0; n];
    for &p in points {
        if let Some(c) = w.get_mut(p as usize) {
            *c += 1.0;
        }
    }
    let total: f64 = w.iter().sum();
    w.iter().map(|x| x / total).collect()
}

fn sample_category(w: &[f64], rng: &mut Rng) -> f64 {
    let mut r = rng.uniform_f64();
    for (i, &p) in w.iter().enumerate() {
        r -= p;
        if r < 0.0 {
            return i as f64;
        }
    }
    (w.len() - 1) as f64
}

/// The good group (the best `γ(n)` scored, by [`rank`]) and the bad one (the other scored
/// and every unscored observation).
fn groups(history: &[Observation]) -> (Vec<&Observation>, Vec<&Observation>) {
    let done = rank(history.iter().filter(|o| o.score.is_some()).collect());
    let n_good = (history.len().div_ceil(10)).clamp(1, 25).min(done.len());
    let mut bad = done[n_good..].to_vec();
    bad.extend(history.iter().filter(|o| o.score.is_none()));
    (done[..n_good].to_vec(), bad)
}

/// Scored observations best first. One objective: by score. Two (MOTPE's rule, Ozaki et al.
/// 2020, as Optuna's): by non-domination rank, and within a front by hypervolume contribution
/// (its extremes first), so the good group is the Pareto front and what lies nearest it.
fn rank(mut done: Vec<&Observation>) -> Vec<&Observation> {
    let key = |o: &Observation| o.score.unwrap_or(f64::INFINITY);
    if done.iter().all(|o| o.second.is_none()) {
        done.sort_by(|a, b| key(a).total_cmp(&key(b)));
        return done;
    }
    let points: Vec<(f64, f64)> = (done.iter())
        .map(|o| (key(o), o.second.unwrap_or(f64::INFINITY)))
        .collect();
    let mut out = Vec::with_capacity(done.len());
    for front in pareto::fronts(&points) {
        let c = pareto::contributions(&points, &front);
        let mut members: Vec<(usize, f64)> = front.into_iter().zip(c).collect();
        members.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out.extend(members.into_iter().map(|(i, _)| done[i]));
    }
    out
}

/// What a candidate costs to run and how much that counts: a candidate's score is
/// `log l − log g − weight · ln cost(x)`, expected improvement per unit of cost raised to
/// `weight` (the caller lowers it as the budget is spent: cost cooling, as CArBO does, so that
/// the cheap region is explored first and the end of the search is not steered away from a
/// costly optimum).
pub struct Cost<'a> {
    pub of: &'a dyn Fn(&[f64]) -> f64,
    pub weight: f64,
}

/// Candidates for the next trial, best first (by `log l − log g` summed over keys, less the
/// cost's term); the caller takes the first that is not a trial already. During startup: the
/// design's row for this proposal ([`stratified`]), then random draws.
pub fn propose(
    dims: &[Dim],
    history: &[Observation],
    s: &Settings,
    index: u64,
    cost: Option<&Cost>,
) -> Vec<Vec<f64>> {
    let mut rng = Rng::new(s.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15), 13);
    let n = s.candidates.max(1);
    let complete = history.iter().filter(|o| o.score.is_some()).count();
    if (index as usize) < s.startup || complete == 0 {
        let row = ((index as usize) < s.startup).then(|| stratified(dims, s, index as usize));
        let draws = (0..n).map(|_| dims.iter().map(|d| d.uniform(&mut rng)).collect());
        return row.into_iter().chain(draws).take(n).collect();
    }
    let (good, bad) = groups(history);
    let wide = explored(explore_share(s, index as usize), n);
    let (mut cands, mut score) = if s.joint {
        joint_candidates(dims, &good, &bad, (n, wide), &mut rng)
    } else {
        per_key_candidates(dims, &good, &bad, (n, wide), &mut rng)
    };
    if let Some(c) = cost.filter(|c| c.weight != 0.0) {
        for (cand, sc) in cands.iter().zip(&mut score) {
            *sc -= c.weight * (c.of)(cand).max(1e-300).ln();
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| score[b].total_cmp(&score[a]));
    order
        .into_iter()
        .map(|i| std::mem::take(&mut cands[i]))
        .collect()
}

/// Row `row` of the startup's design, a Latin hypercube of `s.startup` rows: each key's interval
/// is cut into that many equal strata and each stratum goes to one row (a permutation per key,
/// drawn from the seed alone, so every startup proposal reads the same design); a choice's rows
/// are spread over its categories as evenly as the count allows, every category appearing once
/// there are as many rows as categories. Independent uniform draws leave whole regions out by
/// chance (four of them gave one race's sweep its smallest hidden size four times, and the
/// search never learned what the largest could do), which a model fitted to them cannot see.
fn stratified(dims: &[Dim], s: &Settings, row: usize) -> Vec<f64> {
    let rows = s.startup.max(row + 1);
    (dims.iter().enumerate())
        .map(|(d, dim)| {
            let mut rng = Rng::new(
                s.seed ^ (d as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
                29,
            );
            let mut strata: Vec<usize> = (0..rows).collect();
            for i in (1..rows).rev() {
                strata.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
            }
            let offset = rng.uniform_f64();
            let jitter = (0..=row).map(|_| rng.uniform_f64()).last().unwrap_or(0.5);
            let stratum = strata[row] as f64;
            match *dim {
                // One offset for all rows: category ⌊(stratum + offset)·k / rows⌋ mod k, so rows
                // fewer than categories still give every category the same chance.
                Dim::Choice(k) => {
                    let k = k.max(1);
                    (((stratum + offset) * k as f64 / rows as f64) as usize % k) as f64
                }
                _ => {
                    let (lo, hi) = dim.bounds();
                    dim.external(lo + (hi - lo) * (stratum + jitter) / rows as f64)
                }
            }
        })
        .collect()
}

/// The share of proposal `index`'s candidates drawn from the whole space: `explore`, faded
/// linearly to 0 over `explore_fade` proposals after the startup.
pub fn explore_share(s: &Settings, index: usize) -> f64 {
    if s.explore_fade == 0 {
        return s.explore;
    }
    let made = index.saturating_sub(s.startup) as f64;
    s.explore * (1.0 - made / s.explore_fade as f64).max(0.0)
}

/// How many of `n` candidates are drawn from the whole space ([`Settings::explore`]).
fn explored(explore: f64, n: usize) -> usize {
    ((explore.clamp(0.0, 1.0) * n as f64).round() as usize).min(n)
}

/// `n` candidates, the first `wide` drawn from the whole space and the rest from the good
/// group's density, and their `log l − log g`, the keys modelled one by one.
fn per_key_candidates(
    dims: &[Dim],
    good: &[&Observation],
    bad: &[&Observation],
    (n, wide): (usize, usize),
    rng: &mut Rng,
) -> (Vec<Vec<f64>>, Vec<f64>) {
    let mut cands: Vec<Vec<f64>> = vec![Vec::with_capacity(dims.len()); n];
    let mut score = vec![0f64; n];
    for (k, dim) in dims.iter().enumerate() {
        let values =
            |g: &[&Observation]| -> Vec<f64> { g.iter().map(|o| dim.internal(o.x[k])).collect() };
        let (good, bad) = (values(good), values(bad));
        match *dim {
            Dim::Choice(c) => {
                let (l, g) = (category_weights(&good, c), category_weights(&bad, c));
                for (i, (cand, sc)) in cands.iter_mut().zip(&mut score).enumerate() {
                    let v = if i < wide {
                        dim.uniform(rng)
                    } else {
                        sample_category(&l, rng)
                    };
                    *sc += l[v as usize].ln() - g[v as usize].ln();
                    cand.push(v);
                }
            }
            _ => {
                let (lo, hi) = dim.bounds();
                let (l, g) = (Parzen::fit(&good, lo, hi), Parzen::fit(&bad, lo, hi));
                for (i, (cand, sc)) in cands.iter_mut().zip(&mut score).enumerate() {
                    let u = if i < wide {
                        dim.internal(dim.uniform(rng))
                    } else {
                        l.sample(rng)
                    };
                    *sc += l.log_pdf(u) - g.log_pdf(u);
                    cand.push(dim.external(u));
                }
            }
        }
    }
    (cands, score)
}

/// The same from one [`Joint`] density per group.
fn joint_candidates(
    dims: &[Dim],
    good: &[&Observation],
    bad: &[&Observation],
    (n, wide): (usize, usize),
    rng: &mut Rng,
) -> (Vec<Vec<f64>>, Vec<f64>) {
    let points = |g: &[&Observation]| -> Vec<Vec<f64>> { g.iter().map(|o| o.x.clone()).collect() };
    let (l, g) = (
        Joint::fit(&points(good), dims),
        Joint::fit(&points(bad), dims),
    );
    (0..n)
        .map(|i| {
            let u = if i < wide {
                dims.iter().map(|d| d.internal(d.uniform(rng))).collect()
            } else {
                l.sample(rng)
            };
            let score = l.log_pdf(&u) - g.log_pdf(&u);
            let x = dims.iter().zip(&u).map(|(d, &v)| d.external(v)).collect();
            (x, score)
        })
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    type Objective = (&'static str, Vec<Dim>, fn(&[f64]) -> f64);

    /// Three synthetic objectives with mixed log, linear, integer and categorical keys (lower is
    /// better, minimum 0).
    fn objectives() -> Vec<Objective> {
        vec![
            (
                "lr·dropout·hidden bowl",
                vec![
                    Dim::LogUniform(1e-5, 1e-1),
                    Dim::Uniform(0.0, 0.5),
                    Dim::Choice(3),
                ],
                |x| {
                    (x[0].log10() + 3.0).powi(2)
                        + 4.0 * (x[1] - 0.2).powi(2)
                        + [0.5, 0.0, 0.3][x[2] as usize]
                },
            ),
            (
                "branin + category",
                vec![
                    Dim::Uniform(-5.0, 10.0),
                    Dim::Uniform(0.0, 15.0),
                    Dim::Choice(4),
                ],
                |x| {
                    let pi = std::f64::consts::PI;
                    let (a, b, c, r, s, t) = (
                        1.0,
                        5.1 / (4.0 * pi * pi),
                        5.0 / pi,
                        6.0,
                        10.0,
                        1.0 / (8.0 * pi),
                    );
                    a * (x[1] - b * x[0] * x[0] + c * x[0] - r).powi(2)
                        + s * (1.0 - t) * x[0].cos()
                        + s
                        - 0.397_887
                        + [0.0, 2.0, 4.0, 6.0][x[2] as usize]
                },
            ),
            (
                "log rosenbrock + int",
                vec![
                    Dim::LogUniform(1e-3, 10.0),
                    Dim::LogUniform(1e-3, 10.0),
                    Dim::Int(1, 8),
                ],
                |x| {
                    let (u, v) = (x[0].log10(), x[1].log10());
                    (1.0 - u).powi(2) + 10.0 * (v - u * u).powi(2) + 0.1 * (x[2] - 3.0).abs()
                },
            ),
        ]
    }

    /// The best value after each trial of one search with `s` (TPE) or random draws only.
    pub(crate) fn run(dims: &[Dim], f: fn(&[f64]) -> f64, s: Settings, trials: usize) -> Vec<f64> {
        let mut history: Vec<Observation> = Vec::new();
        let mut best = Vec::with_capacity(trials);
        for i in 0..trials {
            let x = propose(dims, &history, &s, i as u64, None).remove(0);
            let y = f(&x);
            best.push(best.last().map_or(y, |b: &f64| b.min(y)));
            history.push(Observation {
                x,
                score: Some(y),
                second: None,
            });
        }
        best
    }

    #[test]
    fn two_objectives_draw_the_good_group_along_the_pareto_front() {
        // loss = x0, cost = 1 − x0 + 4·x1: the front is x1 = 0, every x0 on it. Fitted to the
        // loss alone, x1 does not matter; along the front, it must go to 0 while x0 spreads.
        // Over 10 seeds, the last 24 of 48 proposals (measured over 40 seeds: x1 0.16 with
        // `explore = 0`, 0.19 with 0.5; uniform draws give 0.5).
        let dims = vec![Dim::Uniform(0.0, 1.0), Dim::Uniform(0.0, 1.0)];
        let search = |two: bool, seed: u64| {
            let s = Settings {
                startup: 8,
                candidates: 24,
                seed,
                joint: false,
                explore: 0.0,
                explore_fade: 0,
            };
            let mut history: Vec<Observation> = Vec::new();
            for i in 0..48 {
                let x = propose(&dims, &history, &s, i, None).remove(0);
                let second = two.then(|| 1.0 - x[0] + 4.0 * x[1]);
                history.push(Observation {
                    score: Some(x[0]),
                    second,
                    x,
                });
            }
            history.split_off(24)
        };
        let runs = |two: bool| -> Vec<Observation> {
            (0..10).flat_map(|seed| search(two, seed)).collect()
        };
        let mean =
            |h: &[Observation], d: usize| h.iter().map(|o| o.x[d]).sum::<f64>() / h.len() as f64;
        let (one, two) = (runs(false), runs(true));
        assert!(mean(&two, 1) < 0.25, "onto the front: x1 {}", mean(&two, 1));
        assert!(
            mean(&one, 0) < mean(&two, 0),
            "the loss alone pulls x0 down further"
        );
        assert!(
            two.iter().filter(|o| o.x[0] < 0.3).count() > 24
                && two.iter().filter(|o| o.x[0] > 0.5).count() > 24,
            "spread along the front"
        );
    }

    #[test]
    fn the_front_ranks_first_its_extremes_before_its_crowded_middle() {
        let obs = |l: f64, c: f64| Observation {
            x: vec![],
            score: Some(l),
            second: Some(c),
        };
        let h = [
            obs(3.0, 6.0),
            obs(1.0, 9.0),
            obs(2.0, 5.0),
            obs(2.05, 4.9),
            obs(9.0, 1.0),
        ];
        let order: Vec<f64> = rank(h.iter().collect())
            .iter()
            .map(|o| o.score.unwrap())
            .collect();
        assert_eq!(
            order.last(),
            Some(&3.0),
            "the one dominated point ranks last"
        );
        assert!(
            order[..2].contains(&1.0) && order[..2].contains(&9.0),
            "{order:?}"
        );
    }

    #[test]
    fn the_same_history_gives_the_same_proposal_and_a_new_seed_another() {
        let dims = vec![Dim::LogUniform(1e-4, 1e-1), Dim::Choice(3), Dim::Int(1, 4)];
        let s = Settings {
            startup: 2,
            candidates: 24,
            seed: 9,
            joint: false,
            explore: 0.0,
            explore_fade: 0,
        };
        let history: Vec<Observation> = (0..6)
            .map(|i| Observation {
                x: vec![10f64.powi(-(1 + i % 3)), (i % 3) as f64, (1 + i % 4) as f64],
                score: if i == 4 { None } else { Some(i as f64) },
                second: None,
            })
            .collect();
        let a = propose(&dims, &history, &s, 6, None);
        assert_eq!(a, propose(&dims, &history, &s, 6, None));
        assert_ne!(
            a[0],
            propose(&dims, &history, &Settings { seed: 10, ..s }, 6, None)[0]
        );
        for x in &a {
            assert!((1e-4..=1e-1).contains(&x[0]) && x[1] < 3.0 && (1.0..=4.0).contains(&x[2]));
            assert_eq!(x[2], x[2].round());
        }
    }

    #[test]
    fn the_startup_design_fills_every_stratum_and_category() {
        let dims = vec![
            Dim::LogUniform(1e-4, 1e-1),
            Dim::Uniform(0.0, 0.5),
            Dim::Choice(3),
            Dim::Choice(2),
            Dim::Int(1, 8),
        ];
        for (startup, seed) in [(4, 1), (4, 5), (10, 2), (2, 3)] {
            let s = Settings {
                startup,
                candidates: 24,
                seed,
                joint: true,
                explore: 0.0,
                explore_fade: 0,
            };
            let rows: Vec<Vec<f64>> = (0..startup as u64)
                .map(|i| propose(&dims, &[], &s, i, None).remove(0))
                .collect();
            // Numeric keys: one row in each of `startup` equal strata of the internal interval.
            for d in [0, 1] {
                let (lo, hi) = dims[d].bounds();
                let mut strata: Vec<usize> = (rows.iter())
                    .map(|r| {
                        let u = (dims[d].internal(r[d]) - lo) / (hi - lo);
                        ((u * startup as f64) as usize).min(startup - 1)
                    })
                    .collect();
                strata.sort_unstable();
                assert_eq!(
                    strata,
                    (0..startup).collect::<Vec<_>>(),
                    "key {d}: {rows:?}"
                );
            }
            // Choices: each category ⌊rows/k⌋ or ⌈rows/k⌉ times.
            for (d, k) in [(2, 3usize), (3, 2)] {
                let mut count = vec![0usize; k];
                rows.iter().for_each(|r| count[r[d] as usize] += 1);
                let (few, many) = (startup / k, startup.div_ceil(k));
                assert!(
                    count.iter().all(|&c| c >= few && c <= many),
                    "key {d}: {count:?}"
                );
            }
            // The same design from a proposal made again, and another from another seed.
            assert_eq!(rows[1], propose(&dims, &[], &s, 1, None)[0]);
            assert_ne!(
                rows[1],
                propose(&dims, &[], &Settings { seed: 99, ..s }, 1, None)[0]
            );
        }
        // Fewer rows than categories: over many seeds every category comes up alike.
        let mut count = [0usize; 3];
        for seed in 0..3000 {
            let s = Settings {
                startup: 2,
                candidates: 1,
                seed,
                joint: false,
                explore: 0.0,
                explore_fade: 0,
            };
            for i in 0..2 {
                count[propose(&dims[2..3], &[], &s, i, None)[0][0] as usize] += 1;
            }
        }
        assert!(
            count.iter().all(|&c| (1800..2200).contains(&c)),
            "{count:?}"
        );
    }

    /// BENCHMARKS.md's table: median (over 40 seeds) best value after 10, 20, 40 and 80
    /// trials, TPE (10 random first) against random search. Run with
    /// `cargo test --release --lib tpe_vs_random_table -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn tpe_vs_random_table() {
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        println!(
            "| objective | trials | TPE per key | TPE joint | random |\n|---|---|---|---|---|"
        );
        for (name, dims, f) in objectives() {
            let runs = |startup: usize, joint: bool| -> Vec<Vec<f64>> {
                (0..40)
                    .map(|seed| {
                        let s = Settings {
                            startup,
                            candidates: 24,
                            seed,
                            joint,
                            explore: 0.0,
                            explore_fade: 0,
                        };
                        run(&dims, f, s, 80)
                    })
                    .collect()
            };
            let (tpe, joint, rnd) = (runs(10, false), runs(10, true), runs(80, false));
            for n in [10usize, 20, 40, 80] {
                let at = |runs: &[Vec<f64>]| median(runs.iter().map(|r| r[n - 1]).collect());
                println!(
                    "| {name} | {n} | {:.4} | {:.4} | {:.4} |",
                    at(&tpe),
                    at(&joint),
                    at(&rnd)
                );
            }
        }
    }

    /// A search under a cost budget (no training): lr on a bowl and a choice of three model
    /// sizes costing 1, 2.5 and 6 (as hidden 64/128/256 do), the dearer ones better by `gain`.
    /// Returns the area under the best-so-far curve against the cost spent up to `budget`
    /// (lower is better) and the best value found, both means over 200 seeds; half the
    /// candidates from the whole space (`explore` 0.5), as the figures below were measured.
    fn costly_search(cost_aware: bool, gain: [f64; 3], trials: usize, budget: f64) -> (f64, f64) {
        let dims = [Dim::LogUniform(1e-5, 1e-1), Dim::Choice(3)];
        let loss = |x: &[f64]| (x[0].log10() + 3.0).powi(2) + gain[x[1] as usize];
        let cost = |x: &[f64]| [1.0, 2.5, 6.0][x[1] as usize];
        let (mut mean_area, mut mean_best) = (0.0, 0.0);
        for seed in 0..200 {
            let s = Settings {
                startup: 4,
                candidates: 24,
                seed,
                joint: false,
                explore: 0.5,
                explore_fade: 0,
            };
            let mut history: Vec<Observation> = Vec::new();
            let (mut spent, mut best, mut area) = (0.0, 4.0, 0.0);
            for i in 0..trials {
                let weight = if cost_aware {
                    1.0 - i as f64 / trials as f64
                } else {
                    0.0
                };
                let c = Cost { of: &cost, weight };
                let x = propose(&dims, &history, &s, i as u64, Some(&c)).remove(0);
                let step = cost(&x).min(budget - spent);
                area += best * step;
                spent += step;
                if spent >= budget {
                    break;
                }
                let y = loss(&x);
                best = f64::min(best, y);
                history.push(Observation {
                    x,
                    score: Some(y),
                    second: None,
                });
            }
            mean_area += (area + best * (budget - spent)) / 200.0;
            mean_best += best / 200.0;
        }
        (mean_area, mean_best)
    }

    #[test]
    fn weighing_cost_pays_where_cheap_models_are_as_good_and_costs_where_dear_ones_win() {
        // 16 trials, a budget of 50: where every size is as good, weighing cost lowers the
        // area under best-so-far against cost and the best value (measured: area 21.3 vs 22.1,
        // best 0.006 vs 0.011); where the dearest size is better by 0.3, it ends worse
        // (0.095 vs 0.064), which is why `cost_aware` is off unless a sweep asks for it.
        let (aware, plain) = (
            costly_search(true, [0.0; 3], 16, 50.0),
            costly_search(false, [0.0; 3], 16, 50.0),
        );
        assert!(
            aware.0 < 0.98 * plain.0 && aware.1 < plain.1,
            "{aware:?} vs {plain:?}"
        );
        let (aware, plain) = (
            costly_search(true, [0.3, 0.1, 0.0], 16, 50.0),
            costly_search(false, [0.3, 0.1, 0.0], 16, 50.0),
        );
        assert!(aware.1 > plain.1, "{aware:?} vs {plain:?}");
    }

    /// A narrow best size: lr (log), a size, dropout. Sizes 0 and 1 are good over a wide range
    /// of lr, size 2 is the best by 0.25 but only within a quarter of a decade of lr 1e-2, so
    /// most of its random trials land far above the other sizes (as a char-LSTM's largest
    /// hidden size at a poor learning rate does).
    fn narrow_best(x: &[f64]) -> f64 {
        let u = x[0].log10() + 2.0;
        let size = x[1] as usize;
        [0.3, 0.25, 0.0][size] + [0.05, 0.5, 4.0][size] * u * u + 0.5 * x[2] * x[2]
    }

    /// Mean best after `trials` over 200 seeds on [`narrow_best`], and how many seeds never
    /// found size 2's basin (best above 0.2).
    fn narrow_search(joint: bool, explore: f64, trials: usize) -> (f64, usize) {
        let dims = [
            Dim::LogUniform(1e-4, 2e-2),
            Dim::Choice(3),
            Dim::Uniform(0.0, 0.5),
        ];
        let bests: Vec<f64> = (0..200)
            .map(|seed| {
                let s = Settings {
                    startup: 10,
                    candidates: 24,
                    seed,
                    joint,
                    explore,
                    explore_fade: 0,
                };
                run(&dims, narrow_best, s, trials)[trials - 1]
            })
            .collect();
        let missed = bests.iter().filter(|&&b| b > 0.2).count();
        (bests.iter().sum::<f64>() / 200.0, missed)
    }

    #[test]
    fn the_wide_share_fades_to_none_over_the_proposals_after_the_startup() {
        let s = |fade| Settings {
            startup: 4,
            candidates: 24,
            seed: 0,
            joint: true,
            explore: 0.5,
            explore_fade: fade,
        };
        let shares: Vec<f64> = [0, 4, 9, 14, 24, 60]
            .map(|i| explore_share(&s(20), i))
            .to_vec();
        assert_eq!(shares, [0.5, 0.5, 0.375, 0.25, 0.0, 0.0]);
        assert_eq!(explored(shares[2], 24), 9);
        // Without a fade the share holds.
        assert_eq!(explore_share(&s(0), 60), 0.5);
        // And a faded-out search draws as one without wide draws: the same proposals.
        let dims = [Dim::LogUniform(1e-4, 1e-2), Dim::Choice(3)];
        let history: Vec<Observation> = (0..30)
            .map(|i| Observation {
                x: vec![1e-4 * 1.15f64.powi(i), (i % 3) as f64],
                score: Some(((i * 7) % 11) as f64),
                second: None,
            })
            .collect();
        let at = |s: Settings, i| propose(&dims, &history, &s, i, None);
        let plain = Settings {
            explore: 0.0,
            ..s(0)
        };
        assert_eq!(at(s(20), 40), at(plain, 40));
        assert_ne!(at(s(20), 10), at(plain, 10));
    }

    #[test]
    fn candidates_from_the_whole_space_find_the_narrow_best_size_the_good_density_misses() {
        // 60 trials, 10 random first, 200 seeds (measured): key by key, mean best 0.0116 with
        // half the candidates from the whole space (3 seeds never in size 2's basin) against
        // 0.0228 from the good density alone (13); the two would be equal if `explore` did not
        // reach the candidates. The joint model finds the size either way (0.0111, no seed
        // missing it, against 0.0105, one): its category kernel sharpens as a group grows, so
        // the crowd of trials at sizes 0 and 1 does not leak onto size 2 (with the fixed
        // spread it had before, 0.0285 with 17 seeds missing against 0.0400 with 25).
        let (wide, missed_wide) = narrow_search(false, 0.5, 60);
        let (near, missed_near) = narrow_search(false, 0.0, 60);
        assert!(
            missed_wide < missed_near && wide < near,
            "key by key: {wide:.4} ({missed_wide} missed) against {near:.4} ({missed_near})"
        );
        for explore in [0.5, 0.0] {
            let (best, missed) = narrow_search(true, explore, 60);
            assert!(
                missed <= 3 && best < 0.015,
                "joint, explore {explore}: {best:.4} ({missed} missed)"
            );
        }
    }

    #[test]
    fn the_joint_density_is_a_density_and_keeps_each_trials_values_together() {
        let dims = [Dim::LogUniform(1e-4, 1e-2), Dim::Choice(2)];
        // Size 0 tried at lr 1e-4, size 1 at lr 1e-2.
        let joint = Joint::fit(&[vec![1e-4, 0.0], vec![1e-2, 1.0]], &dims);
        let (lo, hi) = dims[0].bounds();
        let steps = 2000;
        let width = (hi - lo) / steps as f64;
        let mass: f64 = (0..steps)
            .flat_map(|i| [0.0, 1.0].map(|c| (lo + (i as f64 + 0.5) * width, c)))
            .map(|(u, c)| joint.log_pdf(&[u, c]).exp() * width)
            .sum();
        assert!((mass - 1.0).abs() < 1e-3, "integrates to {mass}");
        let at = |lr: f64, c: f64| joint.log_pdf(&[lr.ln(), c]);
        assert!(at(1e-4, 0.0) > at(1e-4, 1.0) + 0.5 && at(1e-2, 1.0) > at(1e-2, 0.0) + 0.5);
        // Key by key, the same two trials say nothing of which size goes with which lr.
        let per_key = |lr: f64, c: f64| {
            let l = Parzen::fit(&[1e-4f64.ln(), 1e-2f64.ln()], lo, hi).log_pdf(lr.ln());
            l + category_weights(&[0.0, 1.0], 2)[c as usize].ln()
        };
        assert!((per_key(1e-4, 0.0) - per_key(1e-4, 1.0)).abs() < 1e-12);
        // Its draws stay near the pairs: few small-lr draws of size 1.
        let mut rng = Rng::new(3, 0);
        let draws: Vec<Vec<f64>> = (0..3000).map(|_| joint.sample(&mut rng)).collect();
        let share = |c: f64| {
            let of: Vec<&Vec<f64>> = draws.iter().filter(|d| d[1] == c).collect();
            of.iter().filter(|d| d[0] < 1e-3f64.ln()).count() as f64 / of.len() as f64
        };
        assert!(
            share(0.0) > 0.6 && share(1.0) < 0.4,
            "{} {}",
            share(0.0),
            share(1.0)
        );
    }

    #[test]
    fn other_sizes_at_a_rate_one_size_crowded_look_as_untried_as_they_are() {
        // The 红楼梦 races' trap: forty trials of one size at one rate, the best four the good
        // group, the rest and two poor trials of another size at a far rate the bad one. A
        // category kernel that keeps a third of each trial's weight on the other sizes carries
        // the crowd's bad trials onto them at that rate, so they scored no better than the
        // crowded size there (−0.20 against −0.32) and below an untried corner of it (0.73):
        // the search never left the size. Optuna's kernel sharpens with the group: 1.41 there
        // (the crowded size −0.56, the corner 0.48).
        let dims = [Dim::LogUniform(1e-4, 1e-2), Dim::Choice(3)];
        let mut rng = Rng::new(1, 0);
        let mut near = |spread: f64, size: f64| {
            vec![(3e-3f64.ln() + spread * rng.normal() as f64).exp(), size]
        };
        let good: Vec<Vec<f64>> = (0..4).map(|_| near(0.2, 1.0)).collect();
        let mut bad: Vec<Vec<f64>> = (0..36).map(|_| near(0.3, 1.0)).collect();
        bad.extend([vec![1.5e-4, 2.0], vec![2e-4, 2.0]]);
        let (l, g) = (Joint::fit(&good, &dims), Joint::fit(&bad, &dims));
        let score = |lr: f64, size: f64| l.log_pdf(&[lr.ln(), size]) - g.log_pdf(&[lr.ln(), size]);
        let (other, crowded, corner) = (score(3e-3, 0.0), score(3e-3, 1.0), score(9e-3, 1.0));
        assert!(
            other > crowded + 1.0 && other > corner,
            "another size at the crowded rate {other:.3}, the crowded size {crowded:.3}, an \
             untried rate of it {corner:.3}"
        );
    }

    #[test]
    fn tpe_finds_better_values_than_random_search_on_synthetic_objectives() {
        // Over 40 seeds and 40 trials each (10 random to start), TPE's mean best value must be
        // below 80% of random search's on every objective, key by key and joint (measured with
        // `explore = 0`: 55%, 65%, 28% key by key, 13%, 42%, 22% joint; with 0.5:
        // 16%, 67%, 32% and 19%, 46%, 20%: the per-key model leans on the wide draws, the joint
        // one does not).
        for joint in [false, true] {
            for (name, dims, f) in objectives() {
                let (mut tpe, mut rnd) = (0.0, 0.0);
                for seed in 0..40 {
                    let s = Settings {
                        startup: 10,
                        candidates: 24,
                        seed,
                        joint,
                        explore: 0.0,
                        explore_fade: 0,
                    };
                    tpe += run(&dims, f, s, 40)[39];
                    rnd += run(&dims, f, Settings { startup: 40, ..s }, 40)[39];
                }
                eprintln!("{name}, joint {joint}: {:.0}%", 100.0 * tpe / rnd);
                assert!(
                    tpe < 0.8 * rnd,
                    "{name}, joint {joint}: TPE {:.4} vs random {:.4} (mean best of 40)",
                    tpe / 40.0,
                    rnd / 40.0
                );
            }
        }
    }
}

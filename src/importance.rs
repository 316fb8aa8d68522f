//! Which swept hyperparameters explain a sweep's metric: for each key, the share of the metric's
//! variance it explains on its own (a functional-ANOVA first-order index, as Optuna's fANOVA
//! evaluator reports), its rank correlation with the metric, and its value in the best trial.
//!
//! The metric is modelled by a random forest (the `randomforest` crate) fitted on the finished
//! trials; the forest's main effect of key k is the mean prediction with k fixed and the other
//! keys drawn from the trials' values, and the index is the variance of that main effect over
//! k's values divided by the variance of the predictions. Trials that differ only in their seed
//! are averaged first: the seed is noise, not a setting. Numeric keys spanning two orders of
//! magnitude or more (learning rates) are modelled on a log scale; others (`optimizer`) by rank.

use crate::rng::Rng;
use crate::run_dir::{Metric, RunStatus};
use crate::runs::Row;
use serde::Serialize;

/// One trial (or seed group) as the analysis sees it: its swept values and its metric.
#[derive(Debug, Clone)]
pub struct Observation {
    pub values: Vec<String>,
    pub metric: f64,
}

/// What the analysis says about one key.
#[derive(Debug, Clone, Serialize)]
pub struct KeyImportance {
    pub key: String,
    /// Share of the metric's variance explained by this key alone (the keys' shares sum to 1).
    pub importance: f64,
    /// Spearman rank correlation of the key's value with the metric (numeric keys only).
    pub spearman: Option<f64>,
    /// The key's value in the best observation.
    pub best: String,
    /// Distinct values the key took.
    pub distinct: usize,
}

/// The answer: the keys ranked, or why there is none.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Importance {
    Ranked {
        /// Observations the forest was fitted on (trials, seed groups merged).
        observations: usize,
        keys: Vec<KeyImportance>,
    },
    TooFew {
        observations: usize,
        needed: usize,
    },
    /// Every observation has the same value of every key (nothing was swept).
    NothingVaries,
}

/// Fewer finished observations than this and the analysis declines to guess.
pub const MIN_OBSERVATIONS: usize = 5;

/// How a key's values become a number for the forest.
enum Encoding {
    Linear,
    Log,
    /// Categories in order of first appearance.
    Rank(Vec<String>),
}

impl Encoding {
    fn of(values: &[&str]) -> Self {
        let nums: Option<Vec<f64>> = values.iter().map(|v| v.parse::<f64>().ok()).collect();
        match nums {
            Some(xs) if xs.iter().all(|x| x.is_finite()) => {
                let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if lo > 0.0 && hi / lo >= 100.0 {
                    Encoding::Log
                } else {
                    Encoding::Linear
                }
            }
            _ => {
                let mut cats: Vec<String> = Vec::new();
                for v in values {
                    if !cats.iter().any(|c| c == v) {
                        cats.push(v.to_string());
                    }
                }
                Encoding::Rank(cats)
            }
        }
    }

    fn encode(&self, v: &str) -> f64 {
        match self {
            Encoding::Linear => v.parse().unwrap_or(0.0),
            Encoding::Log => v.parse::<f64>().map_or(0.0, |x| x.max(1e-300).log10()),
            Encoding::Rank(cats) => cats.iter().position(|c| c == v).unwrap_or(0) as f64,
        }
    }

    fn numeric(&self) -> bool {
        !matches!(self, Encoding::Rank(_))
    }
}

/// Ranks with ties averaged (for Spearman's ρ).
fn ranks(xs: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..xs.len()).collect();
    idx.sort_by(|&a, &b| xs[a].total_cmp(&xs[b]));
    let mut r = vec![0.0; xs.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && xs[idx[j + 1]] == xs[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman's ρ: the Pearson correlation of the ranks; `None` when either side is constant.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

fn variance(xs: &[f64]) -> f64 {
    let n = xs.len().max(1) as f64;
    let m = xs.iter().sum::<f64>() / n;
    xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n
}

/// A forest fitted on the encoded observations.
fn fit(x: &[Vec<f64>], y: &[f64], seed: u64) -> Option<randomforest::RandomForestRegressor> {
    let mut table = randomforest::table::TableBuilder::new();
    for (row, &t) in x.iter().zip(y) {
        table.add_row(row, t).ok()?;
    }
    let table = table.build().ok()?;
    let trees = std::num::NonZeroUsize::new(200)?;
    Some(
        randomforest::RandomForestRegressorOptions::new()
            .seed(seed)
            .trees(trees)
            .fit(randomforest::criterion::Mse, table),
    )
}

/// First-order functional-ANOVA indices of the forest, estimated on `base` points (rows of
/// observed values), normalised to sum to 1.
fn main_effects(
    forest: &randomforest::RandomForestRegressor,
    x: &[Vec<f64>],
    base: &[Vec<f64>],
) -> Vec<f64> {
    let d = x.first().map_or(0, Vec::len);
    let total = variance(&base.iter().map(|p| forest.predict(p)).collect::<Vec<_>>());
    let mut raw: Vec<f64> = (0..d)
        .map(|k| {
            let mut levels: Vec<f64> = x.iter().map(|r| r[k]).collect();
            levels.sort_by(f64::total_cmp);
            levels.dedup();
            let effect: Vec<f64> = levels
                .iter()
                .map(|&v| {
                    let preds: f64 = base
                        .iter()
                        .map(|p| {
                            let mut q = p.clone();
                            q[k] = v;
                            forest.predict(&q)
                        })
                        .sum();
                    preds / base.len() as f64
                })
                .collect();
            if total > 0.0 {
                variance(&effect) / total
            } else {
                0.0
            }
        })
        .collect();
    let sum: f64 = raw.iter().sum();
    if sum > 0.0 {
        raw.iter_mut().for_each(|v| *v /= sum);
    }
    raw
}

/// Ranks `keys` by how much of `obs`'s metric each explains (lower metric is better).
pub fn analyse(keys: &[String], obs: &[Observation], seed: u64) -> Importance {
    if obs.len() < MIN_OBSERVATIONS {
        return Importance::TooFew {
            observations: obs.len(),
            needed: MIN_OBSERVATIONS,
        };
    }
    let columns: Vec<Vec<&str>> = (0..keys.len())
        .map(|k| obs.iter().map(|o| o.values[k].as_str()).collect())
        .collect();
    let varying: Vec<usize> = (0..keys.len())
        .filter(|&k| columns[k].iter().any(|v| *v != columns[k][0]))
        .collect();
    if varying.is_empty() {
        return Importance::NothingVaries;
    }
    let enc: Vec<Encoding> = varying.iter().map(|&k| Encoding::of(&columns[k])).collect();
    let x: Vec<Vec<f64>> = obs
        .iter()
        .map(|o| {
            varying
                .iter()
                .zip(&enc)
                .map(|(&k, e)| e.encode(&o.values[k]))
                .collect()
        })
        .collect();
    let y: Vec<f64> = obs.iter().map(|o| o.metric).collect();
    let best = (0..obs.len())
        .min_by(|&a, &b| y[a].total_cmp(&y[b]))
        .unwrap_or(0);
    // Base points for the main effects: each key drawn independently from its observed values.
    let mut rng = Rng::new(seed, 11);
    let base: Vec<Vec<f64>> = (0..256)
        .map(|_| {
            (0..varying.len())
                .map(|j| x[(rng.next_u64() % x.len() as u64) as usize][j])
                .collect()
        })
        .collect();
    let shares = match fit(&x, &y, seed) {
        Some(forest) => main_effects(&forest, &x, &base),
        None => vec![0.0; varying.len()],
    };
    let mut ranked: Vec<KeyImportance> = varying
        .iter()
        .enumerate()
        .map(|(j, &k)| {
            let col: Vec<f64> = x.iter().map(|r| r[j]).collect();
            let mut distinct = columns[k].clone();
            distinct.sort();
            distinct.dedup();
            KeyImportance {
                key: keys[k].clone(),
                importance: shares[j],
                spearman: enc[j].numeric().then(|| spearman(&col, &y)).flatten(),
                best: obs[best].values[k].clone(),
                distinct: distinct.len(),
            }
        })
        .collect();
    ranked.sort_by(|a, b| b.importance.total_cmp(&a.importance));
    Importance::Ranked {
        observations: obs.len(),
        keys: ranked,
    }
}

/// The importance of the swept keys for `metric` over the runs that finished (completed or
/// pruned: a pruned trial's metric is a real, early result), seeds averaged.
pub fn of_runs(rows: &[Row], metric: Metric) -> Importance {
    let keys: Vec<String> = rows
        .first()
        .map(|r| {
            r.hparams
                .iter()
                .map(|(k, _)| k.clone())
                .filter(|k| k != "seed")
                .collect()
        })
        .unwrap_or_default();
    // One observation per seed group: the mean of its runs' metric.
    let mut obs: Vec<(&str, Observation, usize)> = Vec::new();
    for r in rows {
        let finished = matches!(r.status(), RunStatus::Completed | RunStatus::Pruned);
        let Some(m) = r.metric(metric).filter(|m| finished && m.is_finite()) else {
            continue;
        };
        match obs
            .iter_mut()
            .find(|(g, _, _)| !r.group.is_empty() && *g == r.group)
        {
            Some((_, o, n)) => {
                o.metric = (o.metric * *n as f64 + m) / (*n + 1) as f64;
                *n += 1;
            }
            None => {
                let values = keys
                    .iter()
                    .map(|k| r.value(k).unwrap_or("-").to_string())
                    .collect();
                obs.push((&r.group, Observation { values, metric: m }, 1))
            }
        }
    }
    let obs: Vec<Observation> = obs.into_iter().map(|(_, o, _)| o).collect();
    analyse(&keys, &obs, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(values: &[&str], metric: f64) -> Observation {
        Observation {
            values: values.iter().map(|s| s.to_string()).collect(),
            metric,
        }
    }

    #[test]
    fn the_key_that_drives_the_metric_ranks_first() {
        // metric = 5 - log10(lr) ·1.0, plus a little of hidden; dropout is noise.
        let mut rng = Rng::new(3, 0);
        let mut o = Vec::new();
        for i in 0..24 {
            let lr = 10f64.powf(-5.0 + 3.0 * rng.uniform_f64());
            let hidden = [64, 128, 256][i % 3];
            let dropout = rng.uniform_f64() * 0.5;
            let m = 5.0 + lr.log10() + 0.02 * (hidden as f64 / 64.0) + 0.01 * rng.uniform_f64();
            o.push(obs(
                &[
                    &lr.to_string(),
                    &hidden.to_string(),
                    &format!("{dropout:.3}"),
                ],
                m,
            ));
        }
        let keys: Vec<String> = ["lr", "hidden", "dropout"].map(String::from).to_vec();
        let Importance::Ranked { keys: ranked, .. } = analyse(&keys, &o, 1) else {
            panic!("expected a ranking");
        };
        assert_eq!(ranked[0].key, "lr");
        assert!(ranked[0].importance > 0.8, "{ranked:?}");
        let rho = ranked[0].spearman.unwrap();
        assert!(rho > 0.95, "lr rises with the metric: {rho}");
        let sum: f64 = ranked.iter().map(|k| k.importance).sum();
        assert!((sum - 1.0).abs() < 1e-9);
    }

    #[test]
    fn too_few_or_constant_observations_get_no_ranking() {
        let keys = vec!["lr".to_string()];
        let few: Vec<Observation> = (0..4).map(|i| obs(&[&i.to_string()], i as f64)).collect();
        assert!(matches!(
            analyse(&keys, &few, 1),
            Importance::TooFew {
                observations: 4,
                needed: 5
            }
        ));
        let same: Vec<Observation> = (0..6).map(|i| obs(&["0.1"], i as f64)).collect();
        assert!(matches!(
            analyse(&keys, &same, 1),
            Importance::NothingVaries
        ));
    }

    #[test]
    fn spearman_of_monotone_and_reversed_series() {
        let a = [1.0, 2.0, 3.0, 10.0];
        assert!((spearman(&a, &[5.0, 6.0, 7.0, 8.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((spearman(&a, &[8.0, 7.0, 6.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
        assert!(spearman(&a, &[1.0; 4]).is_none());
    }
}

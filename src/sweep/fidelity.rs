//! Multi-fidelity for a TPE search, as BOHB does it: a trial pruned at step 100 says how its
//! point did at step 100, and a search under a halving rule finishes few trials, so fitting TPE
//! only to finished trials (every pruned one "bad") leaves it blind for most of the budget.
//! Here every trial the search has heard of is read at one level, the highest at which enough
//! of them have a result: the full budget (the search's metric) when enough finished, else the
//! val loss at the highest evaluation step that enough reached. At a level, a trial that ended
//! before reaching it (pruned, diverged, failed) is in the bad group, and so is one still
//! running that has not reached it: a "constant liar" (Optuna's `constant_liar`), so that
//! parallel proposals do not crowd around a point already being tried. A running trial that has
//! passed the level's step is scored there, as a finished one: counting it bad would hold the
//! search away from the trials that survived the pruner, the best it knows of at that step,
//! for as long as they run. Pure: the same trials give the same level.

use super::tpe::Observation;
use serde::{Deserialize, Serialize};

/// How a trial the search has heard of ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum End {
    /// Ran its budget; its score on the search's metric (lower is better).
    Scored(f64),
    /// Ended early or badly: pruned, diverged, failed.
    Stopped,
    /// Proposed and not yet heard of.
    Running,
}

/// One trial as the search knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Told {
    pub x: Vec<f64>,
    /// Val loss at each evaluation it reached, by step (for a running trial, those it had
    /// reached when the proposal read it).
    pub curve: Vec<(u64, f64)>,
    pub end: End,
    /// Its second objective, for a search with two.
    pub second: Option<Second>,
}

/// A trial's second objective (a cost), read at any level: a size is the same at every step;
/// time is its seconds per step times the level's step (the whole time at the full budget).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Second {
    Fixed(f64),
    Time { per_step: f64, total: f64 },
}

impl Second {
    pub fn at(self, level: Level) -> f64 {
        match (self, level) {
            (Second::Fixed(v), _) => v,
            (Second::Time { total, .. }, Level::Final) => total,
            (Second::Time { per_step, .. }, Level::Step(s)) => per_step * s as f64,
        }
    }
}

/// The level the search's model was fitted at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// The whole budget: finished trials' scores.
    Final,
    /// Val loss at this step.
    Step(u64),
}

impl Level {
    /// How the sweep's log names it.
    pub fn name(self) -> String {
        match self {
            Level::Final => "the full budget".into(),
            Level::Step(s) => format!("step {s}"),
        }
    }
}

/// The observations at `level`: `None` for a trial in the bad group; a finished trial with no
/// evaluation at that step (its `eval_every` or budget differs) is left out.
fn at(told: &[Told], level: Level) -> Vec<Observation> {
    told.iter()
        .filter_map(|t| {
            let score = match (level, t.end) {
                (Level::Final, End::Scored(s)) => Some(s).filter(|s| s.is_finite()),
                (Level::Final, _) => None,
                (Level::Step(step), end) => match t.curve.iter().find(|(s, _)| *s == step) {
                    Some(&(_, loss)) => Some(loss).filter(|l| l.is_finite()),
                    None if matches!(end, End::Scored(_)) => return None,
                    None => None,
                },
            };
            Some(Observation {
                x: t.x.clone(),
                score,
                second: t.second.map(|s| s.at(level)),
            })
        })
        .collect()
}

/// The highest level with at least `min_scored` scored trials (BOHB uses the number of keys
/// plus one), and its observations. Without such a level: the one with the most scored trials,
/// the full budget first on a tie (so a search with no pruning is read as plain TPE reads it).
pub fn observations(told: &[Told], min_scored: usize) -> (Level, Vec<Observation>) {
    let mut steps: Vec<u64> = told
        .iter()
        .flat_map(|t| t.curve.iter().map(|&(s, _)| s))
        .collect();
    steps.sort_unstable_by(|a, b| b.cmp(a));
    steps.dedup();
    let levels = std::iter::once(Level::Final).chain(steps.into_iter().map(Level::Step));
    let mut fallback: Option<(usize, Level, Vec<Observation>)> = None;
    for level in levels {
        let obs = at(told, level);
        let scored = obs.iter().filter(|o| o.score.is_some()).count();
        if scored >= min_scored.max(1) {
            return (level, obs);
        }
        if fallback.as_ref().is_none_or(|(n, ..)| scored > *n) {
            fallback = Some((scored, level, obs));
        }
    }
    fallback.map_or((Level::Final, Vec::new()), |(_, level, obs)| (level, obs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::plan::{PruneRule, Pruning};
    use crate::sweep::simulate::{self, Setup, Surface};
    use crate::sweep::tpe::{self, Dim, Settings};

    fn told(x: f64, curve: &[(u64, f64)], end: End) -> Told {
        Told {
            x: vec![x],
            curve: curve.to_vec(),
            end,
            second: None,
        }
    }

    #[test]
    fn the_highest_level_with_enough_results_wins_and_early_ends_are_bad_there() {
        let trials = vec![
            told(0.0, &[(100, 3.0), (300, 2.0)], End::Scored(2.0)),
            told(1.0, &[(100, 3.5)], End::Stopped),
            told(2.0, &[(100, 3.2)], End::Stopped),
            told(3.0, &[], End::Stopped),
            told(4.0, &[], End::Running),
        ];
        // Only one finished: the full budget and step 300 have one result each, step 100 has
        // three.
        let (level, obs) = observations(&trials, 3);
        assert_eq!(level, Level::Step(100));
        let scores: Vec<Option<f64>> = obs.iter().map(|o| o.score).collect();
        assert_eq!(scores, vec![Some(3.0), Some(3.5), Some(3.2), None, None]);
        // With one result enough, the full budget: pruned, failed and running trials are bad.
        let (level, obs) = observations(&trials, 1);
        assert_eq!(level, Level::Final);
        assert_eq!(obs[0].score, Some(2.0));
        assert!(obs[1..].iter().all(|o| o.score.is_none()));
        // Never enough anywhere: the level with the most results.
        assert_eq!(observations(&trials, 9).0, Level::Step(100));
    }

    #[test]
    fn a_finished_trial_without_an_evaluation_at_the_step_is_left_out_there() {
        let trials = vec![
            told(0.0, &[(200, 2.5)], End::Scored(2.5)),
            told(1.0, &[(100, 3.0), (200, 2.8)], End::Scored(2.8)),
            told(2.0, &[(100, 3.3)], End::Stopped),
        ];
        let (level, obs) = observations(&trials, 2);
        assert_eq!(level, Level::Final);
        assert_eq!(obs.len(), 3);
        let (level, obs) = observations(&trials, 3);
        // Step 200 has two (the stopped trial is bad there), step 100 two (the first is out).
        assert_eq!(level, Level::Final, "a tie goes to the full budget");
        assert_eq!(obs.len(), 3);
        let at_100 = at(&trials, Level::Step(100));
        assert_eq!(at_100.len(), 2);
    }

    #[test]
    fn a_running_trial_is_scored_at_the_steps_it_has_passed_and_bad_beyond() {
        let trials = vec![
            told(0.0, &[(100, 3.0), (300, 2.0)], End::Scored(2.0)),
            told(1.0, &[(100, 3.5)], End::Stopped),
            told(2.0, &[(100, 2.9), (200, 2.4)], End::Running),
            told(3.0, &[], End::Running),
        ];
        let scores =
            |level| -> Vec<Option<f64>> { at(&trials, level).iter().map(|o| o.score).collect() };
        // Step 100: the running survivor is the best there, not a liar's bad point.
        assert_eq!(
            scores(Level::Step(100)),
            [Some(3.0), Some(3.5), Some(2.9), None]
        );
        // Step 200: the finished trial has no evaluation there and is left out.
        assert_eq!(scores(Level::Step(200)), [None, Some(2.4), None]);
        // Where it has not been yet, and at the full budget, a running trial is bad.
        assert_eq!(scores(Level::Step(300)), [Some(2.0), None, None, None]);
        assert_eq!(scores(Level::Final), [Some(2.0), None, None, None]);
        assert_eq!(observations(&trials, 3).0, Level::Step(100));
    }

    /// The synthetic searches' space: log lr, dropout, a choice of three.
    const BOWL: [Dim; 3] = [
        Dim::LogUniform(1e-5, 1e-1),
        Dim::Uniform(0.0, 0.5),
        Dim::Choice(3),
    ];

    /// Their loss: a bowl in log lr and dropout plus an offset per choice.
    fn bowl(x: &[f64], offsets: [f64; 3]) -> f64 {
        (x[0].log10() + 3.0).powi(2) + 4.0 * (x[1] - 0.2).powi(2) + offsets[x[2] as usize]
    }

    /// A synthetic successive-halving search (no training) over three keys, a bowl in log lr
    /// and dropout plus a cost per category, whose loss at step 100 is the full budget's plus a
    /// term that shrinks with the steps and does not depend on the point (so each level ranks
    /// points as the full budget does). A trial runs to step 300 only if its loss at step 100 is
    /// among the best third so far, else it is pruned there. Returns the best finished loss.
    fn halving_search(seed: u64, multi_fidelity: bool, trials: usize) -> f64 {
        let dims = BOWL;
        let full = |x: &[f64]| bowl(x, [0.5, 0.0, 0.3]);
        let s = Settings {
            startup: 4,
            candidates: 24,
            seed,
            joint: false,
            explore: 0.0,
            explore_fade: 0,
        };
        let mut all: Vec<Told> = Vec::new();
        let mut at_100: Vec<f64> = Vec::new();
        let mut best = f64::INFINITY;
        for i in 0..trials {
            let history = if multi_fidelity {
                observations(&all, dims.len() + 1).1
            } else {
                at(&all, Level::Final)
            };
            let x = tpe::propose(&dims, &history, &s, i as u64, None).remove(0);
            let (l100, l300) = (full(&x) + 1.0, full(&x));
            let better = at_100.iter().filter(|&&o| o < l100).count();
            let keep = better < (at_100.len() + 1).div_ceil(3);
            at_100.push(l100);
            all.push(Told {
                second: None,
                curve: if keep {
                    vec![(100, l100), (300, l300)]
                } else {
                    vec![(100, l100)]
                },
                end: if keep {
                    End::Scored(l300)
                } else {
                    End::Stopped
                },
                x,
            });
            if keep {
                best = best.min(l300);
            }
        }
        best
    }

    #[test]
    fn fitting_at_the_highest_level_is_as_good_as_finished_trials_alone_under_halving() {
        // Over 100 seeds, 8 to 40 trials: measured equal (12 trials: 0.2038 vs 0.2040). With
        // Optuna's good group (the best tenth) and fidelities that rank alike, the best point at
        // step 100 is the best finished one (a halving rule keeps the best), so both fits put the
        // same point in the good group; the level only changes which pruned points are bad. The
        // test pins that reading pruned curves never costs the search (a level chosen wrongly,
        // e.g. the lowest, or losses read as scores of another step, would).
        for n in [8usize, 12, 24] {
            let (mut multi, mut plain) = (0.0, 0.0);
            for seed in 0..100 {
                multi += halving_search(seed, true, n) / 100.0;
                plain += halving_search(seed, false, n) / 100.0;
            }
            assert!(
                multi <= 1.05 * plain,
                "{n} trials: multi-fidelity {multi:.4} vs finished only {plain:.4}"
            );
        }
    }

    /// The asynchronous searches' rules: successive halving keeping the best third at step 100
    /// from the first trial on, and Hyperband's two brackets over the same three evaluations.
    const HALVING: Pruning = Pruning {
        rule: PruneRule::Halving,
        eta: 3,
        warmup_evals: 1,
        min_trials: 0,
        min_progress: 0.0,
    };
    const HYPERBAND: Pruning = Pruning {
        rule: PruneRule::Hyperband,
        ..HALVING
    };

    /// Where the asynchronous searches' best-so-far is read (a costly trial takes 12 units).
    const HORIZONS: [f64; 7] = [10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 60.0];

    /// The asynchronous searches' surface: the bowl, the costly choice the best (as hidden
    /// 256 is for a char-LSTM at a fixed step budget), taking 1, 2 or 4 time units per 100
    /// steps; at step 100 a trial's loss is the full budget's plus 1 plus `late[choice]` (a
    /// slow starter's handicap), shrinking linearly to none at step 300.
    struct SlowStarter {
        late: [f64; 3],
    }

    impl Surface for SlowStarter {
        fn loss(&self, x: &[f64], eval: u64, evals: u64, _noise: f64) -> f64 {
            let left = (evals - eval) as f64 / (evals - 1) as f64;
            bowl(x, [0.5, 0.2, 0.0]) + left * (1.0 + self.late[x[2] as usize])
        }

        fn time(&self, x: &[f64]) -> f64 {
            [1.0, 2.0, 4.0][x[2] as usize]
        }
    }

    /// Two workers on a virtual clock ([`simulate::run`]): the halving search above,
    /// asynchronous, under `rule`, reading running trials as far as they have got when
    /// `read_running`, `explore` of the candidates from the whole space, until the last of
    /// [`HORIZONS`].
    fn halving_setup(seed: u64, read_running: bool, rule: &Pruning, explore: f64) -> Setup {
        Setup {
            dims: BOWL.to_vec(),
            tpe: Settings {
                startup: 4,
                candidates: 24,
                seed,
                joint: true,
                explore,
                explore_fade: 0,
            },
            pruning: Some(rule.clone()),
            evals: 3,
            workers: 2,
            read_running,
            until: HORIZONS[HORIZONS.len() - 1],
        }
    }

    /// Mean over 400 seeds of the best-so-far at each of [`HORIZONS`] on the slow starter with
    /// the step-100 handicaps `late` (capped at 5).
    fn mean_best(rule: &Pruning, read_running: bool, late: [f64; 3], explore: f64) -> Vec<f64> {
        let surface = SlowStarter { late };
        simulate::mean_best(&surface, 400, 5.0, &HORIZONS, |seed| {
            halving_setup(seed, read_running, rule, explore)
        })
    }

    #[test]
    fn reading_running_trials_reaches_the_sampler_and_costs_little_over_the_budget() {
        // Mean best over 400 seeds at each horizon (time units; a trial of the costly choice
        // takes 12), every candidate from the good density (`explore = 0`, where the reading
        // shows most). With the joint model's fixed-spread category kernel the reading was
        // 0.8 % lower in area than the liar alone (2.672 against 2.694: up to 12 % lower from 20
        // units on, up to 3 % higher before, the survivor it reads being the costly choice);
        // with Optuna's kernel (the default) it is 1.3 % higher on this surface (2.605 against
        // 2.572; 2.624 against 2.592 with `explore` 0.5). The test pins that the reading reaches
        // the sampler (the arms would be equal if it were lost on the way) and that it costs
        // under 2 %.
        let area = |read_running| -> f64 {
            mean_best(&HALVING, read_running, [0.0; 3], 0.0)
                .iter()
                .sum()
        };
        let (read, liar) = (area(true), area(false));
        assert!(
            (read - liar).abs() > 0.005 && read < 1.02 * liar,
            "area {read:.4} reading running trials, {liar:.4} without"
        );
    }

    #[test]
    fn hyperband_finishes_the_slow_starter_that_halving_prunes() {
        // The race's seed 3 on Zen 1 (BENCHMARKS.md): at step 100 hidden 128 was ahead of
        // hidden 256 (2.09 against 2.14 at the same lr), at step 300 behind (1.87 against
        // Optuna's 1.77), and halving pruned every hidden-256 trial at step 100 once the search
        // had settled on hidden 128. Here the costly choice is the best at the end by 0.2 and
        // behind at step 100 by `late` less that. Mean best-so-far over 400 seeds at horizons
        // 10..60 (measured with `explore = 0`; with 0.5, late 1.0: hyperband 1.177
        // 0.513 0.400 0.349 0.286 0.217 0.142, halving 1.033 0.441 0.351 0.300 0.259 0.213 0.170):
        //   late 1.0: hyperband 1.176 0.511 0.382 0.334 0.275 0.211 0.145
        //             halving   1.029 0.435 0.358 0.301 0.257 0.213 0.174
        //   late 0.3: hyperband 1.215 0.507 0.385 0.312 0.257 0.188 0.118
        //             halving   1.155 0.427 0.330 0.262 0.216 0.153 0.099
        //   alike:    hyperband 1.219 0.511 0.398 0.307 0.252 0.181 0.112
        //             halving   1.193 0.436 0.336 0.252 0.207 0.153 0.095
        // So Hyperband pays for the trials it runs to the end (2 in 5) wherever step 100 ranks
        // the points as the end does, or nearly; it ends lower only where the slow starter is
        // far behind at step 100, as halving then never finishes it. The test pins that end:
        // both would be equal if the last bracket pruned as the first does.
        let late = [0.0, 0.0, 1.0];
        let (hb, halving) = (
            mean_best(&HYPERBAND, true, late, 0.0),
            mean_best(&HALVING, true, late, 0.0),
        );
        let end = HORIZONS.len() - 1;
        assert!(
            hb[end] < 0.9 * halving[end],
            "hyperband {hb:.3?}, halving {halving:.3?}"
        );
    }
}

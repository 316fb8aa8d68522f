//! A search run on a virtual clock against a known loss surface, without training: the sweep's
//! own proposals (TPE read at the multi-fidelity level, running trials as far as they have got)
//! and its own pruning rules, `workers` trials at a time, each evaluation taking the surface's
//! time for its point. A real race settles a difference between two search variants over five
//! seeds in forty minutes, within a noise as large as the difference; this settles it over
//! hundreds of seeds in seconds, as far as the surface is the real one. The synthetic tests of
//! the search use it with made-up surfaces; the `searchsim` binary (scripts/searchsim.sh) with a
//! surface fitted to a race's measured trials.

use super::fidelity::{observations, End, Told};
use super::plan::Pruning;
use super::pruning;
use super::tpe::{self, Dim, Settings};
use crate::rng::Rng;

/// Steps between two evaluations: a trial's curve is read at 100, 200, ...
pub const STEPS_PER_EVAL: u64 = 100;

/// What a search is run against.
pub trait Surface {
    /// Val loss of point `x` at evaluation `eval` (1-based) of `evals`, for a trial whose own
    /// luck (its initial draw: a standard normal, one per trial) is `noise`.
    fn loss(&self, x: &[f64], eval: u64, evals: u64, noise: f64) -> f64;
    /// Time the steps of one evaluation take at `x`.
    fn time(&self, x: &[f64]) -> f64;
}

/// How the simulated search runs.
#[derive(Debug, Clone)]
pub struct Setup {
    pub dims: Vec<Dim>,
    pub tpe: Settings,
    /// `None`: every trial runs its budget.
    pub pruning: Option<Pruning>,
    /// Evaluations in a trial's budget (its steps at 100, 200, ... when `evals` is 3).
    pub evals: u64,
    pub workers: usize,
    /// Read a running trial at the evaluations it has passed (as the sweep does); `false`
    /// reads it as a bad point only (the constant liar alone).
    pub read_running: bool,
    /// No trial starts after this time.
    pub until: f64,
}

/// A trial the simulation ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    pub x: Vec<f64>,
    pub end: f64,
    /// Its last val loss: the full budget's when `completed`, else where it was pruned.
    pub loss: f64,
    /// Ran its budget (not pruned).
    pub completed: bool,
    /// Its proposal's index (the order the search proposed it in).
    pub number: usize,
    /// Steps it trained: up to the last evaluation it reached.
    pub steps: u64,
}

/// One simulated trial: its point, start, and the losses at the evaluations it reached.
struct Trial {
    x: Vec<f64>,
    start: f64,
    noise: f64,
    losses: Vec<f64>,
    stopped: bool,
}

impl Trial {
    fn ended(&self, evals: u64) -> bool {
        self.stopped || self.losses.len() as u64 == evals
    }

    /// As a proposal reads it.
    fn told(&self, evals: u64, read_running: bool) -> Told {
        let ended = self.ended(evals);
        let curve = (self.losses.iter().enumerate())
            .filter(|_| ended || read_running)
            .map(|(e, &l)| (STEPS_PER_EVAL * (e as u64 + 1), l))
            .collect();
        let end = match (ended, self.stopped) {
            (false, _) => End::Running,
            (true, true) => End::Stopped,
            (true, false) => End::Scored(self.losses[self.losses.len() - 1]),
        };
        Told {
            x: self.x.clone(),
            curve,
            end,
            second: None,
        }
    }
}

/// Runs the search until `setup.until` and every trial started by then has ended; returns the
/// trials in the order they ended.
pub fn run(surface: &dyn Surface, setup: &Setup) -> Vec<Ended> {
    let evals = setup.evals.max(1);
    let mut trials: Vec<Trial> = Vec::new();
    let mut ended = Vec::new();
    let mut now = 0.0;
    loop {
        let running = trials.iter().filter(|t| !t.ended(evals)).count();
        if now <= setup.until {
            for _ in running..setup.workers.max(1) {
                trials.push(propose(setup, evals, &trials, now));
            }
        }
        let next_end = |t: &Trial| t.start + surface.time(&t.x) * (t.losses.len() + 1) as f64;
        let Some(i) = (0..trials.len())
            .filter(|&i| !trials[i].ended(evals))
            .min_by(|&a, &b| next_end(&trials[a]).total_cmp(&next_end(&trials[b])))
        else {
            return ended;
        };
        now = next_end(&trials[i]);
        let eval = trials[i].losses.len() as u64 + 1;
        let loss = surface.loss(&trials[i].x, eval, evals, trials[i].noise);
        trials[i].losses.push(loss);
        if let (Some(rule), true) = (&setup.pruning, eval < evals) {
            let mine = pruning::bracket(rule, i, evals);
            let others: Vec<f64> = (trials.iter().enumerate())
                .filter(|&(j, _)| j != i && pruning::bracket(rule, j, evals) == mine)
                .filter_map(|(_, t)| t.losses.get(eval as usize - 1).copied())
                .collect();
            trials[i].stopped = pruning::decide(rule, eval, mine, loss, &others);
        }
        if trials[i].ended(evals) {
            ended.push(Ended {
                x: trials[i].x.clone(),
                end: now,
                loss,
                completed: !trials[i].stopped,
                number: i,
                steps: STEPS_PER_EVAL * eval,
            });
        }
    }
}

/// The next trial, proposed from what the search has heard of `trials` (of `evals`
/// evaluations each) at time `now`.
fn propose(setup: &Setup, evals: u64, trials: &[Trial], now: f64) -> Trial {
    let told: Vec<Told> = (trials.iter())
        .map(|t| t.told(evals, setup.read_running))
        .collect();
    let history = observations(&told, setup.dims.len() + 1).1;
    let index = trials.len() as u64;
    let x = tpe::propose(&setup.dims, &history, &setup.tpe, index, None).remove(0);
    let noise = Rng::new(setup.tpe.seed, 1_000 + index).normal() as f64;
    Trial {
        x,
        start: now,
        noise,
        losses: Vec::new(),
        stopped: false,
    }
}

/// The best loss among the completed trials that ended by each of `horizons` (infinite
/// before any).
pub fn best_at(ended: &[Ended], horizons: &[f64]) -> Vec<f64> {
    (horizons.iter())
        .map(|&h| {
            (ended.iter())
                .filter(|f| f.completed && f.end <= h)
                .map(|f| f.loss)
                .fold(f64::INFINITY, f64::min)
        })
        .collect()
}

/// [`best_at`] averaged over the searches `setup(seed)` for seeds `0..seeds`, each best capped
/// at `cap` (a search with nothing completed by a horizon would make the mean infinite).
pub fn mean_best(
    surface: &dyn Surface,
    seeds: u64,
    cap: f64,
    horizons: &[f64],
    setup: impl Fn(u64) -> Setup,
) -> Vec<f64> {
    let mut mean = vec![0.0; horizons.len()];
    for seed in 0..seeds {
        let best = best_at(&run(surface, &setup(seed)), horizons);
        for (m, b) in mean.iter_mut().zip(best) {
            *m += b.min(cap) / seeds as f64;
        }
    }
    mean
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::plan::PruneRule;

    /// Every point alike in time (one unit per evaluation); the loss is the learning rate's
    /// log distance from 1e-3 plus what is left of a gap of 1 at the first evaluation.
    struct Flat;

    impl Surface for Flat {
        fn loss(&self, x: &[f64], eval: u64, evals: u64, _noise: f64) -> f64 {
            (x[0].log10() + 3.0).abs() + (evals - eval) as f64 / (evals - 1) as f64
        }

        fn time(&self, _x: &[f64]) -> f64 {
            1.0
        }
    }

    fn setup(pruning: Option<Pruning>) -> Setup {
        Setup {
            dims: vec![Dim::LogUniform(1e-5, 1e-1)],
            tpe: Settings {
                startup: 4,
                candidates: 24,
                seed: 7,
                joint: true,
                explore: 0.0,
                explore_fade: 0,
            },
            pruning,
            evals: 3,
            workers: 2,
            read_running: true,
            until: 10.0,
        }
    }

    #[test]
    fn workers_run_trials_in_pairs_and_none_starts_after_the_budget() {
        let ended = run(&Flat, &setup(None));
        // Pairs start at 0, 3, 6, 9 and take 3 units each; the pair at 12 is past the budget.
        let ends: Vec<f64> = ended.iter().map(|e| e.end).collect();
        assert_eq!(ends, [3.0, 3.0, 6.0, 6.0, 9.0, 9.0, 12.0, 12.0]);
        assert!(ended.iter().all(|e| e.completed));
        let best = best_at(&ended, &[2.0, 6.0, 12.0]);
        assert!(best[0].is_infinite() && best[1] >= best[2]);
        let lowest = ended.iter().map(|e| e.loss).fold(f64::INFINITY, f64::min);
        assert_eq!(best[2], lowest);
    }

    #[test]
    fn a_pruned_trial_ends_at_its_rung_and_frees_its_worker() {
        let halving = Pruning {
            rule: PruneRule::Halving,
            eta: 3,
            warmup_evals: 1,
            min_trials: 1,
            min_progress: 0.0,
        };
        let ended = run(&Flat, &setup(Some(halving)));
        let pruned: Vec<&Ended> = ended.iter().filter(|e| !e.completed).collect();
        assert!(!pruned.is_empty(), "halving pruned nothing: {ended:?}");
        for p in &pruned {
            // With the first evaluation's loss: the gap of 1 not yet closed.
            assert!(p.loss >= 1.0, "{p:?}");
        }
        // Freed workers start more trials in the same budget than without pruning.
        assert!(ended.len() > run(&Flat, &setup(None)).len());
    }
}

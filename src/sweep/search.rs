//! A search that learns: with `[search] method = "tpe"` the trials are not listed up front; the
//! launcher asks for the next one whenever a slot frees, and it is proposed by the TPE sampler
//! ([`super::tpe`]) from every trial finished so far.
//!
//! Everything the search knows is in the manifest, written before a proposed trial starts: the
//! trials proposed (ordinary manifest entries), the order in which results became known, and for
//! each proposal how many of them it saw. A proposal is a pure function of the sweep's seed, its
//! index and that history, so a sweep killed at any point and run again continues the same
//! search: no trial is lost or run twice, and given the same completion order it proposes what
//! an uninterrupted run would have.

use super::manifest::{Entry, Manifest, SearchState};
use super::plan::{Plan, Sampler, TpeSearch};
use super::tpe::{self, Dim, Observation};
use crate::error::Result;
use crate::run_dir::{Metric, RunDir, RunRecord, RunStatus};
use std::path::{Path, PathBuf};
use toml::Value;

/// Proposes a sweep's TPE trials.
pub struct Proposer<'a> {
    plan: &'a Plan,
    tpe: &'a TpeSearch,
    root: PathBuf,
}

/// A trial's score for the search (lower is better); `None` when it ended badly.
pub fn score(record: &RunRecord, metric: Metric) -> Option<f64> {
    if record.status != RunStatus::Completed {
        return None;
    }
    metric.of(record).filter(|v| v.is_finite())
}

fn dim(s: &Sampler) -> Dim {
    match s {
        Sampler::Uniform(a, b) => Dim::Uniform(*a, *b),
        Sampler::LogUniform(a, b) => Dim::LogUniform(*a, *b),
        Sampler::IntUniform(a, b) => Dim::Int(*a, *b),
        Sampler::Choice(c) => Dim::Choice(c.len()),
    }
}

impl<'a> Proposer<'a> {
    /// The proposer of `plan`'s search, when it has one.
    pub fn new(plan: &'a Plan, root: &Path) -> Option<Self> {
        Some(Proposer {
            tpe: plan.search.as_ref()?,
            plan,
            root: root.to_path_buf(),
        })
    }

    /// Trials the search may still propose.
    pub fn remaining(&self, manifest: &Manifest) -> usize {
        self.tpe.trials.saturating_sub(manifest.trials.len())
    }

    fn state(manifest: &mut Manifest) -> &mut SearchState {
        manifest.search.get_or_insert_with(SearchState::default)
    }

    /// Records `index` as finished (once), durably.
    pub fn finished(&self, manifest: &mut Manifest, index: usize) -> Result<()> {
        let state = Self::state(manifest);
        if state.completed.contains(&index) {
            return Ok(());
        }
        state.completed.push(index);
        manifest.save(&self.root)
    }

    /// Records the trials that ended while no one was watching (a killed sweep), oldest end
    /// first: their order is their run records' end times.
    pub fn catch_up(&self, manifest: &mut Manifest) -> Result<()> {
        let known = manifest
            .search
            .as_ref()
            .map(|s| s.completed.clone())
            .unwrap_or_default();
        let mut ended: Vec<(String, usize)> = manifest
            .trials
            .iter()
            .filter(|e| !known.contains(&e.index))
            .filter_map(|e| {
                let r = RunDir::new(self.root.join(&e.dir)).record()?;
                r.status
                    .is_final()
                    .then(|| (r.ended.unwrap_or_default(), e.index))
            })
            .collect();
        ended.sort();
        for (_, i) in ended {
            Self::state(manifest).completed.push(i);
        }
        manifest.save(&self.root)
    }

    /// A trial's point in the sampler's terms, from its swept values.
    fn point(&self, e: &Entry) -> Option<Vec<f64>> {
        self.plan
            .space
            .random
            .iter()
            .map(|(k, s)| {
                let (_, v) = e.overrides.iter().find(|(n, _)| n == k)?;
                match s {
                    Sampler::Choice(c) => {
                        let v = Value::try_from(v).ok()?;
                        c.iter().position(|x| *x == v).map(|i| i as f64)
                    }
                    _ => v.as_f64(),
                }
            })
            .collect()
    }

    /// The history a proposal sees: the first `seen` completed trials, in completion order.
    pub fn history(&self, manifest: &Manifest, seen: usize) -> Vec<Observation> {
        let completed = manifest
            .search
            .as_ref()
            .map_or(&[][..], |s| &s.completed[..]);
        completed[..seen.min(completed.len())]
            .iter()
            .filter_map(|&i| {
                let e = manifest.trials.get(i)?;
                let record = RunDir::new(self.root.join(&e.dir)).record();
                Some(Observation {
                    x: self.point(e)?,
                    score: record.and_then(|r| score(&r, self.tpe.metric)),
                })
            })
            .collect()
    }

    /// The sweep-file values of a sampler point.
    fn overrides(&self, x: &[f64]) -> Vec<(String, Value)> {
        self.plan
            .space
            .random
            .iter()
            .zip(x)
            .map(|((k, s), &v)| {
                let value = match s {
                    Sampler::Choice(c) => c[(v as usize).min(c.len() - 1)].clone(),
                    Sampler::IntUniform(..) => Value::Integer(v as i64),
                    _ => self.plan.number(k, v),
                };
                (k.clone(), value)
            })
            .collect()
    }

    /// The candidates for trial `index` given the history of `seen` completions.
    pub fn candidates(
        &self,
        manifest: &Manifest,
        index: usize,
        seen: usize,
    ) -> Vec<Vec<(String, Value)>> {
        let dims: Vec<Dim> = self.plan.space.random.iter().map(|(_, s)| dim(s)).collect();
        let settings = tpe::Settings {
            startup: self.tpe.startup,
            candidates: self.tpe.candidates,
            seed: self.plan.experiment.seed,
        };
        let history = self.history(manifest, seen);
        tpe::propose(&dims, &history, &settings, index as u64)
            .iter()
            .map(|x| self.overrides(x))
            .collect()
    }

    /// Proposes the next trial from everything finished so far, writes its config and the
    /// manifest, and returns its index; `None` when the budget is spent or every candidate (and
    /// a few random draws) is a trial already.
    pub fn propose(&self, manifest: &mut Manifest) -> Result<Option<usize>> {
        if self.remaining(manifest) == 0 {
            return Ok(None);
        }
        let index = manifest.trials.len();
        let seen = manifest.search.as_ref().map_or(0, |s| s.completed.len());
        for overrides in self.candidates(manifest, index, seen) {
            let trial = self.plan.trial(overrides)?;
            if manifest.trials.iter().any(|e| e.hash == trial.hash) {
                continue;
            }
            manifest.trials.push(Entry::of(index, &trial));
            Self::state(manifest).seen.push(seen);
            RunDir::new(self.root.join(&manifest.trials[index].dir)).save_config(&trial.config)?;
            manifest.save(&self.root)?;
            return Ok(Some(index));
        }
        Ok(None)
    }
}

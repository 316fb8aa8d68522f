//! A population on disk: each member's boundary snapshots, the decision made before its next
//! piece (written to the manifest before it is acted on) and the copy that acts on it, and the
//! tidying of snapshots no one will rank against again.

use super::lineage::{describe, replay};
use super::policy::decide;
use crate::checkpoint;
use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::run_dir::{Checkpoint, RunDir, RunStatus};
use crate::sweep::manifest::{Decision, Manifest};
use crate::sweep::plan::{self, PbtSearch, Plan, Sampler};
use candle_core::Device;
use std::path::{Path, PathBuf};
use toml::Value;

/// Member `m`'s config as its decisions left it (`None` when it never copied): what its
/// `config.toml` is rebuilt from when that file is damaged or lost.
pub fn current_config(manifest: &Manifest, m: usize) -> Option<RunConfig> {
    manifest
        .pbt
        .as_ref()?
        .decisions
        .iter()
        .rfind(|d| d.member == m && d.config.is_some())?
        .config
        .clone()
}

/// A member's boundary snapshot.
fn snapshot_path(run: &RunDir, step: u64) -> PathBuf {
    run.checkpoints().join(format!("pbt-{step}.safetensors"))
}

/// Keeps a member's `last` checkpoint, which is at `step`, as its snapshot there (once).
fn snapshot(run: &RunDir, step: u64) -> Result<()> {
    let snap = snapshot_path(run, step);
    if !snap.exists() {
        let last = run.checkpoint(Checkpoint::Last);
        let bytes = std::fs::read(&last).map_err(|e| Error::io(&last, e))?;
        crate::atomic::write(&snap, &bytes)?;
    }
    Ok(())
}

fn to_json(v: &Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// The population of a PBT sweep, as the launcher drives it.
pub struct Population<'a> {
    plan: &'a Plan,
    pbt: &'a PbtSearch,
    root: PathBuf,
}

impl<'a> Population<'a> {
    /// The population of `plan`, when it is a PBT sweep.
    pub fn new(plan: &'a Plan, root: &Path) -> Option<Self> {
        Some(Population {
            pbt: plan.pbt.as_ref()?,
            plan,
            root: root.to_path_buf(),
        })
    }

    fn run(&self, manifest: &Manifest, member: usize) -> RunDir {
        RunDir::new(self.root.join(&manifest.trials[member].dir))
    }

    /// The steps the whole population trains (0 where a member's length is set in epochs).
    pub fn total_steps(&self) -> u64 {
        self.plan
            .trials
            .iter()
            .map(|t| t.config.max_steps.unwrap_or(0))
            .sum()
    }

    /// On (re)start: the decisions must be this sweep file's, and what was decided but not
    /// yet done is done now.
    pub fn catch_up(&self, manifest: &mut Manifest) -> Result<()> {
        let key = self.plan.pbt_key();
        let Some(state) = &manifest.pbt else {
            return Ok(());
        };
        if state.key != key {
            return Err(Error::usage(
                &self.root,
                "the sweep file's population-based search changed since its decisions were \
                 made (defaults, [random], [search] or seed): run it under another experiment \
                 name",
            ));
        }
        let undone: Vec<usize> = (0..state.decisions.len())
            .filter(|&i| !state.decisions[i].applied)
            .collect();
        for i in undone {
            self.apply(manifest, i)?;
        }
        manifest.save(&self.root)
    }

    /// The step member `member` stands on: where its next piece starts.
    pub fn stands_at(&self, manifest: &Manifest, member: usize) -> Result<u64> {
        self.step_of(&self.run(manifest, member))
    }

    /// A member's step: its last checkpoint's (0 without one).
    fn step_of(&self, run: &RunDir) -> Result<u64> {
        let path = run.checkpoint(Checkpoint::Last);
        if !path.exists() {
            return Ok(0);
        }
        Ok(checkpoint::cursor(&path)?.step)
    }

    /// A member's worker paused it at a boundary: its checkpoint there is kept for the others.
    /// Returns the boundary's step.
    pub fn paused(&self, manifest: &Manifest, member: usize) -> Result<u64> {
        let run = self.run(manifest, member);
        let step = self.step_of(&run)?;
        snapshot(&run, step)?;
        Ok(step)
    }

    /// Before a member's next piece: its decision at the boundary it stands on, when that is
    /// due and not made yet, recorded and applied. Returns a line for the console.
    pub fn before_piece(&self, manifest: &mut Manifest, member: usize) -> Result<Option<String>> {
        let run = self.run(manifest, member);
        let step = self.step_of(&run)?;
        let total = manifest_total(&run)?;
        let due = crate::train::is_boundary(step, interval(manifest), total);
        let decided = self
            .decisions(manifest)
            .any(|d| d.member == member && d.step == step);
        if !due || decided {
            return Ok(None);
        }
        snapshot(&run, step)?;
        let ranking = self.ranking(manifest, step);
        let values = |m: usize| self.values(manifest, m);
        let (donor, new) = decide(
            self.pbt,
            self.plan.experiment.seed,
            (member, step),
            &ranking,
            &self.domains(),
            values,
        );
        let old = self.values(manifest, member);
        let config = match donor {
            Some((from, _)) => {
                let mut cfg = self.run(manifest, from).load_config()?;
                for (k, v) in &new {
                    if let Some(x) = plan::space::as_f64(v) {
                        cfg.set_explorable(k, x);
                    }
                }
                Some(cfg)
            }
            None => None,
        };
        let d = Decision {
            member,
            step,
            ranking,
            donor,
            old: old.iter().map(|(k, v)| (k.clone(), to_json(v))).collect(),
            new: new.iter().map(|(k, v)| (k.clone(), to_json(v))).collect(),
            config,
            applied: false,
        };
        let line = describe(manifest, &d);
        let Some(state) = manifest.pbt.as_mut() else {
            return Ok(None);
        };
        let i = state.decisions.len();
        state.decisions.push(d);
        // Written before it is acted on: a rerun applies it, never decides it again.
        manifest.save(&self.root)?;
        self.apply(manifest, i)?;
        manifest.save(&self.root)?;
        self.tidy(manifest);
        Ok(line)
    }

    /// Decisions made so far.
    fn decisions<'m>(&self, manifest: &'m Manifest) -> impl Iterator<Item = &'m Decision> {
        manifest.pbt.iter().flat_map(|p| p.decisions.iter())
    }

    /// The members that have reached `step` (their snapshot there exists), with their val loss
    /// there, best first.
    fn ranking(&self, manifest: &Manifest, step: u64) -> Vec<(usize, f64)> {
        let mut out: Vec<(usize, f64)> = (0..manifest.trials.len())
            .filter_map(|m| {
                let run = self.run(manifest, m);
                if !snapshot_path(&run, step).exists() {
                    return None;
                }
                let rec = run.record()?;
                let e = rec.evals.iter().find(|e| e.step == step)?;
                e.val_loss.is_finite().then_some((m, e.val_loss))
            })
            .collect();
        out.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        out
    }

    fn domains(&self) -> Vec<(String, Sampler)> {
        self.plan
            .space
            .random
            .iter()
            .filter(|(k, _)| self.pbt.explored.contains(k))
            .cloned()
            .collect()
    }

    /// Member m's explored values, from its config now.
    fn values(&self, manifest: &Manifest, m: usize) -> Vec<(String, Value)> {
        let cfg = self.run(manifest, m).load_config().ok();
        self.pbt
            .explored
            .iter()
            .filter_map(|k| {
                let v = cfg.as_ref()?.explorable(k)?;
                Some((k.clone(), Value::Float(v)))
            })
            .collect()
    }

    /// Does decision `i`: a copy of the donor's snapshot and config with the new values.
    /// Idempotent: the snapshot and the decision say everything it writes.
    fn apply(&self, manifest: &mut Manifest, i: usize) -> Result<()> {
        let Some(d) = manifest.pbt.as_ref().map(|p| p.decisions[i].clone()) else {
            return Ok(());
        };
        if let Some((donor, _)) = d.donor {
            let me = self.run(manifest, d.member);
            let from = self.run(manifest, donor);
            let (tensors, cursor) = checkpoint::load(&snapshot_path(&from, d.step), &Device::Cpu)?;
            // The member's own count and best so far go on; the rest is the donor's.
            let mine = checkpoint::cursor(&snapshot_path(&me, d.step))?;
            let cursor = checkpoint::Cursor {
                tokens: mine.tokens,
                elapsed_secs: mine.elapsed_secs,
                best_val_loss: mine.best_val_loss,
                best_step: mine.best_step,
                ..cursor
            };
            if let Some(cfg) = &d.config {
                me.save_config(cfg)?;
            }
            // No fallback to the member's own weights: the copy is its checkpoint now.
            let _ = std::fs::remove_file(me.checkpoint(Checkpoint::Previous));
            checkpoint::save(&me.checkpoint(Checkpoint::Last), &tensors, &cursor)?;
        }
        if let Some(p) = manifest.pbt.as_mut() {
            p.decisions[i].applied = true;
        }
        Ok(())
    }

    /// Removes the boundary snapshots no member will rank against or copy again: those at
    /// steps every unfinished member has passed.
    fn tidy(&self, manifest: &Manifest) {
        let lowest = (0..manifest.trials.len())
            .filter_map(|m| {
                let run = self.run(manifest, m);
                if run.status().is_some_and(RunStatus::is_final) {
                    return None;
                }
                let decided = self
                    .decisions(manifest)
                    .filter(|d| d.member == m)
                    .map(|d| d.step)
                    .max()
                    .unwrap_or(0);
                Some(decided)
            })
            .min();
        for m in 0..manifest.trials.len() {
            let dir = self.run(manifest, m).checkpoints();
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let step = name
                    .strip_prefix("pbt-")
                    .and_then(|r| r.strip_suffix(".safetensors"))
                    .and_then(|n| n.parse::<u64>().ok());
                if step.is_some_and(|s| lowest.is_none_or(|l| s < l)) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// When every member has finished: writes the best member's schedule as a plain run config
    /// (`pbt-replay.toml`) and removes the snapshots. Returns the path written.
    pub fn finish(&self, manifest: &Manifest) -> Result<Option<PathBuf>> {
        let all_final = (0..manifest.trials.len()).all(|m| {
            self.run(manifest, m)
                .status()
                .is_some_and(RunStatus::is_final)
        });
        if !all_final {
            return Ok(None);
        }
        self.tidy(manifest);
        let Some((text, _)) = replay(&self.root, manifest)? else {
            return Ok(None);
        };
        let path = self.root.join("pbt-replay.toml");
        crate::atomic::write(&path, text.as_bytes())?;
        Ok(Some(path))
    }
}

/// Steps between a member's decisions, as the manifest holds it: the value its workers pause
/// at, so the decision and the pause cannot read two copies.
fn interval(manifest: &Manifest) -> u64 {
    manifest.pbt.as_ref().map_or(u64::MAX, |p| p.interval)
}

/// A run's total steps, from its config (PBT members run `max_steps`).
fn manifest_total(run: &RunDir) -> Result<u64> {
    Ok(run.load_config()?.max_steps.unwrap_or(u64::MAX))
}

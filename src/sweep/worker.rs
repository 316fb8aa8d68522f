//! `charlab sweep-worker --sweep DIR --index N`: runs (or resumes) exactly one trial of a
//! sweep, the contract every launcher relies on (the local one's child processes, a Slurm job
//! array's tasks). A trial already final is left as it is, so a rerun is always safe.

use super::manifest::Manifest;
use super::{pbt, pruning, slurm};
use crate::error::Result;
use crate::run_dir::RunDir;
use crate::train::{self, Progress, RunStatus, TrainOptions};
use std::path::Path;

/// `charlab sweep-worker`: runs (or resumes) exactly trial `index` of the sweep in `sweep_dir`.
pub fn worker(
    sweep_dir: &Path,
    index: usize,
    threads: Option<usize>,
    device: Option<String>,
    data_dir: &Path,
    progress: Progress,
) -> Result<RunStatus> {
    let manifest = Manifest::load(sweep_dir)?;
    let entry = manifest.entry(index)?;
    let run = RunDir::new(sweep_dir.join(&entry.dir));
    if let Some(status) = run.status().filter(|s| s.is_final()) {
        return Ok(status);
    }
    if let Some(rec) = run
        .record()
        .filter(|r| awaits_decision(&manifest, index, r))
    {
        // A member at a boundary trains on only after the sweep has decided on it there: a
        // stray second submission (a watcher killed between sbatch and its jobs file) waits.
        return Ok(rec.status);
    }
    let mut cfg = run.load_config()?;
    // Inside a Slurm allocation, the cores it granted.
    let threads = threads.or_else(|| {
        std::env::var("SLURM_CPUS_PER_TASK")
            .ok()
            .and_then(|s| s.parse().ok())
    });
    if threads.is_some() {
        cfg.threads = threads;
    }
    if let Some(d) = device {
        cfg.device = d;
    }
    let prune = manifest
        .pruning
        .clone()
        .map(|rule| pruning::hook(sweep_dir, &manifest, index, cfg.eval_every, rule));
    let pbt = manifest.pbt.as_ref();
    let opts = TrainOptions {
        resume: true,
        progress,
        data_dir: data_dir.to_path_buf(),
        write_experiment: false,
        group: Some(entry.group_name()),
        prune,
        pause_every: pbt.map(|p| p.interval),
        trace: pbt.map(|p| p.explored.clone()).unwrap_or_default(),
        // What the member's last decision changed, written when it trains on from there.
        note: pbt.and_then(|p| {
            let d = p.decisions.iter().rfind(|d| d.member == index)?;
            Some((d.step, pbt::describe(&manifest, d)?))
        }),
        // A rerun's worker waits for the one a killed sweep orphaned to checkpoint and stop.
        lock_wait: std::time::Duration::from_secs(60),
        lineage: pbt.map(|_| pbt::lineage_text(&manifest, index)),
        limits: manifest.limits,
        ..TrainOptions::default()
    };
    match train::train(&cfg, run.path(), &opts) {
        Ok(r) => {
            // SIGUSR1 is Slurm's "time limit near": the checkpoint is written, so hand the task
            // back to the queue to resume.
            if r.status == RunStatus::Interrupted
                && crate::signals::requested() == Some(signal_hook::consts::SIGUSR1)
            {
                slurm::requeue_self()?;
            }
            Ok(r.status)
        }
        Err(e) => {
            let _ = run.mark_failed(&e.to_string());
            Err(e)
        }
    }
}

/// True for a population member paused at a boundary with no decision there yet.
fn awaits_decision(manifest: &Manifest, index: usize, rec: &crate::run_dir::RunRecord) -> bool {
    let Some(state) = &manifest.pbt else {
        return false;
    };
    rec.status == RunStatus::Paused
        && !state
            .decisions
            .iter()
            .any(|d| d.member == index && d.step == rec.steps && d.applied)
}

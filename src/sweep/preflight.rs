//! What a sweep checks and says before any trial starts, in the parent: the devices it names
//! open, every corpus is prepared (once) and long enough for its trials' batches, no trial
//! needs more memory than the machine has, and which finished trials lost their records. A
//! sweep refused here leaves nothing behind; one that passes does not fail the same way N
//! times inside its workers.

use super::manifest::Manifest;
use super::plan::Plan;
use crate::config::RunConfig;
use crate::device::{self, DeviceSpec};
use crate::error::Result;
use crate::model::Dims;
use crate::run_dir::RunDir;
use crate::train::{log_line, Progress};
use std::path::Path;

/// Says, once per trial, which run records are damaged or gone while the run has checkpoints:
/// such a trial is not finished as far as the sweep can tell, so its worker resumes it and
/// rebuilds the record from the run's event files (nothing it had recorded is lost).
pub(super) fn name_lost_records(root: &Path, manifest: &Manifest, progress: Progress) {
    for e in &manifest.trials {
        let run = RunDir::new(root.join(&e.dir));
        let lost = match run.read_record() {
            Err(err) => err.to_string(),
            Ok(None) if run.checkpoints().is_dir() => {
                format!("{}: missing", run.record_path().display())
            }
            Ok(_) => continue,
        };
        log_line(
            progress,
            &format!(
                "trial {}: {lost}; resuming it rebuilds the record from its event files and \
                 checkpoint",
                e.dir
            ),
        );
    }
}

/// Checks, in the parent and before any trial starts, what would otherwise fail inside a
/// worker: every corpus is prepared (once each; the workers then read the cache) and long
/// enough for its trial's batches, and no trial needs more memory than the machine has.
/// Returns each trial's relative cost, by manifest index.
pub(super) fn check_trials(
    plan: &Plan,
    manifest: &Manifest,
    data_dir: &Path,
    progress: Progress,
) -> Result<Vec<f64>> {
    let mut prepared: Vec<((String, String), crate::corpus::Prepared)> = Vec::new();
    let mut costs = vec![0.0; manifest.trials.len()];
    let mut say = |m: &str| log_line(progress, m);
    check_devices(plan, &mut say)?;
    // A search's trials are proposed later: its corpus is checked now, with the defaults.
    let search_defaults = match plan.search {
        Some(_) => Some(plan.trial(Vec::new())?.config),
        None => None,
    };
    let listed = manifest
        .trials
        .iter()
        .filter_map(|e| Some((e, &plan.trials.iter().find(|t| t.hash == e.hash)?.config)));
    let checks = search_defaults.iter().map(|c| (None, c));
    for (e, c) in checks.chain(listed.map(|(e, c)| (Some(e), c))) {
        let key = (
            c.corpus.clone(),
            serde_json::to_string(&c.clean).unwrap_or_default(),
        );
        let at = match prepared.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                let p = crate::corpus::prepare(&c.corpus, &c.clean, data_dir, &mut say)?;
                prepared.push((key, p));
                prepared.len() - 1
            }
        };
        let p = &prepared[at].1;
        let (train, val) = crate::batch::split(&p.ids, c.val_fraction, c.batch_size, c.seq_len)?;
        let dims = Dims::of(c, p.vocab.len());
        let on_gpu = matches!(device::parse(&c.device), Ok(DeviceSpec::Cuda(_)));
        let Some(e) = e else { continue };
        let params = crate::model::memory::params(dims);
        if let Some(max) = (plan.experiment.constraints.max_params).filter(|&m| params > m) {
            // Its worker ends it `infeasible` before its first step; it needs no memory.
            say(&format!(
                "trial {}: {params} parameters, over max_params = {max}: infeasible, not trained",
                e.dir
            ));
            continue;
        }
        if plan.experiment.devices.is_empty() && !on_gpu {
            crate::model::memory::check(dims, c, val.streams())
                .map_err(|err| crate::Error::Resources(format!("trial {}: {err}", e.dir)))?;
        }
        costs[e.index] = trial_cost(c, dims, train.windows());
    }
    Ok(costs)
}

/// Opens, once each, every CUDA device the sweep names (`[experiment] devices`, a trial's
/// `device`): a missing GPU or a build without CUDA is one error before any trial starts, not
/// one failure per trial.
fn check_devices(plan: &Plan, say: &mut dyn FnMut(&str)) -> Result<()> {
    // A search's trials are proposed later; their device is the defaults'.
    let defaults = match plan.search {
        Some(_) => Some(plan.trial(Vec::new())?),
        None => None,
    };
    let mut names: Vec<&str> = plan.experiment.devices.iter().map(String::as_str).collect();
    names.extend(
        plan.trials
            .iter()
            .chain(&defaults)
            .map(|t| t.config.device.as_str()),
    );
    names.sort_unstable();
    names.dedup();
    for name in names {
        if matches!(device::parse(name)?, DeviceSpec::Cuda(_)) {
            device::open(name, say)?;
        }
    }
    Ok(())
}

/// A trial's relative cost: steps × chars per step × multiply-adds per char. The local launcher
/// starts the costliest first, so that a long trial does not start last and run alone.
fn trial_cost(c: &RunConfig, d: Dims, windows: usize) -> f64 {
    let steps = c.total_steps(windows as u64).unwrap_or(0) as f64;
    steps * (c.batch_size * c.seq_len) as f64 * d.macs_per_char()
}

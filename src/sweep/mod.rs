//! Sweeps: a TOML grid becomes `runs/<experiment>/`, one run directory per trial, trained by
//! `charlab sweep-worker` child processes so a crash, OOM or NaN stays in its trial. The parent
//! never trains in-process; it plans, writes the manifest, launches, watches and retries. The
//! same worker contract (`--sweep DIR --index N`) serves a cluster scheduler's job arrays.

mod dry_run;
pub mod engine;
pub mod fidelity;
pub mod local;
pub mod manifest;
pub mod pbt;
pub mod plan;
mod preflight;
pub mod pruning;
pub mod search;
pub mod simulate;
pub mod slurm;
mod stop_rule;
pub mod strategy;
pub mod tpe;
mod worker;

pub use dry_run::dry_run_table;
pub use worker::worker;

use crate::error::{IoContext, Result};
use crate::run_dir::{Metric, RunDir};
use crate::summary::EventWriter;
use crate::train::{self, Progress};
use manifest::{Manifest, TrialState};
use plan::{Plan, SlurmSettings};
use std::path::{Path, PathBuf};

/// Options of `charlab sweep`.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Where experiments go (`runs`).
    pub runs_root: PathBuf,
    pub max_trials: usize,
    pub force: bool,
    pub extend: bool,
    /// Overrides `[experiment] retries`.
    pub retries: Option<u32>,
    pub fail_fast: bool,
    /// Overrides `[experiment] jobs`.
    pub jobs: Option<usize>,
    pub progress: Progress,
    /// Also print what the log leaves out by default (each PBT member's pauses).
    pub verbose: bool,
    /// A population advances boundary by boundary ([`local::LocalOptions::deterministic`]).
    pub deterministic: bool,
    pub data_dir: PathBuf,
    /// The binary run as `sweep-worker` (default: this executable).
    pub worker_exe: Option<PathBuf>,
    /// Where the trials run.
    pub launcher: Launcher,
}

/// Where a sweep's trials run.
#[derive(Debug, Clone, Default)]
pub enum Launcher {
    /// Child processes on this machine.
    #[default]
    Local,
    /// A Slurm job array. `flags` are the command line's settings, laid over the sweep file's
    /// `[slurm]`; `detach` returns after submitting.
    Slurm {
        flags: SlurmSettings,
        detach: bool,
        poll: Option<std::time::Duration>,
    },
}

impl Default for SweepOptions {
    fn default() -> Self {
        SweepOptions {
            runs_root: PathBuf::from("runs"),
            max_trials: 1000,
            force: false,
            extend: false,
            retries: None,
            fail_fast: false,
            jobs: None,
            progress: Progress::Auto,
            verbose: false,
            deterministic: false,
            data_dir: crate::corpus::data_dir(),
            worker_exe: None,
            launcher: Launcher::Local,
        }
    }
}

/// How a sweep invocation ended.
#[derive(Debug, Clone)]
pub struct SweepOutcome {
    pub root: PathBuf,
    pub manifest: Manifest,
    /// Each trial's state at the end.
    pub states: Vec<TrialState>,
    /// Set when a signal stopped the sweep.
    pub signal: Option<i32>,
}

impl SweepOutcome {
    /// Trials that ended without a final status.
    pub fn unfinished(&self) -> usize {
        self.states
            .iter()
            .filter(|s| !matches!(s, TrialState::Run(r) if r.is_final()))
            .count()
    }

    /// Why the sweep's `stop` rule stopped it, when it did.
    pub fn stopped(&self) -> Option<&str> {
        self.manifest.stopped.as_deref()
    }

    /// Trials that failed.
    pub fn failed(&self) -> usize {
        (self.states.iter())
            .filter(|s| matches!(s, TrialState::Run(crate::run_dir::RunStatus::Failed)))
            .count()
    }
}

/// Writes everything a sweep directory needs before any trial runs: the sweep file copy, the
/// manifest, each trial's `config.toml`, and the root event file with the HParams experiment
/// (every swept key with its domain, and the metrics) and the custom-scalars layout.
fn lay_out(root: &Path, plan: &Plan, manifest: &Manifest, say: &mut dyn FnMut(&str)) -> Result<()> {
    crate::atomic::write(&manifest::sweep_file(root), plan.text.as_bytes())?;
    for entry in &manifest.trials {
        let Some(t) = plan.trials.iter().find(|t| t.hash == entry.hash) else {
            continue;
        };
        let run = RunDir::new(root.join(&entry.dir));
        let path = run.config_path();
        if path.exists() {
            // The sweep file is the truth of a listed trial's config: a damaged copy is
            // rewritten from it (and kept aside), not left to fail the trial or blank compare.
            let Err(e) = run.load_config() else { continue };
            let keep = run.path().join("config.toml.damaged");
            std::fs::rename(&path, &keep).at(&keep)?;
            say(&format!(
                "{e}; rewrote it from the sweep file (the damaged copy is config.toml.damaged)"
            ));
        }
        // A population member that copied another runs the config its decisions left it.
        run.save_config(
            &pbt::current_config(manifest, entry.index).unwrap_or_else(|| t.config.clone()),
        )?;
    }
    manifest.save(root)?;

    // One root event file, rewritten so the declared domains follow an --extend.
    for e in std::fs::read_dir(root).at(root)?.flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with("events.out.tfevents.")
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let mut events = EventWriter::create(root)?;
    let sample = plan.trials.first().map(|t| &t.config);
    let mut infos = train::hparam_declarations(&plan.swept, sample);
    if plan.pbt.is_some() {
        // Each member's copies, as a column beside the values it ended with.
        infos.push(crate::summary::HParamDecl {
            name: train::LINEAGE.into(),
            domain: None,
            ty: train::hparam_type(&crate::summary::HValue::Str(String::new())),
            differs: true,
        });
    }
    events.hparams_experiment(&infos, train::METRICS)?;
    let exact: Vec<Vec<String>> = (crate::tags::CHARTS.iter())
        .map(|(_, tags)| tags.iter().map(|t| format!("^{t}$")).collect())
        .collect();
    let charts = (crate::tags::CHARTS.iter().zip(&exact))
        .map(|((title, _), re)| (*title, re.iter().map(String::as_str).collect()))
        .collect();
    events.custom_scalars(&[("charlab", charts)])?;
    events.sync()
}

/// The binary the workers run: `given`, or this executable.
fn worker_exe(given: &Option<PathBuf>) -> Result<PathBuf> {
    match given {
        Some(p) => Ok(p.clone()),
        None => std::env::current_exe().map_err(|e| crate::Error::io("current executable", e)),
    }
}

/// `charlab sweep`: plans, lays out and runs a sweep on this machine.
pub fn sweep(path: &Path, opts: &SweepOptions) -> Result<SweepOutcome> {
    // Before the lock exists: a Ctrl-C from then on stops the sweep cleanly.
    crate::signals::install();
    let plan = plan::load(path, opts.max_trials, opts.force)?;
    let root = opts.runs_root.join(&plan.experiment.name);
    let new_root = !root.exists();
    let lock = manifest::Lock::acquire(&root)?;
    crate::atomic::remove_stale_temps(&root);
    let mut say = |m: &str| crate::train::log_line(opts.progress, m);
    let preflight = manifest::reconcile(&root, &plan, opts.extend, &mut say).and_then(|m| {
        let costs = preflight::check_trials(&plan, &m, &opts.data_dir, opts.progress)?;
        Ok((m, costs))
    });
    let (manifest, costs) = match preflight {
        Ok(p) => p,
        Err(e) => {
            // A sweep refused before it started leaves nothing behind.
            drop(lock);
            if new_root {
                let _ = std::fs::remove_dir(&root);
            }
            return Err(e);
        }
    };
    let _lock = lock;
    lay_out(&root, &plan, &manifest, &mut say)?;
    preflight::name_lost_records(&root, &manifest, opts.progress);
    let (signal, manifest) = launch(&root, &plan, manifest, costs, opts)?;
    let states = manifest
        .trials
        .iter()
        .map(|e| manifest::state(&RunDir::new(root.join(&e.dir))))
        .collect();
    Ok(SweepOutcome {
        root,
        manifest,
        states,
        signal,
    })
}

/// Runs the sweep's trials with the launcher `opts` names. Returns the signal that stopped it,
/// if any, and the manifest as it ended.
fn launch(
    root: &Path,
    plan: &Plan,
    manifest: Manifest,
    costs: Vec<f64>,
    opts: &SweepOptions,
) -> Result<(Option<i32>, Manifest)> {
    let exp = &plan.experiment;
    let rules = engine::Rules {
        retries: opts.retries.unwrap_or(exp.retries),
        fail_fast: opts.fail_fast,
        deterministic: opts.deterministic,
        verbose: opts.verbose,
        stop: exp.stop.clone(),
        metric: plan.objectives.first().copied().unwrap_or(Metric::ValLoss),
    };
    let strategy = strategy::Strategy::of(plan, root);
    let engine = engine::Engine::new(root, manifest, strategy, rules, &costs)?;
    let jobs = opts.jobs.unwrap_or(exp.jobs).max(1);
    if let Launcher::Slurm {
        flags,
        detach,
        poll,
    } = &opts.launcher
    {
        let so = slurm::SlurmOptions {
            settings: flags.over(&plan.slurm),
            detach: *detach,
            progress: opts.progress,
            worker_exe: opts.worker_exe.clone(),
            data_dir: std::path::absolute(&opts.data_dir).at(&opts.data_dir)?,
            poll: *poll,
            concurrent: jobs,
        };
        slurm::run(root, engine, &so)
    } else {
        let local = local::LocalOptions {
            jobs,
            devices: exp.devices.clone(),
            trials_per_device: exp.trials_per_device.max(1),
            timeout: exp.timeout.map(std::time::Duration::from_secs_f64),
            progress: opts.progress,
            worker_exe: opts.worker_exe.clone(),
            data_dir: opts.data_dir.clone(),
        };
        local::run(root, engine, &local)
    }
}

/// `charlab sweep FILE --launcher slurm --status`: the per-trial table of a submitted sweep.
pub fn slurm_status(path: &Path, opts: &SweepOptions) -> Result<String> {
    let plan = plan::load(path, opts.max_trials, opts.force)?;
    let root = opts.runs_root.join(&plan.experiment.name);
    let manifest = Manifest::load(&root)?;
    slurm::status(&root, &manifest)
}

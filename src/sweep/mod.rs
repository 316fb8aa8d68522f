//! Sweeps: a TOML grid becomes `runs/<experiment>/`, one run directory per trial, trained by
//! `charlab sweep-worker` child processes so a crash, OOM or NaN stays in its trial. The parent
//! never trains in-process; it plans, writes the manifest, launches, watches and retries. The
//! same worker contract (`--sweep DIR --index N`) serves a cluster scheduler's job arrays.

pub mod local;
pub mod manifest;
pub mod plan;
pub mod search;
pub mod slurm;
pub mod tpe;

use crate::error::{IoContext, Result};
use crate::run_dir::RunDir;
use crate::summary::{EventWriter, HParamDecl};
use crate::train::{self, Progress, RunStatus, TrainOptions};
use manifest::{Manifest, TrialState};
use plan::{Plan, SlurmSettings};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tensorboard_proto::api::DataType as HpType;

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
}

/// What `--dry-run` says of a TPE search: its settings and the domains it searches.
fn dry_run_search(plan: &Plan, tpe: &plan::TpeSearch, root: &Path) -> String {
    let headers: Vec<String> = ["key", "domain"].map(String::from).to_vec();
    let lines: Vec<Vec<String>> = plan
        .space
        .random
        .iter()
        .map(|(k, s)| vec![k.clone(), s.to_string()])
        .collect();
    format!(
        "{}TPE search: {} trials ({} random first, {} candidates each), minimising best {} → {}/",
        crate::table::render(&headers, &lines, crate::table::Format::Table),
        tpe.trials,
        tpe.startup,
        tpe.candidates,
        tpe.metric.name(),
        root.display()
    )
}

/// The table `--dry-run` prints: one line per trial with its swept values (or, for a TPE
/// search, its settings and domains).
/// `runs_root` is where the experiment would go (`--runs`).
pub fn dry_run_table(plan: &Plan, runs_root: &Path) -> String {
    let root = runs_root.join(&plan.experiment.name);
    if let Some(tpe) = &plan.search {
        return dry_run_search(plan, tpe, &root);
    }
    let mut out = String::new();
    let keys: Vec<&str> = plan.swept.iter().map(|(k, _)| k.as_str()).collect();
    let rows: Vec<Vec<String>> = plan
        .trials
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut row = vec![i.to_string(), plan::dir_name(i, t)];
            row.extend(keys.iter().map(|k| {
                t.overrides
                    .iter()
                    .find(|(n, _)| n == k)
                    .map_or("-".into(), |(_, v)| v.to_string())
            }));
            row
        })
        .collect();
    let mut headers = vec!["trial".to_string(), "run dir".to_string()];
    headers.extend(keys.iter().map(|k| k.to_string()));
    out.push_str(&crate::table::render(
        &headers,
        &rows,
        crate::table::Format::Table,
    ));
    out.push_str(&format!(
        "{} trials ({} duplicate points collapsed) → {}/",
        plan.trials.len(),
        plan.duplicates,
        root.display()
    ));
    out
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
        run.save_config(&t.config)?;
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
    let mut infos: Vec<HParamDecl> = Vec::new();
    let sample = plan
        .trials
        .first()
        .map(|t| train::hparam_values(&t.config))
        .unwrap_or_default();
    // The swept keys first, marked as differing: TensorBoard's table opens on them.
    for (k, d) in &plan.swept {
        let v = sample.iter().find(|(n, _)| n == k).map(|(_, v)| v);
        // Nested keys (clean.*) are not HParams values; show them by name only.
        infos.push(HParamDecl {
            name: k.clone(),
            domain: Some(d.clone()),
            ty: v.map_or(HpType::DATA_TYPE_FLOAT64, train::hparam_type),
            differs: true,
        });
    }
    for (k, v) in &sample {
        if !infos.iter().any(|h| &h.name == k) {
            infos.push(HParamDecl {
                name: k.clone(),
                domain: None,
                ty: train::hparam_type(v),
                differs: false,
            });
        }
    }
    events.hparams_experiment(&infos, train::METRICS)?;
    events.custom_scalars(&[(
        "charlab",
        vec![
            ("loss (train vs val)", vec!["^train/loss$", "^val/loss$"]),
            (
                "bits per char (train vs val)",
                vec!["^train/bpc$", "^val/bpc$"],
            ),
        ],
    )])?;
    events.sync()
}

/// Says, once per trial, which run records are damaged or gone while the run has checkpoints:
/// such a trial is not finished as far as the sweep can tell, so its worker resumes it and
/// rebuilds the record from the run's event files (nothing it had recorded is lost).
fn name_lost_records(root: &Path, manifest: &Manifest, progress: Progress) {
    for e in &manifest.trials {
        let run = RunDir::new(root.join(&e.dir));
        let lost = match run.read_record() {
            Err(err) => err.to_string(),
            Ok(None) if run.checkpoints().is_dir() => {
                format!("{}: missing", run.record_path().display())
            }
            Ok(_) => continue,
        };
        crate::train::log_line(
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
fn check_trials(
    plan: &Plan,
    manifest: &Manifest,
    data_dir: &Path,
    progress: Progress,
) -> Result<Vec<f64>> {
    let mut prepared: Vec<((String, String), crate::corpus::Prepared)> = Vec::new();
    let mut costs = vec![0.0; manifest.trials.len()];
    let mut say = |m: &str| crate::train::log_line(progress, m);
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
        let dims = crate::model::Dims::of(c, p.vocab.len());
        let on_gpu = matches!(
            crate::device::parse(&c.device),
            Ok(crate::device::DeviceSpec::Cuda(_))
        );
        let Some(e) = e else { continue };
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
        if matches!(
            crate::device::parse(name)?,
            crate::device::DeviceSpec::Cuda(_)
        ) {
            crate::device::open(name, say)?;
        }
    }
    Ok(())
}

/// A trial's relative cost: steps × chars per step × multiply-adds per char. The local launcher
/// starts the costliest first, so that a long trial does not start last and run alone.
fn trial_cost(c: &crate::config::RunConfig, d: crate::model::Dims, windows: usize) -> f64 {
    let (e, h, v) = (d.embed_dim as f64, d.hidden as f64, d.vocab as f64);
    let per_char = 4.0 * h * (e + h) + (d.layers as f64 - 1.0) * 8.0 * h * h + h * v;
    let steps = c.total_steps(windows as u64).unwrap_or(0) as f64;
    steps * (c.batch_size * c.seq_len) as f64 * per_char
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
        let costs = check_trials(&plan, &m, &opts.data_dir, opts.progress)?;
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
    name_lost_records(&root, &manifest, opts.progress);
    let exp = &plan.experiment;
    let retries = opts.retries.unwrap_or(exp.retries);
    let proposer = search::Proposer::new(&plan, &root);
    let (signal, manifest) = if let Launcher::Slurm {
        flags,
        detach,
        poll,
    } = &opts.launcher
    {
        let so = slurm::SlurmOptions {
            settings: flags.over(&plan.slurm),
            retries,
            fail_fast: opts.fail_fast,
            detach: *detach,
            progress: opts.progress,
            worker_exe: opts.worker_exe.clone(),
            data_dir: std::path::absolute(&opts.data_dir).at(&opts.data_dir)?,
            poll: *poll,
            concurrent: opts.jobs.unwrap_or(exp.jobs).max(1),
        };
        slurm::run(&root, manifest, &so, proposer)?
    } else {
        let local = local::LocalOptions {
            jobs: opts.jobs.unwrap_or(exp.jobs).max(1),
            devices: exp.devices.clone(),
            trials_per_device: exp.trials_per_device.max(1),
            retries,
            fail_fast: opts.fail_fast,
            timeout: exp.timeout.map(std::time::Duration::from_secs_f64),
            progress: opts.progress,
            worker_exe: opts.worker_exe.clone(),
            data_dir: opts.data_dir.clone(),
            costs,
        };
        local::run(&root, manifest, &local, proposer)?
    };
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

/// `charlab sweep FILE --launcher slurm --status`: the per-trial table of a submitted sweep.
pub fn slurm_status(path: &Path, opts: &SweepOptions) -> Result<String> {
    let plan = plan::load(path, opts.max_trials, opts.force)?;
    let root = opts.runs_root.join(&plan.experiment.name);
    let manifest = Manifest::load(&root)?;
    slurm::status(&root, &manifest)
}

/// The pruning rule as the trainer's hook: at an evaluation, compare this trial's val loss with
/// the siblings' at the same step (read from their run.json), once `min_trials` of them have
/// reached it. `median`: prune when worse than their median. `halving`: at rung evaluations
/// (warm-up × eta^k) prune unless among the best 1/eta of all trials at that step.
fn pruner(
    root: PathBuf,
    manifest: &Manifest,
    me: usize,
    eval_every: u64,
    rule: plan::Pruning,
) -> Arc<dyn Fn(u64, f64) -> bool + Send + Sync> {
    let siblings: Vec<RunDir> = manifest
        .trials
        .iter()
        .filter(|e| e.index != me)
        .map(|e| RunDir::new(root.join(&e.dir)))
        .collect();
    Arc::new(move |step, loss| {
        let eval = step / eval_every.max(1);
        let warmup = rule.warmup_evals.max(1) as u64;
        if eval < warmup || (rule.rule == plan::PruneRule::Median && eval == warmup) {
            return false;
        }
        let mut others: Vec<f64> = siblings
            .iter()
            .filter_map(RunDir::record)
            .filter_map(|r| r.evals.iter().find(|e| e.step == step).map(|e| e.val_loss))
            .collect();
        if others.len() < rule.min_trials {
            return false;
        }
        others.sort_by(f64::total_cmp);
        if rule.rule == plan::PruneRule::Halving {
            // Rungs at warm-up × eta^k evaluations.
            let mut rung = warmup;
            while rung < eval {
                rung *= rule.eta as u64;
            }
            if rung != eval {
                return false;
            }
            let keep = (others.len() + 1).div_ceil(rule.eta);
            let better = others.iter().filter(|&&o| o < loss).count();
            return better >= keep;
        }
        let n = others.len();
        let median = if n % 2 == 1 {
            others[n / 2]
        } else {
            (others[n / 2 - 1] + others[n / 2]) / 2.0
        };
        loss > median
    })
}

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
    let prune = manifest.pruning.clone().map(|rule| {
        pruner(
            sweep_dir.to_path_buf(),
            &manifest,
            index,
            cfg.eval_every,
            rule,
        )
    });
    let opts = TrainOptions {
        resume: true,
        progress,
        data_dir: data_dir.to_path_buf(),
        write_experiment: false,
        group: Some(entry.group_name()),
        prune,
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

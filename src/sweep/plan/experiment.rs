//! The `[experiment]` table (name, jobs, devices, seed, timeout, retries, pruning) and the
//! `[slurm]` table of a sweep file.

use super::check::{type_name, Reader, SweepFile};
use crate::error::{Error, Result};
use crate::train::Limits;
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

/// How a sweep prunes trials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PruneRule {
    /// Stop a trial whose val/loss at an evaluation is worse than the median of its siblings'
    /// at the same step.
    Median,
    /// Asynchronous successive halving: at rung evaluations (warm-up × eta^k), keep only the
    /// best 1/eta of the trials that reached it.
    Halving,
    /// Hyperband (Li et al. 2018, as Optuna's `HyperbandPruner`): the trials are dealt into
    /// brackets, each an asynchronous successive halving of its own that starts pruning one
    /// rung later than the one before; the last bracket never prunes. One bracket's rule alone
    /// cannot tell a slow starter (a larger model behind at step 100, ahead at the end) from a
    /// poor trial; the later brackets let some finish.
    Hyperband,
}

/// The sweep-level pruning rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pruning {
    pub rule: PruneRule,
    /// Reduction factor of `halving` and `hyperband`.
    pub eta: usize,
    /// Evaluations a trial always gets before it can be pruned.
    pub warmup_evals: usize,
    /// Siblings that must have reached the step before the rule applies (the early cut needs
    /// one: [`crate::sweep::pruning::hopeless`]).
    pub min_trials: usize,
    /// The early cut ([`crate::sweep::pruning::hopeless`]): at a tenth of its steps a trial
    /// whose training loss has come down by less than this share of the best sibling's (from
    /// ln V) is pruned; 0 turns it off. Absent from a manifest written before it: off.
    #[serde(default)]
    pub min_progress: f64,
}

impl Pruning {
    /// One line for `--dry-run`: the rule with every setting it runs under, defaults included,
    /// so a user sees what a file that names only the rule will do.
    pub fn describe(&self) -> String {
        let siblings = match self.min_trials {
            1 => "once 1 sibling has reached the step".to_string(),
            n => format!("once {n} siblings have reached the step"),
        };
        let first = self.warmup_evals.max(1);
        let rule = match self.rule {
            PruneRule::Median => format!("median, after evaluation {first}, {siblings}"),
            PruneRule::Halving => format!(
                "halving, eta {}, first rung at evaluation {first}, {siblings}",
                self.eta
            ),
            PruneRule::Hyperband => format!(
                "hyperband, eta {}, first rung at evaluation {first}, {siblings}",
                self.eta
            ),
        };
        let early = if self.min_progress > 0.0 {
            format!(
                "early cut at a tenth of the steps below {:.0} % of the best sibling's progress",
                100.0 * self.min_progress
            )
        } else {
            "no early cut".to_string()
        };
        format!("pruning: {rule}; {early}")
    }
}

/// `min_progress` when not given. Measured on 41 races' trials (BENCHMARKS.md, "The early
/// cut"): it stops a quarter of the worker time's worth of hopeless trials and never the
/// sweep's best.
pub const DEFAULT_MIN_PROGRESS: f64 = 0.8;

/// `min_trials` when not given. The median of one or two siblings is their noise, so `median`
/// waits for three. A halving rung keeps the best 1/eta of those at the step, and with fewer
/// than eta there only the best so far: Optuna's `HyperbandPruner` decides so from the second
/// trial at a rung on (its `bootstrap_count = 0`). Waiting for three there let a sweep's first
/// trials of a bracket, the startup's poor draws among them, all run to their end: replayed on
/// the kept race sweeps, deciding from one sibling saves 6.6 % of 红楼梦's trained time and
/// 2 % of Shakespeare's (BENCHMARKS.md, "Deciding from one sibling").
pub fn default_min_trials(rule: PruneRule) -> usize {
    match rule {
        PruneRule::Median => 3,
        PruneRule::Halving | PruneRule::Hyperband => 1,
    }
}

/// The `[experiment]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    pub name: String,
    /// Trials at once on the CPU.
    pub jobs: usize,
    /// GPUs to spread trials over (`["cuda:0", "cuda:1"]`); empty = run on `device`.
    pub devices: Vec<String>,
    /// Trials packed onto each GPU at once.
    pub trials_per_device: usize,
    /// Seed of the random search.
    pub seed: u64,
    /// Per-trial wall-clock limit in seconds.
    pub timeout: Option<f64>,
    /// Times a failed trial is retried from its last checkpoint.
    pub retries: u32,
    pub max_trials: Option<usize>,
    pub pruning: Option<Pruning>,
    /// When the whole sweep stops early.
    pub stop: Option<StopRule>,
    /// What a trial may not exceed.
    pub constraints: Limits,
}

/// `[experiment] stop = { … }`: the sweep stops (its running trials checkpoint, `interrupted`)
/// when any one holds. The objective is the search's `metric` (best val/loss by default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StopRule {
    /// A trial reached this value of the objective.
    pub target: Option<f64>,
    /// This many trials ended since the one that set the best.
    pub patience_trials: Option<usize>,
    /// The best has not improved for this many minutes of this invocation.
    pub patience_minutes: Option<f64>,
    /// This invocation has run this many minutes: a time budget, as Optuna's `timeout`.
    pub minutes: Option<f64>,
}

/// The `[slurm]` table of a sweep file, and the same settings as `charlab sweep` flags (a flag
/// given wins over the file): per-trial resources and job settings for `--launcher slurm`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct SlurmSettings {
    /// Slurm: partition.
    #[arg(long)]
    pub partition: Option<String>,
    /// Slurm: generic resources per trial, e.g. gpu:1.
    #[arg(long)]
    pub gres: Option<String>,
    /// Slurm: time limit per trial, as sbatch takes it, e.g. 02:00:00.
    #[arg(long)]
    pub time: Option<String>,
    /// Slurm: CPUs per trial (the trial's threads).
    #[arg(long)]
    pub cpus_per_task: Option<usize>,
    /// Slurm: memory per trial, e.g. 8G.
    #[arg(long)]
    pub mem: Option<String>,
    /// Slurm: array tasks running at once.
    #[arg(long)]
    pub array_parallelism: Option<usize>,
    /// Slurm: seconds before the time limit that SIGUSR1 asks a trial to checkpoint and requeue.
    #[arg(long)]
    pub signal_lead: Option<u32>,
    /// Slurm: one more sbatch option, verbatim (repeatable): --slurm-arg=--account=abc
    #[arg(long = "slurm-arg", allow_hyphen_values = true)]
    pub args: Option<Vec<String>>,
}

impl SlurmSettings {
    /// These settings (the command line's) laid over `file`'s: each one given here wins, and the
    /// extra sbatch arguments of both are kept, the file's first.
    pub fn over(&self, file: &SlurmSettings) -> SlurmSettings {
        SlurmSettings {
            partition: self.partition.clone().or_else(|| file.partition.clone()),
            gres: self.gres.clone().or_else(|| file.gres.clone()),
            time: self.time.clone().or_else(|| file.time.clone()),
            cpus_per_task: self.cpus_per_task.or(file.cpus_per_task),
            mem: self.mem.clone().or_else(|| file.mem.clone()),
            array_parallelism: self.array_parallelism.or(file.array_parallelism),
            signal_lead: self.signal_lead.or(file.signal_lead),
            args: Some(
                file.args
                    .iter()
                    .chain(self.args.iter())
                    .flatten()
                    .cloned()
                    .collect(),
            ),
        }
    }
}
const EXPERIMENT_KEYS: &[&str] = &[
    "name",
    "corpus",
    "device",
    "jobs",
    "devices",
    "trials_per_device",
    "seed",
    "timeout",
    "retries",
    "max_trials",
    "pruning",
    "stop",
    "constraints",
];
const STOP_KEYS: &[&str] = &["target", "patience_trials", "patience_minutes", "minutes"];
const CONSTRAINT_KEYS: &[&str] = &["max_params", "max_trial_seconds"];
const PRUNING_KEYS: &[&str] = &["rule", "warmup_evals", "min_trials", "eta", "min_progress"];

impl Reader<'_> {
    fn stop(&self) -> Result<Option<StopRule>> {
        let Some(t) = self.table("stop", STOP_KEYS)? else {
            return Ok(None);
        };
        let target = match t.t.get("target") {
            None => None,
            Some(Value::Integer(i)) => Some(*i as f64),
            Some(Value::Float(f)) if f.is_finite() => Some(*f),
            Some(v) => {
                let m = format!("`target` must be a number, not {v}");
                return Err(t.err("target", m));
            }
        };
        let rule = StopRule {
            target,
            patience_trials: t.uint("patience_trials", 1)?.map(|n| n as usize),
            patience_minutes: t.positive("patience_minutes")?,
            minutes: t.positive("minutes")?,
        };
        if rule == StopRule::default() {
            let m = "`stop` needs target, patience_trials, patience_minutes or minutes".to_string();
            return Err(self.err("stop", m));
        }
        Ok(Some(rule))
    }

    /// `constraints = { … }`: a trial over one is `infeasible` (final, not retried; a search
    /// counts it as a bad result).
    fn constraints(&self) -> Result<Limits> {
        let Some(t) = self.table("constraints", CONSTRAINT_KEYS)? else {
            return Ok(Limits::default());
        };
        Ok(Limits {
            max_params: t.uint("max_params", 1)?.map(|n| n as u64),
            max_trial_seconds: t.positive("max_trial_seconds")?,
        })
    }

    fn devices(&self) -> Result<Vec<String>> {
        let bad = |m: String| self.file.err(self.section, "devices", m);
        match self.t.get("devices") {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => {
                        crate::device::parse(s).map_err(|e| bad(e.to_string()))?;
                        Ok(s.clone())
                    }
                    v => Err(bad(format!("devices must be strings, not {v}"))),
                })
                .collect(),
            Some(v) => Err(bad(format!(
                "`devices` must be a list, not {}",
                type_name(v)
            ))),
        }
    }

    fn pruning(&self) -> Result<Option<Pruning>> {
        let Some(within) = self.table("pruning", PRUNING_KEYS)? else {
            return Ok(None);
        };
        let rule = match within.t.get("rule") {
            None => PruneRule::Median,
            Some(Value::String(s)) if s == "median" => PruneRule::Median,
            Some(Value::String(s)) if s == "halving" => PruneRule::Halving,
            Some(Value::String(s)) if s == "hyperband" => PruneRule::Hyperband,
            Some(v) => {
                let m = format!(
                    "pruning `rule` must be \"median\", \"halving\" or \"hyperband\", not {v}"
                );
                return Err(within.err("rule", m));
            }
        };
        let int = |k: &str, d: usize| -> Result<usize> {
            Ok(within.uint(k, 0)?.map_or(d, |v| v as usize))
        };
        Ok(Some(Pruning {
            rule,
            warmup_evals: int("warmup_evals", 1)?,
            min_trials: int("min_trials", default_min_trials(rule))?.max(1),
            eta: int("eta", 3)?.max(2),
            min_progress: within.number_in(
                "min_progress",
                DEFAULT_MIN_PROGRESS,
                |v| (0.0..1.0).contains(&v),
                "a share in [0, 1) (0 turns the early cut off)",
            )?,
        }))
    }
}

/// The `[experiment]` table, and the run keys it sets for every trial (`corpus`, `device`).
pub(super) fn parse_experiment(file: &SweepFile, t: &Table) -> Result<(Experiment, Table)> {
    for k in t.keys() {
        if !EXPERIMENT_KEYS.contains(&k.as_str()) {
            return Err(file.unknown("experiment", k, EXPERIMENT_KEYS));
        }
    }
    let r = Reader::new(file, "experiment", t);
    let name = r.string("name")?.ok_or_else(|| Error::Config {
        path: file.path.to_path_buf(),
        message: "[experiment] needs a `name` (the runs go to runs/<name>/)".into(),
    })?;
    check_name(&name).map_err(|m| file.err("experiment", "name", m))?;
    let mut base = Table::new();
    if let Some(c) = r.string("corpus")? {
        base.insert("corpus".into(), Value::String(c));
    }
    if let Some(d) = r.string("device")? {
        crate::device::parse(&d).map_err(|e| file.err("experiment", "device", e.to_string()))?;
        base.insert("device".into(), Value::String(d));
    }
    let timeout = match t.get("timeout") {
        None => None,
        Some(v) => Some(parse_duration(v).map_err(|m| file.err("experiment", "timeout", m))?),
    };
    let experiment = Experiment {
        name,
        jobs: r.uint("jobs", 1)?.unwrap_or(1) as usize,
        devices: r.devices()?,
        trials_per_device: r.uint("trials_per_device", 1)?.unwrap_or(1) as usize,
        seed: r.uint("seed", 0)?.unwrap_or(0) as u64,
        timeout,
        retries: r.uint("retries", 0)?.unwrap_or(0) as u32,
        max_trials: r.uint("max_trials", 1)?.map(|v| v as usize),
        pruning: r.pruning()?,
        stop: r.stop()?,
        constraints: r.constraints()?,
    };
    Ok((experiment, base))
}

/// An experiment name becomes a directory under runs/: no separators, no `..`, no control chars.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.chars().count() <= 64
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "experiment name {name:?} must be 1–64 letters, digits, `-`, `_` or `.` (it names a directory under runs/)"
        ))
    }
}

/// Seconds from a number or a string like "90s", "30m", "2h".
pub(super) fn parse_duration(v: &Value) -> std::result::Result<f64, String> {
    let secs = match v {
        Value::Integer(i) => *i as f64,
        Value::Float(f) => *f,
        Value::String(s) => {
            let s = s.trim();
            let (num, unit) = s.split_at(s.find(|c: char| c.is_alphabetic()).unwrap_or(s.len()));
            let n: f64 = num
                .trim()
                .parse()
                .map_err(|_| format!("cannot read {s:?} as a duration"))?;
            match unit {
                "" | "s" => n,
                "m" => n * 60.0,
                "h" => n * 3600.0,
                _ => return Err(format!("unknown unit in {s:?} (use s, m or h)")),
            }
        }
        v => {
            return Err(format!(
                "`timeout` must be seconds or a string like \"30m\", not {v}"
            ))
        }
    };
    if secs > 0.0 && secs.is_finite() {
        Ok(secs)
    } else {
        Err("`timeout` must be > 0".into())
    }
}

/// The `[slurm]` table (types and names checked by serde; counts must be ≥ 1).
pub(super) fn parse_slurm(file: &SweepFile, t: Table) -> Result<SlurmSettings> {
    let slurm: SlurmSettings = Value::Table(t).try_into().map_err(|e: toml::de::Error| {
        let msg = e.to_string();
        let key = msg
            .split('`')
            .nth(1)
            .filter(|k| !k.contains(' '))
            .unwrap_or("slurm")
            .to_string();
        file.err("slurm", &key, msg.trim().replace('\n', " "))
    })?;
    for (key, v) in [
        ("cpus_per_task", slurm.cpus_per_task),
        ("array_parallelism", slurm.array_parallelism),
    ] {
        if v == Some(0) {
            return Err(file.err("slurm", key, "must be at least 1".into()));
        }
    }
    Ok(slurm)
}

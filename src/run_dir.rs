//! A run directory: its layout, its record (`run.json`) and its lock. Everything in charlab that
//! reads or writes a run's files goes through here: the trainer writes the record, a sweep marks a
//! crashed trial failed, `compare`, `sample` and the launchers read it.
//!
//! ```text
//! <run>/run.json                  the record: status, progress, metrics, provenance
//! <run>/config.toml               the hyperparameters (RunConfig)
//! <run>/vocab.json                the character vocabulary
//! <run>/checkpoints/{last,previous,best}.safetensors
//! <run>/events.out.tfevents.*     TensorBoard (summary.rs)
//! <run>/worker.log                a sweep worker's output
//! <run>/.train.lock               held (flock) while a process trains the run
//! ```

use crate::config::RunConfig;
use crate::error::{Error, IoContext, Result};
use crate::tags;
use crate::vocab::Vocab;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How a run ended (or that it is still going).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Completed,
    /// The loss became NaN or infinite.
    Diverged,
    Interrupted,
    /// Checkpointed at a population-based sweep's boundary, waiting for the sweep's decision
    /// there ([`crate::train::is_boundary`]); resumed like an interrupted run.
    Paused,
    Failed,
    /// Stopped by a sweep's pruning rule (worse than its siblings at the same step).
    Pruned,
    /// Over one of its sweep's constraints (`max_params` before its first step,
    /// `max_trial_seconds` when crossed): not trained on, not retried.
    Infeasible,
}

impl RunStatus {
    /// True for a status after which the run is not resumed.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Diverged | RunStatus::Pruned | RunStatus::Infeasible
        )
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).ok();
        write!(f, "{}", s.as_ref().and_then(|v| v.as_str()).unwrap_or("?"))
    }
}

/// What a run is judged and sorted by, read from its record: the one lookup behind a search's
/// score, `compare --sort`, importance, `refine` and the report. Each is oriented so that lower
/// is better (accuracy, throughput and steps are negated), so every caller sorts one way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// The best evaluation's validation loss.
    ValLoss,
    ValBpc,
    ValAccuracy,
    /// The last evaluation's validation loss.
    FinalValLoss,
    /// Mean training loss of the last logging interval.
    TrainLoss,
    Time,
    TokensPerS,
    Steps,
    /// The model's parameter count (a cost a second objective may weigh).
    Params,
}

impl Metric {
    /// Every metric, in the order error messages list them.
    pub const ALL: [Metric; 9] = [
        Metric::ValLoss,
        Metric::ValBpc,
        Metric::ValAccuracy,
        Metric::FinalValLoss,
        Metric::TrainLoss,
        Metric::Time,
        Metric::TokensPerS,
        Metric::Steps,
        Metric::Params,
    ];

    /// What a sweep's second objective may be: a cost, lower is better.
    pub const COSTS: [Metric; 2] = [Metric::Time, Metric::Params];

    /// The validation metrics: what a search may minimise and importance explains.
    pub const VALIDATION: [Metric; 4] = [
        Metric::ValLoss,
        Metric::ValBpc,
        Metric::ValAccuracy,
        Metric::FinalValLoss,
    ];

    /// The name users write (`--sort`, `[search] metric`).
    pub fn name(self) -> &'static str {
        match self {
            Metric::ValLoss => tags::VAL_LOSS,
            Metric::ValBpc => tags::VAL_BPC,
            Metric::ValAccuracy => tags::VAL_ACCURACY,
            Metric::FinalValLoss => "final/val/loss",
            Metric::TrainLoss => tags::TRAIN_LOSS,
            Metric::Time => "time",
            Metric::TokensPerS => "tokens_per_s",
            Metric::Steps => "steps",
            Metric::Params => "params",
        }
    }

    /// The metric named `name` among `among`.
    pub fn parse(name: &str, among: &[Metric]) -> Option<Metric> {
        among.iter().copied().find(|m| m.name() == name)
    }

    /// The names of `among`, comma-separated (for error messages).
    pub fn names(among: &[Metric]) -> String {
        among
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The value of this metric for `record`, lower is better; `None` before the run has it.
    pub fn of(self, record: &RunRecord) -> Option<f64> {
        let best = record.best_metrics;
        match self {
            Metric::ValLoss => best.map(|m| m.val_loss),
            Metric::ValBpc => best.map(|m| m.val_bpc),
            Metric::ValAccuracy => best.map(|m| -m.val_accuracy),
            Metric::FinalValLoss => record.final_metrics.map(|m| m.val_loss),
            Metric::TrainLoss => record.last_train_loss,
            Metric::Time => Some(record.elapsed_secs),
            Metric::TokensPerS => Some(-record.tokens_per_s),
            Metric::Steps => Some(-(record.steps as f64)),
            Metric::Params => Some(record.params as f64),
        }
    }
}

/// Validation metrics at one step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub step: u64,
    #[serde(with = "crate::json_float")]
    pub val_loss: f64,
    #[serde(with = "crate::json_float")]
    pub val_accuracy: f64,
    #[serde(with = "crate::json_float")]
    pub val_bpc: f64,
    /// Mean training loss over the last logging interval.
    #[serde(with = "crate::json_float")]
    pub train_loss: f64,
}

/// One evaluation's validation loss (the history sweeps prune on and `compare` reads).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    pub step: u64,
    #[serde(with = "crate::json_float")]
    pub val_loss: f64,
}

/// The mean training loss over the last steps before `step`, the point a sweep's early cut
/// compares siblings at ([`crate::sweep::pruning::hopeless`]).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct TrainPoint {
    pub step: u64,
    #[serde(with = "crate::json_float")]
    pub train_loss: f64,
}

/// The run record (`run.json`), rewritten atomically at start, at every evaluation and at the end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub status: RunStatus,
    pub started: String,
    pub ended: Option<String>,
    pub charlab_version: String,
    pub candle_version: String,
    pub git_commit: Option<String>,
    pub device: String,
    /// The large products' arithmetic the run trained with (`fp32`, `bf16`), and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    pub host: String,
    /// The process training it (a launcher or a test can signal it).
    pub pid: u32,
    pub command: Vec<String>,
    pub corpus: CorpusInfo,
    pub params: usize,
    pub steps: u64,
    pub total_steps: u64,
    #[serde(with = "crate::json_float")]
    pub epoch: f64,
    /// The babysitting check: the first loss should be close to ln(vocab).
    #[serde(default, with = "crate::json_float::option")]
    pub first_loss: Option<f64>,
    #[serde(with = "crate::json_float")]
    pub ln_vocab: f64,
    /// Mean train loss of the last logging interval (live progress).
    #[serde(default, with = "crate::json_float::option")]
    pub last_train_loss: Option<f64>,
    pub final_metrics: Option<Metrics>,
    pub best_metrics: Option<Metrics>,
    /// Every evaluation so far.
    pub evals: Vec<EvalPoint>,
    /// The early point, once the run has passed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early: Option<TrainPoint>,
    #[serde(with = "crate::json_float")]
    pub tokens_per_s: f64,
    #[serde(with = "crate::json_float")]
    pub elapsed_secs: f64,
    pub message: Option<String>,
}

/// The resolved `precision` of a run (its config may say `auto`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Precision {
    pub products: String,
    pub why: String,
}

/// What the run was trained on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CorpusInfo {
    pub spec: String,
    pub source: PathBuf,
    pub key: String,
    pub chars: usize,
    pub vocab: usize,
    pub train_chars: usize,
    pub val_chars: usize,
}

/// A checkpoint of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    /// The latest, written at every evaluation and when the run stops.
    Last,
    /// The `last` before the latest (kept in case `last` is found damaged).
    Previous,
    /// The one with the best validation loss so far.
    Best,
}

impl Checkpoint {
    pub fn name(self) -> &'static str {
        match self {
            Checkpoint::Last => "last",
            Checkpoint::Previous => "previous",
            Checkpoint::Best => "best",
        }
    }
}

impl std::str::FromStr for Checkpoint {
    type Err = Error;
    /// `best` or `last` (what a user may ask `sample` for).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "best" => Ok(Checkpoint::Best),
            "last" => Ok(Checkpoint::Last),
            _ => Err(Error::invalid("--checkpoint", "expected `best` or `last`")),
        }
    }
}

/// The time as run records write it (local, RFC 3339, seconds).
pub fn now() -> String {
    chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

/// A run directory (it need not exist yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RunDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn record_path(&self) -> PathBuf {
        self.path.join("run.json")
    }

    pub fn config_path(&self) -> PathBuf {
        self.path.join("config.toml")
    }

    pub fn vocab_path(&self) -> PathBuf {
        self.path.join("vocab.json")
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.path.join("checkpoints")
    }

    pub fn checkpoint(&self, which: Checkpoint) -> PathBuf {
        self.checkpoints()
            .join(format!("{}.safetensors", which.name()))
    }

    pub fn worker_log(&self) -> PathBuf {
        self.path.join("worker.log")
    }

    /// A run directory given on the command line; an error naming it (exit code 2) when it is
    /// missing or holds no run.
    pub fn existing(path: &Path) -> Result<RunDir> {
        if !path.is_dir() {
            return Err(Error::usage(path, "no such run directory"));
        }
        let run = RunDir::new(path);
        if !run.config_path().is_file() {
            return Err(Error::usage(
                path,
                "not a run directory (it has no config.toml; `charlab train` writes one)",
            ));
        }
        Ok(run)
    }

    /// True when `path` is a run directory (it holds a record).
    pub fn is_run(path: &Path) -> bool {
        RunDir::new(path).record_path().is_file()
    }

    /// The record, or `None` when there is none yet or it cannot be read (for polling, where
    /// the next read will tell).
    pub fn record(&self) -> Option<RunRecord> {
        self.read_record().ok().flatten()
    }

    /// The record: `Ok(None)` when there is none, an error naming the file when it is damaged.
    pub fn read_record(&self) -> Result<Option<RunRecord>> {
        let path = self.record_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Run {
                path,
                message: format!("not a readable run record ({e})"),
            })
    }

    /// Writes the record atomically: a reader sees the old one or the new one.
    pub fn write_record(&self, record: &RunRecord) -> Result<()> {
        let text = serde_json::to_string_pretty(record).unwrap_or_default();
        crate::atomic::write(&self.record_path(), text.as_bytes())
    }

    /// The run's status, `None` before it has a record.
    pub fn status(&self) -> Option<RunStatus> {
        self.record().map(|r| r.status)
    }

    /// Marks a run failed (after its worker crashed or timed out), keeping what it recorded. A
    /// run without a record, or one that already ended for good, is left alone.
    pub fn mark_failed(&self, message: &str) -> Result<()> {
        let Some(mut r) = self.record() else {
            return Ok(());
        };
        if r.status.is_final() {
            return Ok(());
        }
        r.status = RunStatus::Failed;
        r.message = Some(message.to_string());
        r.ended = Some(now());
        self.write_record(&r)
    }

    /// The run's config, as [`RunDir::save_config`] wrote it: one missing any key charlab
    /// always writes is reported damaged rather than read as defaults.
    pub fn load_config(&self) -> Result<RunConfig> {
        let path = self.config_path();
        let text = std::fs::read_to_string(&path).at(&path)?;
        let table: toml::Table = text.parse().unwrap_or_default();
        if let Some(k) = crate::config::SAVED_KEYS
            .iter()
            .find(|k| !table.contains_key(**k))
        {
            return Err(Error::Run {
                path,
                message: format!("damaged: it has no `{k}`, which charlab always writes"),
            });
        }
        RunConfig::parse(&text, &path)
    }

    pub fn save_config(&self, cfg: &RunConfig) -> Result<()> {
        crate::atomic::write(&self.config_path(), cfg.to_toml().as_bytes())
    }

    pub fn load_vocab(&self) -> Result<Vocab> {
        Vocab::load(&self.vocab_path())
    }

    pub fn save_vocab(&self, vocab: &Vocab) -> Result<()> {
        vocab.save(&self.vocab_path())
    }

    /// Whether a process is training the run now (holds its lock). A record that says
    /// `running` while nobody is training it belongs to a killed process.
    pub fn is_training(&self) -> bool {
        let Ok(file) = std::fs::File::open(self.path.join(".train.lock")) else {
            return false;
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        // SAFETY: flock on a descriptor we own; closing the file releases what we took.
        let rc = unsafe { libc::flock(fd, libc::LOCK_SH | libc::LOCK_NB) };
        rc != 0
    }

    /// Takes the run's lock (creating the directory), waiting up to `wait` for a holder that is
    /// stopping (a sweep's rerun for the worker its kill orphaned); `waiting` is told once if it
    /// has to wait. The holder's pid is in the lock file, for the refusal to name.
    pub fn lock(&self, wait: Duration, waiting: &mut dyn FnMut(&str)) -> Result<RunLock> {
        std::fs::create_dir_all(&self.path).at(&self.path)?;
        let path = self.path.join(".train.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .at(&path)?;
        let deadline = Instant::now() + wait;
        let mut told = false;
        loop {
            // SAFETY: flock on a descriptor we own; no memory is shared with the call.
            let rc = unsafe {
                libc::flock(
                    std::os::fd::AsRawFd::as_raw_fd(&file),
                    libc::LOCK_EX | libc::LOCK_NB,
                )
            };
            if rc == 0 {
                // Temp files of a killed writer are ours to clear now that we are the writer.
                crate::atomic::remove_stale_temps(&self.path);
                crate::atomic::remove_stale_temps(&self.checkpoints());
                let mut file = file;
                use std::io::Write;
                // Best effort: the pid only makes another process's refusal more useful.
                let _ = file
                    .set_len(0)
                    .and_then(|_| write!(file, "{}", std::process::id()));
                return Ok(RunLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::WouldBlock {
                return Err(Error::io(&path, err));
            }
            if Instant::now() >= deadline {
                let pid = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                return Err(Error::busy(&self.path, "process training this run", pid));
            }
            if !told {
                waiting(&format!(
                    "{}: waiting for another process training it",
                    self.path.display()
                ));
                told = true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// An exclusive lock on a run directory for as long as a process trains it: a worker orphaned
/// by a killed sweep and the worker of the rerun must not both write the same run. It is an
/// flock, so the kernel releases it when its holder dies, however it dies.
pub struct RunLock {
    _file: std::fs::File,
}

/// A record of a run that has not trained yet, for unit tests of what reads records.
#[cfg(test)]
pub(crate) fn test_record() -> RunRecord {
    RunRecord {
        status: RunStatus::Running,
        started: now(),
        ended: None,
        charlab_version: String::new(),
        candle_version: String::new(),
        git_commit: None,
        device: "cpu".into(),
        precision: None,
        host: String::new(),
        pid: 0,
        command: Vec::new(),
        corpus: CorpusInfo {
            spec: String::new(),
            source: PathBuf::new(),
            key: String::new(),
            chars: 0,
            vocab: 0,
            train_chars: 0,
            val_chars: 0,
        },
        params: 0,
        steps: 0,
        total_steps: 0,
        epoch: 0.0,
        first_loss: None,
        ln_vocab: 0.0,
        last_train_loss: None,
        final_metrics: None,
        best_metrics: None,
        evals: Vec::new(),
        early: None,
        tokens_per_s: 0.0,
        elapsed_secs: 0.0,
        message: None,
    }
}

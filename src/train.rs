//! Stage 4: one training run, end to end. `train(config, out)` prepares the corpus, trains with
//! truncated BPTT, evaluates on the whole validation split every `eval_every` steps, checkpoints
//! (`last` and `best`), and writes everything TensorBoard shows into the run directory. It is a
//! library function so a sweep can run it in a child process and tests can call it directly.

use crate::batch::{self, Split};
use crate::checkpoint::{self, Cursor};
use crate::config::RunConfig;
use crate::corpus;
use crate::error::{Error, IoContext, Result};
use crate::model::{Backend, CharRnn, Dims, State};
use crate::optim::{self, Hyper, Optimizer};
use crate::rng::Rng;
use crate::sample;
use crate::summary::{EventWriter, HValue, SessionStatus};
use crate::vocab::Vocab;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tensorboard_proto::api::DataType as HpType;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Completed,
    /// The loss became NaN or infinite.
    Diverged,
    Interrupted,
    Failed,
    /// Stopped by a sweep's pruning rule (worse than its siblings at the same step).
    Pruned,
}

impl RunStatus {
    /// True for a status after which the run is not resumed.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Diverged | RunStatus::Pruned
        )
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).ok();
        write!(f, "{}", s.as_ref().and_then(|v| v.as_str()).unwrap_or("?"))
    }
}

/// Validation metrics at one step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub step: u64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub val_bpc: f64,
    /// Mean training loss over the last logging interval.
    pub train_loss: f64,
}

/// One evaluation's validation loss (the history sweeps prune on and `compare` reads).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    pub step: u64,
    pub val_loss: f64,
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
    pub host: String,
    /// The process training it (a launcher or a test can signal it).
    pub pid: u32,
    pub command: Vec<String>,
    pub corpus: CorpusInfo,
    pub params: usize,
    pub steps: u64,
    pub total_steps: u64,
    pub epoch: f64,
    /// The babysitting check: the first loss should be close to ln(vocab).
    pub first_loss: Option<f64>,
    pub ln_vocab: f64,
    /// Mean train loss of the last logging interval (live progress).
    pub last_train_loss: Option<f64>,
    pub final_metrics: Option<Metrics>,
    pub best_metrics: Option<Metrics>,
    /// Every evaluation so far.
    pub evals: Vec<EvalPoint>,
    pub tokens_per_s: f64,
    pub elapsed_secs: f64,
    pub message: Option<String>,
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

/// What `train` returns.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub status: RunStatus,
    pub record: RunRecord,
    pub out: PathBuf,
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Progress {
    /// A bar on a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// Plain lines only.
    Lines,
    /// Nothing but warnings.
    Quiet,
}

/// Options that are about this invocation, not the run's hyperparameters.
#[derive(Clone)]
pub struct TrainOptions {
    /// Continue from the run directory's last checkpoint.
    pub resume: bool,
    pub progress: Progress,
    /// Where corpora and prepared data are cached.
    pub data_dir: PathBuf,
    /// Write this run's own `_hparams_/experiment` summary (a sweep writes one at its root).
    pub write_experiment: bool,
    /// Stop after this many steps in this invocation (tests use it to simulate an interruption).
    pub stop_after: Option<u64>,
    /// HParams group name (a sweep gives the seeds of one configuration the same group).
    pub group: Option<String>,
    /// Asked at each evaluation with (step, val loss): true prunes the run (status `pruned`).
    pub prune: Option<std::sync::Arc<dyn Fn(u64, f64) -> bool + Send + Sync>>,
}

impl std::fmt::Debug for TrainOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainOptions")
            .field("resume", &self.resume)
            .field("progress", &self.progress)
            .field("data_dir", &self.data_dir)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            resume: false,
            progress: Progress::Auto,
            data_dir: corpus::data_dir(),
            write_experiment: true,
            stop_after: None,
            group: None,
            prune: None,
        }
    }
}

/// Keys that may differ between a run's saved config and the config it is resumed with: the
/// observation keys, and the two that say how long the run goes.
fn resumable(key: &str) -> bool {
    OBSERVATION_KEYS.contains(&key) || key == "max_steps" || key == "epochs"
}

/// The metrics declared to the HParams dashboard.
pub const METRICS: &[&str] = &["val/loss", "val/accuracy", "val/bpc", "train/loss"];

fn log_line(progress: Progress, msg: &str) {
    if progress != Progress::Quiet {
        eprintln!("{msg}");
    }
}

fn now() -> String {
    chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

fn run_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Run {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Config keys that are about observing a run, not about the model: left out of HParams.
const OBSERVATION_KEYS: &[&str] = &[
    "device",
    "threads",
    "log_every",
    "eval_every",
    "histogram_every",
    "sample_length",
    "sample_temperature",
];

/// The run's hyperparameters as HParams values: every scalar key of the config except the
/// observation keys.
pub fn hparam_values(cfg: &RunConfig) -> Vec<(String, HValue)> {
    let mut out = Vec::new();
    if let Ok(toml::Value::Table(t)) = toml::Value::try_from(cfg) {
        for (k, v) in t {
            if OBSERVATION_KEYS.contains(&k.as_str()) {
                continue;
            }
            let hv = match v {
                toml::Value::Integer(i) => HValue::Num(i as f64),
                toml::Value::Float(f) => HValue::Num(f),
                toml::Value::String(s) => HValue::Str(s),
                toml::Value::Boolean(b) => HValue::Bool(b),
                _ => continue,
            };
            out.push((k, hv));
        }
    }
    out
}

/// The HParams data type of a value.
pub fn hparam_type(v: &HValue) -> HpType {
    match v {
        HValue::Num(_) => HpType::DATA_TYPE_FLOAT64,
        HValue::Str(_) => HpType::DATA_TYPE_STRING,
        HValue::Bool(_) => HpType::DATA_TYPE_BOOL,
    }
}

/// Applies the thread budget (the config's, or all available cores): rayon's global pool (our
/// fused ops and candle's matmuls, which read `RAYON_NUM_THREADS`; without the variable candle
/// recounts the cores from `/proc/cpuinfo` on every matmul). Candle's separate pool for
/// element-wise ops (`CANDLE_NUM_THREADS`) is kept to the calling thread: the heavy work is in the
/// fused ops and GEMMs, and its per-op barriers cost more than the small adds of the backward pass
/// gain (measured: S +20–30% tokens/s, M +3–8%, same losses). Only the first call in a process
/// takes effect.
pub fn set_threads(threads: Option<usize>) {
    let n = threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    // SAFETY-free in edition 2021; done before any pool is started by this process.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", "1");
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
}

fn check_resumable(saved: &RunConfig, now: &RunConfig, path: &Path) -> Result<()> {
    let table = |c: &RunConfig| match toml::Value::try_from(c) {
        Ok(toml::Value::Table(t)) => t,
        _ => Default::default(),
    };
    let (a, b) = (table(saved), table(now));
    let changed: Vec<&String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| !resumable(k) && a.get(*k) != b.get(*k))
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    let mut names: Vec<&str> = changed.iter().map(|s| s.as_str()).collect();
    names.dedup();
    Err(run_error(
        path,
        format!(
            "cannot resume: the config differs from the run's in {} (only max_steps, epochs \
             and {} may change)",
            names.join(", "),
            OBSERVATION_KEYS.join(", ")
        ),
    ))
}

/// Loss and accuracy on a whole split, from a zero state.
pub fn evaluate(model: &CharRnn, backend: &mut Backend, split: &Split) -> Result<(f64, f64)> {
    let mut state = model.zero_state(split.streams());
    let (mut loss, mut hits, mut n) = (0f64, 0f64, 0usize);
    for w in 0..split.windows() {
        let win = split.window(w);
        let sums = backend.eval(model, (&win.x, &win.y, win.seq_len), &mut state)?;
        loss += sums.loss;
        hits += sums.hits;
        n += sums.count;
    }
    Ok((loss / n.max(1) as f64, hits / n.max(1) as f64))
}

struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    progress: Progress,
}

impl Reporter {
    fn new(progress: Progress, total: u64, start: u64) -> Self {
        let bar = (progress == Progress::Auto && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps  {msg}  eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_position(start);
            bar
        });
        Reporter { bar, progress }
    }

    fn step(&self, step: u64, total: u64, loss: f64, tps: f64) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(step);
                bar.set_message(format!("loss {loss:.4}  {tps:.0} chars/s"));
            }
            None => {
                // Plain output stays readable in logs: about 20 lines per run.
                let every = (total / 20).max(1);
                if step.is_multiple_of(every) || step == total {
                    log_line(
                        self.progress,
                        &format!("step {step}/{total}  loss {loss:.4}  {tps:.0} chars/s"),
                    );
                }
            }
        }
    }

    fn line(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.println(msg),
            None => log_line(self.progress, msg),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Everything a run holds while it trains.
struct Trainer<'a> {
    cfg: &'a RunConfig,
    opts: &'a TrainOptions,
    out: PathBuf,
    model: CharRnn,
    backend: Backend,
    optimizer: Optimizer,
    vocab: Vocab,
    train_split: Split,
    val_split: Split,
    cursor: Cursor,
    state: State,
    rng: Rng,
    events: EventWriter,
    record: RunRecord,
    total_steps: u64,
    windows: u64,
    reporter: Reporter,
    /// Train losses and accuracies since the last scalar point.
    interval: (f64, f64, u64),
    interval_start: Instant,
    interval_tokens: u64,
    /// Seconds spent training in this invocation.
    train_secs: f64,
    last_record_write: Instant,
    evals_without_improvement: u32,
}

/// Why the loop stopped early: the status to record and a message.
type Stop = (RunStatus, String);

impl Trainer<'_> {
    fn epoch_f(&self) -> f64 {
        self.cursor.epoch as f64 + self.cursor.window as f64 / self.windows as f64
    }

    fn write_record(&self) -> Result<()> {
        self.write(&self.record)
    }

    fn write(&self, record: &RunRecord) -> Result<()> {
        crate::atomic::write(
            &self.out.join("run.json"),
            serde_json::to_string_pretty(record)
                .unwrap_or_default()
                .as_bytes(),
        )
    }

    /// One optimizer step. Returns a stop reason when the loss diverged.
    fn step(&mut self) -> Result<Option<Stop>> {
        let cfg = self.cfg;
        let step_start = Instant::now();
        let win = self.train_split.window(self.cursor.window);
        let sums = self.backend.train(
            &self.model,
            (&win.x, &win.y, win.seq_len),
            &mut self.state,
            cfg.dropout,
            &mut self.rng,
        )?;
        let (loss_v, acc) = (sums.loss / sums.count as f64, sums.hits / sums.count as f64);
        let next_step = self.cursor.step + 1;
        // A uniform guess costs ln V; ten times that is no longer training.
        if !loss_v.is_finite() || loss_v > 10.0 * self.record.ln_vocab.max(1.0) {
            let msg = format!("loss became {loss_v} at step {next_step}");
            return Ok(Some((RunStatus::Diverged, msg)));
        }
        if self.cursor.step == 0 {
            self.record.first_loss = Some(loss_v);
            self.reporter.line(&format!(
                "step 1: loss {loss_v:.4}, ln(vocab) = {:.4} (a fresh model should start near it)",
                self.record.ln_vocab
            ));
        }
        let params: Vec<&candle_core::Var> = self.model.params().iter().map(|(_, v)| v).collect();
        let grads = self.backend.grads();
        let norm = optim::global_norm(grads);
        let lr = optim::lr_at(cfg, self.cursor.step, self.epoch_f(), self.total_steps);
        let scale = if cfg.grad_clip > 0.0 && norm > cfg.grad_clip {
            (cfg.grad_clip / norm) as f32
        } else {
            1.0
        };
        if cfg.histogram_every > 0
            && (next_step.is_multiple_of(cfg.histogram_every) || next_step == 1)
        {
            for ((name, var), g) in self.model.params().iter().zip(grads) {
                let w = var.flatten_all()?.to_vec1::<f32>()?;
                self.events
                    .histogram(&format!("weights/{name}"), next_step, &w)?;
                self.events
                    .histogram(&format!("gradients/{name}"), next_step, g)?;
            }
        }
        self.optimizer.step(&params, grads, lr, scale)?;

        self.cursor.window += 1;
        if self.cursor.window as u64 >= self.windows {
            self.cursor.window = 0;
            self.cursor.epoch += 1;
            self.state = self.model.zero_state(cfg.batch_size);
        }
        self.cursor.step = next_step;
        let tokens = (cfg.batch_size * cfg.seq_len) as u64;
        self.cursor.tokens += tokens;
        self.interval_tokens += tokens;
        self.interval.0 += loss_v;
        self.interval.1 += acc;
        self.interval.2 += 1;
        self.train_secs += step_start.elapsed().as_secs_f64();

        if next_step.is_multiple_of(cfg.log_every) || next_step == self.total_steps {
            self.log_scalars(lr, norm)?;
        }
        Ok(None)
    }

    fn log_scalars(&mut self, lr: f64, norm: f64) -> Result<()> {
        let step = self.cursor.step;
        let (loss_sum, acc_sum, n) = self.interval;
        let tps =
            self.interval_tokens as f64 / self.interval_start.elapsed().as_secs_f64().max(1e-9);
        let loss = loss_sum / n.max(1) as f64;
        self.events.scalar("train/loss", step, loss)?;
        self.events
            .scalar("train/accuracy", step, acc_sum / n.max(1) as f64)?;
        self.events
            .scalar("train/bpc", step, loss / std::f64::consts::LN_2)?;
        self.events.scalar("lr", step, lr)?;
        self.events.scalar("grad_norm", step, norm)?;
        self.events.scalar("throughput/chars_per_s", step, tps)?;
        self.reporter.step(step, self.total_steps, loss, tps);
        self.record.last_train_loss = Some(loss);
        self.record.steps = step;
        // run.json doubles as the live progress a sweep shows; a few writes a second at most.
        if self.last_record_write.elapsed().as_secs_f64() >= 2.0 {
            self.write_record()?;
            self.last_record_write = Instant::now();
        }
        self.interval = (0.0, 0.0, 0);
        self.interval_tokens = 0;
        self.interval_start = Instant::now();
        Ok(())
    }

    /// Evaluates, writes the sample and checkpoints. Returns a stop reason for early stopping
    /// or pruning.
    fn evaluate(&mut self) -> Result<Option<Stop>> {
        let step = self.cursor.step;
        let (val_loss, val_acc) = evaluate(&self.model, &mut self.backend, &self.val_split)?;
        let metrics = Metrics {
            step,
            val_loss,
            val_accuracy: val_acc,
            val_bpc: val_loss / std::f64::consts::LN_2,
            train_loss: self.record.last_train_loss.unwrap_or(f64::NAN),
        };
        self.events.scalar("val/loss", step, val_loss)?;
        self.events.scalar("val/accuracy", step, val_acc)?;
        self.events.scalar("val/bpc", step, metrics.val_bpc)?;
        let text = eval_sample(
            &self.model,
            &mut self.backend,
            &self.vocab,
            &self.val_split,
            self.cfg,
            step,
        )?;
        self.events.text("samples/generated", step, &text)?;
        self.reporter.line(&format!(
            "step {step}: val loss {val_loss:.4}, bpc {:.3}, accuracy {val_acc:.3}",
            metrics.val_bpc
        ));
        let improved = self.cursor.best_val_loss.is_none_or(|b| val_loss < b);
        if improved {
            self.cursor.best_val_loss = Some(val_loss);
            self.cursor.best_step = Some(step);
            self.record.best_metrics = Some(metrics);
            self.evals_without_improvement = 0;
        } else {
            self.evals_without_improvement += 1;
        }
        self.record.final_metrics = Some(metrics);
        self.record.evals.retain(|e| e.step < step);
        self.record.evals.push(EvalPoint { step, val_loss });
        self.checkpoint(improved)?;

        if let Some(p) = self.cfg.patience {
            if self.evals_without_improvement >= p {
                let msg = format!("early stop: no val/loss improvement in {p} evaluations");
                return Ok(Some((RunStatus::Completed, msg)));
            }
        }
        if let Some(prune) = &self.opts.prune {
            if step < self.total_steps && prune(step, val_loss) {
                let msg = format!("pruned at step {step} (val/loss {val_loss:.4})");
                return Ok(Some((RunStatus::Pruned, msg)));
            }
        }
        Ok(None)
    }

    /// Writes `last` (and `best`) with the current cursor, and the run record.
    fn checkpoint(&mut self, best: bool) -> Result<()> {
        self.cursor.rng = self.rng.state();
        self.cursor.elapsed_secs = self.record.elapsed_secs + self.train_secs;
        // The events up to this step reach the disk before the checkpoint that a resume
        // would start from, so a resume never loses points it will not rewrite.
        self.events.sync()?;
        let mut tensors = self.model.tensors();
        tensors.extend(self.optimizer.tensors()?);
        let (b, h) = (self.state.batch, self.state.hidden);
        for (k, (hv, cv)) in self.state.h.iter().zip(&self.state.c).enumerate() {
            let t = |v: &[f32]| Tensor::from_slice(v, (b, h), &candle_core::Device::Cpu);
            tensors.insert(format!("state/layer_{k}/h"), t(hv)?);
            tensors.insert(format!("state/layer_{k}/c"), t(cv)?);
        }
        checkpoint::save_last(&self.out, &tensors, &self.cursor)?;
        if best {
            checkpoint::save(&checkpoint::path(&self.out, "best"), &tensors, &self.cursor)?;
        }
        self.record.steps = self.cursor.step;
        self.record.epoch = self.epoch_f();
        self.record.tokens_per_s = self.cursor.tokens as f64 / self.cursor.elapsed_secs.max(1e-9);
        let mut snapshot = self.record.clone();
        snapshot.elapsed_secs = self.cursor.elapsed_secs;
        self.write(&snapshot)
    }

    fn run(&mut self) -> Result<RunStatus> {
        let started_step = self.cursor.step;
        while self.cursor.step < self.total_steps {
            let signal = crate::signals::requested();
            let budget_done = self
                .opts
                .stop_after
                .is_some_and(|n| self.cursor.step - started_step >= n);
            if signal.is_some() || budget_done {
                let why = signal.map_or("step budget reached".to_string(), |s| {
                    format!("stopped by {}", crate::signals::name(s))
                });
                self.reporter.line(&format!(
                    "{why}: checkpointing at step {}",
                    self.cursor.step
                ));
                self.checkpoint(false)?;
                self.record.message = Some(why);
                return Ok(RunStatus::Interrupted);
            }
            let cfg = self.cfg;
            let stop = match self.step()? {
                Some(stop) => Some(stop),
                None if self.cursor.step.is_multiple_of(cfg.eval_every)
                    || self.cursor.step == self.total_steps =>
                {
                    self.evaluate()?
                }
                None => None,
            };
            if let Some((status, msg)) = stop {
                self.reporter.line(&msg);
                self.record.message = Some(msg);
                return Ok(status);
            }
        }
        Ok(RunStatus::Completed)
    }

    fn finish(mut self, status: RunStatus) -> Result<RunResult> {
        self.reporter.finish();
        self.record.elapsed_secs += self.train_secs;
        self.record.status = status;
        self.record.ended = Some(now());
        if status != RunStatus::Interrupted {
            self.record.steps = self.cursor.step;
        }
        // TensorBoard keeps the first `session_end_info` it reads for a run, so a run that will be
        // resumed writes none: its end is written once, by the invocation that ends it.
        match status {
            RunStatus::Completed | RunStatus::Pruned => {
                self.events.session_end(SessionStatus::Success)?
            }
            RunStatus::Diverged | RunStatus::Failed => {
                self.events.session_end(SessionStatus::Failure)?
            }
            RunStatus::Interrupted | RunStatus::Running => {}
        }
        self.events.sync()?;
        self.write_record()?;
        if let Some(m) = self.record.final_metrics {
            let best = self.record.best_metrics.unwrap_or(m);
            log_line(
                self.opts.progress,
                &format!(
                    "{status}: {} steps, val loss {:.4} (best {:.4} at step {}), {:.0} chars/s",
                    self.record.steps,
                    m.val_loss,
                    best.val_loss,
                    best.step,
                    self.record.tokens_per_s
                ),
            );
        }
        Ok(RunResult {
            status,
            record: self.record,
            out: self.out,
        })
    }
}

/// An exclusive lock on a run directory for as long as a process trains it: a worker orphaned
/// by a killed sweep and the worker of the rerun must not both write the same run. It is an
/// flock, so the kernel releases it when its holder dies, however it dies.
struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    /// Takes the lock, waiting up to a minute for a holder that is stopping.
    fn acquire(out: &Path, progress: Progress) -> Result<RunLock> {
        let path = out.join(".train.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .at(&path)?;
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
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
                return Ok(RunLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::WouldBlock {
                return Err(Error::io(&path, err));
            }
            if Instant::now() > deadline {
                return Err(run_error(
                    out,
                    "another process is training this run directory",
                ));
            }
            if !told {
                log_line(
                    progress,
                    &format!("{}: waiting for another process training it", out.display()),
                );
                told = true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// Trains one run into `out`.
pub fn train(cfg: &RunConfig, out: &Path, opts: &TrainOptions) -> Result<RunResult> {
    cfg.validate()?;
    set_threads(cfg.threads);
    let progress = opts.progress;
    let record_path = out.join("run.json");
    let config_path = out.join("config.toml");
    let ckpt_dir = out.join("checkpoints");

    std::fs::create_dir_all(out).at(out)?;
    let _lock = RunLock::acquire(out, progress)?;
    for dir in [out.to_path_buf(), ckpt_dir.clone()] {
        crate::atomic::remove_stale_temps(&dir);
    }
    if record_path.exists() && !opts.resume {
        return Err(run_error(
            out,
            "already holds a run: pass --resume to continue it, or choose another --out",
        ));
    }
    if opts.resume && config_path.exists() {
        let saved = RunConfig::load(&config_path)?;
        check_resumable(&saved, cfg, out)?;
    }

    let mut say = |m: &str| log_line(progress, m);
    let prepared = corpus::prepare(&cfg.corpus, &cfg.clean, &opts.data_dir, &mut say)?;
    let vocab = prepared.vocab.clone();
    let (train_split, val_split) =
        batch::split(&prepared.ids, cfg.val_fraction, cfg.batch_size, cfg.seq_len)?;
    let device = crate::device::open(&cfg.device, &mut say)?;
    let dims = Dims {
        vocab: vocab.len(),
        embed_dim: cfg.embed_dim,
        hidden: cfg.hidden,
        layers: cfg.layers,
    };
    let model = CharRnn::new(dims, cfg.seed, &device)?;
    let sizes: Vec<usize> = model.params().iter().map(|(_, v)| v.elem_count()).collect();
    let mut optimizer = Optimizer::new(Hyper::from_config(cfg), &sizes);

    let windows = train_split.windows() as u64;
    let by_epochs = |e: f64| ((e * windows as f64).ceil() as u64).max(1);
    let total_steps = match (cfg.max_steps, cfg.epochs) {
        (Some(s), Some(e)) => s.min(by_epochs(e)),
        (Some(s), None) => s,
        (None, Some(e)) => by_epochs(e),
        (None, None) => return Err(Error::invalid("max_steps", "set `max_steps` or `epochs`")),
    };

    let mut cursor = Cursor {
        step: 0,
        epoch: 0,
        window: 0,
        rng: Rng::new(cfg.seed, 2).state(),
        tokens: 0,
        elapsed_secs: 0.0,
        best_val_loss: None,
        best_step: None,
    };
    let mut state: State = model.zero_state(cfg.batch_size);
    let mut previous: Option<RunRecord> = None;
    let latest = if opts.resume {
        let (latest, problems) = checkpoint::load_latest(out, &device)?;
        for p in problems {
            say(&format!("{p}; falling back to the previous checkpoint"));
        }
        latest
    } else {
        None
    };
    if let Some((tensors, c)) = latest {
        let saved_vocab = Vocab::load(&out.join("vocab.json"))?;
        if saved_vocab != vocab {
            return Err(run_error(
                out,
                "cannot resume: the corpus's vocabulary differs from the run's vocab.json",
            ));
        }
        model.load(&tensors)?;
        optimizer.load(c.step, &tensors)?;
        for k in 0..cfg.layers {
            let get = |n: &str| -> Result<Vec<f32>> {
                let t = tensors
                    .get(&format!("state/layer_{k}/{n}"))
                    .ok_or_else(|| run_error(&ckpt_dir, format!("no state/layer_{k}/{n}")))?;
                let v = t.flatten_all()?.to_vec1::<f32>()?;
                if v.len() != cfg.batch_size * cfg.hidden {
                    return Err(run_error(
                        &ckpt_dir,
                        format!("state/layer_{k}/{n} has the wrong size"),
                    ));
                }
                Ok(v)
            };
            state.h[k] = get("h")?;
            state.c[k] = get("c")?;
        }
        cursor = c;
        previous = std::fs::read(&record_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        say(&format!(
            "resuming {} from step {}",
            out.display(),
            cursor.step
        ));
    }
    crate::atomic::write(&config_path, cfg.to_toml().as_bytes())?;
    vocab.save(&out.join("vocab.json"))?;

    let prev = previous.as_ref();
    let record = RunRecord {
        status: RunStatus::Running,
        started: prev.map(|p| p.started.clone()).unwrap_or_else(now),
        ended: None,
        charlab_version: env!("CARGO_PKG_VERSION").into(),
        candle_version: env!("CHARLAB_CANDLE_VERSION").into(),
        git_commit: Some(env!("CHARLAB_GIT_COMMIT").to_string()).filter(|s| !s.is_empty()),
        device: crate::device::name(&device),
        host: crate::summary::hostname(),
        pid: std::process::id(),
        command: std::env::args().collect(),
        corpus: CorpusInfo {
            spec: cfg.corpus.clone(),
            source: prepared.source.clone(),
            key: prepared.key.clone(),
            chars: prepared.ids.len(),
            vocab: vocab.len(),
            train_chars: train_split.chars_per_pass(),
            val_chars: val_split.chars_per_pass(),
        },
        params: model.num_params(),
        steps: cursor.step,
        total_steps,
        epoch: cursor.epoch as f64 + cursor.window as f64 / windows as f64,
        first_loss: prev.and_then(|p| p.first_loss),
        ln_vocab: (vocab.len() as f64).ln(),
        last_train_loss: prev.and_then(|p| p.last_train_loss),
        final_metrics: prev.and_then(|p| p.final_metrics),
        best_metrics: prev.and_then(|p| p.best_metrics),
        evals: prev
            .map(|p| {
                p.evals
                    .iter()
                    .filter(|e| e.step <= cursor.step)
                    .copied()
                    .collect()
            })
            .unwrap_or_default(),
        tokens_per_s: prev.map_or(0.0, |p| p.tokens_per_s),
        elapsed_secs: cursor.elapsed_secs,
        message: None,
    };

    let mut events = EventWriter::create(out)?;
    // A resumed run drops what earlier invocations wrote after its checkpoint; one that crashed
    // before its first checkpoint starts over, so it drops everything from step 1.
    if opts.resume {
        events.purge_from(cursor.step + 1)?;
    }
    if cursor.step == 0 {
        events.graph(&model.graph(cfg.batch_size, cfg.seq_len))?;
    }
    let hparams = hparam_values(cfg);
    if opts.write_experiment {
        let infos: Vec<_> = hparams
            .iter()
            .map(|(k, v)| (k.clone(), None, hparam_type(v)))
            .collect();
        events.hparams_experiment(&infos, METRICS)?;
    }
    events.session_start(&hparams, opts.group.as_deref().unwrap_or(""))?;
    events.flush()?;

    say(&format!(
        "{}: {} params, vocab {}, {} train / {} val chars, {} steps on {}",
        out.display(),
        model.num_params(),
        vocab.len(),
        train_split.chars_per_pass(),
        val_split.chars_per_pass(),
        total_steps,
        record.device
    ));
    // Best-so-far is tracked from the checkpoint, so patience counts from the resume point.
    let mut trainer = Trainer {
        cfg,
        opts,
        out: out.to_path_buf(),
        reporter: Reporter::new(progress, total_steps, cursor.step),
        rng: Rng::from_state(cursor.rng),
        backend: Backend::for_model(&model),
        model,
        optimizer,
        vocab,
        train_split,
        val_split,
        cursor,
        state,
        events,
        record,
        total_steps,
        windows,
        interval: (0.0, 0.0, 0),
        interval_start: Instant::now(),
        interval_tokens: 0,
        train_secs: 0.0,
        last_record_write: Instant::now(),
        evals_without_improvement: 0,
    };
    trainer.write_record()?;
    let status = trainer.run()?;
    trainer.finish(status)
}

/// The text sample written at an evaluation: primed with the first char of the validation
/// split, seeded by the step so a resumed run writes the same sample.
fn eval_sample(
    model: &CharRnn,
    backend: &mut Backend,
    vocab: &Vocab,
    val: &Split,
    cfg: &RunConfig,
    step: u64,
) -> Result<String> {
    let prime = vec![val.window(0).x[0]];
    let mut rng = Rng::new(cfg.seed ^ step, 3);
    let ids = sample::generate(
        model,
        backend,
        &prime,
        cfg.sample_length,
        &sample::Sampling {
            temperature: cfg.sample_temperature,
            top_k: None,
            argmax: false,
        },
        &mut rng,
    )?;
    // Indented lines are a markdown code block: TensorBoard keeps the line breaks.
    Ok(vocab
        .decode(&ids)
        .lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n"))
}

//! Stage 4: one training run, end to end. `train(config, out)` prepares the corpus, trains with
//! truncated BPTT, evaluates on the whole validation split every `eval_every` steps, checkpoints
//! (`last` and `best`), and writes everything TensorBoard shows into the run directory. It is a
//! library function so a sweep can run it in a child process and tests can call it directly.

use crate::batch::{self, Split, Window};
use crate::checkpoint::{self, Cursor};
use crate::config::RunConfig;
use crate::corpus;
use crate::error::{Error, IoContext, Result};
use crate::model::{self, CharRnn, Dims, LstmImpl, State};
use crate::optim::{self, Hyper, Optimizer};
use crate::rng::Rng;
use crate::sample;
use crate::summary::{EventWriter, HValue, SessionStatus};
use crate::vocab::Vocab;
use candle_core::{Device, Tensor};
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
    pub command: Vec<String>,
    pub corpus: CorpusInfo,
    pub params: usize,
    pub steps: u64,
    pub total_steps: u64,
    pub epoch: f64,
    /// The babysitting check: the first loss should be close to ln(vocab).
    pub first_loss: Option<f64>,
    pub ln_vocab: f64,
    pub final_metrics: Option<Metrics>,
    pub best_metrics: Option<Metrics>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A bar on a terminal, plain lines otherwise.
    Auto,
    /// Plain lines only.
    Lines,
    /// Nothing but warnings.
    Quiet,
}

/// Options that are about this invocation, not the run's hyperparameters.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Continue from the run directory's last checkpoint.
    pub resume: bool,
    pub progress: Progress,
    /// Where corpora and prepared data are cached.
    pub data_dir: PathBuf,
    pub lstm: LstmImpl,
    /// Write this run's own `_hparams_/experiment` summary (a sweep writes one at its root).
    pub write_experiment: bool,
    /// Stop after this many steps in this invocation (tests use it to simulate an interruption).
    pub stop_after: Option<u64>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            resume: false,
            progress: Progress::Auto,
            data_dir: corpus::data_dir(),
            lstm: LstmImpl::Fused,
            write_experiment: true,
            stop_after: None,
        }
    }
}

/// Keys that may differ between a run's saved config and the config it is resumed with: they
/// change how long the run goes or how it is observed, not what it computes.
const RESUMABLE_KEYS: &[&str] = &[
    "max_steps",
    "epochs",
    "device",
    "threads",
    "log_every",
    "eval_every",
    "histogram_every",
    "sample_length",
    "sample_temperature",
];

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

fn hparam_type(v: &HValue) -> HpType {
    match v {
        HValue::Num(_) => HpType::DATA_TYPE_FLOAT64,
        HValue::Str(_) => HpType::DATA_TYPE_STRING,
        HValue::Bool(_) => HpType::DATA_TYPE_BOOL,
    }
}

/// Applies the config's thread budget to both of candle's CPU pools (rayon's global pool and the
/// count candle reads from `CANDLE_NUM_THREADS`). Only the first call in a process takes effect.
pub fn set_threads(threads: Option<usize>) {
    if let Some(n) = threads {
        // SAFETY-free in edition 2021; done before any pool is started by this process.
        std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
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
        .filter(|k| !RESUMABLE_KEYS.contains(&k.as_str()) && a.get(*k) != b.get(*k))
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    let mut names: Vec<&str> = changed.iter().map(|s| s.as_str()).collect();
    names.dedup();
    Err(run_error(
        path,
        format!(
            "cannot resume: the config differs from the run's in {} (only {} may change)",
            names.join(", "),
            RESUMABLE_KEYS.join(", ")
        ),
    ))
}

fn window_tensors(w: &Window, device: &Device) -> Result<(Tensor, Tensor)> {
    let x = Tensor::from_slice(&w.x, (w.streams, w.seq_len), device)?;
    let y = Tensor::from_slice(&w.y, w.streams * w.seq_len, device)?;
    Ok((x, y))
}

/// Loss, accuracy and bits per char on a whole split, from a zero state.
pub fn evaluate(model: &CharRnn, split: &Split) -> Result<(f64, f64)> {
    let mut state = model.zero_state(split.streams())?;
    let (mut loss_sum, mut acc_sum, mut n) = (0f64, 0f64, 0usize);
    for w in 0..split.windows() {
        let (x, y) = window_tensors(&split.window(w), model.device())?;
        let fwd = model.forward(&x, &state, None)?;
        let (loss, acc) = model::loss_and_accuracy(&fwd.logits, &y)?;
        let count = y.elem_count();
        loss_sum += loss.to_scalar::<f32>()? as f64 * count as f64;
        acc_sum += acc as f64 * count as f64;
        n += count;
        state = fwd.state;
    }
    Ok((loss_sum / n.max(1) as f64, acc_sum / n.max(1) as f64))
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

/// Trains one run into `out`.
pub fn train(cfg: &RunConfig, out: &Path, opts: &TrainOptions) -> Result<RunResult> {
    cfg.validate()?;
    set_threads(cfg.threads);
    let progress = opts.progress;
    let record_path = out.join("run.json");
    let config_path = out.join("config.toml");
    let last_ckpt = checkpoint::path(out, "last");

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
    std::fs::create_dir_all(out).at(out)?;

    let mut say = |m: &str| log_line(progress, m);
    let prepared = corpus::prepare(&cfg.corpus, &cfg.clean, &opts.data_dir, &mut say)?;
    let vocab = &prepared.vocab;
    let (train_split, val_split) =
        batch::split(&prepared.ids, cfg.val_fraction, cfg.batch_size, cfg.seq_len)?;
    let device = crate::device::open(&cfg.device, &mut say)?;
    let dims = Dims {
        vocab: vocab.len(),
        embed_dim: cfg.embed_dim,
        hidden: cfg.hidden,
        layers: cfg.layers,
    };
    let mut model = CharRnn::new(dims, cfg.seed, &device)?;
    model.lstm = opts.lstm;
    let sizes: Vec<usize> = model.params().iter().map(|(_, v)| v.elem_count()).collect();
    let mut optimizer = Optimizer::new(Hyper::from_config(cfg), &sizes);

    let windows = train_split.windows() as u64;
    let total_steps = match (cfg.max_steps, cfg.epochs) {
        (Some(s), Some(e)) => s.min(((e * windows as f64).ceil() as u64).max(1)),
        (Some(s), None) => s,
        (None, Some(e)) => ((e * windows as f64).ceil() as u64).max(1),
        (None, None) => unreachable!("validate() requires max_steps or epochs"),
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
    let mut state: State = model.zero_state(cfg.batch_size)?;
    let mut previous: Option<RunRecord> = None;
    if opts.resume && last_ckpt.exists() {
        let saved_vocab = Vocab::load(&out.join("vocab.json"))?;
        if &saved_vocab != vocab {
            return Err(run_error(
                out,
                "cannot resume: the corpus's vocabulary differs from the run's vocab.json",
            ));
        }
        let (tensors, c) = checkpoint::load(&last_ckpt, &device)?;
        model.load(&tensors)?;
        optimizer.load(c.step, &tensors)?;
        state = (0..cfg.layers)
            .map(|k| {
                let get = |n: &str| {
                    tensors
                        .get(&format!("state/layer_{k}/{n}"))
                        .cloned()
                        .ok_or_else(|| run_error(&last_ckpt, format!("no state/layer_{k}/{n}")))
                };
                Ok((get("h")?, get("c")?))
            })
            .collect::<Result<_>>()?;
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

    let mut record = RunRecord {
        status: RunStatus::Running,
        started: previous
            .as_ref()
            .map(|p| p.started.clone())
            .unwrap_or_else(now),
        ended: None,
        charlab_version: env!("CARGO_PKG_VERSION").into(),
        candle_version: env!("CHARLAB_CANDLE_VERSION").into(),
        git_commit: Some(env!("CHARLAB_GIT_COMMIT").to_string()).filter(|s| !s.is_empty()),
        device: crate::device::name(&device),
        host: crate::summary::hostname(),
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
        first_loss: previous.as_ref().and_then(|p| p.first_loss),
        ln_vocab: (vocab.len() as f64).ln(),
        final_metrics: previous.as_ref().and_then(|p| p.final_metrics),
        best_metrics: previous.as_ref().and_then(|p| p.best_metrics),
        tokens_per_s: 0.0,
        elapsed_secs: cursor.elapsed_secs,
        message: None,
    };
    let write_record = |r: &RunRecord| {
        crate::atomic::write(
            &record_path,
            serde_json::to_string_pretty(r)
                .unwrap_or_default()
                .as_bytes(),
        )
    };
    write_record(&record)?;

    let mut events = EventWriter::create(out)?;
    if cursor.step > 0 {
        events.purge_from(cursor.step + 1)?;
    } else {
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
    events.session_start(&hparams, "")?;
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
    let reporter = Reporter::new(progress, total_steps, cursor.step);
    let mut rng = Rng::from_state(cursor.rng);
    let param_vars: Vec<&candle_core::Var> = model.params().iter().map(|(_, v)| v).collect();
    let (mut sum_loss, mut sum_acc, mut n_logged) = (0f64, 0f64, 0u64);
    let mut interval_start = Instant::now();
    let mut interval_tokens = 0u64;
    let mut train_secs = 0f64;
    let tokens_per_step = (cfg.batch_size * cfg.seq_len) as u64;
    let started_step = cursor.step;
    let mut status = RunStatus::Completed;
    let mut last_train_loss = f64::NAN;

    while cursor.step < total_steps {
        if opts
            .stop_after
            .is_some_and(|n| cursor.step - started_step >= n)
        {
            status = RunStatus::Interrupted;
            break;
        }
        let step_start = Instant::now();
        let (x, y) = window_tensors(&train_split.window(cursor.window), &device)?;
        let fwd = model.forward(&x, &state, Some((cfg.dropout, &mut rng)))?;
        let (loss, acc) = model::loss_and_accuracy(&fwd.logits, &y)?;
        let loss_v = loss.to_scalar::<f32>()? as f64;
        // A uniform guess costs ln V; ten times that is no longer training.
        if !loss_v.is_finite() || loss_v > 10.0 * record.ln_vocab.max(1.0) {
            status = RunStatus::Diverged;
            record.message = Some(format!("loss became {loss_v} at step {}", cursor.step + 1));
            reporter.line(&format!(
                "diverged: loss is {loss_v} at step {}",
                cursor.step + 1
            ));
            break;
        }
        if cursor.step == 0 {
            record.first_loss = Some(loss_v);
            reporter.line(&format!(
                "step 1: loss {loss_v:.4}, ln(vocab) = {:.4} (a fresh model should start near it)",
                record.ln_vocab
            ));
        }
        let grads_store = loss.backward()?;
        let grads: Vec<Tensor> = param_vars
            .iter()
            .map(|v| {
                grads_store
                    .get(v.as_tensor())
                    .cloned()
                    .map_or_else(|| v.zeros_like(), Ok)
            })
            .collect::<candle_core::Result<_>>()?;
        let norm = optim::global_norm(&grads)?;
        let epoch_f = cursor.epoch as f64 + cursor.window as f64 / windows as f64;
        let lr = optim::lr_at(cfg, cursor.step, epoch_f, total_steps);
        let scale = if cfg.grad_clip > 0.0 && norm > cfg.grad_clip {
            (cfg.grad_clip / norm) as f32
        } else {
            1.0
        };
        let next_step = cursor.step + 1;
        if cfg.histogram_every > 0
            && (next_step.is_multiple_of(cfg.histogram_every) || next_step == 1)
        {
            for ((name, var), g) in model.params().iter().zip(&grads) {
                events.histogram(
                    &format!("weights/{name}"),
                    next_step,
                    &var.flatten_all()?.to_vec1::<f32>()?,
                )?;
                events.histogram(
                    &format!("gradients/{name}"),
                    next_step,
                    &g.flatten_all()?.to_vec1::<f32>()?,
                )?;
            }
        }
        optimizer.step(&param_vars, &grads, lr, scale)?;

        state = fwd.state;
        cursor.window += 1;
        if cursor.window as u64 >= windows {
            cursor.window = 0;
            cursor.epoch += 1;
            state = model.zero_state(cfg.batch_size)?;
        }
        cursor.step = next_step;
        cursor.tokens += tokens_per_step;
        interval_tokens += tokens_per_step;
        sum_loss += loss_v;
        sum_acc += acc as f64;
        n_logged += 1;
        train_secs += step_start.elapsed().as_secs_f64();

        if cursor.step.is_multiple_of(cfg.log_every) || cursor.step == total_steps {
            let tps = interval_tokens as f64 / interval_start.elapsed().as_secs_f64().max(1e-9);
            last_train_loss = sum_loss / n_logged as f64;
            events.scalar("train/loss", cursor.step, last_train_loss)?;
            events.scalar("train/accuracy", cursor.step, sum_acc / n_logged as f64)?;
            events.scalar(
                "train/bpc",
                cursor.step,
                last_train_loss / std::f64::consts::LN_2,
            )?;
            events.scalar("lr", cursor.step, lr)?;
            events.scalar("grad_norm", cursor.step, norm)?;
            events.scalar("throughput/chars_per_s", cursor.step, tps)?;
            reporter.step(cursor.step, total_steps, last_train_loss, tps);
            (sum_loss, sum_acc, n_logged) = (0.0, 0.0, 0);
            interval_tokens = 0;
            interval_start = Instant::now();
        }

        if cursor.step.is_multiple_of(cfg.eval_every) || cursor.step == total_steps {
            let (val_loss, val_acc) = evaluate(&model, &val_split)?;
            let metrics = Metrics {
                step: cursor.step,
                val_loss,
                val_accuracy: val_acc,
                val_bpc: val_loss / std::f64::consts::LN_2,
                train_loss: last_train_loss,
            };
            events.scalar("val/loss", cursor.step, val_loss)?;
            events.scalar("val/accuracy", cursor.step, val_acc)?;
            events.scalar("val/bpc", cursor.step, metrics.val_bpc)?;
            let text = eval_sample(&model, vocab, &val_split, cfg, cursor.step)?;
            events.text("samples/generated", cursor.step, &text)?;
            reporter.line(&format!(
                "step {}: val loss {val_loss:.4}, bpc {:.3}, accuracy {:.3}",
                cursor.step, metrics.val_bpc, val_acc
            ));
            cursor.rng = rng.state();
            cursor.elapsed_secs = record.elapsed_secs + train_secs;
            let improved = cursor.best_val_loss.is_none_or(|b| val_loss < b);
            if improved {
                cursor.best_val_loss = Some(val_loss);
                cursor.best_step = Some(cursor.step);
                record.best_metrics = Some(metrics);
            }
            // The events up to this step reach the disk before the checkpoint that a resume
            // would start from, so a resume never loses points it will not rewrite.
            events.sync()?;
            let mut tensors = model.tensors();
            tensors.extend(optimizer.tensors()?);
            for (k, (h, c)) in state.iter().enumerate() {
                tensors.insert(format!("state/layer_{k}/h"), h.clone());
                tensors.insert(format!("state/layer_{k}/c"), c.clone());
            }
            checkpoint::save(&last_ckpt, &tensors, &cursor)?;
            if improved {
                checkpoint::save(&checkpoint::path(out, "best"), &tensors, &cursor)?;
            }
            record.final_metrics = Some(metrics);
            record.steps = cursor.step;
            record.epoch = cursor.epoch as f64 + cursor.window as f64 / windows as f64;
            record.tokens_per_s = (cursor.tokens as f64) / cursor.elapsed_secs.max(1e-9);
            let mut snapshot = record.clone();
            snapshot.elapsed_secs = cursor.elapsed_secs;
            write_record(&snapshot)?;
        }
    }
    reporter.finish();

    record.elapsed_secs += train_secs;
    record.status = status;
    record.ended = Some(now());
    if status != RunStatus::Interrupted {
        record.steps = cursor.step;
    }
    // TensorBoard keeps the first `session_end_info` it reads for a run, so a run that will be
    // resumed writes none: its end is written once, by the invocation that ends it.
    match status {
        RunStatus::Completed => events.session_end(SessionStatus::Success)?,
        RunStatus::Diverged | RunStatus::Failed => events.session_end(SessionStatus::Failure)?,
        RunStatus::Interrupted | RunStatus::Running => {}
    }
    events.sync()?;
    write_record(&record)?;
    if let Some(m) = record.final_metrics {
        log_line(
            progress,
            &format!(
                "{status}: {} steps, val loss {:.4} (best {:.4} at step {}), {:.0} chars/s",
                record.steps,
                m.val_loss,
                record.best_metrics.map_or(m.val_loss, |b| b.val_loss),
                record.best_metrics.map_or(m.step, |b| b.step),
                record.tokens_per_s
            ),
        );
    }
    Ok(RunResult {
        status,
        record,
        out: out.to_path_buf(),
    })
}

/// The text sample written at an evaluation: primed with the first char of the validation
/// split, seeded by the step so a resumed run writes the same sample.
fn eval_sample(
    model: &CharRnn,
    vocab: &Vocab,
    val: &Split,
    cfg: &RunConfig,
    step: u64,
) -> Result<String> {
    let prime = vec![val.window(0).x[0]];
    let mut rng = Rng::new(cfg.seed ^ step, 3);
    let ids = sample::generate(
        model,
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

//! Getting a run ready to step: the prepared data and its splits, the model and optimizer (fresh
//! or restored from the run's checkpoint), the run record and the event file.

use super::hparams::{hparam_declarations, hparam_values, resumable, METRICS, OBSERVATION_KEYS};
use super::{log_line, TrainOptions};
use crate::batch::{self, Split};
use crate::checkpoint::{self, Cursor};
use crate::config::RunConfig;
use crate::corpus::Prepared;
use crate::error::{Error, IoContext, Result};
use crate::model::precision::{self, Products};
use crate::model::{CharRnn, Dims, State};
use crate::optim::{Hyper, Optimizer};
use crate::rng::Rng;
use crate::run_dir::{
    now, CorpusInfo, EvalPoint, Metrics, RunDir, RunRecord, RunStatus, TrainPoint,
};
use crate::summary::EventWriter;
use crate::tags;
use candle_core::Device;
use std::collections::BTreeMap;

/// The run's data: the prepared corpus and its train and validation streams.
pub(super) struct Data {
    pub prepared: Prepared,
    pub train: Split,
    pub val: Split,
}

impl Data {
    pub fn prepare(
        cfg: &RunConfig,
        data_dir: &std::path::Path,
        say: &mut dyn FnMut(&str),
    ) -> Result<Data> {
        let prepared = crate::corpus::prepare(&cfg.corpus, &cfg.clean, data_dir, say)?;
        let (train, val) =
            batch::split(&prepared.ids, cfg.val_fraction, cfg.batch_size, cfg.seq_len)?;
        Ok(Data {
            prepared,
            train,
            val,
        })
    }

    pub fn dims(&self, cfg: &RunConfig) -> Dims {
        Dims::of(cfg, self.prepared.vocab.len())
    }

    /// Windows in one pass over the training split.
    pub fn windows(&self) -> u64 {
        self.train.windows() as u64
    }

    /// Epochs done at `c`, with the fraction of the current one.
    pub fn epoch(&self, c: &Cursor) -> f64 {
        c.epoch as f64 + c.window as f64 / self.windows() as f64
    }

    /// Steps of the whole run (see [`RunConfig::total_steps`]).
    pub fn total_steps(&self, cfg: &RunConfig) -> Result<u64> {
        cfg.total_steps(self.windows())
            .ok_or_else(|| Error::invalid("max_steps", "set `max_steps` or `epochs`"))
    }
}

fn run_error(run: &RunDir, message: impl Into<String>) -> Error {
    Error::Run {
        path: run.path().to_path_buf(),
        message: message.into(),
    }
}

fn check_resumable(saved: &RunConfig, now: &RunConfig, run: &RunDir) -> Result<()> {
    let table = |c: &RunConfig| match toml::Value::try_from(c) {
        Ok(toml::Value::Table(t)) => t,
        _ => Default::default(),
    };
    let (a, b) = (table(saved), table(now));
    let mut changed: Vec<&str> = a
        .keys()
        .chain(b.keys())
        .filter(|k| !resumable(k) && a.get(*k) != b.get(*k))
        .map(String::as_str)
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    changed.dedup();
    Err(Error::usage(
        run.path(),
        format!(
            "cannot resume: the config differs from the run's in {} (only max_steps, epochs, \
             precision and {} may change)",
            changed.join(", "),
            OBSERVATION_KEYS.join(", ")
        ),
    ))
}

/// What a run continues from: a fresh start or its checkpoint.
pub(super) struct Resumed {
    pub cursor: Cursor,
    pub state: State,
    /// What the invocations before this one recorded.
    pub previous: Option<History>,
}

/// What a run's earlier invocations recorded, which the next one carries over.
pub(super) struct History {
    started: String,
    first_loss: Option<f64>,
    last_train_loss: Option<f64>,
    final_metrics: Option<Metrics>,
    best_metrics: Option<Metrics>,
    evals: Vec<EvalPoint>,
    early: Option<TrainPoint>,
    tokens_per_s: f64,
}

impl History {
    fn of(r: RunRecord) -> Self {
        History {
            started: r.started,
            first_loss: r.first_loss,
            last_train_loss: r.last_train_loss,
            final_metrics: r.final_metrics,
            best_metrics: r.best_metrics,
            evals: r.evals,
            early: r.early,
            tokens_per_s: r.tokens_per_s,
        }
    }

    /// The same, read back from the scalars of the run's event files up to `step`, for a run
    /// whose `run.json` was lost: every evaluation wrote its val loss, accuracy and bits per
    /// char there (as f32, so the rebuilt figures carry f32's precision).
    fn from_events(series: &BTreeMap<String, Vec<(u64, f64)>>, step: u64) -> Self {
        let upto = |tag: &str| -> Vec<(u64, f64)> {
            let points = series.get(tag).map(Vec::as_slice).unwrap_or_default();
            points.iter().filter(|(s, _)| *s <= step).copied().collect()
        };
        let (val, acc, bpc, train) = (
            upto(tags::VAL_LOSS),
            upto(tags::VAL_ACCURACY),
            upto(tags::VAL_BPC),
            upto(tags::TRAIN_LOSS),
        );
        let at = |points: &[(u64, f64)], s: u64| points.iter().find(|p| p.0 == s).map(|p| p.1);
        let metrics = |&(s, loss): &(u64, f64)| Metrics {
            step: s,
            val_loss: loss,
            val_accuracy: at(&acc, s).unwrap_or(f64::NAN),
            val_bpc: at(&bpc, s).unwrap_or(loss / std::f64::consts::LN_2),
            train_loss: train
                .iter()
                .rev()
                .find(|p| p.0 <= s)
                .map_or(f64::NAN, |p| p.1),
        };
        // The first of equal minima, as the trainer keeps the first improvement.
        let best = val.iter().fold(None::<&(u64, f64)>, |b, p| match b {
            Some(b) if p.1 < b.1 => Some(p),
            Some(b) => Some(b),
            None => Some(p),
        });
        History {
            started: now(),
            first_loss: train.first().filter(|p| p.0 == 1).map(|p| p.1),
            last_train_loss: train.last().map(|p| p.1),
            final_metrics: val.last().map(metrics),
            best_metrics: best.map(metrics),
            evals: val
                .iter()
                .map(|&(step, val_loss)| EvalPoint { step, val_loss })
                .collect(),
            // Its mean is not among the scalars: the run's siblings go without it.
            early: None,
            tokens_per_s: upto(tags::CHARS_PER_S).last().map_or(0.0, |p| p.1),
        }
    }
}

/// The history of a run being resumed from step `step`: its record's, or when `run.json` is
/// damaged or gone, what its event files hold (a damaged record is kept as `run.json.damaged`).
fn history(run: &RunDir, step: u64, say: &mut dyn FnMut(&str)) -> Result<History> {
    let lost = match run.read_record() {
        Ok(Some(r)) => return Ok(History::of(r)),
        Ok(None) => format!("{}: missing", run.record_path().display()),
        Err(e) => {
            let keep = run.path().join("run.json.damaged");
            std::fs::copy(run.record_path(), &keep).at(&keep)?;
            format!("{e}; kept as run.json.damaged")
        }
    };
    let h = History::from_events(&crate::summary::read_scalars(run.path())?, step);
    say(&format!(
        "{lost}; rebuilt the run's metrics from its event files ({} evaluations up to step {step})",
        h.evals.len()
    ));
    Ok(h)
}

fn fresh(cfg: &RunConfig, model: &CharRnn) -> Resumed {
    Resumed {
        cursor: Cursor {
            step: 0,
            epoch: 0,
            window: 0,
            rng: Rng::new(cfg.seed, 2).state(),
            tokens: 0,
            elapsed_secs: 0.0,
            best_val_loss: None,
            best_step: None,
        },
        state: model.zero_state(cfg.batch_size),
        previous: None,
    }
}

/// Restores the model, the optimizer and the carried state from the run's newest intact
/// checkpoint; a run without one starts fresh.
fn resume(
    cfg: &RunConfig,
    run: &RunDir,
    data: &Data,
    model: &CharRnn,
    optimizer: &mut Optimizer,
    say: &mut dyn FnMut(&str),
) -> Result<Resumed> {
    let (latest, problems) = checkpoint::load_latest(run, model.device())?;
    for p in problems {
        say(&format!("{p}; falling back to the previous checkpoint"));
    }
    let Some((tensors, cursor)) = latest else {
        return Ok(fresh(cfg, model));
    };
    if run.load_vocab()? != data.prepared.vocab {
        return Err(Error::usage(
            run.path(),
            "cannot resume: the corpus's vocabulary differs from the run's vocab.json",
        ));
    }
    if crate::model::is_legacy_checkpoint(&tensors) {
        return Err(Error::usage(
            run.path(),
            "cannot resume: the run was written by an older charlab (one LSTM bias, before \
             PyTorch's two); it can still be sampled, or train it anew in another directory",
        ));
    }
    model.load(&tensors)?;
    optimizer.load(cursor.step, &tensors)?;
    let state = State::from_tensors(&tensors, cfg.layers, cfg.batch_size, cfg.hidden)
        .map_err(|m| run_error(run, m))?;
    say(&format!(
        "resuming {} from step {}",
        run.path().display(),
        cursor.step
    ));
    let previous = Some(history(run, cursor.step, say)?);
    Ok(Resumed {
        cursor,
        state,
        previous,
    })
}

/// The record of this invocation, carrying over what earlier ones of the same run recorded.
fn new_record(
    data: &Data,
    model: &CharRnn,
    r: &Resumed,
    total_steps: u64,
    precision: crate::run_dir::Precision,
    cfg: &RunConfig,
) -> RunRecord {
    let prev = r.previous.as_ref();
    let c = &r.cursor;
    let vocab = data.prepared.vocab.len();
    RunRecord {
        status: RunStatus::Running,
        started: prev.map(|p| p.started.clone()).unwrap_or_else(now),
        ended: None,
        charlab_version: env!("CARGO_PKG_VERSION").into(),
        candle_version: env!("CHARLAB_CANDLE_VERSION").into(),
        git_commit: Some(env!("CHARLAB_GIT_COMMIT").to_string()).filter(|s| !s.is_empty()),
        device: crate::device::name(model.device()),
        precision: Some(precision),
        host: crate::host::hostname(),
        pid: std::process::id(),
        command: std::env::args().collect(),
        corpus: CorpusInfo {
            spec: cfg.corpus.clone(),
            source: data.prepared.source.clone(),
            key: data.prepared.key.clone(),
            chars: data.prepared.ids.len(),
            vocab,
            train_chars: data.train.chars_per_pass(),
            val_chars: data.val.chars_per_pass(),
        },
        params: model.num_params(),
        steps: c.step,
        total_steps,
        epoch: data.epoch(c),
        first_loss: prev.and_then(|p| p.first_loss),
        ln_vocab: (vocab as f64).ln(),
        last_train_loss: prev.and_then(|p| p.last_train_loss),
        final_metrics: prev.and_then(|p| p.final_metrics),
        best_metrics: prev.and_then(|p| p.best_metrics),
        evals: prev
            .map(|p| {
                p.evals
                    .iter()
                    .filter(|e| e.step <= c.step)
                    .copied()
                    .collect()
            })
            .unwrap_or_default(),
        early: prev.and_then(|p| p.early).filter(|e| e.step <= c.step),
        tokens_per_s: prev.map_or(0.0, |p| p.tokens_per_s),
        elapsed_secs: c.elapsed_secs,
        message: None,
    }
}

/// A new event file for this invocation: the purge of what a crashed one wrote after its
/// checkpoint, the graph (once per run), HParams.
fn open_events(
    cfg: &RunConfig,
    opts: &TrainOptions,
    run: &RunDir,
    model: &CharRnn,
    step: u64,
) -> Result<EventWriter> {
    let mut events = EventWriter::create(run.path())?;
    // A resumed run drops what earlier invocations wrote after its checkpoint; one that crashed
    // before its first checkpoint starts over, so it drops everything from step 1.
    if opts.resume {
        events.purge_from(step + 1)?;
    }
    if step == 0 {
        events.graph(&model.graph(cfg.batch_size, cfg.seq_len))?;
    }
    let hparams = hparam_values(cfg);
    if opts.write_experiment {
        events.hparams_experiment(&hparam_declarations(&[], Some(cfg)), METRICS)?;
    }
    // A population member's session is written when it ends ([`TrainOptions::lineage`]).
    if opts.lineage.is_none() {
        events.session_start(&hparams, opts.group.as_deref().unwrap_or(""))?;
    }
    events.flush()?;
    Ok(events)
}

/// A run ready for its first step (or its next one, resumed): what [`start`] made, and what
/// the trainer takes over.
pub(super) struct Ready {
    pub run: RunDir,
    pub model: CharRnn,
    pub optimizer: Optimizer,
    pub data: Data,
    pub resumed: Resumed,
    pub record: RunRecord,
    pub events: EventWriter,
    pub products: Products,
}

/// Everything up to the first step: a fresh run, or the continuation of the run in `run`.
pub(super) fn start(
    cfg: &RunConfig,
    opts: &TrainOptions,
    run: RunDir,
    data: Data,
    device: Device,
) -> Result<Ready> {
    let mut say = |m: &str| log_line(opts.progress, m);
    if run.record_path().exists() && !opts.resume {
        return Err(Error::usage(
            run.path(),
            "already holds a run: pass --resume to continue it, or choose another --out",
        ));
    }
    if opts.resume && run.config_path().exists() {
        check_resumable(&run.load_config()?, cfg, &run)?;
    }
    let model = CharRnn::new(data.dims(cfg), cfg.seed, &device)?;
    let sizes: Vec<usize> = model.params().iter().map(|(_, v)| v.elem_count()).collect();
    let mut optimizer = Optimizer::new(Hyper::from_config(cfg), &sizes);
    let resumed = if opts.resume {
        resume(cfg, &run, &data, &model, &mut optimizer, &mut say)?
    } else {
        fresh(cfg, &model)
    };
    run.save_config(cfg)?;
    run.save_vocab(&data.prepared.vocab)?;
    let total_steps = data.total_steps(cfg)?;
    let (products, why) = precision::resolve(cfg.precision, device.is_cpu());
    let resolved = crate::run_dir::Precision {
        products: products.name().into(),
        why: why.clone(),
    };
    let record = new_record(&data, &model, &resumed, total_steps, resolved, cfg);
    let events = open_events(cfg, opts, &run, &model, resumed.cursor.step)?;
    say(&format!(
        "{}: {} params, vocab {}, {} train / {} val chars, {} steps on {}",
        run.path().display(),
        model.num_params(),
        data.prepared.vocab.len(),
        data.train.chars_per_pass(),
        data.val.chars_per_pass(),
        total_steps,
        record.device
    ));
    say(&format!("precision: {why}"));
    Ok(Ready {
        run,
        model,
        optimizer,
        data,
        resumed,
        record,
        events,
        products,
    })
}

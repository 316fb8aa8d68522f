//! The step loop of a run: a training step, the scalars of each logging interval, an
//! evaluation (with its text sample, early stopping and pruning), checkpoints, and the end of
//! the run (its status, the HParams session end, the final record).

use super::progress::Reporter;
use super::setup::{Data, Ready};
use super::{log_line, Reading, RunResult, TrainOptions, Verdict};
use crate::checkpoint::{self, Cursor};
use crate::config::RunConfig;
use crate::error::Result;
use crate::model::cpu::Sums;
use crate::model::{Backend, CharRnn, State};
use crate::optim::{self, Optimizer};
use crate::rng::Rng;
use crate::run_dir::{
    now, Checkpoint, EvalPoint, Metrics, RunDir, RunRecord, RunStatus, TrainPoint,
};
use crate::sample;
use crate::summary::{EventWriter, SessionStatus};
use crate::tags;
use std::time::Instant;

/// Whether a loss says the model has blown up: not finite, or over `times` × ln V, the loss of a
/// uniform guess over the vocabulary (at least `times`, for vocabularies of one or two chars).
pub fn blown_up(loss: f64, ln_vocab: f64, times: f64) -> bool {
    !loss.is_finite() || loss > times * ln_vocab.max(1.0)
}

/// The keys traced as `hparams/<key>` scalars: those the options name, then those the config's
/// phases set.
fn traced_keys(cfg: &RunConfig, opts: &TrainOptions) -> Vec<String> {
    let mut keys = opts.trace.clone();
    for k in cfg.phases.iter().flat_map(|p| p.values.keys()) {
        if !keys.contains(k) {
            keys.push(k.clone());
        }
    }
    keys
}

/// Why the loop stopped before its last step.
enum Stop {
    /// The loss became non-finite or absurd.
    Diverged(String),
    /// `patience` evaluations without improvement (early stopping): the run is complete.
    Patience(String),
    /// The sweep's pruning rule stopped it.
    Pruned(String),
    /// A signal or the invocation's step budget: it checkpointed and will resume.
    Interrupted(String),
    /// A population's boundary (`pause_every`): it checkpointed and waits for the sweep.
    Paused(String),
    /// Over one of the sweep's constraints.
    Infeasible(String),
}

impl Stop {
    fn status(&self) -> RunStatus {
        match self {
            Stop::Diverged(_) => RunStatus::Diverged,
            Stop::Patience(_) => RunStatus::Completed,
            Stop::Pruned(_) => RunStatus::Pruned,
            Stop::Interrupted(_) => RunStatus::Interrupted,
            Stop::Paused(_) => RunStatus::Paused,
            Stop::Infeasible(_) => RunStatus::Infeasible,
        }
    }

    fn message(&self) -> &str {
        match self {
            Stop::Diverged(m)
            | Stop::Patience(m)
            | Stop::Pruned(m)
            | Stop::Interrupted(m)
            | Stop::Paused(m)
            | Stop::Infeasible(m) => m,
        }
    }
}

/// Training losses and accuracies since the last scalar point.
struct Interval {
    loss: f64,
    accuracy: f64,
    steps: u64,
    tokens: u64,
    start: Instant,
}

impl Interval {
    fn new() -> Self {
        Interval {
            loss: 0.0,
            accuracy: 0.0,
            steps: 0,
            tokens: 0,
            start: Instant::now(),
        }
    }
}

/// Everything a run holds while it trains.
pub(super) struct Trainer<'a> {
    cfg: &'a RunConfig,
    /// `cfg` with the `[[phases]]` begun so far laid over it: the values in force now.
    now: RunConfig,
    /// How many phases `now` holds.
    phase: usize,
    /// Keys written as `hparams/<key>` scalars: the options' and the phases'.
    trace: Vec<String>,
    /// The options' note, until the first step writes it.
    note: Option<String>,
    opts: &'a TrainOptions,
    run: RunDir,
    model: CharRnn,
    backend: Backend,
    optimizer: Optimizer,
    data: Data,
    total_steps: u64,
    cursor: Cursor,
    state: State,
    rng: Rng,
    events: EventWriter,
    record: RunRecord,
    reporter: Reporter,
    interval: Interval,
    /// Seconds spent training in this invocation.
    train_secs: f64,
    last_record_write: Instant,
    evals_without_improvement: u32,
    /// Training losses summed over the steps before the early point, and their count.
    early: (f64, u32),
    /// Whether the early point's verdict ([`Self::record`]'s `early`) still waits for a sibling
    /// to pass it ([`Verdict::Wait`]).
    early_open: bool,
}

impl<'a> Trainer<'a> {
    /// Takes over a run [`super::setup::start`] made ready, and writes its record.
    pub fn new(cfg: &'a RunConfig, opts: &'a TrainOptions, ready: Ready) -> Result<Self> {
        let Ready {
            run,
            model,
            optimizer,
            data,
            resumed,
            record,
            events,
            products,
        } = ready;
        let total_steps = record.total_steps;
        let now = cfg.at_step(resumed.cursor.step);
        let mut optimizer = optimizer;
        optimizer.hyper = optim::Hyper::from_config(&now);
        let t = Trainer {
            cfg,
            phase: cfg.phase_at(resumed.cursor.step),
            now,
            trace: traced_keys(cfg, opts),
            note: opts
                .note
                .as_ref()
                .filter(|(step, _)| *step == resumed.cursor.step)
                .map(|(_, text)| text.clone()),
            opts,
            run,
            backend: Backend::for_model(&model, products)?,
            model,
            optimizer,
            data,
            total_steps,
            reporter: Reporter::new(opts.progress, total_steps, resumed.cursor.step),
            rng: Rng::from_state(resumed.cursor.rng),
            cursor: resumed.cursor,
            state: resumed.state,
            events,
            record,
            interval: Interval::new(),
            train_secs: 0.0,
            last_record_write: Instant::now(),
            // Best-so-far comes from the checkpoint, so patience counts from the resume point.
            evals_without_improvement: 0,
            early: (0.0, 0),
            early_open: false,
        };
        t.run.write_record(&t.record)?;
        Ok(t)
    }

    /// One optimizer step. Returns a stop reason when the loss diverged.
    fn step(&mut self) -> Result<Option<Stop>> {
        let cfg = self.cfg;
        let step_start = Instant::now();
        self.enter_phase();
        let win = self.data.train.window(self.cursor.window);
        let sums = self.backend.train(
            &self.model,
            (&win.x, &win.y, win.seq_len),
            &mut self.state,
            self.now.dropout,
            &mut self.rng,
        )?;
        let (loss, acc) = (sums.loss / sums.count as f64, sums.hits / sums.count as f64);
        let next_step = self.cursor.step + 1;
        // One batch's loss is noisy: only ten times a uniform guess's stops the run here.
        if blown_up(loss, self.record.ln_vocab, 10.0) {
            return Ok(Some(Stop::Diverged(format!(
                "loss became {loss} at step {next_step}"
            ))));
        }
        if self.cursor.step == 0 {
            self.record.first_loss = Some(loss);
            self.reporter.line(&format!(
                "step 1: loss {loss:.4}, ln(vocab) = {:.4} (a fresh model should start near it)",
                self.record.ln_vocab
            ));
        }
        let (lr, norm) = self.update(next_step)?;
        self.advance_window();
        self.cursor.step = next_step;
        if let Some(note) = self.note.take() {
            self.events.text(tags::PBT_EXPLOIT, next_step, &note)?;
        }
        let tokens = (cfg.batch_size * cfg.seq_len) as u64;
        self.cursor.tokens += tokens;
        self.interval.tokens += tokens;
        self.interval.loss += loss;
        self.interval.accuracy += acc;
        self.interval.steps += 1;
        let early = super::early_step(self.total_steps);
        if next_step <= early && next_step + super::EARLY_WINDOW > early {
            self.early = (self.early.0 + loss, self.early.1 + 1);
        }
        self.train_secs += step_start.elapsed().as_secs_f64();
        if next_step.is_multiple_of(cfg.log_every) || next_step == self.total_steps {
            self.log_scalars(lr, norm)?;
        }
        Ok(None)
    }

    /// Lays the `[[phases]]` that begin at this step over the config (values and optimizer).
    fn enter_phase(&mut self) {
        let phase = self.cfg.phase_at(self.cursor.step);
        if phase != self.phase {
            self.phase = phase;
            self.now = self.cfg.at_step(self.cursor.step);
            self.optimizer.hyper = optim::Hyper::from_config(&self.now);
        }
    }

    /// Clips, writes the histograms when due, and applies the optimizer. Returns (lr, norm).
    fn update(&mut self, next_step: u64) -> Result<(f64, f64)> {
        let cfg = self.cfg;
        let norm = self.backend.grad_norm()?;
        let lr = optim::lr_at(
            &self.now,
            self.cursor.step,
            self.data.epoch(&self.cursor),
            self.total_steps,
        );
        let scale = optim::clip_scale(norm, self.now.grad_clip);
        if cfg.histogram_every > 0
            && (next_step.is_multiple_of(cfg.histogram_every) || next_step == 1)
        {
            let grads = self.backend.grads()?;
            for ((name, var), g) in self.model.params().iter().zip(grads) {
                let w = var.flatten_all()?.to_vec1::<f32>()?;
                self.events.histogram(&tags::weights(name), next_step, &w)?;
                self.events
                    .histogram(&tags::gradients(name), next_step, g)?;
            }
        }
        self.backend
            .update(&mut self.optimizer, &self.model, lr, scale)?;
        Ok((lr, norm))
    }

    /// Moves to the next window; after the last one of the split, a new epoch from a zero state.
    fn advance_window(&mut self) {
        self.cursor.window += 1;
        if self.cursor.window as u64 >= self.data.windows() {
            self.cursor.window = 0;
            self.cursor.epoch += 1;
            self.state = self.model.zero_state(self.cfg.batch_size);
        }
    }

    fn log_scalars(&mut self, lr: f64, norm: f64) -> Result<()> {
        let step = self.cursor.step;
        let iv = &self.interval;
        let tps = iv.tokens as f64 / iv.start.elapsed().as_secs_f64().max(1e-9);
        let n = iv.steps.max(1) as f64;
        let (loss, acc) = (iv.loss / n, iv.accuracy / n);
        self.events.scalar(tags::TRAIN_LOSS, step, loss)?;
        self.events.scalar(tags::TRAIN_ACCURACY, step, acc)?;
        self.events
            .scalar(tags::TRAIN_BPC, step, loss / std::f64::consts::LN_2)?;
        self.events.scalar(tags::LR, step, lr)?;
        self.events.scalar(tags::GRAD_NORM, step, norm)?;
        for key in &self.trace {
            if let Some(v) = self.now.explorable(key) {
                self.events.scalar(&tags::hparam(key), step, v)?;
            }
        }
        self.events.scalar(tags::CHARS_PER_S, step, tps)?;
        self.reporter.step(step, self.total_steps, loss, tps);
        self.record.last_train_loss = Some(loss);
        self.record.steps = step;
        // run.json doubles as the live progress a sweep shows; a few writes a second at most.
        if self.last_record_write.elapsed().as_secs_f64() >= 2.0 {
            self.run.write_record(&self.record)?;
            self.last_record_write = Instant::now();
        }
        self.interval = Interval::new();
        Ok(())
    }

    /// Evaluates, writes the scalars and the sample, checkpoints. Returns a stop reason for
    /// early stopping or pruning.
    fn evaluate(&mut self) -> Result<Option<Stop>> {
        let step = self.cursor.step;
        let (val_loss, val_acc) = evaluate(&self.model, &mut self.backend, &self.data.val)?;
        let metrics = Metrics {
            step,
            val_loss,
            val_accuracy: val_acc,
            val_bpc: val_loss / std::f64::consts::LN_2,
            train_loss: self.record.last_train_loss.unwrap_or(f64::NAN),
        };
        self.events.scalar(tags::VAL_LOSS, step, val_loss)?;
        self.events.scalar(tags::VAL_ACCURACY, step, val_acc)?;
        self.events.scalar(tags::VAL_BPC, step, metrics.val_bpc)?;
        let text = self.eval_sample(step)?;
        self.events.text(tags::SAMPLE, step, &text)?;
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
        if let Some(b) = self.record.best_metrics {
            self.events.scalar(tags::BEST_VAL_LOSS, step, b.val_loss)?;
            self.events.scalar(tags::BEST_VAL_BPC, step, b.val_bpc)?;
            self.events
                .scalar(tags::BEST_VAL_ACCURACY, step, b.val_accuracy)?;
            self.events.scalar(tags::BEST_STEP, step, b.step as f64)?;
        }
        self.record.final_metrics = Some(metrics);
        self.record.evals.retain(|e| e.step < step);
        self.record.evals.push(EvalPoint { step, val_loss });
        self.checkpoint(improved)?;
        Ok(self.stop_after_eval(step, val_loss))
    }

    fn stop_after_eval(&self, step: u64, val_loss: f64) -> Option<Stop> {
        // The whole validation split is not noisy: twice a uniform guess's loss has blown up,
        // however finite (lr = 1 evaluates at 4 × ln V); such a run has not "completed".
        let ln_v = self.record.ln_vocab;
        if blown_up(val_loss, ln_v, 2.0) {
            return Some(Stop::Diverged(format!(
                "val loss {val_loss:.4} at step {step} is more than twice ln(vocab) = {ln_v:.4}, \
                 what a uniform guess costs"
            )));
        }
        if let Some(p) = self.cfg.patience {
            if self.evals_without_improvement >= p {
                return Some(Stop::Patience(format!(
                    "early stop: no val/loss improvement in {p} evaluations"
                )));
            }
        }
        let prune = self.opts.prune.as_ref()?;
        (step < self.total_steps
            && prune(step, self.total_steps, Reading::Val(val_loss)) == Verdict::Prune)
            .then(|| Stop::Pruned(format!("pruned at step {step} (val/loss {val_loss:.4})")))
    }

    /// At the early point: records the mean training loss of the steps before it (siblings
    /// compare theirs with it) and asks the pruning hook; while the hook waits for a sibling,
    /// asks again every [`super::EARLY_WINDOW`] steps until the first evaluation, where the
    /// rules take over. A run resumed inside the window averages the steps this invocation saw.
    fn early_point(&mut self) -> Result<Option<Stop>> {
        let step = self.cursor.step;
        let (sum, n) = self.early;
        if step == super::early_step(self.total_steps) && n > 0 && step < self.total_steps {
            let point = TrainPoint {
                step,
                train_loss: sum / n as f64,
            };
            self.record.early = Some(point);
            self.run.write_record(&self.record)?;
            self.early_open = true;
        } else if !step.is_multiple_of(super::EARLY_WINDOW)
            || step >= self.cfg.eval_every.min(self.total_steps)
        {
            return Ok(None);
        }
        let (true, Some(point), Some(prune)) =
            (self.early_open, self.record.early, self.opts.prune.as_ref())
        else {
            return Ok(None);
        };
        let ln_vocab = self.record.ln_vocab;
        let reading = Reading::Early {
            train_loss: point.train_loss,
            ln_vocab,
        };
        match prune(point.step, self.total_steps, reading) {
            Verdict::Wait => Ok(None),
            Verdict::Keep => {
                self.early_open = false;
                Ok(None)
            }
            Verdict::Prune => {
                let at = if point.step == step {
                    String::new()
                } else {
                    format!(" at step {}", point.step)
                };
                Ok(Some(Stop::Pruned(format!(
                    "pruned at step {step}: train/loss {:.4}{at} has come down from ln(vocab) = \
                     {ln_vocab:.4} far less than its siblings' (the early cut)",
                    point.train_loss
                ))))
            }
        }
    }

    /// The text sample written at an evaluation: primed with the first char of the validation
    /// split, seeded by the step so a resumed run writes the same sample.
    fn eval_sample(&mut self, step: u64) -> Result<String> {
        let cfg = self.cfg;
        let prime = vec![self.data.val.window(0).x[0]];
        let mut rng = Rng::new(cfg.seed ^ step, 3);
        let how = sample::Sampling {
            temperature: cfg.sample_temperature,
            top_k: None,
            argmax: false,
        };
        let ids = sample::generate(
            &self.model,
            &mut self.backend,
            &prime,
            cfg.sample_length,
            &how,
            &mut rng,
        )?;
        // Indented lines are a markdown code block: TensorBoard keeps the line breaks.
        Ok(self
            .data
            .prepared
            .vocab
            .decode(&ids)
            .lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// Writes `last` (and `best`) with the current cursor, and the run record.
    fn checkpoint(&mut self, best: bool) -> Result<()> {
        self.cursor.rng = self.rng.state();
        self.cursor.elapsed_secs = self.record.elapsed_secs + self.train_secs;
        // The events up to this step reach the disk before the checkpoint that a resume
        // would start from, so a resume never loses points it will not rewrite.
        self.events.sync()?;
        let mut tensors = self.model.tensors();
        self.backend.sync_optimizer(&mut self.optimizer)?;
        tensors.extend(self.optimizer.tensors()?);
        tensors.extend(self.state.to_tensors()?);
        checkpoint::save_last(&self.run, &tensors, &self.cursor)?;
        if best {
            let path = self.run.checkpoint(Checkpoint::Best);
            checkpoint::save(&path, &tensors, &self.cursor)?;
        }
        self.record.steps = self.cursor.step;
        self.record.epoch = self.data.epoch(&self.cursor);
        self.record.tokens_per_s = self.cursor.tokens as f64 / self.cursor.elapsed_secs.max(1e-9);
        let mut snapshot = self.record.clone();
        snapshot.elapsed_secs = self.cursor.elapsed_secs;
        self.run.write_record(&snapshot)
    }

    /// A signal or the invocation's step budget, as a stop reason.
    fn interruption(&self, started_step: u64) -> Option<Stop> {
        let signal = crate::signals::requested();
        let step = self.cursor.step;
        if signal.is_none()
            && step > started_step
            && (self.opts.pause_every)
                .is_some_and(|n| super::is_boundary(step, n, self.total_steps))
        {
            return Some(Stop::Paused(format!(
                "paused for the population at step {step}"
            )));
        }
        let budget_done = self
            .opts
            .stop_after
            .is_some_and(|n| step - started_step >= n);
        if signal.is_none() && !budget_done {
            return None;
        }
        Some(Stop::Interrupted(
            signal.map_or("step budget reached".to_string(), |s| {
                format!("stopped by {}", crate::signals::name(s))
            }),
        ))
    }

    /// The sweep's constraint this run is over, if any: its size (before any step), or its
    /// training time over all its invocations.
    fn over_limit(&self) -> Option<Stop> {
        let limits = &self.opts.limits;
        if let Some(max) = limits.max_params.filter(|&m| self.record.params as u64 > m) {
            return Some(Stop::Infeasible(format!(
                "{} parameters, over max_params = {max}: not trained",
                self.record.params
            )));
        }
        let secs = self.record.elapsed_secs + self.train_secs;
        let max = limits.max_trial_seconds.filter(|&m| secs > m)?;
        Some(Stop::Infeasible(format!(
            "trained {secs:.1} s at step {}, past max_trial_seconds = {max}",
            self.cursor.step
        )))
    }

    /// Steps until the run ends or stops; returns the status to record.
    pub fn run(&mut self) -> Result<RunStatus> {
        let started_step = self.cursor.step;
        while self.cursor.step < self.total_steps {
            if let Some(stop) = self.over_limit() {
                self.reporter.line(stop.message());
                self.record.message = Some(stop.message().to_string());
                return Ok(stop.status());
            }
            if let Some(stop) = self.interruption(started_step) {
                self.reporter.line(&format!(
                    "{}: checkpointing at step {}",
                    stop.message(),
                    self.cursor.step
                ));
                self.checkpoint(false)?;
                self.record.message = Some(stop.message().to_string());
                return Ok(stop.status());
            }
            let stop = match self.step()? {
                Some(stop) => Some(stop),
                None => self.early_point()?,
            };
            let stop = match stop {
                Some(stop) => Some(stop),
                None if self.cursor.step.is_multiple_of(self.cfg.eval_every)
                    || self.cursor.step == self.total_steps =>
                {
                    self.evaluate()?
                }
                None => None,
            };
            if let Some(stop) = stop {
                self.reporter.line(stop.message());
                self.record.message = Some(stop.message().to_string());
                return Ok(stop.status());
            }
        }
        Ok(RunStatus::Completed)
    }

    /// Records how the run ended: the record, the HParams session end, a summary line.
    pub fn finish(mut self, status: RunStatus) -> Result<RunResult> {
        self.reporter.finish();
        self.record.elapsed_secs += self.train_secs;
        self.record.status = status;
        self.record.ended = Some(now());
        if !matches!(status, RunStatus::Interrupted | RunStatus::Paused) {
            self.record.steps = self.cursor.step;
        }
        // TensorBoard keeps the first `session_end_info` it reads for a run, so a run that will be
        // resumed writes none: its end is written once, by the invocation that ends it. A
        // population member's start too, with the values it ended with.
        if let (Some(lineage), true) = (&self.opts.lineage, status.is_final()) {
            let values = super::hparams::member_values(self.cfg, lineage);
            let group = self.opts.group.as_deref().unwrap_or("");
            self.events.session_start(&values, group)?;
        }
        match status {
            RunStatus::Completed | RunStatus::Pruned => {
                self.events.session_end(SessionStatus::Success)?
            }
            RunStatus::Diverged | RunStatus::Failed | RunStatus::Infeasible => {
                self.events.session_end(SessionStatus::Failure)?
            }
            RunStatus::Interrupted | RunStatus::Paused | RunStatus::Running => {}
        }
        self.events.sync()?;
        self.run.write_record(&self.record)?;
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
            out: self.run.path().to_path_buf(),
        })
    }
}

/// Loss and accuracy on a whole split, from a zero state.
pub fn evaluate(
    model: &CharRnn,
    backend: &mut Backend,
    split: &crate::batch::Split,
) -> Result<(f64, f64)> {
    let mut state = model.zero_state(split.streams());
    let mut sums = Sums::default();
    for w in 0..split.windows() {
        let win = split.window(w);
        sums += backend.eval(model, (&win.x, &win.y, win.seq_len), &mut state)?;
    }
    let n = sums.count.max(1) as f64;
    Ok((sums.loss / n, sums.hits / n))
}

//! Stage 4: one training run, end to end. `train(config, out)` prepares the corpus, trains with
//! truncated BPTT, evaluates on the whole validation split every `eval_every` steps, checkpoints
//! (`last` and `best`), and writes everything TensorBoard shows into the run directory. It is a
//! library function so a sweep can run it in a child process and tests can call it directly.
//!
//! The stages: [`setup`] (data, model, resume, the record and event file), [`trainer`] (the step
//! loop, evaluations, checkpoints, the end of the run), [`hparams`] (what HParams shows),
//! [`progress`] (progress on the terminal).

mod hparams;
mod progress;
mod setup;
mod trainer;

pub use crate::run_dir::{CorpusInfo, EvalPoint, Metrics, RunRecord, RunStatus};
pub use hparams::{
    config_values, hparam_declarations, hparam_type, hparam_value, hparam_values, member_values,
    LINEAGE, METRICS, OBSERVATION_KEYS,
};
pub use progress::{log_line, Console, Progress};
pub use trainer::blown_up;

use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::run_dir::RunDir;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What `train` returns.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub status: RunStatus,
    pub record: RunRecord,
    pub out: PathBuf,
}

/// The step of a run of `total_steps` where its early point is recorded (and a sweep's early
/// cut looks, [`crate::sweep::pruning::hopeless`]): a tenth of the run.
pub fn early_step(total_steps: u64) -> u64 {
    (total_steps / 10).max(1)
}

/// How many steps before the early point its training loss is averaged over: one batch's loss
/// is noisy, and ten steps are still early.
pub const EARLY_WINDOW: u64 = 10;

/// What a pruning hook is asked about at a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reading {
    /// The val loss of an evaluation.
    Val(f64),
    /// The run's early point ([`early_step`]): its mean training loss there, and ln V (what a
    /// fresh model's loss starts at).
    Early { train_loss: f64, ln_vocab: f64 },
}

/// A pruning hook's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Stop the run (status `pruned`).
    Prune,
    /// Nothing to judge the early point against yet (no sibling has passed it): the trainer asks
    /// again every [`EARLY_WINDOW`] steps until its first evaluation. The first trial of a sweep
    /// to reach the point is its cheapest, not its best, and a hopeless one would otherwise
    /// hold a worker to its end while setting the sweep's first result.
    Wait,
}

/// Asked at each evaluation and at the early point with (step, the run's total steps, what was
/// read); an early point is asked about with its own step, however late the asking. The total
/// is known only once the corpus is read (`epochs`).
pub type PruneHook = Arc<dyn Fn(u64, u64, Reading) -> Verdict + Send + Sync>;

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
    pub prune: Option<PruneHook>,
    /// Checkpoint and stop (status `paused`) at each boundary ([`is_boundary`]) after the
    /// start: a population-based sweep decides between the pieces.
    pub pause_every: Option<u64>,
    /// Explorable keys written as `hparams/<key>` scalars at every logging step, so their
    /// schedules show in TensorBoard.
    pub trace: Vec<String>,
    /// A text event (`pbt/exploit`) to write at the first step trained when this invocation
    /// starts from the given step: what a population-based sweep changed in the run there.
    pub note: Option<(u64, String)>,
    /// How long to wait for another process to let go of the run (a sweep's worker waits for
    /// the one its killed predecessor orphaned); none: refuse at once.
    pub lock_wait: std::time::Duration,
    /// A population member's lineage (`200←005 400←001`): its HParams session is written when
    /// it ends, with the values it ended with and this as the `lineage` column, instead of at
    /// its start with its first draw (TensorBoard keeps the first session it reads).
    pub lineage: Option<String>,
    /// A sweep's constraints: over one, the run ends `infeasible`.
    pub limits: Limits,
}

/// What a sweep's trial may not exceed (`[experiment] constraints`).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// More parameters than this: infeasible before its first step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_params: Option<u64>,
    /// Training time over all its invocations past this: infeasible when crossed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_trial_seconds: Option<f64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
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
            data_dir: crate::corpus::data_dir(),
            write_experiment: true,
            stop_after: None,
            group: None,
            prune: None,
            pause_every: None,
            trace: Vec::new(),
            note: None,
            lock_wait: std::time::Duration::ZERO,
            lineage: None,
            limits: Limits::default(),
        }
    }
}

/// True when a run of `total` steps with pieces of `every` steps stops at `step` for its
/// population: the one rule behind the trainer's pause and the sweep's decision there.
pub fn is_boundary(step: u64, every: u64, total: u64) -> bool {
    step > 0 && step.is_multiple_of(every.max(1)) && step < total
}

/// The run's threads: a pool of its own (the config's count, or all cores), so that runs in one
/// process (tests, a library user) each get the count they asked for, and no environment
/// variable has to be set while other threads run.
fn thread_pool(cfg: &RunConfig, out: &Path) -> Result<rayon::ThreadPool> {
    let n = cfg.thread_count();
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .map_err(|e| Error::Run {
            path: out.to_path_buf(),
            message: format!("cannot start {n} threads: {e}"),
        })
}

/// Trains one run into `out`.
pub fn train(cfg: &RunConfig, out: &Path, opts: &TrainOptions) -> Result<RunResult> {
    cfg.validate()?;
    let mut say = |m: &str| log_line(opts.progress, m);
    // Everything that can fail on the user's input (corpus, device, a model too large for the
    // machine) is checked before the run directory is touched: a failed start leaves nothing.
    let data = setup::Data::prepare(cfg, &opts.data_dir, &mut say)?;
    let device = crate::device::open(&cfg.device, &mut say)?;
    let dims = data.dims(cfg);
    if device.is_cpu() {
        crate::model::memory::check(dims, cfg, data.val.streams())?;
    }
    let run = RunDir::new(out);
    let _lock = run.lock(opts.lock_wait, &mut say)?;
    thread_pool(cfg, out)?.install(|| {
        let ready = setup::start(cfg, opts, run, data, device)?;
        let mut trainer = trainer::Trainer::new(cfg, opts, ready)?;
        let status = trainer.run()?;
        trainer.finish(status)
    })
}

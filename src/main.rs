//! The `charlab` command: parses the command line and dispatches to the library. Each
//! subcommand is one `Args` struct here and one library function there.

use anyhow::Context;
use charlab::compare::{CompareOptions, Format};
use charlab::config::RunConfig;
use charlab::run_dir::{Checkpoint, RunStatus};
use charlab::sample::{SampleOptions, Sampling};
use charlab::sweep::plan::SlurmSettings;
use charlab::sweep::{Launcher, SweepOptions};
use charlab::train::{Progress, TrainOptions};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "charlab",
    version,
    about = "Char-LSTM language models: train, sweep, compare, sample — all visible in TensorBoard"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch (named corpora), clean and encode a corpus, and print what cleaning did.
    Prepare(PrepareArgs),
    /// Train one run into a run directory.
    Train(TrainArgs),
    /// Run a sweep: every trial of a TOML grid, each in a child process, resumable.
    Sweep(SweepArgs),
    /// Run (or resume) exactly one trial of a sweep: the contract launchers use.
    SweepWorker(WorkerArgs),
    /// One row per run under a directory: swept values, status, best and final metrics.
    Compare(CompareArgs),
    /// Check a device against the CPU: one training step's loss and every gradient, from the
    /// same weights and batch, must agree to a relative error below 1e-4 (exit 1 otherwise).
    /// With `--device cpu` it checks the CPU kernels against plain step-by-step ops.
    CheckDevice(CheckDeviceArgs),
    /// Generate text from a trained run.
    Sample(SampleArgs),
    /// Write one self-contained HTML report of a sweep: settings, ranked runs, validation
    /// curves, swept keys against the metric, importance, the best run's config and a sample.
    Report(ReportArgs),
    /// Write a new sweep file whose domains are narrowed around a sweep's best trials
    /// (coarse-to-fine).
    Refine(RefineArgs),
}

fn progress(plain: bool) -> Progress {
    if plain {
        Progress::Lines
    } else {
        Progress::Auto
    }
}

#[derive(Args)]
struct PrepareArgs {
    /// A named corpus (hongloumeng, shakespeare) or a text file.
    #[arg(long, default_value = "hongloumeng")]
    corpus: String,
    /// A run config whose `[clean]` table to use (default: the default cleaning).
    #[arg(long)]
    config: Option<PathBuf>,
}

impl PrepareArgs {
    fn run(self) -> anyhow::Result<Ended> {
        let clean = match &self.config {
            Some(p) => RunConfig::load(p)?.clean,
            None => Default::default(),
        };
        let dir = charlab::corpus::data_dir();
        let p = charlab::corpus::prepare(&self.corpus, &clean, &dir, &mut |m| eprintln!("{m}"))
            .with_context(|| format!("preparing corpus `{}`", self.corpus))?;
        println!("corpus: {}", p.source.display());
        println!("{}", p.report);
        println!(
            "vocab: {} chars (ln V = {:.3}){}",
            p.vocab.len(),
            (p.vocab.len() as f64).ln(),
            if p.cached { " [cached]" } else { "" }
        );
        Ok(Ended::Done)
    }
}

#[derive(Args)]
struct TrainArgs {
    /// The run's hyperparameters (TOML; see README). Defaults apply to missing keys.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The run directory (event file, checkpoints, config.toml, vocab.json, run.json).
    #[arg(long)]
    out: PathBuf,
    /// Continue from the run directory's last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Override the config's device: auto, cpu, cuda, cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// Plain log lines instead of a progress bar.
    #[arg(long)]
    plain: bool,
}

impl TrainArgs {
    fn run(self) -> anyhow::Result<Ended> {
        let mut cfg = match &self.config {
            Some(p) => RunConfig::load(p)?,
            None => RunConfig::default(),
        };
        if let Some(d) = self.device {
            cfg.device = d;
        }
        let opts = TrainOptions {
            resume: self.resume,
            progress: progress(self.plain),
            ..Default::default()
        };
        charlab::signals::install();
        let result = charlab::train::train(&cfg, &self.out, &opts)?;
        let ended = Ended::of_run(result.status, SIGINT);
        match ended {
            Ended::Signalled(_) => eprintln!("interrupted: resume with --resume"),
            Ended::Unfinished => eprintln!(
                "run {}: {}",
                result.status,
                result.record.message.unwrap_or_default()
            ),
            Ended::Done => {}
        }
        Ok(ended)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LauncherKind {
    Local,
    Slurm,
}

#[derive(Args)]
struct SweepArgs {
    /// The sweep file (see README "Sweep file reference").
    file: PathBuf,
    /// Print the trial table and count, run nothing.
    #[arg(long)]
    dry_run: bool,
    /// Refuse sweeps with more trials than this, unless --force.
    #[arg(long, default_value_t = 1000)]
    max_trials: usize,
    #[arg(long)]
    force: bool,
    /// Run the trials a changed sweep file adds to an existing experiment.
    #[arg(long)]
    extend: bool,
    /// Retry a failed trial this many times from its last checkpoint.
    #[arg(long)]
    retries: Option<u32>,
    /// Stop the sweep at the first failed trial.
    #[arg(long)]
    fail_fast: bool,
    /// Trials at once (overrides [experiment] jobs).
    #[arg(long)]
    jobs: Option<usize>,
    /// Where experiments go.
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
    /// Plain log lines instead of a progress display.
    #[arg(long)]
    plain: bool,
    /// Also print each population member's pause at every interval (PBT; its decisions are
    /// always printed, and every pause is in the member's worker.log).
    #[arg(long)]
    verbose: bool,
    /// PBT: members advance boundary by boundary and are decided in member order, so the same
    /// file gives the same decisions whatever `jobs`, timing or interruptions (slots wait at
    /// each boundary for the slowest member).
    #[arg(long)]
    deterministic: bool,
    /// Where trials run: local processes, or a Slurm job array (one task per trial).
    #[arg(long, value_enum, default_value_t = LauncherKind::Local)]
    launcher: LauncherKind,
    /// Slurm: print each trial's state (run status, steps, task state) and exit.
    #[arg(long)]
    status: bool,
    /// Slurm: return after submitting instead of watching.
    #[arg(long)]
    detach: bool,
    #[command(flatten)]
    slurm: SlurmSettings,
}

impl SweepArgs {
    fn run(self) -> anyhow::Result<Ended> {
        if self.jobs == Some(0) {
            return Err(charlab::Error::invalid("--jobs", "must be at least 1").into());
        }
        if self.dry_run {
            let plan = charlab::sweep::plan::load(&self.file, self.max_trials, self.force)?;
            println!("{}", charlab::sweep::dry_run_table(&plan, &self.runs));
            return Ok(Ended::Done);
        }
        let slurm = self.launcher == LauncherKind::Slurm;
        if self.deterministic && slurm {
            let why = "is for the local launcher (on Slurm the watcher decides as pieces end)";
            return Err(charlab::Error::invalid("--deterministic", why).into());
        }
        let opts = SweepOptions {
            runs_root: self.runs,
            max_trials: self.max_trials,
            force: self.force,
            extend: self.extend,
            retries: self.retries,
            fail_fast: self.fail_fast,
            jobs: self.jobs,
            progress: progress(self.plain),
            verbose: self.verbose,
            deterministic: self.deterministic,
            launcher: if slurm {
                Launcher::Slurm {
                    flags: self.slurm,
                    detach: self.detach,
                    poll: None,
                }
            } else {
                Launcher::Local
            },
            ..Default::default()
        };
        if self.status {
            print!("{}", charlab::sweep::slurm_status(&self.file, &opts)?);
            return Ok(Ended::Done);
        }
        let outcome = charlab::sweep::sweep(&self.file, &opts)?;
        if self.detach && slurm {
            eprintln!(
                "submitted; `charlab sweep {} --launcher slurm --status` shows the trials",
                self.file.display()
            );
            return Ok(Ended::Done);
        }
        if let Some(sig) = outcome.signal {
            eprintln!("sweep interrupted: run the same command again to resume");
            return Ok(Ended::Signalled(sig));
        }
        if outcome.stopped().is_some() {
            // Stopped by its own rule: done, its unfinished trials resumable.
            return Ok(Ended::unless(outcome.failed() != 0));
        }
        Ok(Ended::unless(outcome.unfinished() != 0))
    }
}

#[derive(Args)]
struct WorkerArgs {
    /// The sweep directory (runs/<experiment>).
    #[arg(long)]
    sweep: PathBuf,
    /// The trial's index in the manifest.
    #[arg(long)]
    index: usize,
    /// CPU threads for this trial.
    #[arg(long)]
    threads: Option<usize>,
    /// Device for this trial.
    #[arg(long)]
    device: Option<String>,
}

impl WorkerArgs {
    fn run(self) -> anyhow::Result<Ended> {
        charlab::signals::install();
        let status = charlab::sweep::worker(
            &self.sweep,
            self.index,
            self.threads,
            self.device,
            &charlab::corpus::data_dir(),
            Progress::Lines,
        )?;
        // A worker that stopped for good (diverged, pruned), or that paused its member at a
        // population-based sweep's boundary, did its job.
        if status.is_final() || status == RunStatus::Paused {
            return Ok(Ended::Done);
        }
        Ok(Ended::of_run(status, SIGTERM))
    }
}

#[derive(Args)]
struct CompareArgs {
    /// A sweep directory (runs/<experiment>), any directory of runs, or one run.
    dir: PathBuf,
    /// val/loss, val/bpc, val/accuracy, final/val/loss, train/loss, time, tokens_per_s, steps, or a swept key.
    #[arg(long, default_value = charlab::tags::VAL_LOSS)]
    sort: String,
    /// Only the best K rows.
    #[arg(long)]
    top: Option<usize>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Rank the swept keys by how much of the metric they explain (functional ANOVA on a random
    /// forest), with their rank correlation and best value, instead of listing the runs.
    #[arg(long)]
    importance: bool,
    /// Only the runs on the Pareto front of the sweep's two objectives ([search] objectives;
    /// best val/loss and time when it names none): those no other run beats on both.
    #[arg(long)]
    pareto: bool,
}

impl CompareArgs {
    fn run(self) -> anyhow::Result<Ended> {
        let opts = CompareOptions {
            sort: self.sort,
            top: self.top,
            format: self.format,
            importance: self.importance,
            pareto: self.pareto,
        };
        let out = charlab::compare::compare(&self.dir, &opts)?;
        warn(&out.skipped);
        print!("{}", out.text);
        Ok(Ended::Done)
    }
}

#[derive(Args)]
struct CheckDeviceArgs {
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Model size: vocab,embed,hidden,layers.
    #[arg(long, default_value = "97,32,64,2")]
    dims: String,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 32)]
    seq: usize,
}

impl CheckDeviceArgs {
    fn run(self) -> anyhow::Result<Ended> {
        let dims = charlab::model::Dims::parse(&self.dims)?;
        if self.batch == 0 || self.seq == 0 {
            return Err(charlab::Error::invalid("--batch/--seq", "must be at least 1").into());
        }
        let dev = charlab::device::open(&self.device, &mut |m| eprintln!("{m}"))?;
        let sections = charlab::model::check_device(&dev, dims, self.batch, self.seq)
            .context("running the check")?;
        let mut ok = true;
        for s in &sections {
            println!("{}: relative error (limit {:e})", s.against, s.limit);
            for r in &s.rows {
                let verdict = if r.rel_err < s.limit { "ok" } else { "FAIL" };
                println!("{:<28} {:>10.2e} {verdict}", r.name, r.rel_err);
            }
            ok &= s.passes();
        }
        println!("{}", if ok { "equivalent" } else { "NOT equivalent" });
        Ok(Ended::unless(!ok))
    }
}

#[derive(Args)]
struct SampleArgs {
    /// The run directory.
    #[arg(long)]
    run: PathBuf,
    /// Which checkpoint: best or last.
    #[arg(long, default_value = "best", value_parser = parse_checkpoint)]
    checkpoint: Checkpoint,
    /// Text to start from (every char must be in the run's vocabulary).
    #[arg(long, default_value = "\n")]
    prime: String,
    /// Chars to generate.
    #[arg(long, default_value_t = 400)]
    length: usize,
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// Sample among the K most likely chars only.
    #[arg(long)]
    top_k: Option<usize>,
    /// Always take the most likely char.
    #[arg(long)]
    argmax: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn parse_checkpoint(s: &str) -> Result<Checkpoint, String> {
    s.parse().map_err(|e: charlab::Error| e.to_string())
}

impl SampleArgs {
    fn run(self) -> anyhow::Result<Ended> {
        let opts = SampleOptions {
            checkpoint: self.checkpoint,
            prime: self.prime,
            length: self.length,
            sampling: Sampling {
                temperature: self.temperature,
                top_k: self.top_k,
                argmax: self.argmax,
            },
            seed: self.seed,
        };
        let mut out = std::io::stdout().lock();
        charlab::sample::sample_to(&self.run, &opts, &mut out)?;
        // The closing newline; a reader that has gone away is not an error.
        let _ = std::io::Write::write_all(&mut out, b"\n");
        Ok(Ended::Done)
    }
}

#[derive(Args)]
struct ReportArgs {
    /// A sweep directory (runs/<experiment>) or any directory of runs.
    dir: PathBuf,
    /// The HTML file to write.
    #[arg(short, long, default_value = "report.html")]
    output: PathBuf,
}

impl ReportArgs {
    fn run(self) -> anyhow::Result<Ended> {
        let w = charlab::report::report(&self.dir, &self.output)?;
        warn(&w.warnings);
        eprintln!(
            "{}: {} runs, {} charts{}",
            w.path.display(),
            w.runs,
            w.charts,
            w.best.map_or(String::new(), |b| format!(", best run {b}"))
        );
        Ok(Ended::Done)
    }
}

#[derive(Args)]
struct RefineArgs {
    /// A finished (or partly finished) sweep directory (runs/<experiment>).
    dir: PathBuf,
    /// Narrow around this many best trials.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Where to write the new sweep file (default: standard output).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Overwrite the output file if it exists.
    #[arg(long)]
    force: bool,
}

impl RefineArgs {
    fn run(self) -> anyhow::Result<Ended> {
        if let Some(p) = self.output.as_ref().filter(|p| p.exists() && !self.force) {
            return Err(charlab::Error::usage(p, "exists; pass --force to overwrite it").into());
        }
        let (text, warnings) = charlab::refine::refine(&self.dir, self.top)?;
        warn(&warnings);
        match &self.output {
            Some(p) => {
                charlab::atomic::write(p, text.as_bytes())?;
                eprintln!("wrote {}", p.display());
            }
            None => print!("{text}"),
        }
        Ok(Ended::Done)
    }
}

/// Files a command could not read but worked around, one line each on stderr.
fn warn(warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}

/// How a command ended. With an error, this is the one place the process's exit code is
/// decided (which errors are the user's: RELIABILITY.md, "Bad input").
enum Ended {
    /// 0.
    Done,
    /// 1: a run that diverged or failed, a sweep with unfinished trials, a device that is not
    /// equivalent.
    Unfinished,
    /// 128 + the signal: stopped by it, checkpointed, resumable.
    Signalled(i32),
}

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

impl Ended {
    /// `Unfinished` when `bad`, else `Done`.
    fn unless(bad: bool) -> Ended {
        if bad {
            Ended::Unfinished
        } else {
            Ended::Done
        }
    }

    /// A run that ended with `status`; an interrupted one by the signal received, or
    /// `assumed` when none was seen here.
    fn of_run(status: RunStatus, assumed: i32) -> Ended {
        match status {
            RunStatus::Completed
            | RunStatus::Pruned
            | RunStatus::Paused
            | RunStatus::Infeasible => Ended::Done,
            RunStatus::Interrupted => {
                Ended::Signalled(charlab::signals::requested().unwrap_or(assumed))
            }
            RunStatus::Running | RunStatus::Diverged | RunStatus::Failed => Ended::Unfinished,
        }
    }
}

/// The exit code of a command's result: [`Ended`]'s, or 2 for an error in what the user gave
/// (a file, a key, a value) and 1 for any other.
fn exit_code(result: &anyhow::Result<Ended>) -> ExitCode {
    match result {
        Ok(Ended::Done) => ExitCode::SUCCESS,
        Ok(Ended::Unfinished) => ExitCode::from(1),
        Ok(Ended::Signalled(sig)) => ExitCode::from(charlab::signals::exit_code(*sig)),
        Err(e) => {
            let user = e.chain().any(|c| {
                c.downcast_ref::<charlab::Error>()
                    .is_some_and(|e| e.is_user_error())
            });
            ExitCode::from(if user { 2 } else { 1 })
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<Ended> {
    match cli.command {
        Command::Prepare(a) => a.run(),
        Command::Train(a) => a.run(),
        Command::Sweep(a) => a.run(),
        Command::SweepWorker(a) => a.run(),
        Command::Compare(a) => a.run(),
        Command::CheckDevice(a) => a.run(),
        Command::Sample(a) => a.run(),
        Command::Report(a) => a.run(),
        Command::Refine(a) => a.run(),
    }
}

fn main() -> ExitCode {
    charlab::tune_allocator();
    let cli = Cli::parse();
    let result = run(cli);
    if let Err(e) = &result {
        // One line: the outermost context, then each cause not already spelled out by the
        // one before it (an I/O error's message includes its OS error).
        let mut msg: Vec<String> = Vec::new();
        for cause in e.chain().map(|c| c.to_string()) {
            if !msg.last().is_some_and(|m| m.contains(&cause)) {
                msg.push(cause);
            }
        }
        eprintln!("error: {}", msg.join(": "));
    }
    exit_code(&result)
}

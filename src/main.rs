//! The `charlab` command: parses the command line and dispatches to the library.

use anyhow::Context;
use charlab::compare::{CompareOptions, Format};
use charlab::config::RunConfig;
use charlab::sample::{SampleOptions, Sampling};
use charlab::sweep::plan::SlurmSettings;
use charlab::sweep::slurm::SlurmOptions;
use charlab::sweep::SweepOptions;
use charlab::train::{Progress, RunStatus, TrainOptions};
use clap::{Parser, Subcommand};
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
    Prepare {
        /// A named corpus (hongloumeng, shakespeare) or a text file.
        #[arg(long, default_value = "hongloumeng")]
        corpus: String,
        /// A run config whose `[clean]` table to use (default: the default cleaning).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Train one run into a run directory.
    Train {
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
    },
    /// Run a sweep: every trial of a TOML grid, each in a child process, resumable.
    Sweep {
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
        /// Where trials run: local processes, or a Slurm job array (one task per trial).
        #[arg(long, value_enum, default_value_t = Launcher::Local)]
        launcher: Launcher,
        /// Slurm: print each trial's state (run status, steps, task state) and exit.
        #[arg(long)]
        status: bool,
        /// Slurm: return after submitting instead of watching.
        #[arg(long)]
        detach: bool,
        /// Slurm: partition (overrides [slurm] partition).
        #[arg(long)]
        partition: Option<String>,
        /// Slurm: generic resources per trial, e.g. gpu:1.
        #[arg(long)]
        gres: Option<String>,
        /// Slurm: time limit per trial, e.g. 02:00:00.
        #[arg(long)]
        time: Option<String>,
        /// Slurm: CPUs per trial (the trial's threads).
        #[arg(long)]
        cpus_per_task: Option<usize>,
        /// Slurm: memory per trial, e.g. 8G.
        #[arg(long)]
        mem: Option<String>,
        /// Slurm: array tasks running at once.
        #[arg(long)]
        array_parallelism: Option<usize>,
        /// Slurm: seconds before the time limit that SIGUSR1 asks a trial to checkpoint and requeue.
        #[arg(long)]
        signal_lead: Option<u32>,
        /// Slurm: one more sbatch option, verbatim (repeatable): --slurm-arg=--account=abc
        #[arg(long, allow_hyphen_values = true)]
        slurm_arg: Vec<String>,
    },
    /// Run (or resume) exactly one trial of a sweep: the contract launchers use.
    SweepWorker {
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
    },
    /// One row per run under a directory: swept values, status, best and final metrics.
    Compare {
        /// A sweep directory (runs/<experiment>) or any directory of runs.
        dir: PathBuf,
        /// val/loss, val/bpc, val/accuracy, final/val/loss, train/loss, time, tokens_per_s, steps, or a swept key.
        #[arg(long, default_value = "val/loss")]
        sort: String,
        /// Only the best K rows.
        #[arg(long)]
        top: Option<usize>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Check a device against the CPU: one training step's loss and every gradient, from the
    /// same weights and batch, must agree to a relative error below 1e-4 (exit 1 otherwise).
    /// With `--device cpu` it checks the fused CPU kernels against plain step-by-step ops.
    CheckDevice {
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Model size: vocab,embed,hidden,layers.
        #[arg(long, default_value = "97,32,64,2")]
        dims: String,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 32)]
        seq: usize,
    },
    /// Generate text from a trained run.
    Sample {
        /// The run directory.
        #[arg(long)]
        run: PathBuf,
        /// Which checkpoint: best or last.
        #[arg(long, default_value = "best")]
        checkpoint: String,
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
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Launcher {
    Local,
    Slurm,
}

fn progress(plain: bool) -> Progress {
    if plain {
        Progress::Lines
    } else {
        Progress::Auto
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::CheckDevice {
            device,
            dims,
            batch,
            seq,
        } => {
            let d: Vec<usize> = dims
                .split(',')
                .map(|x| x.trim().parse::<usize>())
                .collect::<Result<_, _>>()
                .ok()
                .filter(|d: &Vec<usize>| d.len() == 4 && d.iter().all(|&x| x > 0))
                .ok_or_else(|| {
                    charlab::Error::invalid(
                        "--dims",
                        format!(
                            "`{dims}`: expected four positive integers vocab,embed,hidden,layers"
                        ),
                    )
                })?;
            if batch == 0 || seq == 0 {
                return Err(charlab::Error::invalid("--batch/--seq", "must be at least 1").into());
            }
            let dev = charlab::device::open(&device, &mut |m| eprintln!("{m}"))?;
            let dims = charlab::model::Dims {
                vocab: d[0],
                embed_dim: d[1],
                hidden: d[2],
                layers: d[3],
            };
            let (rows, against) = charlab::model::check_device(&dev, dims, batch, seq)
                .context("running the check")?;
            println!("{against}: relative error (limit 1e-4)");
            let mut ok = true;
            for r in &rows {
                let pass = r.rel_err < 1e-4;
                ok &= pass;
                println!(
                    "{:<28} {:>10.2e} {}",
                    r.name,
                    r.rel_err,
                    if pass { "ok" } else { "FAIL" }
                );
            }
            println!("{}", if ok { "equivalent" } else { "NOT equivalent" });
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Prepare { corpus, config } => {
            let clean = match &config {
                Some(p) => RunConfig::load(p)?.clean,
                None => Default::default(),
            };
            let dir = charlab::corpus::data_dir();
            let p = charlab::corpus::prepare(&corpus, &clean, &dir, &mut |m| eprintln!("{m}"))
                .with_context(|| format!("preparing corpus `{corpus}`"))?;
            println!("corpus: {}", p.source.display());
            println!("{}", p.report);
            println!(
                "vocab: {} chars (ln V = {:.3}){}",
                p.vocab.len(),
                (p.vocab.len() as f64).ln(),
                if p.cached { " [cached]" } else { "" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Train {
            config,
            out,
            resume,
            device,
            plain,
        } => {
            let mut cfg = match &config {
                Some(p) => RunConfig::load(p)?,
                None => RunConfig::default(),
            };
            if let Some(d) = device {
                cfg.device = d;
            }
            let opts = TrainOptions {
                resume,
                progress: progress(plain),
                ..Default::default()
            };
            charlab::signals::install();
            let result = charlab::train::train(&cfg, &out, &opts)?;
            Ok(match result.status {
                RunStatus::Completed | RunStatus::Pruned => ExitCode::SUCCESS,
                RunStatus::Interrupted => {
                    let sig = charlab::signals::requested().unwrap_or(2);
                    eprintln!("interrupted: resume with --resume");
                    ExitCode::from(charlab::signals::exit_code(sig))
                }
                _ => {
                    eprintln!(
                        "run {}: {}",
                        result.status,
                        result.record.message.unwrap_or_default()
                    );
                    ExitCode::from(1)
                }
            })
        }
        Command::Sweep {
            file,
            dry_run,
            max_trials,
            force,
            extend,
            retries,
            fail_fast,
            jobs,
            runs,
            plain,
            launcher,
            status,
            detach,
            partition,
            gres,
            time,
            cpus_per_task,
            mem,
            array_parallelism,
            signal_lead,
            slurm_arg,
        } => {
            if dry_run {
                let plan = charlab::sweep::plan::load(&file, max_trials, force)?;
                println!("{}", charlab::sweep::dry_run_table(&plan));
                return Ok(ExitCode::SUCCESS);
            }
            let opts = SweepOptions {
                runs_root: runs,
                max_trials,
                force,
                extend,
                retries,
                fail_fast,
                jobs,
                progress: progress(plain),
                slurm: (launcher == Launcher::Slurm).then(|| SlurmOptions {
                    settings: SlurmSettings {
                        partition,
                        gres,
                        time,
                        cpus_per_task,
                        mem,
                        array_parallelism,
                        signal_lead,
                        args: Some(slurm_arg),
                    },
                    detach,
                    ..Default::default()
                }),
                ..Default::default()
            };
            if status {
                print!("{}", charlab::sweep::slurm_status(&file, &opts)?);
                return Ok(ExitCode::SUCCESS);
            }
            let outcome = charlab::sweep::sweep(&file, &opts)?;
            if detach && launcher == Launcher::Slurm {
                eprintln!(
                    "submitted; `charlab sweep {} --launcher slurm --status` shows the trials",
                    file.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
            if let Some(sig) = outcome.signal {
                eprintln!("sweep interrupted: run the same command again to resume");
                return Ok(ExitCode::from(charlab::signals::exit_code(sig)));
            }
            Ok(if outcome.unfinished() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::SweepWorker {
            sweep,
            index,
            threads,
            device,
        } => {
            charlab::signals::install();
            let status = charlab::sweep::worker(
                &sweep,
                index,
                threads,
                device,
                &charlab::corpus::data_dir(),
                Progress::Lines,
            )?;
            Ok(match status {
                RunStatus::Interrupted => ExitCode::from(charlab::signals::exit_code(
                    charlab::signals::requested().unwrap_or(15),
                )),
                s if s.is_final() => ExitCode::SUCCESS,
                _ => ExitCode::from(1),
            })
        }
        Command::Compare {
            dir,
            sort,
            top,
            format,
        } => {
            let out = charlab::compare::compare(&dir, &CompareOptions { sort, top, format })?;
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Sample {
            run,
            checkpoint,
            prime,
            length,
            temperature,
            top_k,
            argmax,
            seed,
        } => {
            let opts = SampleOptions {
                checkpoint,
                prime,
                length,
                sampling: Sampling {
                    temperature,
                    top_k,
                    argmax,
                },
                seed,
            };
            let text = charlab::sample::sample(&run, &opts)?;
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    charlab::tune_allocator();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line: the outermost context, then each cause not already spelled out by the
            // one before it (an I/O error's message includes its OS error).
            let mut msg: Vec<String> = Vec::new();
            for cause in e.chain().map(|c| c.to_string()) {
                if !msg.last().is_some_and(|m| m.contains(&cause)) {
                    msg.push(cause);
                }
            }
            eprintln!("error: {}", msg.join(": "));
            let user = e.chain().any(|c| {
                c.downcast_ref::<charlab::Error>()
                    .is_some_and(|e| e.is_user_error())
            });
            ExitCode::from(if user { 2 } else { 1 })
        }
    }
}

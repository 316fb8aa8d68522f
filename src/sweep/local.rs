//! The local launcher: `jobs` worker processes at once (or `trials_per_device` per GPU), CPU
//! threads split between them so two jobs on two cores do not oversubscribe, retries from the
//! last checkpoint, per-trial timeouts, fail-fast, and a progress display. On SIGINT/SIGTERM the
//! workers are told to checkpoint and stop, and the sweep exits once they have.

use super::engine::{Engine, Exit, Stop};
use crate::error::{IoContext, Result};
use crate::run_dir::{RunRecord, RunStatus};
use crate::sweep::manifest::Manifest;
use crate::train::{Console, Progress};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How trials are run on this machine.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub jobs: usize,
    pub devices: Vec<String>,
    pub trials_per_device: usize,
    pub timeout: Option<Duration>,
    pub progress: Progress,
    pub worker_exe: Option<PathBuf>,
    pub data_dir: PathBuf,
}

/// Why the launcher asked a running worker to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopCause {
    /// A signal to the sweep or --fail-fast: the trial checkpoints and resumes next time.
    Interrupted,
    /// The trial ran past `timeout`: it is failed.
    Timeout,
}

struct Running {
    index: usize,
    /// The step its piece started from (a population member's boundary; 0 otherwise).
    from: u64,
    slot: usize,
    child: Child,
    started: Instant,
    /// When the trial was told to stop, and why.
    stopping: Option<(Instant, StopCause)>,
}

fn send(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a child's pid has no memory effects; a pid that already exited is
    // still ours (not yet reaped), so the signal cannot reach another process.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// What the run records say of a sweep's progress.
struct Tally {
    done: usize,
    pending: usize,
    /// Trials with a record (their length known).
    known: usize,
    steps: u64,
    total: u64,
}

impl Tally {
    /// A trial whose worker has written its final status but not exited yet counts as done,
    /// not running.
    fn of(records: &[Option<RunRecord>], running: &[Running]) -> Tally {
        let mut t = Tally {
            done: 0,
            pending: 0,
            known: 0,
            steps: 0,
            total: 0,
        };
        for (i, r) in records.iter().enumerate() {
            match r {
                Some(r) if r.status.is_final() => {
                    t.done += 1;
                    t.steps += r.total_steps;
                }
                Some(r) => t.steps += r.steps,
                None => {}
            }
            if let Some(r) = r {
                t.total += r.total_steps;
                t.known += 1;
            }
            let is_running = running.iter().any(|x| x.index == i);
            if !matches!(r, Some(r) if r.status.is_final()) && !is_running {
                t.pending += 1;
            }
        }
        t
    }
}

struct Display {
    console: Console,
    /// A population-based sweep: progress counts the population's steps, not finished trials
    /// (its members all finish at the end).
    by_steps: bool,
    last_plain: Instant,
    /// When the records were last read ([`Display::due`]).
    last_update: Option<Instant>,
    started: Instant,
    steps_at_start: Option<u64>,
}

impl Display {
    fn new(progress: Progress, total: usize, by_steps: bool) -> Self {
        let template = if by_steps {
            "{bar:20} population step {pos}/{len}  {msg}"
        } else {
            "{bar:20} {pos}/{len} trials  {msg}"
        };
        let console = Console::new(progress, total as u64, template);
        if let Some(bar) = console.bar() {
            bar.enable_steady_tick(Duration::from_millis(500));
        }
        Display {
            console,
            by_steps,
            last_plain: Instant::now(),
            last_update: None,
            started: Instant::now(),
            steps_at_start: None,
        }
    }

    fn line(&self, msg: &str) {
        self.console.line(msg)
    }

    /// True at most once a second: updates read every run.json, however many trials.
    fn due(&mut self) -> bool {
        let due = self
            .last_update
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due {
            self.last_update = Some(Instant::now());
        }
        due
    }

    fn update(&mut self, records: &[Option<RunRecord>], running: &[Running], failed: usize) {
        let Tally {
            done,
            pending,
            known,
            steps,
            total,
        } = Tally::of(records, running);
        let base = *self.steps_at_start.get_or_insert(steps);
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = (steps.saturating_sub(base)) as f64 / elapsed.max(1e-9);
        // Trials not started yet count with the mean length of those that have.
        let known = known.max(1);
        let unknown = records.len().saturating_sub(known) as u64;
        let est_total = total + (total / known as u64) * unknown;
        let eta = if rate > 0.0 {
            fmt_secs(est_total.saturating_sub(steps) as f64 / rate)
        } else {
            "?".into()
        };
        let live: Vec<String> = running
            .iter()
            .map(|r| match &records[r.index] {
                Some(rec) => format!(
                    "#{} {}/{} loss {}",
                    r.index,
                    rec.steps,
                    rec.total_steps,
                    rec.last_train_loss
                        .map_or("-".into(), |l| format!("{l:.3}"))
                ),
                None => format!("#{} starting", r.index),
            })
            .collect();
        let msg = format!(
            "done {done} · running {} · failed {failed} · pending {pending} · eta {eta} | {}",
            running.len(),
            live.join(" | ")
        );
        match (self.console.bar(), self.by_steps) {
            (Some(b), by_steps) => {
                if by_steps {
                    b.set_length(est_total.max(b.length().unwrap_or(0)));
                    b.set_position(steps);
                } else {
                    b.set_position(done as u64);
                }
                b.set_message(msg);
            }
            (None, by_steps) => {
                if self.last_plain.elapsed() >= Duration::from_secs(30) {
                    self.last_plain = Instant::now();
                    let at = if by_steps {
                        format!(" population step {steps}/{est_total}")
                    } else {
                        String::new()
                    };
                    self.line(&format!("[{}]{at} {msg}", fmt_secs(elapsed)));
                }
            }
        }
    }

    fn finish(&self) {
        self.console.finish()
    }
}

/// The state of a local sweep while it runs: the processes; the engine decides.
struct Launcher<'a> {
    root: &'a Path,
    engine: Engine<'a>,
    opts: &'a LocalOptions,
    exe: PathBuf,
    /// One device string per concurrent trial (None: the CPU, with `threads` threads).
    slots: Vec<Option<String>>,
    threads: usize,
    running: Vec<Running>,
    free: Vec<usize>,
    display: Display,
}

impl<'a> Launcher<'a> {
    fn new(root: &'a Path, engine: Engine<'a>, opts: &'a LocalOptions) -> Result<Self> {
        let exe = super::worker_exe(&opts.worker_exe)?;
        let slots: Vec<Option<String>> = if opts.devices.is_empty() {
            vec![None; opts.jobs]
        } else {
            opts.devices
                .iter()
                .flat_map(|d| std::iter::repeat_n(Some(d.clone()), opts.trials_per_device))
                .collect()
        };
        let display = match engine.strategy().population_steps() {
            Some(steps) => Display::new(opts.progress, steps as usize, true),
            None => {
                let total =
                    engine.manifest.trials.len() + engine.strategy().remaining(&engine.manifest);
                Display::new(opts.progress, total, false)
            }
        };
        Ok(Launcher {
            root,
            opts,
            exe,
            threads: (crate::host::cores() / slots.len()).max(1),
            free: (0..slots.len()).rev().collect(),
            slots,
            running: Vec::new(),
            display,
            engine,
        })
    }

    /// Shows what the engine said.
    fn show(&mut self) {
        for line in self.engine.said() {
            self.display.line(&line);
        }
    }

    /// Asks every running worker to checkpoint and stop.
    fn stop_all(&mut self) {
        for r in &mut self.running {
            send(&r.child, libc::SIGTERM);
            r.stopping = Some((Instant::now(), StopCause::Interrupted));
        }
    }

    fn check_signal(&mut self) {
        if let Some(sig) = crate::signals::requested() {
            if self.engine.stop(Stop::Signal(sig)) {
                self.display.line(&format!(
                    "{}: asking {} running trial(s) to checkpoint and stop",
                    crate::signals::name(sig),
                    self.running.len()
                ));
                self.stop_all();
            }
        }
    }

    /// Handles the workers that exited; times out the ones past `timeout`.
    fn reap(&mut self) -> Result<()> {
        let mut i = 0;
        while i < self.running.len() {
            let r = &mut self.running[i];
            let Some(exit) = r.child.try_wait().at(&self.exe)? else {
                if let (Some(limit), None) = (self.opts.timeout, r.stopping) {
                    if r.started.elapsed() > limit {
                        send(&r.child, libc::SIGTERM);
                        r.stopping = Some((Instant::now(), StopCause::Timeout));
                    }
                }
                // A worker that ignores SIGTERM for a minute is killed.
                if r.stopping
                    .is_some_and(|(since, _)| since.elapsed() > Duration::from_secs(60))
                {
                    let _ = r.child.kill();
                }
                i += 1;
                continue;
            };
            let r = self.running.swap_remove(i);
            self.free.push(r.slot);
            let how = self.exit_of(&r, exit);
            if self.engine.ended(r.index, how)? {
                self.stop_all();
            }
            self.show();
        }
        Ok(())
    }

    /// How a worker's exit ended its trial's run.
    fn exit_of(&self, r: &Running, exit: std::process::ExitStatus) -> Exit {
        let run = self.engine.run_dir(r.index);
        let status = run.status();
        match (status, r.stopping.map(|s| s.1)) {
            (Some(s), _) if s.is_final() => Exit::Final,
            (Some(RunStatus::Paused), None) if exit.success() => Exit::Paused,
            (_, Some(StopCause::Interrupted)) => Exit::Stopped,
            (_, Some(StopCause::Timeout)) => {
                let limit = self.opts.timeout.map_or(0.0, |d| d.as_secs_f64());
                Exit::TimedOut(format!("timed out after {}", fmt_secs(limit)))
            }
            (_, None) => Exit::Crashed {
                how: format!("worker exited with {exit}"),
                bad_input: exit.code() == Some(2),
                log: run.worker_log(),
            },
        }
    }

    /// Starts queued (or newly proposed) trials in the free slots.
    fn launch(&mut self) -> Result<()> {
        while let Some(&slot) = self.free.last() {
            let froms: Vec<u64> = self.running.iter().map(|r| r.from).collect();
            let next = self.engine.next(&froms, true)?;
            self.show();
            let Some((index, from)) = next else {
                break;
            };
            let child = self.spawn(index, slot)?;
            self.free.pop();
            self.running.push(Running {
                index,
                from,
                slot,
                child,
                started: Instant::now(),
                stopping: None,
            });
        }
        Ok(())
    }

    /// `charlab sweep-worker --sweep ROOT --index N`, its output appended to the trial's log.
    fn spawn(&self, index: usize, slot: usize) -> Result<Child> {
        let run = self.engine.run_dir(index);
        std::fs::create_dir_all(run.path()).at(run.path())?;
        let log_path = run.worker_log();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .at(&log_path)?;
        let log2 = log.try_clone().at(&log_path)?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("sweep-worker")
            .arg("--sweep")
            .arg(self.root)
            .arg("--index")
            .arg(index.to_string())
            .env("CHARLAB_DATA", &self.opts.data_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        match &self.slots[slot] {
            Some(d) => cmd.arg("--device").arg(d),
            None => cmd.arg("--threads").arg(self.threads.to_string()),
        };
        // A worker outlives a SIGKILLed sweep only until the kernel tells it: it then
        // checkpoints and stops instead of racing the rerun's worker.
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
        }
        cmd.spawn().at(&self.exe)
    }

    fn done(&self) -> bool {
        self.running.is_empty() && (!self.engine.more() || self.engine.stopping().is_some())
    }
}

/// Runs the engine's trials as worker processes on this machine, as slots free.
/// Returns the signal that stopped it, if any, and the manifest as it ended.
pub fn run(root: &Path, engine: Engine, opts: &LocalOptions) -> Result<(Option<i32>, Manifest)> {
    crate::signals::install();
    let mut l = Launcher::new(root, engine, opts)?;
    let to_run = l.engine.to_run();
    let queued = l.engine.queued().count();
    l.display.line(&format!(
        "sweep {}: {} trials, {} to run, {} at once ({} thread(s) each)",
        root.display(),
        l.engine.manifest.trials.len() + to_run - queued,
        to_run,
        l.slots.len(),
        l.threads
    ));
    loop {
        l.check_signal();
        l.reap()?;
        if l.display.due() {
            // One read of every record serves the stop rule and the display.
            let records = l.engine.records();
            if l.engine.check_stop(&records)? {
                l.show();
                l.stop_all();
            }
            l.display.update(&records, &l.running, l.engine.failed());
        }
        l.launch()?;
        if l.done() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    l.display.finish();
    l.engine.finish()?;
    l.show();
    Ok((l.engine.signal(), l.engine.manifest))
}

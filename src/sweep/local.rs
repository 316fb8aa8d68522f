//! The local launcher: `jobs` worker processes at once (or `trials_per_device` per GPU), CPU
//! threads split between them so two jobs on two cores do not oversubscribe, retries from the
//! last checkpoint, per-trial timeouts, fail-fast, and a progress display. On SIGINT/SIGTERM the
//! workers are told to checkpoint and stop, and the sweep exits once they have.

use crate::error::{IoContext, Result};
use crate::run_dir::RunDir;
use crate::sweep::manifest::{self, Manifest};
use crate::sweep::pbt::{self, Population};
use crate::sweep::search::Proposer;
use crate::train::{Console, Progress, RunStatus};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How trials are run.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub jobs: usize,
    pub devices: Vec<String>,
    pub trials_per_device: usize,
    pub retries: u32,
    pub fail_fast: bool,
    pub timeout: Option<Duration>,
    pub progress: Progress,
    pub worker_exe: Option<PathBuf>,
    pub data_dir: PathBuf,
    /// Each trial's relative cost (by index): the costliest start first, so the sweep does not
    /// end with one long trial running alone. Empty: index order.
    pub costs: Vec<f64>,
    /// Print each population member's pause at every boundary too (the decisions always are).
    pub verbose: bool,
    /// A population advances boundary by boundary: no member starts a piece from a boundary
    /// until every member has reached it, and members start (and are decided on) in member
    /// order, so the decisions do not depend on timing, `jobs` or interruptions.
    pub deterministic: bool,
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

struct Display {
    console: Console,
    /// A population-based sweep: progress counts the population's steps, not finished trials
    /// (its members all finish at the end).
    by_steps: bool,
    last_plain: Instant,
    /// Updates read every run.json: at most one a second, however many trials.
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

    fn update(&mut self, root: &Path, manifest: &Manifest, running: &[Running], failed: usize) {
        if self
            .last_update
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.last_update = Some(Instant::now());
        // One read of every run.json per update; a trial whose worker has written its final
        // status but not exited yet counts as done, not running.
        let records: Vec<Option<crate::train::RunRecord>> = manifest
            .trials
            .iter()
            .map(|e| RunDir::new(root.join(&e.dir)).record())
            .collect();
        let is_running = |i: usize| running.iter().any(|r| r.index == i);
        let (mut done, mut pending, mut known) = (0usize, 0usize, 0usize);
        let (mut steps, mut total) = (0u64, 0u64);
        for (i, r) in records.iter().enumerate() {
            match r {
                Some(r) if r.status.is_final() => {
                    done += 1;
                    steps += r.total_steps;
                }
                Some(r) => steps += r.steps,
                None => {}
            }
            if let Some(r) = r {
                total += r.total_steps;
                known += 1;
            }
            if !matches!(r, Some(r) if r.status.is_final()) && !is_running(i) {
                pending += 1;
            }
        }
        let base = *self.steps_at_start.get_or_insert(steps);
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = (steps.saturating_sub(base)) as f64 / elapsed.max(1e-9);
        // Trials not started yet count with the mean length of those that have.
        let known = known.max(1);
        let unknown = manifest.trials.len().saturating_sub(known) as u64;
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

/// The state of a local sweep while it runs.
struct Launcher<'a> {
    root: &'a Path,
    /// The sweep's trials; a search appends its proposals.
    manifest: Manifest,
    opts: &'a LocalOptions,
    proposer: Option<Proposer<'a>>,
    /// A population-based sweep's members, decided between their pieces.
    population: Option<Population<'a>>,
    /// The search has no more trials to propose.
    exhausted: bool,
    exe: PathBuf,
    /// One device string per concurrent trial (None: the CPU, with `threads` threads).
    slots: Vec<Option<String>>,
    threads: usize,
    queue: VecDeque<usize>,
    attempts: Vec<u32>,
    running: Vec<Running>,
    free: Vec<usize>,
    failed: Vec<usize>,
    display: Display,
    /// The signal that is stopping the sweep.
    stopping_all: Option<i32>,
    fail_fast_hit: bool,
    /// The first trial that failed on bad input (exit code 2), and its message without its own
    /// directory's name: a second one with the same message stops the sweep.
    user_error: Option<(String, String)>,
}

impl<'a> Launcher<'a> {
    fn new(
        root: &'a Path,
        mut manifest: Manifest,
        opts: &'a LocalOptions,
        (proposer, population): (Option<Proposer<'a>>, Option<Population<'a>>),
    ) -> Result<Self> {
        if let Some(p) = &proposer {
            p.catch_up(&mut manifest)?;
        }
        if let Some(p) = &population {
            p.catch_up(&mut manifest)?;
        }
        let exe = super::worker_exe(&opts.worker_exe)?;
        let slots: Vec<Option<String>> = if opts.devices.is_empty() {
            vec![None; opts.jobs]
        } else {
            opts.devices
                .iter()
                .flat_map(|d| std::iter::repeat_n(Some(d.clone()), opts.trials_per_device))
                .collect()
        };
        let cores = crate::host::cores();
        let mut pending: Vec<usize> = manifest
            .trials
            .iter()
            .filter(|e| !manifest::finished(&RunDir::new(root.join(&e.dir))))
            .map(|e| e.index)
            .collect();
        let cost = |i: &usize| opts.costs.get(*i).copied().unwrap_or(0.0);
        // Longest first (stable: equal costs keep index order).
        pending.sort_by(|a, b| cost(b).total_cmp(&cost(a)));
        let total = proposer.as_ref().map_or(manifest.trials.len(), |p| {
            manifest.trials.len() + p.remaining(&manifest)
        });
        Ok(Launcher {
            root,
            opts,
            exe,
            threads: (cores / slots.len()).max(1),
            free: (0..slots.len()).rev().collect(),
            slots,
            queue: pending.into(),
            attempts: vec![0; manifest.trials.len()],
            running: Vec::new(),
            failed: Vec::new(),
            display: match &population {
                Some(p) => Display::new(opts.progress, p.total_steps() as usize, true),
                None => Display::new(opts.progress, total, false),
            },
            stopping_all: None,
            fail_fast_hit: false,
            user_error: None,
            manifest,
            proposer,
            population,
            exhausted: false,
        })
    }

    /// Records a trial's end for the search (its result is now part of the history).
    fn record_end(&mut self, index: usize) -> Result<()> {
        match &self.proposer {
            Some(p) => p.finished(&mut self.manifest, index),
            None => Ok(()),
        }
    }

    /// A search's next trial, when a slot is free and nothing is queued.
    fn propose(&mut self) -> Result<()> {
        let Some(p) = &self.proposer else {
            return Ok(());
        };
        if self.exhausted || !self.queue.is_empty() || self.free.is_empty() {
            return Ok(());
        }
        match p.propose(&mut self.manifest)? {
            Some(index) => {
                self.attempts.resize(self.manifest.trials.len(), 0);
                self.display.line(&p.describe(&self.manifest, index));
                self.queue.push_back(index);
            }
            None => self.exhausted = true,
        }
        Ok(())
    }

    fn run_dir(&self, index: usize) -> RunDir {
        RunDir::new(self.root.join(&self.manifest.trials[index].dir))
    }

    /// Asks every running worker to checkpoint and stop.
    fn stop_all(&mut self) {
        for r in &mut self.running {
            send(&r.child, libc::SIGTERM);
            r.stopping = Some((Instant::now(), StopCause::Interrupted));
        }
    }

    fn check_signal(&mut self) {
        if self.stopping_all.is_some() {
            return;
        }
        if let Some(sig) = crate::signals::requested() {
            self.stopping_all = Some(sig);
            self.display.line(&format!(
                "{}: asking {} running trial(s) to checkpoint and stop",
                crate::signals::name(sig),
                self.running.len()
            ));
            self.stop_all();
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
            self.exited(r, exit)?;
        }
        Ok(())
    }

    /// What a worker's exit means for its trial: done, failed, or retried.
    fn exited(&mut self, r: Running, exit: std::process::ExitStatus) -> Result<()> {
        let run = self.run_dir(r.index);
        let name = &self.manifest.trials[r.index].dir;
        let rec = run.record();
        let paused = rec.as_ref().is_some_and(pbt::is_paused);
        if let (Some(p), true, None, true) = (&self.population, paused, r.stopping, exit.success())
        {
            // A member at a boundary: it waits its turn, and is decided on before it goes on.
            let step = p.paused(&self.manifest, r.index)?;
            if self.opts.verbose {
                self.display
                    .line(&format!("member {name} paused at step {step}"));
            }
            self.queue.push_back(r.index);
            return Ok(());
        }
        match (rec.as_ref().map(|x| x.status), r.stopping.map(|s| s.1)) {
            (Some(s), _) if s.is_final() => {
                let detail = rec
                    .as_ref()
                    .and_then(|x| x.best_metrics)
                    .map_or(String::new(), |m| {
                        format!(", best val loss {:.4}", m.val_loss)
                    });
                self.display.line(&format!("trial {name} {s}{detail}"));
                self.record_end(r.index)?;
            }
            (_, Some(StopCause::Interrupted)) => {}
            (_, Some(StopCause::Timeout)) => {
                let limit = self.opts.timeout.map_or(0.0, |d| d.as_secs_f64());
                let msg = format!("timed out after {}", fmt_secs(limit));
                run.mark_failed(&msg)?;
                self.display.line(&format!("trial {name} failed: {msg}"));
                self.failed.push(r.index);
                self.record_end(r.index)?;
            }
            (_, None) => self.crashed(r.index, exit, rec.and_then(|x| x.message))?,
        }
        Ok(())
    }

    /// A worker that ended without finishing its trial: retry it, or fail it (and with
    /// --fail-fast, the sweep).
    fn crashed(
        &mut self,
        index: usize,
        exit: std::process::ExitStatus,
        message: Option<String>,
    ) -> Result<()> {
        let run = self.run_dir(index);
        let name = self.manifest.trials[index].dir.clone();
        self.attempts[index] += 1;
        let tries = self.attempts[index];
        // Bad input fails the same way however often it is retried.
        let user_error = exit.code() == Some(2);
        if tries <= self.opts.retries
            && !user_error
            && self.stopping_all.is_none()
            && !self.fail_fast_hit
        {
            self.display.line(&format!(
                "trial {name} failed ({exit}); retry {tries}/{} from its last checkpoint (log: {})",
                self.opts.retries,
                run.worker_log().display()
            ));
            self.queue.push_back(index);
            return Ok(());
        }
        let msg = message
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| format!("worker exited with {exit}"));
        run.mark_failed(&msg)?;
        if run.record().is_none() {
            // Failed before writing run.json (e.g. a bad config): say so here.
            self.display.line(&format!("trial {name} failed: {msg}"));
        } else {
            let log = run.worker_log();
            self.display.line(&format!(
                "trial {name} failed: {msg} (log: {})",
                log.display()
            ));
        }
        self.failed.push(index);
        self.record_end(index)?;
        if user_error {
            self.same_user_error(&name, &msg);
        }
        if self.opts.fail_fast && !self.fail_fast_hit {
            self.fail_fast_hit = true;
            self.display.line("--fail-fast: stopping the other trials");
            self.stop_all();
        }
        Ok(())
    }

    /// A trial failed on bad input: when an earlier one failed with the same message, every
    /// trial would, so the sweep stops and says so once.
    fn same_user_error(&mut self, name: &str, msg: &str) {
        let general = msg.replace(name, "<trial>");
        match &self.user_error {
            Some((first, m)) if *m == general && !self.fail_fast_hit => {
                self.display.line(&format!(
                    "trials {first} and {name} failed on the same bad input ({msg}): stopping \
                     the sweep; fix it and run the sweep again"
                ));
                self.fail_fast_hit = true;
                self.stop_all();
            }
            Some(_) => {}
            None => self.user_error = Some((name.to_string(), general)),
        }
    }

    /// Starts queued (or newly proposed) trials in the free slots.
    fn launch(&mut self) -> Result<()> {
        while self.stopping_all.is_none() && !self.fail_fast_hit {
            self.propose()?;
            let (Some(&slot), Some((at, from))) = (self.free.last(), self.next_queued()?) else {
                break;
            };
            let index = self.queue[at];
            if let Some(p) = &self.population {
                if let Some(line) = p.before_piece(&mut self.manifest, index)? {
                    self.display.line(&line);
                }
            }
            let child = self.spawn(index, slot)?;
            self.free.pop();
            self.queue.remove(at);
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

    /// The queued trial to start next, as (its place in the queue, the step it starts from):
    /// the first; or, for a deterministic population, the member standing on the lowest step
    /// (the lowest index among equals), and none while a running member has not reached that
    /// step (the barrier).
    fn next_queued(&self) -> Result<Option<(usize, u64)>> {
        let Some(p) = self.population.as_ref().filter(|_| self.opts.deterministic) else {
            return Ok((!self.queue.is_empty()).then_some((0, 0)));
        };
        let mut best: Option<(u64, usize, usize)> = None;
        for (at, &m) in self.queue.iter().enumerate() {
            let step = p.stands_at(&self.manifest, m)?;
            if best.is_none_or(|b| (step, m) < (b.0, b.1)) {
                best = Some((step, m, at));
            }
        }
        Ok(best
            .filter(|&(step, _, _)| self.running.iter().all(|r| r.from >= step))
            .map(|(step, _, at)| (at, step)))
    }

    /// `charlab sweep-worker --sweep ROOT --index N`, its output appended to the trial's log.
    fn spawn(&self, index: usize, slot: usize) -> Result<Child> {
        let run = self.run_dir(index);
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
        let more = !self.queue.is_empty()
            || self
                .proposer
                .as_ref()
                .is_some_and(|p| !self.exhausted && p.remaining(&self.manifest) > 0);
        self.running.is_empty() && (!more || self.stopping_all.is_some() || self.fail_fast_hit)
    }

    /// The closing line: finished, completed, pruned, diverged, failed.
    fn summary(&self) {
        let statuses: Vec<RunStatus> = (0..self.manifest.trials.len())
            .filter_map(|i| self.run_dir(i).status())
            .collect();
        let count = |f: &dyn Fn(RunStatus) -> bool| statuses.iter().filter(|&&x| f(x)).count();
        self.display.line(&format!(
            "sweep {}: {}/{} finished ({} completed, {} pruned, {} diverged), {} failed",
            self.root.display(),
            count(&|s| s.is_final()),
            self.manifest.trials.len(),
            count(&|s| s == RunStatus::Completed),
            count(&|s| s == RunStatus::Pruned),
            count(&|s| s == RunStatus::Diverged),
            self.failed.len()
        ));
    }
}

/// Runs every unfinished trial of the manifest, and a search's proposals as slots free.
/// Returns the signal that stopped it, if any, and the manifest as it ended.
pub fn run(
    root: &Path,
    manifest: Manifest,
    opts: &LocalOptions,
    (proposer, population): (Option<Proposer>, Option<Population>),
) -> Result<(Option<i32>, Manifest)> {
    crate::signals::install();
    let mut l = Launcher::new(root, manifest, opts, (proposer, population))?;
    let to_run = l.queue.len() + l.proposer.as_ref().map_or(0, |p| p.remaining(&l.manifest));
    l.display.line(&format!(
        "sweep {}: {} trials, {} to run, {} at once ({} thread(s) each)",
        root.display(),
        l.manifest.trials.len() + to_run - l.queue.len(),
        to_run,
        l.slots.len(),
        l.threads
    ));
    loop {
        l.check_signal();
        l.reap()?;
        l.launch()?;
        if l.done() {
            break;
        }
        l.display
            .update(root, &l.manifest, &l.running, l.failed.len());
        std::thread::sleep(Duration::from_millis(100));
    }
    l.display.finish();
    l.summary();
    if let Some(p) = &l.population {
        if let Some(path) = p.finish(&l.manifest)? {
            l.display.line(&format!(
                "the best member's schedule, as one run: {} (charlab train --config it)",
                path.display()
            ));
        }
    }
    Ok((l.stopping_all, l.manifest))
}

//! The local launcher: `jobs` worker processes at once (or `trials_per_device` per GPU), CPU
//! threads split between them so two jobs on two cores do not oversubscribe, retries from the
//! last checkpoint, per-trial timeouts, fail-fast, and a progress display. On SIGINT/SIGTERM the
//! workers are told to checkpoint and stop, and the sweep exits once they have.

use crate::error::{Error, IoContext, Result};
use crate::run_dir::RunDir;
use crate::sweep::ledger::{self, Manifest};
use crate::train::{Progress, RunStatus};
use std::collections::VecDeque;
use std::io::IsTerminal;
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
}

struct Running {
    index: usize,
    slot: usize,
    child: Child,
    started: Instant,
    /// When the trial was told to stop (timeout, fail-fast, signal).
    stopping: Option<(Instant, &'static str)>,
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
    bar: Option<indicatif::ProgressBar>,
    progress: Progress,
    last_plain: Instant,
    /// Updates read every run.json: at most one a second, however many trials.
    last_update: Option<Instant>,
    started: Instant,
    steps_at_start: Option<u64>,
}

impl Display {
    fn new(progress: Progress, total: usize) -> Self {
        let bar = (progress == Progress::Auto && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:20} {pos}/{len} trials  {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(500));
            bar
        });
        Display {
            bar,
            progress,
            last_plain: Instant::now(),
            last_update: None,
            started: Instant::now(),
            steps_at_start: None,
        }
    }

    fn line(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(msg),
            None if self.progress != Progress::Quiet => eprintln!("{msg}"),
            None => {}
        }
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
        match &self.bar {
            Some(b) => {
                b.set_position(done as u64);
                b.set_message(msg);
            }
            None => {
                if self.last_plain.elapsed() >= Duration::from_secs(30) {
                    self.last_plain = Instant::now();
                    self.line(&format!("[{}] {msg}", fmt_secs(elapsed)));
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Runs every unfinished trial of the manifest. Returns the signal that stopped it, if any.
pub fn run(root: &Path, manifest: &Manifest, opts: &LocalOptions) -> Result<Option<i32>> {
    crate::signals::install();
    let exe = match &opts.worker_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(|e| Error::io("current executable", e))?,
    };
    // Slots: one device string per concurrent trial.
    let slots: Vec<Option<String>> = if opts.devices.is_empty() {
        vec![None; opts.jobs]
    } else {
        opts.devices
            .iter()
            .flat_map(|d| std::iter::repeat_n(Some(d.clone()), opts.trials_per_device))
            .collect()
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / slots.len()).max(1);

    let mut pending: Vec<usize> = manifest
        .trials
        .iter()
        .filter(|e| !ledger::finished(&RunDir::new(root.join(&e.dir))))
        .map(|e| e.index)
        .collect();
    let cost = |i: &usize| opts.costs.get(*i).copied().unwrap_or(0.0);
    // Longest first (stable: equal costs keep index order).
    pending.sort_by(|a, b| cost(b).total_cmp(&cost(a)));
    let mut queue: VecDeque<usize> = pending.into();
    let mut attempts = vec![0u32; manifest.trials.len()];
    let mut running: Vec<Running> = Vec::new();
    let mut free: Vec<usize> = (0..slots.len()).rev().collect();
    let mut failed: Vec<usize> = Vec::new();
    let mut display = Display::new(opts.progress, manifest.trials.len());
    let mut stopping_all: Option<i32> = None;
    let mut fail_fast_hit = false;
    display.line(&format!(
        "sweep {}: {} trials, {} to run, {} at once ({} thread(s) each)",
        root.display(),
        manifest.trials.len(),
        queue.len(),
        slots.len(),
        threads
    ));

    loop {
        if stopping_all.is_none() {
            if let Some(sig) = crate::signals::requested() {
                stopping_all = Some(sig);
                display.line(&format!(
                    "{}: asking {} running trial(s) to checkpoint and stop",
                    crate::signals::name(sig),
                    running.len()
                ));
                for r in &mut running {
                    send(&r.child, libc::SIGTERM);
                    r.stopping = Some((Instant::now(), "interrupted"));
                }
            }
        }

        // Reap finished workers.
        let mut i = 0;
        while i < running.len() {
            let r = &mut running[i];
            let exit = r.child.try_wait().at(&exe)?;
            if exit.is_none() {
                if let (Some(limit), None) = (opts.timeout, r.stopping) {
                    if r.started.elapsed() > limit {
                        send(&r.child, libc::SIGTERM);
                        r.stopping = Some((Instant::now(), "timeout"));
                    }
                }
                // A worker that ignores SIGTERM for a minute is killed.
                if let Some((since, _)) = r.stopping {
                    if since.elapsed() > Duration::from_secs(60) {
                        let _ = r.child.kill();
                    }
                }
                i += 1;
                continue;
            }
            let r = running.swap_remove(i);
            free.push(r.slot);
            let entry = &manifest.trials[r.index];
            let run = RunDir::new(root.join(&entry.dir));
            let rec = run.record();
            let status = rec.as_ref().map(|x| x.status);
            match (status, r.stopping) {
                (Some(s), _) if s.is_final() => {
                    let detail = rec
                        .as_ref()
                        .and_then(|x| x.best_metrics)
                        .map_or(String::new(), |m| {
                            format!(", best val loss {:.4}", m.val_loss)
                        });
                    display.line(&format!("trial {} {s}{detail}", entry.dir));
                }
                (_, Some((_, "interrupted"))) => {}
                (_, Some((_, "timeout"))) => {
                    let limit = opts.timeout.map_or(0.0, |d| d.as_secs_f64());
                    let msg = format!("timed out after {}", fmt_secs(limit));
                    run.mark_failed(&msg)?;
                    display.line(&format!("trial {} failed: {msg}", entry.dir));
                    failed.push(r.index);
                }
                (_, Some(_)) => {}
                _ => {
                    let code = exit.map_or("?".into(), |c| c.to_string());
                    attempts[r.index] += 1;
                    if attempts[r.index] <= opts.retries && stopping_all.is_none() && !fail_fast_hit
                    {
                        display.line(&format!(
                            "trial {} failed ({code}); retry {}/{} from its last checkpoint (log: {})",
                            entry.dir,
                            attempts[r.index],
                            opts.retries,
                            run.worker_log().display()
                        ));
                        queue.push_back(r.index);
                    } else {
                        let msg = rec
                            .and_then(|x| x.message)
                            .filter(|m| !m.is_empty())
                            .unwrap_or_else(|| format!("worker exited with {code}"));
                        run.mark_failed(&msg)?;
                        if run.record().is_none() {
                            // Failed before writing run.json (e.g. a bad config): say so here.
                            display.line(&format!("trial {} failed: {msg}", entry.dir));
                        } else {
                            display.line(&format!(
                                "trial {} failed: {msg} (log: {})",
                                entry.dir,
                                run.worker_log().display()
                            ));
                        }
                        failed.push(r.index);
                        if opts.fail_fast && !fail_fast_hit {
                            fail_fast_hit = true;
                            display.line("--fail-fast: stopping the other trials");
                            for o in &mut running {
                                send(&o.child, libc::SIGTERM);
                                o.stopping = Some((Instant::now(), "interrupted"));
                            }
                        }
                    }
                }
            }
        }

        // Launch.
        while stopping_all.is_none() && !fail_fast_hit && !free.is_empty() && !queue.is_empty() {
            let (Some(slot), Some(index)) = (free.pop(), queue.pop_front()) else {
                break;
            };
            let entry = &manifest.trials[index];
            let run = RunDir::new(root.join(&entry.dir));
            std::fs::create_dir_all(run.path()).at(run.path())?;
            let log_path = run.worker_log();
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .at(&log_path)?;
            let log2 = log.try_clone().at(&log_path)?;
            let mut cmd = Command::new(&exe);
            cmd.arg("sweep-worker")
                .arg("--sweep")
                .arg(root)
                .arg("--index")
                .arg(index.to_string())
                .env("CHARLAB_DATA", &opts.data_dir)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2);
            match &slots[slot] {
                Some(d) => {
                    cmd.arg("--device").arg(d);
                }
                None => {
                    cmd.arg("--threads").arg(threads.to_string());
                }
            }
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
            let child = cmd.spawn().at(&exe)?;
            running.push(Running {
                index,
                slot,
                child,
                started: Instant::now(),
                stopping: None,
            });
        }

        if running.is_empty() && (queue.is_empty() || stopping_all.is_some() || fail_fast_hit) {
            break;
        }
        display.update(root, manifest, &running, failed.len());
        std::thread::sleep(Duration::from_millis(100));
    }
    display.finish();
    let finished = manifest
        .trials
        .iter()
        .filter(|e| ledger::finished(&RunDir::new(root.join(&e.dir))))
        .count();
    let statuses: Vec<RunStatus> = manifest
        .trials
        .iter()
        .filter_map(|e| RunDir::new(root.join(&e.dir)).status())
        .collect();
    let count = |s: RunStatus| statuses.iter().filter(|&&x| x == s).count();
    display.line(&format!(
        "sweep {}: {finished}/{} finished ({} completed, {} pruned, {} diverged), {} failed",
        root.display(),
        manifest.trials.len(),
        count(RunStatus::Completed),
        count(RunStatus::Pruned),
        count(RunStatus::Diverged),
        failed.len()
    ));
    Ok(stopping_all)
}

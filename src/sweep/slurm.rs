//! The Slurm launcher: the same worker contract as local sweeps (`charlab sweep-worker --sweep
//! DIR --index N`), run as the tasks of a job array. charlab writes an sbatch script under
//! `<sweep>/slurm/`, submits only the trials that are neither finished nor queued, then watches:
//! the run directories' `run.json` say what each trial did (the truth: a cancelled pending task
//! leaves no scheduler record, and there may be no `sacct`), `squeue` says which tasks are still
//! alive. A task that ended without its trial finishing is resubmitted up to `retries` times, and
//! resumes from its checkpoint. Before a time limit Slurm sends SIGUSR1 (`--signal`): the worker
//! checkpoints and requeues its own task (`scontrol requeue`), which resumes the same way.

use super::engine::{Engine, Exit};
use super::manifest::Manifest;
use crate::error::{Error, IoContext, Result};
use crate::run_dir::RunDir;
use crate::train::{log_line, Progress, RunRecord, RunStatus};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Options of `--launcher slurm` (flags merged over the sweep file's `[slurm]`).
#[derive(Debug, Clone, Default)]
pub struct SlurmOptions {
    pub settings: super::plan::SlurmSettings,
    /// Return after submitting.
    pub detach: bool,
    pub progress: Progress,
    /// The binary the tasks run (default: this executable; it must be reachable from the nodes).
    pub worker_exe: Option<PathBuf>,
    pub data_dir: PathBuf,
    /// How often the watcher polls (default 2 s).
    pub poll: Option<Duration>,
    /// A search's trials queued or running at once (`array_parallelism` wins when given).
    pub concurrent: usize,
}

/// What has been submitted for a sweep: `slurm/jobs.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Jobs {
    /// Array job id → the trial indices it runs.
    pub submissions: Vec<(String, Vec<usize>)>,
    /// Submissions per trial.
    pub attempts: BTreeMap<usize, u32>,
}

impl Jobs {
    fn path(root: &Path) -> PathBuf {
        root.join("slurm").join("jobs.json")
    }

    pub fn load(root: &Path) -> Jobs {
        std::fs::read(Self::path(root))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self, root: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        crate::atomic::write(&Self::path(root), text.as_bytes())
    }
}

/// Slurm states after which a task will not run again.
const TERMINAL: &[&str] = &[
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "REVOKED",
    "PREEMPTED",
];

fn tool(name: &str, args: &[String]) -> Result<std::process::Output> {
    Command::new(name).args(args).output().map_err(|e| {
        Error::Launcher(format!(
            "cannot run `{name}` ({e}): is this a Slurm submit host (slurm-client installed, on PATH)?"
        ))
    })
}

/// A live array task as `squeue` reports it.
#[derive(Debug, Clone)]
struct Task {
    job: String,
    state: String,
    reason: String,
}

/// Each listed job's array tasks that Slurm still knows, with their state and pending reason.
/// None when `squeue` itself failed (a busy or restarting controller): no conclusions then.
fn queue(job_ids: &[&str]) -> Result<Option<BTreeMap<(String, usize), Task>>> {
    let mut out = BTreeMap::new();
    for id in job_ids {
        let o = tool(
            "squeue",
            &[
                "-h".into(),
                "-r".into(),
                "-t".into(),
                "all".into(),
                "-j".into(),
                id.to_string(),
                "-o".into(),
                // %F: the array's job id (%A is each task's own once it starts); %r: why pending.
                "%F %K %T %r".into(),
            ],
        )?;
        // A job past MinJobAge is an "Invalid job id": it has no live tasks.
        if !o.status.success() && !String::from_utf8_lossy(&o.stderr).contains("Invalid job id") {
            return Ok(None);
        }
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let [job, task, state, reason] = f[..] {
                if let Ok(task) = task.parse::<usize>() {
                    let t = Task {
                        job: job.to_string(),
                        state: state.to_string(),
                        reason: reason.to_string(),
                    };
                    out.insert((job.to_string(), task), t);
                }
            }
        }
    }
    Ok(Some(out))
}

/// The latest Slurm task of each trial (absent: never submitted or no longer known); None when
/// the queue could not be read.
fn task_states(jobs: &Jobs) -> Result<Option<BTreeMap<usize, Task>>> {
    let ids: Vec<&str> = jobs.submissions.iter().map(|(j, _)| j.as_str()).collect();
    let Some(q) = queue(&ids)? else {
        return Ok(None);
    };
    let mut states = BTreeMap::new();
    for (job, indices) in &jobs.submissions {
        for &i in indices {
            if let Some(s) = q.get(&(job.clone(), i)) {
                states.insert(i, s.clone());
            }
        }
    }
    Ok(Some(states))
}

fn alive(task: Option<&Task>) -> bool {
    task.is_some_and(|t| !TERMINAL.contains(&t.state.trim_end_matches('+')))
}

/// `0-3,7,9-10`: the `--array` spec of sorted indices.
pub fn array_spec(indices: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let start = indices[i];
        let mut end = start;
        while i + 1 < indices.len() && indices[i + 1] == end + 1 {
            i += 1;
            end = indices[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The sbatch script every task of the sweep runs.
fn script(root: &Path, name: &str, opts: &SlurmOptions, exe: &Path) -> String {
    let s = &opts.settings;
    let mut lines = vec![
        "#!/bin/bash".to_string(),
        format!("#SBATCH --job-name=charlab-{name}"),
        format!(
            "#SBATCH --output={}",
            root.join("slurm").join("%A_%a.out").display()
        ),
        "#SBATCH --open-mode=append".into(),
        // B: the batch shell, which `exec` below makes the worker itself.
        format!("#SBATCH --signal=B:USR1@{}", s.signal_lead.unwrap_or(120)),
        "#SBATCH --requeue".into(),
    ];
    let mut opt = |flag: &str, v: Option<String>| {
        if let Some(v) = v {
            lines.push(format!("#SBATCH --{flag}={v}"));
        }
    };
    opt("partition", s.partition.clone());
    opt("gres", s.gres.clone());
    opt("time", s.time.clone());
    opt("cpus-per-task", s.cpus_per_task.map(|c| c.to_string()));
    opt("mem", s.mem.clone());
    for a in s.args.iter().flatten() {
        lines.push(format!("#SBATCH {a}"));
    }
    lines.push(format!(
        "export CHARLAB_DATA={}",
        quote(&opts.data_dir.display().to_string())
    ));
    lines.push(format!(
        "exec {} sweep-worker --sweep {} --index \"$SLURM_ARRAY_TASK_ID\"",
        quote(&exe.display().to_string()),
        quote(&root.display().to_string())
    ));
    lines.join("\n") + "\n"
}

fn submit(
    root: &Path,
    script_path: &Path,
    indices: &[usize],
    opts: &SlurmOptions,
) -> Result<String> {
    let mut array = array_spec(indices);
    if let Some(k) = opts.settings.array_parallelism {
        array.push_str(&format!("%{k}"));
    }
    let o = tool(
        "sbatch",
        &[
            "--parsable".into(),
            format!("--array={array}"),
            script_path.display().to_string(),
        ],
    )?;
    let out = String::from_utf8_lossy(&o.stdout);
    let id = out.trim().split(';').next().unwrap_or("").to_string();
    if !o.status.success() || id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::Launcher(format!(
            "sbatch refused the array for {}: {}",
            root.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    Ok(id)
}

/// The watcher's state across polls: the tasks; the engine decides.
struct Watcher<'a> {
    root: PathBuf,
    engine: Engine<'a>,
    opts: &'a SlurmOptions,
    script: PathBuf,
    jobs: Jobs,
    /// Trials submitted (or found alive) and not yet seen to end.
    outstanding: BTreeSet<usize>,
}

/// What one poll found: trials done, queued or running, failed.
#[derive(Default, PartialEq)]
struct Counts {
    done: usize,
    running: usize,
    failed: usize,
}

impl Watcher<'_> {
    fn show(&mut self) {
        for line in self.engine.said() {
            log_line(self.opts.progress, &line);
        }
    }

    /// A requeued task that Slurm holds back two minutes (reason BeginTime) after it
    /// checkpointed on SIGUSR1: let it go now.
    fn release(&self, index: usize, task: &Task) {
        if task.state == "PENDING"
            && task.reason == "BeginTime"
            && self.engine.run_dir(index).status() == Some(RunStatus::Interrupted)
        {
            let id = format!("JobId={}_{index}", task.job);
            let _ = tool("scontrol", &["update".into(), id, "StartTime=now".into()]);
        }
    }

    /// How trial `index`'s task ended it, once it has (`None` while it runs).
    fn exit_of(&self, index: usize, task: Option<&Task>) -> Option<Exit> {
        let status = self.engine.run_dir(index).status();
        match status {
            Some(s) if s.is_final() => Some(Exit::Final),
            _ if alive(task) => {
                if let Some(t) = task {
                    self.release(index, t);
                }
                None
            }
            Some(RunStatus::Paused) => Some(Exit::Paused),
            _ => Some(Exit::Crashed {
                how: task.map_or("slurm task gone from the queue".into(), |t| {
                    format!("slurm task {}", t.state)
                }),
                bad_input: false,
                log: self.root.join("slurm"),
            }),
        }
    }

    /// One look at the run records and the queue: what ended, what starts, the counts.
    /// `None` when --fail-fast cancelled the sweep.
    fn poll(&mut self, tasks: &BTreeMap<usize, Task>) -> Result<Option<Counts>> {
        // Results in the order they ended, before any is reported one by one below.
        self.engine.catch_up()?;
        for index in self.outstanding.clone() {
            let Some(exit) = self.exit_of(index, tasks.get(&index)) else {
                continue;
            };
            self.outstanding.remove(&index);
            let stopped = self.engine.ended(index, exit)?;
            self.show();
            if stopped {
                cancel(&self.jobs);
                return Ok(None);
            }
        }
        // One read of every record serves the stop rule and the counts.
        let records = self.engine.records();
        if self.engine.check_stop(&records)? {
            self.show();
            // The tasks get SIGTERM: they checkpoint (interrupted) and resume on a rerun.
            cancel(&self.jobs);
            return Ok(None);
        }
        // Queued trials all go at once (`array_parallelism` paces them); a search's proposals
        // only up to its concurrency.
        let limit = (self.opts.settings.array_parallelism)
            .unwrap_or(self.opts.concurrent)
            .max(1);
        let mut batch = Vec::new();
        loop {
            let room = self.outstanding.len() + batch.len() < limit;
            let next = self.engine.next(&[], room)?;
            self.show();
            match next {
                Some((index, _)) => batch.push(index),
                None => break,
            }
        }
        if !batch.is_empty() {
            // Cost order means nothing to an array: its spec is written in index order.
            batch.sort_unstable();
            self.submit(&batch)?;
        }
        Ok(Some(self.counts(&records)))
    }

    /// The counts, from the records read at this poll (a trial proposed since has none yet).
    fn counts(&self, records: &[Option<RunRecord>]) -> Counts {
        let done = (records.iter().flatten())
            .filter(|r| r.status.is_final())
            .count();
        Counts {
            done,
            running: self.outstanding.len(),
            failed: self.engine.failed(),
        }
    }

    fn submit(&mut self, trials: &[usize]) -> Result<()> {
        let id = submit(&self.root, &self.script, trials, self.opts)?;
        for &i in trials {
            *self.jobs.attempts.entry(i).or_insert(0) += 1;
            self.outstanding.insert(i);
        }
        self.jobs.submissions.push((id.clone(), trials.to_vec()));
        self.jobs.save(&self.root)?;
        log_line(
            self.opts.progress,
            &format!(
                "submitted job {id}: array {} ({} trials)",
                array_spec(trials),
                trials.len()
            ),
        );
        Ok(())
    }
}

/// Submits the sweep's unfinished, unqueued trials and (unless detached) watches them to the end.
/// Returns the signal that stopped the watcher, if any (the tasks keep running on the cluster).
pub fn run(root: &Path, engine: Engine, opts: &SlurmOptions) -> Result<(Option<i32>, Manifest)> {
    let root = std::path::absolute(root).at(root)?;
    let exe = super::worker_exe(&opts.worker_exe)?;
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let script_path = root.join("slurm").join("sweep.sbatch");
    crate::atomic::write(&script_path, script(&root, &name, opts, &exe).as_bytes())?;
    let mut w = Watcher {
        jobs: Jobs::load(&root),
        root,
        engine,
        opts,
        script: script_path,
        outstanding: BTreeSet::new(),
    };
    let poll = opts.poll.unwrap_or(Duration::from_secs(2));
    let started = Instant::now();
    let mut last_counts = None;
    let mut unreadable = 0;
    let mut first = true;
    loop {
        if let Some(sig) = crate::signals::requested() {
            log_line(
                opts.progress,
                "watcher stopped; the tasks keep running: `--status` shows them, the same command resumes watching",
            );
            return Ok((Some(sig), w.engine.manifest));
        }
        let Some(tasks) = task_states(&w.jobs)? else {
            unreadable += 1;
            if unreadable > 60 {
                return Err(Error::Launcher(
                    "squeue has failed for two minutes; is slurmctld up? (`scontrol ping`)".into(),
                ));
            }
            std::thread::sleep(poll);
            continue;
        };
        unreadable = 0;
        if std::mem::take(&mut first) {
            // Tasks a killed watcher submitted are watched, not submitted again.
            let queued: Vec<usize> = w.engine.queued().collect();
            for i in queued.into_iter().filter(|i| alive(tasks.get(i))) {
                w.engine.running_already(i);
                w.outstanding.insert(i);
            }
        }
        let Some(c) = w.poll(&tasks)? else {
            return Ok((None, w.engine.manifest));
        };
        if last_counts.as_ref() != Some(&c) {
            log_line(
                opts.progress,
                &format!(
                    "[{:>5.0}s] {}/{} done, {} queued or running, {} failed",
                    started.elapsed().as_secs_f64(),
                    c.done,
                    w.engine.manifest.trials.len(),
                    c.running,
                    c.failed
                ),
            );
        }
        let idle = c.running == 0;
        last_counts = Some(c);
        if idle {
            w.engine.finish()?;
            w.show();
        }
        if opts.detach || idle {
            return Ok((None, w.engine.manifest));
        }
        std::thread::sleep(poll);
    }
}

fn cancel(jobs: &Jobs) {
    for (id, _) in &jobs.submissions {
        let _ = tool("scancel", std::slice::from_ref(id));
    }
}

/// `--status`: one line per trial with its run status, steps and Slurm task state.
pub fn status(root: &Path, manifest: &Manifest) -> Result<String> {
    let jobs = Jobs::load(root);
    let tasks = task_states(&jobs)?.ok_or_else(|| {
        Error::Launcher("squeue failed; is slurmctld up? (`scontrol ping`)".into())
    })?;
    let headers: Vec<String> = ["trial", "run", "status", "steps", "slurm", "submissions"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let rows: Vec<Vec<String>> = manifest
        .trials
        .iter()
        .map(|e| {
            let rec = RunDir::new(root.join(&e.dir)).record();
            vec![
                e.index.to_string(),
                e.dir.clone(),
                rec.as_ref()
                    .map_or("pending".into(), |r| r.status.to_string()),
                rec.as_ref()
                    .map_or("-".into(), |r| format!("{}/{}", r.steps, r.total_steps)),
                tasks.get(&e.index).map_or("-".into(), |t| t.state.clone()),
                jobs.attempts
                    .get(&e.index)
                    .copied()
                    .unwrap_or(0)
                    .to_string(),
            ]
        })
        .collect();
    Ok(crate::table::render(
        &headers,
        &rows,
        crate::table::Format::Table,
    ))
}

/// Called by a worker stopped by SIGUSR1 inside a Slurm job: puts its own task back in the
/// queue, so it resumes from the checkpoint just written. Ok(false) outside Slurm.
pub fn requeue_self() -> Result<bool> {
    let id = match (
        std::env::var("SLURM_ARRAY_JOB_ID"),
        std::env::var("SLURM_ARRAY_TASK_ID"),
        std::env::var("SLURM_JOB_ID"),
    ) {
        (Ok(a), Ok(t), _) => format!("{a}_{t}"),
        (_, _, Ok(j)) => j,
        _ => return Ok(false),
    };
    let o = tool("scontrol", &["requeue".into(), id.clone()])?;
    if !o.status.success() {
        return Err(Error::Launcher(format!(
            "scontrol requeue {id}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    eprintln!("requeued slurm task {id}: it resumes from its checkpoint");
    Ok(true)
}

//! The Slurm launcher: the same worker contract as local sweeps (`charlab sweep-worker --sweep
//! DIR --index N`), run as the tasks of a job array. charlab writes an sbatch script under
//! `<sweep>/slurm/`, submits only the trials that are neither finished nor queued, then watches:
//! the run directories' `run.json` say what each trial did (the truth: a cancelled pending task
//! leaves no scheduler record, and there may be no `sacct`), `squeue` says which tasks are still
//! alive. A task that ended without its trial finishing is resubmitted up to `retries` times, and
//! resumes from its checkpoint. Before a time limit Slurm sends SIGUSR1 (`--signal`): the worker
//! checkpoints and requeues its own task (`scontrol requeue`), which resumes the same way.

use super::manifest::{self, Entry, Manifest, TrialState};
use super::pbt::{self, Population};
use super::search::Proposer;
use crate::error::{Error, IoContext, Result};
use crate::run_dir::RunDir;
use crate::train::{log_line, Progress, RunStatus};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Options of `--launcher slurm` (flags merged over the sweep file's `[slurm]`).
#[derive(Debug, Clone, Default)]
pub struct SlurmOptions {
    pub settings: super::plan::SlurmSettings,
    pub retries: u32,
    pub fail_fast: bool,
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

fn state_name(task: Option<&Task>) -> &str {
    task.map_or("gone", |t| t.state.as_str())
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

/// The watcher's state across polls.
struct Watcher<'a> {
    root: PathBuf,
    manifest: Manifest,
    opts: &'a SlurmOptions,
    proposer: Option<Proposer<'a>>,
    /// A population-based sweep's members, decided on between their pieces.
    population: Option<Population<'a>>,
    /// The search has no more trials to propose.
    exhausted: bool,
    script: PathBuf,
    jobs: Jobs,
    /// Submissions per trial in this invocation: a rerun gives every unfinished trial its
    /// `retries` again.
    tries_here: BTreeMap<usize, u32>,
    given_up: BTreeSet<usize>,
}

/// What one poll found: trials done, queued or running, failed, and the ones to submit.
#[derive(Default, PartialEq)]
struct Counts {
    done: usize,
    running: usize,
    failed: usize,
}

/// How a poll ended the watch.
enum Verdict {
    Continue(Counts),
    /// --fail-fast cancelled the sweep.
    Cancelled,
}

impl Watcher<'_> {
    /// A requeued task that Slurm holds back two minutes (reason BeginTime) after it
    /// checkpointed on SIGUSR1: let it go now.
    fn release(&self, index: usize, task: &Task, state: TrialState) {
        if task.state == "PENDING"
            && task.reason == "BeginTime"
            && state == TrialState::Run(RunStatus::Interrupted)
        {
            let id = format!("JobId={}_{index}", task.job);
            let _ = tool("scontrol", &["update".into(), id, "StartTime=now".into()]);
        }
    }

    /// A trial whose task is gone without finishing it: resubmit it, or give up on it.
    /// Returns true when it is to be submitted.
    fn retry_or_fail(&mut self, e: &Entry, task: Option<&Task>, state: TrialState) -> bool {
        let tries = self.tries_here.get(&e.index).copied().unwrap_or(0);
        if tries <= self.opts.retries {
            if tries > 0 {
                log_line(
                    self.opts.progress,
                    &format!(
                        "trial {} ({}): task ended ({}) without finishing; resubmitting",
                        e.index,
                        e.dir,
                        state_name(task)
                    ),
                );
            }
            return true;
        }
        self.given_up.insert(e.index);
        if state != TrialState::Run(RunStatus::Failed) {
            let why = format!(
                "slurm task ended ({}) without finishing, after {tries} submissions",
                state_name(task)
            );
            let _ = RunDir::new(self.root.join(&e.dir)).mark_failed(&why);
        }
        log_line(
            self.opts.progress,
            &format!("trial {} ({}): failed", e.index, e.dir),
        );
        false
    }

    /// A population member whose task ended at a boundary: its checkpoint there is kept for
    /// the others (before any of them is decided on).
    fn paused(&mut self, index: usize) -> Result<bool> {
        let Some(p) = &self.population else {
            return Ok(false);
        };
        let run = RunDir::new(self.root.join(&self.manifest.trials[index].dir));
        if !run.record().as_ref().is_some_and(pbt::is_paused) {
            return Ok(false);
        }
        p.paused(&self.manifest, index)?;
        Ok(true)
    }

    /// A population whose members have all finished: its replay config, said on the console.
    fn finish_population(&self) -> Result<()> {
        if let Some(path) = self.population.as_ref().map(|p| p.finish(&self.manifest)) {
            if let Some(path) = path? {
                log_line(
                    self.opts.progress,
                    &format!("the best member's schedule, as one run: {}", path.display()),
                );
            }
        }
        Ok(())
    }

    /// A search's new trials, up to its concurrency, as results come in.
    fn propose(&mut self, outstanding: usize, to_submit: &mut Vec<usize>) -> Result<()> {
        let Some(p) = &self.proposer else {
            return Ok(());
        };
        let limit = self
            .opts
            .settings
            .array_parallelism
            .unwrap_or(self.opts.concurrent);
        while !self.exhausted && outstanding + to_submit.len() < limit.max(1) {
            match p.propose(&mut self.manifest)? {
                Some(i) => {
                    log_line(self.opts.progress, &p.describe(&self.manifest, i));
                    to_submit.push(i);
                }
                None => self.exhausted = true,
            }
        }
        Ok(())
    }

    /// One look at the run records and the queue: counts, resubmissions, fail-fast.
    fn poll(&mut self, tasks: &BTreeMap<usize, Task>) -> Result<Verdict> {
        if let Some(p) = &self.proposer {
            p.catch_up(&mut self.manifest)?;
        }
        let mut to_submit = Vec::new();
        let mut paused = Vec::new();
        let mut c = Counts::default();
        for e in self.manifest.trials.clone() {
            let e = &e;
            let state = manifest::state(&RunDir::new(self.root.join(&e.dir)));
            let task = tasks.get(&e.index);
            if matches!(state, TrialState::Run(s) if s.is_final()) {
                c.done += 1;
            } else if alive(task) {
                c.running += 1;
                if let Some(t) = task {
                    self.release(e.index, t, state);
                }
            } else if self.given_up.contains(&e.index) {
                c.failed += 1;
            } else if self.paused(e.index)? {
                // A member at a boundary: decided on below, once every paused one is seen.
                paused.push(e.index);
            } else if self.retry_or_fail(e, task, state) {
                to_submit.push(e.index);
            } else {
                c.failed += 1;
                if let Some(p) = &self.proposer {
                    p.finished(&mut self.manifest, e.index)?;
                }
                if self.opts.fail_fast {
                    cancel(&self.jobs);
                    return Ok(Verdict::Cancelled);
                }
            }
        }
        for index in paused {
            if let Some(p) = &self.population {
                if let Some(line) = p.before_piece(&mut self.manifest, index)? {
                    log_line(self.opts.progress, &line);
                }
            }
            // A pause is not a failure: the member's retries start again.
            self.tries_here.remove(&index);
            to_submit.push(index);
        }
        self.propose(c.running, &mut to_submit)?;
        if !to_submit.is_empty() {
            self.submit(&to_submit)?;
            c.running += to_submit.len();
        }
        Ok(Verdict::Continue(c))
    }

    fn submit(&mut self, trials: &[usize]) -> Result<()> {
        let id = submit(&self.root, &self.script, trials, self.opts)?;
        for &i in trials {
            *self.jobs.attempts.entry(i).or_insert(0) += 1;
            *self.tries_here.entry(i).or_insert(0) += 1;
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
pub fn run(
    root: &Path,
    mut manifest: Manifest,
    opts: &SlurmOptions,
    (proposer, population): (Option<Proposer>, Option<Population>),
) -> Result<(Option<i32>, Manifest)> {
    population
        .as_ref()
        .map_or(Ok(()), |p| p.catch_up(&mut manifest))?;
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
        manifest,
        opts,
        proposer,
        population,
        exhausted: false,
        script: script_path,
        tries_here: BTreeMap::new(),
        given_up: BTreeSet::new(),
    };
    let poll = opts.poll.unwrap_or(Duration::from_secs(2));
    let started = Instant::now();
    let mut last_counts = None;
    let mut unreadable = 0;
    loop {
        if let Some(sig) = crate::signals::requested() {
            log_line(
                opts.progress,
                "watcher stopped; the tasks keep running: `--status` shows them, the same command resumes watching",
            );
            return Ok((Some(sig), w.manifest));
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
        let c = match w.poll(&tasks)? {
            Verdict::Cancelled => return Ok((None, w.manifest)),
            Verdict::Continue(c) => c,
        };
        if last_counts.as_ref() != Some(&c) {
            log_line(
                opts.progress,
                &format!(
                    "[{:>5.0}s] {}/{} done, {} queued or running, {} failed",
                    started.elapsed().as_secs_f64(),
                    c.done,
                    w.manifest.trials.len(),
                    c.running,
                    c.failed
                ),
            );
        }
        let idle = c.running == 0;
        last_counts = Some(c);
        if idle {
            w.finish_population()?;
        }
        if opts.detach || idle {
            return Ok((None, w.manifest));
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

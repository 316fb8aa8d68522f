//! The sweep engine: every decision a sweep makes about its trials, whatever runs them. It holds
//! the queue (longest first), proposes through the [`Strategy`], and when a launcher reports how
//! a trial's run ended ([`Exit`]) it decides what follows: done, paused for the population,
//! retried from the checkpoint, failed, or the whole sweep stopped (a signal, `--fail-fast`, the
//! same bad input twice). The launchers only start, watch and stop processes: `local.rs` as
//! child processes, `slurm.rs` as job-array tasks; so one rule is written once and acts at the
//! same moment under both.

use super::manifest::{self, Manifest};
use super::plan::StopRule;
use super::stop_rule::{Seen, Watch};
use super::strategy::Strategy;
use crate::error::Result;
use crate::run_dir::{Metric, RunDir, RunRecord, RunStatus};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

/// The rules a sweep's trials run under.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Reruns of a trial whose process ended without finishing it.
    pub retries: u32,
    /// The first failed trial stops the sweep.
    pub fail_fast: bool,
    /// A population advances boundary by boundary: no member starts a piece from a boundary
    /// until every member has reached it, and members start (and are decided on) in member
    /// order, so the decisions do not depend on timing, `jobs` or interruptions.
    pub deterministic: bool,
    /// Say each member's pause too (the decisions are always said).
    pub verbose: bool,
    /// When the whole sweep stops early, judged on `metric`.
    pub stop: Option<StopRule>,
    pub metric: Metric,
}

/// How a trial's run ended, as its launcher saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Exit {
    /// Its record is final (completed, pruned, diverged).
    Final,
    /// Paused at its population's boundary.
    Paused,
    /// Stopped because the launcher asked (the sweep is stopping): it resumes next time.
    Stopped,
    /// Stopped because it ran past the launcher's limit: failed, with this reason.
    TimedOut(String),
    /// Ended without finishing: `how` it ended, whether on bad input (which fails the same way
    /// every time, so it is not retried), and where its output went.
    Crashed {
        how: String,
        bad_input: bool,
        log: PathBuf,
    },
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            retries: 0,
            fail_fast: false,
            deterministic: false,
            verbose: false,
            stop: None,
            metric: Metric::ValLoss,
        }
    }
}

/// Why a sweep stops before its last trial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// SIGINT or SIGTERM: the trials checkpoint and the same command resumes them.
    Signal(i32),
    /// `--fail-fast`, or the same bad input twice: the other trials are stopped.
    Failure,
    /// The sweep's `stop` rule, with why: the trials checkpoint (interrupted).
    Rule(String),
}

/// The state of a sweep while it runs.
pub struct Engine<'a> {
    root: PathBuf,
    /// The sweep's trials; a search appends its proposals.
    pub manifest: Manifest,
    strategy: Strategy<'a>,
    rules: Rules,
    queue: VecDeque<usize>,
    /// Crashes per trial in this invocation.
    crashes: BTreeMap<usize, u32>,
    failed: Vec<usize>,
    /// The strategy has nothing more to propose.
    exhausted: bool,
    stop: Option<Stop>,
    /// The first trial that failed on bad input, and its message without its own name: a
    /// second one with the same message stops the sweep.
    bad_input: Option<(String, String)>,
    /// Lines for the launcher's display, oldest first.
    said: Vec<String>,
    /// The `stop` rule.
    watch: Option<Watch>,
}

impl<'a> Engine<'a> {
    /// The engine of a sweep whose trials are in `manifest`: the strategy caught up, every
    /// unfinished trial queued, the costliest first (`costs` by index, stable: equal costs keep
    /// index order) so the sweep does not end with one long trial running alone.
    pub fn new(
        root: &Path,
        mut manifest: Manifest,
        strategy: Strategy<'a>,
        rules: Rules,
        costs: &[f64],
    ) -> Result<Self> {
        strategy.catch_up(&mut manifest)?;
        let mut queue: Vec<usize> = (manifest.trials.iter())
            .filter(|e| !manifest::finished(&RunDir::new(root.join(&e.dir))))
            .map(|e| e.index)
            .collect();
        let cost = |i: &usize| costs.get(*i).copied().unwrap_or(0.0);
        queue.sort_by(|a, b| cost(b).total_cmp(&cost(a)));
        // A stopped sweep run again is judged anew (its rule may have been loosened).
        if manifest.stopped.take().is_some() {
            manifest.save(root)?;
        }
        let watch = (rules.stop.clone()).map(|r| Watch::new(r, rules.metric));
        let engine = Engine {
            watch,
            root: root.to_path_buf(),
            manifest,
            strategy,
            rules,
            queue: queue.into(),
            crashes: BTreeMap::new(),
            failed: Vec::new(),
            exhausted: false,
            stop: None,
            bad_input: None,
            said: Vec::new(),
        };
        // Members a killed sweep left at a boundary are ranked against like any paused one.
        for &i in &engine.queue {
            if engine.run_dir(i).status() == Some(RunStatus::Paused) {
                engine.strategy.paused(&engine.manifest, i)?;
            }
        }
        Ok(engine)
    }

    pub fn run_dir(&self, index: usize) -> RunDir {
        RunDir::new(self.root.join(&self.manifest.trials[index].dir))
    }

    /// The lines said since the last call, for the launcher's display.
    pub fn said(&mut self) -> Vec<String> {
        std::mem::take(&mut self.said)
    }

    fn say(&mut self, line: String) {
        self.said.push(line);
    }

    pub fn strategy(&self) -> &Strategy<'a> {
        &self.strategy
    }

    /// Catches the strategy up with results its launcher learns of in batches (Slurm's polls),
    /// in the order they ended.
    pub fn catch_up(&mut self) -> Result<()> {
        self.strategy.catch_up(&mut self.manifest)
    }

    /// Trials queued now, in the order they start.
    pub fn queued(&self) -> impl Iterator<Item = usize> + '_ {
        self.queue.iter().copied()
    }

    /// Takes trial `index` off the queue: it is running already (a task a killed watcher
    /// submitted).
    pub fn running_already(&mut self, index: usize) {
        self.queue.retain(|&i| i != index);
    }

    /// Trials still to start: queued, and those the strategy may add.
    pub fn to_run(&self) -> usize {
        self.queue.len() + self.strategy.remaining(&self.manifest)
    }

    /// True while trials are queued or may be proposed.
    pub fn more(&self) -> bool {
        !self.queue.is_empty() || (!self.exhausted && self.strategy.remaining(&self.manifest) > 0)
    }

    pub fn stopping(&self) -> Option<&Stop> {
        self.stop.as_ref()
    }

    /// The signal that is stopping the sweep, if one is.
    pub fn signal(&self) -> Option<i32> {
        match self.stop {
            Some(Stop::Signal(s)) => Some(s),
            _ => None,
        }
    }

    /// Every trial's record now, by index (`None` before it has one): one read per look, which
    /// the launcher's display and [`Engine::check_stop`] share.
    pub fn records(&self) -> Vec<Option<RunRecord>> {
        (0..self.manifest.trials.len())
            .map(|i| self.run_dir(i).record())
            .collect()
    }

    /// Whether the `stop` rule holds on `records` ([`Engine::records`]; the launcher looks
    /// about once a second); when it does, stops the sweep, records why in the manifest and the
    /// sweep's event file, and returns true: the launcher then asks the running trials to
    /// checkpoint and stop.
    pub fn check_stop(&mut self, records: &[Option<RunRecord>]) -> Result<bool> {
        let Some(watch) = &mut self.watch else {
            return Ok(false);
        };
        if self.stop.is_some() {
            return Ok(false);
        }
        let seen: Vec<Seen> = (self.manifest.trials.iter().zip(records))
            .map(|(e, r)| Seen {
                name: &e.dir,
                record: r.as_ref(),
            })
            .collect();
        let Some(why) = watch.verdict(&seen) else {
            return Ok(false);
        };
        self.stop = Some(Stop::Rule(why.clone()));
        self.manifest.stopped = Some(why.clone());
        self.manifest.save(&self.root)?;
        let mut events = crate::summary::EventWriter::create(&self.root)?;
        events.text(crate::tags::SWEEP_STOPPED, 0, &why)?;
        events.sync()?;
        self.say(format!(
            "stopping the sweep: {why}; the running trials checkpoint and stop (interrupted: \
             the sweep run again with a looser `stop` resumes them)"
        ));
        Ok(true)
    }

    /// Stops the sweep. Returns true when this call stopped it: the launcher then stops the
    /// running trials. A signal is kept over an earlier reason: it is what the exit code says.
    pub fn stop(&mut self, why: Stop) -> bool {
        let first = self.stop.is_none();
        if first || matches!(why, Stop::Signal(_)) {
            self.stop = Some(why);
        }
        first
    }

    pub fn failed(&self) -> usize {
        self.failed.len()
    }

    /// The next trial to start, as (index, the step it starts from), its decision made when it
    /// is a population member at a boundary; `None` when the sweep is stopping or nothing can
    /// start now. `running` are the starting steps of the trials running; `propose` allows the
    /// strategy to add a trial when none is queued.
    pub fn next(&mut self, running: &[u64], propose: bool) -> Result<Option<(usize, u64)>> {
        if self.stop.is_some() {
            return Ok(None);
        }
        if self.queue.is_empty() && propose && !self.exhausted {
            match self.strategy.next(&mut self.manifest)? {
                Some((index, line)) => {
                    self.say(line);
                    self.queue.push_back(index);
                }
                None => self.exhausted = true,
            }
        }
        let Some((at, from)) = self.pick(running)? else {
            return Ok(None);
        };
        let index = self.queue[at];
        if let Some(line) = self.strategy.before_start(&mut self.manifest, index)? {
            self.say(line);
        }
        self.queue.remove(at);
        Ok(Some((index, from)))
    }

    /// The queued trial to start next, as (its place in the queue, the step it starts from):
    /// the first; or, for a deterministic population, the member standing on the lowest step
    /// (the lowest index among equals), and none while a running member has not reached that
    /// step (the barrier).
    fn pick(&self, running: &[u64]) -> Result<Option<(usize, u64)>> {
        if !self.rules.deterministic || !matches!(self.strategy, Strategy::Pbt(_)) {
            return Ok((!self.queue.is_empty()).then_some((0, 0)));
        }
        let mut best: Option<(u64, usize, usize)> = None;
        for (at, &m) in self.queue.iter().enumerate() {
            let step = self.strategy.stands_at(&self.manifest, m)?;
            if best.is_none_or(|b| (step, m) < (b.0, b.1)) {
                best = Some((step, m, at));
            }
        }
        Ok(best
            .filter(|&(step, _, _)| running.iter().all(|&from| from >= step))
            .map(|(step, _, at)| (at, step)))
    }

    /// What follows trial `index`'s run ending as `exit`. Returns true when this stopped the
    /// sweep: the launcher then stops the running trials.
    pub fn ended(&mut self, index: usize, exit: Exit) -> Result<bool> {
        let name = self.manifest.trials[index].dir.clone();
        match exit {
            Exit::Paused => {
                let step = self.strategy.paused(&self.manifest, index)?;
                if self.rules.verbose {
                    self.say(format!("member {name} paused at step {step}"));
                }
                // It waits its turn, and is decided on when it starts its next piece.
                self.queue.push_back(index);
                Ok(false)
            }
            Exit::Final => {
                let rec = self.run_dir(index).record();
                let status = rec.as_ref().map_or(RunStatus::Completed, |r| r.status);
                let detail = match &rec {
                    Some(r) if status == RunStatus::Infeasible => {
                        format!(": {}", r.message.as_deref().unwrap_or(""))
                    }
                    Some(r) => (r.best_metrics).map_or(String::new(), |m| {
                        format!(", best val loss {:.4}", m.val_loss)
                    }),
                    None => String::new(),
                };
                self.say(format!("trial {name} {status}{detail}"));
                self.strategy.ended(&mut self.manifest, index)?;
                Ok(false)
            }
            Exit::Stopped => Ok(false),
            Exit::TimedOut(why) => self.fail(index, &why, None),
            Exit::Crashed {
                how,
                bad_input,
                log,
            } => {
                let tries = self.crashes.entry(index).or_insert(0);
                *tries += 1;
                let tries = *tries;
                if tries <= self.rules.retries && !bad_input && self.stop.is_none() {
                    self.say(format!(
                        "trial {name} ended without finishing ({how}); retry {tries}/{} from its \
                         last checkpoint (log: {})",
                        self.rules.retries,
                        log.display()
                    ));
                    self.queue.push_back(index);
                    return Ok(false);
                }
                // The trial's own message when it wrote one (an error in training), else how
                // its process ended.
                let rec = self.run_dir(index).record();
                let own = (rec.filter(|r| r.status == RunStatus::Failed))
                    .and_then(|r| r.message)
                    .filter(|m| !m.is_empty());
                let stopped = self.fail(index, own.as_deref().unwrap_or(&how), Some(&log))?;
                Ok(if bad_input {
                    self.same_bad_input(&name, own.as_deref().unwrap_or(&how)) || stopped
                } else {
                    stopped
                })
            }
        }
    }

    /// Marks trial `index` failed for good, says so, and stops the sweep with --fail-fast.
    fn fail(&mut self, index: usize, why: &str, log: Option<&Path>) -> Result<bool> {
        let run = self.run_dir(index);
        let had_record = run.record().is_some();
        run.mark_failed(why)?;
        let name = &self.manifest.trials[index].dir;
        let line = match log {
            // Failed before writing run.json (e.g. a bad config): its log says no more.
            Some(log) if had_record => {
                format!("trial {name} failed: {why} (log: {})", log.display())
            }
            _ => format!("trial {name} failed: {why}"),
        };
        self.say(line);
        self.failed.push(index);
        self.strategy.ended(&mut self.manifest, index)?;
        if self.rules.fail_fast && self.stop(Stop::Failure) {
            self.say("--fail-fast: stopping the other trials".into());
            return Ok(true);
        }
        Ok(false)
    }

    /// A trial failed on bad input: when an earlier one failed with the same message, every
    /// trial would, so the sweep stops and says so once.
    fn same_bad_input(&mut self, name: &str, msg: &str) -> bool {
        let general = msg.replace(name, "<trial>");
        match &self.bad_input {
            Some((first, m)) if *m == general => {
                let line = format!(
                    "trials {first} and {name} failed on the same bad input ({msg}): stopping \
                     the sweep; fix it and run the sweep again"
                );
                let stopped = self.stop(Stop::Failure);
                if stopped {
                    self.say(line);
                }
                stopped
            }
            Some(_) => false,
            None => {
                self.bad_input = Some((name.to_string(), general));
                false
            }
        }
    }

    /// After the last trial (or a stop): the closing line (finished, completed, pruned,
    /// diverged, failed) and what the strategy leaves besides the runs.
    pub fn finish(&mut self) -> Result<()> {
        let statuses: Vec<RunStatus> = (0..self.manifest.trials.len())
            .filter_map(|i| self.run_dir(i).status())
            .collect();
        let count = |f: &dyn Fn(RunStatus) -> bool| statuses.iter().filter(|&&x| f(x)).count();
        let line = format!(
            "sweep {}: {}/{} finished ({} completed, {} pruned, {} diverged{}), {} failed",
            self.root.display(),
            count(&|s| s.is_final()),
            self.manifest.trials.len(),
            count(&|s| s == RunStatus::Completed),
            count(&|s| s == RunStatus::Pruned),
            count(&|s| s == RunStatus::Diverged),
            match count(&|s| s == RunStatus::Infeasible) {
                0 => String::new(),
                n => format!(", {n} infeasible"),
            },
            self.failed.len()
        );
        self.say(line);
        if let Some(path) = self.strategy.finish(&self.manifest)? {
            self.say(format!(
                "the best member's schedule, as one run: {} (charlab train --config it)",
                path.display()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::manifest::test_manifest as manifest;

    fn crash(bad_input: bool) -> Exit {
        Exit::Crashed {
            how: "worker exited with exit status: 1".into(),
            bad_input,
            log: PathBuf::from("worker.log"),
        }
    }

    fn engine(root: &Path, n: usize, rules: Rules, costs: &[f64]) -> Engine<'static> {
        Engine::new(root, manifest(n), Strategy::List, rules, costs).unwrap()
    }

    #[test]
    fn the_costliest_start_first_and_a_crash_is_retried_then_failed() {
        let d = tempfile::tempdir().unwrap();
        let rules = Rules {
            retries: 1,
            ..Rules::default()
        };
        let mut e = engine(d.path(), 3, rules, &[1.0, 3.0, 2.0]);
        assert_eq!(e.queued().collect::<Vec<_>>(), vec![1, 2, 0]);
        assert_eq!(e.next(&[], true).unwrap(), Some((1, 0)));
        assert!(!e.ended(1, crash(false)).unwrap());
        assert!(e.said()[0].contains("retry 1/1"));
        assert_eq!(
            e.queued().last(),
            Some(1),
            "retried at the back of the queue"
        );
        e.queue.retain(|&i| i != 1);
        assert!(!e.ended(1, crash(false)).unwrap());
        assert!(e.said()[0].contains("001-t failed: worker exited"));
        assert_eq!((e.failed(), e.stopping()), (1, None), "the others go on");
        assert!(e.more());
    }

    #[test]
    fn fail_fast_and_the_same_bad_input_twice_stop_the_sweep_once() {
        let d = tempfile::tempdir().unwrap();
        let fast = Rules {
            retries: 3,
            fail_fast: true,
            ..Rules::default()
        };
        let mut e = engine(d.path(), 3, fast, &[]);
        assert!(e
            .ended(0, Exit::TimedOut("timed out after 2s".into()))
            .unwrap());
        assert_eq!(e.stopping(), Some(&Stop::Failure));
        assert_eq!(
            e.next(&[], true).unwrap(),
            None,
            "nothing starts once stopping"
        );

        let mut e = engine(d.path(), 3, Rules::default(), &[]);
        assert!(
            !e.ended(0, crash(true)).unwrap(),
            "bad input: failed, not retried"
        );
        assert!(
            e.ended(2, crash(true)).unwrap(),
            "the same message again stops"
        );
        assert!(e.said().last().unwrap().contains("same bad input"));
        // A signal after a failure is what the sweep reports.
        assert!(!e.stop(Stop::Signal(2)));
        assert_eq!(e.signal(), Some(2));
    }

    #[test]
    fn a_stopped_trial_is_neither_failed_nor_requeued() {
        let d = tempfile::tempdir().unwrap();
        let mut e = engine(d.path(), 1, Rules::default(), &[]);
        assert_eq!(e.next(&[], true).unwrap(), Some((0, 0)));
        assert!(!e.ended(0, Exit::Stopped).unwrap());
        assert_eq!((e.failed(), e.more()), (0, false));
    }
}

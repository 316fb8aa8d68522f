//! What a sweep has on disk: the manifest (trial index → run directory, config hash, group), a
//! copy of the sweep file, the lock that keeps a second `charlab sweep` out, and each trial's
//! status as its own `run.json` says. The run directories are the truth; the manifest only maps
//! indices to them, which is the contract `sweep-worker --index N` (and a job array) relies on.

use crate::error::{Error, IoContext, Result};
use crate::run_dir::{RunDir, RunStatus};
use crate::sweep::plan::{self, Plan};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One trial of the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub index: usize,
    pub dir: String,
    pub hash: String,
    pub group: String,
    /// The swept values, for display.
    pub overrides: Vec<(String, serde_json::Value)>,
}

/// `manifest.json` at the sweep root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub experiment: String,
    pub swept: Vec<String>,
    pub pruning: Option<plan::Pruning>,
    pub trials: Vec<Entry>,
    /// A TPE search's state (absent for listed trials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchState>,
    /// A population-based sweep's decisions (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pbt: Option<PbtState>,
    /// The sweep's two objectives (metric, cost), when it has two: compare and the report
    /// mark the Pareto front.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objectives: Vec<String>,
    /// What each trial may not exceed (its worker enforces it).
    #[serde(default, skip_serializing_if = "crate::train::Limits::is_empty")]
    pub limits: crate::train::Limits,
    /// Why the sweep's `stop` rule stopped it, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

/// What a population-based sweep has decided, each decision written before it is acted on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PbtState {
    /// What the decisions depend on besides the results ([`Plan::pbt_key`]).
    pub key: String,
    /// Steps between a member's decisions (its worker pauses it there).
    pub interval: u64,
    /// The explored keys (their schedules are written as scalars).
    pub explored: Vec<String>,
    pub decisions: Vec<Decision>,
}

/// One member's decision at an interval boundary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub member: usize,
    pub step: u64,
    /// The ranking it saw: members that had reached `step`, with their val loss there, best
    /// first.
    pub ranking: Vec<(usize, f64)>,
    /// The member whose weights, optimizer state and data position it copied (it was in the
    /// bottom quantile), with that member's val loss at `step`.
    pub donor: Option<(usize, f64)>,
    /// The explored keys before and after (the same when it was not in the bottom quantile).
    pub old: Vec<(String, serde_json::Value)>,
    pub new: Vec<(String, serde_json::Value)>,
    /// The member's config from here on, when it copied (the donor's with the new values): what
    /// its `config.toml` is rewritten from if that is damaged or lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<crate::config::RunConfig>,
    /// The copy and the new config are in place.
    pub applied: bool,
}

/// What a TPE search has done: the trials themselves are the manifest's entries, in proposal
/// order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchState {
    /// [`Plan::search_key`] of the search these trials belong to.
    pub key: String,
    /// Trials in all (`[search] trials`).
    pub trials: usize,
    /// Trial indices in the order their results became known.
    pub completed: Vec<usize>,
    /// Per proposed trial: how many of `completed` its proposal saw.
    pub seen: Vec<usize>,
    /// Per proposed trial: what its proposal read of the trials then running (their val losses
    /// so far), so that a replay reads the same; empty for a proposal made before any was kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub glimpsed: Vec<Vec<Glimpse>>,
    /// Earlier sweeps' finished trials, told to the search before its first proposal
    /// (`warm_start`), as they were then; `None` until read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm: Option<Vec<WarmTrial>>,
}

/// A trial still running when a proposal was made, as that proposal read its record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Glimpse {
    /// Its index in the manifest.
    pub trial: usize,
    /// Val loss at each evaluation it had reached (finite ones only).
    pub curve: Vec<(u64, f64)>,
    /// Its second objective so far, for a search with two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second: Option<crate::sweep::fidelity::Second>,
}

/// A finished trial of an earlier sweep, as a warm-started search was told it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarmTrial {
    /// Its run directory.
    pub run: String,
    /// Its swept values.
    pub overrides: Vec<(String, serde_json::Value)>,
    /// Val loss at each evaluation.
    pub curve: Vec<(u64, f64)>,
    /// Its score on the search's metric; `None` when it ended early or badly.
    pub score: Option<f64>,
    /// Its second objective, for a search with two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second: Option<crate::sweep::fidelity::Second>,
}

/// The copy of the sweep file a sweep directory keeps.
pub fn sweep_file(root: &Path) -> PathBuf {
    root.join("sweep.toml")
}

/// The sweep file of a sweep directory given on the command line; an error naming the directory
/// (exit code 2) when it is missing or is not a sweep's.
pub fn existing_sweep(root: &Path) -> Result<PathBuf> {
    if !root.is_dir() {
        return Err(Error::usage(root, "no such sweep directory"));
    }
    let file = sweep_file(root);
    if !file.is_file() {
        return Err(Error::usage(
            root,
            "not a sweep directory (it has no sweep.toml; `charlab sweep` writes one)",
        ));
    }
    Ok(file)
}

impl Entry {
    /// The manifest entry of trial `index`.
    pub fn of(index: usize, t: &plan::Trial) -> Entry {
        Entry {
            index,
            dir: plan::dir_name(index, t),
            hash: t.hash.clone(),
            group: t.group.clone(),
            overrides: t
                .overrides
                .iter()
                .map(|(k, v)| (k.clone(), json(v)))
                .collect(),
        }
    }

    /// The trial's name in TensorBoard's HParams table (a session group): its swept values as
    /// in its run directory's name, without the seed, so the seeds of one configuration share a
    /// row; the directory's name when it has no other swept value.
    pub fn group_name(&self) -> String {
        let overrides: Vec<(String, toml::Value)> = self
            .overrides
            .iter()
            .filter(|(k, _)| k != "seed")
            .filter_map(|(k, v)| Some((k.clone(), toml::Value::try_from(v).ok()?)))
            .collect();
        let label = plan::label(&overrides);
        if label.is_empty() {
            self.dir.clone()
        } else {
            label
        }
    }
}

impl Manifest {
    pub fn path(root: &Path) -> PathBuf {
        root.join("manifest.json")
    }

    /// Reads a sweep directory's manifest.
    pub fn load(root: &Path) -> Result<Self> {
        let p = Self::path(root);
        let bytes = std::fs::read(&p).at(&p)?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Run {
            path: p,
            message: format!("not a charlab manifest: {e}"),
        })
    }

    pub fn save(&self, root: &Path) -> Result<()> {
        crate::atomic::write(
            &Self::path(root),
            serde_json::to_string_pretty(self)
                .unwrap_or_default()
                .as_bytes(),
        )
    }

    /// Trial `index`, or an error naming the valid range.
    pub fn entry(&self, index: usize) -> Result<&Entry> {
        self.trials.get(index).ok_or_else(|| {
            Error::invalid(
                "--index",
                format!(
                    "{index} is out of range: the sweep has trials 0..{}",
                    self.trials.len()
                ),
            )
        })
    }
}

fn json(v: &toml::Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// Reconciles a plan with what a sweep directory already holds. The same trials: resume. New
/// trials besides all old ones: appended with `extend`, refused without. An old trial missing
/// from the plan: refused, since its results would no longer match the file.
pub fn reconcile(
    root: &Path,
    plan: &Plan,
    extend: bool,
    say: &mut dyn FnMut(&str),
) -> Result<Manifest> {
    let mut manifest = existing(root, plan, say)?;
    manifest.swept = plan.swept.iter().map(|(k, _)| k.clone()).collect();
    manifest.pruning = plan.experiment.pruning.clone();
    manifest.limits = plan.experiment.constraints;
    manifest.objectives = match plan.objectives.len() {
        2 => plan
            .objectives
            .iter()
            .map(|m| m.name().to_string())
            .collect(),
        _ => Vec::new(),
    };
    if let Some(tpe) = &plan.search {
        reconcile_search(root, plan, tpe, &mut manifest, extend)?;
        return Ok(manifest);
    }
    reconcile_pbt(root, plan, &mut manifest)?;
    if manifest.search.is_some() {
        return Err(Error::Config {
            path: plan.path.clone(),
            message: format!(
                "{} holds a TPE search; the sweep file no longer asks for one: use a new \
                 experiment name",
                root.display()
            ),
        });
    }
    let old_hashes: Vec<&str> = manifest.trials.iter().map(|e| e.hash.as_str()).collect();
    if let Some(gone) = manifest
        .trials
        .iter()
        .find(|e| !plan.trials.iter().any(|t| t.hash == e.hash))
    {
        return Err(Error::Config {
            path: plan.path.clone(),
            message: format!(
                "the sweep file changed: existing trial {} is no longer in it, so {} would no \
                 longer match the file; use a new experiment name",
                gone.dir,
                root.display()
            ),
        });
    }
    let new: Vec<&plan::Trial> = plan
        .trials
        .iter()
        .filter(|t| !old_hashes.contains(&t.hash.as_str()))
        .collect();
    if !new.is_empty() && !manifest.trials.is_empty() && !extend {
        return Err(Error::Config {
            path: plan.path.clone(),
            message: format!(
                "the sweep file adds {} trial(s) to {}; pass --extend to run them too",
                new.len(),
                root.display()
            ),
        });
    }
    for t in new {
        manifest.trials.push(Entry::of(manifest.trials.len(), t));
    }
    Ok(manifest)
}

/// A population-based sweep's state starts with its manifest; a sweep directory that holds one
/// is not turned into the other kind.
fn reconcile_pbt(root: &Path, plan: &Plan, manifest: &mut Manifest) -> Result<()> {
    let changed = |holds: &str, asks: &str| Error::Config {
        path: plan.path.clone(),
        message: format!(
            "{} {holds} a population-based search; the sweep file {asks}: use a new \
             experiment name",
            root.display()
        ),
    };
    match (&plan.pbt, &manifest.pbt) {
        (None, Some(_)) => Err(changed("holds", "no longer asks for one")),
        (Some(_), None) if !manifest.trials.is_empty() => {
            Err(changed("does not hold", "now asks for one"))
        }
        (Some(p), None) => {
            manifest.pbt = Some(PbtState {
                key: plan.pbt_key(),
                interval: p.interval,
                explored: p.explored.clone(),
                decisions: Vec::new(),
            });
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A manifest of `n` listed trials (`000-t`, `001-t`, …), for unit tests of what reads one.
#[cfg(test)]
pub(crate) fn test_manifest(n: usize) -> Manifest {
    Manifest {
        version: 1,
        experiment: "e".into(),
        swept: Vec::new(),
        pruning: None,
        trials: (0..n)
            .map(|i| Entry {
                index: i,
                dir: format!("{i:03}-t"),
                hash: format!("h{i}"),
                group: String::new(),
                overrides: Vec::new(),
            })
            .collect(),
        search: None,
        pbt: None,
        objectives: Vec::new(),
        limits: crate::train::Limits::default(),
        stopped: None,
    }
}

fn empty_manifest(plan: &Plan) -> Manifest {
    Manifest {
        version: 1,
        experiment: plan.experiment.name.clone(),
        swept: Vec::new(),
        pruning: None,
        trials: Vec::new(),
        search: None,
        pbt: None,
        objectives: Vec::new(),
        limits: crate::train::Limits::default(),
        stopped: None,
    }
}

/// The directories under a sweep root that hold a trial (a config or a record).
fn trial_dirs(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dirs: Vec<String> = entries
        .flatten()
        .filter(|e| {
            let run = RunDir::new(e.path());
            run.config_path().is_file() || run.record_path().is_file()
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    dirs
}

/// The manifest `root` holds, or an empty one for a new sweep. One that is missing or damaged
/// while trial directories remain is rebuilt from the sweep file when the file lists the trials
/// (their directory names follow from it) and the directories all match; a TPE search's is
/// refused, since the order its proposals saw results in is kept nowhere else.
fn existing(root: &Path, plan: &Plan, say: &mut dyn FnMut(&str)) -> Result<Manifest> {
    let path = Manifest::path(root);
    let damage = match Manifest::load(root) {
        Ok(m) => return Ok(m),
        Err(e) => e,
    };
    // Only a sweep without a readable manifest needs its directories listed.
    let dirs = trial_dirs(root);
    let problem = if path.exists() {
        damage.to_string()
    } else if dirs.is_empty() {
        return Ok(empty_manifest(plan));
    } else {
        format!(
            "{} is missing while {} holds {} trial directories",
            path.display(),
            root.display(),
            dirs.len()
        )
    };
    let refuse = |why: String| Error::Run {
        path: path.clone(),
        message: format!("{problem}; {why}: restore it, or use a new experiment name"),
    };
    if plan.search.is_some() {
        return Err(refuse(
            "it held the TPE search's history, which its run directories do not".into(),
        ));
    }
    if plan.pbt.is_some() {
        return Err(refuse(
            "it held the population's decisions, which its run directories do not".into(),
        ));
    }
    let mut m = empty_manifest(plan);
    for (i, t) in plan.trials.iter().enumerate() {
        m.trials.push(Entry::of(i, t));
    }
    if let Some(stray) = dirs.iter().find(|d| !m.trials.iter().any(|e| &e.dir == *d)) {
        return Err(refuse(format!(
            "it cannot be rebuilt from the sweep file, which has no trial {stray}"
        )));
    }
    if path.exists() {
        let keep = root.join("manifest.json.damaged");
        std::fs::rename(&path, &keep).at(&keep)?;
    }
    say(&format!(
        "{problem}; rebuilt it from the sweep file ({} trials, {} of them already begun)",
        m.trials.len(),
        dirs.len()
    ));
    Ok(m)
}

/// A TPE search continues only with the same space, defaults and settings; more trials need
/// `--extend`, fewer than already proposed are refused.
fn reconcile_search(
    root: &Path,
    plan: &Plan,
    tpe: &plan::TpeSearch,
    manifest: &mut Manifest,
    extend: bool,
) -> Result<()> {
    let key = plan.search_key();
    let refuse = |message: String| Error::Config {
        path: plan.path.clone(),
        message,
    };
    if manifest.search.is_none() && !manifest.trials.is_empty() {
        return Err(refuse(format!(
            "{} holds listed trials, not a TPE search: use a new experiment name",
            root.display()
        )));
    }
    let fresh = manifest.trials.is_empty() && manifest.search.is_none();
    let state = manifest.search.get_or_insert_with(|| SearchState {
        key: key.clone(),
        trials: tpe.trials,
        ..SearchState::default()
    });
    if fresh {
        return Ok(());
    }
    if state.key != key {
        return Err(refuse(format!(
            "the sweep file changed the search of {} (its domains, defaults or [search] \
             settings); only `trials` may grow (with --extend): use a new experiment name \
             (a search begun before TPE modelled its keys jointly by default resumes with \
             `multivariate = false`, one begun while `explore` defaulted to 0 with \
             `explore = 0`, one begun while it was 0.5 without a fade with `explore_fade = 0`)",
            root.display()
        )));
    }
    if tpe.trials > state.trials && !extend {
        return Err(refuse(format!(
            "the sweep file asks for {} trials where {} had {}; pass --extend to run the others",
            tpe.trials,
            root.display(),
            state.trials
        )));
    }
    if tpe.trials < manifest.trials.len() {
        return Err(refuse(format!(
            "`trials = {}` is fewer than the {} already proposed in {}",
            tpe.trials,
            manifest.trials.len(),
            root.display()
        )));
    }
    if let Some(s) = manifest.search.as_mut() {
        s.trials = tpe.trials;
    }
    Ok(())
}

/// A trial's state, from its run directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrialState {
    Pending,
    Run(RunStatus),
}

/// The state of a trial.
pub fn state(run: &RunDir) -> TrialState {
    match run.status() {
        Some(s) => TrialState::Run(s),
        None => TrialState::Pending,
    }
}

/// True when the trial in `run` has ended for good.
pub fn finished(run: &RunDir) -> bool {
    run.status().is_some_and(RunStatus::is_final)
}

/// The sweep lock: a file holding the owner's pid. A lock whose pid is gone is stale and taken
/// over; a live one refuses. The file appears with its pid already in it (written beside it, then
/// hard-linked into place, which fails if the lock exists): a file created empty and filled after
/// would be read as unreadable by a second sweep in between, and taken over while its owner runs.
pub struct Lock {
    path: PathBuf,
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

impl Lock {
    pub fn acquire(root: &Path) -> Result<Lock> {
        std::fs::create_dir_all(root).at(root)?;
        let path = root.join(".lock");
        let me = std::process::id();
        let mine = root.join(format!(".lock.{me}"));
        std::fs::write(&mine, me.to_string()).at(&mine)?;
        let taken = Self::link(root, &path, &mine, me);
        let _ = std::fs::remove_file(&mine);
        taken?;
        Ok(Lock { path })
    }

    fn link(root: &Path, path: &Path, mine: &Path, me: u32) -> Result<()> {
        for _ in 0..2 {
            match std::fs::hard_link(mine, path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner: Option<u32> = std::fs::read_to_string(path)
                        .ok()
                        .and_then(|s| s.trim().parse().ok());
                    match owner {
                        Some(pid) if pid != me && alive(pid) => {
                            return Err(Error::busy(root, "sweep", Some(pid)))
                        }
                        // Stale (dead owner) or unreadable: take it over.
                        _ => {
                            let _ = std::fs::remove_file(path);
                        }
                    }
                }
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        Err(Error::Run {
            path: root.to_path_buf(),
            message: "could not take the sweep lock".into(),
        })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

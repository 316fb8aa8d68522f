//! The results floor: the runs under a directory (usually a sweep), read once into one row
//! type. `compare`, `report`, importance and `refine` all start from [`collect`] and judge a run
//! by [`Metric`], the same lookup a TPE search scores its trials with, so a run is never read or
//! ranked two ways. Works during a sweep and on runs made by hand: everything comes from the
//! runs' own `run.json` and `config.toml` (and the sweep's manifest, for which keys were swept).

use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::run_dir::{Metric, Metrics, RunDir, RunRecord, RunStatus};
use crate::summary::HValue;
use crate::sweep::manifest::Manifest;
use crate::sweep::plan;
use crate::train;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One run.
#[derive(Debug, Clone)]
pub struct Row {
    /// Its path under the directory read (its own name when that directory is the run).
    pub run: String,
    /// The swept keys with this run's values (`-` where its config could not be read).
    pub hparams: Vec<(String, String)>,
    /// Runs that differ only in their seed share it (empty without a config).
    pub group: String,
    /// The run directory.
    pub path: PathBuf,
    /// Its record; a `running` one whose trainer is gone reads `interrupted`.
    pub record: RunRecord,
    /// A population-based sweep's member: whom it copied, at which step (`400←003`), oldest
    /// first; `None` outside such a sweep.
    pub lineage: Option<String>,
    /// On the Pareto front of the sweep's two objectives (see [`mark_pareto`]); `None` when
    /// they are not being compared.
    pub pareto: Option<bool>,
}

impl Row {
    pub fn status(&self) -> RunStatus {
        self.record.status
    }

    /// `metric` of this run, lower is better (see [`Metric::of`]).
    pub fn metric(&self, metric: Metric) -> Option<f64> {
        metric.of(&self.record)
    }

    /// The best evaluation's metrics.
    pub fn best(&self) -> Option<Metrics> {
        self.record.best_metrics
    }

    /// This run's value of swept key `key`.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.hparams
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Runs of one configuration with different seeds (two or more).
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub group: String,
    /// The swept keys but the seed.
    pub hparams: Vec<(String, String)>,
    pub runs: usize,
    /// Mean ± std over the runs.
    pub best_val_loss: Option<(f64, f64)>,
    pub best_val_bpc: Option<(f64, f64)>,
    pub best_val_accuracy: Option<(f64, f64)>,
}

/// What [`collect`] found under a directory.
#[derive(Debug, Clone)]
pub struct Runs {
    pub rows: Vec<Row>,
    pub groups: Vec<Group>,
    /// One line per file that could not be read (a run left out, a config whose values are
    /// left blank), naming the file; for stderr.
    pub warnings: Vec<String>,
    /// The sweep's manifest, when the directory is a sweep's.
    pub manifest: Option<Manifest>,
}

/// How a sweep spent its steps on one value of a swept key with few values (a choice such as
/// `hidden`): what a user reads to see why a search settled where it did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Spent {
    pub key: String,
    pub value: String,
    pub trials: usize,
    pub completed: usize,
    pub pruned: usize,
    /// Steps trained, and their share of all the sweep's steps.
    pub steps: u64,
    pub share: f64,
}

/// Keys with more distinct values than this (drawn from a range) get no budget lines.
const BUDGET_MAX_VALUES: usize = 6;

/// The steps spent per value of every swept key but the seed with at most six values, in the rows' key
/// order, values in order of first appearance; and how many trials stopped early at each step
/// (a pruning rule's rungs), lowest step first. Empty when no key qualifies, or when every value
/// of each key got the same trials and steps and none was pruned (a plain grid).
pub fn budget(rows: &[Row]) -> (Vec<Spent>, Vec<(u64, usize)>) {
    let total: u64 = rows.iter().map(|r| r.record.steps).sum();
    let keys: Vec<String> = rows
        .first()
        .map(|r| r.hparams.iter().map(|(k, _)| k.clone()).collect())
        .unwrap_or_default();
    let mut spent = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let mut values: Vec<&str> = Vec::new();
        for r in rows {
            let v = r.hparams.get(i).map_or("-", |(_, v)| v.as_str());
            if !values.contains(&v) {
                values.push(v);
            }
        }
        // A seed is not a choice a search makes.
        if key == "seed" || values.len() < 2 || values.len() > BUDGET_MAX_VALUES {
            continue;
        }
        for v in values {
            let of: Vec<&Row> = rows
                .iter()
                .filter(|r| r.hparams.get(i).is_some_and(|(_, x)| x == v))
                .collect();
            let steps: u64 = of.iter().map(|r| r.record.steps).sum();
            spent.push(Spent {
                key: key.clone(),
                value: v.to_string(),
                trials: of.len(),
                completed: of
                    .iter()
                    .filter(|r| r.status() == RunStatus::Completed)
                    .count(),
                pruned: of
                    .iter()
                    .filter(|r| r.status() == RunStatus::Pruned)
                    .count(),
                steps,
                share: steps as f64 / total.max(1) as f64,
            });
        }
    }
    let mut stops: Vec<(u64, usize)> = Vec::new();
    for r in rows.iter().filter(|r| r.status() == RunStatus::Pruned) {
        match stops.iter_mut().find(|(s, _)| *s == r.record.steps) {
            Some((_, n)) => *n += 1,
            None => stops.push((r.record.steps, 1)),
        }
    }
    stops.sort_unstable();
    // A grid without pruning spends the same on every value: nothing to read there.
    let uneven = spent.iter().any(|a| {
        spent
            .iter()
            .any(|b| a.key == b.key && (a.trials, a.steps) != (b.trials, b.steps))
    });
    if !uneven && stops.is_empty() {
        spent.clear();
    }
    (spent, stops)
}

/// A sweep's two objectives, when its file names two.
pub fn objectives(m: &Manifest) -> Option<(Metric, Metric)> {
    match &m.objectives[..] {
        [a, b] => Some((
            Metric::parse(a, &Metric::ALL)?,
            Metric::parse(b, &Metric::ALL)?,
        )),
        _ => None,
    }
}

/// Marks each run on (or off) the Pareto front of `objectives` among the completed runs (a
/// pruned, infeasible or unfinished one is off it: it is not a model one would pick).
pub fn mark_pareto(rows: &mut [Row], (a, b): (Metric, Metric)) {
    let both: Vec<(usize, (f64, f64))> = (rows.iter().enumerate())
        .filter(|(_, r)| r.status() == RunStatus::Completed)
        .filter_map(|(i, r)| Some((i, (r.metric(a)?, r.metric(b)?))))
        .filter(|(_, (x, y))| x.is_finite() && y.is_finite())
        .collect();
    let points: Vec<(f64, f64)> = both.iter().map(|(_, p)| *p).collect();
    let front = crate::pareto::fronts(&points)
        .into_iter()
        .next()
        .unwrap_or_default();
    for r in rows.iter_mut() {
        r.pareto = Some(false);
    }
    for k in front {
        rows[both[k].0].pareto = Some(true);
    }
}

/// Reads every run under `root` (four levels deep) and groups the seeds.
pub fn collect(root: &Path) -> Result<Runs> {
    if !root.is_dir() {
        return Err(Error::usage(root, "no such directory of runs"));
    }
    let (found, warnings) = find_runs(root);
    let manifest = Manifest::load(root).ok();
    let swept = swept_keys(manifest.as_ref(), &found);
    let mut rows: Vec<Row> = found
        .into_iter()
        .map(|f| {
            let mut r = row(root, &swept, f);
            r.lineage = manifest.as_ref().and_then(|m| lineage(m, &r.path));
            r
        })
        .collect();
    if let Some(pair) = manifest.as_ref().and_then(objectives) {
        mark_pareto(&mut rows, pair);
    }
    let groups = seed_groups(&rows);
    Ok(Runs {
        rows,
        groups,
        warnings,
        manifest,
    })
}

/// A run as found: its directory, record and config (when it could be read).
struct Found {
    dir: PathBuf,
    record: RunRecord,
    config: Option<RunConfig>,
}

fn find_runs(root: &Path) -> (Vec<Found>, Vec<String>) {
    let mut found = Vec::new();
    let mut warnings = Vec::new();
    for entry in walkdir::WalkDir::new(root)
        .max_depth(4)
        .sort_by_file_name()
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_dir())
    {
        let dir = entry.path();
        let run = RunDir::new(dir);
        if !RunDir::is_run(dir) {
            if run.checkpoints().is_dir() {
                warnings.push(format!(
                    "skipped {}: missing while the run has checkpoints (rerunning its sweep, or \
                     `train --resume`, rebuilds it from the run's event files)",
                    run.record_path().display()
                ));
            }
            continue;
        }
        // Records are written atomically, so one that does not parse is damaged, not half
        // written: say so rather than leave the run out silently.
        match run.read_record() {
            Ok(Some(mut record)) => {
                // A killed trainer leaves `running` behind: it is interrupted.
                if record.status == RunStatus::Running && !run.is_training() {
                    record.status = RunStatus::Interrupted;
                }
                let config = match run.load_config() {
                    Ok(c) => Some(c),
                    Err(e) => {
                        warnings.push(format!("{e}; its hyperparameters are left blank"));
                        None
                    }
                };
                found.push(Found {
                    dir: dir.to_path_buf(),
                    record,
                    config,
                })
            }
            Ok(None) => {}
            Err(e) => warnings.push(format!("skipped {e}")),
        }
    }
    (found, warnings)
}

fn show(v: &HValue) -> String {
    match v {
        HValue::Num(n) => format!("{n}"),
        HValue::Str(s) => s.clone(),
        HValue::Bool(b) => b.to_string(),
    }
}

/// Every scalar key of a config (dotted for `clean.*`) → its value as text.
fn flat_values(cfg: &RunConfig) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = train::config_values(cfg)
        .iter()
        .map(|(k, v)| (k.clone(), show(v)))
        .collect();
    if let Ok(toml::Value::Table(t)) = toml::Value::try_from(&cfg.clean) {
        for (k, v) in t {
            out.push((format!("clean.{k}"), v.to_string()));
        }
    }
    out
}

/// The swept keys: the manifest's for a sweep, else the keys whose values differ across the
/// runs.
fn swept_keys(manifest: Option<&Manifest>, found: &[Found]) -> Vec<String> {
    if let Some(m) = manifest {
        return m.swept.clone();
    }
    let all: Vec<Vec<(String, String)>> = found
        .iter()
        .filter_map(|f| f.config.as_ref().map(flat_values))
        .collect();
    let Some(first) = all.first() else {
        return Vec::new();
    };
    first
        .iter()
        .filter(|(k, v)| {
            all.iter()
                .any(|o| o.iter().find(|(n, _)| n == k).map(|x| &x.1) != Some(v))
        })
        .map(|(k, _)| k.clone())
        .collect()
}

fn row(root: &Path, swept: &[String], found: Found) -> Row {
    let values = found.config.as_ref().map(flat_values).unwrap_or_default();
    let hparams = swept
        .iter()
        .map(|k| {
            let v = values
                .iter()
                .find(|(n, _)| n == k)
                .map_or("-".into(), |x| x.1.clone());
            (k.clone(), v)
        })
        .collect();
    Row {
        run: run_name(&found.dir, root),
        hparams,
        group: found
            .config
            .as_ref()
            .map_or_else(String::new, plan::group_hash),
        path: found.dir,
        record: found.record,
        lineage: None,
        pareto: None,
    }
}

/// The lineage of the member in `dir`, when the manifest is a population-based sweep's.
fn lineage(manifest: &Manifest, dir: &Path) -> Option<String> {
    manifest.pbt.as_ref()?;
    let name = dir.file_name()?.to_string_lossy();
    let member = manifest.trials.iter().position(|e| e.dir == name)?;
    Some(crate::sweep::pbt::lineage_text(manifest, member))
}

/// A run's name in the table: its path under `root`, or its own name when `root` is the run.
fn run_name(dir: &Path, root: &Path) -> String {
    let rel = dir.strip_prefix(root).unwrap_or(dir);
    if rel.as_os_str().is_empty() {
        return base_name(root);
    }
    rel.to_string_lossy()
        .replace(std::path::MAIN_SEPARATOR, "/")
}

/// A directory's own name (`runs/quickstart` → `quickstart`, `.` → the current directory's).
pub fn base_name(dir: &Path) -> String {
    dir.canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dir.display().to_string())
}

/// Mean and sample standard deviation.
fn mean_std(xs: &[f64]) -> Option<(f64, f64)> {
    if xs.is_empty() {
        return None;
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    Some((mean, var.sqrt()))
}

/// Runs that differ only in their seed, summarised (two or more runs each).
fn seed_groups(rows: &[Row]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for r in rows {
        if r.group.is_empty() || groups.iter().any(|g| g.group == r.group) {
            continue;
        }
        let members: Vec<&Row> = rows.iter().filter(|o| o.group == r.group).collect();
        if members.len() < 2 {
            continue;
        }
        let pick = |f: fn(Metrics) -> f64| -> Vec<f64> {
            members.iter().filter_map(|m| m.best().map(f)).collect()
        };
        groups.push(Group {
            group: r.group.clone(),
            hparams: r
                .hparams
                .iter()
                .filter(|(k, _)| k != "seed")
                .cloned()
                .collect(),
            runs: members.len(),
            best_val_loss: mean_std(&pick(|m| m.val_loss)),
            best_val_bpc: mean_std(&pick(|m| m.val_bpc)),
            best_val_accuracy: mean_std(&pick(|m| m.val_accuracy)),
        });
    }
    groups
}

/// Sorts the runs best first by `key`: a [`Metric`] name or a swept key (numbers by value).
pub fn sort(rows: &mut [Row], key: &str) -> Result<()> {
    if let Some(metric) = Metric::parse(key, &Metric::ALL) {
        sort_by_metric(rows, metric);
        return Ok(());
    }
    if rows.first().is_some_and(|r| r.value(key).is_some()) {
        let val = |r: &Row| r.value(key).unwrap_or_default().to_string();
        rows.sort_by(
            |a, b| match (val(a).parse::<f64>(), val(b).parse::<f64>()) {
                (Ok(x), Ok(y)) => x.total_cmp(&y),
                _ => val(a).cmp(&val(b)),
            },
        );
        return Ok(());
    }
    Err(Error::invalid(
        "--sort",
        format!(
            "`{key}`: expected one of {} or a swept key",
            Metric::names(&Metric::ALL)
        ),
    ))
}

/// Sorts the runs best first by `metric`; runs without it yet go last, by name.
pub fn sort_by_metric(rows: &mut [Row], metric: Metric) {
    rows.sort_by(|a, b| match (a.metric(metric), b.metric(metric)) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.run.cmp(&b.run),
    });
}

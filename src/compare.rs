//! `charlab compare`: one row per run under a directory (usually a sweep), read from the runs'
//! own `run.json` and `config.toml`, so it works during a sweep and on runs made by hand. Runs
//! that differ only in their seed are also summarised as one group (mean ± std).

use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::run_dir::{RunDir, RunStatus};
use crate::summary::HValue;
use crate::sweep::ledger::Manifest;
use crate::sweep::plan;
pub use crate::table::{render, Format};
use crate::train::{self, RunRecord};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Options of `charlab compare`.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// `val/loss`, `val/bpc`, `val/accuracy`, `final/val/loss`, `train/loss`, `time`,
    /// `tokens_per_s`, `steps`, or a swept key.
    pub sort: String,
    pub top: Option<usize>,
    pub format: Format,
    /// Instead of the runs: how much of the metric (`sort`, when it is a validation metric;
    /// else best val/loss) each swept key explains.
    pub importance: bool,
}

/// One run.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub run: String,
    pub hparams: Vec<(String, String)>,
    pub status: String,
    pub steps: u64,
    pub total_steps: u64,
    pub best_val_loss: Option<f64>,
    pub best_val_bpc: Option<f64>,
    pub best_val_accuracy: Option<f64>,
    pub final_val_loss: Option<f64>,
    pub train_loss: Option<f64>,
    pub time_secs: f64,
    pub tokens_per_s: f64,
    pub group: String,
    /// The run directory.
    #[serde(skip)]
    pub path: PathBuf,
    /// Every evaluation's validation loss (for curves).
    #[serde(skip)]
    pub evals: Vec<crate::run_dir::EvalPoint>,
}

/// Runs of one configuration with different seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub group: String,
    pub hparams: Vec<(String, String)>,
    pub runs: usize,
    pub best_val_loss: Option<(f64, f64)>,
    pub best_val_bpc: Option<(f64, f64)>,
    pub best_val_accuracy: Option<(f64, f64)>,
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

fn mean_std(xs: &[f64]) -> Option<(f64, f64)> {
    if xs.is_empty() {
        return None;
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    Some((mean, var.sqrt()))
}

/// The runs under `root`, and a warning for each file that could not be read (a run left out,
/// a config whose hyperparameters are left blank), naming the file.
type Found = (Vec<(PathBuf, RunRecord, Option<RunConfig>)>, Vec<String>);

fn find_runs(root: &Path) -> Found {
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    for entry in walkdir::WalkDir::new(root)
        .max_depth(4)
        .sort_by_file_name()
        .into_iter()
        .filter_map(|e| e.ok())
    {
        let dir = entry.path();
        if !entry.file_type().is_dir() {
            continue;
        }
        let run = RunDir::new(dir);
        if !RunDir::is_run(dir) {
            if run.checkpoints().is_dir() {
                skipped.push(format!(
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
            Ok(Some(mut rec)) => {
                // A killed trainer leaves `running` behind: it is interrupted.
                if rec.status == RunStatus::Running && !run.is_training() {
                    rec.status = RunStatus::Interrupted;
                }
                let cfg = match run.load_config() {
                    Ok(c) => Some(c),
                    Err(e) => {
                        skipped.push(format!("{e}; its hyperparameters are left blank"));
                        None
                    }
                };
                found.push((dir.to_path_buf(), rec, cfg))
            }
            Ok(None) => {}
            Err(e) => skipped.push(format!("skipped {e}")),
        }
    }
    (found, skipped)
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

/// The swept keys: the manifest's for a sweep, else the keys whose values differ across the
/// runs.
fn swept_keys(root: &Path, found: &[(PathBuf, RunRecord, Option<RunConfig>)]) -> Vec<String> {
    if let Ok(m) = Manifest::load(root) {
        return m.swept;
    }
    let all: Vec<Vec<(String, String)>> = found
        .iter()
        .filter_map(|(_, _, c)| c.as_ref().map(flat_values))
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

fn row(
    root: &Path,
    swept: &[String],
    (dir, rec, cfg): &(PathBuf, RunRecord, Option<RunConfig>),
) -> Row {
    let values = cfg.as_ref().map(flat_values).unwrap_or_default();
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
        run: run_name(dir, root),
        hparams,
        status: rec.status.to_string(),
        steps: rec.steps,
        total_steps: rec.total_steps,
        best_val_loss: rec.best_metrics.map(|m| m.val_loss),
        best_val_bpc: rec.best_metrics.map(|m| m.val_bpc),
        best_val_accuracy: rec.best_metrics.map(|m| m.val_accuracy),
        final_val_loss: rec.final_metrics.map(|m| m.val_loss),
        train_loss: rec.last_train_loss,
        time_secs: rec.elapsed_secs,
        tokens_per_s: rec.tokens_per_s,
        group: cfg.as_ref().map_or_else(String::new, plan::group_hash),
        path: dir.clone(),
        evals: rec.evals.clone(),
    }
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
        let pick = |f: fn(&Row) -> Option<f64>| -> Vec<f64> {
            members.iter().filter_map(|m| f(m)).collect()
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
            best_val_loss: mean_std(&pick(|m| m.best_val_loss)),
            best_val_bpc: mean_std(&pick(|m| m.best_val_bpc)),
            best_val_accuracy: mean_std(&pick(|m| m.best_val_accuracy)),
        });
    }
    groups
}

/// Collects the rows and seed groups under `root`, and the warnings about unreadable files.
pub fn collect(root: &Path) -> Result<(Vec<Row>, Vec<Group>, Vec<String>)> {
    if !root.is_dir() {
        return Err(Error::usage(root, "no such directory of runs"));
    }
    let (found, skipped) = find_runs(root);
    let swept = swept_keys(root, &found);
    let rows: Vec<Row> = found.iter().map(|f| row(root, &swept, f)).collect();
    let groups = seed_groups(&rows);
    Ok((rows, groups, skipped))
}

/// A sortable metric of a row, oriented so that lower is better.
fn metric_of(r: &Row, key: &str) -> Option<f64> {
    match key {
        "val/loss" => r.best_val_loss,
        "val/bpc" => r.best_val_bpc,
        "val/accuracy" => r.best_val_accuracy.map(|a| -a),
        "final/val/loss" => r.final_val_loss,
        "train/loss" => r.train_loss,
        "time" => Some(r.time_secs),
        "tokens_per_s" => Some(-r.tokens_per_s),
        "steps" => Some(-(r.steps as f64)),
        _ => None,
    }
}

/// Sorts the runs best first by `key` (see [`CompareOptions::sort`]).
pub fn sort(rows: &mut [Row], key: &str) -> Result<()> {
    let metric = |r: &Row| metric_of(r, key);
    const METRICS: &[&str] = &[
        "val/loss",
        "val/bpc",
        "val/accuracy",
        "final/val/loss",
        "train/loss",
        "time",
        "tokens_per_s",
        "steps",
    ];
    if METRICS.contains(&key) {
        // Runs without the metric yet go last.
        rows.sort_by(|a, b| match (metric(a), metric(b)) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.run.cmp(&b.run),
        });
        return Ok(());
    }
    if rows
        .first()
        .is_some_and(|r| r.hparams.iter().any(|(k, _)| k == key))
    {
        let val = |r: &Row| {
            r.hparams
                .iter()
                .find(|(k, _)| k == key)
                .map(|x| x.1.clone())
                .unwrap_or_default()
        };
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
            METRICS.join(", ")
        ),
    ))
}

fn f(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn pm(v: Option<(f64, f64)>) -> String {
    v.map_or("-".into(), |(m, s)| format!("{m:.4} ± {s:.4}"))
}

/// A rendered comparison, and the warnings about files it could not read (for stderr).
#[derive(Debug, Clone)]
pub struct Comparison {
    pub text: String,
    pub skipped: Vec<String>,
}

/// Renders the comparison of the runs under `root`.
pub fn compare(root: &Path, opts: &CompareOptions) -> Result<Comparison> {
    let (rows, groups, skipped) = collect(root)?;
    let text = if opts.importance {
        let metric = importance_metric(&opts.sort);
        render_importance(metric, &importance(&rows, metric), &groups, opts.format)
    } else {
        render_runs(rows, &groups, opts)?
    };
    Ok(Comparison { text, skipped })
}

/// The validation metric importance is computed for: `sort` when it is one, else val/loss.
pub fn importance_metric(sort: &str) -> &'static str {
    crate::run_dir::VALIDATION_METRICS
        .iter()
        .copied()
        .find(|m| *m == sort)
        .unwrap_or("val/loss")
}

/// The importance of the swept keys for `metric` over the finished runs, seeds averaged.
pub fn importance(rows: &[Row], metric: &str) -> crate::importance::Importance {
    let keys: Vec<String> = rows
        .first()
        .map(|r| {
            r.hparams
                .iter()
                .map(|(k, _)| k.clone())
                .filter(|k| k != "seed")
                .collect()
        })
        .unwrap_or_default();
    let finished: Vec<&Row> = rows
        .iter()
        .filter(|r| r.status == "completed" || r.status == "pruned")
        .filter(|r| metric_of(r, metric).is_some_and(f64::is_finite))
        .collect();
    let mut obs: Vec<(String, crate::importance::Observation, usize)> = Vec::new();
    for r in finished {
        let values: Vec<String> = keys
            .iter()
            .map(|k| {
                r.hparams
                    .iter()
                    .find(|(n, _)| n == k)
                    .map_or("-".into(), |x| x.1.clone())
            })
            .collect();
        let m = metric_of(r, metric).unwrap_or(f64::NAN);
        // Seeds of one configuration are one observation: their mean.
        match obs
            .iter_mut()
            .find(|(g, _, _)| !r.group.is_empty() && *g == r.group)
        {
            Some((_, o, n)) => {
                o.metric = (o.metric * *n as f64 + m) / (*n + 1) as f64;
                *n += 1;
            }
            None => obs.push((
                r.group.clone(),
                crate::importance::Observation { values, metric: m },
                1,
            )),
        }
    }
    let obs: Vec<_> = obs.into_iter().map(|(_, o, _)| o).collect();
    crate::importance::analyse(&keys, &obs, 1)
}

/// The importance as a table, markdown, CSV or JSON (with the seed groups).
fn render_importance(
    metric: &str,
    imp: &crate::importance::Importance,
    groups: &[Group],
    format: Format,
) -> String {
    use crate::importance::Importance;
    if format == Format::Json {
        let v = serde_json::json!({ "metric": format!("best {metric}"), "importance": imp, "seed_groups": groups });
        return serde_json::to_string_pretty(&v).unwrap_or_default();
    }
    let (n, keys) = match imp {
        Importance::TooFew {
            observations,
            needed,
        } => {
            return format!(
                "importance of best {metric}: too few finished trials to say anything \
                 ({observations} configurations finished; at least {needed} needed)\n"
            )
        }
        Importance::NothingVaries => {
            return format!(
                "importance of best {metric}: no swept key varies across the finished runs\n"
            )
        }
        Importance::Ranked { observations, keys } => (observations, keys),
    };
    let headers: Vec<String> = ["key", "importance", "spearman", "best value", "values"]
        .map(String::from)
        .to_vec();
    let lines: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.key.clone(),
                format!("{:.3}", k.importance),
                k.spearman.map_or("-".into(), |r| format!("{r:+.2}")),
                k.best.clone(),
                k.distinct.to_string(),
            ]
        })
        .collect();
    let mut out = String::new();
    if format != Format::Csv {
        out.push_str(&format!(
            "importance of best {metric} over {n} finished configurations (seeds averaged; \
             functional ANOVA on a random forest, shares sum to 1; spearman: rank correlation \
             with the metric)\n"
        ));
    }
    out.push_str(&render(&headers, &lines, format));
    out
}

/// The runs as table cells: headers (run, swept keys, status and metrics) and one line each.
pub fn run_cells(rows: &[Row]) -> (Vec<String>, Vec<Vec<String>>) {
    let keys: Vec<String> = rows
        .first()
        .map(|r| r.hparams.iter().map(|(k, _)| k.clone()).collect())
        .unwrap_or_default();
    let mut headers = vec!["run".to_string()];
    headers.extend(keys.iter().cloned());
    headers.extend(
        [
            "status",
            "steps",
            "best val/loss",
            "best val/bpc",
            "best val/acc",
            "final val/loss",
            "time_s",
            "chars/s",
        ]
        .map(String::from),
    );
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut l = vec![r.run.clone()];
            l.extend(r.hparams.iter().map(|(_, v)| v.clone()));
            l.extend([
                r.status.clone(),
                format!("{}/{}", r.steps, r.total_steps),
                f(r.best_val_loss, 4),
                f(r.best_val_bpc, 3),
                f(r.best_val_accuracy, 3),
                f(r.final_val_loss, 4),
                format!("{:.0}", r.time_secs),
                format!("{:.0}", r.tokens_per_s),
            ]);
            l
        })
        .collect();
    (headers, lines)
}

fn render_runs(mut rows: Vec<Row>, groups: &[Group], opts: &CompareOptions) -> Result<String> {
    sort(&mut rows, &opts.sort)?;
    if let Some(k) = opts.top {
        rows.truncate(k);
    }
    if opts.format == Format::Json {
        let v = serde_json::json!({ "runs": rows, "seed_groups": groups });
        return Ok(serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    let (headers, lines) = run_cells(&rows);
    let mut out = render(&headers, &lines, opts.format);
    if !groups.is_empty() && opts.format != Format::Csv {
        let gkeys: Vec<String> = groups[0].hparams.iter().map(|(k, _)| k.clone()).collect();
        let mut gh = gkeys.clone();
        gh.extend(["runs", "val/loss (mean ± std)", "val/bpc", "val/acc"].map(String::from));
        let gl: Vec<Vec<String>> = groups
            .iter()
            .map(|g| {
                let mut l: Vec<String> = g.hparams.iter().map(|(_, v)| v.clone()).collect();
                l.extend([
                    g.runs.to_string(),
                    pm(g.best_val_loss),
                    pm(g.best_val_bpc),
                    pm(g.best_val_accuracy),
                ]);
                l
            })
            .collect();
        out.push_str("\nseed groups:\n");
        out.push_str(&render(&gh, &gl, opts.format));
    }
    Ok(out)
}

//! `charlab compare`: the runs under a directory (usually a sweep) as a table, markdown, CSV or
//! JSON, best first, with the runs that differ only in their seed summarised as one group
//! (mean ± std), or instead how much each swept key explains the metric. Reading and ranking
//! the runs is the results floor's ([`crate::runs`]); this module only renders.

use crate::error::Result;
use crate::importance::{self, Importance};
use crate::run_dir::Metric;
use crate::runs::{self, Group, Row};
pub use crate::table::{render, Format};
use serde::Serialize;
use std::path::Path;

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
    /// Only the runs on the Pareto front of the sweep's two objectives (best val/loss and time
    /// when its file names none).
    pub pareto: bool,
}

/// A run as `--format json` writes it.
#[derive(Serialize)]
struct RowJson<'a> {
    run: &'a str,
    hparams: &'a [(String, String)],
    status: String,
    steps: u64,
    total_steps: u64,
    best_val_loss: Option<f64>,
    best_val_bpc: Option<f64>,
    best_val_accuracy: Option<f64>,
    final_val_loss: Option<f64>,
    train_loss: Option<f64>,
    time_secs: f64,
    tokens_per_s: f64,
    group: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    lineage: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pareto: Option<bool>,
}

impl<'a> From<&'a Row> for RowJson<'a> {
    fn from(r: &'a Row) -> Self {
        let rec = &r.record;
        RowJson {
            run: &r.run,
            hparams: &r.hparams,
            status: rec.status.to_string(),
            steps: rec.steps,
            total_steps: rec.total_steps,
            best_val_loss: r.best().map(|m| m.val_loss),
            best_val_bpc: r.best().map(|m| m.val_bpc),
            best_val_accuracy: r.best().map(|m| m.val_accuracy),
            final_val_loss: rec.final_metrics.map(|m| m.val_loss),
            train_loss: rec.last_train_loss,
            time_secs: rec.elapsed_secs,
            tokens_per_s: rec.tokens_per_s,
            group: &r.group,
            lineage: r.lineage.as_deref(),
            pareto: r.pareto,
        }
    }
}

/// `v` with `digits` decimals, `-` when absent.
fn decimals(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

/// `mean ± std`, `-` when absent.
fn mean_pm_std(v: Option<(f64, f64)>) -> String {
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
    let mut found = runs::collect(root)?;
    if opts.pareto {
        if found.rows.iter().all(|r| r.pareto.is_none()) {
            runs::mark_pareto(&mut found.rows, (Metric::ValLoss, Metric::Time));
        }
        found.rows.retain(|r| r.pareto == Some(true));
    }
    let mut text = if opts.importance {
        let metric = importance_metric(&opts.sort);
        let imp = importance::of_runs(&found.rows, metric);
        render_importance(metric, &imp, &found.groups, opts.format)
    } else {
        render_runs(found.rows, &found.groups, opts)?
    };
    if let (Some(m), Format::Table | Format::Markdown) = (&found.manifest, opts.format) {
        for line in sweep_notes(m) {
            text.push_str(&format!("\n{line}\n"));
        }
    }
    Ok(Comparison {
        text,
        skipped: found.warnings,
    })
}

/// What a sweep's manifest says about the sweep as a whole (compare's and the report's closing
/// lines): why it stopped early, when its `stop` rule stopped it.
pub fn sweep_notes(m: &crate::sweep::manifest::Manifest) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(why) = &m.stopped {
        notes.push(format!("the sweep stopped early: {why}"));
    }
    if let [a, b] = &m.objectives[..] {
        notes.push(format!(
            "objectives: {a} and {b}; `*` marks the Pareto front (completed runs no other \
             beats on both; `--pareto` shows only them)"
        ));
    }
    let warm = m.search.as_ref().and_then(|s| s.warm.as_ref());
    if let Some(warm) = warm.filter(|w| !w.is_empty()) {
        let scored: Vec<&crate::sweep::manifest::WarmTrial> =
            warm.iter().filter(|w| w.score.is_some()).collect();
        let best = scored.iter().min_by(|a, b| {
            a.score
                .unwrap_or(f64::MAX)
                .total_cmp(&b.score.unwrap_or(f64::MAX))
        });
        notes.push(format!(
            "warm start: {} finished trials of earlier sweeps told to the search before its \
             first proposal (not run here, not in this table){}",
            warm.len(),
            best.map_or(String::new(), |b| format!(
                "; the best of them {} ({:.4})",
                b.run,
                b.score.unwrap_or(f64::NAN)
            ))
        ));
    }
    notes
}

/// The validation metric importance is computed for: `sort` when it is one, else val/loss.
pub fn importance_metric(sort: &str) -> Metric {
    Metric::parse(sort, &Metric::VALIDATION).unwrap_or(Metric::ValLoss)
}

/// The importance as a table, markdown, CSV or JSON (with the seed groups).
fn render_importance(metric: Metric, imp: &Importance, groups: &[Group], format: Format) -> String {
    let metric = metric.name();
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
    // A population-based sweep's members: whom each copied, when.
    let lineage = rows.iter().any(|r| r.lineage.is_some());
    if lineage {
        headers.push("lineage (step←member)".into());
    }
    // A sweep with two objectives: which runs are on their Pareto front.
    let pareto = rows.iter().any(|r| r.pareto.is_some());
    if pareto {
        headers.push("pareto".into());
    }
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let rec = &r.record;
            let mut l = vec![r.run.clone()];
            l.extend(r.hparams.iter().map(|(_, v)| v.clone()));
            l.extend([
                rec.status.to_string(),
                format!("{}/{}", rec.steps, rec.total_steps),
                decimals(r.best().map(|m| m.val_loss), 4),
                decimals(r.best().map(|m| m.val_bpc), 3),
                decimals(r.best().map(|m| m.val_accuracy), 3),
                decimals(rec.final_metrics.map(|m| m.val_loss), 4),
                format!("{:.0}", rec.elapsed_secs),
                format!("{:.0}", rec.tokens_per_s),
            ]);
            if lineage {
                l.push(r.lineage.clone().unwrap_or_else(|| "-".into()));
            }
            if pareto {
                l.push(if r.pareto == Some(true) { "*" } else { "" }.into());
            }
            l
        })
        .collect();
    (headers, lines)
}

/// How the runs spent their steps ([`runs::budget`]) as table cells.
pub fn budget_cells(spent: &[runs::Spent]) -> (Vec<String>, Vec<Vec<String>>) {
    let headers = [
        "key",
        "value",
        "trials",
        "completed",
        "pruned",
        "steps",
        "share",
    ]
    .map(String::from)
    .to_vec();
    let lines = spent
        .iter()
        .map(|s| {
            vec![
                s.key.clone(),
                s.value.clone(),
                s.trials.to_string(),
                s.completed.to_string(),
                s.pruned.to_string(),
                s.steps.to_string(),
                format!("{:.0}%", 100.0 * s.share),
            ]
        })
        .collect();
    (headers, lines)
}

/// `pruned: 5 at step 100, 1 at step 200`, or nothing when no trial was pruned.
pub fn pruned_line(stops: &[(u64, usize)]) -> Option<String> {
    let at: Vec<String> = stops
        .iter()
        .map(|(s, n)| format!("{n} at step {s}"))
        .collect();
    (!at.is_empty()).then(|| format!("pruned: {}", at.join(", ")))
}

fn render_runs(mut rows: Vec<Row>, groups: &[Group], opts: &CompareOptions) -> Result<String> {
    // The budget is the whole sweep's, whatever `--top` shows.
    let (spent, stops) = runs::budget(&rows);
    runs::sort(&mut rows, &opts.sort)?;
    if let Some(k) = opts.top {
        rows.truncate(k);
    }
    if opts.format == Format::Json {
        let json: Vec<RowJson> = rows.iter().map(RowJson::from).collect();
        let stops: Vec<_> = stops
            .iter()
            .map(|(step, trials)| serde_json::json!({ "step": step, "trials": trials }))
            .collect();
        let v = serde_json::json!({ "runs": json, "seed_groups": groups,
            "budget": { "per_value": spent, "pruned_at": stops } });
        return Ok(serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    let (headers, lines) = run_cells(&rows);
    let mut out = render(&headers, &lines, opts.format);
    if !spent.is_empty() && opts.format != Format::Csv {
        let (headers, lines) = budget_cells(&spent);
        out.push_str("\nbudget (steps trained per value of each swept choice):\n");
        out.push_str(&render(&headers, &lines, opts.format));
        if let Some(line) = pruned_line(&stops) {
            out.push_str(&format!("{line}\n"));
        }
    }
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
                    mean_pm_std(g.best_val_loss),
                    mean_pm_std(g.best_val_bpc),
                    mean_pm_std(g.best_val_accuracy),
                ]);
                l
            })
            .collect();
        out.push_str("\nseed groups:\n");
        out.push_str(&render(&gh, &gl, opts.format));
    }
    Ok(out)
}

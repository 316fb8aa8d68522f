//! `charlab refine`: coarse-to-fine in one command. Reads a sweep directory (its copy of the sweep
//! file and its runs), keeps the best K trials by best val/loss, and writes a new sweep file whose
//! domains are narrowed around them: `[random]` ranges shrink to the span of the top trials plus
//! a margin (in log space for log-uniform keys) and stay inside the old range; choices and grid
//! lists keep the values the top trials used. Everything else is the old file's.

use crate::error::{Error, IoContext, Result};
use crate::run_dir::{Metric, RunStatus};
use crate::runs::{self, Row};
use crate::sweep::manifest::{self, Manifest};
use crate::sweep::plan::{self, space, Sampler};
use std::path::Path;
use toml::{Table, Value};

/// The new span of a numeric key: the top trials' span widened by a quarter on each side (at
/// least `min_pad`), inside `[lo, hi]`.
fn narrow(values: &[f64], lo: f64, hi: f64, min_pad: f64) -> (f64, f64) {
    let a = values.iter().copied().fold(f64::INFINITY, f64::min);
    let b = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let pad = ((b - a) * 0.25).max(min_pad);
    ((a - pad).max(lo), (b + pad).min(hi))
}

/// The narrowed sampler table of `key`, from the top trials' values.
fn refined(s: &Sampler, values: &[Value]) -> Option<Table> {
    let nums: Vec<f64> = values.iter().filter_map(space::as_f64).collect();
    let round = |x: f64| Value::Float(space::round_sig(x, 5));
    let pair = |a: f64, b: f64| Value::Array(vec![round(a), round(b)]);
    let mut t = Table::new();
    match s {
        Sampler::LogUniform(lo, hi) => {
            let logs: Vec<f64> = nums.iter().map(|x| x.ln()).collect();
            let (a, b) = narrow(&logs, lo.ln(), hi.ln(), 2f64.ln() / 2.0);
            t.insert("log_uniform".into(), pair(a.exp(), b.exp()));
        }
        Sampler::Uniform(lo, hi) => {
            let (a, b) = narrow(&nums, *lo, *hi, (hi - lo) * 0.05);
            t.insert("uniform".into(), pair(a, b));
        }
        Sampler::IntUniform(lo, hi) => {
            let (a, b) = narrow(&nums, *lo as f64, *hi as f64, 1.0);
            let (a, b) = (a.floor() as i64, b.ceil() as i64);
            t.insert(
                "int_uniform".into(),
                Value::Array(vec![Value::Integer(a), Value::Integer(b.max(a + 1))]),
            );
        }
        Sampler::Choice(c) => {
            let kept: Vec<Value> = c.iter().filter(|x| values.contains(x)).cloned().collect();
            t.insert("choice".into(), Value::Array(kept));
        }
    }
    (!nums.is_empty() || matches!(s, Sampler::Choice(_))).then_some(t)
}

/// The sweep's completed trials with a validation loss, best first (at least two), and the
/// warnings about files that could not be read.
fn completed_best_first(dir: &Path) -> Result<(Vec<Row>, Vec<String>)> {
    let runs::Runs {
        mut rows, warnings, ..
    } = runs::collect(dir)?;
    runs::sort_by_metric(&mut rows, Metric::ValLoss);
    // Only trials that ran to their end: a killed or pruned trial's loss is not its result.
    rows.retain(|r| r.status() == RunStatus::Completed && r.metric(Metric::ValLoss).is_some());
    if rows.len() < 2 {
        return Err(Error::usage(
            dir,
            format!(
                "refine needs at least 2 completed trials with a validation loss; the sweep has \
                 {}{}",
                rows.len(),
                warnings
                    .iter()
                    .map(|w| format!("; {w}"))
                    .collect::<String>()
            ),
        ));
    }
    Ok((rows, warnings))
}

/// `charlab refine DIR --top K`: the text of the refined sweep file, and warnings about files of
/// the sweep it could not read.
pub fn refine(dir: &Path, top: usize) -> Result<(String, Vec<String>)> {
    if top < 2 {
        return Err(Error::invalid(
            "--top",
            format!("{top}: a domain is narrowed around at least 2 trials"),
        ));
    }
    let file = manifest::existing_sweep(dir)?;
    let text = std::fs::read_to_string(&file).at(&file)?;
    let old = plan::plan(&file, &text, usize::MAX, true)?;
    let (mut rows, warnings) = completed_best_first(dir)?;
    rows.truncate(top);
    let manifest = Manifest::load(dir)?;
    // The top trials' swept values, as the manifest holds them (typed).
    let top_values = |key: &str| -> Vec<Value> {
        rows.iter()
            .filter_map(|r| {
                let name = r.path.file_name()?.to_string_lossy().into_owned();
                let e = manifest.trials.iter().find(|e| e.dir == name)?;
                let (_, v) = e.overrides.iter().find(|(k, _)| k == key)?;
                Value::try_from(v).ok()
            })
            .collect()
    };
    let mut doc: Table = toml::from_str(&text).map_err(|e| Error::Config {
        path: file.clone(),
        message: crate::config::toml_message(&e, &text),
    })?;
    let name = format!("{}-refined", old.experiment.name);
    if let Some(Value::Table(exp)) = doc.get_mut("experiment") {
        exp.insert("name".into(), Value::String(name.clone()));
    }
    if let Some(Value::Table(random)) = doc.get_mut("random") {
        for (key, s) in &old.space.random {
            if let Some(t) = refined(s, &top_values(key)) {
                random.insert(key.clone(), Value::Table(t));
            }
        }
    }
    if let Some(Value::Table(grid)) = doc.get_mut("grid") {
        for (key, _) in &old.space.grid {
            let kept = top_values(key);
            if !kept.is_empty() {
                grid.insert(key.clone(), Value::Array(dedup(kept)));
            }
        }
    }
    doc.remove("trial");
    let header =
        format!(
        "# Refined from experiment `{}` ({}): domains narrowed around its best {} trials by best\n\
         # val/loss ({}); everything else as there. Run it with `charlab sweep`.\n\n",
        old.experiment.name,
        dir.display(),
        rows.len(),
        rows.iter().map(|r| r.run.as_str()).collect::<Vec<_>>().join(", ")
    );
    let out = header + &toml::to_string(&doc).unwrap_or_default();
    // The result must be a sweep file charlab takes.
    plan::plan(Path::new(&format!("{name}.toml")), &out, usize::MAX, true)?;
    Ok((out, warnings))
}

fn dedup(values: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for v in values {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

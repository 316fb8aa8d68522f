//! Sweep files: TOML → the list of trials. Every check happens here, before any training: unknown
//! keys (with the line and the nearest valid key), wrong types, out-of-range values, empty lists,
//! duplicate explicit trials, oversized grids (counted before anything is allocated).
//!
//! The stages, one module each: [`check`] (errors that name file, line and key; value types),
//! [`experiment`] (`[experiment]`, `[slurm]`), [`space`] (`[grid]`, `[random]`, domains),
//! [`naming`] (trial hashes and run directory names). [`plan`] runs them in order.

mod check;
pub mod experiment;
pub mod naming;
pub mod space;

pub use experiment::{check_name, Experiment, PruneRule, Pruning, SlurmSettings};
pub use naming::{config_hash, dir_name, group_hash, label};
pub use space::Sampler;

use crate::config::RunConfig;
use crate::error::{Error, IoContext, Result};
use crate::rng::Rng;
use crate::summary::Domain;
use check::{check_run_value, flatten, nearest, set_path, type_name, Ctx};
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// One trial: the swept values and the full resolved config.
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    pub overrides: Vec<(String, Value)>,
    pub config: RunConfig,
    /// Hash of the resolved config (what identifies the trial across resumes).
    pub hash: String,
    /// Hash of the config without its seed: seeds of one configuration share it (HParams group).
    pub group: String,
}

/// An expanded sweep.
#[derive(Debug, Clone)]
pub struct Plan {
    pub path: PathBuf,
    pub text: String,
    pub experiment: Experiment,
    pub trials: Vec<Trial>,
    /// Swept keys in file order, with their domains.
    pub swept: Vec<(String, Domain)>,
    /// Grid or random points that resolved to an already listed trial.
    pub duplicates: usize,
    pub slurm: SlurmSettings,
}

const TOP_KEYS: &[&str] = &["experiment", "defaults", "grid", "random", "trial", "slurm"];

/// Reads and expands a sweep file. Refuses more than `max_trials` trials unless `force`.
pub fn load(path: &Path, max_trials: usize, force: bool) -> Result<Plan> {
    let text = std::fs::read_to_string(path).at(path)?;
    plan(path, &text, max_trials, force)
}

/// The document's tables, with unknown top-level tables refused.
fn parse_doc(ctx: &Ctx) -> Result<Table> {
    let doc: Table = toml::from_str(ctx.text).map_err(|e| Error::Config {
        path: ctx.path.to_path_buf(),
        message: crate::config::toml_message(&e, ctx.text),
    })?;
    for k in doc.keys() {
        if !TOP_KEYS.contains(&k.as_str()) {
            let hint = nearest(k, TOP_KEYS.iter().copied());
            return Err(ctx.err(k, k, format!("unknown table `{k}`{hint}; expected [experiment], [defaults], [grid], [random] or [[trial]]")));
        }
    }
    Ok(doc)
}

/// Table `name` of the document (empty when absent).
fn section(ctx: &Ctx, doc: &Table, name: &str) -> Result<Table> {
    match doc.get(name) {
        None => Ok(Table::new()),
        Some(Value::Table(t)) => Ok(t.clone()),
        Some(v) => Err(ctx.err(
            name,
            name,
            format!("`{name}` must be a table, not {}", type_name(v)),
        )),
    }
}

/// The `[[trial]]` tables.
fn explicit_tables(ctx: &Ctx, doc: &Table) -> Result<Vec<Table>> {
    match doc.get("trial") {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| match t {
                Value::Table(t) => Ok(t.clone()),
                _ => Err(ctx.err("trial", "trial", "use [[trial]] tables".into())),
            })
            .collect(),
        Some(_) => Err(ctx.err(
            "trial",
            "trial",
            "use [[trial]] tables (double brackets)".into(),
        )),
    }
}

/// The trials a plan would have, counted before anything is expanded.
fn check_count(
    ctx: &Ctx,
    space: &space::Space,
    explicit: usize,
    limit: usize,
    force: bool,
) -> Result<()> {
    let total = space
        .grid_count()
        .saturating_add(space.random_trials)
        .saturating_add(explicit)
        .max(1);
    if total > limit && !force {
        return Err(Error::Config {
            path: ctx.path.to_path_buf(),
            message: format!(
                "the sweep has {total} trials, more than the limit of {limit} \
                 (--max-trials or [experiment] max_trials); narrow it or pass --force"
            ),
        });
    }
    Ok(())
}

/// The explicit trials' overrides, each checked against the run keys.
fn explicit_points(ctx: &Ctx, keys: &Table, explicit: &[Table]) -> Result<Vec<space::Point>> {
    let mut points = Vec::new();
    for (i, t) in explicit.iter().enumerate() {
        let p = flatten(t)
            .into_iter()
            .map(|(k, v)| Ok((k.clone(), check_run_value(ctx, keys, "trial", &k, &v)?)))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| Error::Config {
                path: ctx.path.to_path_buf(),
                message: format!(
                    "[[trial]] #{}: {}",
                    i + 1,
                    e.to_string()
                        .split_once(": ")
                        .map_or(String::new(), |x| x.1.to_string())
                ),
            })?;
        points.push((p, true));
    }
    Ok(points)
}

/// One point of the space resolved into a validated config, or the error naming its section.
fn resolve(
    ctx: &Ctx,
    base: &Table,
    space: &space::Space,
    overrides: &[(String, Value)],
    is_explicit: bool,
) -> Result<RunConfig> {
    let mut table = base.clone();
    for (k, v) in overrides {
        set_path(&mut table, k, v.clone());
    }
    let describe = || {
        overrides
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let config: RunConfig = Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| Error::Config {
            path: ctx.path.to_path_buf(),
            message: format!("trial ({}): {}", describe(), e.message().trim()),
        })?;
    config.validate().map_err(|e| {
        let key = match &e {
            Error::Invalid { key, .. } => key.clone(),
            _ => String::new(),
        };
        let sect = space
            .section_of(&key)
            .unwrap_or(if is_explicit { "trial" } else { "defaults" });
        ctx.err(sect, &key, format!("{e} (trial {})", describe()))
    })?;
    Ok(config)
}

/// Resolves every point into a trial, collapsing points that resolve to the same config (an
/// explicit trial that duplicates another is an error).
fn trials(
    ctx: &Ctx,
    base: &Table,
    space: &space::Space,
    points: Vec<space::Point>,
) -> Result<(Vec<Trial>, usize)> {
    let mut trials: Vec<Trial> = Vec::new();
    let mut duplicates = 0;
    for (overrides, is_explicit) in points {
        let config = resolve(ctx, base, space, &overrides, is_explicit)?;
        let hash = config_hash(&config);
        if let Some(j) = trials.iter().position(|t| t.hash == hash) {
            if is_explicit {
                let described: Vec<String> =
                    overrides.iter().map(|(k, v)| format!("{k}={v}")).collect();
                return Err(Error::Config {
                    path: ctx.path.to_path_buf(),
                    message: format!(
                        "[[trial]] ({}) duplicates trial {j} of the sweep",
                        described.join(", ")
                    ),
                });
            }
            duplicates += 1;
            continue;
        }
        trials.push(Trial {
            group: group_hash(&config),
            overrides,
            config,
            hash,
        });
    }
    Ok((trials, duplicates))
}

/// Expands sweep-file text (`path` is for messages).
pub fn plan(path: &Path, text: &str, max_trials: usize, force: bool) -> Result<Plan> {
    let ctx = Ctx { path, text };
    let doc = parse_doc(&ctx)?;
    let (experiment, mut base) =
        experiment::parse_experiment(&ctx, &section(&ctx, &doc, "experiment")?)?;
    let slurm = experiment::parse_slurm(&ctx, section(&ctx, &doc, "slurm")?)?;
    let keys = check::run_keys();
    for (k, v) in flatten(&section(&ctx, &doc, "defaults")?) {
        let v = check_run_value(&ctx, &keys, "defaults", &k, &v)?;
        set_path(&mut base, &k, v);
    }
    let space = space::Space::parse(
        &ctx,
        &keys,
        &section(&ctx, &doc, "grid")?,
        &section(&ctx, &doc, "random")?,
    )?;
    let explicit = explicit_tables(&ctx, &doc)?;
    let limit = experiment.max_trials.unwrap_or(max_trials);
    check_count(&ctx, &space, explicit.len(), limit, force)?;
    // Grid (last key fastest), then random draws, then explicit trials.
    let mut points = space.points(&keys, &mut Rng::new(experiment.seed, 5));
    points.extend(explicit_points(&ctx, &keys, &explicit)?);
    if points.is_empty() {
        points.push((Vec::new(), false));
    }
    let (trials, duplicates) = trials(&ctx, &base, &space, points)?;
    let swept = space.domains(&trials);
    Ok(Plan {
        path: path.to_path_buf(),
        text: text.to_string(),
        experiment,
        trials,
        swept,
        duplicates,
        slurm,
    })
}

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
mod search;
pub mod space;

pub use experiment::{
    check_name, Experiment, PruneRule, Pruning, SlurmSettings, StopRule, DEFAULT_MIN_PROGRESS,
};
pub use naming::{config_hash, dir_name, group_hash, label};
pub use search::{
    sampler_bounds, PbtSearch, TpeSearch, DEFAULT_EXPLORE, DEFAULT_EXPLORE_FADE, DEFAULT_STARTUP,
};
pub use space::Sampler;

use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::run_dir::Metric;
use crate::summary::Domain;
use check::{check_run_value, flatten, nearest, set_path, type_name, SweepFile};
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

impl Trial {
    /// The trial of `overrides`, resolved into `config`: hashed.
    fn new(overrides: Vec<(String, Value)>, config: RunConfig) -> Trial {
        Trial {
            group: group_hash(&config),
            hash: config_hash(&config),
            overrides,
            config,
        }
    }
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
    /// `[search] method = "tpe"`: the trials are proposed as results come in (`trials` is
    /// then empty).
    pub search: Option<TpeSearch>,
    /// `[search] method = "pbt"`: `trials` are the population's initial members.
    pub pbt: Option<PbtSearch>,
    /// What the sweep is judged by: its metric, and a cost when it has two objectives.
    pub objectives: Vec<Metric>,
    /// The grid and the random samplers.
    pub space: space::Space,
    /// The defaults every trial starts from.
    pub base: Table,
}

const TOP_KEYS: &[&str] = &[
    "experiment",
    "defaults",
    "grid",
    "random",
    "search",
    "trial",
    "slurm",
];
impl Plan {
    /// The trial of `overrides` laid over the defaults (validated, hashed).
    pub fn trial(&self, overrides: Vec<(String, Value)>) -> Result<Trial> {
        let file = SweepFile {
            path: &self.path,
            text: &self.text,
        };
        let config = resolve(&file, &self.base, &self.space, &overrides, false)?;
        Ok(Trial::new(overrides, config))
    }

    /// A drawn number as the value of run key `key`: an integer for integer keys, else rounded
    /// to four significant digits (readable names, stable hashes).
    pub fn number(&self, key: &str, x: f64) -> Value {
        let int_key = matches!(check::run_keys().get(key), Some(Value::Integer(_)));
        space::number(x, int_key)
    }

    /// What a population-based sweep's decisions depend on besides the results: a changed
    /// sweep file that changes this is a different search.
    pub fn pbt_key(&self) -> String {
        let text = format!(
            "{:?}|{:?}|{:?}|{}",
            self.base, self.space.random, self.pbt, self.experiment.seed
        );
        crate::digest::sha256_hex(text.as_bytes())[..16].to_string()
    }

    /// What a TPE search depends on besides its trial count: a changed sweep file that changes
    /// this is a different search.
    pub fn search_key(&self) -> String {
        let text = format!(
            "{:?}|{:?}|{:?}|{}",
            self.base,
            self.space.random,
            self.search
                .as_ref()
                .map(|s| (s.startup, s.candidates, s.metric.name())),
            self.experiment.seed
        );
        // Said only when on, so that a search begun before the key existed keeps its key.
        let mut text = match &self.search {
            Some(s) if s.cost_aware => format!("{text}|cost aware"),
            _ => text,
        };
        if let Some(s) = &self.search {
            if let Some(m) = s.second {
                text.push_str(&format!("|second {}", m.name()));
            }
            if !s.warm_start.is_empty() {
                text.push_str(&format!("|warm {:?}", s.warm_start));
            }
            if s.multivariate {
                text.push_str("|joint");
            }
            if s.ordered_choices {
                text.push_str("|ordered");
            }
            if s.explore != 0.0 {
                text.push_str(&format!("|explore {}", s.explore));
                // Without wide draws there is nothing to fade.
                if s.explore_fade != 0 {
                    text.push_str(&format!("|explore fade {}", s.explore_fade));
                }
            }
            if s.seed_per_trial {
                text.push_str("|seed per trial");
            }
        }
        crate::digest::sha256_hex(text.as_bytes())[..16].to_string()
    }
}

/// Every value a `[random]` domain can give must make a valid run: the ends of each range and
/// every choice go through the run config's validator now, so a bad domain is one error before
/// anything starts instead of a failure when a draw or a TPE proposal first reaches it.
fn check_random_domains(file: &SweepFile, base: &Table, space: &space::Space) -> Result<()> {
    let keys = check::run_keys();
    for (key, sampler) in &space.random {
        let int_key = matches!(keys.get(key), Some(Value::Integer(_)));
        for value in sampler.extremes(int_key) {
            resolve(file, base, space, &[(key.clone(), value.clone())], false).map_err(|e| {
                match e {
                    // Already names the file, line and key.
                    Error::Config { ref message, .. } if message.starts_with("line ") => e,
                    Error::Config { message, .. } => file.err(
                        "random",
                        key,
                        format!("the domain of `{key}` reaches {value}: {message}"),
                    ),
                    other => other,
                }
            })?;
        }
    }
    Ok(())
}

/// Reads and expands a sweep file. Refuses more than `max_trials` trials unless `force`.
pub fn load(path: &Path, max_trials: usize, force: bool) -> Result<Plan> {
    let text = crate::error::read_named(path)?;
    plan(path, &text, max_trials, force)
}

/// The document's tables, with unknown top-level tables refused.
fn parse_doc(file: &SweepFile) -> Result<Table> {
    let doc: Table = toml::from_str(file.text).map_err(|e| Error::Config {
        path: file.path.to_path_buf(),
        message: crate::config::toml_message(&e, file.text),
    })?;
    for k in doc.keys() {
        if !TOP_KEYS.contains(&k.as_str()) {
            let hint = nearest(k, TOP_KEYS.iter().copied());
            return Err(file.err(k, k, format!("unknown table `{k}`{hint}; expected [experiment], [defaults], [grid], [random] or [[trial]]")));
        }
    }
    Ok(doc)
}

/// Table `name` of the document (empty when absent).
fn section(file: &SweepFile, doc: &Table, name: &str) -> Result<Table> {
    match doc.get(name) {
        None => Ok(Table::new()),
        Some(Value::Table(t)) => Ok(t.clone()),
        Some(v) => Err(file.err(
            name,
            name,
            format!("`{name}` must be a table, not {}", type_name(v)),
        )),
    }
}

/// The `[[trial]]` tables.
fn explicit_tables(file: &SweepFile, doc: &Table) -> Result<Vec<Table>> {
    match doc.get("trial") {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| match t {
                Value::Table(t) => Ok(t.clone()),
                _ => Err(file.err("trial", "trial", "use [[trial]] tables".into())),
            })
            .collect(),
        Some(_) => Err(file.err(
            "trial",
            "trial",
            "use [[trial]] tables (double brackets)".into(),
        )),
    }
}

/// The trials a plan would have, counted before anything is expanded.
fn check_count(
    file: &SweepFile,
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
    check_limit(file, "sweep", total, limit, force)
}

/// Refuses more than `limit` trials unless `force` (`what`: the sweep, or a search).
fn check_limit(
    file: &SweepFile,
    what: &str,
    total: usize,
    limit: usize,
    force: bool,
) -> Result<()> {
    if total > limit && !force {
        return Err(Error::Config {
            path: file.path.to_path_buf(),
            message: format!(
                "the {what} has {total} trials, more than the limit of {limit} \
                 (--max-trials or [experiment] max_trials); narrow it or pass --force"
            ),
        });
    }
    Ok(())
}

/// The explicit trials' overrides, each checked against the run keys.
fn explicit_points(
    file: &SweepFile,
    keys: &Table,
    explicit: &[Table],
) -> Result<Vec<space::Point>> {
    let mut points = Vec::new();
    for (i, t) in explicit.iter().enumerate() {
        let p = flatten(t)
            .into_iter()
            .map(|(k, v)| Ok((k.clone(), check_run_value(file, keys, "trial", &k, &v)?)))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| Error::Config {
                path: file.path.to_path_buf(),
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
    file: &SweepFile,
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
            path: file.path.to_path_buf(),
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
        file.err(sect, &key, format!("{e} (trial {})", describe()))
    })?;
    Ok(config)
}

/// Resolves every point into a trial, collapsing points that resolve to the same config (an
/// explicit trial that duplicates another is an error).
fn trials(
    file: &SweepFile,
    base: &Table,
    space: &space::Space,
    points: Vec<space::Point>,
) -> Result<(Vec<Trial>, usize)> {
    let mut trials: Vec<Trial> = Vec::new();
    let mut duplicates = 0;
    for (overrides, is_explicit) in points {
        let config = resolve(file, base, space, &overrides, is_explicit)?;
        let trial = Trial::new(overrides, config);
        if let Some(j) = trials.iter().position(|t| t.hash == trial.hash) {
            if is_explicit {
                let described: Vec<String> = trial
                    .overrides
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                return Err(Error::Config {
                    path: file.path.to_path_buf(),
                    message: format!(
                        "[[trial]] ({}) duplicates trial {j} of the sweep",
                        described.join(", ")
                    ),
                });
            }
            duplicates += 1;
            continue;
        }
        trials.push(trial);
    }
    Ok((trials, duplicates))
}

/// Expands sweep-file text (`path` is for messages).
pub fn plan(path: &Path, text: &str, max_trials: usize, force: bool) -> Result<Plan> {
    let file = SweepFile { path, text };
    let doc = parse_doc(&file)?;
    let (experiment, mut base) =
        experiment::parse_experiment(&file, &section(&file, &doc, "experiment")?)?;
    let slurm = experiment::parse_slurm(&file, section(&file, &doc, "slurm")?)?;
    let keys = check::run_keys();
    for (k, v) in flatten(&section(&file, &doc, "defaults")?) {
        let v = check_run_value(&file, &keys, "defaults", &k, &v)?;
        set_path(&mut base, &k, v);
    }
    let mut space = space::Space::parse(
        &file,
        &keys,
        &section(&file, &doc, "grid")?,
        &section(&file, &doc, "random")?,
    )?;
    let explicit = explicit_tables(&file, &doc)?;
    let search::Parsed {
        tpe: search,
        pbt,
        objectives,
    } = search::parse(&file, &section(&file, &doc, "search")?, &space)?;
    let limit = experiment.max_trials.unwrap_or(max_trials);
    if let Some(p) = &pbt {
        check_pbt_experiment(&file, &experiment, explicit.len())?;
        // The initial population is a random draw of `population` members.
        space.random_trials = p.population;
    }
    let (trials, duplicates) = match &search {
        Some(tpe) => {
            if !explicit.is_empty() {
                return Err(file.err(
                    "trial",
                    "trial",
                    "[[trial]] tables cannot be mixed with method = \"tpe\"".into(),
                ));
            }
            check_limit(&file, "search", tpe.trials, limit, force)?;
            (Vec::new(), 0)
        }
        None => {
            if !space.random.is_empty() && space.random_trials == 0 {
                let msg = "needs `trials = N` (or a [search] with method = \"tpe\")";
                return Err(file.err("random", "trials", msg.into()));
            }
            check_count(&file, &space, explicit.len(), limit, force)?;
            // Grid (last key fastest), then random draws, then explicit trials.
            let mut points = space.points(&keys, &mut Rng::new(experiment.seed, 5));
            points.extend(explicit_points(&file, &keys, &explicit)?);
            if points.is_empty() {
                points.push((Vec::new(), false));
            }
            trials(&file, &base, &space, points)?
        }
    };
    check_random_domains(&file, &base, &space)?;
    if let Some(p) = &pbt {
        for t in &trials {
            search::check_pbt_trial(&file, p, &t.config)?;
        }
    }
    let swept = space.domains(&trials);
    Ok(Plan {
        path: path.to_path_buf(),
        text: text.to_string(),
        experiment,
        trials,
        swept,
        duplicates,
        slurm,
        search,
        pbt,
        objectives,
        space,
        base,
    })
}

/// What population-based training refuses: a pruning rule (PBT replaces the worst members
/// rather than stopping them) and explicit `[[trial]]` tables (the members are drawn).
fn check_pbt_experiment(file: &SweepFile, experiment: &Experiment, explicit: usize) -> Result<()> {
    if experiment.pruning.is_some() {
        return Err(file.err(
            "experiment",
            "pruning",
            "a pruning rule cannot be combined with method = \"pbt\" (PBT replaces its worst \
             members instead of stopping them)"
                .into(),
        ));
    }
    if explicit > 0 {
        return Err(file.err(
            "trial",
            "trial",
            "[[trial]] tables cannot be mixed with method = \"pbt\" (the members are drawn \
             from [random])"
                .into(),
        ));
    }
    Ok(())
}

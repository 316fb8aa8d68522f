//! Sweep files: TOML → the list of trials. Every check happens here, before any training: unknown
//! keys (with the line and the nearest valid key), wrong types, out-of-range values, empty lists,
//! duplicate explicit trials, oversized grids (counted before anything is allocated).

use crate::config::{CleanConfig, RunConfig};
use crate::error::{Error, IoContext, Result};
use crate::rng::Rng;
use crate::summary::{Domain, HValue};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// The sweep-level pruning rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pruning {
    /// `median`: stop a trial whose val/loss at an evaluation is worse than the median of its
    /// siblings' at the same step. `halving` (asynchronous successive halving): at rung
    /// evaluations (warm-up × eta^k), keep only the best 1/eta of the trials that reached it.
    pub rule: String,
    /// Reduction factor of `halving`.
    pub eta: usize,
    /// Evaluations a trial always gets before it can be pruned.
    pub warmup_evals: usize,
    /// Siblings that must have reached the step before the rule applies.
    pub min_trials: usize,
}

/// The `[experiment]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    pub name: String,
    /// Trials at once on the CPU.
    pub jobs: usize,
    /// GPUs to spread trials over (`["cuda:0", "cuda:1"]`); empty = run on `device`.
    pub devices: Vec<String>,
    /// Trials packed onto each GPU at once.
    pub trials_per_device: usize,
    /// Seed of the random search.
    pub seed: u64,
    /// Per-trial wall-clock limit in seconds.
    pub timeout: Option<f64>,
    /// Times a failed trial is retried from its last checkpoint.
    pub retries: u32,
    pub max_trials: Option<usize>,
    pub pruning: Option<Pruning>,
}

/// How a random-search key is drawn.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampler {
    Uniform(f64, f64),
    LogUniform(f64, f64),
    IntUniform(i64, i64),
    Choice(Vec<Value>),
}

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

/// The `[slurm]` table of a sweep file, and the same settings as `charlab sweep` flags (a flag
/// given wins over the file): per-trial resources and job settings for `--launcher slurm`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct SlurmSettings {
    /// Slurm: partition.
    #[arg(long)]
    pub partition: Option<String>,
    /// Slurm: generic resources per trial, e.g. gpu:1.
    #[arg(long)]
    pub gres: Option<String>,
    /// Slurm: time limit per trial, as sbatch takes it, e.g. 02:00:00.
    #[arg(long)]
    pub time: Option<String>,
    /// Slurm: CPUs per trial (the trial's threads).
    #[arg(long)]
    pub cpus_per_task: Option<usize>,
    /// Slurm: memory per trial, e.g. 8G.
    #[arg(long)]
    pub mem: Option<String>,
    /// Slurm: array tasks running at once.
    #[arg(long)]
    pub array_parallelism: Option<usize>,
    /// Slurm: seconds before the time limit that SIGUSR1 asks a trial to checkpoint and requeue.
    #[arg(long)]
    pub signal_lead: Option<u32>,
    /// Slurm: one more sbatch option, verbatim (repeatable): --slurm-arg=--account=abc
    #[arg(long = "slurm-arg", allow_hyphen_values = true)]
    pub args: Option<Vec<String>>,
}

impl SlurmSettings {
    /// These settings (the command line's) laid over `file`'s: each one given here wins, and the
    /// extra sbatch arguments of both are kept, the file's first.
    pub fn over(&self, file: &SlurmSettings) -> SlurmSettings {
        SlurmSettings {
            partition: self.partition.clone().or_else(|| file.partition.clone()),
            gres: self.gres.clone().or_else(|| file.gres.clone()),
            time: self.time.clone().or_else(|| file.time.clone()),
            cpus_per_task: self.cpus_per_task.or(file.cpus_per_task),
            mem: self.mem.clone().or_else(|| file.mem.clone()),
            array_parallelism: self.array_parallelism.or(file.array_parallelism),
            signal_lead: self.signal_lead.or(file.signal_lead),
            args: Some(
                file.args
                    .iter()
                    .chain(self.args.iter())
                    .flatten()
                    .cloned()
                    .collect(),
            ),
        }
    }
}
const EXPERIMENT_KEYS: &[&str] = &[
    "name",
    "corpus",
    "device",
    "jobs",
    "devices",
    "trials_per_device",
    "seed",
    "timeout",
    "retries",
    "max_trials",
    "pruning",
];
const PRUNING_KEYS: &[&str] = &["rule", "warmup_evals", "min_trials", "eta"];

/// Every run key as a dotted path, with a value of its type (Options filled in).
fn run_keys() -> Table {
    let full = RunConfig {
        max_steps: Some(1),
        epochs: Some(1.0),
        patience: Some(1),
        threads: Some(1),
        clean: CleanConfig {
            start_marker: Some(String::new()),
            max_chars: Some(1),
            ..CleanConfig::default()
        },
        ..RunConfig::default()
    };
    let mut out = Table::new();
    if let Ok(Value::Table(t)) = Value::try_from(full) {
        for (k, v) in t {
            match v {
                Value::Table(sub) => {
                    for (sk, sv) in sub {
                        out.insert(format!("{k}.{sk}"), sv);
                    }
                }
                v => {
                    out.insert(k, v);
                }
            }
        }
    }
    out
}

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + (ca != *cb) as usize)
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

fn nearest<'a>(key: &str, valid: impl IntoIterator<Item = &'a str>) -> String {
    valid
        .into_iter()
        .map(|v| (distance(key, v), v))
        .min()
        .filter(|(d, v)| *d <= (v.len() / 2).max(2))
        .map(|(_, v)| format!(" (did you mean `{v}`?)"))
        .unwrap_or_default()
}

/// The 1-based line where `key` is assigned, preferring lines inside `section`.
fn line_of(text: &str, section: &str, key: &str) -> Option<usize> {
    let last = key.rsplit('.').next().unwrap_or(key);
    let assigns = |line: &str, k: &str| {
        line.trim_start()
            .strip_prefix(k)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    };
    let mut current = String::new();
    let mut fallback = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            current = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            continue;
        }
        if assigns(line, key) || assigns(line, last) {
            if current == section || current.starts_with(&format!("{section}.")) {
                return Some(i + 1);
            }
            fallback.get_or_insert(i + 1);
        }
    }
    fallback
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, section: &str, key: &str, message: String) -> Error {
        let at = line_of(self.text, section, key)
            .map(|l| format!("line {l}: "))
            .unwrap_or_default();
        Error::Config {
            path: self.path.to_path_buf(),
            message: format!("{at}[{section}] {message}"),
        }
    }

    fn unknown(&self, section: &str, key: &str, valid: &[&str]) -> Error {
        let hint = nearest(key, valid.iter().copied());
        self.err(section, key, format!("unknown key `{key}`{hint}"))
    }
}

/// Flattens `clean = { … }` (or `[grid.clean]`) into dotted keys.
fn flatten(table: &Table) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (k, v) in table {
        match v {
            Value::Table(sub) if k == "clean" => {
                for (sk, sv) in sub {
                    out.push((format!("clean.{sk}"), sv.clone()));
                }
            }
            v => out.push((k.clone(), v.clone())),
        }
    }
    out
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "true or false",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "a list",
        Value::Table(_) => "a table",
    }
}

/// Checks a run key and its value's type, converting integers where a float is expected.
fn check_run_value(ctx: &Ctx, keys: &Table, section: &str, key: &str, v: &Value) -> Result<Value> {
    let names: Vec<&str> = keys.keys().map(String::as_str).collect();
    let Some(expected) = keys.get(key) else {
        return Err(ctx.unknown(section, key, &names));
    };
    match (expected, v) {
        (Value::Float(_), Value::Integer(i)) => Ok(Value::Float(*i as f64)),
        (a, b) if std::mem::discriminant(a) == std::mem::discriminant(b) => Ok(v.clone()),
        (a, b) => Err(ctx.err(
            section,
            key,
            format!("`{key}` must be {}, not {}", type_name(a), type_name(b)),
        )),
    }
}

fn set_path(table: &mut Table, key: &str, v: Value) {
    match key.split_once('.') {
        Some((head, rest)) => {
            let sub = table
                .entry(head.to_string())
                .or_insert_with(|| Value::Table(Table::new()));
            if let Value::Table(t) = sub {
                set_path(t, rest, v);
            }
        }
        None => {
            table.insert(key.to_string(), v);
        }
    }
}

/// The hash that identifies a trial's computation: the resolved config without `device` and
/// `threads`, which do not change what it computes.
pub fn config_hash(cfg: &RunConfig) -> String {
    let mut c = cfg.clone();
    c.device = String::new();
    c.threads = None;
    crate::corpus::sha256_hex(serde_json::to_string(&c).unwrap_or_default().as_bytes())[..16]
        .to_string()
}

/// The hash of a config without its seed: the seeds of one configuration share it.
pub fn group_hash(cfg: &RunConfig) -> String {
    let mut c = cfg.clone();
    c.seed = 0;
    config_hash(&c)
}

/// Rounds a drawn number to 4 significant digits: readable names, stable hashes.
fn round4(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    format!("{x:.3e}").parse().unwrap_or(x)
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Float(f) => Some(*f),
        Value::Integer(i) => Some(*i as f64),
        _ => None,
    }
}

fn hvalue(v: &Value) -> HValue {
    match v {
        Value::Float(f) => HValue::Num(*f),
        Value::Integer(i) => HValue::Num(*i as f64),
        Value::Boolean(b) => HValue::Bool(*b),
        Value::String(s) => HValue::Str(s.clone()),
        other => HValue::Str(other.to_string()),
    }
}

fn parse_experiment(ctx: &Ctx, t: &Table) -> Result<(Experiment, Table)> {
    let mut base = Table::new();
    for k in t.keys() {
        if !EXPERIMENT_KEYS.contains(&k.as_str()) {
            return Err(ctx.unknown("experiment", k, EXPERIMENT_KEYS));
        }
    }
    let get_str = |k: &str| -> Result<Option<String>> {
        match t.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(ctx.err(
                "experiment",
                k,
                format!("`{k}` must be a string, not {}", type_name(v)),
            )),
        }
    };
    let get_uint = |k: &str, min: i64| -> Result<Option<i64>> {
        match t.get(k) {
            None => Ok(None),
            Some(Value::Integer(i)) if *i >= min => Ok(Some(*i)),
            Some(v) => Err(ctx.err(
                "experiment",
                k,
                format!("`{k}` must be an integer ≥ {min}, not {v}"),
            )),
        }
    };
    let name = get_str("name")?.ok_or_else(|| Error::Config {
        path: ctx.path.to_path_buf(),
        message: "[experiment] needs a `name` (the runs go to runs/<name>/)".into(),
    })?;
    check_name(&name).map_err(|m| ctx.err("experiment", "name", m))?;
    if let Some(c) = get_str("corpus")? {
        base.insert("corpus".into(), Value::String(c));
    }
    if let Some(d) = get_str("device")? {
        crate::device::parse(&d).map_err(|e| ctx.err("experiment", "device", e.to_string()))?;
        base.insert("device".into(), Value::String(d));
    }
    let devices = match t.get("devices") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::String(s) => {
                    crate::device::parse(s)
                        .map_err(|e| ctx.err("experiment", "devices", e.to_string()))?;
                    Ok(s.clone())
                }
                v => Err(ctx.err(
                    "experiment",
                    "devices",
                    format!("devices must be strings, not {v}"),
                )),
            })
            .collect::<Result<_>>()?,
        Some(v) => {
            return Err(ctx.err(
                "experiment",
                "devices",
                format!("`devices` must be a list, not {}", type_name(v)),
            ))
        }
    };
    let timeout = match t.get("timeout") {
        None => None,
        Some(v) => Some(parse_duration(v).map_err(|m| ctx.err("experiment", "timeout", m))?),
    };
    let pruning = match t.get("pruning") {
        None => None,
        Some(Value::Table(p)) => {
            for k in p.keys() {
                if !PRUNING_KEYS.contains(&k.as_str()) {
                    return Err(ctx.unknown("experiment.pruning", k, PRUNING_KEYS));
                }
            }
            let rule = match p.get("rule") {
                None => "median".to_string(),
                Some(Value::String(s)) if s == "median" || s == "halving" => s.clone(),
                Some(v) => {
                    return Err(ctx.err(
                        "experiment",
                        "rule",
                        format!("pruning rule must be \"median\" or \"halving\", not {v}"),
                    ))
                }
            };
            let int = |k: &str, d: usize| match p.get(k) {
                None => Ok(d),
                Some(Value::Integer(i)) if *i >= 0 => Ok(*i as usize),
                Some(v) => Err(ctx.err(
                    "experiment",
                    k,
                    format!("`{k}` must be an integer ≥ 0, not {v}"),
                )),
            };
            Some(Pruning {
                rule,
                warmup_evals: int("warmup_evals", 1)?,
                min_trials: int("min_trials", 3)?.max(1),
                eta: int("eta", 3)?.max(2),
            })
        }
        Some(v) => {
            return Err(ctx.err(
                "experiment",
                "pruning",
                format!("`pruning` must be a table, not {}", type_name(v)),
            ))
        }
    };
    Ok((
        Experiment {
            name,
            jobs: get_uint("jobs", 1)?.unwrap_or(1) as usize,
            devices,
            trials_per_device: get_uint("trials_per_device", 1)?.unwrap_or(1) as usize,
            seed: get_uint("seed", 0)?.unwrap_or(0) as u64,
            timeout,
            retries: get_uint("retries", 0)?.unwrap_or(0) as u32,
            max_trials: get_uint("max_trials", 1)?.map(|v| v as usize),
            pruning,
        },
        base,
    ))
}

/// An experiment name becomes a directory under runs/: no separators, no `..`, no control chars.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "experiment name {name:?} must be 1–64 letters, digits, `-`, `_` or `.` (it names a directory under runs/)"
        ))
    }
}

/// Seconds from a number or a string like "90s", "30m", "2h".
fn parse_duration(v: &Value) -> std::result::Result<f64, String> {
    let secs = match v {
        Value::Integer(i) => *i as f64,
        Value::Float(f) => *f,
        Value::String(s) => {
            let s = s.trim();
            let (num, unit) = s.split_at(s.find(|c: char| c.is_alphabetic()).unwrap_or(s.len()));
            let n: f64 = num
                .trim()
                .parse()
                .map_err(|_| format!("cannot read {s:?} as a duration"))?;
            match unit {
                "" | "s" => n,
                "m" => n * 60.0,
                "h" => n * 3600.0,
                _ => return Err(format!("unknown unit in {s:?} (use s, m or h)")),
            }
        }
        v => {
            return Err(format!(
                "`timeout` must be seconds or a string like \"30m\", not {v}"
            ))
        }
    };
    if secs > 0.0 && secs.is_finite() {
        Ok(secs)
    } else {
        Err("`timeout` must be > 0".into())
    }
}

fn parse_sampler(ctx: &Ctx, keys: &Table, key: &str, v: &Value) -> Result<Sampler> {
    let bad = |m: String| ctx.err("random", key, m);
    let Value::Table(t) = v else {
        return Err(bad(format!(
            "`{key}` must be a table like {{ log_uniform = [1e-4, 1e-2] }}, {{ uniform = [a, b] }}, \
             {{ int_uniform = [a, b] }} or {{ choice = [...] }}"
        )));
    };
    let (kind, arg) = match t.iter().next() {
        Some((k, a)) if t.len() == 1 => (k.as_str(), a),
        _ => {
            return Err(bad(format!(
                "`{key}` needs exactly one of uniform, log_uniform, int_uniform, choice"
            )))
        }
    };
    let list = match arg {
        Value::Array(a) if !a.is_empty() => a,
        _ => return Err(bad(format!("`{key}.{kind}` must be a non-empty list"))),
    };
    let pair = || -> Result<(f64, f64)> {
        match (
            list.len(),
            list.first().and_then(as_f64),
            list.get(1).and_then(as_f64),
        ) {
            (2, Some(a), Some(b)) if a < b => Ok((a, b)),
            _ => Err(bad(format!(
                "`{key}.{kind}` must be [low, high] with low < high"
            ))),
        }
    };
    let sampler = match kind {
        "uniform" => {
            let (a, b) = pair()?;
            Sampler::Uniform(a, b)
        }
        "log_uniform" => {
            let (a, b) = pair()?;
            if a <= 0.0 {
                return Err(bad(format!("`{key}.log_uniform` needs low > 0")));
            }
            Sampler::LogUniform(a, b)
        }
        "int_uniform" => {
            let (a, b) = pair()?;
            Sampler::IntUniform(a as i64, b as i64)
        }
        "choice" => Sampler::Choice(
            list.iter()
                .map(|x| check_run_value(ctx, keys, "random", key, x))
                .collect::<Result<_>>()?,
        ),
        other => {
            return Err(bad(format!(
                "unknown sampler `{other}`{}",
                nearest(other, ["uniform", "log_uniform", "int_uniform", "choice"])
            )))
        }
    };
    // A drawn value must fit the key's type.
    let probe = match &sampler {
        Sampler::Uniform(a, _) | Sampler::LogUniform(a, _) => Value::Float(*a),
        Sampler::IntUniform(a, _) => Value::Integer(*a),
        Sampler::Choice(c) => c[0].clone(),
    };
    check_run_value(ctx, keys, "random", key, &probe)?;
    Ok(sampler)
}

fn draw(s: &Sampler, rng: &mut Rng, int_key: bool) -> Value {
    match s {
        Sampler::Uniform(a, b) => {
            let x = round4(a + (b - a) * rng.uniform_f64());
            if int_key {
                Value::Integer(x.round() as i64)
            } else {
                Value::Float(x)
            }
        }
        Sampler::LogUniform(a, b) => {
            let x = round4((a.ln() + (b.ln() - a.ln()) * rng.uniform_f64()).exp());
            if int_key {
                Value::Integer(x.round() as i64)
            } else {
                Value::Float(x)
            }
        }
        Sampler::IntUniform(a, b) => {
            let span = (b - a + 1) as u64;
            Value::Integer(a + (rng.next_u64() % span) as i64)
        }
        Sampler::Choice(c) => c[(rng.next_u64() % c.len() as u64) as usize].clone(),
    }
}

/// Reads and expands a sweep file. Refuses more than `max_trials` trials unless `force`.
pub fn load(path: &Path, max_trials: usize, force: bool) -> Result<Plan> {
    let text = std::fs::read_to_string(path).at(path)?;
    plan(path, &text, max_trials, force)
}

/// Expands sweep-file text (`path` is for messages).
pub fn plan(path: &Path, text: &str, max_trials: usize, force: bool) -> Result<Plan> {
    let ctx = Ctx { path, text };
    let doc: Table = toml::from_str(text).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        message: crate::config::toml_message(&e, text),
    })?;
    for k in doc.keys() {
        if !TOP_KEYS.contains(&k.as_str()) {
            let hint = nearest(k, TOP_KEYS.iter().copied());
            return Err(ctx.err(k, k, format!("unknown table `{k}`{hint}; expected [experiment], [defaults], [grid], [random] or [[trial]]")));
        }
    }
    let section = |name: &str| -> Result<Table> {
        match doc.get(name) {
            None => Ok(Table::new()),
            Some(Value::Table(t)) => Ok(t.clone()),
            Some(v) => Err(ctx.err(
                name,
                name,
                format!("`{name}` must be a table, not {}", type_name(v)),
            )),
        }
    };
    let (experiment, mut base) = parse_experiment(&ctx, &section("experiment")?)?;
    let slurm: SlurmSettings = Value::Table(section("slurm")?).try_into().map_err(|e| {
        let msg = e.to_string();
        let key = msg
            .split('`')
            .nth(1)
            .filter(|k| !k.contains(' '))
            .unwrap_or("slurm")
            .to_string();
        ctx.err("slurm", &key, msg.trim().replace('\n', " "))
    })?;
    if slurm.cpus_per_task == Some(0) || slurm.array_parallelism == Some(0) {
        return Err(ctx.err(
            "slurm",
            if slurm.cpus_per_task == Some(0) {
                "cpus_per_task"
            } else {
                "array_parallelism"
            },
            "must be at least 1".into(),
        ));
    }
    let keys = run_keys();

    for (k, v) in flatten(&section("defaults")?) {
        let v = check_run_value(&ctx, &keys, "defaults", &k, &v)?;
        set_path(&mut base, &k, v);
    }

    // Grid: lists per key.
    let mut grid: Vec<(String, Vec<Value>)> = Vec::new();
    for (k, v) in flatten(&section("grid")?) {
        let Value::Array(values) = v else {
            return Err(ctx.err("grid", &k, format!("`{k}` must be a list of values")));
        };
        if values.is_empty() {
            return Err(ctx.err("grid", &k, format!("`{k}` is an empty list")));
        }
        let values = values
            .iter()
            .map(|x| check_run_value(&ctx, &keys, "grid", &k, x))
            .collect::<Result<Vec<_>>>()?;
        grid.push((k, values));
    }

    // Random search.
    let random_t = section("random")?;
    let mut random: Vec<(String, Sampler)> = Vec::new();
    let mut random_trials = 0usize;
    for (k, v) in flatten(&random_t) {
        if k == "trials" {
            random_trials = match v {
                Value::Integer(i) if i >= 1 => i as usize,
                v => {
                    return Err(ctx.err(
                        "random",
                        "trials",
                        format!("`trials` must be an integer ≥ 1, not {v}"),
                    ))
                }
            };
            continue;
        }
        random.push((k.clone(), parse_sampler(&ctx, &keys, &k, &v)?));
    }
    if !random.is_empty() && random_trials == 0 {
        return Err(ctx.err("random", "trials", "needs `trials = N`".into()));
    }

    // Explicit trials.
    let explicit: Vec<Table> = match doc.get("trial") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| match t {
                Value::Table(t) => Ok(t.clone()),
                _ => Err(ctx.err("trial", "trial", "use [[trial]] tables".into())),
            })
            .collect::<Result<_>>()?,
        Some(_) => {
            return Err(ctx.err(
                "trial",
                "trial",
                "use [[trial]] tables (double brackets)".into(),
            ))
        }
    };

    // Count before allocating anything.
    let grid_count = if grid.is_empty() {
        0
    } else {
        grid.iter()
            .try_fold(1usize, |acc, (_, v)| acc.checked_mul(v.len()))
            .unwrap_or(usize::MAX)
    };
    let total = grid_count
        .saturating_add(random_trials)
        .saturating_add(explicit.len())
        .max(1);
    let limit = experiment.max_trials.unwrap_or(max_trials);
    if total > limit && !force {
        return Err(Error::Config {
            path: path.to_path_buf(),
            message: format!(
                "the sweep has {total} trials, more than the limit of {limit} \
                 (--max-trials or [experiment] max_trials); narrow it or pass --force"
            ),
        });
    }

    // Expand: grid (last key fastest), then random draws, then explicit trials.
    let mut points: Vec<(Vec<(String, Value)>, bool)> = Vec::new();
    if !grid.is_empty() {
        for i in 0..grid_count {
            let mut rest = i;
            let mut p = Vec::with_capacity(grid.len());
            for (k, values) in grid.iter().rev() {
                p.push((k.clone(), values[rest % values.len()].clone()));
                rest /= values.len();
            }
            p.reverse();
            points.push((p, false));
        }
    }
    let mut rng = Rng::new(experiment.seed, 5);
    for _ in 0..random_trials {
        let p = random
            .iter()
            .map(|(k, s)| {
                let int_key = matches!(keys.get(k), Some(Value::Integer(_)));
                (k.clone(), draw(s, &mut rng, int_key))
            })
            .collect();
        points.push((p, false));
    }
    for (i, t) in explicit.iter().enumerate() {
        let p = flatten(t)
            .into_iter()
            .map(|(k, v)| Ok((k.clone(), check_run_value(&ctx, &keys, "trial", &k, &v)?)))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| Error::Config {
                path: path.to_path_buf(),
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
    if points.is_empty() {
        points.push((Vec::new(), false));
    }

    let mut trials: Vec<Trial> = Vec::new();
    let mut duplicates = 0;
    for (overrides, is_explicit) in points {
        let mut table = base.clone();
        for (k, v) in &overrides {
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
                path: path.to_path_buf(),
                message: format!("trial ({}): {}", describe(), e.message().trim()),
            })?;
        config.validate().map_err(|e| {
            let key = match &e {
                Error::Invalid { key, .. } => key.clone(),
                _ => String::new(),
            };
            let sect = if grid.iter().any(|(k, _)| *k == key) {
                "grid"
            } else if random.iter().any(|(k, _)| *k == key) {
                "random"
            } else if is_explicit {
                "trial"
            } else {
                "defaults"
            };
            ctx.err(sect, &key, format!("{e} (trial {})", describe()))
        })?;
        let hash = config_hash(&config);
        if let Some(j) = trials.iter().position(|t| t.hash == hash) {
            if is_explicit {
                return Err(Error::Config {
                    path: path.to_path_buf(),
                    message: format!(
                        "[[trial]] ({}) duplicates trial {j} of the sweep",
                        describe()
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

    // Domains of the swept keys, in file order.
    let mut swept: Vec<(String, Domain)> = Vec::new();
    let mut add = |k: &str, d: Domain| match swept.iter_mut().find(|(n, _)| n == k) {
        None => swept.push((k.to_string(), d)),
        Some((_, existing)) => *existing = merge(existing, &d),
    };
    for (k, v) in &grid {
        add(k, Domain::Discrete(v.iter().map(hvalue).collect()));
    }
    for (k, s) in &random {
        let d = match s {
            Sampler::Uniform(a, b) | Sampler::LogUniform(a, b) => Domain::Interval(*a, *b),
            Sampler::IntUniform(a, b) => Domain::Interval(*a as f64, *b as f64),
            Sampler::Choice(c) => Domain::Discrete(c.iter().map(hvalue).collect()),
        };
        add(k, d);
    }
    for t in &trials {
        for (k, v) in &t.overrides {
            if !grid.iter().any(|(g, _)| g == k) && !random.iter().any(|(r, _)| r == k) {
                add(k, Domain::Discrete(vec![hvalue(v)]));
            }
        }
    }

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

fn merge(a: &Domain, b: &Domain) -> Domain {
    let nums = |d: &Domain| -> Option<(f64, f64)> {
        match d {
            Domain::Interval(lo, hi) => Some((*lo, *hi)),
            Domain::Discrete(v) => {
                let xs: Vec<f64> = v
                    .iter()
                    .filter_map(|x| match x {
                        HValue::Num(n) => Some(*n),
                        _ => None,
                    })
                    .collect();
                (xs.len() == v.len() && !xs.is_empty()).then(|| {
                    (
                        xs.iter().copied().fold(f64::INFINITY, f64::min),
                        xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    )
                })
            }
        }
    };
    match (a, b) {
        (Domain::Discrete(x), Domain::Discrete(y)) => {
            let mut v = x.clone();
            for e in y {
                if !v.contains(e) {
                    v.push(e.clone());
                }
            }
            Domain::Discrete(v)
        }
        _ => match (nums(a), nums(b)) {
            (Some((a0, a1)), Some((b0, b1))) => Domain::Interval(a0.min(b0), a1.max(b1)),
            _ => a.clone(),
        },
    }
}

/// A short, path-safe label of a trial's swept values, e.g. `sl50_l2_do0.25_lr0.001`.
pub fn label(overrides: &[(String, Value)]) -> String {
    let abbrev = |k: &str| -> String {
        match k {
            "lr" => "lr".into(),
            "dropout" => "do".into(),
            "optimizer" => String::new(),
            other => other
                .rsplit('.')
                .next()
                .unwrap_or(other)
                .split('_')
                .filter_map(|p| p.chars().next())
                .collect(),
        }
    };
    let value = |v: &Value| -> String {
        let s = match v {
            Value::Float(f) if f.abs() > 0.0 && f.abs() < 1e-3 => format!("{f:e}"),
            Value::Float(f) => format!("{f}"),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+') {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    overrides
        .iter()
        .map(|(k, v)| format!("{}{}", abbrev(k), value(v)))
        .collect::<Vec<_>>()
        .join("_")
}

/// The run directory name of trial `index`: `NNN-<label>-<hash>`, at most 64 chars.
pub fn dir_name(index: usize, trial: &Trial) -> String {
    let hash = &trial.hash[..8.min(trial.hash.len())];
    let prefix = format!("{index:03}");
    let room = 64 - prefix.len() - hash.len() - 2;
    let mut l: String = label(&trial.overrides).chars().take(room).collect();
    l = l.trim_end_matches(['_', '.', '-']).to_string();
    if l.is_empty() {
        format!("{prefix}-{hash}")
    } else {
        format!("{prefix}-{l}-{hash}")
    }
}

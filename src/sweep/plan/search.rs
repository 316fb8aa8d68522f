//! The `[search]` table: how a sweep chooses its trials. Absent (or `method = "list"`): the
//! grid, random draws and explicit trials as listed. `method = "tpe"`: proposed one at a time
//! from the finished ones ([`crate::sweep::tpe`]). `method = "pbt"`: a population trained at
//! once whose worst members copy the best and perturb their values at fixed intervals
//! ([`crate::sweep::pbt`]).

use super::check::{nearest, Reader, SweepFile};
use super::space::{self, Sampler};
use crate::config::{RunConfig, EXPLORABLE};
use crate::error::Result;
use crate::run_dir::Metric;
use toml::{Table, Value};

/// `[search] method = "tpe"`: a Tree-structured Parzen Estimator search over the `[random]`
/// domains.
#[derive(Debug, Clone, PartialEq)]
pub struct TpeSearch {
    /// Trials in all.
    pub trials: usize,
    /// Random trials before the model takes over.
    pub startup: usize,
    /// Candidates scored per proposal.
    pub candidates: usize,
    /// What is minimised: best `val/loss` (default), `val/bpc`, `val/accuracy` (maximised), or
    /// `final/val/loss`.
    pub metric: Metric,
    /// Whether proposals weigh a candidate's expected gain by its estimated cost
    /// ([`crate::sweep::search`] says how). Off unless asked (`cost_aware = true`): it pays where
    /// small models are as good as large ones and costs where large ones win, as they do for a
    /// char-LSTM at a fixed step budget (the tests in `tpe.rs`; BENCHMARKS.md's race).
    pub cost_aware: bool,
    /// One joint density over the keys ([`crate::sweep::tpe::Settings::joint`]; Optuna's
    /// option of the same name). On unless `multivariate = false`: on the races against
    /// Optuna it reached a given loss in fewer trials and minutes than the key-by-key model
    /// (BENCHMARKS.md, "Search III").
    pub multivariate: bool,
    /// Numbers listed in order in a choice (`hidden = { choice = [64, 128, 256] }`) modelled as
    /// an ordered key ([`crate::sweep::search::dim`]). Off unless `ordered_choices = true`: it
    /// pays where the largest one-layer size is best and costs where another is: over fifteen
    /// race seeds it was lower than the default on 红楼梦 and higher on Shakespeare
    /// (BENCHMARKS.md, "`ordered_choices` over fifteen seeds").
    pub ordered_choices: bool,
    /// The share of each proposal's candidates drawn from the whole space rather than the good
    /// density ([`crate::sweep::tpe::Settings::explore`]) at the first proposal after the
    /// startup ([`DEFAULT_EXPLORE`]); `explore = 0` is Optuna's. The per-key model leans on it.
    pub explore: f64,
    /// Proposals after the startup over which the `explore` share falls linearly to none
    /// ([`DEFAULT_EXPLORE_FADE`]); `explore_fade = 0` holds it for the whole search.
    pub explore_fade: usize,
    /// A second objective (`objectives = [metric, "time" | "params"]`): proposals follow the
    /// Pareto front (MOTPE's split) instead of the metric alone.
    pub second: Option<Metric>,
    /// Earlier sweeps whose finished trials start the history (`warm_start`).
    pub warm_start: Vec<std::path::PathBuf>,
    /// Each trial trains from its own seed, the defaults' `seed` plus its index
    /// (`seed_per_trial = true`). Off by default, every trial from the one seed: the search then
    /// compares points under one initial draw, which at a size whose loss spreads widely with the
    /// draw (two layers of 256 on Shakespeare: 1.76 to 1.83 over three seeds at one point) makes
    /// the whole search's outcome that draw's luck (BENCHMARKS.md, "One draw per race").
    pub seed_per_trial: bool,
}

/// Random trials before TPE proposes from results, when `startup_trials` is not given.
pub const DEFAULT_STARTUP: usize = 10;

/// `[search] explore` when not given: half the candidates from the whole space at first, falling
/// to none over [`DEFAULT_EXPLORE_FADE`] proposals. Held for a whole search (the default while the
/// joint model's category kernel had a fixed spread, which trapped a settled search without it:
/// BENCHMARKS.md, "Candidates from the whole space") it cost the AMX Xeon's Shakespeare races
/// 0.003 late in the search over fifteen seeds a side, where drawing every candidate from the good
/// density did not ("`explore = 0` over fifteen seeds"); but on the Zen 4, where a 红楼梦
/// search runs 13–26 trials in its four minutes, the good density alone left one seed in five
/// without a trial of the winning size, and the fading share ended every 红楼梦 seed lower than it
/// did (0.019 ± 0.006 at minute 4, 0.25 at minute 2) and cost Shakespeare 0.002 ± 0.006 at
/// minute 3 over eight seeds, 0.02 at minute 1 (BENCHMARKS.md, "A share of wide draws that
/// fades").
pub const DEFAULT_EXPLORE: f64 = 0.5;

/// `[search] explore_fade` when not given: proposals after the startup over which the share of
/// wide draws falls to none. A 红楼梦 search on Zen 4 makes 11–22 proposals in four minutes, a
/// Shakespeare one 40–65 in three: twenty keeps the wide draws for nearly all of the first and
/// the first third of the second, where a settled search is what they are for.
pub const DEFAULT_EXPLORE_FADE: usize = 20;

/// `[search] method = "pbt"`: population-based training over the `[random]` domains.
#[derive(Debug, Clone, PartialEq)]
pub struct PbtSearch {
    /// Members trained at once (the initial draw from `[random]`).
    pub population: usize,
    /// Steps between a member's decisions.
    pub interval: u64,
    /// The bottom `quantile` of the ranking copies from the top `quantile`.
    pub quantile: f64,
    /// Chance that an explored key is drawn anew from its domain rather than perturbed.
    pub resample: f64,
    /// A perturbed value is multiplied by one of these.
    pub factors: Vec<f64>,
    /// The `[random]` keys a decision explores (those in [`EXPLORABLE`]); the others are drawn
    /// once per member and copied with the weights.
    pub explored: Vec<String>,
}

/// How a sweep chooses its trials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    List,
    Tpe,
    Pbt,
}

const TPE_KEYS: &[&str] = &[
    "trials",
    "startup_trials",
    "candidates",
    "metric",
    "cost_aware",
    "multivariate",
    "ordered_choices",
    "explore",
    "explore_fade",
    "warm_start",
    "seed_per_trial",
];
/// Keys of every method.
const COMMON_KEYS: &[&str] = &["method", "objectives"];
const PBT_KEYS: &[&str] = &["population", "interval", "quantile", "resample", "factors"];

/// What a `[search]` table says: the TPE settings for `method = "tpe"`, the PBT ones for
/// `"pbt"`, neither for the default; and the sweep's objectives (one or two) for every method.
pub(super) struct Parsed {
    pub tpe: Option<TpeSearch>,
    pub pbt: Option<PbtSearch>,
    pub objectives: Vec<Metric>,
}

/// The `[search]` table.
pub(super) fn parse(file: &SweepFile, t: &Table, space: &space::Space) -> Result<Parsed> {
    let objectives = parse_objectives(file, t)?;
    let (mut tpe, pbt) = parse_method(file, t, space)?;
    if let Some(s) = tpe.as_mut() {
        if t.contains_key("objectives") && t.contains_key("metric") && s.metric != objectives[0] {
            let m = format!(
                "`metric` is {} but `objectives` starts with {}: give one of them",
                s.metric.name(),
                objectives[0].name()
            );
            return Err(file.err("search", "metric", m));
        }
        s.metric = objectives[0];
        s.second = objectives.get(1).copied();
    }
    Ok(Parsed {
        tpe,
        pbt,
        objectives,
    })
}

/// `objectives = [metric]` or `[metric, cost]`: a validation metric, then `time` or `params`;
/// `[metric]` (or best val/loss) when absent.
fn parse_objectives(file: &SweepFile, t: &Table) -> Result<Vec<Metric>> {
    let Some(v) = t.get("objectives") else {
        return Ok(vec![parse_metric(file, t)?]);
    };
    let bad = |m: String| file.err("search", "objectives", m);
    let names: Vec<&str> = match v.as_array() {
        Some(a) => a.iter().map(|x| x.as_str().unwrap_or("?")).collect(),
        None => return Err(bad(format!("`objectives` must be a list, not {v}"))),
    };
    let first = names
        .first()
        .and_then(|n| Metric::parse(n, &Metric::VALIDATION));
    let second = names.get(1).map(|n| Metric::parse(n, &Metric::COSTS));
    match (first, second, names.len()) {
        (Some(a), None, 1) => Ok(vec![a]),
        (Some(a), Some(Some(b)), 2) => Ok(vec![a, b]),
        _ => Err(bad(format!(
            "`objectives` must be [METRIC] or [METRIC, COST] with METRIC one of {} and COST \
             one of {}, not {v}",
            Metric::names(&Metric::VALIDATION),
            Metric::names(&Metric::COSTS)
        ))),
    }
}

/// `method` and its settings.
fn parse_method(
    file: &SweepFile,
    t: &Table,
    space: &space::Space,
) -> Result<(Option<TpeSearch>, Option<PbtSearch>)> {
    let all: Vec<&str> = COMMON_KEYS
        .iter()
        .chain(TPE_KEYS)
        .chain(PBT_KEYS)
        .copied()
        .collect();
    if let Some(k) = t.keys().find(|k| !all.contains(&k.as_str())) {
        return Err(file.unknown("search", k, &all));
    }
    let method = method(file, t)?;
    let foreign = |keys: &[&str], what: &str| -> Result<()> {
        match keys.iter().find(|k| t.contains_key(**k)) {
            Some(k) => Err(file.err("search", k, format!("`{k}` {what}"))),
            None => Ok(()),
        }
    };
    match method {
        Method::List => {
            foreign(
                TPE_KEYS,
                "is a TPE setting; method = \"list\" runs the listed trials",
            )?;
            foreign(
                PBT_KEYS,
                "is a PBT setting; method = \"list\" runs the listed trials",
            )?;
            Ok((None, None))
        }
        Method::Tpe => {
            foreign(PBT_KEYS, "is a PBT setting, not one of method = \"tpe\"")?;
            Ok((Some(parse_tpe(file, t, space)?), None))
        }
        Method::Pbt => {
            foreign(TPE_KEYS, "is a TPE setting, not one of method = \"pbt\"")?;
            Ok((None, Some(parse_pbt(file, t, space)?)))
        }
    }
}

/// `[search] method`.
fn method(file: &SweepFile, t: &Table) -> Result<Method> {
    let m = match t.get("method") {
        None => return Ok(Method::List),
        Some(Value::String(m)) => m.as_str(),
        Some(v) => {
            return Err(file.err(
                "search",
                "method",
                format!("`method` must be \"tpe\", \"pbt\" or \"list\", not {v}"),
            ))
        }
    };
    match m {
        "list" => Ok(Method::List),
        "tpe" => Ok(Method::Tpe),
        "pbt" => Ok(Method::Pbt),
        other => {
            let hint = nearest(other, ["tpe", "pbt", "list"]);
            Err(file.err(
                "search",
                "method",
                format!("unknown method `{other}`{hint}; expected \"tpe\", \"pbt\" or \"list\""),
            ))
        }
    }
}

fn parse_pbt(file: &SweepFile, t: &Table, space: &space::Space) -> Result<PbtSearch> {
    let r = Reader::new(file, "search", t);
    let population = r.uint("population", 2)?.ok_or_else(|| {
        file.err(
            "search",
            "method",
            "method = \"pbt\" needs `population = N` in [search]".into(),
        )
    })? as usize;
    let interval = r.uint("interval", 1)?.ok_or_else(|| {
        file.err(
            "search",
            "method",
            "method = \"pbt\" needs `interval = STEPS` in [search] (steps between decisions)"
                .into(),
        )
    })? as u64;
    let quantile = r.number_in("quantile", 0.25, |q| q > 0.0 && q <= 0.5, "in (0, 0.5]")?;
    let resample = r.number_in("resample", 0.25, |p| (0.0..=1.0).contains(&p), "in [0, 1]")?;
    let factors = parse_factors(file, t)?;
    if space.random.is_empty() || !space.grid.is_empty() || space.random_trials > 0 {
        return Err(file.err(
            "search",
            "method",
            "with method = \"pbt\" the members are drawn from [random] (no `trials` there: \
             [search] population is the count), and there is no [grid]"
                .into(),
        ));
    }
    let explored = explored_keys(file, space)?;
    Ok(PbtSearch {
        population,
        interval,
        quantile,
        resample,
        factors,
        explored,
    })
}

/// `[search] factors`: positive numbers (default 1.2 and 0.8).
fn parse_factors(file: &SweepFile, t: &Table) -> Result<Vec<f64>> {
    match t.get("factors") {
        None => Ok(vec![1.2, 0.8]),
        Some(Value::Array(a)) => {
            let fs: Vec<f64> = a
                .iter()
                .filter_map(space::as_f64)
                .filter(|f| *f > 0.0)
                .collect();
            if fs.is_empty() || fs.len() != a.len() {
                return Err(file.err(
                    "search",
                    "factors",
                    format!(
                        "`factors` must be a list of positive numbers, not {}",
                        Value::Array(a.clone())
                    ),
                ));
            }
            Ok(fs)
        }
        Some(v) => Err(file.err(
            "search",
            "factors",
            format!("`factors` must be a list of numbers, not {v}"),
        )),
    }
}

/// The `[random]` keys a PBT decision explores: at least one.
fn explored_keys(file: &SweepFile, space: &space::Space) -> Result<Vec<String>> {
    let explored: Vec<String> = space
        .random
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| EXPLORABLE.contains(&k.as_str()))
        .collect();
    if explored.is_empty() {
        return Err(file.err(
            "search",
            "method",
            format!(
                "method = \"pbt\" explores keys that can change while a run trains ({}): give \
                 at least one of them a [random] domain",
                EXPLORABLE.join(", ")
            ),
        ));
    }
    Ok(explored)
}

/// A PBT member's config must stop for decisions: `interval` a multiple of `eval_every` (a
/// decision ranks the evaluation at its step) and shorter than the run.
pub(super) fn check_pbt_trial(file: &SweepFile, pbt: &PbtSearch, c: &RunConfig) -> Result<()> {
    if !pbt.interval.is_multiple_of(c.eval_every) {
        return Err(file.err(
            "search",
            "interval",
            format!(
                "`interval = {}` must be a multiple of eval_every ({}): a decision ranks the \
                 members' evaluations at its step",
                pbt.interval, c.eval_every
            ),
        ));
    }
    match c.max_steps {
        Some(n) if pbt.interval < n => Ok(()),
        _ => Err(file.err(
            "search",
            "interval",
            format!(
                "`interval = {}` must be shorter than the members' max_steps ({}; PBT members \
                 run a fixed number of steps)",
                pbt.interval,
                c.max_steps.map_or("unset".into(), |n| n.to_string())
            ),
        )),
    }
}

/// A value of an explored key as the sampler's domain gives it.
pub fn sampler_bounds(s: &Sampler) -> Option<(f64, f64)> {
    match s {
        Sampler::Uniform(a, b) | Sampler::LogUniform(a, b) => Some((*a, *b)),
        Sampler::IntUniform(a, b) => Some((*a as f64, *b as f64)),
        Sampler::Choice(_) => None,
    }
}

/// A TPE search draws from the `[random]` domains only.
fn check_tpe_space(file: &SweepFile, space: &space::Space) -> Result<()> {
    if space.random.is_empty() {
        return Err(file.err(
            "search",
            "method",
            "method = \"tpe\" searches the [random] domains: add some".into(),
        ));
    }
    if !space.grid.is_empty() || space.random_trials > 0 {
        let key = if space.grid.is_empty() {
            "trials"
        } else {
            "method"
        };
        return Err(file.err(
            if space.grid.is_empty() {
                "random"
            } else {
                "search"
            },
            key,
            "with method = \"tpe\" the trial count is [search] trials, and there is no [grid]"
                .into(),
        ));
    }
    Ok(())
}

/// `[search] metric`: a validation metric, best val/loss when absent.
fn parse_metric(file: &SweepFile, t: &Table) -> Result<Metric> {
    let Some(v) = t.get("metric") else {
        return Ok(Metric::ValLoss);
    };
    v.as_str()
        .and_then(|m| Metric::parse(m, &Metric::VALIDATION))
        .ok_or_else(|| {
            file.err(
                "search",
                "metric",
                format!(
                    "`metric` must be one of {}, not {v}",
                    Metric::names(&Metric::VALIDATION)
                ),
            )
        })
}

fn parse_tpe(file: &SweepFile, t: &Table, space: &space::Space) -> Result<TpeSearch> {
    let r = Reader::new(file, "search", t);
    let int =
        |k: &str, min: i64| -> Result<Option<usize>> { Ok(r.uint(k, min)?.map(|v| v as usize)) };
    let trials = int("trials", 1)?.ok_or_else(|| {
        file.err(
            "search",
            "method",
            "method = \"tpe\" needs `trials = N` in [search]".into(),
        )
    })?;
    let metric = parse_metric(file, t)?;
    check_tpe_space(file, space)?;
    if let Some(points) = space.random_points().filter(|&p| p < trials) {
        return Err(file.err(
            "search",
            "trials",
            format!(
                "`trials = {trials}` but the [random] domains hold only {points} distinct \
                 trials: lower it, or widen a domain"
            ),
        ));
    }
    // The default does not depend on `trials`, so `--extend` (more trials) is the same search.
    let startup = int("startup_trials", 0)?.unwrap_or(DEFAULT_STARTUP);
    let warm_start = parse_warm_start(file, t)?;
    // With a warm start the earlier trials count among the startup draws.
    if t.contains_key("startup_trials") && startup > trials && warm_start.is_empty() {
        return Err(file.err(
            "search",
            "startup_trials",
            format!(
                "`startup_trials = {startup}` is more than `trials = {trials}`: no trial would \
                 be proposed from results (for a random search use [random] trials = N)"
            ),
        ));
    }
    let seed_per_trial = r.bool("seed_per_trial")?.unwrap_or(false);
    if seed_per_trial && space.random.iter().any(|(k, _)| k == "seed") {
        return Err(file.err(
            "search",
            "seed_per_trial",
            "`seed_per_trial = true` gives each trial its own seed; `seed` cannot also be a \
             [random] key"
                .into(),
        ));
    }
    Ok(TpeSearch {
        trials,
        startup,
        candidates: int("candidates", 1)?.unwrap_or(24),
        metric,
        cost_aware: r.bool("cost_aware")?.unwrap_or(false),
        multivariate: r.bool("multivariate")?.unwrap_or(true),
        ordered_choices: r.bool("ordered_choices")?.unwrap_or(false),
        explore: r.number_in(
            "explore",
            DEFAULT_EXPLORE,
            |v| (0.0..=1.0).contains(&v),
            "a share between 0 and 1",
        )?,
        explore_fade: int("explore_fade", 0)?.unwrap_or(DEFAULT_EXPLORE_FADE),
        second: None,
        warm_start,
        seed_per_trial,
    })
}

/// `warm_start = ["runs/<earlier sweep>", …]`: sweep directories whose finished trials join
/// the search's history before its first proposal.
fn parse_warm_start(file: &SweepFile, t: &Table) -> Result<Vec<std::path::PathBuf>> {
    let Some(v) = t.get("warm_start") else {
        return Ok(Vec::new());
    };
    let bad = || {
        let m = format!("`warm_start` must be a list of sweep directories, not {v}");
        file.err("search", "warm_start", m)
    };
    let list = v.as_array().ok_or_else(bad)?;
    list.iter()
        .map(|x| x.as_str().map(std::path::PathBuf::from).ok_or_else(bad))
        .collect()
}

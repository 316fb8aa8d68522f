//! The search space of a sweep file: `[grid]` lists, `[random]` samplers (uniform,
//! log-uniform, integer, choice), how a point is drawn, and the domain of each swept key that the
//! HParams dashboard declares.

use super::check::{check_run_value, flatten, nearest, Reader, SweepFile};
use super::Trial;
use crate::error::Result;
use crate::rng::Rng;
use crate::summary::{Domain, HValue};
use toml::{Table, Value};

/// How a random-search key is drawn.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampler {
    Uniform(f64, f64),
    LogUniform(f64, f64),
    IntUniform(i64, i64),
    Choice(Vec<Value>),
}

/// Rounds `x` to `digits` significant digits (readable names and files, stable hashes).
pub fn round_sig(x: f64, digits: usize) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let decimals = digits.max(1) - 1;
    format!("{x:.decimals$e}").parse().unwrap_or(x)
}

pub fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Float(f) => Some(*f),
        Value::Integer(i) => Some(*i as f64),
        _ => None,
    }
}

/// A swept value as HParams declares it (a list or table, as its text).
pub(super) fn hvalue(v: &Value) -> HValue {
    crate::train::hparam_value(v).unwrap_or_else(|| HValue::Str(v.to_string()))
}

pub(super) fn parse_sampler(
    file: &SweepFile,
    keys: &Table,
    key: &str,
    v: &Value,
) -> Result<Sampler> {
    let bad = |m: String| file.err("random", key, m);
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
            if a.fract() != 0.0 || b.fract() != 0.0 {
                return Err(bad(format!(
                    "`{key}.int_uniform` must be [low, high] with whole numbers, not [{a}, {b}]"
                )));
            }
            Sampler::IntUniform(a as i64, b as i64)
        }
        "choice" => Sampler::Choice(
            list.iter()
                .map(|x| check_run_value(file, keys, "random", key, x))
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
    check_run_value(file, keys, "random", key, &probe)?;
    Ok(sampler)
}

impl Sampler {
    /// The values that bound what the sampler draws for a key (an integer key's as integers):
    /// both ends of a range, every choice.
    pub fn extremes(&self, int_key: bool) -> Vec<Value> {
        match self {
            Sampler::Uniform(a, b) | Sampler::LogUniform(a, b) => {
                vec![number(*a, int_key), number(*b, int_key)]
            }
            Sampler::IntUniform(a, b) => vec![Value::Integer(*a), Value::Integer(*b)],
            Sampler::Choice(c) => c.clone(),
        }
    }
}

pub fn draw(s: &Sampler, rng: &mut Rng, int_key: bool) -> Value {
    match s {
        Sampler::Uniform(a, b) => number(a + (b - a) * rng.uniform_f64(), int_key),
        Sampler::LogUniform(a, b) => number(
            (a.ln() + (b.ln() - a.ln()) * rng.uniform_f64()).exp(),
            int_key,
        ),
        Sampler::IntUniform(a, b) => {
            let span = (b - a + 1) as u64;
            Value::Integer(a + (rng.next_u64() % span) as i64)
        }
        Sampler::Choice(c) => c[(rng.next_u64() % c.len() as u64) as usize].clone(),
    }
}

pub(super) fn merge(a: &Domain, b: &Domain) -> Domain {
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

/// A drawn number as a value: an integer for integer keys, else rounded to four significant
/// digits (readable names, stable hashes).
pub fn number(x: f64, int_key: bool) -> Value {
    let x = round_sig(x, 4);
    if int_key {
        Value::Integer(x.round() as i64)
    } else {
        Value::Float(x)
    }
}

/// A point of the space: the swept keys' values, and whether it came from a `[[trial]]`.
pub type Point = (Vec<(String, Value)>, bool);

/// The `[grid]` and `[random]` tables of a sweep file.
#[derive(Debug, Clone, Default)]
pub struct Space {
    /// Lists per key, in file order.
    pub grid: Vec<(String, Vec<Value>)>,
    /// A sampler per key, in file order.
    pub random: Vec<(String, Sampler)>,
    /// `[random] trials`: points drawn.
    pub random_trials: usize,
}

impl Space {
    pub(super) fn parse(
        file: &SweepFile,
        keys: &Table,
        grid_t: &Table,
        random_t: &Table,
    ) -> Result<Self> {
        let mut space = Space::default();
        for (k, v) in flatten(grid_t) {
            let Value::Array(values) = v else {
                return Err(file.err("grid", &k, format!("`{k}` must be a list of values")));
            };
            if values.is_empty() {
                return Err(file.err("grid", &k, format!("`{k}` is an empty list")));
            }
            let values = values
                .iter()
                .map(|x| check_run_value(file, keys, "grid", &k, x))
                .collect::<Result<Vec<_>>>()?;
            space.grid.push((k, values));
        }
        let trials = Reader::new(file, "random", random_t).uint("trials", 1)?;
        space.random_trials = trials.unwrap_or(0) as usize;
        for (k, v) in flatten(random_t) {
            if k == "trials" {
                continue;
            }
            space
                .random
                .push((k.clone(), parse_sampler(file, keys, &k, &v)?));
        }
        Ok(space)
    }

    /// Points of the grid (0 without one; saturating, counted without expanding).
    pub fn grid_count(&self) -> usize {
        if self.grid.is_empty() {
            return 0;
        }
        self.grid
            .iter()
            .try_fold(1usize, |acc, (_, v)| acc.checked_mul(v.len()))
            .unwrap_or(usize::MAX)
    }

    /// How many distinct points the `[random]` domains hold, when all are discrete (choices,
    /// integer ranges); `None` when one is continuous.
    pub fn random_points(&self) -> Option<usize> {
        self.random.iter().try_fold(1usize, |acc, (_, s)| {
            let n = match s {
                Sampler::Choice(c) => c.len(),
                Sampler::IntUniform(a, b) => usize::try_from(b - a + 1).ok()?,
                Sampler::Uniform(..) | Sampler::LogUniform(..) => return None,
            };
            Some(acc.saturating_mul(n))
        })
    }

    /// The section a swept key comes from (for error messages).
    pub fn section_of(&self, key: &str) -> Option<&'static str> {
        if self.grid.iter().any(|(k, _)| k == key) {
            Some("grid")
        } else if self.random.iter().any(|(k, _)| k == key) {
            Some("random")
        } else {
            None
        }
    }

    /// The grid's points (last key fastest), then `random_trials` draws from `rng`.
    pub fn points(&self, keys: &Table, rng: &mut Rng) -> Vec<Point> {
        let mut points = Vec::new();
        for i in 0..self.grid_count() {
            let mut rest = i;
            let mut p = Vec::with_capacity(self.grid.len());
            for (k, values) in self.grid.iter().rev() {
                p.push((k.clone(), values[rest % values.len()].clone()));
                rest /= values.len();
            }
            p.reverse();
            points.push((p, false));
        }
        for _ in 0..self.random_trials {
            points.push((self.draw_point(keys, rng), false));
        }
        points
    }

    /// One draw of every `[random]` key.
    pub fn draw_point(&self, keys: &Table, rng: &mut Rng) -> Vec<(String, Value)> {
        self.random
            .iter()
            .map(|(k, s)| {
                let int_key = matches!(keys.get(k), Some(Value::Integer(_)));
                (k.clone(), draw(s, rng, int_key))
            })
            .collect()
    }

    /// Domains of the swept keys, in file order: the grid's lists, the samplers' ranges, and
    /// the values explicit trials give to other keys.
    pub fn domains(&self, trials: &[Trial]) -> Vec<(String, Domain)> {
        let mut swept: Vec<(String, Domain)> = Vec::new();
        let mut add = |k: &str, d: Domain| match swept.iter_mut().find(|(n, _)| n == k) {
            None => swept.push((k.to_string(), d)),
            Some((_, existing)) => *existing = merge(existing, &d),
        };
        for (k, v) in &self.grid {
            add(k, Domain::Discrete(v.iter().map(hvalue).collect()));
        }
        for (k, s) in &self.random {
            add(k, s.domain());
        }
        for t in trials {
            for (k, v) in &t.overrides {
                if self.section_of(k).is_none() {
                    add(k, Domain::Discrete(vec![hvalue(v)]));
                }
            }
        }
        swept
    }
}

impl std::fmt::Display for Sampler {
    /// As the sweep file writes it: `log_uniform [0.0001, 0.02]`, `choice [64, 128]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sampler::Uniform(a, b) => write!(f, "uniform [{a}, {b}]"),
            Sampler::LogUniform(a, b) => write!(f, "log_uniform [{a}, {b}]"),
            Sampler::IntUniform(a, b) => write!(f, "int_uniform [{a}, {b}]"),
            Sampler::Choice(c) => {
                let items: Vec<String> = c.iter().map(|v| v.to_string()).collect();
                write!(f, "choice [{}]", items.join(", "))
            }
        }
    }
}

impl Sampler {
    /// The values it can draw, as HParams declares them.
    pub fn domain(&self) -> Domain {
        match self {
            Sampler::Uniform(a, b) | Sampler::LogUniform(a, b) => Domain::Interval(*a, *b),
            Sampler::IntUniform(a, b) => Domain::Interval(*a as f64, *b as f64),
            Sampler::Choice(c) => Domain::Discrete(c.iter().map(hvalue).collect()),
        }
    }
}

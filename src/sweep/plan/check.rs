//! The parts of reading a sweep file that every table shares: the error that names the file,
//! the line and the key (with the nearest valid key for a typo), and the check that a value
//! fits its run key's type.

use crate::config::{CleanConfig, Precision, RunConfig};
use crate::error::{Error, Result};
use std::path::Path;
use toml::{Table, Value};

/// Every run key as a dotted path, with a value of its type (Options filled in).
pub(super) fn run_keys() -> Table {
    let full = RunConfig {
        max_steps: Some(1),
        epochs: Some(1.0),
        patience: Some(1),
        threads: Some(1),
        precision: Precision::Fp32,
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

pub(super) fn nearest<'a>(key: &str, valid: impl IntoIterator<Item = &'a str>) -> String {
    valid
        .into_iter()
        .map(|v| (distance(key, v), v))
        .min()
        .filter(|(d, v)| *d <= (v.len() / 2).max(2))
        .map(|(_, v)| format!(" (did you mean `{v}`?)"))
        .unwrap_or_default()
}

/// The 1-based line where `key` is assigned, preferring lines inside `section`.
pub(super) fn line_of(text: &str, section: &str, key: &str) -> Option<usize> {
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

/// The sweep file being read: its path and text, so that every error can name the file, the
/// line and the key.
pub(super) struct SweepFile<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl SweepFile<'_> {
    pub fn err(&self, section: &str, key: &str, message: String) -> Error {
        let at = line_of(self.text, section, key)
            .map(|l| format!("line {l}: "))
            .unwrap_or_default();
        Error::Config {
            path: self.path.to_path_buf(),
            message: format!("{at}[{section}] {message}"),
        }
    }

    pub fn unknown(&self, section: &str, key: &str, valid: &[&str]) -> Error {
        let hint = nearest(key, valid.iter().copied());
        self.err(section, key, format!("unknown key `{key}`{hint}"))
    }
}

/// Typed reads of one table's values, with errors naming its section, the key and the line.
pub(super) struct Reader<'a> {
    pub file: &'a SweepFile<'a>,
    pub section: &'a str,
    pub t: &'a Table,
    /// The key whose line errors name, for a table written inline (`stop = { … }`).
    inline: Option<&'a str>,
}

impl<'a> Reader<'a> {
    pub fn new(file: &'a SweepFile<'a>, section: &'a str, t: &'a Table) -> Self {
        Reader {
            file,
            section,
            t,
            inline: None,
        }
    }

    /// An error about key `k` of this table, naming its line.
    pub fn err(&self, k: &str, message: String) -> Error {
        self.file
            .err(self.section, self.inline.unwrap_or(k), message)
    }

    pub fn string(&self, k: &str) -> Result<Option<String>> {
        match self.t.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.err(k, format!("`{k}` must be a string, not {}", type_name(v)))),
        }
    }

    pub fn bool(&self, k: &str) -> Result<Option<bool>> {
        match self.t.get(k) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(k, format!("`{k}` must be true or false, not {v}"))),
        }
    }

    /// A finite number (an integer or a float) above 0.
    pub fn positive(&self, k: &str) -> Result<Option<f64>> {
        let x = match self.t.get(k) {
            None => return Ok(None),
            Some(Value::Integer(i)) => *i as f64,
            Some(Value::Float(f)) => *f,
            Some(v) => {
                let m = format!("`{k}` must be a number, not {}", type_name(v));
                return Err(self.err(k, m));
            }
        };
        if x > 0.0 && x.is_finite() {
            Ok(Some(x))
        } else {
            let m = format!("`{k}` must be a number > 0, not {x}");
            Err(self.err(k, m))
        }
    }

    /// A number (an integer or a float) for which `ok` holds, `what` saying which in the error;
    /// `default` when absent.
    pub fn number_in(
        &self,
        k: &str,
        default: f64,
        ok: impl Fn(f64) -> bool,
        what: &str,
    ) -> Result<f64> {
        let v = match self.t.get(k) {
            None => return Ok(default),
            Some(Value::Float(f)) => *f,
            Some(Value::Integer(i)) => *i as f64,
            Some(v) => return Err(self.err(k, format!("`{k}` must be a number, not {v}"))),
        };
        if ok(v) {
            Ok(v)
        } else {
            Err(self.err(k, format!("`{k} = {v}`: must be {what}")))
        }
    }

    /// The table under `k` (`k = { … }`), its keys checked against `keys`.
    pub fn table(&self, k: &'a str, keys: &[&str]) -> Result<Option<Reader<'a>>> {
        let t = match self.t.get(k) {
            None => return Ok(None),
            Some(Value::Table(t)) => t,
            Some(v) => {
                let m = format!(
                    "`{k}` must be a table ({k} = {{ … }}), not {}",
                    type_name(v)
                );
                return Err(self.err(k, m));
            }
        };
        if let Some(bad) = t.keys().find(|x| !keys.contains(&x.as_str())) {
            let mut hint = nearest(bad, keys.iter().copied());
            if hint.is_empty() {
                hint = format!(" (it takes {})", keys.join(", "));
            }
            let m = format!("unknown key `{bad}` in `{k}`{hint}");
            return Err(self.err(k, m));
        }
        Ok(Some(Reader {
            inline: Some(self.inline.unwrap_or(k)),
            ..Reader::new(self.file, self.section, t)
        }))
    }

    /// An integer of at least `min`.
    pub fn uint(&self, k: &str, min: i64) -> Result<Option<i64>> {
        match self.t.get(k) {
            None => Ok(None),
            Some(Value::Integer(i)) if *i >= min => Ok(Some(*i)),
            Some(v) => Err(self.err(k, format!("`{k}` must be an integer ≥ {min}, not {v}"))),
        }
    }
}

/// Flattens `clean = { … }` (or `[grid.clean]`) into dotted keys.
pub(super) fn flatten(table: &Table) -> Vec<(String, Value)> {
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

pub(super) fn type_name(v: &Value) -> &'static str {
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
pub(super) fn check_run_value(
    file: &SweepFile,
    keys: &Table,
    section: &str,
    key: &str,
    v: &Value,
) -> Result<Value> {
    let names: Vec<&str> = keys.keys().map(String::as_str).collect();
    let Some(expected) = keys.get(key) else {
        return Err(file.unknown(section, key, &names));
    };
    match (expected, v) {
        (Value::Float(_), Value::Integer(i)) => Ok(Value::Float(*i as f64)),
        (a, b) if std::mem::discriminant(a) == std::mem::discriminant(b) => Ok(v.clone()),
        (a, b) => Err(file.err(
            section,
            key,
            format!("`{key}` must be {}, not {}", type_name(a), type_name(b)),
        )),
    }
}

pub(super) fn set_path(table: &mut Table, key: &str, v: Value) {
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

//! What identifies a trial: the hash of its resolved config (across resumes), the hash without
//! its seed (the HParams group of its seeds), and its run directory's name.

use super::Trial;
use crate::config::RunConfig;
use toml::Value;

/// The hash that identifies a trial's computation: the resolved config without `device` and
/// `threads`, which do not change what it computes.
pub fn config_hash(cfg: &RunConfig) -> String {
    let mut c = cfg.clone();
    c.device = String::new();
    c.threads = None;
    crate::digest::sha256_hex(serde_json::to_string(&c).unwrap_or_default().as_bytes())[..16]
        .to_string()
}

/// The hash of a config without its seed: the seeds of one configuration share it.
pub fn group_hash(cfg: &RunConfig) -> String {
    let mut c = cfg.clone();
    c.seed = 0;
    config_hash(&c)
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

//! A run's hyperparameters as the HParams dashboard sees them: which config keys are
//! hyperparameters (not the ones about observing a run), their values and types, and the
//! metrics declared beside them.

use crate::config::RunConfig;
use crate::summary::{Domain, HParamDecl, HValue};
use crate::tags;
use tensorboard_proto::api::DataType as HpType;

/// What the HParams dashboard is told about the hyperparameters: the swept keys first, with
/// their domains and marked as differing (TensorBoard's table opens on them), then every other
/// hyperparameter of `sample` (a run's config, or a sweep's first trial). A run of its own has
/// no swept keys.
pub fn hparam_declarations(
    swept: &[(String, Domain)],
    sample: Option<&RunConfig>,
) -> Vec<HParamDecl> {
    let values = sample.map(hparam_values).unwrap_or_default();
    let mut out: Vec<HParamDecl> = swept
        .iter()
        .map(|(k, d)| HParamDecl {
            name: k.clone(),
            domain: Some(d.clone()),
            // Nested keys (clean.*) are not HParams values; they are declared by name only.
            ty: values
                .iter()
                .find(|(n, _)| n == k)
                .map_or(HpType::DATA_TYPE_FLOAT64, |(_, v)| hparam_type(v)),
            differs: true,
        })
        .collect();
    for (k, v) in &values {
        if !out.iter().any(|h| &h.name == k) {
            out.push(HParamDecl {
                name: k.clone(),
                domain: None,
                ty: hparam_type(v),
                differs: false,
            });
        }
    }
    out
}

/// The string column a population-based sweep adds to its members' sessions.
pub const LINEAGE: &str = "lineage";

/// A population member's session values: the explored keys as it ended (its last phase's) and
/// its lineage.
pub fn member_values(cfg: &RunConfig, lineage: &str) -> Vec<(String, HValue)> {
    let mut out = hparam_values(&cfg.at_step(u64::MAX));
    out.push((LINEAGE.into(), HValue::Str(lineage.into())));
    out
}

/// Config keys that are about observing a run, not about the model: left out of HParams, and
/// free to change when a run is resumed.
pub const OBSERVATION_KEYS: &[&str] = &[
    "device",
    "threads",
    "log_every",
    "eval_every",
    "histogram_every",
    "sample_length",
    "sample_temperature",
];

/// The metrics declared to the HParams dashboard: the final values, and the best evaluation's
/// (the `best/*` scalars hold the best so far at every evaluation, so their last value is the
/// run's best: an overfitting run is judged by its best point, not its last).
pub const METRICS: &[&str] = &[
    tags::BEST_VAL_LOSS,
    tags::BEST_VAL_BPC,
    tags::BEST_VAL_ACCURACY,
    tags::BEST_STEP,
    tags::VAL_LOSS,
    tags::VAL_ACCURACY,
    tags::VAL_BPC,
    tags::TRAIN_LOSS,
];

/// Keys that may differ between a run's saved config and the config it is resumed with: the
/// observation keys, the two that say how long the run goes, and `precision` (the arithmetic,
/// not the model: a run resumed on a machine without a bf16 unit may have to change it).
pub fn resumable(key: &str) -> bool {
    OBSERVATION_KEYS.contains(&key) || ["max_steps", "epochs", "precision"].contains(&key)
}

/// The run's hyperparameters as HParams values: every scalar key of the config except the
/// observation keys.
pub fn hparam_values(cfg: &RunConfig) -> Vec<(String, HValue)> {
    let mut out = config_values(cfg);
    out.retain(|(k, _)| !OBSERVATION_KEYS.contains(&k.as_str()));
    out
}

/// Every scalar key of the config with its value (a sweep may sweep an observation key, such as
/// `sample_temperature`; compare shows it then).
pub fn config_values(cfg: &RunConfig) -> Vec<(String, HValue)> {
    let mut out = Vec::new();
    if let Ok(toml::Value::Table(t)) = toml::Value::try_from(cfg) {
        for (k, v) in t {
            if let Some(hv) = hparam_value(&v) {
                out.push((k, hv));
            }
        }
    }
    // `precision = "auto"` is left out of saved configs (older ones lack the key); it is
    // still a hyperparameter every run has.
    if !out.iter().any(|(k, _)| k == "precision") {
        out.push(("precision".into(), HValue::Str("auto".into())));
    }
    out
}

/// A scalar TOML value as an HParams value (`None` for lists, tables and dates).
pub fn hparam_value(v: &toml::Value) -> Option<HValue> {
    match v {
        toml::Value::Integer(i) => Some(HValue::Num(*i as f64)),
        toml::Value::Float(f) => Some(HValue::Num(*f)),
        toml::Value::String(s) => Some(HValue::Str(s.clone())),
        toml::Value::Boolean(b) => Some(HValue::Bool(*b)),
        _ => None,
    }
}

/// The HParams data type of a value.
pub fn hparam_type(v: &HValue) -> HpType {
    match v {
        HValue::Num(_) => HpType::DATA_TYPE_FLOAT64,
        HValue::Str(_) => HpType::DATA_TYPE_STRING,
        HValue::Bool(_) => HpType::DATA_TYPE_BOOL,
    }
}

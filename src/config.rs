//! The one schema for a run's hyperparameters. A single run's TOML file and a sweep's
//! `[defaults]` use exactly these keys, so a trial is always "defaults + overrides" of this type,
//! and unknown keys are rejected (`deny_unknown_fields`) rather than silently ignored.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How spaces are handled by cleaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Spaces {
    /// Remove spaces when the text is mostly CJK (where a space is layout noise), keep them
    /// otherwise (where a space separates words).
    Auto,
    /// Always remove ASCII and full-width spaces.
    Remove,
    /// Never remove spaces.
    Keep,
}

/// Corpus cleaning steps, applied in the order listed here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CleanConfig {
    /// Drop everything before the first line that contains this marker (e.g. `章节目录`).
    pub start_marker: Option<String>,
    /// Strip `\r` (CRLF files).
    pub strip_cr: bool,
    /// Remove spans between each pair of open/close delimiters (junk, commentary, links).
    pub brackets: Vec<[String; 2]>,
    /// Space handling.
    pub spaces: Spaces,
    /// Replace a `……` at the end of a line with `。`.
    pub ellipsis_to_period: bool,
    /// Drop lines that are empty after the steps above.
    pub drop_blank_lines: bool,
    /// Keep only the first N chars (for quick debugging runs).
    pub max_chars: Option<usize>,
}

impl Default for CleanConfig {
    fn default() -> Self {
        CleanConfig {
            start_marker: None,
            strip_cr: true,
            brackets: vec![
                ["[".into(), "]".into()],
                ["<".into(), ">".into()],
                ["【".into(), "】".into()],
            ],
            spaces: Spaces::Auto,
            ellipsis_to_period: true,
            drop_blank_lines: true,
            max_chars: None,
        }
    }
}

/// Optimizers (the CS231N notes' update rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Momentum,
    Nesterov,
    Adagrad,
    Rmsprop,
    Adam,
    Adamw,
}

/// Learning-rate schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    None,
    /// Multiply by `lr_decay` once per epoch after `lr_decay_after` epochs (char-rnn).
    Exponential,
    /// Cosine from `lr` to `min_lr` over the run's total steps.
    Cosine,
}

/// The arithmetic of the CPU path's large products (see `model::precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 where this CPU has the instruction and runs it faster than fp32, fp32 elsewhere.
    #[default]
    Auto,
    Fp32,
    /// bf16 operands, fp32 accumulation (emulated, at fp32 speed, on a CPU without AVX512-BF16).
    Bf16,
}

impl Precision {
    pub fn is_auto(&self) -> bool {
        *self == Precision::Auto
    }
}

/// The keys that may change while a run trains: what population-based training explores and
/// what a `[[phases]]` table may set. The rest (sizes, the optimizer, the data) fix the shape of
/// the model, its optimizer state or its batches.
pub const EXPLORABLE: &[&str] = &[
    "lr",
    "dropout",
    "weight_decay",
    "grad_clip",
    "momentum",
    "beta1",
    "beta2",
];

/// From `step` on, the values given replace the run's own: a piecewise-constant schedule of the
/// [`EXPLORABLE`] keys (what a population-based sweep found for its best member, replayed by one
/// run from scratch).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub step: u64,
    /// Explorable key → value (checked against [`EXPLORABLE`] by `validate`).
    #[serde(flatten)]
    pub values: std::collections::BTreeMap<String, f64>,
}

/// Every hyperparameter of one run. Field docs are the TOML reference (README).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// A named corpus (`hongloumeng`, `shakespeare`) or a path to a UTF-8 text file.
    pub corpus: String,
    /// Cleaning steps.
    pub clean: CleanConfig,
    /// Fraction of the (cleaned) corpus held out for validation, taken from the end.
    pub val_fraction: f64,
    pub batch_size: usize,
    pub seq_len: usize,
    pub embed_dim: usize,
    pub hidden: usize,
    pub layers: usize,
    /// Dropout between LSTM layers and before the decoder.
    pub dropout: f64,
    pub optimizer: OptimizerKind,
    pub lr: f64,
    /// Momentum for `momentum` and `nesterov`.
    pub momentum: f64,
    /// Adam's beta1 and beta2.
    pub beta1: f64,
    pub beta2: f64,
    /// Decay rate of RMSProp's squared-gradient average.
    pub rms_decay: f64,
    pub eps: f64,
    /// L2 penalty (decoupled for `adamw`).
    pub weight_decay: f64,
    pub lr_schedule: Schedule,
    pub lr_decay: f64,
    pub lr_decay_after: f64,
    pub min_lr: f64,
    /// Clip gradients to this global L2 norm (0 = no clipping).
    pub grad_clip: f64,
    /// Stop after this many steps. With `epochs` too, whichever comes first.
    pub max_steps: Option<u64>,
    /// Stop after this many passes over the training split.
    pub epochs: Option<f64>,
    /// Stop when val/loss has not improved for this many evaluations (unset = never).
    pub patience: Option<u32>,
    /// Steps between train-scalar points (averaged over the interval).
    pub log_every: u64,
    /// Steps between evaluations on the whole validation split (and checkpoints, samples).
    pub eval_every: u64,
    /// Steps between weight and gradient histograms (0 = never).
    pub histogram_every: u64,
    /// Length and temperature of the text sample written at each evaluation.
    pub sample_length: usize,
    pub sample_temperature: f64,
    pub seed: u64,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// CPU threads for this run (default: all cores).
    pub threads: Option<usize>,
    /// `auto`, `fp32` or `bf16`: the large products' arithmetic on the CPU. Left out of the
    /// saved config and the hashes when `auto`, so configs written before it are unchanged.
    #[serde(default, skip_serializing_if = "Precision::is_auto")]
    pub precision: Precision,
    /// A schedule of the explorable keys (see [`Phase`]); none by default. Left out of the
    /// saved config and of the hashes when empty, so configs written before it are unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<Phase>,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            corpus: "hongloumeng".into(),
            clean: CleanConfig::default(),
            val_fraction: 0.05,
            batch_size: 32,
            seq_len: 64,
            embed_dim: 128,
            hidden: 256,
            layers: 2,
            dropout: 0.0,
            optimizer: OptimizerKind::Adam,
            lr: 2e-3,
            momentum: 0.9,
            beta1: 0.9,
            beta2: 0.999,
            rms_decay: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
            lr_schedule: Schedule::None,
            lr_decay: 0.97,
            lr_decay_after: 10.0,
            min_lr: 0.0,
            grad_clip: 5.0,
            max_steps: Some(1000),
            epochs: None,
            patience: None,
            log_every: 10,
            eval_every: 100,
            histogram_every: 100,
            sample_length: 200,
            sample_temperature: 0.8,
            seed: 1,
            device: "auto".into(),
            threads: None,
            precision: Precision::Auto,
            phases: Vec::new(),
        }
    }
}

/// Top-level keys every saved run config has had since charlab wrote them all (every key but the
/// unset optional ones): a `config.toml` in a run directory that lacks one was cut short, even if
/// what is left parses (an empty file is a valid config of defaults). Fixed, not derived from
/// [`RunConfig`], so a key added later does not make older runs' configs look damaged.
pub const SAVED_KEYS: &[&str] = &[
    "corpus",
    "val_fraction",
    "batch_size",
    "seq_len",
    "embed_dim",
    "hidden",
    "layers",
    "dropout",
    "optimizer",
    "lr",
    "momentum",
    "beta1",
    "beta2",
    "rms_decay",
    "eps",
    "weight_decay",
    "lr_schedule",
    "lr_decay",
    "lr_decay_after",
    "min_lr",
    "grad_clip",
    "log_every",
    "eval_every",
    "histogram_every",
    "sample_length",
    "sample_temperature",
    "seed",
    "device",
    "clean",
];

impl RunConfig {
    /// Reads and validates a run config from a TOML file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::error::read_named(path)?;
        Self::parse(&text, path)
    }

    /// Parses and validates TOML text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let cfg: RunConfig = toml::from_str(text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: toml_message(&e, text),
        })?;
        cfg.validate().map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(cfg)
    }

    /// The threads the run uses: `threads`, or every core.
    pub fn thread_count(&self) -> usize {
        self.threads.unwrap_or_else(crate::host::cores)
    }

    /// Steps of the whole run over a split of `windows` windows: `max_steps`, the steps of
    /// `epochs` passes, or the smaller; `None` when neither is set.
    pub fn total_steps(&self, windows: u64) -> Option<u64> {
        let by_epochs = |e: f64| ((e * windows as f64).ceil() as u64).max(1);
        match (self.max_steps, self.epochs) {
            (Some(s), Some(e)) => Some(s.min(by_epochs(e))),
            (Some(s), None) => Some(s),
            (None, Some(e)) => Some(by_epochs(e)),
            (None, None) => None,
        }
    }

    /// The config as TOML (what is saved beside every run).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks every range before any work starts.
    pub fn validate(&self) -> Result<()> {
        self.validate_phases()?;
        self.validate_shapes()?;
        self.validate_optimizer()?;
        self.validate_run()?;
        crate::device::parse(&self.device)?;
        for pair in &self.clean.brackets {
            if pair[0].is_empty() || pair[1].is_empty() {
                return Err(Error::invalid(
                    "clean.brackets",
                    "delimiters must not be empty",
                ));
            }
        }
        if self.clean.max_chars == Some(0) {
            return Err(Error::invalid("clean.max_chars", "must be at least 1"));
        }
        Ok(())
    }

    /// An explorable key's value (`None` for any other key).
    pub fn explorable(&self, key: &str) -> Option<f64> {
        Some(match key {
            "lr" => self.lr,
            "dropout" => self.dropout,
            "weight_decay" => self.weight_decay,
            "grad_clip" => self.grad_clip,
            "momentum" => self.momentum,
            "beta1" => self.beta1,
            "beta2" => self.beta2,
            _ => return None,
        })
    }

    /// Sets an explorable key (others are left alone).
    pub fn set_explorable(&mut self, key: &str, v: f64) {
        match key {
            "lr" => self.lr = v,
            "dropout" => self.dropout = v,
            "weight_decay" => self.weight_decay = v,
            "grad_clip" => self.grad_clip = v,
            "momentum" => self.momentum = v,
            "beta1" => self.beta1 = v,
            "beta2" => self.beta2 = v,
            _ => {}
        }
    }

    /// The config in force at `step`: the phases that started at or before it laid over it.
    pub fn at_step(&self, step: u64) -> RunConfig {
        let mut c = self.clone();
        for p in self.phases.iter().filter(|p| p.step <= step) {
            for (k, v) in &p.values {
                c.set_explorable(k, *v);
            }
        }
        c
    }

    /// How many phases have started by `step` (a change of it is a change of values).
    pub fn phase_at(&self, step: u64) -> usize {
        self.phases.iter().filter(|p| p.step <= step).count()
    }

    /// Phases in increasing step order, each leaving a valid config.
    fn validate_phases(&self) -> Result<()> {
        if self.phases.windows(2).any(|w| w[0].step >= w[1].step) {
            return Err(Error::invalid(
                "phases",
                "each [[phases]] step must be larger than the one before",
            ));
        }
        for p in &self.phases {
            if let Some(k) = p.values.keys().find(|k| !EXPLORABLE.contains(&k.as_str())) {
                return Err(Error::invalid(
                    "phases",
                    format!(
                        "`{k}` cannot change while a run trains; a phase may set {}",
                        EXPLORABLE.join(", ")
                    ),
                ));
            }
            let mut c = self.at_step(p.step);
            c.phases.clear();
            c.validate_shapes()?;
            c.validate_optimizer()?;
        }
        Ok(())
    }

    /// The data and model sizes.
    fn validate_shapes(&self) -> Result<()> {
        for (key, v) in [
            ("batch_size", self.batch_size),
            ("seq_len", self.seq_len),
            ("embed_dim", self.embed_dim),
            ("hidden", self.hidden),
            ("layers", self.layers),
            ("sample_length", self.sample_length),
        ] {
            positive(key, v)?;
        }
        if self.corpus.trim().is_empty() {
            return Err(Error::invalid("corpus", "must name a corpus or a file"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::invalid("dropout", "must be in [0, 1)"));
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            return Err(Error::invalid("val_fraction", "must be in (0, 1)"));
        }
        Ok(())
    }

    /// The optimizer and the learning-rate schedule.
    fn validate_optimizer(&self) -> Result<()> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid("lr", "must be > 0"));
        }
        for (key, v) in [
            ("momentum", self.momentum),
            ("beta1", self.beta1),
            ("beta2", self.beta2),
            ("rms_decay", self.rms_decay),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(Error::invalid(key, "must be in [0, 1)"));
            }
        }
        if !(self.lr_decay > 0.0 && self.lr_decay <= 1.0) {
            return Err(Error::invalid("lr_decay", "must be in (0, 1]"));
        }
        for (key, v) in [
            ("eps", self.eps),
            ("weight_decay", self.weight_decay),
            ("lr_decay_after", self.lr_decay_after),
            ("min_lr", self.min_lr),
            ("grad_clip", self.grad_clip),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::invalid(key, "must be a finite number >= 0"));
            }
        }
        Ok(())
    }

    /// How long the run goes and how it is observed.
    fn validate_run(&self) -> Result<()> {
        if !(self.sample_temperature > 0.0 && self.sample_temperature.is_finite()) {
            return Err(Error::invalid("sample_temperature", "must be > 0"));
        }
        if self.max_steps == Some(0) {
            return Err(Error::invalid("max_steps", "must be at least 1"));
        }
        if let Some(e) = self.epochs {
            if !(e > 0.0 && e.is_finite()) {
                return Err(Error::invalid("epochs", "must be > 0"));
            }
        }
        if self.max_steps.is_none() && self.epochs.is_none() {
            return Err(Error::invalid(
                "max_steps",
                "set `max_steps` or `epochs` (or both)",
            ));
        }
        if self.patience == Some(0) {
            return Err(Error::invalid("patience", "must be at least 1"));
        }
        positive("log_every", self.log_every as usize)?;
        positive("eval_every", self.eval_every as usize)?;
        if self.threads == Some(0) {
            return Err(Error::invalid("threads", "must be at least 1"));
        }
        Ok(())
    }
}

fn positive(key: &str, v: usize) -> Result<()> {
    if v == 0 {
        return Err(Error::invalid(key, "must be at least 1"));
    }
    Ok(())
}

/// A TOML error as one line: `line L, column C: what` (toml's own message spans several lines).
pub fn toml_message(e: &toml::de::Error, text: &str) -> String {
    let what = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            let source = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line}, column {col} (`{source}`): {what}")
        }
        None => what,
    }
}

//! The TensorBoard tags of a run's event files: the one place they are spelled. The trainer
//! writes them; the record rebuilt from a run's events, the HParams dashboard's metrics, the
//! sweep's custom-scalar charts and the metric names users sort and search by read them. A tag
//! added or renamed here reaches them all, and a test checks that every tag a run writes is one
//! of these.

pub const TRAIN_LOSS: &str = "train/loss";
pub const TRAIN_ACCURACY: &str = "train/accuracy";
pub const TRAIN_BPC: &str = "train/bpc";
pub const LR: &str = "lr";
pub const GRAD_NORM: &str = "grad_norm";
pub const CHARS_PER_S: &str = "throughput/chars_per_s";
pub const VAL_LOSS: &str = "val/loss";
pub const VAL_ACCURACY: &str = "val/accuracy";
pub const VAL_BPC: &str = "val/bpc";
/// The best evaluation so far, at every evaluation (their last values are the run's best).
pub const BEST_VAL_LOSS: &str = "best/val_loss";
pub const BEST_VAL_BPC: &str = "best/val_bpc";
pub const BEST_VAL_ACCURACY: &str = "best/val_accuracy";
pub const BEST_STEP: &str = "best/step";

/// Text: the sample generated at each evaluation, and what a population-based sweep changed.
pub const SAMPLE: &str = "samples/generated";
pub const PBT_EXPLOIT: &str = "pbt/exploit";

/// Text at a sweep's root: why its `stop` rule stopped it.
pub const SWEEP_STOPPED: &str = "sweep/stopped";

/// Every fixed scalar tag a run writes (besides [`hparam`]'s).
pub const SCALARS: &[&str] = &[
    TRAIN_LOSS,
    TRAIN_ACCURACY,
    TRAIN_BPC,
    LR,
    GRAD_NORM,
    CHARS_PER_S,
    VAL_LOSS,
    VAL_ACCURACY,
    VAL_BPC,
    BEST_VAL_LOSS,
    BEST_VAL_BPC,
    BEST_VAL_ACCURACY,
    BEST_STEP,
];

/// Every text tag a run may write.
pub const TEXTS: &[&str] = &[SAMPLE, PBT_EXPLOIT];

/// The sweep's custom-scalar charts: each shows these tags of every run, one chart per entry.
pub const CHARTS: &[(&str, &[&str])] = &[
    ("loss (train vs val)", &[TRAIN_LOSS, VAL_LOSS]),
    ("bits per char (train vs val)", &[TRAIN_BPC, VAL_BPC]),
];

/// A parameter's weights histogram.
pub fn weights(param: &str) -> String {
    format!("weights/{param}")
}

/// A parameter's gradients histogram.
pub fn gradients(param: &str) -> String {
    format!("gradients/{param}")
}

/// An explored key's schedule as a scalar (a population-based sweep's members).
pub fn hparam(key: &str) -> String {
    format!("hparams/{key}")
}

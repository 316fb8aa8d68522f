//! How much memory a run needs, checked against what the machine has before anything is
//! allocated: asked for a model larger than memory, a process would otherwise abort inside the
//! allocator (`memory allocation of … bytes failed`, a backtrace, exit 134) instead of saying so.

use super::Dims;
use crate::config::{OptimizerKind, RunConfig};
use crate::error::{Error, Result};

/// Parameters of a model with these dimensions.
pub fn params(d: Dims) -> u64 {
    let (v, e, h) = (d.vocab as u64, d.embed_dim as u64, d.hidden as u64);
    let layers: u64 = (0..d.layers as u64)
        .map(|k| 4 * h * (if k == 0 { e } else { h } + h + 2))
        .sum();
    v * e + layers + v * h + v
}

/// Bytes a CPU run of `cfg` needs at its peak: weights, optimizer state and gradients, the
/// buffers of one training and one evaluation batch shape, and a checkpoint being written (the
/// serialised weights and optimizer state, twice: the writer serialises once to checksum).
pub fn bytes_needed(d: Dims, cfg: &RunConfig, val_streams: usize) -> u64 {
    let p = params(d);
    let slots = match cfg.optimizer {
        OptimizerKind::Sgd => 0,
        OptimizerKind::Adam | OptimizerKind::Adamw => 2,
        _ => 1,
    };
    let threads = cfg.thread_count() as u64;
    let groups = threads.min(cfg.batch_size as u64).max(1);
    let weights = p * (1 + slots + groups);
    let checkpoint = 2 * p * (1 + slots);
    let floats = weights
        + checkpoint
        + workspace(d, cfg.batch_size, cfg.seq_len)
        + workspace(d, val_streams, cfg.seq_len);
    floats * 4
}

/// Floats of the CPU model's buffers for one batch shape.
fn workspace(d: Dims, batch: usize, seq: usize) -> u64 {
    let (v, e, l) = (d.vocab as u64, d.embed_dim as u64, d.layers as u64);
    let hp = super::cpu::padded(d.hidden) as u64;
    let n = (batch * seq) as u64;
    let b = batch as u64;
    // Per layer: projection/gradient 4Hp, outputs (T+1)·Hp, cell state and gates 5Hp, dropout
    // output Hp, W_hh packed twice; per step: logits, the gradient reaching a layer; layer 0's
    // table over the window's distinct ids (at most min(V, B·T)) with their embedding rows and
    // its gradient.
    let per_layer = n * 4 * hp + (n + b) * hp + n * 5 * hp + n * hp + 8 * hp * hp;
    l * per_layer + n * (v + hp) + v.min(n) * (8 * hp + e)
}

/// Memory the system can give this process now (`MemAvailable`), if known.
pub fn available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Refuses a run that needs more memory than the machine has available, naming the sizes.
pub fn check(d: Dims, cfg: &RunConfig, val_streams: usize) -> Result<()> {
    let need = bytes_needed(d, cfg, val_streams);
    let Some(have) = available() else {
        return Ok(());
    };
    if need <= have {
        return Ok(());
    }
    Err(Error::Resources(format!(
        "the run needs about {} ({} parameters at hidden {}, embed_dim {}, {} layers, a \
         vocabulary of {}, batch {} × seq {}), but only {} of memory is available; use a \
         smaller model or batch",
        gib(need),
        params(d),
        d.hidden,
        d.embed_dim,
        d.layers,
        d.vocab,
        cfg.batch_size,
        cfg.seq_len,
        gib(have)
    )))
}

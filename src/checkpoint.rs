//! Checkpoints: one safetensors file holding the weights, the optimizer state and the carried LSTM
//! state, with the training cursor (step, epoch, window, RNG) as JSON in the header's metadata.
//! One file means one atomic rename, so `last` and `best` are always whole; a sha256 of the
//! tensor bytes in the metadata catches a file damaged after it was written.

use crate::error::{Error, IoContext, Result};
use crate::run_dir::{Checkpoint, RunDir};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Where training stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// Optimizer steps done.
    pub step: u64,
    /// Completed passes over the train split.
    pub epoch: u64,
    /// Next window of the train split.
    pub window: usize,
    /// The training RNG (dropout masks).
    pub rng: u64,
    /// Training chars consumed.
    pub tokens: u64,
    /// Training seconds so far (across resumes).
    #[serde(with = "crate::json_float")]
    pub elapsed_secs: f64,
    #[serde(default, with = "crate::json_float::option")]
    pub best_val_loss: Option<f64>,
    pub best_step: Option<u64>,
}

const META_KEY: &str = "charlab";
const SUM_KEY: &str = "charlab.sha256";

fn data_region(bytes: &[u8]) -> Option<&[u8]> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    bytes.get(8usize.checked_add(n)?..)
}

/// Writes a checkpoint atomically.
pub fn save(path: &Path, tensors: &HashMap<String, Tensor>, cursor: &Cursor) -> Result<()> {
    let cpu: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    let meta = serde_json::to_string(cursor).unwrap_or_default();
    let bad = |e: safetensors::SafeTensorError| Error::Run {
        path: path.to_path_buf(),
        message: format!("serializing checkpoint: {e}"),
    };
    // Serialize once to learn the data region, then again with its checksum in the header.
    let mut info = HashMap::from([(META_KEY.to_string(), meta)]);
    let first = safetensors::serialize(&cpu, Some(info.clone())).map_err(bad)?;
    let sum = crate::digest::sha256_hex(data_region(&first).unwrap_or_default());
    info.insert(SUM_KEY.into(), sum);
    let bytes = safetensors::serialize(&cpu, Some(info)).map_err(bad)?;
    crate::atomic::write(path, &bytes)
}

/// Writes `last`, keeping the one it replaces as `previous`: if `last` is later found damaged
/// (a disk error, a truncated copy), a resume still has the checkpoint before it.
pub fn save_last(run: &RunDir, tensors: &HashMap<String, Tensor>, cursor: &Cursor) -> Result<()> {
    let last = run.checkpoint(Checkpoint::Last);
    if last.exists() {
        let prev = run.checkpoint(Checkpoint::Previous);
        std::fs::rename(&last, &prev).at(&prev)?;
    }
    save(&last, tensors, cursor)
}

/// The newest intact checkpoint of a run, `last` or else `previous`, with the problems found on
/// the way (one line each, for the run's log). `Ok(None)` when the run has no checkpoint at all;
/// an error when it has some but none is intact (its work is not silently thrown away).
pub fn load_latest(run: &RunDir, device: &Device) -> Result<(Option<Loaded>, Vec<String>)> {
    let mut problems = Vec::new();
    let mut found = false;
    for which in [Checkpoint::Last, Checkpoint::Previous] {
        let p = run.checkpoint(which);
        if !p.exists() {
            continue;
        }
        found = true;
        match load(&p, device) {
            Ok(loaded) => return Ok((Some(loaded), problems)),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if found {
        return Err(Error::Run {
            path: run.checkpoints(),
            message: format!(
                "no intact checkpoint to resume from ({}); remove the run directory to start over",
                problems.join("; ")
            ),
        });
    }
    Ok((None, problems))
}

/// A checkpoint's tensors by name, and where the run was.
pub type Loaded = (HashMap<String, Tensor>, Cursor);

/// The cursor in a checkpoint's header and the checksum its tensors should have.
fn header(bytes: &[u8], path: &Path) -> Result<(Cursor, String)> {
    let bad = |message: String| Error::Run {
        path: path.to_path_buf(),
        message,
    };
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(format!("not a checkpoint ({e})")))?;
    let info = meta.metadata().clone().unwrap_or_default();
    let cursor: Cursor = info
        .get(META_KEY)
        .and_then(|m| serde_json::from_str(m).ok())
        .ok_or_else(|| bad("checkpoint has no charlab metadata".into()))?;
    Ok((cursor, info.get(SUM_KEY).cloned().unwrap_or_default()))
}

/// Where a checkpoint's run was, from its header alone (no tensors decoded, no checksum: for
/// a look at the step; [`load`] verifies).
pub fn cursor(path: &Path) -> Result<Cursor> {
    let bytes = std::fs::read(path).at(path)?;
    Ok(header(&bytes, path)?.0)
}

/// Reads a checkpoint, verifying its checksum.
pub fn load(path: &Path, device: &Device) -> Result<Loaded> {
    let bytes = std::fs::read(path).at(path)?;
    let (cursor, expected) = header(&bytes, path)?;
    let got = crate::digest::sha256_hex(data_region(&bytes).unwrap_or_default());
    if got != expected {
        return Err(Error::Run {
            path: path.to_path_buf(),
            message: "checkpoint is damaged (checksum mismatch)".into(),
        });
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)?;
    Ok((tensors, cursor))
}

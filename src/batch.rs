//! Stage 2: ids → (input, target) windows, as char-rnn does it. The split is cut into
//! `batch_size` contiguous streams; step k reads window k of every stream, so the LSTM state left
//! by window k is the right initial state for window k+1 (truncated BPTT). Targets are the inputs
//! shifted by one char.

use crate::error::{Error, Result};

/// One split (train or val) laid out as parallel streams.
#[derive(Debug, Clone)]
pub struct Split {
    streams: usize,
    stream_len: usize,
    seq_len: usize,
    /// `[streams, stream_len]`, row-major.
    data: Vec<u32>,
}

/// One window: `x` and `y` are `[streams, seq_len]` row-major; `y[t] = x[t + 1]` in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub x: Vec<u32>,
    pub y: Vec<u32>,
    pub streams: usize,
    pub seq_len: usize,
}

impl Split {
    /// Lays `ids` out as `streams` streams (the tail that does not fill a stream is dropped).
    pub fn new(ids: &[u32], streams: usize, seq_len: usize, what: &str) -> Result<Self> {
        let need = streams * (seq_len + 1);
        if streams == 0 || ids.len() < need {
            return Err(Error::Corpus(format!(
                "the {what} split has {} chars, fewer than batch_size × (seq_len + 1) = {} × {} = {need}; \
                 use a larger corpus or smaller batch_size/seq_len",
                ids.len(),
                streams,
                seq_len + 1
            )));
        }
        let stream_len = ids.len() / streams;
        Ok(Split {
            streams,
            stream_len,
            seq_len,
            data: ids[..streams * stream_len].to_vec(),
        })
    }

    /// Parallel streams (the batch size).
    pub fn streams(&self) -> usize {
        self.streams
    }

    /// Windows in one pass over the split.
    pub fn windows(&self) -> usize {
        (self.stream_len - 1) / self.seq_len
    }

    /// Chars predicted in one pass (windows × streams × seq_len).
    pub fn chars_per_pass(&self) -> usize {
        self.windows() * self.streams * self.seq_len
    }

    /// Window `w` (0-based, `w < windows()`).
    pub fn window(&self, w: usize) -> Window {
        let t0 = w * self.seq_len;
        let mut x = Vec::with_capacity(self.streams * self.seq_len);
        let mut y = Vec::with_capacity(self.streams * self.seq_len);
        for s in 0..self.streams {
            let row = &self.data[s * self.stream_len..(s + 1) * self.stream_len];
            x.extend_from_slice(&row[t0..t0 + self.seq_len]);
            y.extend_from_slice(&row[t0 + 1..t0 + 1 + self.seq_len]);
        }
        Window {
            x,
            y,
            streams: self.streams,
            seq_len: self.seq_len,
        }
    }
}

/// Splits ids into train and val (val from the end, as char-rnn). Val uses up to `batch_size`
/// streams, fewer when the val split is short, so a small corpus still gets a validation score.
pub fn split(
    ids: &[u32],
    val_fraction: f64,
    batch_size: usize,
    seq_len: usize,
) -> Result<(Split, Split)> {
    let n_val = ((ids.len() as f64) * val_fraction).round() as usize;
    let n_train = ids.len().saturating_sub(n_val);
    let train = Split::new(&ids[..n_train], batch_size, seq_len, "train")?;
    let val_streams = (n_val / (seq_len + 1)).clamp(1, batch_size);
    let val = Split::new(&ids[n_train..], val_streams, seq_len, "validation")?;
    Ok((train, val))
}

//! charlab: hyperparameter sweeps of character-level LSTM language models, instrumented for
//! TensorBoard. The modules follow the pipeline, each one stage:
//!
//! `corpus` (raw text → clean text) → `vocab` (chars ↔ ids) → `batch` (ids → BPTT windows) →
//! `model` (embedding, LSTM, decoder) → `train` (the run: optimizer, eval, checkpoints, events) →
//! `sample` (text from a run). `sweep` turns a TOML grid into many runs (each in a child process)
//! and `compare` tabulates them. `summary` writes TensorBoard event files; `config` is the one
//! schema of a run's hyperparameters.

pub mod atomic;
pub mod batch;
pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod corpus;
pub mod device;
pub mod digest;
pub mod error;
pub mod host;
pub mod importance;
pub mod json_float;
pub mod model;
pub mod optim;
pub mod refine;
pub mod report;
pub mod rng;
pub mod run_dir;
pub mod runs;
pub mod sample;
pub mod signals;
pub mod summary;
pub mod sweep;
pub mod table;
pub mod train;
pub mod vocab;

pub use error::{Error, Result};

/// Keeps large tensor buffers on the heap instead of fresh mmaps. glibc hands every allocation
/// over 32 MiB (a vocab-sized logits tensor) to mmap and unmaps it on free, so each step paid
/// for zeroing new pages in the kernel: a third of the CPU time was system time.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

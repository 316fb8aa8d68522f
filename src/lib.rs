//! charlab: hyperparameter sweeps of character-level LSTM language models, instrumented for
//! TensorBoard. The modules are grouped by the pipeline's stages, in its order; a module imports
//! only from its own stage and the ones above it (`scripts/house.py` checks).

// Foundations: errors, atomic files, hashing, randomness, Pareto fronts, the machine, signals,
// the TensorBoard writer (which knows nothing of models) and plain-text tables.
pub mod atomic;
pub mod device;
pub mod digest;
pub mod error;
pub mod host;
pub mod json_float;
pub mod pareto;
pub mod rng;
pub mod signals;
pub mod summary;
pub mod table;

// The one schema of a run's hyperparameters.
pub mod config;

// Data: raw text → clean text → chars ↔ ids → truncated-BPTT windows.
pub mod batch;
pub mod corpus;
pub mod vocab;

// Model: embedding, stacked LSTM, decoder (CPU kernels and candle's reference); the optimizer.
pub mod model;
pub mod optim;

// A run: its directory and record, its checkpoints, its TensorBoard tags, training end to end,
// sampling from it.
pub mod checkpoint;
pub mod run_dir;
pub mod sample;
pub mod tags;
pub mod train;

// Sweeps: a sweep file → many runs (plan, manifest, search, launchers, pruning).
pub mod sweep;

// Results: the runs read once (runs), then what is made of them.
pub mod compare;
pub mod importance;
pub mod refine;
pub mod report;
pub mod runs;

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

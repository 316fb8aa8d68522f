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
pub mod error;
pub mod model;
pub mod optim;
pub mod rng;
pub mod sample;
pub mod signals;
pub mod summary;
pub mod sweep;
pub mod train;
pub mod vocab;

pub use error::{Error, Result};

//! Stage 5: text from a trained run. A run directory is self-contained (config.toml, vocab.json,
//! checkpoints), so sampling needs neither the corpus nor the sweep that made it. Text is
//! written as it is generated, like char-rnn's sampler, and a reader that goes away (`| head`)
//! ends it quietly.

use crate::checkpoint;
use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::model::precision::Products;
use crate::model::{Backend, CharRnn, Dims};
use crate::rng::Rng;
use crate::run_dir::{Checkpoint, RunDir};
use crate::vocab::Vocab;
use candle_core::Device;
use std::io::Write;
use std::path::Path;

/// How the next char is picked from the model's distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Divides the logits: < 1 sharper and more conservative, > 1 more random.
    pub temperature: f64,
    /// Sample only among the K most likely chars.
    pub top_k: Option<usize>,
    /// Always take the most likely char (deterministic, tends to loop).
    pub argmax: bool,
}

/// Options of `charlab sample`.
#[derive(Debug, Clone)]
pub struct SampleOptions {
    pub checkpoint: Checkpoint,
    pub prime: String,
    pub length: usize,
    pub sampling: Sampling,
    pub seed: u64,
}

/// Feeds `prime` through the model, then draws up to `length` chars, handing each to `emit`
/// as it is drawn; `emit` returns false to stop early.
pub fn generate_with(
    model: &CharRnn,
    backend: &mut Backend,
    prime: &[u32],
    length: usize,
    how: &Sampling,
    rng: &mut Rng,
    emit: &mut dyn FnMut(u32) -> Result<bool>,
) -> Result<()> {
    if prime.is_empty() {
        return Err(Error::Sample("the prime text is empty".into()));
    }
    let mut state = model.zero_state(1);
    let mut input = prime.to_vec();
    for _ in 0..length {
        let logits = backend.next_logits(model, &input, &mut state)?;
        let next = pick(&logits, how, rng);
        if !emit(next)? {
            break;
        }
        input = vec![next];
    }
    Ok(())
}

/// [`generate_with`], collected: prime + drawn ids.
pub fn generate(
    model: &CharRnn,
    backend: &mut Backend,
    prime: &[u32],
    length: usize,
    how: &Sampling,
    rng: &mut Rng,
) -> Result<Vec<u32>> {
    let mut out = prime.to_vec();
    generate_with(model, backend, prime, length, how, rng, &mut |id| {
        out.push(id);
        Ok(true)
    })?;
    Ok(out)
}

/// Picks an id from logits.
fn pick(logits: &[f32], how: &Sampling, rng: &mut Rng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                if v > bv {
                    (i, v)
                } else {
                    (bi, bv)
                }
            })
            .0 as u32
    };
    if how.argmax {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    if let Some(k) = how.top_k.filter(|&k| k > 0 && k < logits.len()) {
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        order.truncate(k);
    }
    let max = order
        .iter()
        .map(|&i| logits[i] as f64)
        .fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] as f64 - max) / how.temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    if !(total.is_finite() && total > 0.0) {
        return argmax();
    }
    let mut r = rng.uniform_f64() * total;
    for (&i, &w) in order.iter().zip(&weights) {
        r -= w;
        if r < 0.0 {
            return i as u32;
        }
    }
    order[order.len() - 1] as u32
}

/// Loads a run directory's model and vocabulary from checkpoint `which`.
pub fn load_run(
    run: &Path,
    which: Checkpoint,
    device: &Device,
) -> Result<(CharRnn, Vocab, RunConfig)> {
    let run = RunDir::existing(run)?;
    let cfg = run.load_config()?;
    let vocab = run.load_vocab()?;
    let path = run.checkpoint(which);
    if !path.exists() {
        return Err(Error::Run {
            path,
            message: "no such checkpoint (has the run reached its first evaluation?)".into(),
        });
    }
    let (tensors, _) = checkpoint::load(&path, device)?;
    let dims = Dims {
        vocab: vocab.len(),
        embed_dim: cfg.embed_dim,
        hidden: cfg.hidden,
        layers: cfg.layers,
    };
    let model = CharRnn::new(dims, cfg.seed, device)?;
    model.load(&tensors)?;
    Ok((model, vocab, cfg))
}

/// `charlab sample`: writes the prime and then each generated char to `out` as it is drawn. A
/// closed pipe (the reader stopped: `| head`) ends it without an error.
pub fn sample_to(run: &Path, opts: &SampleOptions, out: &mut dyn Write) -> Result<()> {
    if !(opts.sampling.temperature > 0.0 && opts.sampling.temperature.is_finite()) {
        return Err(Error::invalid("--temperature", "must be > 0"));
    }
    let (model, vocab, _) = load_run(run, opts.checkpoint, &Device::Cpu)?;
    let prime = vocab.encode(&opts.prime).map_err(|e| {
        Error::Sample(format!(
            "--prime: {}",
            e.to_string().trim_start_matches("sample: ")
        ))
    })?;
    let mut rng = Rng::new(opts.seed, 4);
    // fp32 products: one stream is cheap, and a sample should show the weights at their best.
    let mut backend = Backend::for_model(&model, Products::Fp32)?;
    // Ok(false) once the reader is gone; other write errors are errors.
    let mut write = |text: &str, flush: bool| -> Result<bool> {
        let r = out
            .write_all(text.as_bytes())
            .and_then(|_| if flush { out.flush() } else { Ok(()) });
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(Error::io("output", e)),
        }
    };
    if !write(&opts.prime, true)? {
        return Ok(());
    }
    let mut since_flush = 0;
    let mut emit = |id: u32| {
        let text = vocab.decode(&[id]);
        since_flush += 1;
        let flush = text.contains('\n') || since_flush >= 16;
        if flush {
            since_flush = 0;
        }
        write(&text, flush)
    };
    generate_with(
        &model,
        &mut backend,
        &prime,
        opts.length,
        &opts.sampling,
        &mut rng,
        &mut emit,
    )?;
    write("", true).map(|_| ())
}

/// `charlab sample` into a string.
pub fn sample(run: &Path, opts: &SampleOptions) -> Result<String> {
    let mut buf = Vec::new();
    sample_to(run, opts, &mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

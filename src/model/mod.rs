//! Stage 3: the char-rnn model. Embedding → `layers` × LSTM (dropout between layers and before
//! the decoder) → linear decoder → softmax cross-entropy. Parameters are named by the scope they
//! show under in TensorBoard (`LSTM/layer_0/weight_hh`), and the same names key the checkpoint.
//!
//! The parameters are PyTorch's, one for one (`nn.Embedding` → `nn.LSTM` → `nn.Linear`; see
//! [`torch_name`]), initialised from the same distributions, so a run loads into PyTorch and
//! learns step for step as `nn.LSTM` does. That includes the LSTM's two bias vectors: they only
//! ever enter as their sum, but under Adam each moves about `lr` per step, so the pair learns
//! faster than one vector would, and their U(±1/√H) draw lets early training leave the unigram
//! plateau that a zero bias (forget gate 1) sits on for hundreds of steps.

pub mod amx;
mod backend;
pub mod bf16;
mod check;
pub mod cpu;
pub mod fused;
pub mod gemm;
mod graph;
mod head;
mod kernels;
pub mod memory;
pub mod precision;
pub mod recurrence;
pub mod reference;
pub mod simd;

pub use backend::Backend;
pub use check::{
    check_backend, check_device, rel_err, tolerance, CheckRow, CheckSection, BF16_TOLERANCE,
    TOLERANCE,
};

use crate::rng::Rng;
use candle_core::{DType, Device, Result, Storage, Tensor, Var};
use cpu::Weights;
use std::collections::HashMap;

/// The model's dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub vocab: usize,
    pub embed_dim: usize,
    pub hidden: usize,
    pub layers: usize,
}

impl Dims {
    /// The model a run config asks for, over a vocabulary of `vocab` chars.
    pub fn of(cfg: &crate::config::RunConfig, vocab: usize) -> Dims {
        Dims {
            vocab,
            embed_dim: cfg.embed_dim,
            hidden: cfg.hidden,
            layers: cfg.layers,
        }
    }

    /// Multiply-adds of one character's forward pass (the LSTM's gates and the decoder): the
    /// cost model of pre-flight and of a search's cost-aware proposals. Backward is about twice
    /// this, so it leaves ratios between models unchanged.
    pub fn macs_per_char(&self) -> f64 {
        let (e, h, v) = (self.embed_dim as f64, self.hidden as f64, self.vocab as f64);
        4.0 * h * (e + h) + (self.layers as f64 - 1.0) * 8.0 * h * h + h * v
    }

    /// `vocab,embed,hidden,layers`, four positive integers (`check-device --dims`).
    pub fn parse(text: &str) -> crate::Result<Dims> {
        let d: Vec<usize> = text
            .split(',')
            .map(|x| x.trim().parse::<usize>())
            .collect::<std::result::Result<_, _>>()
            .ok()
            .filter(|d: &Vec<usize>| d.len() == 4 && d.iter().all(|&x| x > 0))
            .ok_or_else(|| {
                crate::Error::invalid(
                    "--dims",
                    format!("`{text}`: expected four positive integers vocab,embed,hidden,layers"),
                )
            })?;
        Ok(Dims {
            vocab: d[0],
            embed_dim: d[1],
            hidden: d[2],
            layers: d[3],
        })
    }
}

/// The recurrent state carried from one window to the next: per layer, `h` and `c` as `[B, H]`
/// row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub batch: usize,
    pub hidden: usize,
    pub h: Vec<Vec<f32>>,
    pub c: Vec<Vec<f32>>,
}

impl State {
    /// The zero state of `layers` layers for `batch` streams.
    pub fn zeros(layers: usize, batch: usize, hidden: usize) -> Self {
        State {
            batch,
            hidden,
            h: vec![vec![0.0; batch * hidden]; layers],
            c: vec![vec![0.0; batch * hidden]; layers],
        }
    }

    pub fn layers(&self) -> usize {
        self.h.len()
    }

    /// The state as named tensors, for a checkpoint (`state/layer_K/h`, `…/c`).
    pub fn to_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (k, (h, c)) in self.h.iter().zip(&self.c).enumerate() {
            let t = |v: &[f32]| Tensor::from_slice(v, (self.batch, self.hidden), &Device::Cpu);
            out.insert(format!("state/layer_{k}/h"), t(h)?);
            out.insert(format!("state/layer_{k}/c"), t(c)?);
        }
        Ok(out)
    }

    /// The state saved by [`State::to_tensors`]; an error names what is missing or misshapen.
    pub fn from_tensors(
        tensors: &HashMap<String, Tensor>,
        layers: usize,
        batch: usize,
        hidden: usize,
    ) -> std::result::Result<State, String> {
        let mut s = State::zeros(layers, batch, hidden);
        for k in 0..layers {
            for (name, dst) in [("h", &mut s.h[k]), ("c", &mut s.c[k])] {
                let key = format!("state/layer_{k}/{name}");
                let v = tensors
                    .get(&key)
                    .and_then(|t| t.flatten_all().ok()?.to_vec1::<f32>().ok())
                    .ok_or_else(|| format!("the checkpoint has no {key}"))?;
                if v.len() != batch * hidden {
                    return Err(format!("the checkpoint's {key} is not [{batch}, {hidden}]"));
                }
                *dst = v;
            }
        }
        Ok(s)
    }
}

/// A char-rnn.
pub struct CharRnn {
    pub dims: Dims,
    params: Vec<(String, Var)>,
    device: Device,
}

/// Parameters per LSTM layer: `weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`.
pub const LAYER_PARAMS: usize = 4;

/// Where layer `k`'s first parameter sits in [`CharRnn::params`] (after the embedding).
pub(crate) fn layer_slot(k: usize) -> usize {
    1 + LAYER_PARAMS * k
}

/// Layer `k`'s parameter names, in [`CharRnn::params`] order.
pub(crate) fn layer_names(k: usize) -> [String; LAYER_PARAMS] {
    ["weight_ih", "weight_hh", "bias_ih", "bias_hh"].map(|p| format!("LSTM/layer_{k}/{p}"))
}

/// The name PyTorch gives a parameter of `nn.Embedding` (`embed`) → `nn.LSTM` (`lstm`) →
/// `nn.Linear` (`head`): `LSTM/layer_1/bias_hh` ↔ `lstm.bias_hh_l1`, `Logits/weight` ↔
/// `head.weight`. `None` for a name that is not a model parameter.
pub fn torch_name(name: &str) -> Option<String> {
    match name {
        "Embedding/weight" => return Some("embed.weight".into()),
        "Logits/weight" => return Some("head.weight".into()),
        "Logits/bias" => return Some("head.bias".into()),
        _ => {}
    }
    let rest = name.strip_prefix("LSTM/layer_")?;
    let (k, param) = rest.split_once('/')?;
    let k: usize = k.parse().ok()?;
    ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
        .contains(&param)
        .then(|| format!("lstm.{param}_l{k}"))
}

/// Whether `tensors` come from a checkpoint written before the LSTM had PyTorch's two biases
/// (`LSTM/layer_K/{w_ih, w_hh, bias}`): its weights load (for sampling), its optimizer state
/// does not line up with today's parameters, so it cannot be resumed.
pub fn is_legacy_checkpoint(tensors: &HashMap<String, Tensor>) -> bool {
    tensors.contains_key("LSTM/layer_0/bias")
}

/// A parameter's tensor in a checkpoint, reading the one-bias layout as its two-bias equivalent
/// (the old bias as `bias_ih`, zeros as `bias_hh`: the same sum, so the same model).
fn checkpoint_tensor(tensors: &HashMap<String, Tensor>, name: &str) -> Result<Tensor> {
    if let Some(t) = tensors.get(name) {
        return Ok(t.clone());
    }
    let legacy = |old: &str| {
        let base = name.rsplit_once('/').map_or("", |(b, _)| b);
        tensors.get(&format!("{base}/{old}")).cloned()
    };
    let found = match name.rsplit('/').next() {
        Some("weight_ih") => legacy("w_ih"),
        Some("weight_hh") => legacy("w_hh"),
        Some("bias_ih") => legacy("bias"),
        Some("bias_hh") => legacy("bias").map(|b| b.zeros_like()).transpose()?,
        _ => None,
    };
    found.ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks {name}")))
}

impl CharRnn {
    /// A freshly initialised model, drawn as PyTorch draws it: embedding ~ N(0, 1), every LSTM
    /// tensor (both biases included) and the decoder ~ U(±1/√H).
    pub fn new(dims: Dims, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = Rng::new(seed, 1);
        let mut params = Vec::new();
        let mut add = |name: String, shape: &[usize], init: &mut dyn FnMut() -> f32| {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|_| init()).collect();
            let t = Tensor::from_vec(data, shape, device)?;
            params.push((name, Var::from_tensor(&t)?));
            Result::Ok(())
        };
        let (v, e, h) = (dims.vocab, dims.embed_dim, dims.hidden);
        add("Embedding/weight".into(), &[v, e], &mut || rng.normal())?;
        let k = 1.0 / (h as f32).sqrt();
        for layer in 0..dims.layers {
            let input = if layer == 0 { e } else { h };
            let [w_ih, w_hh, b_ih, b_hh] = layer_names(layer);
            let mut u = || (rng.uniform() * 2.0 - 1.0) * k;
            add(w_ih, &[4 * h, input], &mut u)?;
            add(w_hh, &[4 * h, h], &mut u)?;
            add(b_ih, &[4 * h], &mut u)?;
            add(b_hh, &[4 * h], &mut u)?;
        }
        add("Logits/weight".into(), &[v, h], &mut || {
            (rng.uniform() * 2.0 - 1.0) * k
        })?;
        add("Logits/bias".into(), &[v], &mut || {
            (rng.uniform() * 2.0 - 1.0) * k
        })?;
        Ok(CharRnn {
            dims,
            params,
            device: device.clone(),
        })
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Parameters in a fixed order, with their scoped names.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    pub(crate) fn get(&self, name: &str) -> Result<&Tensor> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg(format!("no parameter {name}")))
    }

    /// Total number of scalars in the parameters.
    pub fn num_params(&self) -> usize {
        self.params.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Parameters by name (for checkpoints).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Overwrites every parameter from `tensors` (a checkpoint, either layout: see
    /// [`is_legacy_checkpoint`]); shapes must match.
    pub fn load(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for (name, var) in &self.params {
            let t = checkpoint_tensor(tensors, name)?;
            if t.dims() != var.dims() {
                candle_core::bail!(
                    "checkpoint's {name} has shape {:?}, the model {:?}",
                    t.dims(),
                    var.dims()
                );
            }
            var.set(&t.to_device(&self.device)?.to_dtype(DType::F32)?)?;
        }
        Ok(())
    }

    /// The zero state for `batch` streams.
    pub fn zero_state(&self, batch: usize) -> State {
        State::zeros(self.dims.layers, batch, self.dims.hidden)
    }

    /// Calls `f` with the parameters as slices (CPU only), holding their storage read-locked.
    pub fn with_weights<R>(&self, f: impl FnOnce(&Weights) -> R) -> Result<R> {
        let guards: Vec<_> = self
            .params
            .iter()
            .map(|(_, v)| v.as_tensor().storage_and_layout())
            .collect();
        let mut slices = Vec::with_capacity(guards.len());
        for ((name, _), (storage, layout)) in self.params.iter().zip(&guards) {
            let Storage::Cpu(cpu) = &**storage else {
                candle_core::bail!("{name} is not on the CPU");
            };
            let Some((a, b)) = layout.contiguous_offsets() else {
                candle_core::bail!("{name} is not contiguous");
            };
            slices.push(&cpu.as_slice::<f32>()?[a..b]);
        }
        Ok(f(&Weights::from_slices(&slices)))
    }
}

/// Deterministic test values in `[-scale, scale)`, of mixed sign and magnitude (xorshift), for
/// the kernels' unit tests.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * scale
        })
        .collect()
}

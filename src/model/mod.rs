//! Stage 3: the char-rnn model. Embedding → `layers` × LSTM (dropout between layers and before
//! the decoder) → linear decoder → softmax cross-entropy. Parameters are named by the scope they
//! show under in TensorBoard (`LSTM/layer_0/w_hh`), and the same names key the checkpoint.

pub mod head;
mod kernels;
pub mod lstm;

use crate::rng::Rng;
use crate::summary::GraphNode;
use candle_core::{DType, Device, Result, Tensor, Var};
use std::collections::HashMap;

/// The model's dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub vocab: usize,
    pub embed_dim: usize,
    pub hidden: usize,
    pub layers: usize,
}

/// Which LSTM implementation to run (see [`lstm`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LstmImpl {
    Fused,
    Reference,
}

/// The recurrent state carried from one window to the next: `(h, c)` per layer, each `[B, H]`.
pub type State = Vec<(Tensor, Tensor)>;

/// The outputs of one forward pass.
pub struct Forward {
    /// The last layer's output after dropout, `[B·T, H]`: the decoder's input.
    pub hidden: Tensor,
    /// The state after the last step (detached).
    pub state: State,
}

/// A char-rnn.
pub struct CharRnn {
    pub dims: Dims,
    pub lstm: LstmImpl,
    params: Vec<(String, Var)>,
    device: Device,
}

fn layer_names(k: usize) -> [String; 3] {
    [
        format!("LSTM/layer_{k}/w_ih"),
        format!("LSTM/layer_{k}/w_hh"),
        format!("LSTM/layer_{k}/bias"),
    ]
}

impl CharRnn {
    /// A freshly initialised model: embedding ~ N(0, 1), LSTM and decoder ~ U(±1/√fan_in) as in
    /// PyTorch (so a PyTorch reference starts from the same distribution), forget-gate bias 1 so
    /// early gradients flow through time.
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
            let [w_ih, w_hh, bias] = layer_names(layer);
            let mut u = || (rng.uniform() * 2.0 - 1.0) * k;
            add(w_ih, &[4 * h, input], &mut u)?;
            add(w_hh, &[4 * h, h], &mut u)?;
            let mut j = 0usize;
            add(bias, &[4 * h], &mut || {
                j += 1;
                if (h + 1..=2 * h).contains(&j) {
                    1.0
                } else {
                    0.0
                }
            })?;
        }
        add("Logits/weight".into(), &[v, h], &mut || {
            (rng.uniform() * 2.0 - 1.0) * k
        })?;
        add("Logits/bias".into(), &[v], &mut || {
            (rng.uniform() * 2.0 - 1.0) * k
        })?;
        Ok(CharRnn {
            dims,
            lstm: LstmImpl::Fused,
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

    fn get(&self, name: &str) -> Result<&Tensor> {
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

    /// Overwrites every parameter from `tensors` (a checkpoint); shapes must match.
    pub fn load(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for (name, var) in &self.params {
            let t = tensors
                .get(name)
                .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks {name}")))?;
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

    /// A zero state for `batch` streams.
    pub fn zero_state(&self, batch: usize) -> Result<State> {
        let z = Tensor::zeros((batch, self.dims.hidden), DType::F32, &self.device)?;
        Ok((0..self.dims.layers)
            .map(|_| (z.clone(), z.clone()))
            .collect())
    }

    /// Runs the model on `x` (`[B, T]` u32 ids) from `state`. `dropout` is `(p, rng)` when
    /// training; masks come from the run's RNG so a seeded run is reproducible.
    pub fn forward(
        &self,
        x: &Tensor,
        state: &State,
        dropout: Option<(f64, &mut Rng)>,
    ) -> Result<Forward> {
        let (b, t) = x.dims2()?;
        let (e, h) = (self.dims.embed_dim, self.dims.hidden);
        if state.len() != self.dims.layers {
            candle_core::bail!(
                "state has {} layers, the model {}",
                state.len(),
                self.dims.layers
            );
        }
        let emb = self
            .get("Embedding/weight")?
            .index_select(&x.flatten_all()?, 0)?;
        let mut input = emb; // [B·T, in]
        let mut in_dim = e;
        let mut new_state = Vec::with_capacity(self.dims.layers);
        let mut dropout = dropout.filter(|(p, _)| *p > 0.0);
        for (layer, (h0, c0)) in state.iter().enumerate().take(self.dims.layers) {
            let [w_ih, w_hh, bias] = layer_names(layer);
            let xproj = input
                .matmul(&self.get(&w_ih)?.t()?)?
                .reshape((b, t, 4 * h))?;
            let (w_hh, bias) = (self.get(&w_hh)?, self.get(&bias)?);
            let out = match self.lstm {
                LstmImpl::Fused => lstm::fused(&xproj, w_hh, bias, h0, c0)?,
                LstmImpl::Reference => lstm::reference(&xproj, w_hh, bias, h0, c0)?,
            };
            new_state.push((out.h_last, out.c_last));
            input = out.hs.reshape((b * t, h))?;
            in_dim = h;
            if let Some((p, rng)) = dropout.as_mut() {
                input = apply_dropout(&input, *p, rng)?;
            }
        }
        debug_assert_eq!(in_dim, h);
        Ok(Forward {
            hidden: input,
            state: new_state,
        })
    }

    /// Decoder logits `[N, V]` of `hidden` `[N, H]` (for sampling).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        hidden
            .matmul(&self.get("Logits/weight")?.t()?)?
            .broadcast_add(self.get("Logits/bias")?)
    }

    /// Mean cross-entropy (with gradient) and accuracy of the decoder on `hidden` against
    /// `targets` `[N]` u32: the fused head, or plain candle ops for the reference model.
    pub fn loss(&self, hidden: &Tensor, targets: &Tensor) -> Result<(Tensor, f32)> {
        let (w, b) = (self.get("Logits/weight")?, self.get("Logits/bias")?);
        match self.lstm {
            LstmImpl::Fused => head::fused(hidden, w, b, targets),
            LstmImpl::Reference => head::reference(hidden, w, b, targets),
        }
    }

    /// The model as graph nodes for TensorBoard, with the shapes of a `[batch, seq]` input.
    pub fn graph(&self, batch: usize, seq: usize) -> Vec<GraphNode> {
        let (v, e, h) = (
            self.dims.vocab as i64,
            self.dims.embed_dim as i64,
            self.dims.hidden as i64,
        );
        let (b, t) = (batch as i64, seq as i64);
        let mut nodes = vec![
            GraphNode::new("Inputs/chars", "Placeholder", &[], &[b, t]),
            GraphNode::new("Inputs/targets", "Placeholder", &[], &[b, t]),
            GraphNode::new("Embedding/weight", "VariableV2", &[], &[v, e]),
            GraphNode::new(
                "Embedding/lookup",
                "GatherV2",
                &["Embedding/weight", "Inputs/chars"],
                &[b, t, e],
            ),
        ];
        let mut prev = "Embedding/lookup".to_string();
        for k in 0..self.dims.layers {
            let in_dim = if k == 0 { e } else { h };
            let s = format!("LSTM/layer_{k}");
            nodes.push(GraphNode::new(
                &format!("{s}/w_ih"),
                "VariableV2",
                &[],
                &[4 * h, in_dim],
            ));
            nodes.push(GraphNode::new(
                &format!("{s}/w_hh"),
                "VariableV2",
                &[],
                &[4 * h, h],
            ));
            nodes.push(GraphNode::new(
                &format!("{s}/bias"),
                "VariableV2",
                &[],
                &[4 * h],
            ));
            nodes.push(GraphNode::new(
                &format!("{s}/input_projection"),
                "MatMul",
                &[&prev, &format!("{s}/w_ih"), &format!("{s}/bias")],
                &[b, t, 4 * h],
            ));
            nodes.push(GraphNode::new(
                &format!("{s}/cell"),
                "LSTMBlock",
                &[&format!("{s}/input_projection"), &format!("{s}/w_hh")],
                &[b, t, h],
            ));
            let drop = format!("Dropout/layer_{k}");
            nodes.push(GraphNode::new(
                &drop,
                "Dropout",
                &[&format!("{s}/cell")],
                &[b, t, h],
            ));
            prev = drop;
        }
        nodes.extend([
            GraphNode::new("Logits/weight", "VariableV2", &[], &[v, h]),
            GraphNode::new("Logits/bias", "VariableV2", &[], &[v]),
            GraphNode::new(
                "Logits/matmul",
                "MatMul",
                &[&prev, "Logits/weight", "Logits/bias"],
                &[b * t, v],
            ),
            GraphNode::new(
                "Loss/cross_entropy",
                "SoftmaxCrossEntropyWithLogits",
                &["Logits/matmul", "Inputs/targets"],
                &[],
            ),
            GraphNode::new(
                "Accuracy/argmax_equal",
                "Mean",
                &["Logits/matmul", "Inputs/targets"],
                &[],
            ),
            GraphNode::new("Train/gradients", "Gradients", &["Loss/cross_entropy"], &[]),
            GraphNode::new(
                "Train/clip_by_global_norm",
                "ClipByGlobalNorm",
                &["Train/gradients"],
                &[],
            ),
            GraphNode::new(
                "Train/optimizer",
                "ApplyOptimizer",
                &["Train/clip_by_global_norm"],
                &[],
            ),
        ]);
        nodes
    }
}

/// Inverted dropout with a mask drawn from `rng`.
fn apply_dropout(x: &Tensor, p: f64, rng: &mut Rng) -> Result<Tensor> {
    let scale = (1.0 / (1.0 - p)) as f32;
    let p = p as f32;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.uniform() < p { 0.0 } else { scale })
        .collect();
    x.mul(&Tensor::from_vec(mask, x.shape(), x.device())?)
}

/// One line of [`check_against_cpu`]: a quantity and its relative error.
#[derive(Debug, Clone)]
pub struct CheckRow {
    pub name: String,
    pub rel_err: f32,
}

/// Runs one training step's forward and backward (dropout off) on the CPU's fused path and on
/// `device` with `lstm` there, from the same weights and batch, and returns the relative error
/// of the loss and of every parameter gradient. With `device` = CPU and `lstm` = `Reference` this
/// is the fused-vs-step-by-step check; with a GPU it checks the GPU path against the CPU.
pub fn check_against_cpu(
    device: &Device,
    lstm: LstmImpl,
    dims: Dims,
    batch: usize,
    seq: usize,
    seed: u64,
) -> Result<Vec<CheckRow>> {
    let mut rng = Rng::new(seed, 7);
    let ids: Vec<u32> = (0..batch * seq)
        .map(|_| (rng.next_u64() % dims.vocab as u64) as u32)
        .collect();
    let tgt: Vec<u32> = (0..batch * seq)
        .map(|_| (rng.next_u64() % dims.vocab as u64) as u32)
        .collect();
    type Grads = Vec<(String, Vec<f32>)>;
    let run = |dev: &Device, imp: LstmImpl| -> Result<(f32, Grads)> {
        let mut model = CharRnn::new(dims, seed, dev)?;
        model.lstm = imp;
        let x = Tensor::from_vec(ids.clone(), (batch, seq), dev)?;
        let y = Tensor::from_vec(tgt.clone(), batch * seq, dev)?;
        // A non-zero carried state, as after a previous window.
        let state: State = model
            .zero_state(batch)?
            .into_iter()
            .map(|(h, c)| Ok(((h + 0.25)?, (c - 0.5)?)))
            .collect::<Result<_>>()?;
        let fwd = model.forward(&x, &state, None)?;
        let (loss, _) = model.loss(&fwd.hidden, &y)?;
        let grads = loss.backward()?;
        let mut g = Vec::new();
        for (name, var) in model.params() {
            let t = grads
                .get(var.as_tensor())
                .ok_or_else(|| candle_core::Error::Msg(format!("no gradient for {name}")))?;
            g.push((name.clone(), t.flatten_all()?.to_vec1::<f32>()?));
        }
        Ok((loss.to_scalar::<f32>()?, g))
    };
    let (cpu_loss, cpu_grads) = run(&Device::Cpu, LstmImpl::Fused)?;
    let (loss, grads) = run(device, lstm)?;
    let rel = |a: &[f32], b: &[f32]| {
        let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
        let den: f32 = b.iter().map(|y| y * y).sum();
        (num / den.max(1e-30)).sqrt()
    };
    let mut rows = vec![CheckRow {
        name: "loss".into(),
        rel_err: rel(&[loss], &[cpu_loss]),
    }];
    for ((name, a), (_, b)) in grads.iter().zip(&cpu_grads) {
        rows.push(CheckRow {
            name: format!("d {name}"),
            rel_err: rel(a, b),
        });
    }
    Ok(rows)
}

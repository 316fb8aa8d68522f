//! Where a model's windows run: the hand-written CPU path ([`super::cpu`]) on the CPU, the fused
//! path ([`super::fused`]: cuBLAS products and one kernel per step) on a CUDA device, or candle's
//! step-by-step ops and autograd ([`super::reference`]), the reference both are checked against
//! (and on CUDA the fallback: `CHARLAB_CUDA_KERNELS=step`). One interface for training,
//! evaluation and sampling, so the trainer does not care which.

use super::cpu::{CpuModel, Pass, Sums};
use super::fused::{host::HostOps, Fused};
use super::precision::Products;
use super::{reference, simd, CharRnn, State};
use crate::optim::{self, Optimizer};
use crate::rng::Rng;
use candle_core::{Result, Tensor};

/// Where a model's windows run: the hand-written CPU path, or candle's ops and autograd (any
/// device; the reference the CPU path is checked against).
pub enum Backend {
    Cpu(Box<CpuModel>),
    Candle { grads: Vec<Vec<f32>> },
    Fused(Box<Fused>),
}

/// Which path a CUDA device runs: `CHARLAB_CUDA_KERNELS=step` picks candle's step-by-step ops
/// (to compare against, or to get past a fault in the fused path); anything else, the fused one.
#[cfg(feature = "cuda")]
fn cuda_step_by_step() -> bool {
    std::env::var("CHARLAB_CUDA_KERNELS").is_ok_and(|v| v == "step")
}

/// Loss and accuracy sums of a window as a [`Sums`], from candle's mean loss and accuracy.
fn sums_of(loss: f32, acc: f32, count: usize) -> Sums {
    Sums {
        loss: loss as f64 * count as f64,
        hits: acc as f64 * count as f64,
        count,
    }
}

/// A window through candle's ops: the mean loss (with its graph) and the accuracy.
fn candle_loss(
    model: &CharRnn,
    (x, y, seq): (&[u32], &[u32], usize),
    state: &mut State,
    dropout: Option<(f64, &mut Rng)>,
) -> Result<(Tensor, f32)> {
    let dev = model.device();
    let xt = Tensor::from_slice(x, (state.batch, seq), dev)?;
    let yt = Tensor::from_slice(y, x.len(), dev)?;
    let hidden = reference::forward(model, &xt, state, dropout)?;
    reference::loss(model, &hidden, &yt)
}

impl Backend {
    /// The CPU path for a model on the CPU (the widest instruction set the CPU has, its large
    /// products as `products` says); on a CUDA device the fused path in fp32, or candle's
    /// step-by-step ops ([`cuda_step_by_step`]).
    pub fn for_model(model: &CharRnn, products: Products) -> crate::Result<Backend> {
        if model.device().is_cpu() {
            let cpu = CpuModel::new(model.dims, simd::Level::detect()).with_products(products);
            return Ok(Backend::Cpu(Box::new(cpu)));
        }
        #[cfg(feature = "cuda")]
        if model.device().is_cuda() && !cuda_step_by_step() {
            let ops = super::fused::cuda::CudaOps::new(model.device())?;
            return Ok(Backend::Fused(Box::new(Fused::new(
                Box::new(ops),
                model.dims,
            ))));
        }
        Ok(Backend::Candle { grads: Vec::new() })
    }

    /// The fused path over [`HostOps`]: each CUDA kernel's CPU mirror, for the equivalence tests
    /// of the fused path's structure on a machine without a GPU (slow; nothing trains on it).
    pub fn fused_host(dims: super::Dims) -> Backend {
        Backend::Fused(Box::new(Fused::new(Box::<HostOps>::default(), dims)))
    }

    /// A short name of the path, for check-device and the run's first lines.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Cpu(_) => "cpu kernels",
            Backend::Candle { .. } => "step-by-step",
            Backend::Fused(_) => "fused",
        }
    }

    /// One training window: loss and accuracy sums; the gradients are then in [`Backend::grads`].
    /// `x`, `y` are `[state.batch, seq]`; `state` becomes the state after the window.
    pub fn train(
        &mut self,
        model: &CharRnn,
        (x, y, seq): (&[u32], &[u32], usize),
        state: &mut State,
        dropout: f64,
        rng: &mut Rng,
    ) -> crate::Result<Sums> {
        match self {
            Backend::Cpu(cpu) => {
                let pass = Pass::Train { dropout, rng };
                model.with_weights(|w| cpu.run(w, x, y, seq, state, pass))?
            }
            Backend::Candle { grads } => {
                let (loss, acc) = candle_loss(model, (x, y, seq), state, Some((dropout, rng)))?;
                let store = loss.backward()?;
                grads.clear();
                for (name, var) in model.params() {
                    let g = store.get(var.as_tensor()).ok_or_else(|| {
                        candle_core::Error::Msg(format!("no gradient for {name}"))
                    })?;
                    grads.push(g.flatten_all()?.to_vec1::<f32>()?);
                }
                Ok(sums_of(loss.to_scalar::<f32>()?, acc, x.len()))
            }
            Backend::Fused(f) => f.train(model, (x, y, seq), state, dropout, rng),
        }
    }

    /// Loss and accuracy sums of a window, without gradients or dropout.
    pub fn eval(
        &mut self,
        model: &CharRnn,
        (x, y, seq): (&[u32], &[u32], usize),
        state: &mut State,
    ) -> crate::Result<Sums> {
        match self {
            Backend::Cpu(cpu) => {
                model.with_weights(|w| cpu.run(w, x, y, seq, state, Pass::Eval))?
            }
            Backend::Candle { .. } => {
                let (loss, acc) = candle_loss(model, (x, y, seq), state, None)?;
                Ok(sums_of(loss.to_scalar::<f32>()?, acc, x.len()))
            }
            Backend::Fused(f) => f.eval(model, (x, y, seq), state),
        }
    }

    /// Feeds `ids` (one stream) from `state` and returns the decoder's logits after the last one.
    pub fn next_logits(
        &mut self,
        model: &CharRnn,
        ids: &[u32],
        state: &mut State,
    ) -> crate::Result<Vec<f32>> {
        match self {
            Backend::Cpu(cpu) => {
                model.with_weights(|w| cpu.run(w, ids, ids, ids.len(), state, Pass::Logits))??;
                Ok(cpu.last_logits())
            }
            Backend::Candle { .. } => {
                let xt = Tensor::from_slice(ids, (1, ids.len()), model.device())?;
                let hidden = reference::forward(model, &xt, state, None)?;
                let last = hidden.narrow(0, ids.len() - 1, 1)?;
                Ok(reference::logits(model, &last)?
                    .flatten_all()?
                    .to_vec1::<f32>()?)
            }
            Backend::Fused(f) => f.next_logits(model, ids, state),
        }
    }

    /// The gradients of the last training window, in [`CharRnn::params`] order.
    pub fn grads(&mut self) -> crate::Result<&[Vec<f32>]> {
        match self {
            Backend::Cpu(cpu) => Ok(cpu.grads()),
            Backend::Candle { grads } => Ok(grads),
            Backend::Fused(f) => f.grads(),
        }
    }

    /// The global L2 norm of the last training window's gradients (for clipping).
    pub fn grad_norm(&mut self) -> crate::Result<f64> {
        match self {
            Backend::Fused(f) => f.grad_norm(),
            other => Ok(optim::global_norm(other.grads()?)),
        }
    }

    /// Applies `opt` to `model` with the last window's gradients scaled by `scale`: on the host,
    /// or where the gradients are (the fused path keeps the optimizer's state on its device).
    pub fn update(
        &mut self,
        opt: &mut Optimizer,
        model: &CharRnn,
        lr: f64,
        scale: f32,
    ) -> crate::Result<()> {
        if let Backend::Fused(f) = self {
            return f.apply(opt, model, lr, scale);
        }
        let params: Vec<&candle_core::Var> = model.params().iter().map(|(_, v)| v).collect();
        Ok(opt.step(&params, self.grads()?, lr, scale)?)
    }

    /// Brings `opt`'s state back to the host where a device holds it (before a checkpoint).
    pub fn sync_optimizer(&mut self, opt: &mut Optimizer) -> crate::Result<()> {
        match self {
            Backend::Fused(f) => f.sync_optimizer(opt),
            _ => Ok(()),
        }
    }
}

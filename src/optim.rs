//! Optimizers (the CS231N notes' update rules), the learning-rate schedule and global-norm
//! clipping. Updates run in place on the parameter's storage through a candle `InplaceOp2`:
//! candle_nn's AdamW builds about a dozen temporary tensors per parameter per step, which costs
//! more than the model's own matmuls on small models. The update maths is one scalar kernel,
//! [`update`]; off the CPU the same kernel runs on a host copy.

use crate::config::{OptimizerKind, RunConfig, Schedule};
use crate::model::simd::{dispatch, Kernel, Level, Simd};
use candle_core::{CpuStorage, InplaceOp1, Layout, Result, Tensor, Var};
use std::cell::RefCell;
use std::collections::HashMap;

/// Optimizer hyperparameters besides the learning rate.
#[derive(Debug, Clone, Copy)]
pub struct Hyper {
    pub kind: OptimizerKind,
    pub momentum: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub rms_decay: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Hyper {
    pub fn from_config(c: &RunConfig) -> Self {
        Hyper {
            kind: c.optimizer,
            momentum: c.momentum as f32,
            beta1: c.beta1 as f32,
            beta2: c.beta2 as f32,
            rms_decay: c.rms_decay as f32,
            eps: c.eps as f32,
            weight_decay: c.weight_decay as f32,
        }
    }

    /// State vectors per parameter (velocity, caches, moments).
    fn slots(&self) -> usize {
        match self.kind {
            OptimizerKind::Sgd => 0,
            OptimizerKind::Momentum
            | OptimizerKind::Nesterov
            | OptimizerKind::Adagrad
            | OptimizerKind::Rmsprop => 1,
            OptimizerKind::Adam | OptimizerKind::Adamw => 2,
        }
    }
}

/// One step's scalars for [`update`].
#[derive(Debug, Clone, Copy)]
pub struct StepScalars {
    pub lr: f32,
    /// Multiplies the raw gradient (global-norm clipping).
    pub grad_scale: f32,
    /// Adam's bias corrections 1 − β^t.
    pub bc1: f32,
    pub bc2: f32,
}

/// The update rules, on one parameter's data. `s0`, `s1` are its state slots. The CUDA path's
/// `optim_update` kernel is this function per element (its CPU mirror calls this one).
// Indexing keeps each rule readable as the formula it implements, across four slices.
#[allow(clippy::needless_range_loop)]
pub fn update(h: &Hyper, k: StepScalars, p: &mut [f32], g: &[f32], s0: &mut [f32], s1: &mut [f32]) {
    dispatch(
        Level::detect(),
        Update {
            h,
            k,
            p,
            g,
            s: (s0, s1),
        },
    )
}

/// [`update`] compiled for the CPU's widest vectors: the same operations on each element (no
/// fused multiply-adds are formed), so the same bits as a plain build, several times faster
/// (Adam was 3 % of a step on AMX at SSE2's four lanes).
struct Update<'a> {
    h: &'a Hyper,
    k: StepScalars,
    p: &'a mut [f32],
    g: &'a [f32],
    s: (&'a mut [f32], &'a mut [f32]),
}

impl Kernel for Update<'_> {
    type Out = ();
    #[inline(always)]
    fn call<S: Simd>(self) {
        let Update { h, k, p, g, s } = self;
        rule(h, k, p, g, s.0, s.1)
    }
}

/// One step of `h`'s rule on each element.
#[inline(always)]
fn rule(h: &Hyper, k: StepScalars, p: &mut [f32], g: &[f32], s0: &mut [f32], s1: &mut [f32]) {
    let (lr, wd) = (k.lr, h.weight_decay);
    // L2 penalty as part of the gradient, except for AdamW whose decay is decoupled.
    let l2 = if h.kind == OptimizerKind::Adamw {
        0.0
    } else {
        wd
    };
    let grad = |g: f32, p: f32| g * k.grad_scale + l2 * p;
    // Zipped, not indexed: slices indexed by one `i` keep their bounds checks, and a loop with
    // checks does not vectorise. The states a rule reads are as long as `p` (sliced so a short
    // one fails loudly rather than stopping the zip early).
    let n = p.len();
    let g = &g[..n];
    match h.kind {
        OptimizerKind::Sgd => {
            for (p, &g) in p.iter_mut().zip(g) {
                *p -= lr * grad(g, *p);
            }
        }
        OptimizerKind::Momentum => {
            for ((p, &g), v) in p.iter_mut().zip(g).zip(&mut s0[..n]) {
                *v = h.momentum * *v - lr * grad(g, *p);
                *p += *v;
            }
        }
        OptimizerKind::Nesterov => {
            for ((p, &g), v) in p.iter_mut().zip(g).zip(&mut s0[..n]) {
                let v_prev = *v;
                *v = h.momentum * *v - lr * grad(g, *p);
                *p += -h.momentum * v_prev + (1.0 + h.momentum) * *v;
            }
        }
        OptimizerKind::Adagrad => {
            for ((p, &g), s) in p.iter_mut().zip(g).zip(&mut s0[..n]) {
                let d = grad(g, *p);
                *s += d * d;
                *p -= lr * d / (s.sqrt() + h.eps);
            }
        }
        OptimizerKind::Rmsprop => {
            for ((p, &g), s) in p.iter_mut().zip(g).zip(&mut s0[..n]) {
                let d = grad(g, *p);
                *s = h.rms_decay * *s + (1.0 - h.rms_decay) * d * d;
                *p -= lr * d / (s.sqrt() + h.eps);
            }
        }
        OptimizerKind::Adam | OptimizerKind::Adamw => {
            let decay = if h.kind == OptimizerKind::Adamw {
                1.0 - lr * wd
            } else {
                1.0
            };
            let states = s0[..n].iter_mut().zip(&mut s1[..n]);
            for ((p, &g), (m, v)) in p.iter_mut().zip(g).zip(states) {
                let d = grad(g, *p);
                *m = h.beta1 * *m + (1.0 - h.beta1) * d;
                *v = h.beta2 * *v + (1.0 - h.beta2) * d * d;
                let (mh, vh) = (*m / k.bc1, *v / k.bc2);
                *p = *p * decay - lr * mh / (vh.sqrt() + h.eps);
            }
        }
    }
}

/// [`update`] over the run's threads in chunks (the rules are element-wise). An unused state
/// slot is empty and yields empty chunks.
fn update_parallel(
    h: &Hyper,
    k: StepScalars,
    p: &mut [f32],
    g: &[f32],
    s0: &mut [f32],
    s1: &mut [f32],
) {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 15;
    if p.len() <= CHUNK || rayon::current_num_threads() == 1 {
        return update(h, k, p, g, s0, s1);
    }
    fn slot(s: &mut [f32], chunks: usize) -> Vec<&mut [f32]> {
        if s.is_empty() {
            (0..chunks).map(|_| &mut [][..]).collect()
        } else {
            s.chunks_mut(CHUNK).collect()
        }
    }
    let chunks = p.len().div_ceil(CHUNK);
    let (c0, c1) = (slot(s0, chunks), slot(s1, chunks));
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(c0.into_par_iter().zip(c1))
        .for_each(|((p, g), (s0, s1))| update(h, k, p, g, s0, s1));
}

struct InPlace<'a> {
    hyper: &'a Hyper,
    k: StepScalars,
    grad: &'a [f32],
    state: RefCell<&'a mut [Vec<f32>; 2]>,
}

impl InplaceOp1 for InPlace<'_> {
    fn name(&self) -> &'static str {
        "optimizer-update"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout) -> Result<()> {
        let Some((a, b)) = l1.contiguous_offsets() else {
            candle_core::bail!("optimizer: non-contiguous parameter");
        };
        let p = match s1 {
            CpuStorage::F32(v) => &mut v[a..b],
            _ => candle_core::bail!("optimizer: parameters must be f32"),
        };
        if p.len() != self.grad.len() {
            candle_core::bail!(
                "optimizer: gradient of {} for a parameter of {}",
                self.grad.len(),
                p.len()
            );
        }
        let mut st = self.state.borrow_mut();
        let [s0, s1] = &mut **st;
        update_parallel(self.hyper, self.k, p, self.grad, s0, s1);
        Ok(())
    }
}

/// An optimizer over a fixed list of parameters.
pub struct Optimizer {
    pub hyper: Hyper,
    /// Steps taken (Adam's t).
    pub t: u64,
    state: Vec<[Vec<f32>; 2]>,
    /// The state has moved on on a device since it was last copied here (the CUDA path keeps it
    /// there between steps): [`Optimizer::tensors`] refuses until it is copied back.
    pub on_device: bool,
}

impl Optimizer {
    /// A fresh optimizer for parameters with these element counts.
    pub fn new(hyper: Hyper, sizes: &[usize]) -> Self {
        let slots = hyper.slots();
        let state = sizes
            .iter()
            .map(|&n| {
                [
                    vec![0.0; if slots >= 1 { n } else { 0 }],
                    vec![0.0; if slots >= 2 { n } else { 0 }],
                ]
            })
            .collect();
        Optimizer {
            hyper,
            t: 0,
            state,
            on_device: false,
        }
    }

    /// Applies one update to `params` with their `grads` (same order), scaling the gradients by
    /// `grad_scale` (clipping) on the way.
    pub fn step(
        &mut self,
        params: &[&Var],
        grads: &[Vec<f32>],
        lr: f64,
        grad_scale: f32,
    ) -> Result<()> {
        let k = self.begin_step(lr, grad_scale);
        for ((var, grad), state) in params.iter().zip(grads).zip(self.state.iter_mut()) {
            if var.device().is_cpu() {
                let op = InPlace {
                    hyper: &self.hyper,
                    k,
                    grad,
                    state: RefCell::new(state),
                };
                var.as_tensor().inplace_op1(&op)?;
            } else {
                let mut p = var.flatten_all()?.to_vec1::<f32>()?;
                let [s0, s1] = state;
                update(&self.hyper, k, &mut p, grad, s0, s1);
                var.set(&Tensor::from_vec(p, var.shape(), var.device())?)?;
            }
        }
        Ok(())
    }

    /// Counts a step and returns its scalars for [`update`] (the host's or a device's).
    pub fn begin_step(&mut self, lr: f64, grad_scale: f32) -> StepScalars {
        self.t += 1;
        let t = self.t as i32;
        StepScalars {
            lr: lr as f32,
            grad_scale,
            bc1: 1.0 - self.hyper.beta1.powi(t),
            bc2: 1.0 - self.hyper.beta2.powi(t),
        }
    }

    /// Each parameter's two state slots (an unused slot is empty), for a device to copy from
    /// and back into.
    pub fn slots_mut(&mut self) -> &mut [[Vec<f32>; 2]] {
        &mut self.state
    }

    /// The state as named tensors (for checkpoints), keyed `optim/<index>/<slot>`.
    pub fn tensors(&self) -> Result<HashMap<String, Tensor>> {
        if self.on_device {
            candle_core::bail!("the optimizer's state is on the device: copy it back first");
        }
        let mut out = HashMap::new();
        for (i, slots) in self.state.iter().enumerate() {
            for (j, s) in slots.iter().enumerate() {
                if !s.is_empty() {
                    out.insert(
                        format!("optim/{i}/{j}"),
                        Tensor::from_slice(s, s.len(), &candle_core::Device::Cpu)?,
                    );
                }
            }
        }
        Ok(out)
    }

    /// Restores the state saved by [`Optimizer::tensors`].
    pub fn load(&mut self, t: u64, tensors: &HashMap<String, Tensor>) -> Result<()> {
        self.t = t;
        self.on_device = false;
        for (i, slots) in self.state.iter_mut().enumerate() {
            for (j, s) in slots.iter_mut().enumerate() {
                if s.is_empty() {
                    continue;
                }
                let key = format!("optim/{i}/{j}");
                let v = tensors
                    .get(&key)
                    .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks {key}")))?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                if v.len() != s.len() {
                    candle_core::bail!(
                        "checkpoint's {key} has {} values, expected {}",
                        v.len(),
                        s.len()
                    );
                }
                *s = v;
            }
        }
        Ok(())
    }
}

/// What global-norm clipping multiplies the gradients by: `clip / norm` when the norm exceeds
/// `clip` (`clip` 0 turns clipping off), as `torch.nn.utils.clip_grad_norm_` (which adds 1e-6 to
/// the norm, a difference below f32's precision at the norms where clipping acts).
pub fn clip_scale(norm: f64, clip: f64) -> f32 {
    if clip > 0.0 && norm > clip {
        (clip / norm) as f32
    } else {
        1.0
    }
}

/// The global L2 norm of the gradients.
pub fn global_norm(grads: &[Vec<f32>]) -> f64 {
    use rayon::prelude::*;
    // Eight independent partial sums per chunk: a single float chain would not vectorise.
    let sum_sq = |c: &[f32]| {
        let mut lanes = [0f64; 8];
        let chunks = c.chunks_exact(8);
        for x in chunks.remainder() {
            lanes[0] += (*x as f64) * (*x as f64);
        }
        for c in chunks {
            for (l, x) in lanes.iter_mut().zip(c) {
                *l += (*x as f64) * (*x as f64);
            }
        }
        lanes.iter().sum::<f64>()
    };
    grads
        .iter()
        .map(|g| g.par_chunks(1 << 15).map(sum_sq).sum::<f64>())
        .sum::<f64>()
        .sqrt()
}

/// The learning rate at `step` (0-based) in `epoch` (fractional), for a run of `total` steps.
pub fn lr_at(cfg: &RunConfig, step: u64, epoch: f64, total: u64) -> f64 {
    match cfg.lr_schedule {
        Schedule::None => cfg.lr,
        Schedule::Exponential => {
            let decays = (epoch.floor() - cfg.lr_decay_after + 1.0).max(0.0);
            cfg.lr * cfg.lr_decay.powf(decays)
        }
        Schedule::Cosine => {
            let frac = (step as f64 / total.max(1) as f64).min(1.0);
            cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + (std::f64::consts::PI * frac).cos())
        }
    }
}

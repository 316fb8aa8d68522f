//! The CUDA path: a window's forward and backward as a few large products (cuBLAS) and one small
//! kernel per time step and layer, instead of candle's ten-odd ops per step and their autograd
//! graph. Written once over [`Ops`], which the CUDA device implements ([`cuda`], behind the
//! `cuda` feature) and which [`host::HostOps`] implements on the CPU, kernel for kernel as
//! `kernels.cu` does: so the way the products and kernels are put together (strides, transposes,
//! the order through time) is checked against the step-by-step reference on any machine, and a
//! GPU only has to confirm the kernels themselves (`charlab check-device --device cuda`).
//!
//! Activations are row-major `[batch, steps, cols]` (row `b·T + t`), the reference's order, so a
//! time step's rows are reached in place with a leading dimension of `T·cols`.

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod host;
mod ops;

pub use ops::*;

use super::cpu::Sums;
use super::{layer_slot, CharRnn, Dims, State};
use crate::optim::Optimizer;
use crate::rng::Rng;
use crate::Result;

/// One layer's activations over a window, and what its backward needs.
struct LayerBufs {
    /// `[N, 4H]`: pre-activations, then activations (forward), then their gradients (backward).
    gates: Buf,
    /// `[N, H]` outputs and cells, and the same shifted one step (the previous state per step).
    h: Buf,
    c: Buf,
    h_prev: Buf,
    c_prev: Buf,
    /// `[N, H]`: the output after dropout, and its mask (training with dropout only).
    dropped: Buf,
    mask: Buf,
    /// `[B, H]`: the carried state in, and the cell's carried gradient.
    h0: Buf,
    c0: Buf,
    dc: Buf,
    /// `[N, H]`: the loss's gradient with respect to this layer's output.
    dh: Buf,
}

/// The length of [`Workspace::tail`] for `batch` × `steps`: losses and hits `[N]` each, then `h`
/// and `c` `[B, H]` per layer.
fn tail_len(d: Dims, batch: usize, steps: usize) -> usize {
    2 * batch * steps + 2 * d.layers * batch * d.hidden
}

/// Buffers for one (batch, steps) shape; kept between windows of that shape.
struct Workspace {
    batch: usize,
    steps: usize,
    ids_x: Buf,
    ids_y: Buf,
    /// `[N, E]`: embedded inputs and their gradient.
    x0: Buf,
    dx0: Buf,
    layers: Vec<LayerBufs>,
    /// `[N, V]`: logits, then their gradient.
    z: Buf,
    /// What the host reads after a window, in one copy: each row's loss `[N]`, whether its
    /// arg-max hit `[N]`, and per layer the state after the window (`h`, then `c`, `[B, H]`).
    tail: Buf,
    ones: Buf,
    /// One per parameter, and their element counts.
    grads: Vec<Buf>,
    grad_sizes: Vec<usize>,
}

/// A window's forward and backward over [`Ops`]; the gradients of the last training window are
/// kept on the host, in [`CharRnn::params`] order, for the trainer's norm, histograms and update.
pub struct Fused {
    ops: Box<dyn Ops>,
    dims: Dims,
    ws: Option<Workspace>,
    /// The last training window's gradients on the host, when asked for (histograms, tests).
    grads: Vec<Vec<f32>>,
    grads_fresh: bool,
    /// The optimizer's two state slots per parameter, kept on the device between steps.
    opt: Vec<[Buf; 2]>,
    /// [`NORM_BLOCKS`] partial sums of squares per parameter.
    partials: Option<Buf>,
}

/// Blocks of `sum_squares` per parameter: enough to fill the device on the largest ones.
const NORM_BLOCKS: usize = 128;

impl Fused {
    pub fn new(ops: Box<dyn Ops>, dims: Dims) -> Self {
        Fused {
            ops,
            dims,
            ws: None,
            grads: Vec::new(),
            grads_fresh: true,
            opt: Vec::new(),
            partials: None,
        }
    }

    /// The last training window's gradients, in [`CharRnn::params`] order (copied from the
    /// device on the first call after the window).
    pub fn grads(&mut self) -> Result<&[Vec<f32>]> {
        if !self.grads_fresh {
            if let Some(ws) = &self.ws {
                self.grads = (ws.grads.iter().zip(&ws.grad_sizes))
                    .map(|(buf, &len)| self.ops.download(buf.at(0), len))
                    .collect::<Result<_>>()?;
            }
            self.grads_fresh = true;
        }
        Ok(&self.grads)
    }

    /// The global L2 norm of the last window's gradients, reduced on the device.
    pub fn grad_norm(&mut self) -> Result<f64> {
        let Some(ws) = &self.ws else { return Ok(0.0) };
        let count = ws.grads.len();
        let partials = match self.partials {
            Some(p) => p,
            None => *self.partials.insert(self.ops.alloc(count * NORM_BLOCKS)?),
        };
        for (i, (g, &n)) in ws.grads.iter().zip(&ws.grad_sizes).enumerate() {
            let out = partials.at(i * NORM_BLOCKS);
            let blocks = NORM_BLOCKS;
            self.ops.run(&Kernel::SumSquares {
                x: g.at(0),
                n,
                out,
                blocks,
            })?;
        }
        let sums = self.ops.download(partials.at(0), count * NORM_BLOCKS)?;
        Ok(sums.iter().map(|&x| x as f64).sum::<f64>().sqrt())
    }

    /// One optimizer step on the device with the last window's gradients; the optimizer's state
    /// stays there ([`Optimizer::on_device`]) until [`Fused::sync_optimizer`].
    pub fn apply(
        &mut self,
        opt: &mut Optimizer,
        model: &CharRnn,
        lr: f64,
        scale: f32,
    ) -> Result<()> {
        let Some(ws) = &self.ws else { return Ok(()) };
        if self.opt.is_empty() {
            for &n in &ws.grad_sizes {
                self.opt.push([self.ops.alloc(n)?, self.ops.alloc(n)?]);
            }
        }
        if !opt.on_device {
            for (slots, bufs) in opt.slots_mut().iter().zip(&self.opt) {
                for (s, buf) in slots.iter().zip(bufs) {
                    if !s.is_empty() {
                        self.ops.upload(buf.at(0), s)?;
                    }
                }
            }
            opt.on_device = true;
        }
        let (hyper, k) = (opt.hyper, opt.begin_step(lr, scale));
        let params = self.ops.bind_params(model)?;
        for (((p, g), [s0, s1]), &n) in params
            .iter()
            .zip(&ws.grads)
            .zip(&self.opt)
            .zip(&ws.grad_sizes)
        {
            let (p, g, s0, s1) = (p.at(0), g.at(0), s0.at(0), s1.at(0));
            self.ops.run(&Kernel::OptimUpdate {
                p,
                g,
                s0,
                s1,
                n,
                hyper,
                k,
            })?;
        }
        self.ops.store_params(model)
    }

    /// Copies the optimizer's state back from the device (before a checkpoint).
    pub fn sync_optimizer(&mut self, opt: &mut Optimizer) -> Result<()> {
        if !opt.on_device {
            return Ok(());
        }
        for (slots, bufs) in opt.slots_mut().iter_mut().zip(&self.opt) {
            for (s, buf) in slots.iter_mut().zip(bufs) {
                if !s.is_empty() {
                    *s = self.ops.download(buf.at(0), s.len())?;
                }
            }
        }
        opt.on_device = false;
        Ok(())
    }

    /// The workspace for `batch` × `steps`, made anew when the shape changes.
    fn workspace(&mut self, model: &CharRnn, batch: usize, steps: usize) -> Result<Workspace> {
        if let Some(ws) = self.ws.take() {
            if ws.batch == batch && ws.steps == steps {
                return Ok(ws);
            }
        }
        let d = self.dims;
        let (n, h) = (batch * steps, d.hidden);
        let ops = &mut self.ops;
        let mut layers = Vec::with_capacity(d.layers);
        for _ in 0..d.layers {
            layers.push(LayerBufs {
                gates: ops.alloc(n * 4 * h)?,
                h: ops.alloc(n * h)?,
                c: ops.alloc(n * h)?,
                h_prev: ops.alloc(n * h)?,
                c_prev: ops.alloc(n * h)?,
                dropped: ops.alloc(n * h)?,
                mask: ops.alloc(n * h)?,
                h0: ops.alloc(batch * h)?,
                c0: ops.alloc(batch * h)?,
                dc: ops.alloc(batch * h)?,
                dh: ops.alloc(n * h)?,
            });
        }
        let ones = ops.alloc(n)?;
        ops.run(&Kernel::Fill {
            p: ones.at(0),
            n,
            value: 1.0,
        })?;
        let grad_sizes: Vec<usize> = model.params().iter().map(|(_, v)| v.elem_count()).collect();
        let grads = grad_sizes
            .iter()
            .map(|&len| ops.alloc(len))
            .collect::<Result<_>>()?;
        Ok(Workspace {
            batch,
            steps,
            ids_x: ops.alloc(n)?,
            ids_y: ops.alloc(n)?,
            x0: ops.alloc(n * d.embed_dim)?,
            dx0: ops.alloc(n * d.embed_dim)?,
            layers,
            z: ops.alloc(n * d.vocab)?,
            tail: ops.alloc(tail_len(d, batch, steps))?,
            ones,
            grads,
            grad_sizes,
        })
    }

    /// One training window: loss and accuracy sums; the gradients are then in [`Fused::grads`].
    pub fn train(
        &mut self,
        model: &CharRnn,
        (x, y, seq): (&[u32], &[u32], usize),
        state: &mut State,
        dropout: f64,
        rng: &mut Rng,
    ) -> Result<Sums> {
        let drop = (dropout > 0.0).then_some((dropout, rng));
        self.window(model, (x, y, seq), state, drop, true)
    }

    /// Loss and accuracy sums of a window, without gradients or dropout.
    pub fn eval(
        &mut self,
        model: &CharRnn,
        (x, y, seq): (&[u32], &[u32], usize),
        state: &mut State,
    ) -> Result<Sums> {
        self.window(model, (x, y, seq), state, None, false)
    }

    /// Feeds `ids` (one stream) from `state` and returns the decoder's logits after the last one.
    pub fn next_logits(
        &mut self,
        model: &CharRnn,
        ids: &[u32],
        state: &mut State,
    ) -> Result<Vec<f32>> {
        self.window(model, (ids, ids, ids.len()), state, None, false)?;
        let v = self.dims.vocab;
        match &self.ws {
            Some(ws) => self.ops.download(ws.z.at((ids.len() - 1) * v), v),
            None => Ok(vec![0.0; v]),
        }
    }

    fn window(
        &mut self,
        model: &CharRnn,
        (x, y, seq): (&[u32], &[u32], usize),
        state: &mut State,
        dropout: Option<(f64, &mut Rng)>,
        train: bool,
    ) -> Result<Sums> {
        let ws = self.workspace(model, state.batch, seq)?;
        let params = self.ops.bind_params(model)?;
        let result = self.pass(&ws, &params, (x, y), state, dropout, train);
        self.ws = Some(ws);
        result
    }

    fn pass(
        &mut self,
        ws: &Workspace,
        p: &[Buf],
        (x, y): (&[u32], &[u32]),
        state: &mut State,
        dropout: Option<(f64, &mut Rng)>,
        train: bool,
    ) -> Result<Sums> {
        let n = x.len();
        self.ops.upload(ws.ids_x.at(0), &ids_as_floats(x))?;
        self.ops.upload(ws.ids_y.at(0), &ids_as_floats(y))?;
        let dropped = dropout.is_some();
        let top = self.forward(ws, p, state, dropout)?;
        let v = self.dims.vocab;
        let out = layer_slot(self.dims.layers);
        self.ops.gemm(&product(
            n,
            v,
            self.dims.hidden,
            top,
            false,
            p[out].at(0),
            true,
            ws.z.at(0),
        ))?;
        self.ops.run(&Kernel::SoftmaxXent(Xent {
            z: ws.z.at(0),
            bias: p[out + 1].at(0),
            targets: ws.ids_y.at(0),
            loss: ws.tail.at(0),
            hit: ws.tail.at(n),
            rows: n,
            cols: v,
            scale: 1.0 / n as f32,
            grad: train,
        }))?;
        if train {
            self.backward(ws, p, top, dropped)?;
        }
        let tail = self
            .ops
            .download(ws.tail.at(0), tail_len(self.dims, ws.batch, ws.steps))?;
        let (loss, rest) = tail.split_at(n);
        let (hits, states) = rest.split_at(n);
        let (h, c) = (&mut state.h, &mut state.c);
        let mut states = states.chunks(state.batch * self.dims.hidden);
        for (h, c) in h.iter_mut().zip(c) {
            for to in [h, c] {
                to.copy_from_slice(states.next().unwrap_or_default());
            }
        }
        Ok(Sums {
            loss: loss.iter().map(|&l| l as f64).sum(),
            hits: hits.iter().map(|&h| h as f64).sum(),
            count: n,
        })
    }

    /// Embedding and every layer through the window; returns the decoder's input `[N, H]` and
    /// leaves the state after the window in `state`.
    fn forward(
        &mut self,
        ws: &Workspace,
        p: &[Buf],
        state: &mut State,
        mut dropout: Option<(f64, &mut Rng)>,
    ) -> Result<At> {
        let d = self.dims;
        let n = ws.batch * ws.steps;
        self.ops.run(&Kernel::Gather(ById {
            table: p[0].at(0),
            ids: ws.ids_x.at(0),
            dense: ws.x0.at(0),
            rows: n,
            cols: d.embed_dim,
        }))?;
        let (mut input, mut width) = (ws.x0.at(0), d.embed_dim);
        for (k, l) in ws.layers.iter().enumerate() {
            self.ops.upload(l.h0.at(0), &state.h[k])?;
            self.ops.upload(l.c0.at(0), &state.c[k])?;
            self.layer_forward(ws, p, k, (input, width))?;
            for (j, from) in [l.h, l.c].into_iter().enumerate() {
                self.last_step(ws, from, 2 * k + j)?;
            }
            (input, width) = (l.h.at(0), d.hidden);
            if let Some((p, rng)) = dropout.as_mut() {
                let len = n * d.hidden;
                let mask = super::reference::dropout_mask(len, *p, rng);
                self.ops.upload(l.mask.at(0), &mask)?;
                let (a, b, out) = (l.h.at(0), l.mask.at(0), l.dropped.at(0));
                self.ops.run(&Kernel::Mul { a, b, out, n: len })?;
                input = l.dropped.at(0);
            }
        }
        Ok(input)
    }

    /// Layer `k` over the window from `input` (`[N, width]`): its gates, outputs and cells.
    fn layer_forward(
        &mut self,
        ws: &Workspace,
        p: &[Buf],
        k: usize,
        input: (At, usize),
    ) -> Result<()> {
        let (b, t, h) = (ws.batch, ws.steps, self.dims.hidden);
        let l = &ws.layers[k];
        let [w_ih, w_hh, b_ih, b_hh] = [0, 1, 2, 3].map(|i| p[layer_slot(k) + i].at(0));
        let ops = &mut self.ops;
        ops.gemm(&product(
            b * t,
            4 * h,
            input.1,
            input.0,
            false,
            w_ih,
            true,
            l.gates.at(0),
        ))?;
        for s in 0..t {
            // The previous step's rows: the carried state at s = 0, else this window's.
            let (h_prev, c_prev, ld_prev) = if s == 0 {
                (l.h0.at(0), l.c0.at(0), h)
            } else {
                (l.h.at((s - 1) * h), l.c.at((s - 1) * h), t * h)
            };
            let gates = l.gates.at(s * 4 * h);
            let (ldg, ld) = (t * 4 * h, t * h);
            ops.gemm(&Gemm {
                lda: ld_prev,
                ldc: ldg,
                beta: 1.0,
                ..product(b, 4 * h, h, h_prev, false, w_hh, true, gates)
            })?;
            let (h_out, c_out) = (l.h.at(s * h), l.c.at(s * h));
            ops.run(&Kernel::LstmStep(Cell {
                gates,
                ldg,
                b_ih,
                b_hh,
                c_prev,
                ld_prev,
                h: h_out,
                c: c_out,
                ld,
                batch: b,
                hidden: h,
            }))?;
        }
        Ok(())
    }

    /// Copies the last step's rows of `from` (a layer's `h` or `c`) into `ws.tail`'s `slot`th
    /// state, for the one copy to the host after the window.
    fn last_step(&mut self, ws: &Workspace, from: Buf, slot: usize) -> Result<()> {
        let (b, t, h) = (ws.batch, ws.steps, self.dims.hidden);
        self.ops.run(&Kernel::CopyRows {
            src: from.at((t - 1) * h),
            lds: t * h,
            dst: ws.tail.at(2 * b * t + slot * b * h),
            ldd: h,
            rows: b,
            cols: h,
        })
    }

    /// The decoder's and every layer's gradients from the logits' gradient in `ws.z`, downloaded
    /// into [`Fused::grads`].
    fn backward(&mut self, ws: &Workspace, p: &[Buf], top: At, dropped: bool) -> Result<()> {
        let d = self.dims;
        let (n, h, v) = (ws.batch * ws.steps, d.hidden, d.vocab);
        let out = layer_slot(d.layers);
        let (g, z) = (&ws.grads, ws.z.at(0));
        let ops = &mut self.ops;
        ops.gemm(&product(v, h, n, z, true, top, false, g[out].at(0)))?;
        ops.gemm(&product(
            1,
            v,
            n,
            ws.ones.at(0),
            false,
            z,
            false,
            g[out + 1].at(0),
        ))?;
        let top_dh = ws.layers[d.layers - 1].dh.at(0);
        ops.gemm(&product(n, h, v, z, false, p[out].at(0), false, top_dh))?;
        for k in (0..d.layers).rev() {
            self.layer_backward(ws, p, k, dropped)?;
        }
        let (e, ops) = (d.embed_dim, &mut self.ops);
        ops.run(&Kernel::Fill {
            p: g[0].at(0),
            n: d.vocab * e,
            value: 0.0,
        })?;
        ops.run(&Kernel::ScatterAdd(ById {
            dense: ws.dx0.at(0),
            ids: ws.ids_x.at(0),
            table: g[0].at(0),
            rows: n,
            cols: e,
        }))?;
        self.grads_fresh = false;
        Ok(())
    }

    /// The recurrence backwards, step by step: each step's gates become their gradients, and the
    /// gradient reaching the previous step's output through `w_hh` is added to its `dh`.
    fn through_time_back(&mut self, ws: &Workspace, l: &LayerBufs, w_hh: At) -> Result<()> {
        let (b, t, h) = (ws.batch, ws.steps, self.dims.hidden);
        let ops = &mut self.ops;
        ops.run(&Kernel::Fill {
            p: l.dc.at(0),
            n: b * h,
            value: 0.0,
        })?;
        let (ldg, ld) = (t * 4 * h, t * h);
        for s in (0..t).rev() {
            let gates = l.gates.at(s * 4 * h);
            ops.run(&Kernel::LstmStepBack(CellBack {
                gates,
                ldg,
                c: l.c.at(s * h),
                c_prev: l.c_prev.at(s * h),
                dh: l.dh.at(s * h),
                ld,
                dc: l.dc.at(0),
                batch: b,
                hidden: h,
            }))?;
            if s > 0 {
                let dh_prev = l.dh.at((s - 1) * h);
                let into = product(b, h, 4 * h, gates, false, w_hh, false, dh_prev);
                ops.gemm(&Gemm {
                    lda: ldg,
                    ldc: ld,
                    beta: 1.0,
                    ..into
                })?;
            }
        }
        Ok(())
    }

    /// Layer `k` backwards through the window, from the gradient of its output in `l.dh`: its
    /// parameters' gradients, and the gradient of its input (the layer below's `dh`, or the
    /// embedded inputs').
    fn layer_backward(&mut self, ws: &Workspace, p: &[Buf], k: usize, dropped: bool) -> Result<()> {
        let d = self.dims;
        let (b, t, h) = (ws.batch, ws.steps, d.hidden);
        let n = b * t;
        let l = &ws.layers[k];
        let [w_ih, w_hh] = [0, 1].map(|i| p[layer_slot(k) + i].at(0));
        let (input, width, d_input) = match k.checked_sub(1).map(|below| &ws.layers[below]) {
            None => (ws.x0.at(0), d.embed_dim, ws.dx0.at(0)),
            Some(below) => {
                let input = if dropped { below.dropped } else { below.h };
                (input.at(0), h, below.dh.at(0))
            }
        };
        let ops = &mut self.ops;
        if dropped {
            let (a, m) = (l.dh.at(0), l.mask.at(0));
            ops.run(&Kernel::Mul {
                a,
                b: m,
                out: a,
                n: n * h,
            })?;
        }
        for (src, first, dst) in [(l.h, l.h0, l.h_prev), (l.c, l.c0, l.c_prev)] {
            let (src, first, dst) = (src.at(0), first.at(0), dst.at(0));
            ops.run(&Kernel::Shift {
                src,
                first,
                dst,
                batch: b,
                steps: t,
                cols: h,
            })?;
        }
        self.through_time_back(ws, l, w_hh)?;
        let ops = &mut self.ops;
        let (g, slot, dg) = (&ws.grads, layer_slot(k), l.gates.at(0));
        ops.gemm(&product(
            4 * h,
            width,
            n,
            dg,
            true,
            input,
            false,
            g[slot].at(0),
        ))?;
        ops.gemm(&product(
            4 * h,
            h,
            n,
            dg,
            true,
            l.h_prev.at(0),
            false,
            g[slot + 1].at(0),
        ))?;
        for bias in [slot + 2, slot + 3] {
            ops.gemm(&product(
                1,
                4 * h,
                n,
                ws.ones.at(0),
                false,
                dg,
                false,
                g[bias].at(0),
            ))?;
        }
        ops.gemm(&product(n, width, 4 * h, dg, false, w_ih, false, d_input))
    }
}

/// A plain product `C = op(A)·op(B)` over packed matrices (leading dimensions their widths).
#[allow(clippy::too_many_arguments)]
fn product(m: usize, n: usize, k: usize, a: At, ta: bool, b: At, tb: bool, c: At) -> Gemm {
    Gemm {
        m,
        n,
        k,
        a,
        lda: if ta { m } else { k },
        ta,
        b,
        ldb: if tb { k } else { n },
        tb,
        c,
        ldc: n,
        beta: 0.0,
    }
}

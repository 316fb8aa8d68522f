//! One LSTM layer over a whole window, in two implementations that must agree:
//!
//! - [`fused`]: a candle `CustomOp3` that runs the time loop itself on the CPU, forward and
//!   backward. The input projection of all steps is one big matmul done before the op (by candle,
//!   multi-threaded); inside, each step is one small GEMM into a preallocated buffer plus one
//!   vectorised pass over the gates ([`super::kernels`]), and backward-through-time computes
//!   `dW_hh` as a single GEMM after the loop. Per-step candle ops would instead build a graph of
//!   ~15 nodes per step, and the backward of slicing one step out of the projection allocates a
//!   zero-padded full-size gradient per step.
//! - [`reference`]: the same maths as plain candle ops, one step at a time. It runs on any device
//!   (it is the CUDA path for now) and is what the equivalence tests check the fused op against.
//!
//! Gate order is PyTorch's: input, forget, cell, output.

use super::kernels;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, D};
use std::sync::{Arc, Mutex};

/// Output of a layer: the hidden state of every step and the final `(h, c)`.
pub struct LayerOut {
    /// `[B, T, H]`
    pub hs: Tensor,
    /// `[B, H]`, detached from the graph (truncated BPTT carries values, not gradients).
    pub h_last: Tensor,
    /// `[B, H]`, detached.
    pub c_last: Tensor,
}

/// Runs one layer with the plain step-by-step ops.
///
/// `xproj` is `[B, T, 4H]` (the input projection, without bias), `w_hh` `[4H, H]`, `bias`
/// `[4H]`, `h0`/`c0` `[B, H]`.
pub fn reference(
    xproj: &Tensor,
    w_hh: &Tensor,
    bias: &Tensor,
    h0: &Tensor,
    c0: &Tensor,
) -> Result<LayerOut> {
    let (_b, t_len, four_h) = xproj.dims3()?;
    let h_dim = four_h / 4;
    let xproj = xproj.broadcast_add(bias)?;
    let w_t = w_hh.t()?;
    let (mut h, mut c) = (h0.clone(), c0.clone());
    let mut hs = Vec::with_capacity(t_len);
    for t in 0..t_len {
        let gates = (xproj.narrow(1, t, 1)?.squeeze(1)? + h.matmul(&w_t)?)?;
        let i = candle_nn::ops::sigmoid(&gates.narrow(D::Minus1, 0, h_dim)?)?;
        let f = candle_nn::ops::sigmoid(&gates.narrow(D::Minus1, h_dim, h_dim)?)?;
        let g = gates.narrow(D::Minus1, 2 * h_dim, h_dim)?.tanh()?;
        let o = candle_nn::ops::sigmoid(&gates.narrow(D::Minus1, 3 * h_dim, h_dim)?)?;
        c = ((f * &c)? + (i * g)?)?;
        h = (o * c.tanh()?)?;
        hs.push(h.clone());
    }
    Ok(LayerOut {
        hs: Tensor::stack(&hs, 1)?,
        h_last: h.detach(),
        c_last: c.detach(),
    })
}

/// Runs one layer with the fused CPU op (falls back to [`reference`] on other devices).
/// Arguments as for [`reference`]; the initial state is a value, not differentiated.
pub fn fused(
    xproj: &Tensor,
    w_hh: &Tensor,
    bias: &Tensor,
    h0: &Tensor,
    c0: &Tensor,
) -> Result<LayerOut> {
    if !xproj.device().is_cpu() {
        return reference(xproj, w_hh, bias, h0, c0);
    }
    let (b, t_len, four_h) = xproj.dims3()?;
    let h = four_h / 4;
    let mut state = h0.flatten_all()?.to_vec1::<f32>()?;
    state.extend(c0.flatten_all()?.to_vec1::<f32>()?);
    if state.len() != 2 * b * h {
        candle_core::bail!("lstm: state is not [{b}, {h}]");
    }
    let acts = Arc::new(Mutex::new(Vec::new()));
    let op = LstmSeq {
        state,
        acts: Arc::clone(&acts),
    };
    let hs = xproj
        .contiguous()?
        .apply_op3(&w_hh.contiguous()?, &bias.contiguous()?, op)?;
    let h_last = hs
        .narrow(1, t_len - 1, 1)?
        .squeeze(1)?
        .detach()
        .contiguous()?;
    let c_last: Vec<f32> = {
        let acts = saved(&acts, "lstm")?;
        (0..b)
            .flat_map(|bi| &acts[(bi * t_len + t_len - 1) * 5 * h..][..h])
            .copied()
            .collect()
    };
    Ok(LayerOut {
        hs,
        h_last,
        c_last: Tensor::from_vec(c_last, (b, h), xproj.device())?,
    })
}

/// The fused op. Inputs: `xproj [B,T,4H]`, `w_hh [4H,H]`, `bias [4H]`; the initial state
/// (`h0` then `c0`, each `[B,H]`) is a plain value. Output: `hs [B,T,H]`. The cell state and the
/// four activated gates of every step (`[B,T,5H]`: c, i, f, g, o) are kept in `acts` for the
/// backward pass, so nothing is recomputed, and the output needs no slicing (whose backward would
/// zero-pad the gradient to the full saved size).
struct LstmSeq {
    state: Vec<f32>,
    acts: Arc<Mutex<Vec<f32>>>,
}

/// Locks a custom op's saved buffer (what its forward keeps for its backward).
pub(crate) fn saved<'a>(
    buf: &'a Mutex<Vec<f32>>,
    op: &str,
) -> Result<std::sync::MutexGuard<'a, Vec<f32>>> {
    buf.lock()
        .map_err(|_| candle_core::Error::Msg(format!("{op}: poisoned")))
}

/// The contiguous f32 data of a custom op's input.
pub(crate) fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("custom op: input is not contiguous"),
    }
}

/// `dst[m×n] (+)= lhs[m×k] · rhs[k×n]` with explicit (row, col) strides, single-threaded unless
/// `threads > 1`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
    threads: usize,
) {
    debug_assert!(m == 0 || dst.len() > (m - 1) * dst_rs + n - 1);
    debug_assert!(m == 0 || k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    debug_assert!(k == 0 || n == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the strides and sizes above describe regions inside the given slices (checked in
    // debug builds), and `dst` does not alias `lhs` or `rhs` (it is a distinct `&mut`).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Splits `b` batch rows into at most `threads` contiguous groups of near-equal size.
/// The recurrence never mixes rows, so each group runs the whole time loop on its own thread with
/// no synchronisation per step; a per-step parallel GEMM would need barriers every step, and at
/// these sizes (a few hundred kFLOP per step) the barriers cost more than the work.
fn row_groups(b: usize, threads: usize) -> Vec<std::ops::Range<usize>> {
    let n = threads.clamp(1, b.max(1));
    (0..n).map(|k| k * b / n..(k + 1) * b / n).collect()
}

/// Cuts `data` into consecutive mutable pieces of `per_row` elements per row of each group.
fn split_rows<'a>(
    mut data: &'a mut [f32],
    groups: &[std::ops::Range<usize>],
    per_row: usize,
) -> Vec<&'a mut [f32]> {
    let mut pieces = Vec::with_capacity(groups.len());
    for g in groups {
        let (piece, rest) = data.split_at_mut(g.len() * per_row);
        pieces.push(piece);
        data = rest;
    }
    pieces
}

/// One group's forward time loop; slices hold the group's rows only.
struct RowsFwd<'a> {
    /// `[nb,T,4H]`
    xp: &'a [f32],
    /// `[nb,H]` each
    h0: &'a [f32],
    c0: &'a [f32],
    /// `[nb,T,H]`
    hs: &'a mut [f32],
    /// `[nb,T,5H]`
    acts: &'a mut [f32],
}

/// `wt` is `W_hhᵀ` `[H,4H]` with its (row, column) strides: stored row-major, the step GEMM reads
/// the weights in the order its kernel wants, where `W_hh` itself is repacked on every step.
fn forward_rows(
    r: RowsFwd,
    (wt, wt_rs, wt_cs): (&[f32], usize, usize),
    bias: &[f32],
    h: usize,
    t_len: usize,
) {
    let (four_h, w5) = (4 * h, 5 * h);
    let nb = r.h0.len() / h;
    let (hs, acts) = (r.hs, r.acts);
    let mut gates = vec![0f32; nb * four_h];
    for t in 0..t_len {
        for bi in 0..nb {
            let src = &r.xp[(bi * t_len + t) * four_h..][..four_h];
            for ((g, &x), &b) in gates[bi * four_h..][..four_h].iter_mut().zip(src).zip(bias) {
                *g = x + b;
            }
        }
        let (prev, prev_rs) = if t == 0 {
            (r.h0, h)
        } else {
            (&hs[(t - 1) * h..], t_len * h)
        };
        gemm(
            nb, four_h, h, &mut gates, four_h, true, prev, prev_rs, 1, wt, wt_rs, wt_cs, 1,
        );
        for bi in 0..nb {
            let at = (bi * t_len + t) * w5;
            let (before, after) = acts.split_at_mut(at);
            let c_prev = if t == 0 {
                &r.c0[bi * h..][..h]
            } else {
                &before[at - w5..][..h]
            };
            kernels::cell_forward(
                &gates[bi * four_h..][..four_h],
                c_prev,
                &mut hs[(bi * t_len + t) * h..][..h],
                &mut after[..w5],
            );
        }
    }
}

/// One group's backward time loop; slices hold the group's rows only.
struct RowsBwd<'a> {
    /// `[nb,T,5H]`, `[nb,T,H]`, `[nb,T,H]` (the gradient reaching `hs`)
    acts: &'a [f32],
    hs: &'a [f32],
    dhs: &'a [f32],
    /// `[nb,H]` each
    h0: &'a [f32],
    c0: &'a [f32],
    /// `[nb,T,4H]`: the pre-activation gradient, which is also `d xproj`.
    dxp: &'a mut [f32],
    /// `[4H]`: this group's share of `d bias`.
    dbias: &'a mut [f32],
    /// `[nb,T,H]`: `h_{t-1}` of every step, the right-hand side of `dW_hh`.
    h_prev: &'a mut [f32],
}

fn backward_rows(r: RowsBwd, whh: &[f32], h: usize, t_len: usize) {
    let (four_h, w5) = (4 * h, 5 * h);
    let nb = r.h0.len() / h;
    let (acts, dxp) = (r.acts, r.dxp);
    let mut dh_next = vec![0f32; nb * h];
    let mut dc_next = vec![0f32; nb * h];
    for t in (0..t_len).rev() {
        for bi in 0..nb {
            let at = (bi * t_len + t) * w5;
            let c_prev = if t == 0 {
                &r.c0[bi * h..][..h]
            } else {
                &acts[at - w5..][..h]
            };
            kernels::cell_backward(
                &acts[at..at + w5],
                &r.dhs[(bi * t_len + t) * h..][..h],
                c_prev,
                &dh_next[bi * h..][..h],
                &mut dc_next[bi * h..][..h],
                &mut dxp[(bi * t_len + t) * four_h..][..four_h],
            );
        }
        // dh_{t-1} = da_t · W_hh
        gemm(
            nb,
            h,
            four_h,
            &mut dh_next,
            h,
            false,
            &dxp[t * four_h..],
            t_len * four_h,
            1,
            whh,
            h,
            1,
            1,
        );
    }
    for da in dxp.chunks_exact(four_h) {
        for (s, &d) in r.dbias.iter_mut().zip(da) {
            *s += d;
        }
    }
    for bi in 0..nb {
        for t in 0..t_len {
            let dst = &mut r.h_prev[(bi * t_len + t) * h..][..h];
            if t == 0 {
                dst.copy_from_slice(&r.h0[bi * h..][..h]);
            } else {
                dst.copy_from_slice(&r.hs[(bi * t_len + t - 1) * h..][..h]);
            }
        }
    }
}

impl CustomOp3 for LstmSeq {
    fn name(&self) -> &'static str {
        "lstm-seq"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (b, t_len, four_h) = l1.shape().dims3()?;
        let h = four_h / 4;
        let (xp, whh, bias) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        if whh.len() != four_h * h || bias.len() != four_h || self.state.len() != 2 * b * h {
            candle_core::bail!("lstm: shapes do not match");
        }
        let (h0, c0) = self.state.split_at(b * h);
        // Transposing costs one pass over W_hh; worth it over a window, not for one step
        // (sampling runs one character at a time).
        let wt_owned;
        let (wt, wt_rs, wt_cs) = if t_len >= 4 {
            let mut wt = vec![0f32; four_h * h];
            for (n, w_row) in whh.chunks_exact(h).enumerate() {
                for (k, &w) in w_row.iter().enumerate() {
                    wt[k * four_h + n] = w;
                }
            }
            wt_owned = wt;
            (&wt_owned[..], four_h, 1)
        } else {
            (whh, 1, h)
        };
        let mut hs = vec![0f32; b * t_len * h];
        let mut acts = vec![0f32; b * t_len * 5 * h];
        let groups = row_groups(b, rayon::current_num_threads());
        let jobs: Vec<_> = groups
            .iter()
            .zip(split_rows(&mut hs, &groups, t_len * h))
            .zip(split_rows(&mut acts, &groups, t_len * 5 * h))
            .map(|((g, hs), acts)| RowsFwd {
                xp: &xp[g.start * t_len * four_h..g.end * t_len * four_h],
                h0: &h0[g.start * h..g.end * h],
                c0: &c0[g.start * h..g.end * h],
                hs,
                acts,
            })
            .collect();
        jobs.into_par_iter()
            .for_each(|r| forward_rows(r, (wt, wt_rs, wt_cs), bias, h, t_len));
        *saved(&self.acts, "lstm")? = acts;
        Ok((CpuStorage::F32(hs), Shape::from((b, t_len, h))))
    }

    fn bwd(
        &self,
        _xproj: &Tensor,
        w_hh: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        use rayon::prelude::*;
        let (b, t_len, h) = res.dims3()?;
        let four_h = 4 * h;
        let acts = std::mem::take(&mut *saved(&self.acts, "lstm")?);
        if acts.len() != b * t_len * 5 * h {
            candle_core::bail!("lstm: backward ran twice or without forward");
        }
        let hs = res.flatten_all()?.to_vec1::<f32>()?;
        let dhs = grad_res.flatten_all()?.to_vec1::<f32>()?;
        let whh = w_hh.flatten_all()?.to_vec1::<f32>()?;
        let (h0, c0) = self.state.split_at(b * h);
        let threads = rayon::current_num_threads();

        let mut dxp = vec![0f32; b * t_len * four_h];
        let mut h_prev = vec![0f32; b * t_len * h];
        let groups = row_groups(b, threads);
        let mut dbias_parts = vec![0f32; groups.len() * four_h];
        let jobs: Vec<_> = groups
            .iter()
            .zip(split_rows(&mut dxp, &groups, t_len * four_h))
            .zip(dbias_parts.chunks_exact_mut(four_h))
            .zip(split_rows(&mut h_prev, &groups, t_len * h))
            .map(|(((g, dxp), dbias), h_prev)| RowsBwd {
                acts: &acts[g.start * t_len * 5 * h..g.end * t_len * 5 * h],
                hs: &hs[g.start * t_len * h..g.end * t_len * h],
                dhs: &dhs[g.start * t_len * h..g.end * t_len * h],
                h0: &h0[g.start * h..g.end * h],
                c0: &c0[g.start * h..g.end * h],
                dxp,
                dbias,
                h_prev,
            })
            .collect();
        jobs.into_par_iter()
            .for_each(|r| backward_rows(r, &whh, h, t_len));
        let mut dbias = vec![0f32; four_h];
        for part in dbias_parts.chunks_exact(four_h) {
            for (s, &d) in dbias.iter_mut().zip(part) {
                *s += d;
            }
        }
        // dW_hh = Σ_t da_tᵀ · h_{t-1}, as one GEMM over all (b, t) rows.
        let mut dwhh = vec![0f32; four_h * h];
        gemm(
            four_h,
            h,
            b * t_len,
            &mut dwhh,
            h,
            false,
            &dxp,
            1,
            four_h,
            &h_prev,
            h,
            1,
            threads,
        );
        let dev = res.device();
        Ok((
            Some(Tensor::from_vec(dxp, (b, t_len, four_h), dev)?),
            Some(Tensor::from_vec(dwhh, (four_h, h), dev)?),
            Some(Tensor::from_vec(dbias, four_h, dev)?),
        ))
    }
}

//! One LSTM layer over a whole window, in two implementations that must agree:
//!
//! - [`fused`]: a candle `CustomOp3` that runs the time loop itself on the CPU, forward and
//!   backward. The input projection of all steps is one big matmul done before the op (by candle,
//!   multi-threaded); inside, each step is one small GEMM into a preallocated buffer plus one pass
//!   over the gates, and backward-through-time computes `dW_hh` as a single GEMM after the loop.
//!   Per-step candle ops would instead build a graph of ~15 nodes per step, and the backward of
//!   slicing one step out of the projection allocates a zero-padded full-size gradient per step.
//! - [`reference`]: the same maths as plain candle ops, one step at a time. It runs on any device
//!   (it is the CUDA path for now) and is what the equivalence tests check the fused op against.
//!
//! Gate order is PyTorch's: input, forget, cell, output.

use super::kernels;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, D};

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
/// `xproj` is `[B, T, 4H]` (input projection plus bias), `w_hh` is `[4H, H]`, `h0`/`c0` `[B, H]`.
pub fn reference(xproj: &Tensor, w_hh: &Tensor, h0: &Tensor, c0: &Tensor) -> Result<LayerOut> {
    let (_b, t_len, four_h) = xproj.dims3()?;
    let h_dim = four_h / 4;
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
pub fn fused(xproj: &Tensor, w_hh: &Tensor, h0: &Tensor, c0: &Tensor) -> Result<LayerOut> {
    if !xproj.device().is_cpu() {
        return reference(xproj, w_hh, h0, c0);
    }
    let (_b, t_len, four_h) = xproj.dims3()?;
    let h_dim = four_h / 4;
    let state = Tensor::stack(&[h0, c0], 0)?;
    let out = xproj
        .contiguous()?
        .apply_op3(&w_hh.contiguous()?, &state.contiguous()?, LstmSeq)?;
    let hs = out.narrow(D::Minus1, 0, h_dim)?;
    let last = out.narrow(1, t_len - 1, 1)?.squeeze(1)?.detach();
    Ok(LayerOut {
        hs,
        h_last: last.narrow(D::Minus1, 0, h_dim)?,
        c_last: last.narrow(D::Minus1, h_dim, h_dim)?,
    })
}

/// The fused op. Inputs: `xproj [B,T,4H]`, `w_hh [4H,H]`, `state [2,B,H]` (h0, c0).
/// Output `[B, T, 6H]`: per step `h`, `c` and the four activated gates, which is everything the
/// backward pass needs, so nothing is recomputed.
struct LstmSeq;

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

/// Forward time loop over a group of `nb` rows: `xp [nb,T,4H]`, `h0`/`c0` `[nb,H]` → `out [nb,T,6H]`.
#[allow(clippy::too_many_arguments)]
fn forward_rows(
    xp: &[f32],
    whh: &[f32],
    h0: &[f32],
    c0: &[f32],
    out: &mut [f32],
    h: usize,
    t_len: usize,
) {
    let nb = h0.len() / h;
    let (four_h, w6) = (4 * h, 6 * h);
    let row = t_len * w6;
    let mut gates = vec![0f32; nb * four_h];
    for t in 0..t_len {
        for bi in 0..nb {
            let src = &xp[(bi * t_len + t) * four_h..][..four_h];
            gates[bi * four_h..][..four_h].copy_from_slice(src);
        }
        if t == 0 {
            gemm(
                nb, four_h, h, &mut gates, four_h, true, h0, h, 1, whh, 1, h, 1,
            );
        } else {
            let prev = &out[(t - 1) * w6..];
            gemm(
                nb, four_h, h, &mut gates, four_h, true, prev, row, 1, whh, 1, h, 1,
            );
        }
        for bi in 0..nb {
            let g = &gates[bi * four_h..][..four_h];
            let base = bi * row + t * w6;
            let (before, after) = out.split_at_mut(base);
            let c_prev = if t == 0 {
                &c0[bi * h..][..h]
            } else {
                &before[base - w6 + h..][..h]
            };
            kernels::cell_forward(g, c_prev, &mut after[..w6]);
        }
    }
}

/// Backward time loop over a group of rows (shapes as in [`forward_rows`], `gout` like `out`).
/// Writes `dxp [nb,T,4H]`, the gradient of the initial state (`dh0`, `dc0`, `[nb,H]`) and
/// `h_prev [nb,T,H]` (the `h_{t-1}` of every step, the right-hand side of `dW_hh`).
struct RowsBwd<'a> {
    out: &'a [f32],
    gout: &'a [f32],
    h0: &'a [f32],
    c0: &'a [f32],
    dxp: &'a mut [f32],
    dh: &'a mut [f32],
    dc: &'a mut [f32],
    h_prev: &'a mut [f32],
}

fn backward_rows(r: RowsBwd, whh: &[f32], h: usize, t_len: usize) {
    let (four_h, w6) = (4 * h, 6 * h);
    let row = t_len * w6;
    let nb = r.h0.len() / h;
    let (out, gout, c0) = (r.out, r.gout, r.c0);
    let (dxp, dh_next, dc_next) = (r.dxp, r.dh, r.dc);
    for t in (0..t_len).rev() {
        for bi in 0..nb {
            let base = bi * row + t * w6;
            let c_prev = if t == 0 {
                &c0[bi * h..][..h]
            } else {
                &out[base - w6 + h..][..h]
            };
            kernels::cell_backward(
                &out[base..base + w6],
                &gout[base..base + w6],
                c_prev,
                &mut dh_next[bi * h..][..h],
                &mut dc_next[bi * h..][..h],
                &mut dxp[(bi * t_len + t) * four_h..][..four_h],
            );
        }
        // dh_{t-1} = da_t · W_hh
        let da_t = &dxp[t * four_h..];
        gemm(
            nb,
            h,
            four_h,
            dh_next,
            h,
            false,
            da_t,
            t_len * four_h,
            1,
            whh,
            h,
            1,
            1,
        );
    }
    for bi in 0..nb {
        for t in 0..t_len {
            let dst = &mut r.h_prev[(bi * t_len + t) * h..][..h];
            if t == 0 {
                dst.copy_from_slice(&r.h0[bi * h..][..h]);
            } else {
                dst.copy_from_slice(&out[bi * row + (t - 1) * w6..][..h]);
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
        let (xp, whh, state) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let (h0, c0) = state.split_at(b * h);
        let w6 = 6 * h;
        let mut out = vec![0f32; b * t_len * w6];
        let groups = row_groups(b, candle_core::utils::get_num_threads());
        let outs = split_rows(&mut out, &groups, t_len * w6);
        groups.par_iter().zip(outs).for_each(|(g, out)| {
            forward_rows(
                &xp[g.start * t_len * four_h..g.end * t_len * four_h],
                whh,
                &h0[g.start * h..g.end * h],
                &c0[g.start * h..g.end * h],
                out,
                h,
                t_len,
            )
        });
        Ok((CpuStorage::F32(out), Shape::from((b, t_len, w6))))
    }

    fn bwd(
        &self,
        _xproj: &Tensor,
        w_hh: &Tensor,
        state: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        use rayon::prelude::*;
        let (b, t_len, w6) = res.dims3()?;
        let h = w6 / 6;
        let four_h = 4 * h;
        let out = res.flatten_all()?.to_vec1::<f32>()?;
        let gout = grad_res.flatten_all()?.to_vec1::<f32>()?;
        let whh = w_hh.flatten_all()?.to_vec1::<f32>()?;
        let st = state.flatten_all()?.to_vec1::<f32>()?;
        let (h0, c0) = st.split_at(b * h);
        let threads = candle_core::utils::get_num_threads();

        let mut dxp = vec![0f32; b * t_len * four_h];
        // [dh0 (b×h) | dc0 (b×h)], the layout of the state input's gradient.
        let mut dstate = vec![0f32; 2 * b * h];
        let mut h_prev = vec![0f32; b * t_len * h];
        let groups = row_groups(b, threads);
        let (dh_all, dc_all) = dstate.split_at_mut(b * h);
        let jobs: Vec<_> = groups
            .iter()
            .zip(split_rows(&mut dxp, &groups, t_len * four_h))
            .zip(split_rows(dh_all, &groups, h))
            .zip(split_rows(dc_all, &groups, h))
            .zip(split_rows(&mut h_prev, &groups, t_len * h))
            .map(|((((g, dxp), dh), dc), h_prev)| RowsBwd {
                out: &out[g.start * t_len * w6..g.end * t_len * w6],
                gout: &gout[g.start * t_len * w6..g.end * t_len * w6],
                h0: &h0[g.start * h..g.end * h],
                c0: &c0[g.start * h..g.end * h],
                dxp,
                dh,
                dc,
                h_prev,
            })
            .collect();
        jobs.into_par_iter()
            .for_each(|r| backward_rows(r, &whh, h, t_len));
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
            Some(Tensor::from_vec(dstate, (2, b, h), dev)?),
        ))
    }
}

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

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// tanh through one `exp`: libm's `tanhf` goes through `expm1f` and was an eighth of a step.
/// The absolute error stays below 1e-7; `x` is clamped so `exp` cannot overflow.
#[inline]
fn tanh(x: f32) -> f32 {
    let e = (2.0 * x.clamp(-15.0, 15.0)).exp();
    (e - 1.0) / (e + 1.0)
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
        let (b, t_len, four_h) = l1.shape().dims3()?;
        let h = four_h / 4;
        let (xp, whh, state) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let (h0, c0) = state.split_at(b * h);
        let w6 = 6 * h;
        let row = t_len * w6;
        let mut out = vec![0f32; b * row];
        let mut gates = vec![0f32; b * four_h];
        for t in 0..t_len {
            for bi in 0..b {
                let src = &xp[(bi * t_len + t) * four_h..][..four_h];
                gates[bi * four_h..][..four_h].copy_from_slice(src);
            }
            if t == 0 {
                gemm(
                    b, four_h, h, &mut gates, four_h, true, h0, h, 1, whh, 1, h, 1,
                );
            } else {
                let prev = &out[(t - 1) * w6..];
                gemm(
                    b, four_h, h, &mut gates, four_h, true, prev, row, 1, whh, 1, h, 1,
                );
            }
            for bi in 0..b {
                let g = &gates[bi * four_h..][..four_h];
                let base = bi * row + t * w6;
                for j in 0..h {
                    let c_prev = if t == 0 {
                        c0[bi * h + j]
                    } else {
                        out[base - w6 + h + j]
                    };
                    let i = sigmoid(g[j]);
                    let f = sigmoid(g[h + j]);
                    let gg = tanh(g[2 * h + j]);
                    let o = sigmoid(g[3 * h + j]);
                    let c = f * c_prev + i * gg;
                    let o_row = &mut out[base..base + w6];
                    o_row[j] = o * tanh(c);
                    o_row[h + j] = c;
                    o_row[2 * h + j] = i;
                    o_row[3 * h + j] = f;
                    o_row[4 * h + j] = gg;
                    o_row[5 * h + j] = o;
                }
            }
        }
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
        let (b, t_len, w6) = res.dims3()?;
        let h = w6 / 6;
        let four_h = 4 * h;
        let row = t_len * w6;
        let out = res.flatten_all()?.to_vec1::<f32>()?;
        let gout = grad_res.flatten_all()?.to_vec1::<f32>()?;
        let whh = w_hh.flatten_all()?.to_vec1::<f32>()?;
        let st = state.flatten_all()?.to_vec1::<f32>()?;
        let (h0, c0) = st.split_at(b * h);
        let threads = candle_core::utils::get_num_threads();

        let mut dxp = vec![0f32; b * t_len * four_h];
        let mut dh_next = vec![0f32; b * h];
        let mut dc_next = vec![0f32; b * h];
        for t in (0..t_len).rev() {
            for bi in 0..b {
                let base = bi * row + t * w6;
                let o_row = &out[base..base + w6];
                let g_row = &gout[base..base + w6];
                let da = &mut dxp[(bi * t_len + t) * four_h..][..four_h];
                for j in 0..h {
                    let c = o_row[h + j];
                    let (i, f, g, o) = (
                        o_row[2 * h + j],
                        o_row[3 * h + j],
                        o_row[4 * h + j],
                        o_row[5 * h + j],
                    );
                    let c_prev = if t == 0 {
                        c0[bi * h + j]
                    } else {
                        out[base - w6 + h + j]
                    };
                    let tc = tanh(c);
                    let dh = g_row[j] + dh_next[bi * h + j];
                    let dc = dc_next[bi * h + j] + g_row[h + j] + dh * o * (1.0 - tc * tc);
                    dc_next[bi * h + j] = dc * f;
                    da[j] = dc * g * i * (1.0 - i);
                    da[h + j] = dc * c_prev * f * (1.0 - f);
                    da[2 * h + j] = dc * i * (1.0 - g * g);
                    da[3 * h + j] = dh * tc * o * (1.0 - o);
                }
            }
            // dh_{t-1} = da_t · W_hh
            let da_t = &dxp[t * four_h..];
            gemm(
                b,
                h,
                four_h,
                &mut dh_next,
                h,
                false,
                da_t,
                t_len * four_h,
                1,
                &whh,
                h,
                1,
                1,
            );
        }
        // dW_hh = Σ_t da_tᵀ · h_{t-1}, as one GEMM over all (b, t) rows.
        let mut h_prev = vec![0f32; b * t_len * h];
        for bi in 0..b {
            for t in 0..t_len {
                let dst = &mut h_prev[(bi * t_len + t) * h..][..h];
                if t == 0 {
                    dst.copy_from_slice(&h0[bi * h..][..h]);
                } else {
                    dst.copy_from_slice(&out[bi * row + (t - 1) * w6..][..h]);
                }
            }
        }
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
        let mut dstate = dh_next;
        dstate.extend_from_slice(&dc_next);
        Ok((
            Some(Tensor::from_vec(dxp, (b, t_len, four_h), dev)?),
            Some(Tensor::from_vec(dwhh, (four_h, h), dev)?),
            Some(Tensor::from_vec(dstate, (2, b, h), dev)?),
        ))
    }
}

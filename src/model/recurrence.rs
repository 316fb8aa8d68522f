//! The LSTM time loop on the CPU, forward and backward through time, for one group of batch rows.
//!
//! Each step is a small GEMM (`h_{t-1} · W_hhᵀ`, a few rows by `4H`) followed by the gate
//! nonlinearities. A general GEMM pays per call for packing and blocking that such a small
//! product cannot amortise, so `W_hh` is packed once per window into the layout a register tile
//! wants, and the tile is computed directly:
//!
//! - forward: a tile is `MR` batch rows × the four gates of `LANES` hidden units, so when the
//!   K loop ends the registers hold exactly what one cell update needs; the cell runs on the
//!   tile as it leaves the registers (the GEMM's epilogue) and writes `c`, the activated gates and
//!   `h`, never the pre-activations.
//! - backward: `dh_{t-1} = da_t · W_hh`, tiles of `MR` rows × 4 vectors of `dh`, then the cell's
//!   backward over each row while it is in L1. `dW_hh` is one large GEMM after the loop
//!   (the caller's), where it runs at full speed.
//!
//! Layouts (time-major, `n = t·nb + b`): `hs [(T+1)·nb, Hp]` with block 0 = `h_0`; `acts
//! [T·nb, 5·Hp]` = `c i f g o`; gate rows `[4·Hp]` = `i f g o`. `Hp` is `H` rounded up to 16;
//! padded units have zero weights and stay exactly 0, so they never reach a real unit.

use super::kernels;
use super::simd::{dispatch, Kernel, Level, Simd};

/// `W_hh` `[4H, H]` packed for the forward tile: per block of `lanes` hidden units, `H` rows of
/// `4·lanes` floats (`i f g o` of those units), zero for padded units.
pub fn pack_forward(w_hh: &[f32], h: usize, hp: usize, lanes: usize, out: &mut Vec<f32>) {
    assert_eq!(w_hh.len(), 4 * h * h, "pack_forward: W_hh is not [4H, H]");
    let blocks = hp / lanes;
    out.clear();
    out.resize(blocks * h * 4 * lanes, 0.0);
    for jb in 0..blocks {
        for u in 0..lanes {
            let unit = jb * lanes + u;
            if unit >= h {
                continue;
            }
            for q in 0..4 {
                let row = &w_hh[(q * h + unit) * h..][..h];
                let base = jb * h * 4 * lanes + q * lanes + u;
                for (k, &w) in row.iter().enumerate() {
                    out[base + k * 4 * lanes] = w;
                }
            }
        }
    }
}

/// `W_hh` packed for the backward tile: per block of `4·lanes` output columns (the last may be
/// narrower), `4·Hp` rows (one per gate unit, padded ones zero) of that block's columns.
pub fn pack_backward(w_hh: &[f32], h: usize, hp: usize, lanes: usize, out: &mut Vec<f32>) {
    assert_eq!(w_hh.len(), 4 * h * h, "pack_backward: W_hh is not [4H, H]");
    out.clear();
    out.resize(4 * hp * hp, 0.0);
    let mut base = 0;
    for c0 in (0..hp).step_by(4 * lanes) {
        let width = (4 * lanes).min(hp - c0);
        for q in 0..4 {
            for u in 0..h {
                let src = &w_hh[(q * h + u) * h..][..h];
                let dst = &mut out[base + (q * hp + u) * width..][..width];
                for (j, d) in dst.iter_mut().enumerate() {
                    if c0 + j < h {
                        *d = src[c0 + j];
                    }
                }
            }
        }
        base += 4 * hp * width;
    }
}

/// Where a step's input projection comes from.
#[derive(Clone, Copy)]
pub enum Input<'a> {
    /// `[T·nb, 4·Hp]` rows, in the time-major order of the group.
    Rows(&'a [f32]),
    /// Layer 0: row `ids[n]` of the `[U, 4·Hp]` table over the window's distinct characters.
    Table { table: &'a [f32], ids: &'a [u32] },
}

/// One group's forward pass through a layer.
pub struct Forward<'a> {
    pub t_len: usize,
    pub nb: usize,
    pub h: usize,
    pub hp: usize,
    pub input: Input<'a>,
    /// `[4·Hp]`
    pub bias: &'a [f32],
    /// [`pack_forward`] with the level's lanes.
    pub packed: &'a [f32],
    /// `[nb, Hp]`
    pub c0: &'a [f32],
    /// `[(T+1)·nb, Hp]`; block 0 holds `h_0` on entry.
    pub hs: &'a mut [f32],
    /// `[T·nb, 5·Hp]`
    pub acts: &'a mut [f32],
}

impl Forward<'_> {
    /// Runs the time loop with `level`'s instructions.
    pub fn run(self, level: Level) {
        let (n, hp) = (self.t_len * self.nb, self.hp);
        assert!(self.bias.len() == 4 * hp && self.c0.len() == self.nb * hp);
        assert!(self.hs.len() == (n + self.nb) * hp && self.acts.len() == n * 5 * hp);
        assert!(self.packed.len() == hp / level.lanes() * self.h * 4 * level.lanes());
        assert!(hp % 16 == 0 && self.h <= hp);
        match self.input {
            Input::Rows(r) => assert_eq!(r.len(), n * 4 * hp),
            Input::Table { table, ids } => {
                assert_eq!(ids.len(), n);
                assert!(ids
                    .iter()
                    .all(|&i| (i as usize + 1) * 4 * hp <= table.len()));
            }
        }
        dispatch(level, self)
    }
}

impl Kernel for Forward<'_> {
    type Out = ();
    #[inline(always)]
    fn call<S: Simd>(mut self) {
        let l = S::LANES;
        let packed = self.packed;
        for t in 0..self.t_len {
            for jb in 0..self.hp / l {
                let panel = &packed[jb * self.h * 4 * l..][..self.h * 4 * l];
                let mut r0 = 0;
                while r0 < self.nb {
                    let mr = row_block(self.nb - r0, S::MR);
                    // SAFETY: `run` checked every buffer's size; rows r0..r0+mr < nb.
                    unsafe {
                        match mr {
                            1 => fwd_tile::<S, 1>(&mut self, panel, t, jb, r0),
                            2 => fwd_tile::<S, 2>(&mut self, panel, t, jb, r0),
                            3 => fwd_tile::<S, 3>(&mut self, panel, t, jb, r0),
                            4 => fwd_tile::<S, 4>(&mut self, panel, t, jb, r0),
                            5 => fwd_tile::<S, 5>(&mut self, panel, t, jb, r0),
                            _ => fwd_tile::<S, 6>(&mut self, panel, t, jb, r0),
                        }
                    }
                    r0 += mr;
                }
            }
        }
    }
}

/// Rows for the next tile: at most `mr`, and blocks of even size rather than a short last one
/// (16 rows with 6-row tiles: 6, 5, 5).
#[inline(always)]
fn row_block(left: usize, mr: usize) -> usize {
    let tiles = left.div_ceil(mr);
    left.div_ceil(tiles)
}

/// One forward tile: rows `r0..r0+MR` of step `t`, hidden units of block `jb`.
///
/// # Safety
/// The buffers have the sizes [`Forward::run`] checks, `r0 + MR ≤ nb`, `MR ≤ 6`.
// Register tiles read best indexed by row and vector, as the accumulators are laid out.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn fwd_tile<S: Simd, const MR: usize>(
    f: &mut Forward,
    panel: &[f32],
    t: usize,
    jb: usize,
    r0: usize,
) {
    let (l, hp, nb) = (S::LANES, f.hp, f.nb);
    let off = jb * l;
    let hs = f.hs.as_mut_ptr();
    let acts = f.acts.as_mut_ptr();
    // SAFETY (whole body): indices stay inside the checked buffers; rows of `hs` block t are
    // read and rows of block t+1 written, different memory.
    unsafe {
        let mut acc = [[S::zero(); 4]; MR];
        for (r, a) in acc.iter_mut().enumerate() {
            let n = t * nb + r0 + r;
            let src = match f.input {
                Input::Rows(x) => x.as_ptr().add(n * 4 * hp),
                Input::Table { table, ids } => table.as_ptr().add(ids[n] as usize * 4 * hp),
            };
            for (q, v) in a.iter_mut().enumerate() {
                let at = q * hp + off;
                *v = S::add(S::load(src.add(at)), S::load(f.bias.as_ptr().add(at)));
            }
        }
        let prev: [*const f32; MR] =
            std::array::from_fn(|r| hs.add((t * nb + r0 + r) * hp) as *const f32);
        let b = panel.as_ptr();
        for k in 0..f.h {
            let bk = b.add(k * 4 * l);
            let w = [
                S::load(bk),
                S::load(bk.add(l)),
                S::load(bk.add(2 * l)),
                S::load(bk.add(3 * l)),
            ];
            for r in 0..MR {
                let x = S::splat(*prev[r].add(k));
                for q in 0..4 {
                    acc[r][q] = S::madd(x, w[q], acc[r][q]);
                }
            }
        }
        let mut tile = [[0f32; 64]; MR];
        for r in 0..MR {
            for q in 0..4 {
                S::store(tile[r].as_mut_ptr().add(q * l), acc[r][q]);
            }
            let n = t * nb + r0 + r;
            let c_prev = if t == 0 {
                f.c0.as_ptr().add((r0 + r) * hp + off)
            } else {
                acts.add((n - nb) * 5 * hp + off) as *const f32
            };
            let out = acts.add(n * 5 * hp + off);
            let h_out = hs.add((n + nb) * hp + off);
            kernels::cell_block(l, &tile[r], c_prev, out, hp, h_out);
        }
    }
}

/// One group's backward pass through a layer.
pub struct Backward<'a> {
    pub t_len: usize,
    pub nb: usize,
    pub hp: usize,
    /// [`pack_backward`] with the level's lanes.
    pub packed: &'a [f32],
    /// `[T·nb, 5·Hp]` from the forward pass.
    pub acts: &'a [f32],
    /// `[nb, Hp]`
    pub c0: &'a [f32],
    /// `[T·nb, Hp]`: the gradient reaching each `h_t` from above.
    pub dh_above: &'a [f32],
    /// `[T·nb, 4·Hp]` out: the pre-activation gradients (= `d xproj`).
    pub da: &'a mut [f32],
    /// `[4·Hp]`, accumulated: the bias gradient.
    pub dbias: &'a mut [f32],
    /// `[nb, Hp]` scratch each: the gradient reaching `h_{t-1}` and `c_{t-1}` through time.
    pub dh_next: &'a mut [f32],
    pub dc_next: &'a mut [f32],
}

impl Backward<'_> {
    pub fn run(self, level: Level) {
        let (n, hp) = (self.t_len * self.nb, self.hp);
        assert!(self.acts.len() == n * 5 * hp && self.c0.len() == self.nb * hp);
        assert!(self.dh_above.len() == n * hp && self.da.len() == n * 4 * hp);
        assert!(self.dbias.len() == 4 * hp && self.packed.len() == 4 * hp * hp);
        assert!(self.dh_next.len() == self.nb * hp && self.dc_next.len() == self.nb * hp);
        assert!(hp % 16 == 0);
        dispatch(level, self)
    }
}

impl Kernel for Backward<'_> {
    type Out = ();
    #[inline(always)]
    fn call<S: Simd>(mut self) {
        let (nb, hp) = (self.nb, self.hp);
        self.dh_next.fill(0.0);
        self.dc_next.fill(0.0);
        for t in (0..self.t_len).rev() {
            for b in 0..nb {
                let n = t * nb + b;
                let c_prev = if t == 0 {
                    &self.c0[b * hp..][..hp]
                } else {
                    &self.acts[(n - nb) * 5 * hp..][..hp]
                };
                let da = &mut self.da[n * 4 * hp..][..4 * hp];
                kernels::cell_backward_row(
                    &self.acts[n * 5 * hp..][..5 * hp],
                    &self.dh_above[n * hp..][..hp],
                    c_prev,
                    &self.dh_next[b * hp..][..hp],
                    &mut self.dc_next[b * hp..][..hp],
                    da,
                );
                for (s, d) in self.dbias.iter_mut().zip(da.iter()) {
                    *s += d;
                }
            }
            if t > 0 {
                bwd_step::<S>(&mut self, t);
            }
        }
    }
}

/// `dh_next = da_t · W_hh` for every row of the group.
#[inline(always)]
fn bwd_step<S: Simd>(bw: &mut Backward, t: usize) {
    let (l, hp, nb) = (S::LANES, bw.hp, bw.nb);
    let mut base = 0;
    for c0 in (0..hp).step_by(4 * l) {
        let nv = (4 * l).min(hp - c0) / l;
        let panel = &bw.packed[base..][..4 * hp * nv * l];
        let mut r0 = 0;
        while r0 < nb {
            let mr = row_block(nb - r0, S::MR);
            if nv == 4 {
                bwd_rows::<S, 4>(bw, panel, 4 * l, (t, r0, c0), mr);
            } else {
                // The last block when it is narrower than 4 vectors (only when `Hp` is not a
                // multiple of `4·LANES`): one vector at a time, each a column of the panel.
                for v in 0..nv {
                    bwd_rows::<S, 1>(bw, &panel[v * l..], nv * l, (t, r0, c0 + v * l), mr);
                }
            }
            r0 += mr;
        }
        base += 4 * hp * nv * l;
    }
}

/// [`bwd_tile`] for the `mr` rows from `r0`, `NV` vectors of columns from `c0`.
#[inline(always)]
fn bwd_rows<S: Simd, const NV: usize>(
    bw: &mut Backward,
    panel: &[f32],
    stride: usize,
    (t, r0, c0): (usize, usize, usize),
    mr: usize,
) {
    let (l, hp) = (S::LANES, bw.hp);
    // `bwd_step` makes these hold by construction; checked in debug builds.
    debug_assert!(r0 + mr <= bw.nb && c0 + NV * l <= hp);
    debug_assert!(panel.len() >= (4 * hp - 1) * stride + NV * l);
    // SAFETY: `Backward::run` checked the sizes of `da` and `dh_next`; `bwd_step` passes rows
    // r0..r0+mr < nb, columns c0..c0+NV·l ≤ hp, and a panel of 4·hp rows of `stride` floats
    // whose first NV·l are these columns.
    unsafe {
        match mr {
            1 => bwd_tile::<S, 1, NV>(bw, panel, stride, t, r0, c0),
            2 => bwd_tile::<S, 2, NV>(bw, panel, stride, t, r0, c0),
            3 => bwd_tile::<S, 3, NV>(bw, panel, stride, t, r0, c0),
            4 => bwd_tile::<S, 4, NV>(bw, panel, stride, t, r0, c0),
            5 => bwd_tile::<S, 5, NV>(bw, panel, stride, t, r0, c0),
            _ => bwd_tile::<S, 6, NV>(bw, panel, stride, t, r0, c0),
        }
    }
}

/// `dh_next[rows, c0..c0+NV·LANES] = da_t[rows] · W_hh[:, cols]`; row `kk` of the panel holds
/// those columns at `kk · stride`.
///
/// # Safety
/// The sizes checked by [`Backward::run`]; `r0 + MR ≤ nb`, `c0 + NV·LANES ≤ hp`, and the panel
/// holds `(4·hp − 1)·stride + NV·LANES` floats.
// Register tiles read best indexed by row and vector, as the accumulators are laid out.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn bwd_tile<S: Simd, const MR: usize, const NV: usize>(
    bw: &mut Backward,
    panel: &[f32],
    stride: usize,
    t: usize,
    r0: usize,
    c0: usize,
) {
    let (l, hp, nb) = (S::LANES, bw.hp, bw.nb);
    // SAFETY: row (t·nb + r0 + r) of da has 4·hp floats; the panel's extent is the caller's
    // contract.
    unsafe {
        let mut acc = [[S::zero(); NV]; MR];
        let rows: [*const f32; MR] =
            std::array::from_fn(|r| bw.da.as_ptr().add((t * nb + r0 + r) * 4 * hp));
        let b = panel.as_ptr();
        for kk in 0..4 * hp {
            let bk = b.add(kk * stride);
            let w: [S::V; NV] = std::array::from_fn(|v| S::load(bk.add(v * l)));
            for r in 0..MR {
                let x = S::splat(*rows[r].add(kk));
                for v in 0..NV {
                    acc[r][v] = S::madd(x, w[v], acc[r][v]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let dst = bw.dh_next.as_mut_ptr().add((r0 + r) * hp + c0);
            for (v, x) in a.iter().enumerate() {
                S::store(dst.add(v * l), *x);
            }
        }
    }
}

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
//!
//! In bf16 ([`Packed::pack`] with bf16 products) both operands of the recurrent product are
//! rounded to bf16 and summed in fp32, as the other products are; `c`, the gates and `h` stay
//! fp32. With AVX512-BF16 the tiles run `vdpbf16ps` over pairs of K (`W_hh` packed as pairs, the
//! step's left operand converted once per step); without it the fp32 tiles run on the rounded
//! operands (the same products, another summation order). With AMX tiles a step's product is
//! one small AMX GEMM for all the group's rows (`W_hh` packed once per window), and the cell
//! (forward) reads the gates it stored: the register tiles' fused epilogue is given up for a
//! product on a unit 14× faster. Learning was the condition: over the
//! parity grid bf16's mean val loss stays within one fp32 seed std in every cell
//! (BENCHMARKS.md, "bf16 recurrent product").

use super::amx;
use super::bf16;
use super::gemm::{View, ViewMut};
use super::kernels;
use super::precision::Products;
use super::simd::{dispatch, Kernel, Level, Simd};

/// `W_hh` packed once per window for one direction of the time loop, in the run's precision.
pub enum Packed {
    /// fp32 tiles; `round`: the weights are rounded to bf16 and so is each step's left operand.
    F32 { w: Vec<f32>, round: bool },
    /// bf16 tiles: pairs along K, `lo | hi << 16`.
    Pairs(Vec<u32>),
    /// AMX tiles: `W_hhᵀ` (forward) or `W_hh` (backward), units padded to `Hp`, as the AMX
    /// GEMM's right operand; a step is one tile product, then the cell.
    Tiles(amx::PackedB),
}

impl Default for Packed {
    fn default() -> Packed {
        Packed::F32 {
            w: Vec::new(),
            round: false,
        }
    }
}

impl Packed {
    /// `W_hh` `[4H, H]` packed for the forward (`backward` false) or backward tiles at `level`.
    pub fn pack(
        &mut self,
        w_hh: &[f32],
        (h, hp): (usize, usize),
        level: Level,
        p: Products,
        backward: bool,
    ) {
        match p {
            Products::Bf16(bf16::Unit::Amx) if amx::available() => {
                let mut b = match std::mem::take(self) {
                    Packed::Tiles(b) => b,
                    _ => amx::PackedB::default(),
                };
                let padded;
                let w = if h == hp {
                    w_hh
                } else {
                    padded = pad_units(w_hh, h, hp);
                    &padded
                };
                let w = View::new(w, 4 * hp, hp, hp);
                b.pack(if backward { w } else { w.t() });
                *self = Packed::Tiles(b);
            }
            Products::Bf16(bf16::Unit::Native) if level.has_bf16() => {
                let mut out = match std::mem::take(self) {
                    Packed::Pairs(v) => v,
                    _ => Vec::new(),
                };
                if backward {
                    pack_backward_pairs(w_hh, h, hp, &mut out)
                } else {
                    pack_forward_pairs(w_hh, h, hp, &mut out)
                }
                *self = Packed::Pairs(out);
            }
            _ => {
                let round = p != Products::Fp32;
                let mut w = match std::mem::take(self) {
                    Packed::F32 { w, .. } => w,
                    _ => Vec::new(),
                };
                if backward {
                    pack_backward(w_hh, h, hp, level.lanes(), &mut w)
                } else {
                    pack_forward(w_hh, h, hp, level.lanes(), &mut w)
                }
                // Packing only moves values (and pads with zeros, which round to themselves), so
                // rounding the packed copy in place is rounding `W_hh`, without a second copy.
                if round {
                    w.iter_mut().for_each(|x| *x = bf16::round(*x));
                }
                *self = Packed::F32 { w, round };
            }
        }
    }
}

/// Two K values of a row as a bf16 pair, `lo | hi << 16` (`hi` absent past the end: zero).
fn pair(lo: f32, hi: Option<f32>) -> u32 {
    bf16::to_bits(lo) as u32 | (hi.map_or(0, bf16::to_bits) as u32) << 16
}

/// [`pack_forward`] as pairs for the bf16 tile: per block of 16 hidden units, `⌈H/2⌉` pairs of
/// K, each `4·16` lanes (`i f g o` of those units).
fn pack_forward_pairs(w_hh: &[f32], h: usize, hp: usize, out: &mut Vec<u32>) {
    assert_eq!(w_hh.len(), 4 * h * h, "pack_forward: W_hh is not [4H, H]");
    let kp = h.div_ceil(2);
    out.clear();
    out.resize(hp / 16 * kp * 64, 0);
    for unit in 0..h {
        let (jb, u) = (unit / 16, unit % 16);
        for q in 0..4 {
            let row = &w_hh[(q * h + unit) * h..][..h];
            for p in 0..kp {
                out[(jb * kp + p) * 64 + q * 16 + u] =
                    pair(row[2 * p], row.get(2 * p + 1).copied());
            }
        }
    }
}

/// [`pack_backward`] as pairs for the bf16 tile: per block of 64 output columns (the last may
/// be narrower), `2·Hp` pairs of gate rows (rows `2p`, `2p + 1`), each the block's columns.
fn pack_backward_pairs(w_hh: &[f32], h: usize, hp: usize, out: &mut Vec<u32>) {
    assert_eq!(w_hh.len(), 4 * h * h, "pack_backward: W_hh is not [4H, H]");
    // Gate row `kk = q·Hp + u` of `W_hh`, absent for padded units.
    let row = |kk: usize| {
        let (q, u) = (kk / hp, kk % hp);
        (u < h).then(|| &w_hh[(q * h + u) * h..][..h])
    };
    out.clear();
    out.resize(4 * hp * hp / 2, 0);
    let mut base = 0;
    for c0 in (0..hp).step_by(64) {
        let width = 64.min(hp - c0);
        let real = h.saturating_sub(c0).min(width);
        for p in 0..2 * hp {
            let (lo, hi) = (row(2 * p), row(2 * p + 1));
            let dst = &mut out[base + p * width..][..real];
            for (j, d) in dst.iter_mut().enumerate() {
                *d = pair(lo.map_or(0.0, |r| r[c0 + j]), hi.map(|r| r[c0 + j]));
            }
        }
        base += 2 * hp * width;
    }
}

/// Each step's left operand (`h_{t-1}` forward, `da_t` backward) in the product's precision:
/// rounded to bf16 for the fp32 tiles, or as pairs for the bf16 ones; the AMX product's gates.
/// One per group.
#[derive(Default)]
pub struct Scratch {
    rounded: Vec<f32>,
    pairs: Vec<u32>,
    gates: Vec<f32>,
}

/// `W_hh` `[4H, H]` as `[4·Hp, Hp]`, padded units' rows and columns zero.
fn pad_units(w_hh: &[f32], h: usize, hp: usize) -> Vec<f32> {
    let mut out = vec![0.0; 4 * hp * hp];
    for (row, src) in w_hh.chunks_exact(h).enumerate() {
        let (q, u) = (row / h, row % h);
        out[(q * hp + u) * hp..][..h].copy_from_slice(src);
    }
    out
}

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
    /// [`Packed::pack`] forward, at the level `run` is given.
    pub packed: &'a Packed,
    pub scratch: &'a mut Scratch,
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
        let (n, hp, h) = (self.t_len * self.nb, self.hp, self.h);
        assert!(self.bias.len() == 4 * hp && self.c0.len() == self.nb * hp);
        assert!(self.hs.len() == (n + self.nb) * hp && self.acts.len() == n * 5 * hp);
        assert!(hp % 16 == 0 && h <= hp);
        match self.input {
            Input::Rows(r) => assert_eq!(r.len(), n * 4 * hp),
            Input::Table { table, ids } => {
                assert_eq!(ids.len(), n);
                assert!(ids
                    .iter()
                    .all(|&i| (i as usize + 1) * 4 * hp <= table.len()));
            }
        }
        match self.packed {
            Packed::F32 { w, .. } => {
                assert!(w.len() == hp / level.lanes() * h * 4 * level.lanes());
                dispatch(level, self)
            }
            Packed::Tiles(b) => {
                assert_eq!(b.shape(), (hp, 4 * hp));
                dispatch(level, self)
            }
            Packed::Pairs(w) => {
                assert!(level.has_bf16() && w.len() == hp / 16 * h.div_ceil(2) * 64);
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the level has AVX512-BF16 (and the AVX-512 set); sizes checked above.
                unsafe {
                    native::forward(self)
                }
            }
        }
    }
}

impl Kernel for Forward<'_> {
    type Out = ();
    #[inline(always)]
    fn call<S: Simd>(mut self) {
        let l = S::LANES;
        if let Packed::Tiles(b) = self.packed {
            return self.tiles::<S>(b);
        }
        let Packed::F32 { w: packed, round } = self.packed else {
            return; // `run` sends the pairs to the bf16 tiles.
        };
        let mut rounded = std::mem::take(&mut self.scratch.rounded);
        let block = self.nb * self.hp;
        for t in 0..self.t_len {
            // The step's `h_{t-1}`: `hs` block t, or its bf16 rounding.
            let prev = if *round {
                rounded_rows(&self.hs[t * block..][..block], &mut rounded);
                rounded.as_ptr()
            } else {
                self.hs[t * block..].as_ptr()
            };
            for jb in 0..self.hp / l {
                let panel = &packed[jb * self.h * 4 * l..][..self.h * 4 * l];
                let mut r0 = 0;
                while r0 < self.nb {
                    let mr = row_block(self.nb - r0, S::MR);
                    let at = (t, jb, r0);
                    // SAFETY: `run` checked every buffer's size; rows r0..r0+mr < nb; `prev`
                    // holds nb rows of Hp, read only (tiles write `hs` block t+1).
                    unsafe {
                        match mr {
                            1 => fwd_tile::<S, 1>(&mut self, panel, prev, at),
                            2 => fwd_tile::<S, 2>(&mut self, panel, prev, at),
                            3 => fwd_tile::<S, 3>(&mut self, panel, prev, at),
                            4 => fwd_tile::<S, 4>(&mut self, panel, prev, at),
                            5 => fwd_tile::<S, 5>(&mut self, panel, prev, at),
                            _ => fwd_tile::<S, 6>(&mut self, panel, prev, at),
                        }
                    }
                    r0 += mr;
                }
            }
        }
        self.scratch.rounded = rounded;
    }
}

impl Forward<'_> {
    /// The time loop on AMX tiles: each step's gates for every row at once as one tile product
    /// (`h_{t-1} · W_hhᵀ`), then the cell from them, the input projection and the bias.
    #[inline(always)]
    fn tiles<S: Simd>(&mut self, b: &amx::PackedB) {
        let (l, nb, hp) = (S::LANES, self.nb, self.hp);
        let mut gates = std::mem::take(&mut self.scratch.gates);
        gates.resize(nb * 4 * hp, 0.0);
        for t in 0..self.t_len {
            let prev = View::new(&self.hs[t * nb * hp..][..nb * hp], nb, hp, hp);
            amx::matmul_packed(ViewMut::new(&mut gates, nb, 4 * hp, 4 * hp), prev, b, false);
            for jb in 0..hp / l {
                for r in 0..nb {
                    // SAFETY: `run` checked every buffer's size; row r < nb, units of block
                    // jb < Hp / LANES; `gates` holds nb rows of 4·Hp.
                    unsafe {
                        let mut acc = fwd_start::<S, 1>(self, t, jb, r);
                        let g = gates.as_ptr().add(r * 4 * hp + jb * l);
                        for (q, v) in acc[0].iter_mut().enumerate() {
                            *v = S::add(*v, S::load(g.add(q * hp)));
                        }
                        fwd_finish::<S, 1>(self, &acc, t, jb, r);
                    }
                }
            }
        }
        self.scratch.gates = gates;
    }
}

/// `src` rounded to bf16 into `out` (the left operand of an emulated bf16 product).
fn rounded_rows(src: &[f32], out: &mut Vec<f32>) {
    out.clear();
    out.extend(src.iter().map(|&x| bf16::round(x)));
}

/// Rows for the next tile: at most `mr`, and blocks of even size rather than a short last one
/// (16 rows with 6-row tiles: 6, 5, 5).
#[inline(always)]
fn row_block(left: usize, mr: usize) -> usize {
    let tiles = left.div_ceil(mr);
    left.div_ceil(tiles)
}

/// One forward tile: rows `r0..r0+MR` of step `t`, hidden units of block `jb`; `prev` is the
/// step's `h_{t-1}` (`nb` rows of `Hp`).
///
/// # Safety
/// The buffers have the sizes [`Forward::run`] checks, `r0 + MR ≤ nb`, `MR ≤ 6`.
#[inline(always)]
unsafe fn fwd_tile<S: Simd, const MR: usize>(
    f: &mut Forward,
    panel: &[f32],
    prev: *const f32,
    (t, jb, r0): (usize, usize, usize),
) {
    let l = S::LANES;
    // SAFETY (whole body): indices stay inside the checked buffers.
    unsafe {
        let mut acc = fwd_start::<S, MR>(f, t, jb, r0);
        let prev: [*const f32; MR] = std::array::from_fn(|r| prev.add((r0 + r) * f.hp));
        let b = panel.as_ptr();
        for k in 0..f.h {
            k_step::<S, MR, 4>(&mut acc, &prev, b.add(k * 4 * l), k);
        }
        fwd_finish::<S, MR>(f, &acc, t, jb, r0);
    }
}

/// A forward tile's accumulators before the product: the input projection plus the bias.
///
/// # Safety
/// As [`fwd_tile`].
#[inline(always)]
unsafe fn fwd_start<S: Simd, const MR: usize>(
    f: &Forward,
    t: usize,
    jb: usize,
    r0: usize,
) -> [[S::V; 4]; MR] {
    let (hp, off) = (f.hp, jb * S::LANES);
    // SAFETY: row t·nb + r0 + r of the input has 4·Hp floats; `run` checked the table's ids.
    unsafe {
        let mut acc = [[S::zero(); 4]; MR];
        for (r, a) in acc.iter_mut().enumerate() {
            let n = t * f.nb + r0 + r;
            let src = match f.input {
                Input::Rows(x) => x.as_ptr().add(n * 4 * hp),
                Input::Table { table, ids } => table.as_ptr().add(ids[n] as usize * 4 * hp),
            };
            for (q, v) in a.iter_mut().enumerate() {
                let at = q * hp + off;
                *v = S::add(S::load(src.add(at)), S::load(f.bias.as_ptr().add(at)));
            }
        }
        acc
    }
}

/// The cell on a finished tile (the GEMM's epilogue): writes `c i f g o` and `h_t`.
///
/// # Safety
/// As [`fwd_tile`].
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn fwd_finish<S: Simd, const MR: usize>(
    f: &mut Forward,
    acc: &[[S::V; 4]; MR],
    t: usize,
    jb: usize,
    r0: usize,
) {
    let (l, hp, nb) = (S::LANES, f.hp, f.nb);
    let off = jb * l;
    let hs = f.hs.as_mut_ptr();
    let acts = f.acts.as_mut_ptr();
    // SAFETY: rows of `hs` block t+1 and of `acts` step t, inside the checked buffers.
    unsafe {
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
    /// [`Packed::pack`] backward, at the level `run` is given.
    pub packed: &'a Packed,
    pub scratch: &'a mut Scratch,
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
        assert!(self.dh_next.len() == self.nb * hp && self.dc_next.len() == self.nb * hp);
        assert!(self.dbias.len() == 4 * hp && hp % 16 == 0);
        match self.packed {
            Packed::F32 { w, .. } => {
                assert!(w.len() == 4 * hp * hp);
                dispatch(level, self)
            }
            Packed::Tiles(b) => {
                assert_eq!(b.shape(), (4 * hp, hp));
                dispatch(level, self)
            }
            Packed::Pairs(w) => {
                assert!(level.has_bf16() && w.len() == 2 * hp * hp);
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the level has AVX512-BF16 (and the AVX-512 set); sizes checked above.
                unsafe {
                    native::backward(self)
                }
            }
        }
    }

    /// The time loop: the cell's backward row by row, then `dh_{t-1}` by the tiles of `S`, or
    /// the bf16 ones when `pairs` (only reached from inside the AVX512-BF16 function).
    #[inline(always)]
    fn time_loop<S: Simd>(&mut self, pairs: bool) {
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
            if t == 0 {
                continue;
            }
            if let Packed::Tiles(b) = self.packed {
                let block = nb * 4 * hp;
                let da = View::new(&self.da[t * block..][..block], nb, 4 * hp, 4 * hp);
                let dh = ViewMut::new(self.dh_next, nb, hp, hp);
                amx::matmul_packed(dh, da, b, false);
                continue;
            }
            #[cfg(target_arch = "x86_64")]
            if pairs {
                // SAFETY: `pairs` is only true inside `native::backward`, on a CPU with the
                // instructions; `run` checked the sizes.
                unsafe { native::bwd_step(self, t) };
                continue;
            }
            bwd_step::<S>(self, t);
        }
    }
}

impl Kernel for Backward<'_> {
    type Out = ();
    #[inline(always)]
    fn call<S: Simd>(mut self) {
        self.time_loop::<S>(false)
    }
}

/// `dh_next = da_t · W_hh` for every row of the group.
#[inline(always)]
fn bwd_step<S: Simd>(bw: &mut Backward, t: usize) {
    let (l, hp, nb) = (S::LANES, bw.hp, bw.nb);
    let Packed::F32 { w: packed, round } = bw.packed else {
        return; // `run` sends the pairs to the bf16 tiles.
    };
    let block = nb * 4 * hp;
    let mut rounded = std::mem::take(&mut bw.scratch.rounded);
    let rows = if *round {
        rounded_rows(&bw.da[t * block..][..block], &mut rounded);
        rounded.as_ptr()
    } else {
        bw.da[t * block..].as_ptr()
    };
    let mut base = 0;
    for c0 in (0..hp).step_by(4 * l) {
        let nv = (4 * l).min(hp - c0) / l;
        let panel = &packed[base..][..4 * hp * nv * l];
        let mut r0 = 0;
        while r0 < nb {
            let mr = row_block(nb - r0, S::MR);
            if nv == 4 {
                bwd_rows::<S, 4>(bw, panel, rows, 4 * l, (r0, c0), mr);
            } else {
                // The last block when it is narrower than 4 vectors (only when `Hp` is not a
                // multiple of `4·LANES`): one vector at a time, each a column of the panel.
                for v in 0..nv {
                    bwd_rows::<S, 1>(bw, &panel[v * l..], rows, nv * l, (r0, c0 + v * l), mr);
                }
            }
            r0 += mr;
        }
        base += 4 * hp * nv * l;
    }
    bw.scratch.rounded = rounded;
}

/// [`bwd_tile`] for the `mr` rows from `r0` of `rows` (the step's `da`, stride `4·Hp`), `NV`
/// vectors of columns from `c0`.
#[inline(always)]
fn bwd_rows<S: Simd, const NV: usize>(
    bw: &mut Backward,
    panel: &[f32],
    rows: *const f32,
    stride: usize,
    (r0, c0): (usize, usize),
    mr: usize,
) {
    let (l, hp) = (S::LANES, bw.hp);
    // `bwd_step` makes these hold by construction; checked in debug builds.
    debug_assert!(r0 + mr <= bw.nb && c0 + NV * l <= hp);
    debug_assert!(panel.len() >= (4 * hp - 1) * stride + NV * l);
    let at = (rows, r0, c0);
    // SAFETY: `Backward::run` checked the sizes of `da` and `dh_next`; `bwd_step` passes rows
    // r0..r0+mr < nb of a step's `da` (or its rounding), columns c0..c0+NV·l ≤ hp, and a panel
    // of 4·hp rows of `stride` floats whose first NV·l are these columns.
    unsafe {
        match mr {
            1 => bwd_tile::<S, 1, NV>(bw, panel, stride, at),
            2 => bwd_tile::<S, 2, NV>(bw, panel, stride, at),
            3 => bwd_tile::<S, 3, NV>(bw, panel, stride, at),
            4 => bwd_tile::<S, 4, NV>(bw, panel, stride, at),
            5 => bwd_tile::<S, 5, NV>(bw, panel, stride, at),
            _ => bwd_tile::<S, 6, NV>(bw, panel, stride, at),
        }
    }
}

/// `dh_next[rows, c0..c0+NV·LANES] = da_t[rows] · W_hh[:, cols]`; row `kk` of the panel holds
/// those columns at `kk · stride`.
///
/// # Safety
/// The sizes checked by [`Backward::run`]; `rows` holds `nb` rows of `4·hp`; `r0 + MR ≤ nb`,
/// `c0 + NV·LANES ≤ hp`, and the panel holds `(4·hp − 1)·stride + NV·LANES` floats.
#[inline(always)]
unsafe fn bwd_tile<S: Simd, const MR: usize, const NV: usize>(
    bw: &mut Backward,
    panel: &[f32],
    stride: usize,
    (rows, r0, c0): (*const f32, usize, usize),
) {
    let (l, hp) = (S::LANES, bw.hp);
    // SAFETY: the caller's contract.
    unsafe {
        let rows: [*const f32; MR] = std::array::from_fn(|r| rows.add((r0 + r) * 4 * hp));
        let b = panel.as_ptr();
        // The first product seeds the accumulators: zeros live across the loop are constants
        // the register allocator chose to spill (three of the AVX2 tile's twelve, each then a
        // store and a reload on its chain every iteration: 26 GFLOP/s on a Zen 1, not 33).
        let mut acc = [[S::zero(); NV]; MR];
        k_step::<S, MR, NV>(&mut acc, &rows, b, 0);
        for kk in 1..4 * hp {
            k_step::<S, MR, NV>(&mut acc, &rows, b.add(kk * stride), kk);
        }
        for (r, a) in acc.iter().enumerate() {
            let dst = bw.dh_next.as_mut_ptr().add((r0 + r) * hp + c0);
            for (v, x) in a.iter().enumerate() {
                S::store(dst.add(v * l), *x);
            }
        }
    }
}

/// One K step of a register tile (forward and backward): `acc += rows[·][kk] ⊗ bk[0..NV·LANES]`.
/// Broadcasts first, then one weight vector at a time: `MR` + `NV·MR` + 1 registers, 16 for
/// AVX2's 3 × 4 tile. The four weight vectors loaded up front made it 17, and the compiler
/// shuffled and spilled accumulators every step (19 GFLOP/s forward on a Zen 1, now 29).
///
/// # Safety
/// `rows[r]` holds `kk + 1` floats and `bk` holds `NV·LANES`.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn k_step<S: Simd, const MR: usize, const NV: usize>(
    acc: &mut [[S::V; NV]; MR],
    rows: &[*const f32; MR],
    bk: *const f32,
    kk: usize,
) {
    // SAFETY: the caller's contract.
    unsafe {
        let x: [S::V; MR] = std::array::from_fn(|r| S::splat(*rows[r].add(kk)));
        for v in 0..NV {
            let w = S::load(bk.add(v * S::LANES));
            for r in 0..MR {
                acc[r][v] = S::madd(x[r], w, acc[r][v]);
            }
        }
    }
}

/// The bf16 tiles: `vdpbf16ps` over pairs of K, the same register tiles, starts and cell
/// epilogue as the fp32 ones at the AVX-512 level.
#[cfg(target_arch = "x86_64")]
mod native {
    use super::{fwd_finish, fwd_start, row_block, Backward, Forward, Packed};
    use crate::model::bf16::native::row_pairs;
    use crate::model::simd::Avx512;
    use std::arch::x86_64::*;

    /// 32 bf16 packed as pairs in 16 lanes, as `vdpbf16ps` takes them.
    #[inline(always)]
    fn bh(v: __m512i) -> __m512bh {
        // SAFETY: both are 512 bits of plain data.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }

    /// `rows` rows of `len` floats (`len` a multiple of 16) as `len / 2` bf16 pairs each.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn to_pairs(src: &[f32], rows: usize, len: usize, out: &mut Vec<u32>) {
        let half = len / 2;
        out.resize(rows * half, 0);
        let mut lanes = [0u32; 16];
        for r in 0..rows {
            let row = &src[r * len..][..len];
            for i in (0..len).step_by(32) {
                let n = (len - i).min(32);
                row_pairs(&row[i..i + n], &mut lanes);
                out[r * half + i / 2..][..n / 2].copy_from_slice(&lanes[..n / 2]);
            }
        }
    }

    /// The forward time loop on bf16 tiles.
    ///
    /// # Safety
    /// The CPU has AVX512-BF16 and the AVX-512 set; [`Forward::run`] checked the sizes.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,avx512bf16")]
    pub(super) unsafe fn forward(mut f: Forward) {
        let Packed::Pairs(w) = f.packed else {
            return;
        };
        let (nb, hp, kp) = (f.nb, f.hp, f.h.div_ceil(2));
        let mut pairs = std::mem::take(&mut f.scratch.pairs);
        for t in 0..f.t_len {
            to_pairs(&f.hs[t * nb * hp..][..nb * hp], nb, hp, &mut pairs);
            for jb in 0..hp / 16 {
                let panel = &w[jb * kp * 64..][..kp * 64];
                let mut r0 = 0;
                while r0 < nb {
                    let mr = row_block(nb - r0, 6);
                    let at = (t, jb, r0);
                    match mr {
                        1 => fwd_tile::<1>(&mut f, panel, &pairs, at),
                        2 => fwd_tile::<2>(&mut f, panel, &pairs, at),
                        3 => fwd_tile::<3>(&mut f, panel, &pairs, at),
                        4 => fwd_tile::<4>(&mut f, panel, &pairs, at),
                        5 => fwd_tile::<5>(&mut f, panel, &pairs, at),
                        _ => fwd_tile::<6>(&mut f, panel, &pairs, at),
                    }
                    r0 += mr;
                }
            }
        }
        f.scratch.pairs = pairs;
    }

    /// [`super::fwd_tile`] over pairs: `pairs` holds the step's `h_{t-1}`, `Hp / 2` per row.
    // Register tiles read best indexed by row and vector, as the accumulators are laid out.
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn fwd_tile<const MR: usize>(
        f: &mut Forward,
        panel: &[u32],
        pairs: &[u32],
        (t, jb, r0): (usize, usize, usize),
    ) {
        let kp = f.h.div_ceil(2);
        let mut acc = fwd_start::<Avx512, MR>(f, t, jb, r0);
        assert!(panel.len() >= kp * 64 && pairs.len() >= (r0 + MR) * f.hp / 2);
        let a: [*const u32; MR] = std::array::from_fn(|r| pairs.as_ptr().add((r0 + r) * f.hp / 2));
        let b = panel.as_ptr();
        for p in 0..kp {
            let bp = b.add(p * 64);
            let w: [__m512bh; 4] = [
                bh(_mm512_loadu_si512(bp.cast())),
                bh(_mm512_loadu_si512(bp.add(16).cast())),
                bh(_mm512_loadu_si512(bp.add(32).cast())),
                bh(_mm512_loadu_si512(bp.add(48).cast())),
            ];
            for r in 0..MR {
                let x: __m512bh = bh(_mm512_set1_epi32(*a[r].add(p) as i32));
                for q in 0..4 {
                    acc[r][q] = _mm512_dpbf16_ps(acc[r][q], x, w[q]);
                }
            }
        }
        fwd_finish::<Avx512, MR>(f, &acc, t, jb, r0);
    }

    /// The backward time loop with bf16 tiles for `dh_{t-1}`.
    ///
    /// # Safety
    /// As [`forward`], with [`Backward::run`]'s checks.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,avx512bf16")]
    pub(super) unsafe fn backward(mut bw: Backward) {
        bw.time_loop::<Avx512>(true)
    }

    /// `dh_next = da_t · W_hh` on bf16 tiles.
    ///
    /// # Safety
    /// As [`backward`].
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,avx512bf16")]
    pub(super) unsafe fn bwd_step(bw: &mut Backward, t: usize) {
        let Packed::Pairs(w) = bw.packed else {
            return;
        };
        let (nb, hp) = (bw.nb, bw.hp);
        let mut pairs = std::mem::take(&mut bw.scratch.pairs);
        to_pairs(
            &bw.da[t * nb * 4 * hp..][..nb * 4 * hp],
            nb,
            4 * hp,
            &mut pairs,
        );
        let mut base = 0;
        for c0 in (0..hp).step_by(64) {
            let width = 64.min(hp - c0);
            let panel = &w[base..][..2 * hp * width];
            let mut r0 = 0;
            while r0 < nb {
                let mr = row_block(nb - r0, 6);
                let at = (&pairs[..], width, r0, c0);
                match width / 16 {
                    4 => bwd_rows::<4>(bw, panel, at, mr),
                    3 => bwd_rows::<3>(bw, panel, at, mr),
                    2 => bwd_rows::<2>(bw, panel, at, mr),
                    _ => bwd_rows::<1>(bw, panel, at, mr),
                }
                r0 += mr;
            }
            base += 2 * hp * width;
        }
        bw.scratch.pairs = pairs;
    }

    type At<'p> = (&'p [u32], usize, usize, usize);

    #[inline(always)]
    unsafe fn bwd_rows<const NV: usize>(bw: &mut Backward, panel: &[u32], at: At, mr: usize) {
        match mr {
            1 => bwd_tile::<1, NV>(bw, panel, at),
            2 => bwd_tile::<2, NV>(bw, panel, at),
            3 => bwd_tile::<3, NV>(bw, panel, at),
            4 => bwd_tile::<4, NV>(bw, panel, at),
            5 => bwd_tile::<5, NV>(bw, panel, at),
            _ => bwd_tile::<6, NV>(bw, panel, at),
        }
    }

    /// [`super::bwd_tile`] over pairs: `pairs` holds the step's `da`, `2·Hp` per row; row `p`
    /// of the panel holds the block's `width` columns of gate rows `2p`, `2p + 1`.
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn bwd_tile<const MR: usize, const NV: usize>(
        bw: &mut Backward,
        panel: &[u32],
        (pairs, width, r0, c0): At,
    ) {
        let (hp, k2) = (bw.hp, 2 * bw.hp);
        assert!(panel.len() >= k2 * width && NV * 16 <= width && c0 + width <= hp);
        assert!(pairs.len() >= (r0 + MR) * k2 && (r0 + MR) * hp <= bw.dh_next.len());
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        let a: [*const u32; MR] = std::array::from_fn(|r| pairs.as_ptr().add((r0 + r) * k2));
        let b = panel.as_ptr();
        for p in 0..k2 {
            let bp = b.add(p * width);
            let mut w: [__m512bh; NV] = [bh(_mm512_setzero_si512()); NV];
            for v in 0..NV {
                w[v] = bh(_mm512_loadu_si512(bp.add(v * 16).cast()));
            }
            for r in 0..MR {
                let x: __m512bh = bh(_mm512_set1_epi32(*a[r].add(p) as i32));
                for v in 0..NV {
                    acc[r][v] = _mm512_dpbf16_ps(acc[r][v], x, w[v]);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            let dst = bw.dh_next.as_mut_ptr().add((r0 + r) * hp + c0);
            for (v, x) in row.iter().enumerate() {
                _mm512_storeu_ps(dst.add(v * 16), *x);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::test_values as values;

    /// `values` with every padded unit (index `% hp ≥ h`) zero, as the model keeps them.
    fn padded(n: usize, seed: u64, (h, hp): (usize, usize)) -> Vec<f32> {
        let mut v = values(n, seed, 1.0);
        v.iter_mut().enumerate().for_each(|(i, x)| {
            if i % hp >= h {
                *x = 0.0
            }
        });
        v
    }

    /// Rows × hidden sizes that reach every tile: an odd `H` (a half pair), padding to 16, a
    /// backward block narrower than 64 columns, row counts that split unevenly.
    const SHAPES: &[(usize, usize, usize)] =
        &[(5, 21, 32), (7, 48, 48), (13, 64, 64), (3, 100, 112)];

    /// The bf16 units this CPU can run at `level`: the emulation, and the tiles if present.
    fn bf16_units(level: Level) -> Vec<Products> {
        let mut p = vec![Products::Bf16(bf16::Unit::Emulated)];
        if level.has_bf16() {
            p.push(Products::Bf16(bf16::Unit::Native));
        }
        if amx::available() {
            p.push(Products::Bf16(bf16::Unit::Amx));
        }
        p
    }

    /// One step's inputs: `W_hh`, `h_0`, `c_0`, the input projection and the bias.
    struct Step {
        nb: usize,
        h: usize,
        hp: usize,
        w: Vec<f32>,
        h0: Vec<f32>,
        c0: Vec<f32>,
        x: Vec<f32>,
        bias: Vec<f32>,
    }

    impl Step {
        fn new((nb, h, hp): (usize, usize, usize)) -> Step {
            let bias = padded(4 * hp, 5, (h, hp)).iter().map(|b| 0.1 * b).collect();
            Step {
                nb,
                h,
                hp,
                w: values(4 * h * h, 1, 0.5),
                h0: padded(nb * hp, 2, (h, hp)),
                c0: padded(nb * hp, 3, (h, hp)),
                x: padded(nb * 4 * hp, 4, (h, hp)),
                bias,
            }
        }

        /// `acts` then `h_1` after one forward step with `p`.
        fn forward(&self, level: Level, p: Products) -> Vec<f32> {
            let (nb, h, hp) = (self.nb, self.h, self.hp);
            let mut packed = Packed::default();
            packed.pack(&self.w, (h, hp), level, p, false);
            let mut hs = self.h0.clone();
            hs.resize(2 * nb * hp, 0.0);
            let mut acts = vec![0.0; nb * 5 * hp];
            Forward {
                t_len: 1,
                nb,
                h,
                hp,
                input: Input::Rows(&self.x),
                bias: &self.bias,
                packed: &packed,
                scratch: &mut Scratch::default(),
                c0: &self.c0,
                hs: &mut hs,
                acts: &mut acts,
            }
            .run(level);
            acts.extend_from_slice(&hs[nb * hp..]);
            acts
        }

        /// The scalar model of the bf16 step, in f64 (so exact but for the functions), with a
        /// bound per output on what an fp32 evaluation of it may differ by: `(H + 2)·2^-23` of
        /// each gate's sum of magnitudes (the fp32 sum's rounding), times 4 for the cell (gate
        /// derivatives ≤ 1, `c` a sum of two products of values ≤ 1, `h` one more), plus the
        /// vectorised `exp`'s ~1e-7.
        fn model(&self) -> (Vec<f64>, Vec<f64>) {
            let (nb, h, hp) = (self.nb, self.h, self.hp);
            let r16 = |x: f32| bf16::round(x) as f64;
            let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
            let (mut out, mut bound) = (vec![0.0; nb * 6 * hp], vec![0.0; nb * 6 * hp]);
            for r in 0..nb {
                for u in 0..hp {
                    let (mut pre, mut mag) = ([0f64; 4], [0f64; 4]);
                    for q in 0..4 {
                        let x =
                            self.x[r * 4 * hp + q * hp + u] as f64 + self.bias[q * hp + u] as f64;
                        let (mut s, mut m) = (x, x.abs());
                        for k in 0..if u < h { h } else { 0 } {
                            let t = r16(self.h0[r * hp + k]) * r16(self.w[(q * h + u) * h + k]);
                            (s, m) = (s + t, m + t.abs());
                        }
                        (pre[q], mag[q]) = (s, m);
                    }
                    let (i, f, g, o) = (sig(pre[0]), sig(pre[1]), pre[2].tanh(), sig(pre[3]));
                    let c = f * self.c0[r * hp + u] as f64 + i * g;
                    for (seg, v) in [c, i, f, g, o].into_iter().enumerate() {
                        out[r * 5 * hp + seg * hp + u] = v;
                    }
                    out[nb * 5 * hp + r * hp + u] = o * c.tanh();
                    let d = (h + 2) as f64
                        * 2f64.powi(-23)
                        * mag.iter().fold(0.0, |a: f64, &b| a.max(b));
                    for at in (0..5)
                        .map(|seg| r * 5 * hp + seg * hp + u)
                        .chain([nb * 5 * hp + r * hp + u])
                    {
                        bound[at] = 4.0 * (d + 1e-6);
                    }
                }
            }
            (out, bound)
        }
    }

    #[test]
    fn bf16_forward_step_matches_the_scalar_model_at_every_level_and_unit() {
        for level in Level::all() {
            for &shape in SHAPES {
                let step = Step::new(shape);
                let (model, bound) = step.model();
                let off = |got: &[f32]| -> Vec<f64> {
                    got.iter()
                        .zip(&model)
                        .map(|(&g, m)| (g as f64 - m).abs())
                        .collect()
                };
                for p in bf16_units(level) {
                    let got = step.forward(level, p);
                    for (i, (d, b)) in off(&got).iter().zip(&bound).enumerate() {
                        assert!(
                            d <= b,
                            "{p:?} at {} {shape:?}, output {i}: off by {d} > {b}",
                            level.name()
                        );
                    }
                }
                // The model would pass a path that silently ran fp32 products only if bf16's
                // rounding did not show: it does, by far more than the bound.
                let fp32 = off(&step.forward(level, Products::Fp32));
                assert!(
                    fp32.iter().zip(&bound).any(|(d, b)| d > &(10.0 * b)),
                    "{shape:?}"
                );
            }
        }
    }

    /// Two backward steps from random activations with `p`: `da` (both steps), then the bias
    /// gradient.
    fn backward(level: Level, p: Products, (nb, h, hp): (usize, usize, usize)) -> Vec<f32> {
        let w = values(4 * h * h, 5, 0.5);
        let mut acts = padded(2 * nb * 5 * hp, 6, (h, hp));
        for (i, a) in acts.iter_mut().enumerate() {
            // i, f and o are sigmoid outputs (padded units' stay 0, unused).
            if !matches!((i / hp) % 5, 0 | 3) {
                *a = 0.5 + 0.5 * *a;
            }
        }
        let dh_above = padded(2 * nb * hp, 7, (h, hp));
        let mut packed = Packed::default();
        packed.pack(&w, (h, hp), level, p, true);
        let (mut da, mut dbias) = (vec![0.0; 2 * nb * 4 * hp], vec![0.0; 4 * hp]);
        Backward {
            t_len: 2,
            nb,
            hp,
            packed: &packed,
            scratch: &mut Scratch::default(),
            acts: &acts,
            c0: &vec![0.0; nb * hp],
            dh_above: &dh_above,
            da: &mut da,
            dbias: &mut dbias,
            dh_next: &mut vec![0.0; nb * hp],
            dc_next: &mut vec![0.0; nb * hp],
        }
        .run(level);
        da.extend_from_slice(&dbias);
        da
    }

    #[test]
    fn bf16_backward_step_matches_its_emulation_and_fp32_within_bf16s_bound() {
        for level in Level::all() {
            for &shape in SHAPES {
                let (nb, h, hp) = shape;
                let w = values(4 * h * h, 5, 0.5);
                let fp32 = backward(level, Products::Fp32, shape);
                let emulated = backward(level, Products::Bf16(bf16::Unit::Emulated), shape);
                // Step 1's `da` is the cell's alone, the same everywhere; step 0's gets
                // `da_1 · W_hh` through the cell (a factor ≤ 1 on `dh`): bound it per row by
                // the product's sum of magnitudes with rounded operands.
                let da1 = &emulated[nb * 4 * hp..][..nb * 4 * hp];
                let mags: Vec<f64> = (0..nb)
                    .map(|b| {
                        (0..h)
                            .map(|c| {
                                (0..4 * h)
                                    .map(|kk| {
                                        let (q, u) = (kk / h, kk % h);
                                        (bf16::round(da1[b * 4 * hp + q * hp + u]) as f64
                                            * bf16::round(w[kk * h + c]) as f64)
                                            .abs()
                                    })
                                    .sum::<f64>()
                            })
                            .fold(0.0, f64::max)
                    })
                    .collect();
                let check = |got: &[f32], rel: f64, what: &str| {
                    for (i, (g, e)) in got.iter().zip(&emulated).enumerate() {
                        let rows = if i < nb * 4 * hp {
                            mags[i / (4 * hp)]
                        } else if i < 2 * nb * 4 * hp {
                            0.0
                        } else {
                            mags.iter().sum()
                        };
                        let b = 2.0 * rel * rows + 1e-6;
                        let d = (g - e).abs() as f64;
                        assert!(
                            d <= b,
                            "{what} at {} {shape:?}, output {i}: {d} > {b}",
                            level.name()
                        );
                    }
                };
                // fp32 against the emulation: the operands' rounding, 2^-8 relative each.
                check(&fp32, 2f64.powi(-7), "fp32");
                assert!(fp32 != emulated, "emulated bf16 is not fp32 ({shape:?})");
                // The same rounded operands on the bf16 units: fp32 sums' rounding apart.
                let units = bf16_units(level).into_iter().skip(1);
                for p in units {
                    let got = backward(level, p, shape);
                    check(
                        &got,
                        (4 * hp + 2) as f64 * 2f64.powi(-23),
                        &format!("{p:?}"),
                    );
                    assert!(got != fp32, "{p:?} is not fp32 ({shape:?})");
                }
            }
        }
    }
}

//! Matrix products with bf16 operands and fp32 accumulation: each operand is rounded to bfloat16
//! (round to nearest even, the top 16 bits of an f32), the products are summed in fp32. A
//! product of two bf16 values is exact in fp32 (8 + 8 significant bits), so the only rounding
//! beyond the operands' is the fp32 accumulation's, as in a plain fp32 GEMM.
//!
//! Two ways to compute it, the same arithmetic:
//! - [`Unit::Native`]: AVX512-BF16's `vdpbf16ps`, which multiplies 32 bf16 pairs and adds them
//!   into 16 fp32 lanes per instruction; operands are packed as pairs along K in 32-bit lanes.
//!   The register tile keeps C in registers across a K block and starts each block from C's
//!   value, so the accumulation runs over K in order, pair by pair, as [`reference`] does.
//! - [`Unit::Amx`]: Intel's AMX tiles ([`super::amx`]), 16 × 16 fp32 accumulators per
//!   instruction.
//! - [`Unit::Emulated`]: operands rounded to bf16 into fp32 buffers, then the fp32 GEMM. Same
//!   operands, same exact products; only the fp32 summation order differs. This is what a bf16
//!   run does on a CPU without the instruction, so a sweep over mixed nodes or a resume on
//!   another machine trains with the same operand precision everywhere.
//!
//! Denormal bf16 values are flushed to zero by the conversion, as the instruction treats them.

use super::gemm::{matmul, View, ViewMut};
use std::cell::RefCell;

/// Which unit computes the bf16 products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// AMX tiles ([`super::amx`]): the GEMMs, and the recurrence's per-step products as one
    /// tile product for all of a group's rows.
    Amx,
    Native,
    Emulated,
}

/// `x` rounded to bfloat16 (nearest, ties to even), as its 16 bits. NaN stays a (quiet) NaN;
/// values below bf16's normal range become a signed zero.
/// Written without branches so that a loop of it vectorises.
#[inline(always)]
pub fn to_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let nan = (b & 0x7fff_ffff) > 0x7f80_0000;
    let tiny = b & 0x7f80_0000 == 0;
    let out = if nan { (b >> 16) | 0x40 } else { rounded };
    (if tiny { (b >> 16) & 0x8000 } else { out }) as u16
}

/// The f32 a bf16's bits stand for (exact).
#[inline(always)]
pub fn from_bits(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// `x` rounded to the nearest bf16, as an f32.
#[inline(always)]
pub fn round(x: f32) -> f32 {
    from_bits(to_bits(x))
}

/// The arithmetic every unit implements, one scalar at a time: `dst (+)= a · b` with operands
/// rounded to bf16 and, per output, an fp32 sum over K in pairs `(2k, 2k+1)`, the odd element's
/// product added first (the order Intel's pseudo-code for `vdpbf16ps` gives). The tests' oracle.
pub fn reference(dst: &mut [f32], dst_stride: usize, a: View, b: View, accumulate: bool) {
    let (m, k, n) = (a.row_count(), a.t().row_count(), b.t().row_count());
    for i in 0..m {
        for j in 0..n {
            let at = |kk: usize| round(a.at(i, kk)) * round(b.at(kk, j));
            let mut acc = if accumulate {
                dst[i * dst_stride + j]
            } else {
                0.0
            };
            for p in 0..k.div_ceil(2) {
                if 2 * p + 1 < k {
                    acc += at(2 * p + 1);
                }
                acc += at(2 * p);
            }
            dst[i * dst_stride + j] = acc;
        }
    }
}

/// Whether this CPU can run [`Unit::Native`] (and `CHARLAB_SIMD` does not ask for less).
pub fn native_available() -> bool {
    super::simd::Level::detect_bf16()
}

/// The fastest bf16 unit this CPU (and `CHARLAB_SIMD`) gives: AMX tiles, else AVX512-BF16.
pub fn fastest_unit() -> Option<Unit> {
    if super::amx::available() {
        Some(Unit::Amx)
    } else {
        native_available().then_some(Unit::Native)
    }
}

/// Packing buffers, reused across calls on one thread (a step makes dozens of products): the
/// native kernel's packed A and B, the emulation's rounded A and B.
#[derive(Default)]
struct Scratch {
    pack_a: Vec<u32>,
    pack_b: Vec<u32>,
    round_a: Vec<f32>,
    round_b: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// `dst = a · b` (or `+=` when `accumulate`) in bf16 products with fp32 accumulation, on `unit`.
/// A unit this CPU lacks computes as [`Unit::Emulated`].
pub fn matmul_bf16(dst: ViewMut, a: View, b: View, accumulate: bool, unit: Unit) {
    let (m, k, n) = (a.row_count(), a.t().row_count(), b.t().row_count());
    assert!(
        b.row_count() == k && dst.shape() == (m, n),
        "bf16 gemm: shapes {m}×{k} · {}×{n} → {:?}",
        b.row_count(),
        dst.shape()
    );
    if m == 0 || n == 0 || k == 0 {
        // Nothing to multiply: C unchanged, or zeros; the fp32 GEMM's trivial cases, so the
        // units' kernels see only real products.
        return matmul(dst, a, b, accumulate);
    }
    if unit == Unit::Amx && super::amx::available() {
        return super::amx::matmul(dst, a, b, accumulate);
    }
    #[cfg(target_arch = "x86_64")]
    if unit == Unit::Native && std::is_x86_feature_detected!("avx512bf16") {
        return native::matmul(dst, a, b, accumulate);
    }
    emulated(dst, a, b, accumulate)
}

/// Rounds both operands into fp32 buffers and runs the fp32 GEMM on them.
fn emulated(dst: ViewMut, a: View, b: View, accumulate: bool) {
    SCRATCH.with(|s| {
        let s = &mut *s.borrow_mut();
        let a = rounded(a, &mut s.round_a);
        let b = rounded(b, &mut s.round_b);
        matmul(dst, a, b, accumulate);
    })
}

/// `v` rounded to bf16 into `buf`, in `v`'s own orientation, so that both the reads and the
/// writes run along memory (a transposed view is copied column by column).
fn rounded<'b>(v: View, buf: &'b mut Vec<f32>) -> View<'b> {
    let (rows, cols) = (v.row_count(), v.t().row_count());
    let (data, rs, cs) = v.raw();
    buf.clear();
    if rows == 0 || cols == 0 {
        return View::new(buf, rows, cols, cols);
    }
    let lines = |n: usize, len: usize, stride: usize, buf: &mut Vec<f32>| {
        for l in 0..n {
            buf.extend(data[l * stride..][..len].iter().map(|&x| round(x)));
        }
    };
    if cs == 1 {
        lines(rows, cols, rs, buf);
        View::new(buf, rows, cols, cols)
    } else if rs == 1 {
        lines(cols, rows, cs, buf);
        View::new(buf, cols, rows, rows).t()
    } else {
        buf.extend((0..rows * cols).map(|x| round(v.at(x / cols, x % cols))));
        View::new(buf, rows, cols, cols)
    }
}

#[cfg(target_arch = "x86_64")]
pub(in crate::model) mod native {
    use super::{View, ViewMut, SCRATCH};
    use std::arch::x86_64::*;

    /// Rows and 16-lane column vectors of the register tile: 12 × 2 accumulators, two B vectors
    /// and a broadcast A pair fill 27 of the 32 registers.
    const MR: usize = 12;
    const NR: usize = 32;
    /// K pairs per block: a B panel (KC × NR pairs, 24 KiB) stays in L1 while every row panel
    /// of A streams past it.
    const KC: usize = 192;

    /// `v` (`[rows, K]`) as panels of `width` rows: `[panel][pair][width]`, `k2` pairs a panel
    /// (those past K's, and rows past the end, zero). A is packed in panels of `MR` rows, B as
    /// Bᵀ in panels of `NR` columns; the AMX tiles read B the same way, K padded to whole tiles.
    /// Converted 16 pairs at a time by the unit's own conversion (the rounding of
    /// [`to_bits`](super::to_bits): nearest even, denormals to zero, NaN quiet), reading along
    /// memory: a row's run of K when `v`'s rows are contiguous, two runs of rows (K = 2p and
    /// 2p + 1) when its columns are; index arithmetic once per run, not per element. Packing
    /// one scalar at a time cost a third of a large-K product's time on Zen 4.
    ///
    /// # Safety
    /// The CPU must have AVX512-BF16 (and AVX512F).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(in crate::model) unsafe fn pack(v: View, width: usize, k2: usize, out: &mut Vec<u32>) {
        let (rows, k) = (v.row_count(), v.t().row_count());
        let real = k.div_ceil(2);
        debug_assert!(k2 >= real);
        // Every lane of a real row is written below; only the last panel's padding rows need
        // zeros, so the buffer is not cleared (zeroing it all cost 2 % of a step).
        let panel = k2 * width;
        // Grown, never shrunk: a step's products alternate between shapes, and resizing down
        // and up again zero-filled the difference each time (2 % of a step).
        let need = rows.div_ceil(width) * panel;
        if out.len() < need {
            out.resize(need, 0);
        }
        if rows % width != 0 {
            let last = &mut out[(rows / width) * panel..need];
            last.chunks_exact_mut(width)
                .for_each(|p| p[rows % width..].fill(0));
        }
        if real < k2 {
            out[..need]
                .chunks_exact_mut(panel)
                .for_each(|p| p[real * width..].fill(0));
        }
        let (data, rs, cs) = v.raw();
        if cs == 1 {
            // A panel's rows converted 16 pairs at a time, then written pair by pair: each
            // pair's `width` lanes are contiguous in the packed panel.
            let mut lanes = [[0u32; 16]; 32];
            assert!(width <= lanes.len(), "bf16 pack: panel wider than 32");
            for i0 in (0..rows).step_by(width) {
                let h = width.min(rows - i0);
                for p0 in (0..real).step_by(16) {
                    let len = (k - 2 * p0).min(32);
                    for (r, l) in lanes[..h].iter_mut().enumerate() {
                        row_pairs(&data[(i0 + r) * rs + 2 * p0..][..len], l);
                    }
                    let dst = &mut out[(i0 / width) * panel + p0 * width..];
                    for (j, d) in dst
                        .chunks_exact_mut(width)
                        .take(len.div_ceil(2))
                        .enumerate()
                    {
                        d[..h]
                            .iter_mut()
                            .zip(&lanes[..h])
                            .for_each(|(d, l)| *d = l[j]);
                    }
                }
            }
        } else {
            // A view is a row-major buffer or its transpose: one of the strides is 1.
            assert_eq!(rs, 1, "bf16 pack: a view strided both ways");
            let mut lanes = [0u32; 16];
            for p in 0..real {
                let lo = &data[2 * p * cs..][..rows];
                let hi = (2 * p + 1 < k).then(|| &data[(2 * p + 1) * cs..][..rows]);
                for i0 in (0..rows).step_by(16) {
                    let n = (rows - i0).min(16);
                    column_pairs(&lo[i0..][..n], hi.map(|h| &h[i0..][..n]), &mut lanes);
                    // The 16 lanes are consecutive rows: at most three runs across panels.
                    let (mut pn, mut r, mut j) = (i0 / width, i0 % width, 0);
                    while j < n {
                        let run = (width - r).min(n - j);
                        // A masked move, not `copy_from_slice`: a call to memcpy per run of
                        // at most 16 lanes was 2 % of a step.
                        let dst = &mut out[pn * panel + p * width + r..][..run];
                        let m = mask(run);
                        let v = _mm512_maskz_loadu_epi32(m, lanes[j..].as_ptr().cast());
                        _mm512_mask_storeu_epi32(dst.as_mut_ptr().cast(), m, v);
                        (pn, r, j) = (pn + 1, 0, j + run);
                    }
                }
            }
        }
    }

    /// The first `n` of 16 lanes.
    fn mask(n: usize) -> u16 {
        ((1u32 << n.min(16)) - 1) as u16
    }

    /// Up to 32 consecutive values of a row as 16 pairs `x[2j] | x[2j + 1] << 16` (zero past
    /// the end) into `out`'s first 16: bf16 of consecutive values lie in memory exactly as the
    /// pairs do.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(in crate::model) unsafe fn row_pairs(x: &[f32], out: &mut [u32]) {
        assert!(out.len() >= 16, "row_pairs: {} lanes", out.len());
        let n = x.len();
        // Masked-off lanes are not read, so the second load may start past the end.
        let lo = _mm512_maskz_loadu_ps(mask(n), x.as_ptr());
        let hi = _mm512_maskz_loadu_ps(mask(n.saturating_sub(16)), x.as_ptr().wrapping_add(16));
        let pairs: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(out.as_mut_ptr().cast(), pairs);
    }

    /// Up to 16 lanes of two rows as pairs `lo[j] | hi[j] << 16` (`hi` absent: zero).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(in crate::model) unsafe fn column_pairs(
        lo: &[f32],
        hi: Option<&[f32]>,
        out: &mut [u32; 16],
    ) {
        let m = mask(lo.len());
        let widen = |x: __m512| -> __m512i {
            _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(
                _mm512_cvtneps_pbh(x),
            ))
        };
        let l = widen(_mm512_maskz_loadu_ps(m, lo.as_ptr()));
        let h = widen(hi.map_or(_mm512_setzero_ps(), |h| {
            _mm512_maskz_loadu_ps(m, h.as_ptr())
        }));
        let pairs = _mm512_or_si512(l, _mm512_slli_epi32::<16>(h));
        _mm512_storeu_si512(out.as_mut_ptr().cast(), pairs);
    }

    /// The caller ([`super::matmul_bf16`]) checked the shapes and that none is empty.
    pub(super) fn matmul(dst: ViewMut, a: View, b: View, accumulate: bool) {
        let (m, k, n) = (a.row_count(), a.t().row_count(), b.t().row_count());
        let (data, rs) = dst.into_raw();
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            let k2 = k.div_ceil(2);
            // SAFETY: the caller checked the CPU has AVX512-BF16.
            unsafe {
                pack(a, MR, k2, &mut s.pack_a);
                pack(b.t(), NR, k2, &mut s.pack_b);
            }
            for p0 in (0..k2).step_by(KC) {
                let kc = KC.min(k2 - p0);
                let load = accumulate || p0 > 0;
                for (jp, j0) in (0..n).step_by(NR).enumerate() {
                    let bp = &s.pack_b[jp * k2 * NR + p0 * NR..][..kc * NR];
                    for (ip, i0) in (0..m).step_by(MR).enumerate() {
                        let ap = &s.pack_a[ip * k2 * MR + p0 * MR..][..kc * MR];
                        let tile = Tile {
                            rows: MR.min(m - i0),
                            cols: NR.min(n - j0),
                            at: i0 * rs + j0,
                            rs,
                        };
                        assert!(tile.at + (tile.rows - 1) * rs + tile.cols <= data.len());
                        // SAFETY: the caller checked the CPU has AVX512-BF16 (and AVX512F with
                        // it); the panels hold `kc` pairs of MR and NR lanes, and the tile lies
                        // inside `data` (asserted above).
                        unsafe { kernel(ap, bp, kc, data, tile, load) };
                    }
                }
            }
        })
    }

    /// Where one register tile lands in C.
    #[derive(Clone, Copy)]
    struct Tile {
        rows: usize,
        cols: usize,
        at: usize,
        rs: usize,
    }

    /// `C[tile] = (load ? C[tile] : 0) + Σ_p A[p] · B[p]` over `kc` pairs, in registers.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn kernel(ap: &[u32], bp: &[u32], kc: usize, c: &mut [f32], t: Tile, load: bool) {
        let (lo, hi) = (mask(t.cols), mask(t.cols.saturating_sub(16)));
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        let cp = c.as_mut_ptr().add(t.at);
        if load {
            for (r, row) in acc.iter_mut().enumerate().take(t.rows) {
                row[0] = _mm512_maskz_loadu_ps(lo, cp.add(r * t.rs));
                row[1] = _mm512_maskz_loadu_ps(hi, cp.add(r * t.rs + 16));
            }
        }
        let (a, b) = (ap.as_ptr(), bp.as_ptr());
        for p in 0..kc {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR).cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16).cast()));
            for (r, row) in acc.iter_mut().enumerate() {
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(p * MR + r) as i32));
                row[0] = _mm512_dpbf16_ps(row[0], x, b0);
                row[1] = _mm512_dpbf16_ps(row[1], x, b1);
            }
        }
        for (r, row) in acc.iter().enumerate().take(t.rows) {
            _mm512_mask_storeu_ps(cp.add(r * t.rs), lo, row[0]);
            _mm512_mask_storeu_ps(cp.add(r * t.rs + 16), hi, row[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even_on_the_bits() {
        // 1 + 2^-8 is halfway between bf16 1.0 and 1 + 2^-7: ties go to the even (1.0).
        assert_eq!(round(1.0 + 2f32.powi(-8)), 1.0);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up to the even.
        assert_eq!(round(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        // Just above halfway rounds up.
        assert_eq!(
            round(1.0 + 2f32.powi(-8) + 2f32.powi(-20)),
            1.0 + 2f32.powi(-7)
        );
        assert_eq!(round(-2.5), -2.5);
        assert!(round(f32::NAN).is_nan());
        assert_eq!(round(f32::INFINITY), f32::INFINITY);
        assert_eq!(round(1e-40), 0.0);
        // The largest finite f32 rounds past bf16's range: to infinity, as RNE says.
        assert_eq!(round(f32::MAX), f32::INFINITY);
    }

    /// Deterministic values of mixed sign and magnitude, none denormal.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::model::test_values(n, seed, 3.0)
    }

    /// Shapes that hit every edge of the tiles: a partial row panel and column panel, an odd K,
    /// K across several blocks, one row, one column, whole AMX tiles beside partial ones, empty
    /// K and empty C, and strided/transposed operands.
    const SHAPES: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (13, 5, 33),
        (12, 384, 32),
        (25, 401, 47),
        (70, 96, 64),
        (3, 0, 5),
        (0, 4, 2),
        (7, 2, 100),
        (40, 64, 17),
    ];

    /// Runs `unit` and the scalar model on each shape (a strided A with a transposed B, and a
    /// transposed A with a row-major B; with and without accumulation) and checks them against
    /// each other and against fp32.
    fn check(unit: Unit) {
        for &(m, k, n) in SHAPES {
            let a = values((m * (k + 3)).max(1), 1);
            let bt = values(n * k, 2);
            let orientations = [
                (View::new(&a, m, k, k + 3), View::new(&bt, n, k, k).t()),
                (View::new(&a, k, m, m).t(), View::new(&bt, k, n, n)),
            ];
            for ((av, bv), accumulate) in orientations
                .into_iter()
                .flat_map(|o| [(o, false), (o, true)])
            {
                let start = values(m * n, 3);
                let (mut got, mut want) = (start.clone(), start.clone());
                matmul_bf16(ViewMut::new(&mut got, m, n, n), av, bv, accumulate, unit);
                reference(&mut want, n, av, bv, accumulate);
                for i in 0..m {
                    for j in 0..n {
                        let mag: f32 = (0..k).map(|p| (av.at(i, p) * bv.at(p, j)).abs()).sum();
                        let mag = mag
                            + if accumulate {
                                start[i * n + j].abs()
                            } else {
                                0.0
                            };
                        let exact: f64 = (0..k)
                            .map(|p| av.at(i, p) as f64 * bv.at(p, j) as f64)
                            .sum::<f64>()
                            + if accumulate {
                                start[i * n + j] as f64
                            } else {
                                0.0
                            };
                        let (g, w) = (got[i * n + j], want[i * n + j]);
                        // The same operands and exact products: only the fp32 sums' rounding
                        // (at most K + 1 roundings of 2^-24 each) may differ.
                        let fp32_bound = (k + 2) as f32 * 2f32.powi(-23) * mag;
                        assert!(
                            (g - w).abs() <= fp32_bound,
                            "{unit:?} {m}×{k}·{k}×{n} acc {accumulate} at ({i},{j}): {g} vs \
                             model {w}"
                        );
                        // Against fp32: each product off by at most 2·2^-8 relative.
                        let bf16_bound = (2f32.powi(-7) + 2f32.powi(-16)) * mag + fp32_bound;
                        assert!(
                            (g as f64 - exact).abs() <= bf16_bound as f64,
                            "{unit:?} at ({i},{j}): {g} vs exact {exact}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn emulated_products_match_the_scalar_model_and_fp32_within_bf16s_bound() {
        check(Unit::Emulated);
    }

    #[test]
    fn native_products_match_the_scalar_model_and_fp32_within_bf16s_bound() {
        if !native_available() {
            eprintln!("this CPU has no AVX512-BF16: the native kernel is not run here");
            return;
        }
        check(Unit::Native);
    }

    #[test]
    fn amx_products_match_the_scalar_model_and_fp32_within_bf16s_bound() {
        if !crate::model::amx::available() {
            eprintln!("this CPU (or OS) gives no AMX tiles: the AMX kernel is not run here");
            return;
        }
        check(Unit::Amx);
    }

    #[test]
    fn the_native_kernel_is_bit_exact_against_the_model_where_the_cpu_follows_intels_order() {
        // Intel's pseudo-code adds the odd product, then the even one, each rounded: the tile
        // keeps that order over K, so on such a CPU the kernel equals the scalar model bit for
        // bit. Other CPUs may pair the products differently; there only the bound above holds.
        if !native_available() || !is_intel() {
            return;
        }
        let (m, k, n) = (25, 401, 47);
        let (a, b) = (values(m * k, 4), values(k * n, 5));
        let (av, bv) = (View::new(&a, m, k, k), View::new(&b, k, n, n));
        let (mut got, mut want) = (vec![0.0; m * n], vec![0.0; m * n]);
        matmul_bf16(ViewMut::new(&mut got, m, n, n), av, bv, false, Unit::Native);
        reference(&mut want, n, av, bv, false);
        assert_eq!(got, want);
    }

    fn is_intel() -> bool {
        std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains("GenuineIntel"))
    }
}

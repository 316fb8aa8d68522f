//! bf16 products on Intel's AMX tiles (`tdpbf16ps`): the same arithmetic as
//! [`bf16`](super::bf16) (operands rounded to bf16, products exact, fp32 accumulation), on a unit
//! that multiplies a 16 × 32 bf16 tile by a 32 × 16 one into 16 × 16 fp32 accumulators in one
//! instruction. On the Xeon we measured (family 6 model 167) that is ≈ 3,300 GFLOP/s on one
//! core against ≈ 230 for fp32 FMAs (BENCHMARKS.md, "AMX tiles").
//!
//! Rust has no stable AMX intrinsics (nor feature detection), so the unit is found with
//! `cpuid` and the instructions are written as inline assembly. Linux hands a process the tile
//! registers only once it asks (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); without
//! that the first tile instruction kills the process, so [`available`] asks first and says no
//! when the kernel refuses (an old kernel, or a hypervisor that hides the state).
//!
//! Layout: C is cut into 32 × 32 blocks of four 16 × 16 accumulator tiles; A is packed as bf16
//! pairs along K, row by row (`[row][pair]`, a tile is 16 rows of 16 pairs); B as Bᵀ in panels of
//! 16 columns, pair by pair (`[panel][pair][16]`: the pair-interleaved layout the instruction
//! reads, the same packing as the AVX512-BF16 tile's). K is padded with zeros to whole tiles, so
//! one tile configuration serves every shape; rows and columns past the edge are computed into
//! scratch tiles and dropped.

use super::gemm::{View, ViewMut};
use std::sync::OnceLock;

/// Pairs along K in one tile (64 bytes of bf16 pairs per tile row).
const KT: usize = 16;
/// Rows (of A and C) and columns (of B and C) of one tile.
const T: usize = 16;

/// `(m, n)` of the product a destination holds, as it is or transposed.
fn product_shape(dst: &ViewMut, transposed: bool) -> (usize, usize) {
    let (rows, cols) = dst.shape();
    if transposed {
        (cols, rows)
    } else {
        (rows, cols)
    }
}

/// A packed row's length for `k` values along K: its pairs, padded to whole tiles.
fn pairs(k: usize) -> usize {
    k.div_ceil(2).next_multiple_of(KT)
}

/// Whether this CPU has AMX-BF16 tiles, the OS lets this process use them, and `CHARLAB_SIMD`
/// does not ask for less. Asks Linux for the tile state once per process.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| super::simd::Level::detect_bf16() && imp::has_tiles() && imp::request())
}

/// `dst = a · b` (or `+=` when `accumulate`) in bf16 products with fp32 accumulation on AMX
/// tiles. The caller checks [`available`], the shapes, and that none is empty.
pub(in crate::model) fn matmul(dst: ViewMut, a: View, b: View, accumulate: bool) {
    #[cfg(target_arch = "x86_64")]
    imp::matmul(dst, a, b, accumulate);
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("AMX on a CPU that is not x86-64: {dst:?} {a:?} {b:?} {accumulate}");
}

/// A right operand packed once for many products: the recurrence's `W_hh`, the same at every
/// time step of a window.
#[derive(Default)]
pub struct PackedB {
    panels: Vec<u32>,
    k: usize,
    n: usize,
}

impl PackedB {
    /// `[K, n]` of the packed operand.
    pub fn shape(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// Packs `b` (`[K, n]`). The caller checks [`available`].
    pub fn pack(&mut self, b: View) {
        assert!(available(), "AMX packing on a CPU or OS without tiles");
        (self.k, self.n) = (b.row_count(), b.t().row_count());
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `available` implies AVX512-BF16 (asserted above).
        unsafe {
            imp::pack_panels(b, pairs(self.k), &mut self.panels)
        };
    }
}

impl PackedB {
    /// Sizes the operand for `[k, n]`, to be filled by [`PackedB::put_rows`].
    pub fn for_rows(&mut self, k: usize, n: usize) {
        (self.k, self.n) = (k, n);
        let need = n.next_multiple_of(2 * T) * pairs(k);
        if self.panels.len() < need {
            self.panels.resize(need, 0);
        }
    }

    /// Rows `k0..k0 + r` of the operand from `rows` (`[r, n]`, along memory): a block of rows
    /// converted while it is still in the cache (the fused decoder's gradient). `k0` is a
    /// multiple of 32 (whole tiles of pairs); blocks that together cover every row once leave
    /// the operand whole, K's padding written with the last.
    pub fn put_rows(&mut self, rows: View, k0: usize) {
        let r = rows.row_count();
        assert!(
            available()
                && k0.is_multiple_of(2 * KT)
                && k0 + r <= self.k
                && rows.t().row_count() == self.n,
            "AMX row block: {r}×{} at {k0} into {}×{}",
            rows.t().row_count(),
            self.k,
            self.n
        );
        let kp = pairs(self.k);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `available` implies AVX512-BF16 (asserted above).
        unsafe {
            imp::put_rows(rows, kp, k0 / 2, &mut self.panels)
        };
    }
}

/// `dst_i = a_i · b` for each `(dst_i, a_i)` with `b` packed once, into the thread's scratch:
/// products that share their right operand (a layer's weight gradients share `da`). With
/// `transposed`, each `dst_i` is its product's transpose. The caller checks [`available`] and
/// that `b` is not empty.
pub(in crate::model) fn matmul_shared_b(b: View, products: Vec<(ViewMut, View)>, transposed: bool) {
    #[cfg(target_arch = "x86_64")]
    imp::matmul_shared_b(b, products, false, transposed);
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!(
        "AMX on a CPU that is not x86-64: {b:?} {} {transposed}",
        products.len()
    );
}

/// `dst = a · b` (or `+=` when `accumulate`) with `b` packed beforehand.
pub fn matmul_packed(dst: ViewMut, a: View, b: &PackedB, accumulate: bool) {
    #[cfg(target_arch = "x86_64")]
    imp::matmul_packed(dst, a, b, accumulate);
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!(
        "AMX on a CPU that is not x86-64: {dst:?} {a:?} {} {accumulate}",
        b.n
    );
}

/// A left operand packed once for several products: the fused decoder's `top` (read by every
/// row block).
#[derive(Default)]
pub struct PackedA {
    pairs: Vec<u32>,
    m: usize,
    k: usize,
    kp: usize,
}

impl PackedA {
    /// Packs `a` (`[m, K]`). The caller checks [`available`].
    pub fn pack(&mut self, a: View) {
        assert!(available(), "AMX packing on a CPU or OS without tiles");
        (self.m, self.k) = (a.row_count(), a.t().row_count());
        self.kp = pairs(self.k);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `available` implies AVX512-BF16 (asserted above).
        unsafe {
            imp::pack_rows(a, self.kp, &mut self.pairs)
        };
    }
}

/// `dst (+)= A[r0..r0 + m] · B`, both packed, `m` = `dst`'s rows; `r0` a multiple of 32. With
/// `transposed`, `dst` is the product's transpose (`[n, m]`).
pub fn matmul_prepacked(
    dst: ViewMut,
    a: &PackedA,
    r0: usize,
    b: &PackedB,
    accumulate: bool,
    transposed: bool,
) {
    let (m, n) = product_shape(&dst, transposed);
    assert!(
        a.k == b.k && a.k > 0 && r0.is_multiple_of(2 * T) && r0 + m <= a.m && n == b.n,
        "AMX gemm: packed {}×{} rows {r0}.. · packed {}×{} → {:?}",
        a.m,
        a.k,
        b.k,
        b.n,
        dst.shape()
    );
    #[cfg(target_arch = "x86_64")]
    imp::run(
        dst,
        (&a.pairs[r0 * a.kp..], &b.panels, a.kp),
        accumulate,
        transposed,
    );
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("AMX on a CPU that is not x86-64: {dst:?} {r0} {accumulate} {transposed}");
}

/// GFLOP/s of one thread running `iters` rounds of four independent `tdpbf16ps` (16 × 16 × 32
/// products each) on tiles held in registers: the unit's ceiling. `None` without it.
pub fn peak_gflops(iters: u64) -> Option<f64> {
    timed(iters, false)
}

/// GFLOP/s of one thread running the block loop's k-step (two A and two B tiles loaded, four
/// products) `iters` times on operands in L1: the ceiling of every product here, below
/// [`peak_gflops`]'s wherever loading a tile costs more than a product (on the Xeon we
/// measured, a 1 KiB `tileloadd` ≈ 15 ns against ≈ 4.5 ns for a `tdpbf16ps`). `None`
/// without tiles.
pub fn loop_gflops(iters: u64) -> Option<f64> {
    timed(iters, true)
}

/// Times `iters` rounds of four tile products, with the block loop's loads or without.
fn timed(iters: u64, loads: bool) -> Option<f64> {
    if !available() {
        return None;
    }
    let t0 = std::time::Instant::now();
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `available` checked the CPU and the OS grant.
    unsafe {
        if loads {
            imp::loop_rate(iters)
        } else {
            imp::peak(iters)
        }
    };
    let flops = iters as f64 * 4.0 * (T * T * 2 * KT) as f64 * 2.0;
    Some(flops / t0.elapsed().as_secs_f64().max(1e-9) / 1e9)
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::super::bf16::native::{column_pairs, pack, row_pairs};
    use super::{pairs, product_shape, View, ViewMut, KT, T};
    use std::arch::asm;
    use std::arch::x86_64::*;
    use std::cell::RefCell;

    /// The tile configuration (`ldtilecfg`'s 64-byte operand): palette 1, eight tiles of 16
    /// rows × 64 bytes: C in tmm0–3, A in tmm4–5, B in tmm6–7.
    #[repr(C, align(64))]
    struct Config {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    const CONFIG: Config = {
        let mut c = Config {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        let mut i = 0;
        while i < 8 {
            c.colsb[i] = (KT * 4) as u16;
            c.rows[i] = T as u8;
            i += 1;
        }
        c
    };

    /// CPUID leaf 7: AMX-BF16 (EDX bit 22) and AMX-TILE (bit 24).
    pub(super) fn has_tiles() -> bool {
        let leaf = std::arch::x86_64::__cpuid_count(7, 0);
        leaf.edx >> 22 & 1 == 1 && leaf.edx >> 24 & 1 == 1
    }

    /// Asks Linux for the tile data state (`ARCH_REQ_XCOMP_PERM`, `XFEATURE_XTILEDATA` = 18).
    /// Other systems: no tiles (we know no other that grants them this way).
    #[cfg(not(target_os = "linux"))]
    pub(super) fn request() -> bool {
        false
    }

    #[cfg(target_os = "linux")]
    pub(super) fn request() -> bool {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain system call with integer arguments; it changes no memory of ours.
        unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            ) == 0
        }
    }

    /// Packed A and B, reused across calls on one thread, and four scratch tiles for C's edges
    /// and a transposed C.
    #[derive(Default)]
    struct Scratch {
        a: Vec<u32>,
        b: Vec<u32>,
        edge: [Edge; 4],
    }

    thread_local! {
        static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    }

    /// The caller ([`crate::model::bf16::matmul_bf16`]) checked the shapes and that none is
    /// empty.
    pub(super) fn matmul(dst: ViewMut, a: View, b: View, accumulate: bool) {
        let (m, n) = (a.row_count(), b.t().row_count());
        // A must be packed row by row along K; when it lies along M instead (a weight
        // gradient's `dYᵀ`) that packing is a transpose. Computing Cᵀ = Bᵀ · Aᵀ instead makes
        // the smaller operand the one transposed, and the output's transpose costs only C's
        // size against the product's C × K.
        let transposed = a.raw().2 != 1 && n < m;
        let (a, b) = if transposed { (b.t(), a.t()) } else { (a, b) };
        matmul_shared_b(b, [(dst, a)], accumulate, transposed);
    }

    /// [`super::matmul_shared_b`], and [`matmul`] as one product.
    pub(super) fn matmul_shared_b<'a, 'b>(
        b: View,
        products: impl IntoIterator<Item = (ViewMut<'a>, View<'b>)>,
        accumulate: bool,
        transposed: bool,
    ) {
        let (k, n) = (b.row_count(), b.t().row_count());
        // Out of the thread's scratch while `run` borrows it for the edge tiles.
        let mut panels = SCRATCH.with(|s| std::mem::take(&mut s.borrow_mut().b));
        // SAFETY: `available` (the caller's check) implies AVX512-BF16 for the packing.
        unsafe { pack_panels(b, pairs(k), &mut panels) };
        products_on((&panels, k, n), products, accumulate, transposed);
        SCRATCH.with(|s| s.borrow_mut().b = panels);
    }

    /// `dst_i (+)= a_i · B` for each `(dst_i, a_i)`, B (`[k, n]`) packed by [`pack_panels`],
    /// each `a_i` packed into the thread's scratch; with `transposed`, each `dst_i` is its
    /// product's transpose. The caller has checked [`super::available`] (to pack B).
    fn products_on<'a, 'b>(
        (panels, k, n): (&[u32], usize, usize),
        products: impl IntoIterator<Item = (ViewMut<'a>, View<'b>)>,
        accumulate: bool,
        transposed: bool,
    ) {
        let kp = pairs(k);
        // Out of the thread's scratch while `run` borrows it for the edge tiles.
        let mut a_pairs = SCRATCH.with(|s| std::mem::take(&mut s.borrow_mut().a));
        for (dst, a) in products {
            let m = a.row_count();
            assert!(
                k > 0 && a.t().row_count() == k && product_shape(&dst, transposed) == (m, n),
                "AMX gemm: shapes {m}×{} · {k}×{n} → {:?}",
                a.t().row_count(),
                dst.shape()
            );
            // SAFETY: `available` (checked before B was packed) implies AVX512-BF16.
            unsafe { pack_rows(a, kp, &mut a_pairs) };
            run(dst, (&a_pairs, panels, kp), accumulate, transposed);
        }
        SCRATCH.with(|s| s.borrow_mut().a = a_pairs);
    }

    /// `b` (`[K, n]`) as Bᵀ in panels of 16 columns, `kp` pairs each, whole 32-column blocks
    /// (a missing second panel reads zeros).
    ///
    /// # Safety
    /// The CPU must have AVX512-BF16 (and AVX512F).
    pub(super) unsafe fn pack_panels(b: View, kp: usize, out: &mut Vec<u32>) {
        pack(b.t(), T, kp, out);
        let need = b.t().row_count().div_ceil(2 * T) * 2 * T * kp;
        if out.len() < need {
            out.resize(need, 0);
        }
    }

    /// `rows` (`[r, n]`, along memory) as pairs `at..` of every panel [`pack_panels`] lays out
    /// (`kp` pairs a panel), through to the next whole tile of pairs (zeros past `r`): each
    /// panel's run of pairs written in order, two rows of 16 columns per conversion.
    ///
    /// # Safety
    /// The CPU must have AVX512-BF16 (and AVX512F).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn put_rows(rows: View, kp: usize, at: usize, out: &mut [u32]) {
        let (r, n) = (rows.row_count(), rows.t().row_count());
        let (data, rs, cs) = rows.raw();
        assert_eq!(cs, 1, "AMX row block: columns not along memory");
        let span = pairs(r);
        assert!(at + span <= kp && n.div_ceil(T) * T * kp <= out.len());
        for j0 in (0..n).step_by(T) {
            let w = (n - j0).min(T);
            let (panel, _) = out[j0 * kp + at * T..][..span * T].as_chunks_mut::<T>();
            for (q, lanes) in panel.iter_mut().enumerate() {
                if 2 * q < r {
                    let lo = &data[2 * q * rs + j0..][..w];
                    let hi = (2 * q + 1 < r).then(|| &data[(2 * q + 1) * rs + j0..][..w]);
                    column_pairs(lo, hi, lanes);
                } else {
                    *lanes = [0; T];
                }
            }
        }
    }

    /// `dst (+)= a · b` with `b` packed by [`pack_panels`] for `K = a`'s columns.
    pub(super) fn matmul_packed(dst: ViewMut, a: View, b: &super::PackedB, accumulate: bool) {
        products_on((&b.panels, b.k, b.n), [(dst, a)], accumulate, false);
    }

    /// `dst (+)= A · B` with A packed by [`pack_rows`] (from its first row) and B by
    /// [`pack_panels`], `kp` pairs along K; `dst`'s shape says how many rows and columns (of
    /// the product's transpose when `transposed`).
    pub(super) fn run(
        dst: ViewMut,
        (a, b, kp): (&[u32], &[u32], usize),
        accumulate: bool,
        transposed: bool,
    ) {
        let (m, n) = product_shape(&dst, transposed);
        assert!(
            a.len() >= m.next_multiple_of(2 * T) * kp && b.len() >= n.next_multiple_of(2 * T) * kp,
            "AMX gemm: packed operands shorter than {m}×{n} over {kp} pairs"
        );
        let (c, rs) = dst.into_raw();
        let job = Job {
            a,
            b,
            kp,
            m,
            n,
            rs,
            accumulate,
            transposed,
        };
        SCRATCH.with(|s| job.run(c, &mut s.borrow_mut().edge));
    }

    /// One product's packed operands and where its result goes: C (`m × n` here), or Cᵀ
    /// when `transposed` (the product computed is then C's transpose).
    struct Job<'s> {
        a: &'s [u32],
        b: &'s [u32],
        kp: usize,
        m: usize,
        n: usize,
        rs: usize,
        accumulate: bool,
        transposed: bool,
    }

    /// A tile's accumulators as they pass through memory (4 KiB aligned to a cache line).
    #[repr(C, align(64))]
    #[derive(Clone, Copy)]
    struct Edge([[f32; T]; T]);

    impl Default for Edge {
        fn default() -> Edge {
            Edge([[0.0; T]; T])
        }
    }

    impl Job<'_> {
        /// Every block of the product, the tiles configured around them.
        fn run(&self, c: &mut [f32], edge: &mut [Edge; 4]) {
            let (m, n) = (self.m, self.n);
            if m == 0 || n == 0 {
                return;
            }
            // B's columns in chunks that stay in L2 while every row block of A passes, C's
            // rows written a block row at a time (column blocks outermost scattered C's
            // stores, a third of the decoder's time).
            let nc = ((1 << 20) / (self.kp * 4) / (2 * T) * (2 * T)).max(2 * T);
            // SAFETY: the CPU has the tiles and Linux granted them (`available`, checked by
            // every caller); the packed operands cover every tile the blocks read (rows to a
            // multiple of 32, panels to an even count, K to whole tiles); C's tiles are checked
            // against `c` in `block`.
            unsafe {
                asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly));
                for c0 in (0..n).step_by(nc) {
                    for i0 in (0..m).step_by(2 * T) {
                        for j0 in (c0..n.min(c0 + nc)).step_by(2 * T) {
                            self.block(i0, j0, c, edge);
                        }
                    }
                }
                asm!("tilerelease", options(nostack, nomem));
            }
        }

        /// The index in C of the product's `(i, j)`.
        fn at(&self, i: usize, j: usize) -> usize {
            if self.transposed {
                j * self.rs + i
            } else {
                i * self.rs + j
            }
        }

        /// The four tiles of the product's 32 × 32 block at `(i0, j0)`.
        fn tiles(i0: usize, j0: usize) -> [(usize, usize); 4] {
            [(i0, j0), (i0, j0 + T), (i0 + T, j0), (i0 + T, j0 + T)]
        }

        /// Rows and columns of the tile at `(ti, tj)` that lie inside the product.
        fn extent(&self, (ti, tj): (usize, usize)) -> (usize, usize) {
            (
                self.m.saturating_sub(ti).min(T),
                self.n.saturating_sub(tj).min(T),
            )
        }

        /// Where each of the block's tiles is loaded from and stored to, and the row stride in
        /// bytes: in place for a tile wholly inside a C laid out as computed; otherwise (C's
        /// edges, a transposed C) a scratch tile, filled from C when accumulating.
        fn targets(
            &self,
            (i0, j0): (usize, usize),
            c: &mut [f32],
            edge: &mut [Edge; 4],
        ) -> ([*mut f32; 4], [usize; 4]) {
            let mut at = [std::ptr::null_mut::<f32>(); 4];
            let mut stride = [T * 4; 4];
            for (q, t) in Self::tiles(i0, j0).into_iter().enumerate() {
                let (rows, cols) = self.extent(t);
                let whole = rows == T && cols == T;
                if whole && !self.transposed {
                    let o = self.at(t.0, t.1);
                    assert!(o + (T - 1) * self.rs + T <= c.len());
                    (at[q], stride[q]) = (c[o..].as_mut_ptr(), self.rs * 4);
                    continue;
                }
                let e = &mut edge[q].0;
                at[q] = e.as_mut_ptr().cast();
                if whole {
                    // A whole tile of a transposed C: its columns are C's rows, moved 16 at a
                    // time and transposed in registers (one scalar at a time was most of a
                    // weight gradient's stores).
                    if self.accumulate {
                        for (j, line) in e.iter_mut().enumerate() {
                            line.copy_from_slice(&c[self.at(t.0, t.1 + j)..][..T]);
                        }
                        transpose_tile(e);
                    }
                    continue;
                }
                *e = [[0.0; T]; T];
                if self.accumulate {
                    for (r, line) in e.iter_mut().enumerate().take(rows) {
                        for (cc, x) in line.iter_mut().enumerate().take(cols) {
                            *x = c[self.at(t.0 + r, t.1 + cc)];
                        }
                    }
                }
            }
            (at, stride)
        }

        /// The product's 32 × 32 block at `(i0, j0)`: four accumulators over all of K, loaded
        /// and stored through [`Job::targets`].
        ///
        /// # Safety
        /// Tiles configured by [`CONFIG`]; `a` and `b` packed as [`matmul`] does.
        unsafe fn block(&self, i0: usize, j0: usize, c: &mut [f32], edge: &mut [Edge; 4]) {
            let (at, stride) = self.targets((i0, j0), c, edge);
            if self.accumulate {
                asm!(
                    "tileloadd tmm0, [{0} + {4}*1]",
                    "tileloadd tmm1, [{1} + {5}*1]",
                    "tileloadd tmm2, [{2} + {6}*1]",
                    "tileloadd tmm3, [{3} + {7}*1]",
                    in(reg) at[0], in(reg) at[1], in(reg) at[2], in(reg) at[3],
                    in(reg) stride[0], in(reg) stride[1], in(reg) stride[2], in(reg) stride[3],
                    options(nostack, readonly),
                );
            } else {
                zero_c();
            }
            let kp = self.kp;
            let a0 = self.a.as_ptr().add(i0 * kp);
            let a1 = a0.add(T * kp);
            let b0 = self.b.as_ptr().add(j0 * kp);
            let b1 = b0.add(T * kp);
            let (sa, sb) = (kp * 4, T * 4);
            for p in (0..kp).step_by(KT) {
                k_step(
                    [a0.add(p), a1.add(p)],
                    [b0.add(p * T), b1.add(p * T)],
                    (sa, sb),
                );
            }
            asm!(
                "tilestored [{0} + {4}*1], tmm0",
                "tilestored [{1} + {5}*1], tmm1",
                "tilestored [{2} + {6}*1], tmm2",
                "tilestored [{3} + {7}*1], tmm3",
                in(reg) at[0], in(reg) at[1], in(reg) at[2], in(reg) at[3],
                in(reg) stride[0], in(reg) stride[1], in(reg) stride[2], in(reg) stride[3],
                options(nostack),
            );
            for (q, t) in Self::tiles(i0, j0).into_iter().enumerate() {
                if at[q] == edge[q].0.as_mut_ptr().cast() {
                    let (rows, cols) = self.extent(t);
                    if rows == T && cols == T {
                        // Whole, so transposed (see `targets`).
                        transpose_tile(&mut edge[q].0);
                        for (j, line) in edge[q].0.iter().enumerate() {
                            c[self.at(t.0, t.1 + j)..][..T].copy_from_slice(line);
                        }
                        continue;
                    }
                    for (r, line) in edge[q].0.iter().enumerate().take(rows) {
                        for (cc, &x) in line.iter().enumerate().take(cols) {
                            c[self.at(t.0 + r, t.1 + cc)] = x;
                        }
                    }
                }
            }
        }
    }

    /// `v` (`[rows, K]`) as bf16 pairs along K, row by row: `[row][pair]`, `kp` pairs a row
    /// (K's padding zero), rows to a multiple of 32 (the rows past the end are never stored, so
    /// they are left as they were). Rows that lie along memory convert 16 pairs at a time
    /// straight into place; a transposed view is read two rows of K at a time (16 of its rows
    /// per conversion) and each 16 × 16 block of pairs transposed into place.
    ///
    /// # Safety
    /// The CPU must have AVX512-BF16 (and AVX512F).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn pack_rows(v: View, kp: usize, out: &mut Vec<u32>) {
        let (rows, k) = (v.row_count(), v.t().row_count());
        let need = rows.next_multiple_of(2 * T) * kp;
        if out.len() < need {
            out.resize(need, 0);
        }
        let k2 = k.div_ceil(2);
        let (data, rs, cs) = v.raw();
        if cs == 1 {
            for r in 0..rows {
                let row = &mut out[r * kp..][..kp];
                for p0 in (0..kp).step_by(KT) {
                    if p0 < k2 {
                        let x = &data[r * rs + 2 * p0..][..(k - 2 * p0).min(2 * KT)];
                        row_pairs(x, &mut row[p0..][..KT]);
                    } else {
                        row[p0..][..KT].fill(0);
                    }
                }
            }
        } else {
            assert_eq!(rs, 1, "AMX pack: a view strided both ways");
            let mut block = [[0u32; 16]; 16];
            for i0 in (0..rows).step_by(T) {
                let h = (rows - i0).min(T);
                for p0 in (0..kp).step_by(KT) {
                    for (q, line) in block.iter_mut().enumerate() {
                        let p = p0 + q;
                        if p < k2 {
                            let lo = &data[2 * p * cs + i0..][..h];
                            let hi = (2 * p + 1 < k).then(|| &data[(2 * p + 1) * cs + i0..][..h]);
                            column_pairs(lo, hi, line);
                        } else {
                            *line = [0; 16];
                        }
                    }
                    transpose(&mut block);
                    for (r, line) in block.iter().enumerate().take(h) {
                        out[(i0 + r) * kp + p0..][..KT].copy_from_slice(line);
                    }
                }
            }
        }
    }

    /// A 16 × 16 block of 32-bit lanes transposed in registers: pairs of rows interleaved by
    /// 32, then 64 bits, then 128-bit lanes exchanged twice (four rounds of 16 shuffles, where
    /// a scalar transpose was half of a weight gradient's time).
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose(block: &mut [[u32; 16]; 16]) {
        let mut r: [__m512i; 16] =
            std::array::from_fn(|i| _mm512_loadu_si512(block[i].as_ptr().cast()));
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        for b in (0..16).step_by(4) {
            r[b] = _mm512_unpacklo_epi64(t[b], t[b + 2]);
            r[b + 1] = _mm512_unpackhi_epi64(t[b], t[b + 2]);
            r[b + 2] = _mm512_unpacklo_epi64(t[b + 1], t[b + 3]);
            r[b + 3] = _mm512_unpackhi_epi64(t[b + 1], t[b + 3]);
        }
        for b in [0, 8] {
            for j in 0..4 {
                t[b + j] = _mm512_shuffle_i32x4::<0x88>(r[b + j], r[b + 4 + j]);
                t[b + 4 + j] = _mm512_shuffle_i32x4::<0xdd>(r[b + j], r[b + 4 + j]);
            }
        }
        for j in 0..8 {
            r[j] = _mm512_shuffle_i32x4::<0x88>(t[j], t[8 + j]);
            r[8 + j] = _mm512_shuffle_i32x4::<0xdd>(t[j], t[8 + j]);
        }
        for (line, v) in block.iter_mut().zip(r) {
            _mm512_storeu_si512(line.as_mut_ptr().cast(), v);
        }
    }

    /// C's four accumulators set to zero.
    ///
    /// # Safety
    /// Tiles configured by [`CONFIG`].
    #[inline(always)]
    unsafe fn zero_c() {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
    }

    /// One k-step of a block: A's two tiles and B's two (row strides `sa`, `sb` bytes) loaded,
    /// the four products added into C's accumulators.
    ///
    /// # Safety
    /// Tiles configured by [`CONFIG`]; 16 rows readable at each pointer and stride.
    #[inline(always)]
    unsafe fn k_step(a: [*const u32; 2], b: [*const u32; 2], (sa, sb): (usize, usize)) {
        asm!(
            "tileloadd tmm4, [{a0} + {sa}*1]",
            "tileloadd tmm6, [{b0} + {sb}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {sb}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {sa}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a[0], a1 = in(reg) a[1], b0 = in(reg) b[0], b1 = in(reg) b[1],
            sa = in(reg) sa, sb = in(reg) sb,
            options(nostack, readonly),
        );
    }

    /// [`super::loop_gflops`]: the block loop's k-steps on one block of operands (16 KiB of A
    /// and B, in L1), reloaded every step as [`Job::block`] does.
    ///
    /// # Safety
    /// The CPU has the tiles and Linux granted them.
    pub(super) unsafe fn loop_rate(iters: u64) {
        let ops = vec![0x3f80_3f80u32; 4 * T * KT];
        let (a0, b0) = (ops.as_ptr(), ops.as_ptr().add(2 * T * KT));
        let (a1, b1) = (a0.add(T * KT), b0.add(T * KT));
        let s = KT * 4;
        asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly));
        zero_c();
        for _ in 0..std::hint::black_box(iters) {
            k_step([a0, a1], [b0, b1], (s, s));
        }
        asm!("tilerelease", options(nostack, nomem));
    }

    /// [`transpose`] on a tile of fp32 accumulators.
    fn transpose_tile(e: &mut [[f32; T]; T]) {
        // SAFETY: f32 and u32 have the same size and alignment and share every bit pattern;
        // AVX512F comes with the tiles (`available`, checked by every caller).
        unsafe { transpose(&mut *(e as *mut [[f32; T]; T]).cast::<[[u32; T]; T]>()) }
    }

    /// The unit's ceiling: four independent accumulators, operands already in tiles.
    ///
    /// # Safety
    /// The CPU has the tiles and Linux granted them.
    pub(super) unsafe fn peak(iters: u64) {
        let zeros = [0u32; T * KT];
        asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly));
        asm!(
            "tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3",
            "tileloadd tmm4, [{z} + {s}*1]", "tileloadd tmm5, [{z} + {s}*1]",
            "tileloadd tmm6, [{z} + {s}*1]", "tileloadd tmm7, [{z} + {s}*1]",
            z = in(reg) zeros.as_ptr(), s = in(reg) KT * 4, options(nostack, readonly),
        );
        for _ in 0..std::hint::black_box(iters) {
            asm!(
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                options(nostack, nomem),
            );
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    pub(super) fn has_tiles() -> bool {
        false
    }
    pub(super) fn request() -> bool {
        false
    }
}

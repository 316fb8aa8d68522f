//! The run key `precision` turned into how the CPU path computes its large products, and why.
//!
//! `bf16` rounds the operands of the GEMMs (input projections of layers above the first, layer
//! 0's table, the decoder, and every weight and input gradient made of them) and of the
//! recurrent product (`h_{t-1} · W_hhᵀ` forward, `da_t · W_hh` backward) to bfloat16 and
//! accumulates in fp32; the cell state, gate nonlinearities, softmax, loss, master weights and
//! optimizer state stay fp32. `auto` picks bf16 where it is faster: the
//! instruction exists and this core runs it ≥ 1.3× its fp32 FMA rate. That bf16 learns as fp32
//! does is measured, not checked per run: over the parity grid (both corpora, lr × hidden ×
//! dropout, 3 seeds; 8 in the two chaotic cells) bf16's mean val loss is within one fp32 seed
//! std of fp32's in every cell (BENCHMARKS.md, "bf16 products"). Not every
//! CPU with the instruction is faster with it: AMD Zen 4 runs `vdpbf16ps` at twice its fp32
//! rate, the Intel Xeon we measured (family 6 model 207, no AMX exposed) at about 0.5×, so the
//! speed half rests on a measurement of this core ([`bf16_speedup`], a few milliseconds, once
//! per process).

use super::bf16::{self, Unit};
use super::gemm::{matmul, View, ViewMut};
use crate::config::Precision;
use std::sync::OnceLock;

/// How a model's large products are computed: the run's `precision`, resolved on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Products {
    #[default]
    Fp32,
    Bf16(Unit),
}

impl Products {
    /// `dst = a · b` (or `+=` when `accumulate`) in this precision.
    pub fn matmul(self, dst: ViewMut, a: View, b: View, accumulate: bool) {
        match self {
            Products::Fp32 => matmul(dst, a, b, accumulate),
            Products::Bf16(unit) => bf16::matmul_bf16(dst, a, b, accumulate, unit),
        }
    }

    /// `fp32` or `bf16`: what `run.json`, the HParams and `compare` show.
    pub fn name(self) -> &'static str {
        match self {
            Products::Fp32 => "fp32",
            Products::Bf16(_) => "bf16",
        }
    }
}

/// bf16 must beat fp32 by this much for `auto` to take it: the bf16 path also pays for
/// packing and rounding the operands, which a pure instruction-rate measurement does not see.
pub const AUTO_MIN_SPEEDUP: f64 = 1.3;

/// The products a run asks for on a CPU whose fastest bf16 unit is `unit` (with `speedup`, its
/// rate over fp32 FMAs), and the one line that says why. Pure, so every answer is tested on any
/// CPU. `bf16` asked for is always bf16 arithmetic, on the bf16 unit when it is the faster, else
/// emulated on the fp32 units (the same operands, only the summation order differs).
pub fn choose(asked: Precision, unit: Option<Unit>, speedup: Option<f64>) -> (Products, String) {
    let name = |u: Unit| match u {
        Unit::Amx => "AMX-BF16 tiles",
        _ => "AVX512-BF16",
    };
    match (asked, unit) {
        (Precision::Fp32, _) => (
            Products::Fp32,
            "fp32 products (precision = \"fp32\")".into(),
        ),
        (Precision::Bf16, Some(u)) => match speedup {
            Some(x) if x < 1.0 => (
                Products::Bf16(Unit::Emulated),
                format!(
                    "bf16 products emulated on fp32 units (the same operand rounding): this \
                     core's {} run {x:.2}× its fp32 FMA rate",
                    name(u)
                ),
            ),
            _ => (
                Products::Bf16(u),
                format!("bf16 products, fp32 accumulation ({})", name(u)),
            ),
        },
        (Precision::Bf16, None) => (
            Products::Bf16(Unit::Emulated),
            "bf16 products emulated: this CPU has no AVX512-BF16, so the same operand rounding \
             runs on fp32 units (the same learning, not faster)"
                .into(),
        ),
        (Precision::Auto, None) => (
            Products::Fp32,
            "fp32 products (precision = \"auto\": this CPU has no AVX512-BF16)".into(),
        ),
        (Precision::Auto, Some(u)) => match speedup {
            Some(x) if x >= AUTO_MIN_SPEEDUP => (
                Products::Bf16(u),
                format!(
                    "bf16 products, fp32 accumulation (precision = \"auto\": this core's {} \
                     run {x:.2}× its fp32 FMA rate)",
                    name(u)
                ),
            ),
            x => (
                Products::Fp32,
                format!(
                    "fp32 products (precision = \"auto\": this core's {} run {:.2}× its fp32 \
                     FMA rate, under the {AUTO_MIN_SPEEDUP}× that pays)",
                    name(u),
                    x.unwrap_or(0.0)
                ),
            ),
        },
    }
}

/// [`choose`] on this machine, for a model on the CPU (`on_cpu`); other devices keep their own
/// precision (fp32).
pub fn resolve(asked: Precision, on_cpu: bool) -> (Products, String) {
    if !on_cpu {
        return (
            Products::Fp32,
            "fp32 (the CUDA path keeps its own precision)".into(),
        );
    }
    let unit = bf16::fastest_unit();
    let speedup = unit
        .filter(|_| asked != Precision::Fp32)
        .and_then(bf16_speedup);
    choose(asked, unit, speedup)
}

/// The rate of this core's bf16 `unit` (AMX tiles or AVX512-BF16 dot products) over its fp32
/// FMA rate (FLOPs per second, best of 3 short runs each), measured once per process; `None`
/// without the unit.
pub fn bf16_speedup(unit: Unit) -> Option<f64> {
    // Each unit's ratio measured only when asked for: a run needs its fastest unit's alone.
    static AMX: OnceLock<Option<f64>> = OnceLock::new();
    static NATIVE: OnceLock<Option<f64>> = OnceLock::new();
    let best = |kind| {
        (0..3)
            .filter_map(|_| peak_gflops(kind, 200_000))
            .fold(0.0, f64::max)
    };
    let ratio = |kind| {
        let (x, fp32) = (best(kind), best(Peak::Fp32));
        (fp32 > 0.0 && x > 0.0).then(|| x / fp32)
    };
    match unit {
        Unit::Amx => *AMX.get_or_init(|| ratio(Peak::Amx)),
        Unit::Native => *NATIVE.get_or_init(|| ratio(Peak::Bf16)),
        Unit::Emulated => None,
    }
}

/// The instruction a throughput loop runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peak {
    /// `vfmadd231ps` on 16 fp32 lanes (32 FLOPs), or on 8 (16 FLOPs) on a CPU with AVX2 and
    /// FMA but no AVX-512: the widest FMA the fp32 kernels dispatch to on that CPU.
    Fp32,
    /// `vdpbf16ps`: 32 bf16 products added in pairs into 16 fp32 lanes: 64 FLOPs.
    Bf16,
    /// `tdpbf16ps`: a 16 × 32 by 32 × 16 bf16 tile product into 16 × 16 fp32: 16,384 FLOPs
    /// (`iters / 16` rounds of four, so a round costs about what the others' do).
    Amx,
}

/// GFLOP/s of one thread running `iters` rounds of twelve independent accumulators of `kind`
/// (more than latency × issue ports on the cores we know, so the loop measures the units'
/// throughput: the most a GEMM can approach). `None` when the CPU lacks the instruction.
pub fn peak_gflops(kind: Peak, iters: u64) -> Option<f64> {
    if kind == Peak::Amx {
        return super::amx::peak_gflops((iters / 16).max(1));
    }
    #[cfg(target_arch = "x86_64")]
    {
        let t0 = std::time::Instant::now();
        let flops = match kind {
            Peak::Fp32 if std::is_x86_feature_detected!("avx512f") => {
                // SAFETY: the CPU has AVX512F (checked on this line's guard).
                unsafe { loops::fp32(iters) }
            }
            Peak::Fp32
                if std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma") =>
            {
                // SAFETY: the CPU has AVX2 and FMA (checked on this line's guard).
                unsafe { loops::fp32_avx2(iters) }
            }
            Peak::Bf16 if std::is_x86_feature_detected!("avx512bf16") => {
                // SAFETY: the CPU has AVX512-BF16 (checked on this line's guard).
                unsafe { loops::bf16(iters) }
            }
            _ => return None,
        };
        Some(flops / t0.elapsed().as_secs_f64().max(1e-9) / 1e9)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kind, iters);
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod loops {
    use std::arch::x86_64::*;
    use std::hint::black_box;

    const ACCS: usize = 12;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fp32(iters: u64) -> f64 {
        let x = _mm512_set1_ps(black_box(0.999_999));
        let y = _mm512_set1_ps(1e-7);
        let mut acc = [_mm512_set1_ps(1.0); ACCS];
        for _ in 0..black_box(iters) {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, x, y);
            }
        }
        black_box(acc);
        (iters * ACCS as u64 * 32) as f64
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fp32_avx2(iters: u64) -> f64 {
        let x = _mm256_set1_ps(black_box(0.999_999));
        let y = _mm256_set1_ps(1e-7);
        let mut acc = [_mm256_set1_ps(1.0); ACCS];
        for _ in 0..black_box(iters) {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(*a, x, y);
            }
        }
        black_box(acc);
        (iters * ACCS as u64 * 16) as f64
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn bf16(iters: u64) -> f64 {
        let a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(black_box(1e-3)), _mm512_set1_ps(-1e-3));
        let b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.5), _mm512_set1_ps(0.25));
        let mut acc = [_mm512_set1_ps(1.0); ACCS];
        for _ in 0..black_box(iters) {
            for s in acc.iter_mut() {
                *s = _mm512_dpbf16_ps(*s, a, b);
            }
        }
        black_box(acc);
        (iters * ACCS as u64 * 64) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_bf16_only_where_the_unit_is_there_and_faster() {
        let (p, why) = choose(Precision::Auto, None, None);
        assert_eq!(p, Products::Fp32);
        assert!(why.contains("no AVX512-BF16"), "{why}");
        let (p, why) = choose(Precision::Auto, Some(Unit::Native), Some(0.7));
        assert_eq!(p, Products::Fp32);
        assert!(why.contains("0.70×"), "{why}");
        let (p, why) = choose(Precision::Auto, Some(Unit::Native), Some(2.0));
        assert_eq!(p, Products::Bf16(Unit::Native));
        assert!(
            why.contains("2.00×") && why.contains("AVX512-BF16"),
            "{why}"
        );
        let (p, why) = choose(Precision::Auto, Some(Unit::Amx), Some(15.0));
        assert_eq!(p, Products::Bf16(Unit::Amx));
        assert!(why.contains("AMX"), "{why}");
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_fp32_peak_is_measured_on_any_cpu_with_vector_fmas() {
        let fma = std::is_x86_feature_detected!("avx512f")
            || (std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"));
        let gflops = peak_gflops(Peak::Fp32, 100_000);
        assert_eq!(gflops.is_some(), fma, "{gflops:?}");
        assert!(gflops.is_none_or(|g| g > 0.1), "{gflops:?}");
    }

    #[test]
    fn bf16_asked_runs_everywhere_natively_or_emulated() {
        assert_eq!(
            choose(Precision::Bf16, Some(Unit::Native), Some(2.0)).0,
            Products::Bf16(Unit::Native)
        );
        assert_eq!(
            choose(Precision::Bf16, Some(Unit::Amx), Some(15.0)).0,
            Products::Bf16(Unit::Amx)
        );
        // A bf16 unit slower than the fp32 FMAs: the same rounding on the fp32 units.
        let (p, why) = choose(Precision::Bf16, Some(Unit::Native), Some(0.45));
        assert_eq!(p, Products::Bf16(Unit::Emulated));
        assert!(why.contains("0.45×"), "{why}");
        let (p, why) = choose(Precision::Bf16, None, None);
        assert_eq!(p, Products::Bf16(Unit::Emulated));
        assert!(why.contains("emulated"), "{why}");
        assert_eq!(
            choose(Precision::Fp32, Some(Unit::Amx), Some(3.0)).0,
            Products::Fp32
        );
        assert_eq!(resolve(Precision::Bf16, false).0, Products::Fp32);
    }
}

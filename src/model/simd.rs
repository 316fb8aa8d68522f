//! The vector instructions the CPU kernels are written in: a few operations on a register of
//! `LANES` floats, implemented three times (AVX-512, AVX2+FMA, and plain arrays for any other
//! CPU), and [`dispatch`], which runs a kernel compiled for the chosen set. The default x86-64
//! target only has SSE2, so each kernel is monomorphised per set inside a `#[target_feature]`
//! function and picked at run time; a [`Level`] can only be made for a set the CPU has, which is
//! what makes that call sound.

/// A register of `LANES` f32s and the operations the kernels need.
///
/// # Safety
/// The methods are `unsafe` because they use instructions that must exist on the CPU; they are
/// only reached through [`dispatch`] with a [`Level`] that checked this. Pointers must be valid
/// for `LANES` floats.
pub(crate) trait Simd {
    const LANES: usize;
    /// Rows of a register tile: `MR × 4` accumulators, the `MR` broadcast left operands and one
    /// weight vector fit in the register file (16 of AVX2's 16, 31 of AVX-512's 32).
    const MR: usize;
    type V: Copy;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// `a · b + c`
    unsafe fn madd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
}

/// Eight floats in an array: the fallback for CPUs without AVX2 (the compiler vectorises what
/// it can for the baseline target).
#[derive(Clone, Copy)]
pub(crate) struct Portable;

impl Simd for Portable {
    const LANES: usize = 8;
    const MR: usize = 2;
    type V = [f32; 8];
    #[inline(always)]
    unsafe fn zero() -> Self::V {
        [0.0; 8]
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self::V {
        [x; 8]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        // SAFETY: the caller guarantees 8 readable floats at `p`.
        unsafe { std::ptr::read_unaligned(p as *const [f32; 8]) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        // SAFETY: the caller guarantees 8 writable floats at `p`.
        unsafe { std::ptr::write_unaligned(p as *mut [f32; 8], v) }
    }
    #[inline(always)]
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] + b[i])
    }
    #[inline(always)]
    unsafe fn madd(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] * b[i] + c[i])
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Simd;
    use std::arch::x86_64::*;

    /// 16 lanes; 32 registers hold a 6 × 4 accumulator tile and the four weight vectors.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx512;

    impl Simd for Avx512 {
        const LANES: usize = 16;
        const MR: usize = 6;
        type V = __m512;
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn zero() -> __m512 {
            _mm512_setzero_ps()
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn splat(x: f32) -> __m512 {
            _mm512_set1_ps(x)
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load(p: *const f32) -> __m512 {
            // SAFETY: the caller guarantees 16 readable floats at `p`.
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn store(p: *mut f32, v: __m512) {
            // SAFETY: the caller guarantees 16 writable floats at `p`.
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn madd(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
    }

    /// 8 lanes; 16 registers hold a 3 × 4 accumulator tile (the weights come from memory).
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2;

    impl Simd for Avx2 {
        const LANES: usize = 8;
        const MR: usize = 3;
        type V = __m256;
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn zero() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn load(p: *const f32) -> __m256 {
            // SAFETY: the caller guarantees 8 readable floats at `p`.
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn store(p: *mut f32, v: __m256) {
            // SAFETY: the caller guarantees 8 writable floats at `p`.
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn madd(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512};

/// An instruction set the kernels can run with on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level(Set);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Set {
    Avx512,
    Avx2,
    Portable,
}

/// `CHARLAB_SIMD`: a narrower instruction set than the CPU's widest, asked for to compare them
/// on one machine (`avx512` leaves out AVX512-BF16, `avx2` and `portable` all of AVX-512).
fn asked() -> Option<String> {
    std::env::var("CHARLAB_SIMD").ok()
}

impl Level {
    /// The widest set this CPU has, or the narrower one `CHARLAB_SIMD` asks for.
    pub fn detect() -> Level {
        let asked = asked();
        let wanted = match asked.as_deref() {
            Some("portable") => Set::Portable,
            Some("avx2") => Set::Avx2,
            _ => Set::Avx512,
        };
        Level::all()
            .into_iter()
            .find(|l| l.0 as u8 >= wanted as u8)
            .unwrap_or(Level(Set::Portable))
    }

    /// Whether the bf16 products may use AVX512-BF16: the CPU has it, beside the AVX-512 set
    /// [`Level::detect`] picks, and `CHARLAB_SIMD` does not ask for less.
    pub fn detect_bf16() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let narrowed = matches!(asked().as_deref(), Some("avx512" | "avx2" | "portable"));
            !narrowed
                && Level::detect().0 == Set::Avx512
                && std::is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// Whether kernels at this level may also use AVX512-BF16 (the recurrence's bf16 tiles run
    /// on the AVX-512 set).
    pub fn has_bf16(self) -> bool {
        self.0 == Set::Avx512 && Level::detect_bf16()
    }

    /// Every set this CPU has, widest first.
    pub fn all() -> Vec<Level> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512dq")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("avx2")
            {
                out.push(Level(Set::Avx512));
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                out.push(Level(Set::Avx2));
            }
        }
        out.push(Level(Set::Portable));
        out
    }

    /// Floats per register (the kernels' `S::LANES`): the unit-block width of the packed weights.
    pub fn lanes(self) -> usize {
        struct Lanes;
        impl Kernel for Lanes {
            type Out = usize;
            fn call<S: Simd>(self) -> usize {
                S::LANES
            }
        }
        dispatch(self, Lanes)
    }

    pub fn name(self) -> &'static str {
        match self.0 {
            Set::Avx512 => "avx512",
            Set::Avx2 => "avx2",
            Set::Portable => "portable",
        }
    }
}

/// A kernel generic over the vector set: `dispatch` calls `call::<S>()` compiled for one set.
pub(crate) trait Kernel {
    type Out;
    fn call<S: Simd>(self) -> Self::Out;
}

/// Runs `k` with the instructions of `level`. `call` and what it calls should be
/// `#[inline(always)]`, so that all of it is compiled inside the `#[target_feature]` function.
pub(crate) fn dispatch<K: Kernel>(level: Level, k: K) -> K::Out {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
        unsafe fn v4<K: Kernel>(k: K) -> K::Out {
            k.call::<Avx512>()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn v3<K: Kernel>(k: K) -> K::Out {
            k.call::<Avx2>()
        }
        match level.0 {
            // SAFETY: a `Level` of a set is only made (by `Level::all`) when the CPU has it.
            Set::Avx512 => return unsafe { v4(k) },
            // SAFETY: as above.
            Set::Avx2 => return unsafe { v3(k) },
            Set::Portable => {}
        }
    }
    k.call::<Portable>()
}

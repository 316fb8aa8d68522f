//! The element-wise inner loops of the fused CPU ops (LSTM cell, softmax), written so the
//! compiler vectorises them, and compiled once more for AVX-512 and once for AVX2+FMA, picked
//! at run time. The default x86-64 target only has SSE2; libm's `expf` is a scalar call that
//! stops vectorisation, and it was a tenth of a step. Hence [`exp`]: a branch-free Cephes-style
//! polynomial (relative error ~1e-7, below f32's own rounding of the results it feeds).

/// `exp(x)` for f32, vectorisable: `2^n · p(r)` with `x = n·ln2 + r`, `|r| ≤ ln2/2`.
/// Inputs are clamped to [-87, 88] (the finite, normal range); NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so n·C1 is exact.
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // Adding then subtracting 1.5·2^23 rounds to the nearest integer without a call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * C1 - n * C2;
    let z = r * r;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 0.5)
        * z
        + r
        + 1.0;
    p * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// tanh through one `exp`; `x` is clamped so `exp(2x)` stays finite (tanh(±15) = ±1 in f32).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let e = exp(2.0 * x.clamp(-15.0, 15.0));
    (e - 1.0) / (e + 1.0)
}

/// Compiles `$body` (an `#[inline(always)]` fn) three times and dispatches on the CPU's features.
macro_rules! multiversion {
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $body:ident) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512dq")
                    && std::is_x86_feature_detected!("avx512vl")
                {
                    // SAFETY: the features `v4` was compiled for are present on this CPU.
                    return unsafe { v4($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: as above, for `v3`.
                    return unsafe { v3($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

#[inline(always)]
fn cell_forward_body(gates: &[f32], c_prev: &[f32], h_out: &mut [f32], acts: &mut [f32]) {
    let h = c_prev.len();
    let h_out = &mut h_out[..h];
    let (c_out, ifgo) = acts[..5 * h].split_at_mut(h);
    let (ifg, o) = ifgo.split_at_mut(3 * h);
    let (if_, g) = ifg.split_at_mut(2 * h);
    let (i, f) = if_.split_at_mut(h);
    let gates = &gates[..4 * h];
    for (a, &z) in i.iter_mut().zip(&gates[..h]) {
        *a = sigmoid(z);
    }
    for (a, &z) in f.iter_mut().zip(&gates[h..2 * h]) {
        *a = sigmoid(z);
    }
    for (a, &z) in g.iter_mut().zip(&gates[2 * h..3 * h]) {
        *a = tanh(z);
    }
    for (a, &z) in o.iter_mut().zip(&gates[3 * h..]) {
        *a = sigmoid(z);
    }
    for j in 0..h {
        let c = f[j] * c_prev[j] + i[j] * g[j];
        c_out[j] = c;
        h_out[j] = o[j] * tanh(c);
    }
}

multiversion! {
    /// One LSTM cell step for one batch row: `gates` = the four pre-activations `[i f g o]`
    /// (each `H` long), `c_prev` = `c_{t-1}`; writes `h_out` (H) and `acts` = `[c i f g o]` (5·H).
    pub fn cell_forward(gates: &[f32], c_prev: &[f32], h_out: &mut [f32], acts: &mut [f32]) => cell_forward_body
}

#[inline(always)]
fn cell_backward_body(
    acts: &[f32],
    dh_out: &[f32],
    c_prev: &[f32],
    dh_next: &[f32],
    dc_next: &mut [f32],
    da: &mut [f32],
) {
    let h = c_prev.len();
    let acts = &acts[..5 * h];
    let (c, i, f, g, o) = (
        &acts[..h],
        &acts[h..2 * h],
        &acts[2 * h..3 * h],
        &acts[3 * h..4 * h],
        &acts[4 * h..5 * h],
    );
    let (dh_out, dh_next, dc_next) = (&dh_out[..h], &dh_next[..h], &mut dc_next[..h]);
    let (da_if, da_go) = da[..4 * h].split_at_mut(2 * h);
    let (da_i, da_f) = da_if.split_at_mut(h);
    let (da_g, da_o) = da_go.split_at_mut(h);
    for j in 0..h {
        let tc = tanh(c[j]);
        let dh = dh_out[j] + dh_next[j];
        let dc = dc_next[j] + dh * o[j] * (1.0 - tc * tc);
        dc_next[j] = dc * f[j];
        da_i[j] = dc * g[j] * i[j] * (1.0 - i[j]);
        da_f[j] = dc * c_prev[j] * f[j] * (1.0 - f[j]);
        da_g[j] = dc * i[j] * (1.0 - g[j] * g[j]);
        da_o[j] = dh * tc * o[j] * (1.0 - o[j]);
    }
}

multiversion! {
    /// The backward of [`cell_forward`] for one row: from the saved `acts`, the gradient reaching
    /// this step's `h` from above (`dh_out`) and through time (`dh_next`, `dc_next`), writes the
    /// pre-activation gradient `da` (4·H) and leaves `dc_next` = the gradient of `c_{t-1}`.
    /// The caller turns `da` into the next `dh_next` (`da · W_hh`).
    pub fn cell_backward(
        acts: &[f32],
        dh_out: &[f32],
        c_prev: &[f32],
        dh_next: &[f32],
        dc_next: &mut [f32],
        da: &mut [f32]
    ) => cell_backward_body
}

/// Lanes of the explicit accumulators below: a float sum or max over a row is a serial chain
/// unless split into independent lanes (the compiler may not reassociate float operations).
const LANES: usize = 16;

#[inline(always)]
fn softmax_body(row: &mut [f32], bias: &[f32], target: usize) -> (f32, f32) {
    let v = row.len();
    let bias = &bias[..v];
    let split = v - v % LANES;
    // Pass 1: add the bias; per-lane max and the first index where it occurs.
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut at = [0u32; LANES];
    for (c, (zs, bs)) in row[..split]
        .chunks_exact_mut(LANES)
        .zip(bias[..split].chunks_exact(LANES))
        .enumerate()
    {
        for l in 0..LANES {
            let z = zs[l] + bs[l];
            zs[l] = z;
            let better = z > mx[l];
            mx[l] = if better { z } else { mx[l] };
            at[l] = if better {
                (c * LANES + l) as u32
            } else {
                at[l]
            };
        }
    }
    let (mut max, mut arg) = (f32::NEG_INFINITY, v);
    for l in 0..LANES {
        if mx[l] > max || (mx[l] == max && (at[l] as usize) < arg) {
            (max, arg) = (mx[l], at[l] as usize);
        }
    }
    for j in split..v {
        row[j] += bias[j];
        if row[j] > max {
            (max, arg) = (row[j], j);
        }
    }
    let zt = row[target] - max;
    // Pass 2: exponentials and their sum.
    let mut acc = [0f32; LANES];
    for zs in row[..split].chunks_exact_mut(LANES) {
        for l in 0..LANES {
            zs[l] = exp(zs[l] - max);
            acc[l] += zs[l];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for z in &mut row[split..] {
        *z = exp(*z - max);
        sum += *z;
    }
    let inv = 1.0 / sum;
    for z in row.iter_mut() {
        *z *= inv;
    }
    // loss = log Σ exp(z − max) − (z_t − max); a row of NaNs has no argmax and counts as a miss.
    (sum.ln() - zt, (arg == target) as u8 as f32)
}

multiversion! {
    /// Softmax of one row of logits plus `bias`, in place; returns (cross-entropy against
    /// `target`, 1.0 when the argmax is the target). `target < row.len()` (checked by the op).
    pub fn softmax(row: &mut [f32], bias: &[f32], target: usize) -> (f32, f32) => softmax_body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm_over_the_range_used() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(-1000.0), exp(-87.0));
    }

    #[test]
    fn softmax_matches_the_plain_formula_argmax_takes_the_first_maximum() {
        // Lengths below, at and above the lane count, with a tie for the maximum.
        for v in [3usize, 16, 37, 300] {
            let logits: Vec<f32> = (0..v)
                .map(|j| ((j * 7919) % 23) as f32 * 0.37 - 3.0)
                .collect();
            let bias: Vec<f32> = (0..v).map(|j| (j % 5) as f32 * 0.01).collect();
            let z: Vec<f32> = logits.iter().zip(&bias).map(|(a, b)| a + b).collect();
            let max = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let first = z.iter().position(|&x| x == max).unwrap();
            let lse = max + z.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
            for target in [0, first, v - 1] {
                let mut row = logits.clone();
                let (loss, hit) = softmax(&mut row, &bias, target);
                assert!((loss - (lse - z[target])).abs() < 1e-5, "v={v} t={target}");
                assert_eq!(hit, (target == first) as u8 as f32, "v={v} t={target}");
                let total: f32 = row.iter().sum();
                assert!((total - 1.0).abs() < 1e-5);
                assert!((row[target] - (z[target] - lse).exp()).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn tanh_and_sigmoid_match_libm() {
        let mut x = -20.0f32;
        while x < 20.0 {
            assert!((tanh(x) - x.tanh()).abs() < 2e-7, "tanh({x})");
            assert!(
                (sigmoid(x) - 1.0 / (1.0 + (-x).exp())).abs() < 2e-7,
                "sigmoid({x})"
            );
            x += 0.0131;
        }
    }
}

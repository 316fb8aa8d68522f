//! The element-wise inner loops of the CPU path (LSTM cell forward and backward, softmax
//! cross-entropy), written as plain loops the compiler vectorises. They are `#[inline(always)]`
//! and only called from inside [`super::simd::dispatch`]ed kernels, so they are compiled for
//! AVX-512 or AVX2 there (the default x86-64 target only has SSE2). libm's `expf` is a scalar
//! call that stops vectorisation, and it was a tenth of a step; hence [`exp`]: a branch-free
//! Cephes-style polynomial (relative error ~1e-7, below f32's own rounding of what it feeds).

/// `exp(x)` for f32, vectorisable: `2^n · p(r)` with `x = n·ln2 + r`, `|r| ≤ ln2/2`.
/// Inputs are clamped to [-87, 88] (the finite, normal range); NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so n·C1 is exact.
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // Adding 1.5·2^23 rounds to the nearest integer without a call, and leaves that integer in
    // the sum's low mantissa bits (its bits are ROUND's plus n).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
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
    // 2^n from n's bits: `n as i32` would saturate NaN and out-of-range values, which keeps the
    // compiler from vectorising the conversion (16 scalar conversions per vector).
    let biased = shifted
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127);
    p * f32::from_bits(biased << 23)
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

/// The cell update on one register tile, as it leaves the recurrent GEMM: `tile` holds the
/// pre-activations of `lanes` hidden units (`i f g o`, `lanes` each), `c_prev` their `c_{t-1}`.
/// Writes `c i f g o` to `out + q·stride` (the row's five `Hp`-long segments) and `h` to `h_out`.
///
/// # Safety
/// `lanes` is 8 or 16; `c_prev`, `h_out` and `out + q·stride` (q < 5) hold `lanes` floats.
#[inline(always)]
pub(crate) unsafe fn cell_block(
    lanes: usize,
    tile: &[f32; 64],
    c_prev: *const f32,
    out: *mut f32,
    stride: usize,
    h_out: *mut f32,
) {
    // SAFETY: the caller's contract. `lanes` is a constant where this is inlined, so one branch
    // remains.
    unsafe {
        if lanes == 16 {
            cell_lanes::<16>(tile, c_prev, out, stride, h_out);
        } else {
            cell_lanes::<8>(tile, c_prev, out, stride, h_out);
        }
    }
}

/// [`cell_block`] for a tile of `W` units. The results go through local arrays first: written straight through the output pointers, the compiler
/// cannot rule out aliasing and keeps the loop scalar (five scalar `exp`s per unit).
///
/// # Safety
/// As [`cell_block`], for `W` floats.
#[inline(always)]
unsafe fn cell_lanes<const W: usize>(
    tile: &[f32; 64],
    c_prev: *const f32,
    out: *mut f32,
    stride: usize,
    h_out: *mut f32,
) {
    let mut cp = [0f32; W];
    let mut r = [[0f32; W]; 6];
    // SAFETY: `c_prev` holds W floats (the caller's contract).
    unsafe { std::ptr::copy_nonoverlapping(c_prev, cp.as_mut_ptr(), W) };
    for u in 0..W {
        let i = sigmoid(tile[u]);
        let f = sigmoid(tile[W + u]);
        let g = tanh(tile[2 * W + u]);
        let o = sigmoid(tile[3 * W + u]);
        let c = f * cp[u] + i * g;
        r[0][u] = c;
        r[1][u] = i;
        r[2][u] = f;
        r[3][u] = g;
        r[4][u] = o;
        r[5][u] = o * tanh(c);
    }
    // SAFETY: as above, for the five segments and h_out.
    unsafe {
        for (q, v) in r[..5].iter().enumerate() {
            std::ptr::copy_nonoverlapping(v.as_ptr(), out.add(q * stride), W);
        }
        std::ptr::copy_nonoverlapping(r[5].as_ptr(), h_out, W);
    }
}

/// The backward of the cell for one row: from the saved `acts` (`c i f g o`, `H` each), the
/// gradient reaching this step's `h` from above (`dh_out`) and through time (`dh_next`,
/// `dc_next`), writes the pre-activation gradient `da` (`i f g o`) and leaves `dc_next` = the
/// gradient of `c_{t-1}`. The caller turns `da` into the next `dh_next` (`da · W_hh`).
#[inline(always)]
pub(crate) fn cell_backward_row(
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

/// Lanes of the explicit accumulators below: a float sum or max over a row is a serial chain
/// unless split into independent lanes (the compiler may not reassociate float operations).
const LANES: usize = 16;

/// Softmax cross-entropy of one row of logits plus `bias`, in place; returns (loss against
/// `target`, 1.0 when the argmax is the target; a row of NaNs has no argmax and is a miss).
/// With `grad = Some((scale, db))` the row becomes the loss gradient `scale · (p − onehot)` and
/// `db` gets it added (the bias gradient, in the same pass); otherwise the row is left as
/// `exp(z − max)`. `target < row.len()` (the caller checks).
#[inline(always)]
pub(crate) fn softmax_row(
    row: &mut [f32],
    bias: &[f32],
    target: usize,
    grad: Option<(f32, &mut [f32])>,
) -> (f32, f32) {
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
    if let Some((scale, db)) = grad {
        // Pass 3: the gradient and the bias gradient.
        let k = scale / sum;
        let db = &mut db[..v];
        for (z, d) in row.iter_mut().zip(db.iter_mut()) {
            *z *= k;
            *d += *z;
        }
        row[target] -= scale;
        db[target] -= scale;
    }
    // loss = log Σ exp(z − max) − (z_t − max)
    (sum.ln() - zt, (arg == target) as u8 as f32)
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
                let mut db = vec![0.5f32; v];
                let (loss, hit) = softmax_row(&mut row, &bias, target, Some((0.25, &mut db)));
                assert!((loss - (lse - z[target])).abs() < 1e-5, "v={v} t={target}");
                assert_eq!(hit, (target == first) as u8 as f32, "v={v} t={target}");
                // The gradient of 0.25 · CE: 0.25 · (p − onehot); it sums to 0, and db got it.
                let total: f32 = row.iter().sum();
                assert!(total.abs() < 1e-6);
                for j in 0..v {
                    let p = (z[j] - lse).exp();
                    let want = 0.25 * (p - (j == target) as u8 as f32);
                    assert!((row[j] - want).abs() < 1e-6, "v={v} t={target} j={j}");
                    assert!((db[j] - 0.5 - want).abs() < 1e-6);
                }
                let mut plain = logits.clone();
                let (loss2, hit2) = softmax_row(&mut plain, &bias, target, None);
                assert_eq!((loss2, hit2), (loss, hit));
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

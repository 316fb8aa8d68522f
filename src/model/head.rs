//! The decoder and its loss over a group's rows: `logits = top · W_headᵀ + b`, softmax
//! cross-entropy and accuracy, and in training the gradients `dW_head`, `db` and the gradient
//! reaching the top layer, `dy = dlogits · W_head`.
//!
//! Two ways, the same arithmetic. [`plain`] computes the whole `[N, V]` logits, the softmax over
//! them, then the two backward products. [`fused`] (AMX tiles only) does the same a block of rows
//! at a time, so a block's logits and their gradient never leave the core's L2: on the tiles the
//! products run at ≈ 15× fp32's rate, and the plain order spent the decoder's time moving its
//! fp32 logits (24 MB a group at config M's vocabulary: written by the product, read and
//! rewritten by the softmax, read twice more to be packed to bf16) rather than multiplying.
//! Fused, each block's gradient is packed to bf16 straight from the cache into both layouts
//! the backward products read: pairs along V (for `dy`, computed there and then) and pairs
//! along N (for `dW_head`, one product over all rows at the end, oriented as the plain product
//! orients it). Every sum over K runs in the plain path's order, so the logits, the loss and
//! all three gradients are the same bits.

use super::amx::{self, PackedA, PackedB};
use super::gemm::{View, ViewMut};
use super::kernels;
use super::precision::Products;
use super::simd::{dispatch, Kernel, Level, Simd};

/// Loss and accuracy of a window: sums over its positions.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sums {
    pub loss: f64,
    pub hits: f64,
    pub count: usize,
}

impl std::ops::AddAssign for Sums {
    fn add_assign(&mut self, o: Sums) {
        self.loss += o.loss;
        self.hits += o.hits;
        self.count += o.count;
    }
}

/// Rows of logits per block of [`fused`]: 64 rows of config M's vocabulary (2,963) are 760 KB,
/// which stay in L2 beside the packed `W_head` (two layouts of 1.5 MB at hidden 256 share the
/// rest with L3). A block is also whole 32-row tiles, as [`PackedB::put_rows`] needs.
const BLOCK: usize = 64;

/// What the decoder reads: the top layer's output (`[N, H]`), `W_head` (`[V, H]`), `b`, and
/// each row's target.
pub(crate) struct Head<'a> {
    pub top: View<'a>,
    pub w: &'a [f32],
    pub bias: &'a [f32],
    pub targets: &'a [u32],
}

/// Where training's gradients go: `dW_head` and `db` (overwritten), `dy` (`[N, H]` in rows of
/// `dy_stride`, its first `H` columns overwritten); the loss is scaled by `scale`.
pub(crate) struct Grads<'a> {
    pub scale: f32,
    pub dw: &'a mut [f32],
    pub db: &'a mut [f32],
    pub dy: &'a mut [f32],
    pub dy_stride: usize,
}

impl Head<'_> {
    /// `(N, V, H)`.
    fn dims(&self) -> (usize, usize, usize) {
        let (n, h) = (self.top.row_count(), self.top.t().row_count());
        (n, self.bias.len(), h)
    }

    fn w(&self) -> View<'_> {
        let (_, v, h) = self.dims();
        View::new(self.w, v, h, h)
    }
}

/// Whole logits, softmax, then the backward products, with `products`; `logits` holds `[N, V]`
/// (the logits, then their gradient).
pub(crate) fn plain(
    products: Products,
    level: Level,
    head: &Head,
    logits: &mut [f32],
    mut grads: Option<Grads>,
) -> Sums {
    let (n, v, h) = head.dims();
    let logits = &mut logits[..n * v];
    products.matmul(ViewMut::new(logits, n, v, v), head.top, head.w().t(), false);
    let grad = grads.as_mut().map(|g| {
        g.db.fill(0.0);
        (g.scale, &mut g.db[..])
    });
    let sums = softmax_rows(level, logits, head.bias, head.targets, grad);
    if let Some(g) = grads {
        let dl = View::new(logits, n, v, v);
        products.matmul(ViewMut::new(g.dw, v, h, h), dl.t(), head.top, false);
        products.matmul(ViewMut::new(g.dy, n, h, g.dy_stride), dl, head.w(), false);
    }
    sums
}

/// [`fused`]'s packed operands and its block of logits, kept across steps.
#[derive(Default)]
pub(crate) struct Scratch {
    /// `top`, pairs along H: the logits' left operand.
    top: PackedA,
    /// `W_headᵀ`: the logits' right operand.
    w_t: PackedB,
    /// `W_head`, pairs along V: `dy`'s right operand.
    w: PackedB,
    /// `topᵀ`, pairs along N: the left operand of `dW_headᵀ = topᵀ · dlogits`.
    top_t: PackedA,
    /// One block's logits, then their gradient.
    logits: Vec<f32>,
    /// One block's gradient, pairs along V: `dy`'s left operand.
    rows: PackedA,
    /// `dlogits`, pairs along N, a block of rows at a time: `dW_headᵀ`'s right operand.
    dl: PackedB,
}

/// What [`plain`] computes with `Products::Bf16(Unit::Amx)`, a block of rows at a time. The
/// caller checks [`amx::available`].
pub(crate) fn fused(level: Level, head: &Head, s: &mut Scratch, mut grads: Option<Grads>) -> Sums {
    let (n, v, h) = head.dims();
    let mut sums = Sums::default();
    if n == 0 || v == 0 || h == 0 {
        // Nothing for the tiles: the plain path's trivial cases.
        s.logits.resize(n * v, 0.0);
        return plain(Products::Fp32, level, head, &mut s.logits, grads);
    }
    s.top.pack(head.top);
    s.w_t.pack(head.w().t());
    if let Some(g) = &mut grads {
        g.db.fill(0.0);
        s.w.pack(head.w());
        s.top_t.pack(head.top.t());
        s.dl.for_rows(n, v);
    }
    s.logits.resize(BLOCK * v, 0.0);
    for r0 in (0..n).step_by(BLOCK) {
        let rows = BLOCK.min(n - r0);
        let block = &mut s.logits[..rows * v];
        let logits = ViewMut::new(block, rows, v, v);
        amx::matmul_prepacked(logits, &s.top, r0, &s.w_t, false, false);
        let grad = grads.as_mut().map(|g| (g.scale, &mut g.db[..]));
        let targets = &head.targets[r0..r0 + rows];
        sums += softmax_rows(level, block, head.bias, targets, grad);
        if let Some(g) = &mut grads {
            let dl = View::new(block, rows, v, v);
            s.dl.put_rows(dl, r0);
            s.rows.pack(dl);
            let dy = ViewMut::new(&mut g.dy[r0 * g.dy_stride..], rows, h, g.dy_stride);
            amx::matmul_prepacked(dy, &s.rows, 0, &s.w, false, false);
        }
    }
    if let Some(g) = grads {
        // As the plain product computes it: the transpose, so the smaller operand (`top`) is
        // the one packed across its rows.
        let dw = ViewMut::new(g.dw, v, h, h);
        amx::matmul_prepacked(dw, &s.top_t, 0, &s.dl, false, true);
    }
    sums
}

/// The softmax pass over rows of logits (`V` = `bias.len()` each; see
/// [`kernels::softmax_row`]), each row against its target; with `grad = Some((scale, db))` the
/// rows become their gradient and `db` gets their sum added.
pub(crate) fn softmax_rows(
    level: Level,
    logits: &mut [f32],
    bias: &[f32],
    targets: &[u32],
    grad: Option<(f32, &mut [f32])>,
) -> Sums {
    dispatch(
        level,
        Rows {
            logits,
            bias,
            targets,
            grad,
        },
    )
}

struct Rows<'a> {
    logits: &'a mut [f32],
    bias: &'a [f32],
    targets: &'a [u32],
    grad: Option<(f32, &'a mut [f32])>,
}

impl Kernel for Rows<'_> {
    type Out = Sums;
    #[inline(always)]
    fn call<S: Simd>(mut self) -> Sums {
        let mut sums = Sums::default();
        let v = self.bias.len();
        for (row, &t) in self.logits.chunks_exact_mut(v).zip(self.targets) {
            let grad = self.grad.as_mut().map(|(k, db)| (*k, &mut db[..]));
            let (loss, hit) = kernels::softmax_row(row, self.bias, t as usize, grad);
            sums.loss += loss as f64;
            sums.hits += hit as f64;
            sums.count += 1;
        }
        sums
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::bf16::Unit;
    use crate::model::test_values;

    /// One decoder's inputs: `n` rows of `top` (`h` wide in rows of `stride`), `V` = `v`.
    struct Case {
        top: Vec<f32>,
        w: Vec<f32>,
        bias: Vec<f32>,
        targets: Vec<u32>,
        n: usize,
        h: usize,
        stride: usize,
    }

    impl Case {
        fn new(n: usize, v: usize, h: usize, stride: usize, seed: u64) -> Case {
            Case {
                top: test_values(n * stride, seed, 1.0),
                w: test_values(v * h, seed + 1, 0.5),
                bias: test_values(v, seed + 2, 0.5),
                targets: (0..n).map(|i| ((i * 7 + 3) % v) as u32).collect(),
                n,
                h,
                stride,
            }
        }

        fn head(&self) -> Head<'_> {
            Head {
                top: View::new(&self.top, self.n, self.h, self.stride),
                w: &self.w,
                bias: &self.bias,
                targets: &self.targets,
            }
        }
    }

    /// Loss sums, `dW_head`, `db` and `dy` of one pass.
    type Out = (Sums, Vec<f32>, Vec<f32>, Vec<f32>);

    fn pass(c: &Case, train: bool, run: impl FnOnce(&Head, Option<Grads>) -> Sums) -> Out {
        let v = c.bias.len();
        // Stale values where the pass must overwrite: a path that skips a row or column shows.
        let (mut dw, mut db, mut dy) =
            (vec![7.0; v * c.h], vec![7.0; v], vec![7.0; c.n * c.stride]);
        let grads = train.then(|| Grads {
            scale: 1.0 / c.n as f32,
            dw: &mut dw,
            db: &mut db,
            dy: &mut dy,
            dy_stride: c.stride,
        });
        let sums = run(&c.head(), grads);
        (sums, dw, db, dy)
    }

    fn close(got: &[f32], want: &[f32], what: &str) {
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-5 * scale, "{what}[{i}]: {g} vs {w}");
        }
    }

    /// The fused decoder against the plain one with the same AMX products, on shapes that cut
    /// the row blocks and tiles at every edge (one row, an odd row count, rows past a block,
    /// a vocabulary of less than one tile and of several with a remainder, a padded `top`),
    /// one scratch reused across them all so stale buffers would show.
    #[test]
    fn the_fused_decoder_computes_what_the_plain_one_does_on_amx_tiles() {
        if !amx::available() {
            eprintln!("this CPU (or OS) gives no AMX tiles: the fused decoder is not run here");
            return;
        }
        let level = Level::detect();
        let mut scratch = Scratch::default();
        for (i, &(n, v, h, stride)) in [
            (70, 37, 20, 32),
            (1, 5, 3, 16),
            (129, 300, 64, 64),
            (15, 16, 33, 48),
            (64, 1000, 40, 48),
        ]
        .iter()
        .enumerate()
        {
            let c = Case::new(n, v, h, stride, 10 * i as u64);
            for train in [false, true] {
                let mut logits = vec![0.0; n * v];
                let amx = Products::Bf16(Unit::Amx);
                let want = pass(&c, train, |hd, g| plain(amx, level, hd, &mut logits, g));
                let got = pass(&c, train, |hd, g| fused(level, hd, &mut scratch, g));
                let what = format!("n {n} v {v} h {h} train {train}");
                assert_eq!(got.0.count, n, "{what}");
                assert_eq!(got.0.hits, want.0.hits, "{what}");
                assert!(
                    (got.0.loss - want.0.loss).abs() <= 1e-9 * want.0.loss.abs(),
                    "{what}"
                );
                close(&got.1, &want.1, &format!("{what} dW"));
                close(&got.2, &want.2, &format!("{what} db"));
                for r in 0..n {
                    let row = |o: &Out| o.3[r * stride..][..h].to_vec();
                    close(&row(&got), &row(&want), &format!("{what} dy row {r}"));
                }
            }
        }
    }

    /// The plain decoder in fp32 against softmax cross-entropy written out in f64, so the
    /// fused one (checked against the plain) is pinned to the real gradient too.
    #[test]
    fn the_plain_decoder_gives_the_loss_and_gradients_of_softmax_cross_entropy() {
        let (n, v, h) = (9, 11, 5);
        let c = Case::new(n, v, h, 8, 3);
        let mut logits = vec![0.0; n * v];
        let level = Level::detect();
        let (sums, dw, db, dy) = pass(&c, true, |hd, g| {
            plain(Products::Fp32, level, hd, &mut logits, g)
        });
        let (mut loss, mut want_dw, mut want_db) = (0.0, vec![0.0; v * h], vec![0.0; v]);
        for r in 0..n {
            let top = &c.top[r * 8..][..h];
            let z: Vec<f64> = (0..v)
                .map(|j| {
                    let dot: f64 = (0..h).map(|k| (top[k] * c.w[j * h + k]) as f64).sum();
                    dot + c.bias[j] as f64
                })
                .collect();
            let lse = z.iter().map(|x| x.exp()).sum::<f64>().ln();
            let t = c.targets[r] as usize;
            loss += lse - z[t];
            let mut want_dy = vec![0.0; h];
            for j in 0..v {
                let g = ((z[j] - lse).exp() - (j == t) as u8 as f64) / n as f64;
                want_db[j] += g;
                for k in 0..h {
                    want_dw[j * h + k] += g * top[k] as f64;
                    want_dy[k] += g * c.w[j * h + k] as f64;
                }
            }
            for k in 0..h {
                assert!(
                    (dy[r * 8 + k] as f64 - want_dy[k]).abs() < 1e-5,
                    "dy[{r}][{k}]"
                );
            }
        }
        assert!((sums.loss - loss).abs() < 1e-4, "{} vs {loss}", sums.loss);
        for (g, w) in dw.iter().zip(&want_dw).chain(db.iter().zip(&want_db)) {
            assert!((*g as f64 - w).abs() < 1e-5, "{g} vs {w}");
        }
    }
}

//! The decoder and loss: linear → softmax cross-entropy (and accuracy), as one fused CPU op.
//!
//! With a Chinese vocabulary (V ≈ 4,500) the logits are the largest tensor of a step
//! (`[B·T, V]`, 37 MB at batch 32 × seq 64). Done with candle ops, the head is a matmul, a
//! broadcast add, a log-softmax (max, subtract, exp, sum, log), a gather and a mean, and as many
//! again backwards, each a full pass over that tensor with its own allocation. The fused op makes
//! one pass forward (keeping the probabilities) and one backward (`p − onehot`), around the three
//! GEMMs that cannot be avoided. [`reference`] is the plain version, used off the CPU and by the
//! equivalence tests.

use super::kernels;
use super::lstm::{gemm, saved, slice};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use std::sync::Mutex;

/// Mean cross-entropy (a scalar tensor with gradient) and accuracy of `hidden · Wᵀ + b` against
/// `targets`, with candle ops.
pub fn reference(
    hidden: &Tensor,
    w: &Tensor,
    b: &Tensor,
    targets: &Tensor,
) -> Result<(Tensor, f32)> {
    let logits = hidden.matmul(&w.t()?)?.broadcast_add(b)?;
    let loss = candle_nn::loss::cross_entropy(&logits, targets)?;
    let hits = logits
        .detach()
        .argmax(1)?
        .eq(targets)?
        .to_dtype(DType::F32)?
        .mean_all()?
        .to_scalar::<f32>()?;
    Ok((loss, hits))
}

/// The same as [`reference`], fused (CPU only; other devices fall back to the reference).
pub fn fused(hidden: &Tensor, w: &Tensor, b: &Tensor, targets: &Tensor) -> Result<(Tensor, f32)> {
    if !hidden.device().is_cpu() {
        return reference(hidden, w, b, targets);
    }
    let op = HeadCe {
        targets: targets.to_vec1::<u32>()?,
        probs: Mutex::new(Vec::new()),
    };
    let out = hidden
        .contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, op)?;
    // Column 0: per-row loss (differentiable); column 1: 1.0 where argmax = target.
    let loss = out.narrow(1, 0, 1)?.mean_all()?;
    let acc = out
        .narrow(1, 1, 1)?
        .detach()
        .mean_all()?
        .to_scalar::<f32>()?;
    Ok((loss, acc))
}

/// Inputs `hidden [N, H]`, `w [V, H]`, `b [V]`; output `[N, 2]` (loss, hit) per row. The
/// softmax probabilities are kept from forward for backward.
struct HeadCe {
    targets: Vec<u32>,
    probs: Mutex<Vec<f32>>,
}

impl CustomOp3 for HeadCe {
    fn name(&self) -> &'static str {
        "linear-softmax-ce"
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
        let (n, h) = l1.shape().dims2()?;
        let (v, h2) = l2.shape().dims2()?;
        if h != h2 || l3.shape().elem_count() != v || self.targets.len() != n {
            candle_core::bail!("head: shapes do not match");
        }
        if let Some(&t) = self.targets.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("head: target {t} outside the vocabulary of {v}");
        }
        let (x, w, b) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let mut probs = vec![0f32; n * v];
        let threads = rayon::current_num_threads();
        // logits = x · wᵀ
        gemm(n, v, h, &mut probs, v, false, x, h, 1, w, 1, h, threads);
        let mut out = vec![0f32; n * 2];
        // Rows are independent: spread them over the run's threads.
        use rayon::prelude::*;
        probs
            .par_chunks_exact_mut(v)
            .zip(out.par_chunks_exact_mut(2))
            .zip(self.targets.par_iter())
            .for_each(|((row, o), &t)| {
                let (loss, correct) = kernels::softmax(row, b, t as usize);
                o[0] = loss;
                o[1] = correct;
            });
        *saved(&self.probs, "head")? = probs;
        Ok((CpuStorage::F32(out), Shape::from((n, 2))))
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, h) = hidden.dims2()?;
        let (v, _) = w.dims2()?;
        let mut d = std::mem::take(&mut *saved(&self.probs, "head")?);
        if d.len() != n * v {
            candle_core::bail!("head: backward ran twice or without forward");
        }
        let g = grad_res.flatten_all()?.to_vec1::<f32>()?;
        let mut db = vec![0f32; v];
        // dlogits = g_i · (p − onehot(t_i)), in place over the probabilities.
        for (i, row) in d.chunks_exact_mut(v).enumerate() {
            let gi = g[2 * i];
            row[self.targets[i] as usize] -= 1.0;
            for (j, z) in row.iter_mut().enumerate() {
                *z *= gi;
                db[j] += *z;
            }
        }
        let x = hidden.flatten_all()?.to_vec1::<f32>()?;
        let wv = w.flatten_all()?.to_vec1::<f32>()?;
        let threads = rayon::current_num_threads();
        // dx = dlogits · w
        let mut dx = vec![0f32; n * h];
        gemm(n, h, v, &mut dx, h, false, &d, v, 1, &wv, h, 1, threads);
        // dw = dlogitsᵀ · x
        let mut dw = vec![0f32; v * h];
        gemm(v, h, n, &mut dw, h, false, &d, 1, v, &x, h, 1, threads);
        let dev = hidden.device();
        Ok((
            Some(Tensor::from_vec(dx, (n, h), dev)?),
            Some(Tensor::from_vec(dw, (v, h), dev)?),
            Some(Tensor::from_vec(db, v, dev)?),
        ))
    }
}

//! [`Ops`] on the CPU, each kernel written as `kernels.cu` writes it (one loop iteration per CUDA
//! thread) and the products as plain loops: the reference the CUDA kernels mirror, so the tests
//! check [`super::Fused`]'s strides, transposes and order through time on any machine. Plain and
//! slow on purpose: nothing trains on it.

use super::{At, Buf, Cell, CellBack, Gemm, Kernel, Ops, Xent};
use crate::model::CharRnn;
use crate::Result;

/// Host memory as numbered buffers.
#[derive(Default)]
pub struct HostOps {
    bufs: Vec<Vec<f32>>,
    /// The parameters' copies, refreshed by each [`Ops::bind_params`].
    params: Vec<Buf>,
}

impl HostOps {
    fn get(&self, at: At, i: usize) -> f32 {
        self.bufs[at.buf.0][at.off + i]
    }

    fn set(&mut self, at: At, i: usize, v: f32) {
        self.bufs[at.buf.0][at.off + i] = v;
    }

    fn id(&self, at: At, i: usize) -> usize {
        self.get(at, i).to_bits() as usize
    }
}

fn sigm(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Ops for HostOps {
    fn alloc(&mut self, n: usize) -> Result<Buf> {
        self.bufs.push(vec![0.0; n]);
        Ok(Buf(self.bufs.len() - 1))
    }

    fn bind_params(&mut self, model: &CharRnn) -> Result<Vec<Buf>> {
        if self.params.is_empty() {
            for _ in model.params() {
                let buf = self.alloc(0)?;
                self.params.push(buf);
            }
        }
        for ((_, v), buf) in model.params().iter().zip(&self.params) {
            self.bufs[buf.0] = v.flatten_all()?.to_vec1::<f32>()?;
        }
        Ok(self.params.clone())
    }

    fn store_params(&mut self, model: &CharRnn) -> Result<()> {
        for ((_, var), buf) in model.params().iter().zip(&self.params) {
            let data =
                candle_core::Tensor::from_slice(&self.bufs[buf.0], var.shape(), var.device())?;
            var.set(&data)?;
        }
        Ok(())
    }

    fn upload(&mut self, at: At, data: &[f32]) -> Result<()> {
        self.bufs[at.buf.0][at.off..at.off + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn download(&mut self, at: At, n: usize) -> Result<Vec<f32>> {
        Ok(self.bufs[at.buf.0][at.off..at.off + n].to_vec())
    }

    fn gemm(&mut self, g: &Gemm) -> Result<()> {
        for i in 0..g.m {
            for j in 0..g.n {
                let mut sum = 0.0f32;
                for p in 0..g.k {
                    let a = if g.ta {
                        self.get(g.a, p * g.lda + i)
                    } else {
                        self.get(g.a, i * g.lda + p)
                    };
                    let b = if g.tb {
                        self.get(g.b, j * g.ldb + p)
                    } else {
                        self.get(g.b, p * g.ldb + j)
                    };
                    sum += a * b;
                }
                let c = i * g.ldc + j;
                // As cuBLAS: with beta 0, C is not read (it may hold anything).
                let old = if g.beta == 0.0 {
                    0.0
                } else {
                    g.beta * self.get(g.c, c)
                };
                self.set(g.c, c, sum + old);
            }
        }
        Ok(())
    }

    fn run(&mut self, k: &Kernel) -> Result<()> {
        match *k {
            Kernel::Fill { p, n, value } => (0..n).for_each(|i| self.set(p, i, value)),
            Kernel::Gather(a) => {
                for i in 0..a.rows * a.cols {
                    let (r, j) = (i / a.cols, i % a.cols);
                    let v = self.get(a.table, self.id(a.ids, r) * a.cols + j);
                    self.set(a.dense, i, v);
                }
            }
            Kernel::ScatterAdd(a) => {
                for i in 0..a.rows * a.cols {
                    let (r, j) = (i / a.cols, i % a.cols);
                    let at = self.id(a.ids, r) * a.cols + j;
                    let v = self.get(a.table, at) + self.get(a.dense, i);
                    self.set(a.table, at, v);
                }
            }
            Kernel::LstmStep(a) => self.lstm_step(&a),
            Kernel::LstmStepBack(a) => self.lstm_step_back(&a),
            Kernel::Shift {
                src,
                first,
                dst,
                batch,
                steps,
                cols,
            } => {
                for i in 0..batch * steps * cols {
                    let (j, t, b) = (i % cols, (i / cols) % steps, i / (cols * steps));
                    let v = if t == 0 {
                        self.get(first, b * cols + j)
                    } else {
                        self.get(src, i - cols)
                    };
                    self.set(dst, i, v);
                }
            }
            Kernel::Mul { a, b, out, n } => {
                for i in 0..n {
                    let v = self.get(a, i) * self.get(b, i);
                    self.set(out, i, v);
                }
            }
            Kernel::CopyRows {
                src,
                lds,
                dst,
                ldd,
                rows,
                cols,
            } => {
                for i in 0..rows * cols {
                    let (r, j) = (i / cols, i % cols);
                    let v = self.get(src, r * lds + j);
                    self.set(dst, r * ldd + j, v);
                }
            }
            Kernel::SoftmaxXent(a) => self.softmax_xent(&a),
            Kernel::SumSquares { .. } => self.sum_squares(k),
            Kernel::OptimUpdate { .. } => self.optim_update(k)?,
        }
        Ok(())
    }
}

impl HostOps {
    fn lstm_step(&mut self, a: &Cell) {
        let hidden = a.hidden;
        for i in 0..a.batch * hidden {
            let (b, j) = (i / hidden, i % hidden);
            let g = a.gates.buf.at(a.gates.off + b * a.ldg);
            let pre = |s: &Self, q: usize| {
                s.get(g, q * hidden + j)
                    + (s.get(a.b_ih, q * hidden + j) + s.get(a.b_hh, q * hidden + j))
            };
            let gi = sigm(pre(self, 0));
            let gf = sigm(pre(self, 1));
            let gg = pre(self, 2).tanh();
            let go = sigm(pre(self, 3));
            let cn = gf * self.get(a.c_prev, b * a.ld_prev + j) + gi * gg;
            self.set(a.c, b * a.ld + j, cn);
            self.set(a.h, b * a.ld + j, go * cn.tanh());
            for (q, v) in [gi, gf, gg, go].into_iter().enumerate() {
                self.set(g, q * hidden + j, v);
            }
        }
    }

    fn lstm_step_back(&mut self, a: &CellBack) {
        let hidden = a.hidden;
        for i in 0..a.batch * hidden {
            let (b, j) = (i / hidden, i % hidden);
            let g = a.gates.buf.at(a.gates.off + b * a.ldg);
            let [gi, gf, gg, go] = [0, 1, 2, 3].map(|q| self.get(g, q * hidden + j));
            let tc = self.get(a.c, b * a.ld + j).tanh();
            let dhv = self.get(a.dh, b * a.ld + j);
            let dcv = self.get(a.dc, i) + dhv * go * (1.0 - tc * tc);
            let cp = self.get(a.c_prev, b * a.ld + j);
            let d = [
                dcv * gg * gi * (1.0 - gi),
                dcv * cp * gf * (1.0 - gf),
                dcv * gi * (1.0 - gg * gg),
                dhv * tc * go * (1.0 - go),
            ];
            for (q, v) in d.into_iter().enumerate() {
                self.set(g, q * hidden + j, v);
            }
            self.set(a.dc, i, dcv * gf);
        }
    }

    fn softmax_xent(&mut self, a: &Xent) {
        let (bias, cols) = (a.bias, a.cols);
        for r in 0..a.rows {
            let row = a.z.buf.at(a.z.off + r * cols);
            let (mut mx, mut best) = (f32::NEG_INFINITY, cols);
            for j in 0..cols {
                let x = self.get(row, j) + self.get(bias, j);
                self.set(row, j, x);
                if x > mx {
                    (mx, best) = (x, j);
                }
            }
            let sum: f32 = (0..cols).map(|j| (self.get(row, j) - mx).exp()).sum();
            let t = self.id(a.targets, r);
            let l = mx + sum.ln() - self.get(row, t);
            self.set(a.loss, r, l);
            self.set(a.hit, r, if best == t { 1.0 } else { 0.0 });
            if a.grad {
                for j in 0..cols {
                    let p = (self.get(row, j) - mx).exp() / sum;
                    let onehot = if j == t { 1.0 } else { 0.0 };
                    self.set(row, j, (p - onehot) * a.scale);
                }
            }
        }
    }

    fn sum_squares(&mut self, k: &Kernel) {
        let Kernel::SumSquares { x, n, out, blocks } = *k else {
            return;
        };
        // As the kernel: block b's threads stride over x, 256 · blocks apart.
        for b in 0..blocks {
            let mut sum = 0.0f64;
            for t in 0..256 {
                let mut i = b * 256 + t;
                while i < n {
                    sum += (self.get(x, i) as f64).powi(2);
                    i += blocks * 256;
                }
            }
            self.set(out, b, sum as f32);
        }
    }

    /// The optimizer's own rule ([`crate::optim::update`]) is the kernel's reference.
    fn optim_update(&mut self, k: &Kernel) -> Result<()> {
        let Kernel::OptimUpdate {
            p,
            g,
            s0,
            s1,
            n,
            hyper,
            k,
        } = *k
        else {
            return Ok(());
        };
        let take = |s: &Self, at: At| s.bufs[at.buf.0][at.off..at.off + n].to_vec();
        let (mut pv, gv) = (take(self, p), take(self, g));
        let (mut a, mut b) = (take(self, s0), take(self, s1));
        crate::optim::update(&hyper, k, &mut pv, &gv, &mut a, &mut b);
        self.upload(p, &pv)?;
        self.upload(s0, &a)?;
        self.upload(s1, &b)
    }
}

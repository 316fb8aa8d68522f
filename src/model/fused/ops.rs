//! What [`super::Fused`] asks of a device: buffers, copies, row-major products and the small
//! kernels of `kernels.cu` with their arguments — the one place the Rust side states each
//! kernel's interface ([`Kernel::signature`]).

use crate::config::OptimizerKind;
use crate::model::CharRnn;
use crate::optim::{Hyper, StepScalars};
use crate::Result;

/// A buffer of floats on the device, by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf(pub usize);

/// A place in a buffer: `off` floats into `buf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    pub buf: Buf,
    pub off: usize,
}

impl Buf {
    pub fn at(self, off: usize) -> At {
        At { buf: self, off }
    }
}

/// `C = op(A)·op(B) + beta·C`, row-major: `op(A)` is `[m, k]` (stored `[k, m]` when `ta`),
/// `op(B)` is `[k, n]` (stored `[n, k]` when `tb`), `C` is `[m, n]`; `ld*` are row strides.
#[derive(Debug, Clone, Copy)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: At,
    pub lda: usize,
    pub ta: bool,
    pub b: At,
    pub ldb: usize,
    pub tb: bool,
    pub c: At,
    pub ldc: usize,
    pub beta: f32,
}

/// The small kernels of `kernels.cu`, with their arguments (see each one's comment there).
/// Token ids travel in float buffers as their bit patterns ([`ids_as_floats`]).
#[derive(Debug, Clone, Copy)]
pub enum Kernel {
    Fill {
        p: At,
        n: usize,
        value: f32,
    },
    Gather(ById),
    ScatterAdd(ById),
    LstmStep(Cell),
    LstmStepBack(CellBack),
    Shift {
        src: At,
        first: At,
        dst: At,
        batch: usize,
        steps: usize,
        cols: usize,
    },
    Mul {
        a: At,
        b: At,
        out: At,
        n: usize,
    },
    CopyRows {
        src: At,
        lds: usize,
        dst: At,
        ldd: usize,
        rows: usize,
        cols: usize,
    },
    SoftmaxXent(Xent),
    /// Partial sums of squares of `x` `[n]`: `blocks` of them into `out`.
    SumSquares {
        x: At,
        n: usize,
        out: At,
        blocks: usize,
    },
    /// One optimizer step on one parameter `p` `[n]` with gradient `g` and state `s0`, `s1`.
    OptimUpdate {
        p: At,
        g: At,
        s0: At,
        s1: At,
        n: usize,
        hyper: Hyper,
        k: StepScalars,
    },
}

/// `gather`'s and `scatter_add`'s arguments: the rows of `table` that `ids` name, as `dense`
/// `[rows, cols]` (gathered from the table, or added into it).
#[derive(Debug, Clone, Copy)]
pub struct ById {
    pub table: At,
    pub ids: At,
    pub dense: At,
    pub rows: usize,
    pub cols: usize,
}

/// `lstm_step`'s arguments.
#[derive(Debug, Clone, Copy)]
pub struct Cell {
    pub gates: At,
    pub ldg: usize,
    pub b_ih: At,
    pub b_hh: At,
    pub c_prev: At,
    pub ld_prev: usize,
    pub h: At,
    pub c: At,
    pub ld: usize,
    pub batch: usize,
    pub hidden: usize,
}

/// `lstm_step_back`'s arguments.
#[derive(Debug, Clone, Copy)]
pub struct CellBack {
    pub gates: At,
    pub ldg: usize,
    pub c: At,
    pub c_prev: At,
    pub dh: At,
    pub ld: usize,
    pub dc: At,
    pub batch: usize,
    pub hidden: usize,
}

/// `softmax_xent`'s arguments.
#[derive(Debug, Clone, Copy)]
pub struct Xent {
    pub z: At,
    pub bias: At,
    pub targets: At,
    pub loss: At,
    pub hit: At,
    pub rows: usize,
    pub cols: usize,
    pub scale: f32,
    pub grad: bool,
}

/// A kernel argument, as `kernels.cu` declares it.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    Ptr(At),
    Int(i32),
    Float(f32),
}

/// How a kernel is launched: one thread per element, or one 256-thread block per row, or a
/// given number of 256-thread blocks.
#[derive(Debug, Clone, Copy)]
pub enum Grid {
    Elements(usize),
    RowBlocks(usize),
    Blocks(usize),
}

/// `optim_update`'s number for each rule.
fn optimizer_code(kind: OptimizerKind) -> usize {
    match kind {
        OptimizerKind::Sgd => 0,
        OptimizerKind::Momentum => 1,
        OptimizerKind::Nesterov => 2,
        OptimizerKind::Adagrad => 3,
        OptimizerKind::Rmsprop => 4,
        OptimizerKind::Adam => 5,
        OptimizerKind::Adamw => 6,
    }
}

impl Kernel {
    /// The kernel's name in `kernels.cu`, its grid, and its arguments in its signature's order
    /// and types: the one place the Rust side states that interface. (A table: kept one kernel
    /// to a few lines.)
    #[rustfmt::skip]
    pub fn signature(&self) -> (&'static str, Grid, Vec<Arg>) {
        use Arg::{Float as F, Ptr as P};
        use Grid::Elements as E;
        let i = |n: usize| Arg::Int(n as i32);
        match *self {
            Kernel::Fill { p, n, value } => ("fill", E(n), vec![P(p), i(n), F(value)]),
            Kernel::Gather(a) => {
                ("gather", E(a.rows * a.cols), vec![P(a.table), P(a.ids), P(a.dense), i(a.rows), i(a.cols)])
            }
            Kernel::ScatterAdd(a) => {
                ("scatter_add", E(a.rows * a.cols), vec![P(a.dense), P(a.ids), P(a.table), i(a.rows), i(a.cols)])
            }
            Kernel::LstmStep(a) => ("lstm_step", E(a.batch * a.hidden), vec![
                P(a.gates), i(a.ldg), P(a.b_ih), P(a.b_hh), P(a.c_prev), i(a.ld_prev),
                P(a.h), P(a.c), i(a.ld), i(a.batch), i(a.hidden),
            ]),
            Kernel::LstmStepBack(a) => ("lstm_step_back", E(a.batch * a.hidden), vec![
                P(a.gates), i(a.ldg), P(a.c), P(a.c_prev), P(a.dh), i(a.ld), P(a.dc),
                i(a.batch), i(a.hidden),
            ]),
            Kernel::Shift { src, first, dst, batch, steps, cols } => ("shift", E(batch * steps * cols), vec![
                P(src), P(first), P(dst), i(batch), i(steps), i(cols),
            ]),
            Kernel::Mul { a, b, out, n } => ("mul", E(n), vec![P(a), P(b), P(out), i(n)]),
            Kernel::CopyRows { src, lds, dst, ldd, rows, cols } => ("copy_rows", E(rows * cols), vec![
                P(src), i(lds), P(dst), i(ldd), i(rows), i(cols),
            ]),
            Kernel::SoftmaxXent(a) => ("softmax_xent", Grid::RowBlocks(a.rows), vec![
                P(a.z), P(a.bias), P(a.targets), P(a.loss), P(a.hit), i(a.rows), i(a.cols),
                F(a.scale), i(a.grad as usize),
            ]),
            Kernel::SumSquares { x, n, out, blocks } => {
                ("sum_squares", Grid::Blocks(blocks), vec![P(x), i(n), P(out)])
            }
            Kernel::OptimUpdate { p, g, s0, s1, n, hyper: h, k } => ("optim_update", E(n), vec![
                P(p), P(g), P(s0), P(s1), i(n), i(optimizer_code(h.kind)),
                F(k.lr), F(k.grad_scale), F(k.bc1), F(k.bc2), F(h.momentum), F(h.beta1),
                F(h.beta2), F(h.rms_decay), F(h.eps), F(h.weight_decay),
            ]),
        }
    }
}

/// What a device must do for [`Fused`]: buffers, copies, products and the kernels.
pub trait Ops {
    /// A new zeroed buffer of `n` floats.
    fn alloc(&mut self, n: usize) -> Result<Buf>;
    /// The model's parameters as buffers, in [`CharRnn::params`] order (the device's own memory
    /// where it can, a copy otherwise); valid until the parameters change.
    fn bind_params(&mut self, model: &CharRnn) -> Result<Vec<Buf>>;
    /// Makes changes made to the bound parameters the model's (a copy is written back; the
    /// device's own memory needs nothing).
    fn store_params(&mut self, model: &CharRnn) -> Result<()>;
    fn upload(&mut self, at: At, data: &[f32]) -> Result<()>;
    /// Waits for the work before it.
    fn download(&mut self, at: At, n: usize) -> Result<Vec<f32>>;
    fn gemm(&mut self, g: &Gemm) -> Result<()>;
    fn run(&mut self, k: &Kernel) -> Result<()>;
}

/// Token ids as the floats with the same bits (the kernels read them as `unsigned`).
pub fn ids_as_floats(ids: &[u32]) -> Vec<f32> {
    ids.iter().map(|&i| f32::from_bits(i)).collect()
}

//! The whole model on the CPU, forward and backward, written by hand: embedding → LSTM layers →
//! dropout → decoder → softmax cross-entropy, and every gradient, with no autograd graph. The
//! candle model ([`super::reference`]) computes the same thing with tensor ops; it is the oracle of
//! the equivalence tests and the path for other devices.
//!
//! Why by hand: an autograd step allocates every intermediate and every gradient afresh, zeroes
//! and adds gradients it could have written once, and cannot see that the loss's gradient
//! (`1/N` per row, known before the backward pass) lets the decoder's backward start inside the
//! softmax pass. Here buffers are sized once per batch shape and reused.
//!
//! Parallelism is over batch rows: the recurrence never mixes rows, and neither does anything
//! else in a step except the weight gradients. So each thread runs the whole forward and backward
//! for its group of rows, with single-threaded GEMMs and no barrier inside the step, and writes its
//! own partial weight gradients, which are summed at the end. One thread (a sweep's trial) runs
//! exactly the same code with one group.
//!
//! Layer 0's input is an embedding row, so its input projection depends only on the character:
//! it is computed once per distinct character of the window (a `[U, 4H]` table, `embedding ·
//! W_ihᵀ` for those U ≤ min(V, B·T) ids; a 2,048-char window of 红楼梦 has ~650) and read by id
//! in the time loop. Its gradient is scattered into the table and folded back into those rows
//! of the embedding and into `W_ih` once per step: three GEMMs over U rows instead of B·T.

use super::bf16::Unit;
use super::gemm::{View, ViewMut};
use super::precision::Products;
use super::recurrence::{self, Input};
use super::simd::Level;
use super::{amx, head};
use super::{Dims, State};
use crate::rng::Rng;
pub use head::Sums;

/// The parameters as slices, in the model's order.
pub struct Weights<'a> {
    pub emb: &'a [f32],
    pub layers: Vec<LayerWeights<'a>>,
    pub head_w: &'a [f32],
    pub head_b: &'a [f32],
}

/// One LSTM layer's parameters, as `nn.LSTM` holds them: the two biases are only ever used as
/// their sum, but each is a parameter with its own gradient and optimizer state.
pub struct LayerWeights<'a> {
    pub w_ih: &'a [f32],
    pub w_hh: &'a [f32],
    pub b_ih: &'a [f32],
    pub b_hh: &'a [f32],
}

impl<'a> Weights<'a> {
    /// From the parameter slices in [`super::CharRnn::params`] order.
    pub fn from_slices(p: &[&'a [f32]]) -> Self {
        let layers = (p.len() - 3) / super::LAYER_PARAMS;
        Weights {
            emb: p[0],
            layers: (0..layers)
                .map(|k| {
                    let [w_ih, w_hh, b_ih, b_hh] =
                        [0, 1, 2, 3].map(|i| p[super::layer_slot(k) + i]);
                    LayerWeights {
                        w_ih,
                        w_hh,
                        b_ih,
                        b_hh,
                    }
                })
                .collect(),
            head_w: p[p.len() - 2],
            head_b: p[p.len() - 1],
        }
    }
}

/// The gradients, one buffer per parameter, reached by name as [`Weights`] reaches the
/// parameters. Held in [`super::CharRnn::params`] order (what the optimizer and the checks
/// take, see [`Grads::all`]); that order is known here and in [`Weights::from_slices`] only.
#[derive(Default)]
pub struct Grads(Vec<Vec<f32>>);

/// One LSTM layer's gradients.
pub struct LayerGrads<'a> {
    pub w_ih: &'a mut [f32],
    pub w_hh: &'a mut [f32],
    pub b_ih: &'a mut [f32],
    pub b_hh: &'a mut [f32],
}

impl Grads {
    /// Zeroed buffers for a model of `d`.
    fn zeros(d: Dims) -> Self {
        let (v, e, h) = (d.vocab, d.embed_dim, d.hidden);
        let mut g = vec![vec![0.0; v * e]];
        for k in 0..d.layers {
            let input = if k == 0 { e } else { h };
            g.extend([4 * h * input, 4 * h * h, 4 * h, 4 * h].map(|n| vec![0.0; n]));
        }
        g.extend([vec![0.0; v * h], vec![0.0; v]]);
        Grads(g)
    }

    /// Every gradient, in parameter order.
    pub fn all(&self) -> &[Vec<f32>] {
        &self.0
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The decoder's weight and bias gradients.
    fn head(&mut self) -> (&mut [f32], &mut [f32]) {
        let [.., w, b] = &mut self.0[..] else {
            unreachable!("a model has a decoder")
        };
        (w, b)
    }

    fn layer(&mut self, k: usize) -> LayerGrads<'_> {
        let at = super::layer_slot(k);
        let [w_ih, w_hh, b_ih, b_hh] = &mut self.0[at..at + super::LAYER_PARAMS] else {
            unreachable!("four gradients per layer")
        };
        LayerGrads {
            w_ih,
            w_hh,
            b_ih,
            b_hh,
        }
    }

    /// The embedding's and layer 0's `W_ih` gradients: both come from the table's gradient.
    fn table_fed(&mut self) -> (&mut [f32], &mut [f32]) {
        let [emb, w_ih, ..] = &mut self.0[..] else {
            unreachable!("a model has an embedding and a layer")
        };
        (emb, w_ih)
    }

    /// Positions (in [`Grads::all`]) of the gradients each group computes in part and the
    /// groups sum: all but the two [`Grads::table_fed`] ones.
    fn summed_across_groups(&self) -> std::ops::Range<usize> {
        2..self.0.len()
    }
}

/// What a pass over a window computes.
pub enum Pass<'a> {
    /// Loss, accuracy and every gradient; dropout masks drawn from `rng`.
    Train { dropout: f64, rng: &'a mut Rng },
    /// Loss and accuracy only.
    Eval,
    /// The decoder's logits only (`y` is ignored); read them with [`CpuModel::last_logits`].
    Logits,
}

/// What the groups compute, without the pass's borrowed RNG.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Train,
    Eval,
    Logits,
}

/// The CPU model's buffers: sized once per batch shape, reused every step.
pub struct CpuModel {
    dims: Dims,
    hp: usize,
    level: Level,
    shapes: Vec<Workspace>,
    /// The workspace of the last pass.
    last: usize,
    passes: u64,
    /// The batch shape of the last training pass (whose workspace holds the gradients).
    trained: Option<(usize, usize)>,
    shared: Shared,
}

/// Read-only during the parallel part of a step.
#[derive(Default)]
struct Shared {
    /// How the large products are computed (the run's precision).
    products: Products,
    packed_fwd: Vec<recurrence::Packed>,
    packed_bwd: Vec<recurrence::Packed>,
    /// Per layer `[4·Hp]`.
    bias: Vec<Vec<f32>>,
    /// The window's distinct ids, ascending (`U` of them).
    uniq: Vec<u32>,
    /// Id → its row in `uniq` (`u32::MAX` for ids not in the window).
    slot: Vec<u32>,
    /// `[U, E]`: the embedding rows of `uniq`.
    emb_u: Vec<f32>,
    /// `[U, 4·Hp]`: layer 0's input projection of each distinct id.
    table: Vec<f32>,
    /// Per layer, `[B, T, H]` in the reference model's order; empty without dropout.
    masks: Vec<Vec<f32>>,
    /// The window's ids and targets, `[B, T]`.
    x: Vec<u32>,
    y: Vec<u32>,
}

struct Workspace {
    batch: usize,
    seq: usize,
    groups: Vec<Group>,
    /// `[U, E]`: the embedding rows' gradient, before it is spread into the full `[V, E]` one.
    demb_u: Vec<f32>,
    /// When it was last used (a pass counter), to drop the stalest when there are too many.
    used: u64,
}

/// Batch shapes whose buffers are kept (training, evaluation, a sampler's prime and its steps).
const MAX_SHAPES: usize = 4;

/// One thread's rows `b0..b0+nb` of the batch, and everything it computes for them.
struct Group {
    b0: usize,
    nb: usize,
    /// Time-major ids and targets of the group (`n = t·nb + b`), and each id's table row.
    ids: Vec<u32>,
    targets: Vec<u32>,
    slots: Vec<u32>,
    layers: Vec<LayerBufs>,
    /// `[T·nb, V]`: logits, then their gradient.
    logits: Vec<f32>,
    /// `[T·nb, Hp]`: the gradient reaching a layer's output.
    dy: Vec<f32>,
    dh_next: Vec<f32>,
    dc_next: Vec<f32>,
    dbias: Vec<f32>,
    /// The recurrence's per-step operand in bf16 (rounded or as pairs).
    recur: recurrence::Scratch,
    /// The fused decoder's packed operands and block of logits (AMX only).
    head: head::Scratch,
    /// This group's share of every parameter gradient (group 0's become the total).
    grads: Grads,
    /// `[min(V, T·nb·groups), 4·Hp]`: the table's gradient (its first U rows).
    dtable: Vec<f32>,
    sums: Sums,
}

struct LayerBufs {
    /// `[T·nb, 4·Hp]`: the input projection, then the pre-activation gradient.
    xp: Vec<f32>,
    /// `[(T+1)·nb, Hp]`, block 0 = the initial state.
    hs: Vec<f32>,
    /// `[T·nb, 5·Hp]`: `c i f g o`.
    acts: Vec<f32>,
    /// `[nb, Hp]`
    c0: Vec<f32>,
    /// `[T·nb, Hp]`: the output after dropout (empty without dropout: the output is `hs`).
    y: Vec<f32>,
}

/// `H` rounded up to a multiple of 16: whole register blocks at every vector width.
pub(crate) fn padded(h: usize) -> usize {
    h.div_ceil(16) * 16
}

impl Shared {
    /// The window's distinct ids and layer 0's projection of each: `emb[uniq] · W_ihᵀ`.
    fn build_table(&mut self, w: &Weights, x: &[u32], d: Dims, hp: usize) {
        let (e, h) = (d.embed_dim, d.hidden);
        self.slot.clear();
        self.slot.resize(d.vocab, u32::MAX);
        for &id in x {
            self.slot[id as usize] = 0;
        }
        self.uniq.clear();
        for (id, s) in self.slot.iter_mut().enumerate() {
            if *s == 0 {
                *s = self.uniq.len() as u32;
                self.uniq.push(id as u32);
            }
        }
        let u = self.uniq.len();
        self.emb_u.clear();
        for &id in &self.uniq {
            self.emb_u.extend_from_slice(&w.emb[id as usize * e..][..e]);
        }
        self.table.resize(u * 4 * hp, 0.0);
        let w_ih = View::new(w.layers[0].w_ih, 4 * h, e, e);
        input_proj(
            self.products,
            View::new(&self.emb_u, u, e, e),
            w_ih,
            &mut self.table,
            h,
            hp,
        );
    }
}

impl CpuModel {
    pub fn new(dims: Dims, level: Level) -> Self {
        CpuModel {
            dims,
            hp: padded(dims.hidden),
            level,
            shapes: Vec::new(),
            last: 0,
            passes: 0,
            trained: None,
            shared: Shared::default(),
        }
    }

    /// The same model computing its large products as `products` says (fp32 by default).
    pub fn with_products(mut self, products: Products) -> Self {
        self.shared.products = products;
        self
    }

    /// The instruction set the kernels run with.
    pub fn level(&self) -> Level {
        self.level
    }

    /// The gradients of the last training pass, in parameter order.
    pub fn grads(&self) -> &[Vec<f32>] {
        self.shapes
            .iter()
            .find(|w| Some((w.batch, w.seq)) == self.trained)
            .map_or(&[], |w| w.groups[0].grads.all())
    }

    /// Runs one window `x`/`y` (`[batch, seq]`, row-major) from `state`, which becomes the state
    /// after the window. Returns loss and accuracy sums; after `Pass::Train` the gradients are in
    /// [`CpuModel::grads`].
    pub fn run(
        &mut self,
        w: &Weights,
        x: &[u32],
        y: &[u32],
        seq: usize,
        state: &mut State,
        pass: Pass,
    ) -> crate::Result<Sums> {
        let batch = state.batch;
        self.check(x, y, batch, seq, state)?;
        let mode = match pass {
            Pass::Train { .. } => Mode::Train,
            Pass::Eval => Mode::Eval,
            Pass::Logits => Mode::Logits,
        };
        let at = self.workspace(batch, seq, mode == Mode::Train);
        self.last = at;
        self.prepare(w, x, y, (batch, seq), pass);
        let (dims, hp, level) = (self.dims, self.hp, self.level);
        let shared = &self.shared;
        let ws = &mut self.shapes[at];
        let job = |g: &mut Group| {
            g.load(shared, state, seq, hp);
            g.forward(w, shared, (dims, hp, level), seq, mode);
            if mode == Mode::Train {
                g.backward(w, shared, (dims, hp, level), seq);
            }
        };
        if ws.groups.len() == 1 {
            job(&mut ws.groups[0]);
        } else {
            use rayon::prelude::*;
            ws.groups.par_iter_mut().for_each(job);
        }
        let mut sums = Sums::default();
        for g in &ws.groups {
            g.store_state(state, seq, hp);
            sums += g.sums;
        }
        if mode == Mode::Train {
            reduce(ws, w, shared, dims, hp);
            self.trained = Some((batch, seq));
        }
        Ok(sums)
    }

    /// After a [`Pass::Logits`]: the logits at the window's last position, `[batch, V]`.
    pub fn last_logits(&self) -> Vec<f32> {
        let v = self.dims.vocab;
        let mut out = Vec::new();
        if let Some(ws) = self.shapes.get(self.last) {
            for g in &ws.groups {
                let last = (ws.seq - 1) * g.nb;
                out.extend_from_slice(&g.logits[last * v..(last + g.nb) * v]);
            }
        }
        out
    }

    fn check(
        &self,
        x: &[u32],
        y: &[u32],
        batch: usize,
        seq: usize,
        state: &State,
    ) -> crate::Result<()> {
        let d = self.dims;
        let bad = |m: String| crate::Error::Candle(candle_core::Error::Msg(m));
        if batch == 0 || seq == 0 || x.len() != batch * seq || y.len() != batch * seq {
            return Err(bad(format!(
                "cpu model: a window of {} ids is not [{batch}, {seq}]",
                x.len()
            )));
        }
        if state.layers() != d.layers || state.hidden != d.hidden {
            return Err(bad("cpu model: the state does not fit the model".into()));
        }
        if let Some(&id) = x.iter().chain(y).find(|&&i| i as usize >= d.vocab) {
            return Err(bad(format!(
                "cpu model: id {id} outside the vocabulary of {}",
                d.vocab
            )));
        }
        Ok(())
    }

    /// The workspace for this batch shape, made on first use.
    fn workspace(&mut self, batch: usize, seq: usize, train: bool) -> usize {
        self.passes += 1;
        let found = self
            .shapes
            .iter()
            .position(|w| w.batch == batch && w.seq == seq);
        if found.is_none() && self.shapes.len() >= MAX_SHAPES {
            let stalest = (0..self.shapes.len()).min_by_key(|&i| self.shapes[i].used);
            if let Some(i) = stalest {
                self.shapes.remove(i);
            }
        }
        let at = found.unwrap_or_else(|| {
            let threads = rayon::current_num_threads().clamp(1, batch);
            let groups = (0..threads)
                .map(|k| {
                    let b0 = k * batch / threads;
                    let nb = (k + 1) * batch / threads - b0;
                    Group::new(self.dims, self.hp, b0, nb, seq)
                })
                .collect();
            self.shapes.push(Workspace {
                batch,
                seq,
                groups,
                demb_u: Vec::new(),
                used: 0,
            });
            self.shapes.len() - 1
        });
        self.shapes[at].used = self.passes;
        if train {
            let (dims, hp, rows) = (self.dims, self.hp, self.dims.vocab.min(batch * seq));
            for g in &mut self.shapes[at].groups {
                g.alloc_grads(dims, hp, rows);
            }
        }
        at
    }

    /// Everything the groups read: packed weights, padded biases, the table, dropout masks.
    fn prepare(
        &mut self,
        w: &Weights,
        x: &[u32],
        y: &[u32],
        (batch, seq): (usize, usize),
        pass: Pass,
    ) {
        let train = matches!(pass, Pass::Train { .. });
        let (h, hp, level) = (self.dims.hidden, self.hp, self.level);
        let s = &mut self.shared;
        let layers = w.layers.len();
        s.packed_fwd.resize_with(layers, Default::default);
        s.packed_bwd.resize_with(layers, Default::default);
        // The kernels add one bias per gate row: the sum of the layer's two.
        s.bias = w
            .layers
            .iter()
            .map(|l| {
                let sum: Vec<f32> = l.b_ih.iter().zip(l.b_hh).map(|(a, b)| a + b).collect();
                pad_gates(&sum, h, hp)
            })
            .collect();
        {
            use rayon::prelude::*;
            let fwd = s.packed_fwd.par_iter_mut().zip(&w.layers);
            let bwd = s.packed_bwd.par_iter_mut().zip(&w.layers);
            let products = s.products;
            let pack = |p: &mut recurrence::Packed, w_hh: &[f32], backward: bool| {
                p.pack(w_hh, (h, hp), level, products, backward)
            };
            rayon::join(
                || fwd.for_each(|(p, l)| pack(p, l.w_hh, false)),
                || {
                    if train {
                        bwd.for_each(|(p, l)| pack(p, l.w_hh, true))
                    }
                },
            );
        }
        s.build_table(w, x, self.dims, hp);
        s.x.clear();
        s.x.extend_from_slice(x);
        s.y.clear();
        s.y.extend_from_slice(y);
        s.masks.resize_with(layers, Vec::new);
        match pass {
            Pass::Train { dropout, rng } if dropout > 0.0 => {
                for m in &mut s.masks {
                    m.clear();
                    m.extend(super::reference::dropout_draws(
                        batch * seq * h,
                        dropout,
                        rng,
                    ));
                }
            }
            _ => s.masks.iter_mut().for_each(Vec::clear),
        }
    }
}

/// Calls `f(q, cols)` once per gate block that a GEMM must write separately: all four gates at
/// once when `H` needs no padding (`q = 0`, `4H` columns), else each gate's `H` columns.
fn for_gates(h: usize, hp: usize, mut f: impl FnMut(usize, usize)) {
    if h == hp {
        f(0, 4 * h);
    } else {
        (0..4).for_each(|q| f(q, h));
    }
}

/// A `[4H]` gate vector laid out as `[4·Hp]` with zeros in the padding.
fn pad_gates(v: &[f32], h: usize, hp: usize) -> Vec<f32> {
    let mut out = vec![0f32; 4 * hp];
    for q in 0..4 {
        out[q * hp..q * hp + h].copy_from_slice(&v[q * h..(q + 1) * h]);
    }
    out
}

/// The inverse of [`pad_gates`], added into `dst`.
fn add_unpadded(dst: &mut [f32], v: &[f32], h: usize, hp: usize) {
    for q in 0..4 {
        for (d, s) in dst[q * h..(q + 1) * h]
            .iter_mut()
            .zip(&v[q * hp..q * hp + h])
        {
            *d += s;
        }
    }
}

impl Group {
    fn new(d: Dims, hp: usize, b0: usize, nb: usize, seq: usize) -> Self {
        let n = nb * seq;
        let layers = (0..d.layers)
            .map(|_| LayerBufs {
                xp: vec![0.0; n * 4 * hp],
                hs: vec![0.0; (n + nb) * hp],
                acts: vec![0.0; n * 5 * hp],
                c0: vec![0.0; nb * hp],
                y: Vec::new(),
            })
            .collect();
        Group {
            b0,
            nb,
            ids: vec![0; n],
            targets: vec![0; n],
            slots: vec![0; n],
            layers,
            logits: vec![0.0; n * d.vocab],
            dy: vec![0.0; n * hp],
            dh_next: vec![0.0; nb * hp],
            dc_next: vec![0.0; nb * hp],
            dbias: vec![0.0; 4 * hp],
            recur: recurrence::Scratch::default(),
            head: head::Scratch::default(),
            grads: Grads::default(),
            dtable: Vec::new(),
            sums: Sums::default(),
        }
    }

    /// Gradient buffers (training only); `rows` bounds the table's distinct ids.
    fn alloc_grads(&mut self, d: Dims, hp: usize, rows: usize) {
        if !self.grads.is_empty() {
            return;
        }
        self.grads = Grads::zeros(d);
        self.dtable = vec![0.0; rows * 4 * hp];
    }

    /// This group's ids, targets and initial state, time-major.
    fn load(&mut self, s: &Shared, state: &State, seq: usize, hp: usize) {
        let h = state.hidden;
        for t in 0..seq {
            for b in 0..self.nb {
                let src = (self.b0 + b) * seq + t;
                self.ids[t * self.nb + b] = s.x[src];
                self.slots[t * self.nb + b] = s.slot[s.x[src] as usize];
                self.targets[t * self.nb + b] = s.y[src];
            }
        }
        for (k, l) in self.layers.iter_mut().enumerate() {
            for b in 0..self.nb {
                let row = (self.b0 + b) * h..(self.b0 + b + 1) * h;
                l.hs[b * hp..b * hp + h].copy_from_slice(&state.h[k][row.clone()]);
                l.c0[b * hp..b * hp + h].copy_from_slice(&state.c[k][row]);
            }
        }
    }

    /// Writes the state after the window into this group's rows of `state`.
    fn store_state(&self, state: &mut State, seq: usize, hp: usize) {
        let (h, nb) = (state.hidden, self.nb);
        for (k, l) in self.layers.iter().enumerate() {
            for b in 0..nb {
                let row = (self.b0 + b) * h..(self.b0 + b + 1) * h;
                state.h[k][row.clone()].copy_from_slice(&l.hs[(seq * nb + b) * hp..][..h]);
                state.c[k][row].copy_from_slice(&l.acts[((seq - 1) * nb + b) * 5 * hp..][..h]);
            }
        }
    }
}

/// The output of layer `l` as the next stage reads it: after dropout, `[T·nb, H]` in rows of `Hp`.
fn output(l: &LayerBufs, n: usize, nb: usize, h: usize, hp: usize) -> View<'_> {
    let data = if l.y.is_empty() {
        &l.hs[nb * hp..]
    } else {
        &l.y[..]
    };
    View::new(data, n, h, hp)
}

impl Group {
    fn forward(
        &mut self,
        w: &Weights,
        s: &Shared,
        (d, hp, level): (Dims, usize, Level),
        seq: usize,
        mode: Mode,
    ) {
        let (nb, h) = (self.nb, d.hidden);
        let n = nb * seq;
        for k in 0..d.layers {
            let (below, rest) = self.layers.split_at_mut(k);
            let l = &mut rest[0];
            let input = match below.last() {
                Some(prev) => {
                    let w_ih = View::new(w.layers[k].w_ih, 4 * h, h, h);
                    let input = output(prev, n, nb, h, hp);
                    input_proj(s.products, input, w_ih, &mut l.xp, h, hp);
                    Input::Rows(&l.xp)
                }
                None => Input::Table {
                    table: &s.table,
                    ids: &self.slots,
                },
            };
            recurrence::Forward {
                t_len: seq,
                nb,
                h,
                hp,
                input,
                bias: &s.bias[k],
                packed: &s.packed_fwd[k],
                scratch: &mut self.recur,
                c0: &l.c0,
                hs: &mut l.hs,
                acts: &mut l.acts,
            }
            .run(level);
            self.dropout(&s.masks[k], k, seq, h, hp);
        }
        self.head(w, s, (d, hp, level), mode);
    }

    /// Applies layer `k`'s dropout mask to its output (into `y`), or leaves `y` empty.
    fn dropout(&mut self, mask: &[f32], k: usize, seq: usize, h: usize, hp: usize) {
        let (nb, b0) = (self.nb, self.b0);
        let l = &mut self.layers[k];
        if mask.is_empty() {
            l.y.clear();
            return;
        }
        l.y.resize(nb * seq * hp, 0.0);
        for t in 0..seq {
            for b in 0..nb {
                let n = t * nb + b;
                let m = &mask[((b0 + b) * seq + t) * h..][..h];
                let src = &l.hs[(n + nb) * hp..][..h];
                for ((y, &x), &m) in l.y[n * hp..][..h].iter_mut().zip(src).zip(m) {
                    *y = x * m;
                }
            }
        }
    }

    /// Decoder, softmax cross-entropy and accuracy; in training also the decoder's gradients
    /// and the gradient reaching the top layer's output (`dy`).
    fn head(&mut self, w: &Weights, s: &Shared, (d, hp, level): (Dims, usize, Level), mode: Mode) {
        let (v, h, layers) = (d.vocab, d.hidden, d.layers);
        let n = self.ids.len();
        let top = output(&self.layers[layers - 1], n, self.nb, h, hp);
        if mode == Mode::Logits {
            let head_w = View::new(w.head_w, v, h, h);
            let logits = ViewMut::new(&mut self.logits, n, v, v);
            s.products.matmul(logits, top, head_w.t(), false);
            for row in self.logits.chunks_exact_mut(v) {
                row.iter_mut().zip(w.head_b).for_each(|(z, b)| *z += b);
            }
            self.sums = Sums::default();
            return;
        }
        let decoder = head::Head {
            top,
            w: w.head_w,
            bias: w.head_b,
            targets: &self.targets,
        };
        let grads = (mode == Mode::Train).then(|| {
            let (dw, db) = self.grads.head();
            head::Grads {
                scale: 1.0 / s.x.len() as f32,
                dw,
                db,
                dy: &mut self.dy,
                dy_stride: hp,
            }
        });
        self.sums = if s.products == Products::Bf16(Unit::Amx) && amx::available() {
            head::fused(level, &decoder, &mut self.head, grads)
        } else {
            head::plain(s.products, level, &decoder, &mut self.logits, grads)
        };
    }
}

impl Group {
    /// Backward through the layers, top to bottom, from `dy` (set by the head).
    fn backward(
        &mut self,
        w: &Weights,
        s: &Shared,
        (d, hp, level): (Dims, usize, Level),
        seq: usize,
    ) {
        let (nb, h) = (self.nb, d.hidden);
        let n = nb * seq;
        for k in (0..d.layers).rev() {
            self.undo_dropout(&s.masks[k], seq, h, hp);
            let (below, rest) = self.layers.split_at_mut(k);
            let l = &mut rest[0];
            self.dbias.fill(0.0);
            recurrence::Backward {
                t_len: seq,
                nb,
                hp,
                packed: &s.packed_bwd[k],
                scratch: &mut self.recur,
                acts: &l.acts,
                c0: &l.c0,
                dh_above: &self.dy,
                da: &mut l.xp,
                dbias: &mut self.dbias,
                dh_next: &mut self.dh_next,
                dc_next: &mut self.dc_next,
            }
            .run(level);
            let LayerGrads {
                w_ih: dw_ih,
                w_hh: dw_hh,
                b_ih: db_ih,
                b_hh: db_hh,
            } = self.grads.layer(k);
            // Both biases enter as their sum: each gets the whole gate gradient.
            db_ih.fill(0.0);
            add_unpadded(db_ih, &self.dbias, h, hp);
            db_hh.copy_from_slice(db_ih);
            let da = View::new(&l.xp, n, 4 * hp, 4 * hp);
            let p = s.products;
            let mut grads = vec![(View::new(&l.hs, n, h, hp), dw_hh)];
            if let Some(prev) = below.last() {
                grads.push((output(prev, n, nb, h, hp), dw_ih));
            }
            weight_grads(p, da, grads, (h, hp));
            if below.is_empty() {
                // Layer 0 reads the table: its gradient goes to the table's rows.
                let rows = s.uniq.len() * 4 * hp;
                self.dtable[..rows].fill(0.0);
                scatter_rows(&mut self.dtable, &l.xp, 4 * hp, &self.slots);
            } else {
                let w_ih = View::new(w.layers[k].w_ih, 4 * h, h, h);
                input_grad(p, da, w_ih, &mut self.dy, hp, h, hp);
            }
        }
    }

    /// `dy ⊙ mask`: the gradient through layer `k`'s dropout.
    fn undo_dropout(&mut self, mask: &[f32], seq: usize, h: usize, hp: usize) {
        if mask.is_empty() {
            return;
        }
        let (nb, b0) = (self.nb, self.b0);
        for t in 0..seq {
            for b in 0..nb {
                let m = &mask[((b0 + b) * seq + t) * h..][..h];
                for (g, &m) in self.dy[(t * nb + b) * hp..][..h].iter_mut().zip(m) {
                    *g *= m;
                }
            }
        }
    }
}

/// `dst = input · W_ihᵀ` (`dst` is `[N, 4·Hp]`, `W_ih` `[4H, in]`): a layer's input projection,
/// or layer 0's table.
fn input_proj(p: Products, input: View, w_ih: View, dst: &mut [f32], h: usize, hp: usize) {
    let n = input.row_count();
    for_gates(h, hp, |q, cols| {
        let out = ViewMut::new(dst, n, 4 * hp, 4 * hp).cols(q * hp, cols);
        p.matmul(out, input, w_ih.rows(q * h, cols).t(), false);
    });
}

/// `dW = daᵀ · input` for each `(input, dW)`: `W_hh` with the previous outputs, `W_ih` with the
/// layer's input. On AMX tiles with unpadded gates `da` is packed once for all of them (each
/// product packed its own copy: a pass over `[N, 4·Hp]` apiece), each product computed as the
/// plain one computes it, `dWᵀ = inputᵀ · da`.
fn weight_grads(p: Products, da: View, grads: Vec<(View, &mut [f32])>, (h, hp): (usize, usize)) {
    if p != Products::Bf16(Unit::Amx) || h != hp || da.row_count() == 0 || !amx::available() {
        for (input, dw) in grads {
            weight_grad(p, da, input, dw, h, hp);
        }
        return;
    }
    let products = grads
        .into_iter()
        .map(|(input, dw)| {
            let n_in = input.t().row_count();
            (ViewMut::new(dw, 4 * h, n_in, n_in), input.t())
        })
        .collect();
    amx::matmul_shared_b(da, products, true);
}

/// `dW = daᵀ · input` (`W_ih`, or `W_hh` with the previous outputs as input), per gate block (`da` is `[N, 4·Hp]`, `dw` `[4H, in]`).
fn weight_grad(p: Products, da: View, input: View, dw: &mut [f32], h: usize, hp: usize) {
    let n_in = dw.len() / (4 * h);
    for_gates(h, hp, |q, cols| {
        let dst = ViewMut::new(dw, 4 * h, n_in, n_in).rows(q * h, cols);
        p.matmul(dst, da.cols(q * hp, cols).t(), input, false);
    });
}

/// `dst = da · W_ih` (`dst` is `[N, in]` in rows of `dst_stride`): the gradient reaching the
/// layer's input.
fn input_grad(
    p: Products,
    da: View,
    w_ih: View,
    dst: &mut [f32],
    dst_stride: usize,
    h: usize,
    hp: usize,
) {
    let n = dst.len() / dst_stride;
    let n_in = w_ih.t().row_count();
    let mut first = true;
    for_gates(h, hp, |q, cols| {
        let out = ViewMut::new(dst, n, n_in, dst_stride);
        p.matmul(out, da.cols(q * hp, cols), w_ih.rows(q * h, cols), !first);
        first = false;
    });
}

/// `dst[ids[r]] += src[r]` for every row (rows of `width` floats).
fn scatter_rows(dst: &mut [f32], src: &[f32], width: usize, ids: &[u32]) {
    for (row, &id) in src.chunks_exact(width).zip(ids) {
        for (d, s) in dst[id as usize * width..][..width].iter_mut().zip(row) {
            *d += s;
        }
    }
}

/// Sums the groups' partial gradients into group 0's, and turns the table's gradient into the
/// embedding's (the window's rows) and layer 0's `W_ih`'s.
fn reduce(ws: &mut Workspace, w: &Weights, s: &Shared, d: Dims, hp: usize) {
    let (first, rest) = ws.groups.split_at_mut(1);
    let g0 = &mut first[0];
    let u = s.uniq.len();
    {
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 15;
        let add = |dst: &mut [f32], i: usize, part: &dyn Fn(&Group) -> &[f32]| {
            for g in rest.iter() {
                let src = &part(g)[i * CHUNK..][..dst.len()];
                dst.iter_mut().zip(src).for_each(|(x, y)| *x += y);
            }
        };
        // The groups leave the embedding and W_ih_0 gradients to the table's.
        for p in g0.grads.summed_across_groups() {
            g0.grads.0[p]
                .par_chunks_mut(CHUNK)
                .enumerate()
                .for_each(|(i, dst)| add(dst, i, &|g: &Group| &g.grads.all()[p]));
        }
        g0.dtable[..u * 4 * hp]
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(i, dst)| add(dst, i, &|g: &Group| &g.dtable));
    }
    let (e, h) = (d.embed_dim, d.hidden);
    let dtable = View::new(&g0.dtable, u, 4 * hp, 4 * hp);
    let (demb, dw_ih) = g0.grads.table_fed();
    weight_grad(
        s.products,
        dtable,
        View::new(&s.emb_u, u, e, e),
        dw_ih,
        h,
        hp,
    );
    // The window's embedding rows get dtable · W_ih; the other rows, nothing.
    ws.demb_u.resize(u * e, 0.0);
    input_grad(
        s.products,
        dtable,
        View::new(w.layers[0].w_ih, 4 * h, e, e),
        &mut ws.demb_u,
        e,
        h,
        hp,
    );
    demb.fill(0.0);
    for (row, &id) in ws.demb_u.chunks_exact(e).zip(&s.uniq) {
        demb[id as usize * e..][..e].copy_from_slice(row);
    }
}

//! The model as plain candle tensor ops, one LSTM step at a time, differentiated by candle's
//! autograd. It runs on any device (it is the CUDA path) and is the oracle the CPU path
//! ([`super::cpu`]) is checked against: same loss, same gradients, same dropout masks.
//!
//! Gate order is PyTorch's: input, forget, cell, output.

use super::{layer_names, CharRnn, State};
use crate::rng::Rng;
use candle_core::{Result, Tensor, D};

/// One layer over a window: `xproj` `[B, T, 4H]` (input projection without bias), `w_hh`
/// `[4H, H]`, `bias` `[4H]`, `h0`/`c0` `[B, H]`. Returns `hs` `[B, T, H]` and the final `(h, c)`.
pub fn lstm_layer(
    xproj: &Tensor,
    w_hh: &Tensor,
    bias: &Tensor,
    h0: &Tensor,
    c0: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (_b, t_len, four_h) = xproj.dims3()?;
    let h_dim = four_h / 4;
    let xproj = xproj.broadcast_add(bias)?;
    let w_t = w_hh.t()?;
    let (mut h, mut c) = (h0.clone(), c0.clone());
    let mut hs = Vec::with_capacity(t_len);
    for t in 0..t_len {
        let gates = (xproj.narrow(1, t, 1)?.squeeze(1)? + h.matmul(&w_t)?)?;
        let i = candle_nn::ops::sigmoid(&gates.narrow(D::Minus1, 0, h_dim)?)?;
        let f = candle_nn::ops::sigmoid(&gates.narrow(D::Minus1, h_dim, h_dim)?)?;
        let g = gates.narrow(D::Minus1, 2 * h_dim, h_dim)?.tanh()?;
        let o = candle_nn::ops::sigmoid(&gates.narrow(D::Minus1, 3 * h_dim, h_dim)?)?;
        c = ((f * &c)? + (i * g)?)?;
        h = (o * c.tanh()?)?;
        hs.push(h.clone());
    }
    Ok((Tensor::stack(&hs, 1)?, h.detach(), c.detach()))
}

/// Inverted dropout's mask for `n` units, one draw from `rng` per element in row-major order:
/// the one rule, so the CPU path and the CUDA path draw the same masks in the same order.
pub fn dropout_draws(n: usize, p: f64, rng: &mut Rng) -> impl Iterator<Item = f32> + '_ {
    let scale = (1.0 / (1.0 - p)) as f32;
    let p = p as f32;
    (0..n).map(move |_| if rng.uniform() < p { 0.0 } else { scale })
}

/// [`dropout_draws`] as a vector.
pub fn dropout_mask(n: usize, p: f64, rng: &mut Rng) -> Vec<f32> {
    dropout_draws(n, p, rng).collect()
}

/// Inverted dropout with a mask drawn from `rng` ([`dropout_mask`]).
fn dropout(x: &Tensor, p: f64, rng: &mut Rng) -> Result<Tensor> {
    let mask = dropout_mask(x.elem_count(), p, rng);
    x.mul(&Tensor::from_vec(mask, x.shape(), x.device())?)
}

/// The last layer's output after dropout, `[B·T, H]`, for `x` `[B, T]` from `state`, which
/// becomes the state after the window. `dropout` is `(p, rng)` when training.
pub fn forward(
    model: &CharRnn,
    x: &Tensor,
    state: &mut State,
    dropout_with: Option<(f64, &mut Rng)>,
) -> Result<Tensor> {
    let (b, t) = x.dims2()?;
    let h = model.dims.hidden;
    let dev = model.device();
    let mut input = model
        .get("Embedding/weight")?
        .index_select(&x.flatten_all()?, 0)?;
    let mut drop = dropout_with.filter(|(p, _)| *p > 0.0);
    for layer in 0..model.dims.layers {
        let [w_ih, w_hh, b_ih, b_hh] = layer_names(layer);
        let bias = model.get(&b_ih)?.add(model.get(&b_hh)?)?;
        let xproj = input
            .matmul(&model.get(&w_ih)?.t()?)?
            .reshape((b, t, 4 * h))?;
        let h0 = Tensor::from_slice(&state.h[layer], (b, h), dev)?;
        let c0 = Tensor::from_slice(&state.c[layer], (b, h), dev)?;
        let (hs, h_last, c_last) = lstm_layer(&xproj, model.get(&w_hh)?, &bias, &h0, &c0)?;
        state.h[layer] = h_last.flatten_all()?.to_vec1()?;
        state.c[layer] = c_last.flatten_all()?.to_vec1()?;
        input = hs.reshape((b * t, h))?;
        if let Some((p, rng)) = drop.as_mut() {
            input = dropout(&input, *p, rng)?;
        }
    }
    Ok(input)
}

/// Decoder logits `[N, V]` of `hidden` `[N, H]`.
pub fn logits(model: &CharRnn, hidden: &Tensor) -> Result<Tensor> {
    hidden
        .matmul(&model.get("Logits/weight")?.t()?)?
        .broadcast_add(model.get("Logits/bias")?)
}

/// Mean cross-entropy (with gradient) and accuracy of the decoder on `hidden` against
/// `targets` `[N]`.
pub fn loss(model: &CharRnn, hidden: &Tensor, targets: &Tensor) -> Result<(Tensor, f32)> {
    let logits = logits(model, hidden)?;
    let loss = candle_nn::loss::cross_entropy(&logits, targets)?;
    let hits = logits
        .detach()
        .argmax(1)?
        .eq(targets)?
        .to_dtype(candle_core::DType::F32)?
        .mean_all()?
        .to_scalar::<f32>()?;
    Ok((loss, hits))
}

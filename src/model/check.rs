//! The equivalence check: one training window through a backend against candle's step-by-step
//! ops on the CPU, from the same weights, batch, carried state and dropout masks. `charlab
//! check-device` runs it on a device; the tests run it at every instruction set.

use super::cpu::Sums;
use super::precision::Products;
use super::{bf16, Backend, CharRnn, Dims, State};
use crate::rng::Rng;
use candle_core::Device;

/// The largest relative error a backend may show against the reference: float32 through
/// different summation orders stays well inside it, a wrong kernel does not.
pub const TOLERANCE: f32 = 1e-4;

/// The same limit for bf16 products against the fp32 reference. Each rounded operand carries
/// at most 2^-8 relative error, so a product at most ≈ 2^-7 (7.8e-3); a gradient goes through
/// three rounded products in a row (decoder, input gradient, weight gradient), ≈ 3 · 2^-7 ≈
/// 2.3e-2 if nothing cancels, plus the recurrent product once per step back through time,
/// whose errors are independent roundings summed over the steps and mostly cancel (measured
/// ≈ 4e-3 over the check's window with every product in bf16). A wrong kernel is off by O(1).
pub const BF16_TOLERANCE: f32 = 2.5e-2;

/// The limit of a backend computing its large products as `p` does.
pub fn tolerance(p: Products) -> f32 {
    match p {
        Products::Fp32 => TOLERANCE,
        Products::Bf16(_) => BF16_TOLERANCE,
    }
}

/// One comparison of [`check_device`]: what was compared, its limit, and its rows.
#[derive(Debug, Clone)]
pub struct CheckSection {
    pub against: String,
    pub limit: f32,
    pub rows: Vec<CheckRow>,
}

impl CheckSection {
    pub fn passes(&self) -> bool {
        self.rows.iter().all(|r| r.rel_err < self.limit)
    }
}

/// One line of [`check_backend`]: a quantity and its relative error.
#[derive(Debug, Clone)]
pub struct CheckRow {
    pub name: String,
    pub rel_err: f32,
}

/// Relative L2 error of `a` against `b`.
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt() as f32
}

/// Runs one training window (dropout `p`, a non-zero carried state) with `backend` on `device`
/// and with the reference ops on the CPU, from the same weights, batch and dropout masks, and
/// returns the relative error of the loss, of every parameter gradient and of the state after
/// the window: the equivalence check of `charlab check-device` and of the tests.
pub fn check_backend(
    device: &Device,
    backend: &mut Backend,
    dims: Dims,
    (batch, seq): (usize, usize),
    dropout: f64,
    seed: u64,
) -> crate::Result<Vec<CheckRow>> {
    let mut rng = Rng::new(seed, 7);
    let mut ids = |_| (rng.next_u64() % dims.vocab as u64) as u32;
    let x: Vec<u32> = (0..batch * seq).map(&mut ids).collect();
    let y: Vec<u32> = (0..batch * seq).map(&mut ids).collect();
    let mut start = State::zeros(dims.layers, batch, dims.hidden);
    for (k, (h, c)) in start.h.iter_mut().zip(&mut start.c).enumerate() {
        h.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = ((i + k) % 7) as f32 * 0.1 - 0.3);
        c.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = ((i * 3 + k) % 5) as f32 * 0.2 - 0.4);
    }
    let run = |dev: &Device, b: &mut Backend| -> crate::Result<(Sums, Vec<Vec<f32>>, State)> {
        let model = CharRnn::new(dims, seed, dev)?;
        let mut state = start.clone();
        let mut drop_rng = Rng::new(seed, 8);
        let sums = b.train(&model, (&x, &y, seq), &mut state, dropout, &mut drop_rng)?;
        Ok((sums, b.grads()?.to_vec(), state))
    };
    let (want, want_grads, want_state) =
        run(&Device::Cpu, &mut Backend::Candle { grads: Vec::new() })?;
    let (got, got_grads, got_state) = run(device, backend)?;
    let model = CharRnn::new(dims, seed, &Device::Cpu)?;
    let mut rows = vec![CheckRow {
        name: "loss".into(),
        rel_err: rel_err(&[got.loss as f32], &[want.loss as f32]),
    }];
    for (((name, _), a), b) in model.params().iter().zip(&got_grads).zip(&want_grads) {
        rows.push(CheckRow {
            name: format!("d {name}"),
            rel_err: rel_err(a, b),
        });
    }
    let flat = |s: &State| {
        s.h.concat()
            .into_iter()
            .chain(s.c.concat())
            .collect::<Vec<_>>()
    };
    rows.push(CheckRow {
        name: "state after the window".into(),
        rel_err: rel_err(&flat(&got_state), &flat(&want_state)),
    });
    Ok(rows)
}

/// `charlab check-device`: the backends a run on `device` may use against candle's reference ops
/// on the CPU, with dropout on. On the CPU, the fp32 path and the bf16 one (on the fastest bf16
/// unit the CPU has, AMX tiles or AVX512-BF16, else emulated); on a CUDA device, the fused path
/// and candle's step-by-step ops.
pub fn check_device(
    device: &Device,
    dims: Dims,
    batch: usize,
    seq: usize,
) -> crate::Result<Vec<CheckSection>> {
    let model = CharRnn::new(dims, 1, device)?;
    let mut sections = Vec::new();
    for (mut backend, products) in backends_of(&model)? {
        let against = match &backend {
            Backend::Cpu(cpu) => format!(
                "cpu {} kernels, {} products{} vs cpu step-by-step",
                cpu.level().name(),
                products.name(),
                match products {
                    Products::Bf16(bf16::Unit::Emulated) => " (emulated)",
                    Products::Bf16(bf16::Unit::Amx) => " (AMX tiles)",
                    _ => "",
                }
            ),
            other => format!(
                "{} {} vs cpu step-by-step",
                crate::device::name(device),
                other.name()
            ),
        };
        let rows = check_backend(device, &mut backend, dims, (batch, seq), 0.25, 1)?;
        sections.push(CheckSection {
            against,
            limit: tolerance(products),
            rows,
        });
    }
    Ok(sections)
}

/// The backends [`check_device`] checks on `model`'s device, with the products each computes.
fn backends_of(model: &CharRnn) -> crate::Result<Vec<(Backend, Products)>> {
    if model.device().is_cpu() {
        let bf16 = bf16::fastest_unit().unwrap_or(bf16::Unit::Emulated);
        return [Products::Fp32, Products::Bf16(bf16)]
            .into_iter()
            .map(|p| Ok((Backend::for_model(model, p)?, p)))
            .collect();
    }
    let chosen = Backend::for_model(model, Products::Fp32)?;
    let mut out = Vec::new();
    if !matches!(chosen, Backend::Candle { .. }) {
        out.push((chosen, Products::Fp32));
    }
    out.push((Backend::Candle { grads: Vec::new() }, Products::Fp32));
    Ok(out)
}

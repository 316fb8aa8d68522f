//! charlab against PyTorch, without PyTorch: `tests/fixtures/pytorch_parity.json` was written by
//! `scripts/parity_fixture.py` (nn.Embedding → nn.LSTM → nn.Linear, cross-entropy,
//! clip_grad_norm_, Adam). From PyTorch's own initial weights, loaded by PyTorch's parameter
//! names, charlab must give the same loss, every gradient, the state after the window, and after
//! three clipped Adam steps the same weights. The candle reference is the kernels' oracle; this
//! pins the model and its training to PyTorch's.

use candle_core::{Device, Tensor};
use charlab::config::RunConfig;
use charlab::model::cpu::CpuModel;
use charlab::model::simd::Level;
use charlab::model::{rel_err, torch_name, Backend, CharRnn, Dims, State};
use charlab::optim::{self, Hyper, Optimizer};
use charlab::rng::Rng;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// f32 accumulated in different orders: agreement to ~1e-6 relative, with room for the longer
/// sums of the gradients.
const TOL: f32 = 1e-4;

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pytorch_parity.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    floats(v).into_iter().map(|x| x as u32).collect()
}

fn dims(f: &Value) -> Dims {
    let d = &f["dims"];
    let n = |k: &str| d[k].as_u64().unwrap() as usize;
    Dims {
        vocab: n("vocab"),
        embed_dim: n("embed"),
        hidden: n("hidden"),
        layers: n("layers"),
    }
}

/// A model holding the fixture's weights, each found by its PyTorch name.
fn model(f: &Value) -> CharRnn {
    let m = CharRnn::new(dims(f), 1, &Device::Cpu).unwrap();
    let tensors: HashMap<String, Tensor> = m
        .params()
        .iter()
        .map(|(name, var)| {
            let torch = torch_name(name).unwrap();
            let data = floats(&f["params"][&torch]);
            let t = Tensor::from_vec(data, var.shape(), &Device::Cpu).unwrap();
            (name.clone(), t)
        })
        .collect();
    assert_eq!(tensors.len(), f["params"].as_object().unwrap().len());
    m.load(&tensors).unwrap();
    m
}

fn state(f: &Value, v: &Value) -> State {
    let d = dims(f);
    let layers = |k: &str| (0..d.layers).map(|l| floats(&v[k][l])).collect();
    State {
        batch: f["batch"].as_u64().unwrap() as usize,
        hidden: d.hidden,
        h: layers("h"),
        c: layers("c"),
    }
}

fn assert_state(got: &State, want: &State, what: &str) {
    let e =
        rel_err(&got.h.concat(), &want.h.concat()).max(rel_err(&got.c.concat(), &want.c.concat()));
    assert!(
        e < TOL,
        "{what}: state after the window differs (rel err {e})"
    );
}

/// Every backend charlab runs a CPU model with: the kernels at each instruction set this CPU
/// has, and the candle reference.
fn backends(d: Dims) -> Vec<(String, Backend)> {
    let mut out: Vec<(String, Backend)> = Level::all()
        .into_iter()
        .map(|l| {
            (
                l.name().to_string(),
                Backend::Cpu(Box::new(CpuModel::new(d, l))),
            )
        })
        .collect();
    out.push(("reference".into(), Backend::Candle { grads: Vec::new() }));
    out.push((
        "fused (CUDA path's structure)".into(),
        Backend::fused_host(d),
    ));
    out
}

/// One training window (no dropout) from `s`, whose mean loss must be PyTorch's `want`.
fn train_window(
    backend: &mut Backend,
    m: &CharRnn,
    window: (&[u32], &[u32], usize),
    s: &mut State,
    want: &Value,
    what: &str,
) {
    let sums = backend
        .train(m, window, s, 0.0, &mut Rng::new(1, 1))
        .unwrap();
    let loss = (sums.loss / sums.count as f64) as f32;
    let want = want.as_f64().unwrap() as f32;
    assert!(
        rel_err(&[loss], &[want]) < 1e-5,
        "{what}: loss {loss} vs PyTorch's {want}"
    );
}

#[test]
fn one_window_gives_pytorchs_loss_gradients_and_state() {
    let f = fixture();
    let w = &f["window"];
    let (x, y, seq) = (
        ids(&w["x"]),
        ids(&w["y"]),
        f["seq"].as_u64().unwrap() as usize,
    );
    let m = model(&f);
    for (what, mut backend) in backends(m.dims) {
        let mut s = state(&f, &f["state"]);
        train_window(&mut backend, &m, (&x, &y, seq), &mut s, &w["loss"], &what);
        for ((name, _), g) in m.params().iter().zip(backend.grads().unwrap()) {
            let torch = torch_name(name).unwrap();
            let e = rel_err(g, &floats(&w["grads"][&torch]));
            assert!(
                e < TOL,
                "{what}: d {name} ({torch}) differs from PyTorch's: rel err {e}"
            );
        }
        assert_state(&s, &state(&f, &w["state_after"]), &what);
    }
}

#[test]
fn clipped_adam_steps_end_at_pytorchs_weights() {
    let f = fixture();
    let t = &f["train"];
    let num = |k: &str| t[k].as_f64().unwrap();
    let betas = floats(&t["betas"]);
    let toml = format!(
        "optimizer = \"adam\"\nlr = {}\ngrad_clip = {}\nbeta1 = {}\nbeta2 = {}\neps = {:e}\n",
        num("lr"),
        num("clip"),
        betas[0],
        betas[1],
        num("eps")
    );
    let cfg = RunConfig::parse(&toml, Path::new("parity.toml")).unwrap();
    let seq = f["seq"].as_u64().unwrap() as usize;
    // The CPU path with the host's optimizer, and the CUDA path's structure with the optimizer
    // where its gradients are (the fixture is PyTorch fp32: the products must be fp32).
    let paths: [fn(Dims) -> Backend; 2] = [
        |d| Backend::Cpu(Box::new(CpuModel::new(d, Level::detect()))),
        Backend::fused_host,
    ];
    for path in paths {
        let m = model(&f);
        let sizes: Vec<usize> = m.params().iter().map(|(_, v)| v.elem_count()).collect();
        let mut opt = Optimizer::new(Hyper::from_config(&cfg), &sizes);
        let mut backend = path(m.dims);
        let mut s = state(&f, &f["state"]);
        for (i, step) in t["steps"].as_array().unwrap().iter().enumerate() {
            let (x, y) = (ids(&step["x"]), ids(&step["y"]));
            let what = format!("{} step {i}", backend.name());
            train_window(
                &mut backend,
                &m,
                (&x, &y, seq),
                &mut s,
                &step["loss"],
                &what,
            );
            let norm = backend.grad_norm().unwrap();
            let want_norm = step["grad_norm"].as_f64().unwrap();
            assert!(
                (norm - want_norm).abs() / want_norm < 1e-4,
                "{what}: norm {norm} vs {want_norm}"
            );
            assert!(
                norm > cfg.grad_clip,
                "{what}: the fixture should exercise clipping"
            );
            let scale = optim::clip_scale(norm, cfg.grad_clip);
            backend.update(&mut opt, &m, cfg.lr, scale).unwrap();
        }
        for (name, var) in m.params() {
            let torch = torch_name(name).unwrap();
            let got = var.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let e = rel_err(&got, &floats(&t["params_after"][&torch]));
            assert!(
                e < TOL,
                "{}: {name} ({torch}) after the steps: rel err {e}",
                backend.name()
            );
        }
        assert_state(&s, &state(&f, &t["state_after"]), "after the steps");
    }
}

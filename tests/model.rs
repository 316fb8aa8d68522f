//! The fused LSTM against the plain step-by-step reference, and the config schema.

use candle_core::{Device, Tensor};
use charlab::config::RunConfig;
use charlab::model::{head, lstm, CharRnn, Dims, LstmImpl};
use charlab::rng::Rng;
use std::path::Path;

fn l2(t: &Tensor) -> f32 {
    t.sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .sqrt()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    l2(&(a - b).unwrap()) / l2(b).max(1e-12)
}

fn random(shape: &[usize], rng: &mut Rng, scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.normal() * scale).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

#[test]
fn fused_layer_matches_reference_forward_and_backward() {
    let mut rng = Rng::new(7, 0);
    let (b, t, h) = (3, 9, 8);
    let xproj = candle_core::Var::from_tensor(&random(&[b, t, 4 * h], &mut rng, 1.0)).unwrap();
    let w_hh = candle_core::Var::from_tensor(&random(&[4 * h, h], &mut rng, 0.3)).unwrap();
    let bias = candle_core::Var::from_tensor(&random(&[4 * h], &mut rng, 0.5)).unwrap();
    // A non-zero initial state, as after a previous window.
    let h0 = random(&[b, h], &mut rng, 0.5);
    let c0 = random(&[b, h], &mut rng, 0.5);
    let weight = random(&[b, t, h], &mut rng, 1.0);
    type Layer =
        fn(&Tensor, &Tensor, &Tensor, &Tensor, &Tensor) -> candle_core::Result<lstm::LayerOut>;
    let run = |f: Layer| {
        let out = f(&xproj, &w_hh, &bias, &h0, &c0).unwrap();
        let obj = (out.hs.clone() * &weight).unwrap().sum_all().unwrap();
        let g = obj.backward().unwrap();
        (
            out,
            g.get(&xproj).unwrap().clone(),
            g.get(&w_hh).unwrap().clone(),
            g.get(&bias).unwrap().clone(),
        )
    };
    let (fo, fgx, fgw, fgb) = run(lstm::fused);
    let (ro, rgx, rgw, rgb) = run(lstm::reference);
    assert!(rel_err(&fo.hs, &ro.hs) < 1e-5);
    assert!(rel_err(&fo.h_last, &ro.h_last) < 1e-5);
    assert!(rel_err(&fo.c_last, &ro.c_last) < 1e-5);
    assert!(
        rel_err(&fgx, &rgx) < 1e-4,
        "d xproj: {}",
        rel_err(&fgx, &rgx)
    );
    assert!(
        rel_err(&fgw, &rgw) < 1e-4,
        "d w_hh: {}",
        rel_err(&fgw, &rgw)
    );
    assert!(
        rel_err(&fgb, &rgb) < 1e-4,
        "d bias: {}",
        rel_err(&fgb, &rgb)
    );
}

#[test]
fn fused_model_matches_reference_loss_and_every_gradient() {
    let dims = Dims {
        vocab: 23,
        embed_dim: 12,
        hidden: 16,
        layers: 3,
    };
    let mut fused = CharRnn::new(dims, 3, &Device::Cpu).unwrap();
    fused.lstm = LstmImpl::Fused;
    let mut reference = CharRnn::new(dims, 3, &Device::Cpu).unwrap();
    reference.lstm = LstmImpl::Reference;
    let mut rng = Rng::new(5, 0);
    let (b, t) = (4, 12);
    let ids: Vec<u32> = (0..b * t).map(|_| (rng.next_u64() % 23) as u32).collect();
    let tgt: Vec<u32> = (0..b * t).map(|_| (rng.next_u64() % 23) as u32).collect();
    let x = Tensor::from_vec(ids, (b, t), &Device::Cpu).unwrap();
    let y = Tensor::from_vec(tgt, b * t, &Device::Cpu).unwrap();
    let mut results = Vec::new();
    for model in [&fused, &reference] {
        let state = model.zero_state(b).unwrap();
        // Dropout with the same seed draws the same masks in both.
        let mut drop_rng = Rng::new(9, 2);
        let fwd = model
            .forward(&x, &state, Some((0.3, &mut drop_rng)))
            .unwrap();
        let (loss, _) = model.loss(&fwd.hidden, &y).unwrap();
        let grads = loss.backward().unwrap();
        let g: Vec<Tensor> = model
            .params()
            .iter()
            .map(|(n, v)| {
                grads
                    .get(v.as_tensor())
                    .unwrap_or_else(|| panic!("no grad for {n}"))
                    .clone()
            })
            .collect();
        results.push((loss.to_scalar::<f32>().unwrap(), g));
    }
    let (fl, fg) = &results[0];
    let (rl, rg) = &results[1];
    assert!(((fl - rl) / rl).abs() < 1e-5, "loss {fl} vs {rl}");
    for (((name, _), a), b) in fused.params().iter().zip(fg).zip(rg) {
        let e = rel_err(a, b);
        assert!(e < 1e-4, "{name}: relative error {e}");
    }
}

#[test]
fn fused_head_matches_reference_loss_accuracy_and_gradients() {
    let mut rng = Rng::new(11, 0);
    let (n, h, v) = (37, 12, 29);
    let hidden = candle_core::Var::from_tensor(&random(&[n, h], &mut rng, 1.0)).unwrap();
    let w = candle_core::Var::from_tensor(&random(&[v, h], &mut rng, 0.5)).unwrap();
    let b = candle_core::Var::from_tensor(&random(&[v], &mut rng, 0.5)).unwrap();
    let t: Vec<u32> = (0..n).map(|_| (rng.next_u64() % v as u64) as u32).collect();
    let targets = Tensor::from_vec(t, n, &Device::Cpu).unwrap();
    let mut out = Vec::new();
    for f in [head::fused, head::reference] {
        let (loss, acc) = f(&hidden, &w, &b, &targets).unwrap();
        // Scale the loss so the incoming gradient is not 1: the op must use it.
        let g = (loss.clone() * 3.0).unwrap().backward().unwrap();
        out.push((
            loss.to_scalar::<f32>().unwrap(),
            acc,
            [
                g.get(&hidden).unwrap().clone(),
                g.get(&w).unwrap().clone(),
                g.get(&b).unwrap().clone(),
            ],
        ));
    }
    let (fl, fa, fg) = &out[0];
    let (rl, ra, rg) = &out[1];
    assert!(((fl - rl) / rl).abs() < 1e-5, "loss {fl} vs {rl}");
    assert_eq!(fa, ra);
    for (name, (a, b)) in ["d hidden", "d w", "d b"].iter().zip(fg.iter().zip(rg)) {
        assert!(rel_err(a, b) < 1e-4, "{name}: {}", rel_err(a, b));
    }
}

#[test]
fn forget_gate_bias_starts_at_one() {
    let dims = Dims {
        vocab: 5,
        embed_dim: 3,
        hidden: 4,
        layers: 2,
    };
    let m = CharRnn::new(dims, 1, &Device::Cpu).unwrap();
    let (_, bias) = m
        .params()
        .iter()
        .find(|(n, _)| n == "LSTM/layer_1/bias")
        .unwrap();
    let v = bias.to_vec1::<f32>().unwrap();
    assert_eq!(&v[4..8], &[1.0; 4]);
    assert!(v[..4].iter().chain(&v[8..]).all(|&x| x == 0.0));
}

#[test]
fn config_rejects_unknown_keys_with_their_line() {
    let err = RunConfig::parse("lr = 0.01\nhiden = 128\n", Path::new("run.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("run.toml") && err.contains("line 2") && err.contains("hiden"),
        "{err}"
    );
}

#[test]
fn config_rejects_out_of_range_values() {
    for (text, key) in [
        ("dropout = 1.0", "dropout"),
        ("lr = 0.0", "lr"),
        ("lr = -1e-3", "lr"),
        ("seq_len = 0", "seq_len"),
        ("device = \"tpu\"", "device"),
        ("val_fraction = 0.0", "val_fraction"),
        ("max_steps = 0", "max_steps"),
    ] {
        let err = RunConfig::parse(text, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
    let wrong_type = RunConfig::parse("hidden = \"big\"", Path::new("x.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        wrong_type.contains("line 1") && wrong_type.contains("hidden"),
        "{wrong_type}"
    );
}

#[test]
fn config_round_trips_through_toml() {
    let cfg = RunConfig {
        hidden: 77,
        lr: 3e-4,
        ..RunConfig::default()
    };
    let back = RunConfig::parse(&cfg.to_toml(), Path::new("config.toml")).unwrap();
    assert_eq!(back, cfg);
}

#[test]
fn check_device_command_proves_fused_cpu_equals_step_by_step_and_refuses_missing_cuda() {
    let bin = env!("CARGO_BIN_EXE_charlab");
    let out = std::process::Command::new(bin)
        .args([
            "check-device",
            "--dims",
            "41,8,12,3",
            "--batch",
            "5",
            "--seq",
            "7",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.trim_end().ends_with("equivalent"), "{text}");
    // The loss and one row per parameter (embedding, 3 per layer, decoder weight and bias).
    assert_eq!(
        text.lines().filter(|l| l.ends_with(" ok")).count(),
        1 + 1 + 3 * 3 + 2
    );

    let out = std::process::Command::new(bin)
        .args(["check-device", "--dims", "41,8"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dims"));
    if !cfg!(feature = "cuda") {
        let out = std::process::Command::new(bin)
            .args(["check-device", "--device", "cuda"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("built without CUDA"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

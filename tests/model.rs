//! The hand-written CPU model against candle's step-by-step reference (loss, accuracy, every
//! gradient, the carried state, dropout, sampling logits) at every instruction set this CPU has
//! and with several thread groups, and the config schema.

mod common;

use candle_core::Device;
use charlab::config::RunConfig;
use charlab::model::bf16::{self, Unit};
use charlab::model::cpu::CpuModel;
use charlab::model::precision::Products;
use charlab::model::simd::Level;
use charlab::model::{check_backend, rel_err, tolerance, Backend, CharRnn, Dims, State, TOLERANCE};
use charlab::rng::Rng;
use std::path::Path;

fn dims(vocab: usize, embed_dim: usize, hidden: usize, layers: usize) -> Dims {
    Dims {
        vocab,
        embed_dim,
        hidden,
        layers,
    }
}

/// Shapes that reach every path: the `[V, 4H]` table (small vocabulary) and the gathered
/// projection (large), a hidden size that needs padding to 16 and ones that do not, a batch
/// smaller than the thread count, one position.
const CASES: &[(Dims, usize, usize)] = &[
    (
        Dims {
            vocab: 23,
            embed_dim: 12,
            hidden: 16,
            layers: 3,
        },
        4,
        12,
    ),
    (
        Dims {
            vocab: 300,
            embed_dim: 8,
            hidden: 20,
            layers: 2,
        },
        5,
        7,
    ),
    (
        Dims {
            vocab: 7,
            embed_dim: 5,
            hidden: 48,
            layers: 1,
        },
        9,
        30,
    ),
    (
        Dims {
            vocab: 11,
            embed_dim: 4,
            hidden: 64,
            layers: 2,
        },
        1,
        1,
    ),
];

fn assert_equivalent(level: Level, d: Dims, batch: usize, seq: usize, dropout: f64) {
    assert_equivalent_in(Products::Fp32, level, d, (batch, seq), dropout);
}

/// The CPU path with `products` at `level` against the fp32 reference, within the limit of
/// that precision.
fn assert_equivalent_in(
    p: Products,
    level: Level,
    d: Dims,
    (batch, seq): (usize, usize),
    dropout: f64,
) {
    let limit = tolerance(p);
    let mut backend = Backend::Cpu(Box::new(CpuModel::new(d, level).with_products(p)));
    let rows = check_backend(&Device::Cpu, &mut backend, d, (batch, seq), dropout, 3).unwrap();
    for r in rows {
        assert!(
            r.rel_err < limit,
            "{} at {} with {p:?}, {d:?}, batch {batch}, seq {seq}: relative error {}",
            r.name,
            level.name(),
            r.rel_err
        );
    }
}

/// The bf16 units this CPU can run: the emulation always, the AVX512-BF16 kernel where present.
fn bf16_units() -> Vec<Unit> {
    let mut units = vec![Unit::Emulated];
    if bf16::native_available() {
        units.push(Unit::Native);
    } else {
        eprintln!("this CPU has no AVX512-BF16: only the emulated bf16 products are checked");
    }
    units
}

#[test]
fn bf16_products_keep_every_gradient_within_bf16s_bound_at_every_level_and_unit() {
    for level in Level::all() {
        for unit in bf16_units() {
            for &(d, batch, seq) in CASES {
                assert_equivalent_in(Products::Bf16(unit), level, d, (batch, seq), 0.3);
            }
        }
    }
}

#[test]
fn bf16_products_are_not_fp32_products() {
    // The check above would pass a bf16 path that silently ran fp32; this one would not.
    let d = dims(300, 16, 32, 2);
    for unit in bf16_units() {
        let grads = |p: Products| {
            let mut b = Backend::Cpu(Box::new(CpuModel::new(d, Level::detect()).with_products(p)));
            check_backend(&Device::Cpu, &mut b, d, (4, 9), 0.0, 3).unwrap()
        };
        let (fp32, bf16) = (grads(Products::Fp32), grads(Products::Bf16(unit)));
        let worst = bf16.iter().map(|r| r.rel_err).fold(0.0, f32::max);
        assert!(worst > 10.0 * fp32.iter().map(|r| r.rel_err).fold(0.0, f32::max));
        assert!(worst > 1e-4, "{unit:?}: {worst}");
    }
}

#[test]
fn cpu_model_matches_reference_loss_every_gradient_and_state_at_every_level() {
    for level in Level::all() {
        for &(d, batch, seq) in CASES {
            assert_equivalent(level, d, batch, seq, 0.3);
            assert_equivalent(level, d, batch, seq, 0.0);
        }
    }
}

#[test]
fn cpu_model_is_equivalent_with_one_thread_and_with_more_groups_than_rows_allow() {
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            for &(d, batch, seq) in CASES {
                assert_equivalent(Level::detect(), d, batch, seq, 0.2);
            }
        });
    }
}

#[test]
fn cpu_and_fused_paths_accuracy_eval_and_sampling_logits_match_the_reference() {
    let d = dims(29, 6, 24, 2);
    let model = CharRnn::new(d, 5, &Device::Cpu).unwrap();
    let mut rng = Rng::new(11, 0);
    let (b, t) = (3, 10);
    let x: Vec<u32> = (0..b * t).map(|_| (rng.next_u64() % 29) as u32).collect();
    // Targets that the untrained model sometimes gets right: its own inputs.
    let y = x.clone();
    let run = |backend: &mut Backend| {
        let mut state = State::zeros(2, b, 24);
        let eval = backend.eval(&model, (&x, &y, t), &mut state).unwrap();
        let mut one = State::zeros(2, 1, 24);
        let first = backend.next_logits(&model, &x[..5], &mut one).unwrap();
        let next = backend.next_logits(&model, &x[5..6], &mut one).unwrap();
        (eval, state, first, next)
    };
    let (re, rs, rf, rn) = run(&mut Backend::Candle { grads: Vec::new() });
    let cpu = Backend::Cpu(Box::new(CpuModel::new(d, Level::detect())));
    for mut backend in [cpu, Backend::fused_host(d)] {
        let (ce, cs, cf, cn) = run(&mut backend);
        let name = backend.name();
        assert_eq!(ce.count, re.count);
        assert!((ce.loss - re.loss).abs() / re.loss < 1e-5, "{name}");
        assert_eq!(ce.hits, re.hits.round(), "{name}: accuracy differs");
        assert!(rel_err(&cs.h.concat(), &rs.h.concat()) < 1e-5, "{name}");
        assert!(rel_err(&cs.c.concat(), &rs.c.concat()) < 1e-5, "{name}");
        assert_eq!(cf.len(), 29);
        assert!(
            rel_err(&cf, &rf) < 1e-5 && rel_err(&cn, &rn) < 1e-5,
            "{name}"
        );
    }
}

#[test]
fn fused_path_matches_reference_loss_every_gradient_and_state() {
    // The CUDA path's structure (products, strides, order through time, dropout masks) over the
    // kernels' CPU mirrors; `charlab check-device --device cuda` confirms the kernels on a GPU.
    for &(d, batch, seq) in CASES {
        for dropout in [0.0, 0.3] {
            let mut backend = Backend::fused_host(d);
            let rows =
                check_backend(&Device::Cpu, &mut backend, d, (batch, seq), dropout, 3).unwrap();
            assert_eq!(rows.len(), 2 + 1 + 4 * d.layers + 2);
            for r in rows {
                assert!(
                    r.rel_err < TOLERANCE,
                    "fused {} at {d:?}, batch {batch}, seq {seq}, dropout {dropout}: {}",
                    r.name,
                    r.rel_err
                );
            }
        }
    }
}

#[test]
fn fused_path_trains_as_the_cpu_path_with_its_optimizer_state_on_the_device() {
    // Three steps of each rule: the norm reduced on the device, the update applied there, the
    // state copied back for a checkpoint — against the CPU path and the host optimizer.
    use charlab::config::OptimizerKind;
    use charlab::optim::{clip_scale, Hyper, Optimizer};
    let d = dims(19, 6, 12, 2);
    let (b, t) = (3, 5);
    for kind in [
        OptimizerKind::Adam,
        OptimizerKind::Nesterov,
        OptimizerKind::Rmsprop,
    ] {
        let hyper = Hyper {
            kind,
            momentum: 0.9,
            beta1: 0.9,
            beta2: 0.999,
            rms_decay: 0.99,
            eps: 1e-8,
            weight_decay: 1e-3,
        };
        let mut runs = Vec::new();
        for mut backend in [
            Backend::Cpu(Box::new(CpuModel::new(d, Level::detect()))),
            Backend::fused_host(d),
        ] {
            let model = CharRnn::new(d, 4, &Device::Cpu).unwrap();
            let sizes: Vec<usize> = model.params().iter().map(|(_, v)| v.elem_count()).collect();
            let mut opt = Optimizer::new(hyper, &sizes);
            let (mut state, mut rng, mut data) =
                (model.zero_state(b), Rng::new(2, 0), Rng::new(3, 0));
            let mut norms = Vec::new();
            for _ in 0..3 {
                let x: Vec<u32> = (0..b * t).map(|_| (data.next_u64() % 19) as u32).collect();
                let y: Vec<u32> = (0..b * t).map(|_| (data.next_u64() % 19) as u32).collect();
                backend
                    .train(&model, (&x, &y, t), &mut state, 0.2, &mut rng)
                    .unwrap();
                let norm = backend.grad_norm().unwrap();
                norms.push(norm);
                backend
                    .update(&mut opt, &model, 3e-2, clip_scale(norm, 1.0))
                    .unwrap();
            }
            let is_fused = matches!(backend, Backend::Fused(_));
            assert_eq!(
                opt.tensors().is_err(),
                is_fused,
                "a device's state is refused until copied back"
            );
            backend.sync_optimizer(&mut opt).unwrap();
            let weights: Vec<f32> = model
                .params()
                .iter()
                .flat_map(|(_, v)| v.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                .collect();
            let mut slots: Vec<_> = opt.tensors().unwrap().into_iter().collect();
            slots.sort_by(|a, b| a.0.cmp(&b.0));
            let slots: Vec<f32> = slots
                .iter()
                .flat_map(|(_, v)| v.to_vec1::<f32>().unwrap())
                .collect();
            runs.push((norms, weights, slots));
        }
        let ((cn, cw, cs), (fn_, fw, fs)) = (&runs[0], &runs[1]);
        for (a, b) in cn.iter().zip(fn_) {
            assert!((a - b).abs() / b < 1e-5, "{kind:?}: norm {a} vs {b}");
        }
        assert!(
            rel_err(fw, cw) < 1e-5,
            "{kind:?}: weights {}",
            rel_err(fw, cw)
        );
        assert!(
            rel_err(fs, cs) < 1e-4,
            "{kind:?}: optimizer state {}",
            rel_err(fs, cs)
        );
    }
}

#[test]
fn every_kernel_the_fused_path_launches_is_declared_in_kernels_cu_with_its_arguments() {
    // The CUDA side loads kernels by name and passes arguments by position: a name or an
    // argument count that differs from kernels.cu fails only on a GPU, so it is checked here.
    use charlab::config::OptimizerKind;
    use charlab::model::fused::{Arg, Buf, ById, Cell, CellBack, Kernel, Xent};
    use charlab::optim::{Hyper, StepScalars};
    let cu = std::fs::read_to_string("src/model/fused/kernels.cu").unwrap();
    let a = Buf(0).at(0);
    let hyper = Hyper {
        kind: OptimizerKind::Adam,
        momentum: 0.9,
        beta1: 0.9,
        beta2: 0.999,
        rms_decay: 0.99,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let k = StepScalars {
        lr: 1e-3,
        grad_scale: 1.0,
        bc1: 0.1,
        bc2: 0.001,
    };
    let kernels = [
        Kernel::Fill {
            p: a,
            n: 1,
            value: 0.0,
        },
        Kernel::Gather(ById {
            table: a,
            ids: a,
            dense: a,
            rows: 1,
            cols: 1,
        }),
        Kernel::ScatterAdd(ById {
            dense: a,
            ids: a,
            table: a,
            rows: 1,
            cols: 1,
        }),
        Kernel::LstmStep(Cell {
            gates: a,
            ldg: 1,
            b_ih: a,
            b_hh: a,
            c_prev: a,
            ld_prev: 1,
            h: a,
            c: a,
            ld: 1,
            batch: 1,
            hidden: 1,
        }),
        Kernel::LstmStepBack(CellBack {
            gates: a,
            ldg: 1,
            c: a,
            c_prev: a,
            dh: a,
            ld: 1,
            dc: a,
            batch: 1,
            hidden: 1,
        }),
        Kernel::Shift {
            src: a,
            first: a,
            dst: a,
            batch: 1,
            steps: 1,
            cols: 1,
        },
        Kernel::Mul {
            a,
            b: a,
            out: a,
            n: 1,
        },
        Kernel::CopyRows {
            src: a,
            lds: 1,
            dst: a,
            ldd: 1,
            rows: 1,
            cols: 1,
        },
        Kernel::SoftmaxXent(Xent {
            z: a,
            bias: a,
            targets: a,
            loss: a,
            hit: a,
            rows: 1,
            cols: 1,
            scale: 1.0,
            grad: true,
        }),
        Kernel::SumSquares {
            x: a,
            n: 1,
            out: a,
            blocks: 1,
        },
        Kernel::OptimUpdate {
            p: a,
            g: a,
            s0: a,
            s1: a,
            n: 1,
            hyper,
            k,
        },
    ];
    let declared = cu.matches("extern \"C\" __global__ void").count();
    assert_eq!(
        declared,
        kernels.len(),
        "kernels.cu declares kernels the Rust side does not launch"
    );
    for kernel in kernels {
        let (name, _, args) = kernel.signature();
        let decl = format!("extern \"C\" __global__ void {name}(");
        let at = cu
            .find(&decl)
            .unwrap_or_else(|| panic!("kernels.cu has no kernel {name}"));
        let params = &cu[at + decl.len()..];
        let params = &params[..params.find(')').unwrap()];
        let types: Vec<&str> = params
            .split(',')
            .map(|p| p.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(
            types.len(),
            args.len(),
            "{name}: kernels.cu takes {} arguments",
            types.len()
        );
        for (t, arg) in types.iter().zip(&args) {
            let ok = match arg {
                Arg::Ptr(_) => *t == "float*" || *t == "const" || *t == "unsigned*",
                Arg::Int(_) => *t == "int",
                Arg::Float(_) => *t == "float",
            };
            assert!(ok, "{name}: {arg:?} passed where kernels.cu declares {t}");
        }
    }
}

#[test]
fn lstm_parameters_are_pytorchs_and_drawn_as_it_draws_them() {
    let dims = Dims {
        vocab: 50,
        embed_dim: 8,
        hidden: 64,
        layers: 2,
    };
    let m = CharRnn::new(dims, 1, &Device::Cpu).unwrap();
    let names: Vec<String> = m
        .params()
        .iter()
        .map(|(n, _)| charlab::model::torch_name(n).unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "embed.weight",
            "lstm.weight_ih_l0",
            "lstm.weight_hh_l0",
            "lstm.bias_ih_l0",
            "lstm.bias_hh_l0",
            "lstm.weight_ih_l1",
            "lstm.weight_hh_l1",
            "lstm.bias_ih_l1",
            "lstm.bias_hh_l1",
            "head.weight",
            "head.bias",
        ]
    );
    assert_eq!(charlab::model::torch_name("optim/0/0"), None);
    // Every LSTM tensor, both biases included, ~ U(±1/√H): bounded, centred, spread over the range.
    let bound = 1.0 / (dims.hidden as f32).sqrt();
    for (name, var) in m.params().iter().filter(|(n, _)| n.starts_with("LSTM/")) {
        let v = var.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let max = v.iter().fold(0f32, |a, x| a.max(x.abs()));
        assert!(max <= bound && max > 0.9 * bound, "{name}: max |x| {max}");
        assert!(mean.abs() < 0.2 * bound, "{name}: mean {mean}");
    }
    let get = |n: &str| {
        let (_, v) = m.params().iter().find(|(p, _)| p == n).unwrap();
        v.to_vec1::<f32>().unwrap()
    };
    assert_ne!(get("LSTM/layer_0/bias_ih"), get("LSTM/layer_0/bias_hh"));
}

#[test]
fn a_one_bias_checkpoint_loads_as_the_same_model() {
    let dims = Dims {
        vocab: 7,
        embed_dim: 3,
        hidden: 4,
        layers: 2,
    };
    let m = CharRnn::new(dims, 3, &Device::Cpu).unwrap();
    // The layout before two biases: w_ih, w_hh and one bias holding their sum.
    let mut old = std::collections::HashMap::new();
    for (name, var) in m.params() {
        let t = var.as_tensor().clone();
        let key = name
            .replace("weight_ih", "w_ih")
            .replace("weight_hh", "w_hh");
        if let Some(base) = key.strip_suffix("/bias_ih") {
            let sum = t.add(&m.tensors()[&format!("{base}/bias_hh")]).unwrap();
            old.insert(format!("{base}/bias"), sum);
        } else if !key.ends_with("/bias_hh") {
            old.insert(key, t);
        }
    }
    assert!(charlab::model::is_legacy_checkpoint(&old));
    assert!(!charlab::model::is_legacy_checkpoint(&m.tensors()));
    let loaded = CharRnn::new(dims, 99, &Device::Cpu).unwrap();
    loaded.load(&old).unwrap();
    let ids = [1u32, 4, 2, 6];
    let logits = |model: &CharRnn| {
        let mut backend = Backend::for_model(model, Products::Fp32).unwrap();
        let mut state = model.zero_state(1);
        backend.next_logits(model, &ids, &mut state).unwrap()
    };
    assert!(rel_err(&logits(&loaded), &logits(&m)) < 1e-6);
}

#[test]
fn a_saved_config_holds_every_key_a_run_directory_requires() {
    // A config with every optional key unset still writes each of SAVED_KEYS.
    let bare = RunConfig {
        max_steps: None,
        threads: None,
        ..RunConfig::default()
    };
    let table: toml::Table = bare.to_toml().parse().unwrap();
    for k in charlab::config::SAVED_KEYS {
        assert!(table.contains_key(*k), "{k} is not written");
    }
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
fn check_device_command_proves_the_cpu_path_equals_step_by_step_and_refuses_missing_cuda() {
    let here = Path::new(".");
    let out = common::charlab(
        here,
        &[
            "check-device",
            "--dims",
            "41,8,12,3",
            "--batch",
            "5",
            "--seq",
            "7",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.trim_end().ends_with("equivalent"), "{text}");
    // The loss, one row per parameter (embedding, 4 per layer, decoder weight and bias) and
    // the state carried to the next window, for fp32 products and for bf16 ones.
    assert_eq!(
        text.lines().filter(|l| l.ends_with(" ok")).count(),
        2 * (1 + 1 + 4 * 3 + 2 + 1)
    );
    assert!(
        text.contains("fp32 products vs") && text.contains("bf16 products"),
        "{text}"
    );

    let out = common::charlab(here, &["check-device", "--dims", "41,8"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dims"));
    if !cfg!(feature = "cuda") {
        let out = common::charlab(here, &["check-device", "--device", "cuda"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("built without CUDA"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

//! Training runs end to end on the fixture corpus.

mod common;

use charlab::config::{OptimizerKind, RunConfig};
use charlab::run_dir::Checkpoint;
use charlab::sample::{sample, SampleOptions, Sampling};
use charlab::summary::read_scalars;
use charlab::train::{train, RunStatus, TrainOptions};

#[test]
fn a_tiny_model_starts_near_ln_v_and_overfits() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path());
    let cfg = RunConfig {
        max_steps: Some(150),
        eval_every: 50,
        lr: 1e-2,
        ..common::tiny_config(&corpus)
    };
    let out = dir.path().join("run");
    let r = train(&cfg, &out, &common::quiet(dir.path())).unwrap();
    assert_eq!(r.status, RunStatus::Completed);
    let rec = &r.record;
    let first = rec.first_loss.unwrap();
    assert!(
        (first - rec.ln_vocab).abs() < 0.3,
        "first loss {first} vs ln V {}",
        rec.ln_vocab
    );
    let m = rec.final_metrics.unwrap();
    assert!(
        m.train_loss < 0.5 * first,
        "train loss {} did not fall from {first}",
        m.train_loss
    );
    assert!(m.val_loss < 0.6 * first, "val loss {}", m.val_loss);
    assert!((m.val_bpc - m.val_loss / std::f64::consts::LN_2).abs() < 1e-9);
    // Run directory is self-contained.
    for f in [
        "config.toml",
        "vocab.json",
        "run.json",
        "checkpoints/last.safetensors",
        "checkpoints/best.safetensors",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(json["status"], "completed");
    assert_eq!(json["steps"], 150);
    assert_eq!(json["device"], "cpu");
}

#[test]
fn every_optimizer_lowers_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path());
    for (opt, lr) in [
        (OptimizerKind::Sgd, 3.0),
        (OptimizerKind::Momentum, 0.3),
        (OptimizerKind::Nesterov, 0.3),
        (OptimizerKind::Adagrad, 0.1),
        (OptimizerKind::Rmsprop, 1e-2),
        (OptimizerKind::Adam, 1e-2),
        (OptimizerKind::Adamw, 1e-2),
    ] {
        let cfg = RunConfig {
            optimizer: opt,
            lr,
            weight_decay: if opt == OptimizerKind::Adamw {
                0.01
            } else {
                0.0
            },
            max_steps: Some(60),
            eval_every: 60,
            histogram_every: 0,
            ..common::tiny_config(&corpus)
        };
        let out = dir.path().join(format!("{opt:?}"));
        let r = train(&cfg, &out, &common::quiet(dir.path())).unwrap();
        let first = r.record.first_loss.unwrap();
        let losses = &read_scalars(&out).unwrap()["train/loss"];
        let tail: f64 = losses[losses.len() - 10..].iter().map(|p| p.1).sum::<f64>() / 10.0;
        assert!(tail < first - 0.25, "{opt:?}: {first} -> {tail}");
    }
}

#[test]
fn resuming_from_a_checkpoint_gives_the_same_losses_as_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path());
    let cfg = RunConfig {
        dropout: 0.2,
        ..common::tiny_config(&corpus)
    };
    let whole = dir.path().join("whole");
    train(&cfg, &whole, &common::quiet(dir.path())).unwrap();

    // Stop after 14 steps: the last checkpoint is at step 10, so steps 11..14 are redone.
    let parts = dir.path().join("parts");
    let stopped = train(
        &cfg,
        &parts,
        &TrainOptions {
            stop_after: Some(14),
            ..common::quiet(dir.path())
        },
    )
    .unwrap();
    assert_eq!(stopped.status, RunStatus::Interrupted);
    let resumed = train(
        &cfg,
        &parts,
        &TrainOptions {
            resume: true,
            ..common::quiet(dir.path())
        },
    )
    .unwrap();
    assert_eq!(resumed.status, RunStatus::Completed);

    let a = read_scalars(&whole).unwrap();
    let b = read_scalars(&parts).unwrap();
    let (la, lb) = (&a["train/loss"], &b["train/loss"]);
    let steps: Vec<u64> = lb.iter().map(|p| p.0).collect();
    assert_eq!(
        steps,
        (1..=20).collect::<Vec<_>>(),
        "each step exactly once after the purge"
    );
    for (pa, pb) in la.iter().zip(lb) {
        assert_eq!(pa.0, pb.0);
        assert!(
            (pa.1 - pb.1).abs() < 1e-5,
            "step {}: {} vs {}",
            pa.0,
            pa.1,
            pb.1
        );
    }
    assert_eq!(a["val/loss"], b["val/loss"]);
}

#[test]
fn an_existing_run_is_not_overwritten_and_resume_refuses_a_changed_model() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path());
    let cfg = common::tiny_config(&corpus);
    let out = dir.path().join("run");
    train(&cfg, &out, &common::quiet(dir.path())).unwrap();
    let again = train(&cfg, &out, &common::quiet(dir.path()))
        .unwrap_err()
        .to_string();
    assert!(again.contains("--resume"), "{again}");
    let changed = RunConfig {
        hidden: 48,
        ..cfg.clone()
    };
    let err = train(
        &changed,
        &out,
        &TrainOptions {
            resume: true,
            ..common::quiet(dir.path())
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("hidden"), "{err}");
    // Longer is fine: resume continues to the new max_steps.
    let longer = RunConfig {
        max_steps: Some(30),
        ..cfg
    };
    let r = train(
        &longer,
        &out,
        &TrainOptions {
            resume: true,
            ..common::quiet(dir.path())
        },
    )
    .unwrap();
    assert_eq!(r.record.steps, 30);
}

#[test]
fn a_diverging_run_stops_with_status_diverged() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path());
    let cfg = RunConfig {
        optimizer: OptimizerKind::Sgd,
        lr: 1e30,
        grad_clip: 0.0,
        ..common::tiny_config(&corpus)
    };
    let out = dir.path().join("run");
    let r = train(&cfg, &out, &common::quiet(dir.path())).unwrap();
    assert_eq!(r.status, RunStatus::Diverged);
    assert!(r.record.steps < 20);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(json["status"], "diverged");
}

#[test]
fn sampling_is_deterministic_with_a_seed_and_checks_the_prime() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path());
    let out = dir.path().join("run");
    train(
        &common::tiny_config(&corpus),
        &out,
        &common::quiet(dir.path()),
    )
    .unwrap();
    let opts = SampleOptions {
        checkpoint: Checkpoint::Best,
        prime: "宝玉".into(),
        length: 50,
        sampling: Sampling {
            temperature: 1.0,
            top_k: None,
            argmax: false,
        },
        seed: 42,
    };
    let a = sample(&out, &opts).unwrap();
    let b = sample(&out, &opts).unwrap();
    assert_eq!(a, b);
    assert!(a.starts_with("宝玉"));
    assert_eq!(a.chars().count(), 52);
    let other = sample(
        &out,
        &SampleOptions {
            seed: 43,
            ..opts.clone()
        },
    )
    .unwrap();
    assert_ne!(a, other);
    let top1 = sample(
        &out,
        &SampleOptions {
            sampling: Sampling {
                top_k: Some(1),
                ..opts.sampling
            },
            ..opts.clone()
        },
    )
    .unwrap();
    let argmax = sample(
        &out,
        &SampleOptions {
            sampling: Sampling {
                argmax: true,
                ..opts.sampling
            },
            ..opts.clone()
        },
    )
    .unwrap();
    assert_eq!(top1, argmax, "top-1 sampling is argmax");
    let err = sample(
        &out,
        &SampleOptions {
            prime: "宝Z".into(),
            ..opts
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("'Z'") && err.contains("--prime"), "{err}");
}

#[test]
fn patience_stops_a_run_whose_val_loss_stops_improving() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path());
    // An update too small to change any f32 weight: val/loss stays exactly the same.
    let cfg = RunConfig {
        optimizer: OptimizerKind::Sgd,
        lr: 1e-30,
        max_steps: Some(100),
        eval_every: 5,
        patience: Some(2),
        ..common::tiny_config(&corpus)
    };
    let r = train(&cfg, &dir.path().join("run"), &common::quiet(dir.path())).unwrap();
    assert_eq!(r.status, RunStatus::Completed);
    assert_eq!(
        r.record.steps, 15,
        "first eval sets the best, two more without improvement stop it"
    );
    assert!(r.record.message.unwrap().contains("early stop"));
}

#[test]
fn learning_rate_schedules_follow_their_definitions() {
    use charlab::config::Schedule;
    use charlab::optim::lr_at;
    let exp = RunConfig {
        lr: 1.0,
        lr_schedule: Schedule::Exponential,
        lr_decay: 0.5,
        lr_decay_after: 2.0,
        ..RunConfig::default()
    };
    // char-rnn: constant for the first epochs, then one decay per epoch.
    assert_eq!(lr_at(&exp, 0, 0.0, 100), 1.0);
    assert_eq!(lr_at(&exp, 0, 1.9, 100), 1.0);
    assert_eq!(lr_at(&exp, 0, 2.0, 100), 0.5);
    assert_eq!(lr_at(&exp, 0, 4.5, 100), 0.125);
    let cos = RunConfig {
        lr: 1.0,
        min_lr: 0.1,
        lr_schedule: Schedule::Cosine,
        ..RunConfig::default()
    };
    assert!((lr_at(&cos, 0, 0.0, 100) - 1.0).abs() < 1e-12);
    assert!((lr_at(&cos, 50, 0.0, 100) - 0.55).abs() < 1e-12);
    assert!((lr_at(&cos, 100, 0.0, 100) - 0.1).abs() < 1e-12);
    assert_eq!(lr_at(&RunConfig::default(), 77, 9.0, 100), 2e-3);
}

#[test]
fn an_early_point_with_nothing_to_compare_is_asked_again_until_the_first_evaluation() {
    use charlab::train::{Reading, Verdict};
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path());
    let cfg = RunConfig {
        max_steps: Some(100),
        eval_every: 50,
        ..common::tiny_config(&corpus)
    };
    // The hook answers from a script, recording which early step it was asked about.
    let run = |name: &str, answers: Vec<Verdict>| {
        let asked = Arc::new(Mutex::new(Vec::<u64>::new()));
        let (log, script) = (asked.clone(), Mutex::new(answers.into_iter()));
        let opts = TrainOptions {
            prune: Some(Arc::new(
                move |step: u64, _: u64, reading: Reading| match reading {
                    Reading::Early { .. } => {
                        log.lock().unwrap().push(step);
                        script.lock().unwrap().next().unwrap_or(Verdict::Wait)
                    }
                    Reading::Val(_) => Verdict::Keep,
                },
            )),
            ..common::quiet(dir.path())
        };
        let r = train(&cfg, &dir.path().join(name), &opts).unwrap();
        let asked = asked.lock().unwrap().clone();
        (r, asked)
    };
    // Waiting throughout: asked at steps 10, 20, 30 and 40, always about step 10; from the
    // first evaluation (50) on the rules alone decide, and the run trains to its end.
    let (r, asked) = run("waits", vec![]);
    assert_eq!(r.status, RunStatus::Completed);
    assert_eq!(asked, vec![10; 4]);
    // A sibling arrives before the third asking: the run is cut there, judged on step 10's loss.
    let (r, asked) = run("cut", vec![Verdict::Wait, Verdict::Wait, Verdict::Prune]);
    assert_eq!((r.status, r.record.steps), (RunStatus::Pruned, 30));
    assert_eq!(asked, vec![10; 3]);
    let message = r.record.message.unwrap();
    assert!(
        message.contains("pruned at step 30") && message.contains("at step 10"),
        "{message}"
    );
    // Kept once judged: never asked again.
    let (r, asked) = run("kept", vec![Verdict::Wait, Verdict::Keep, Verdict::Prune]);
    assert_eq!(r.status, RunStatus::Completed);
    assert_eq!(asked, vec![10; 2]);
}

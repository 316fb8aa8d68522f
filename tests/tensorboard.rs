//! The `charlab` command end to end, checked with TensorBoard's own reader (tests/tb_read.py).

mod common;

use charlab::train::{train, RunStatus, TrainOptions};
use common::charlab;
use std::path::Path;

fn write_config(dir: &Path, corpus: &Path, extra: &str) -> std::path::PathBuf {
    let p = dir.join("run.toml");
    std::fs::write(
        &p,
        format!(
            "corpus = {:?}\nbatch_size = 4\nseq_len = 16\nembed_dim = 16\nhidden = 32\nlayers = 2\n\
             max_steps = 20\neval_every = 10\nlog_every = 1\nhistogram_every = 10\nsample_length = 30\n\
             val_fraction = 0.1\ndevice = \"cpu\"\n{extra}\n[clean]\nstart_marker = \"章节目录\"\n",
            corpus.to_str().unwrap()
        ),
    )
    .unwrap();
    p
}

/// Every tag a run wrote (as TensorBoard reads it) is one `charlab::tags` spells, so the readers
/// that use those constants (the record rebuilt from events, the HParams metrics, the sweep's
/// charts, the metric names) know it; and every fixed scalar tag there was written, so the list
/// is not stale. The readers' own lists are checked against it too.
fn assert_every_tag_is_known(tb: &serde_json::Value) {
    use charlab::tags;
    let keys =
        |kind: &str| -> Vec<String> { tb[kind].as_object().unwrap().keys().cloned().collect() };
    let params: Vec<String> = {
        let m = charlab::model::CharRnn::new(
            charlab::model::Dims {
                vocab: 2,
                embed_dim: 1,
                hidden: 1,
                layers: 2,
            },
            1,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        m.params().iter().map(|(n, _)| n.clone()).collect()
    };
    for tag in keys("scalars") {
        assert!(
            tags::SCALARS.contains(&tag.as_str()) || tag.starts_with("hparams/"),
            "{tag}"
        );
    }
    for tag in tags::SCALARS {
        assert!(
            tb["scalars"].get(*tag).is_some(),
            "{tag} is listed but was not written"
        );
    }
    for tag in keys("histograms") {
        let known = params
            .iter()
            .any(|p| tag == tags::weights(p) || tag == tags::gradients(p));
        assert!(known, "{tag}");
    }
    for tag in keys("text") {
        assert!(tags::TEXTS.contains(&tag.as_str()), "{tag}");
    }
    assert!(tb["text"].get(tags::SAMPLE).is_some());
    let readers = charlab::train::METRICS
        .iter()
        .chain(tags::CHARTS.iter().flat_map(|c| c.1));
    let metrics = charlab::run_dir::Metric::ALL.iter().map(|m| m.name());
    for tag in readers
        .copied()
        .chain(metrics.filter(|n| n.contains('/') && !n.starts_with("final/")))
    {
        assert!(
            tags::SCALARS.contains(&tag),
            "a reader expects {tag}, which no run writes"
        );
    }
}

#[test]
fn tensorboard_reads_every_kind_of_summary_of_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path());
    let config = write_config(dir.path(), &corpus, "dropout = 0.1");
    let out = dir.path().join("runs/demo/a");
    let o = charlab(
        dir.path(),
        &[
            "train",
            "--config",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("ln(vocab)"), "babysitting line: {stderr}");

    let tb = common::tb_read(&out);
    let scalars = tb["scalars"].as_object().unwrap();
    assert_every_tag_is_known(&tb);
    for tag in [
        "train/loss",
        "train/accuracy",
        "lr",
        "grad_norm",
        "throughput/chars_per_s",
    ] {
        let steps: Vec<u64> = scalars[tag]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[0].as_u64().unwrap())
            .collect();
        assert_eq!(steps, (1..=20).collect::<Vec<_>>(), "{tag}");
    }
    for tag in ["val/loss", "val/accuracy", "val/bpc"] {
        let steps: Vec<u64> = scalars[tag]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[0].as_u64().unwrap())
            .collect();
        assert_eq!(steps, vec![10, 20], "{tag}");
    }
    // The best evaluation so far, at every evaluation: its last value is the run's best.
    let val: Vec<f64> = scalars["val/loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .collect();
    let best: Vec<f64> = scalars["best/val_loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .collect();
    assert_eq!(best[0], val[0]);
    assert!(
        (best[1] - val[0].min(val[1])).abs() < 1e-6,
        "{best:?} {val:?}"
    );
    for tag in ["best/val_bpc", "best/val_accuracy", "best/step"] {
        assert_eq!(common::tb_steps(&tb, tag), vec![10, 20], "{tag}");
    }
    let hist = tb["histograms"].as_object().unwrap();
    for name in [
        "Embedding/weight",
        "LSTM/layer_0/weight_ih",
        "LSTM/layer_1/weight_hh",
        "LSTM/layer_1/bias_ih",
        "LSTM/layer_1/bias_hh",
        "Logits/weight",
    ] {
        for kind in ["weights", "gradients"] {
            let tag = format!("{kind}/{name}");
            let steps: Vec<u64> = hist[&tag]
                .as_array()
                .unwrap_or_else(|| panic!("{tag}"))
                .iter()
                .map(|p| p[0].as_u64().unwrap())
                .collect();
            assert_eq!(steps, vec![1, 10, 20], "{tag}");
        }
    }
    let texts = tb["text"]["samples/generated"].as_array().unwrap();
    assert_eq!(texts.len(), 2);
    assert!(texts[1][1].as_str().unwrap().chars().count() > 30);
    let nodes: Vec<&str> = tb["graph_nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    for n in [
        "Inputs/chars",
        "Embedding/lookup",
        "LSTM/layer_0/cell",
        "LSTM/layer_1/cell",
        "Dropout/layer_1",
        "Logits/matmul",
        "Loss/cross_entropy",
        "Accuracy/argmax_equal",
        "Train/optimizer",
    ] {
        assert!(nodes.contains(&n), "graph lacks {n}: {nodes:?}");
    }
    let hp = &tb["hparams"];
    assert_eq!(hp["start"]["hparams"]["hidden"], 32.0);
    assert_eq!(hp["start"]["hparams"]["optimizer"], "adam");
    assert_eq!(hp["start"]["hparams"]["dropout"], 0.1);
    assert_eq!(hp["end"]["status"], "STATUS_SUCCESS");
    let metrics: Vec<&str> = hp["experiment"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(
        metrics,
        [
            "best/val_loss",
            "best/val_bpc",
            "best/val_accuracy",
            "best/step",
            "val/loss",
            "val/accuracy",
            "val/bpc",
            "train/loss"
        ]
    );
    let declared: Vec<&str> = hp["experiment"]["hparams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(declared.contains(&"lr") && declared.contains(&"seq_len"));

    // The run samples from the command line too.
    let s = charlab(
        dir.path(),
        &[
            "sample",
            "--run",
            out.to_str().unwrap(),
            "--prime",
            "宝玉",
            "--length",
            "20",
            "--seed",
            "3",
        ],
    );
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    let text = String::from_utf8(s.stdout).unwrap();
    assert!(
        text.starts_with("宝玉") && text.trim_end().chars().count() >= 20,
        "{text}"
    );
}

#[test]
fn tensorboard_shows_each_step_once_after_a_resume() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path());
    let cfg = common::tiny_config(&corpus);
    let out = dir.path().join("run");
    let quiet = common::quiet(dir.path());
    let r = train(
        &cfg,
        &out,
        &TrainOptions {
            stop_after: Some(17),
            ..quiet.clone()
        },
    )
    .unwrap();
    assert_eq!(r.status, RunStatus::Interrupted);
    let r = train(
        &cfg,
        &out,
        &TrainOptions {
            resume: true,
            ..quiet
        },
    )
    .unwrap();
    assert_eq!(r.status, RunStatus::Completed);
    let tb = common::tb_read(&out);
    let steps = common::tb_steps(&tb, "train/loss");
    assert_eq!(steps, (1..=20).collect::<Vec<_>>());
    let val: Vec<u64> = tb["scalars"]["val/loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_u64().unwrap())
        .collect();
    assert_eq!(val, vec![10, 20]);
    assert_eq!(tb["hparams"]["end"]["status"], "STATUS_SUCCESS");
}

#[test]
fn bad_input_gets_a_one_line_error_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path());
    let cases: Vec<(String, Vec<&str>)> = vec![
        ("lr = 0.0".into(), vec!["lr"]),
        ("hiden = 3".into(), vec!["hiden", "line 14"]),
        ("dropout = \"x\"".into(), vec!["dropout", "line 14"]),
        ("device = \"cuda\"".into(), vec!["without CUDA"]),
    ];
    for (extra, needles) in cases {
        // Later keys must not repeat earlier ones: drop the default device line for the device case.
        let config = write_config(dir.path(), &corpus, &extra);
        if extra.starts_with("device") {
            let t = std::fs::read_to_string(&config)
                .unwrap()
                .replacen("device = \"cpu\"\n", "", 1);
            std::fs::write(&config, t).unwrap();
        }
        let out = dir.path().join("bad-run");
        let o = charlab(
            dir.path(),
            &[
                "train",
                "--config",
                config.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra}: {err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
        for n in needles {
            assert!(err.contains(n), "{extra}: `{n}` not in {err}");
        }
        if !extra.starts_with("device") {
            assert!(err.contains("run.toml"), "names the file: {err}");
        }
    }
    let missing = charlab(
        dir.path(),
        &["train", "--config", "nope.toml", "--out", "x"],
    );
    assert_ne!(missing.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope.toml"));
}

//! Property tests and bounded fuzzing (proptest) of everything that reads user input: the
//! sweep-file parser and expander, the cleaning pipeline, the vocabulary, and the event-file
//! reader. The case count comes from `PROPTEST_CASES` (scripts/fuzz.sh runs many more); failures
//! found are kept below as plain regression tests.

use charlab::config::CleanConfig;
use charlab::corpus::clean;
use charlab::summary::read_scalars;
use charlab::sweep::plan;
use charlab::vocab::Vocab;
use proptest::prelude::*;
use std::path::Path;

/// Text made of the characters cleaning cares about, so the interesting cases are common.
fn noisy_text() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "a",
        "b",
        "字",
        "。",
        " ",
        "\u{3000}",
        "\r",
        "\n",
        "\n\n",
        "[",
        "]",
        "<",
        ">",
        "【",
        "】",
        "……",
        "…",
        "x y",
        "章节目录",
        "\t",
        "é",
        "🙂",
    ]);
    prop::collection::vec(pieces, 0..60).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn cleaning_is_idempotent(text in noisy_text()) {
        let cfg = CleanConfig::default();
        let (once, _) = clean(&text, &cfg).unwrap();
        let (twice, _) = clean(&once, &cfg).unwrap();
        prop_assert_eq!(twice, once);
    }

    #[test]
    fn cleaning_never_panics_on_any_text(text in any::<String>(), spaces in 0..3u8) {
        let cfg = CleanConfig {
            spaces: [charlab::config::Spaces::Auto, charlab::config::Spaces::Remove,
                     charlab::config::Spaces::Keep][spaces as usize],
            ..CleanConfig::default()
        };
        let _ = clean(&text, &cfg);
    }

    #[test]
    fn vocab_encode_decode_round_trips(text in any::<String>()) {
        let v = Vocab::build(&text);
        let ids = v.encode(&text).unwrap();
        prop_assert_eq!(ids.len(), text.chars().count());
        prop_assert_eq!(v.decode(&ids), text);
    }

    #[test]
    fn grid_count_is_the_product_of_list_lengths(lens in prop::collection::vec(1usize..5, 1..4)) {
        let keys = ["lr", "hidden", "seed"];
        let mut grid = String::new();
        for (k, n) in keys.iter().zip(&lens) {
            let vals: Vec<String> = (0..*n)
                .map(|i| match *k {
                    "lr" => format!("{}e-3", i + 1),
                    _ => format!("{}", i + 1) ,
                })
                .collect();
            grid.push_str(&format!("{k} = [{}]\n", vals.join(", ")));
        }
        let text = format!("[experiment]\nname = \"p\"\ncorpus = \"x.txt\"\n[grid]\n{grid}");
        let p = plan::plan(Path::new("s.toml"), &text, 1000, false).unwrap();
        prop_assert_eq!(p.trials.len(), lens.iter().product::<usize>());
    }

    #[test]
    fn the_sweep_parser_answers_any_text_without_panicking(text in any::<String>()) {
        let _ = plan::plan(Path::new("s.toml"), &text, 1000, false);
    }

    #[test]
    fn the_sweep_parser_answers_near_valid_files_without_panicking(
        name in "[a-z./\\\\ \u{0}-\u{1f}]{0,8}",
        key in prop::sample::select(vec!["lr", "hidden", "layers", "dropout", "seq_len", "bogus", "clean.max_chars", "seed"]),
        vals in prop::collection::vec(prop::sample::select(vec!["0", "-1", "1e9", "0.5", "\"x\"", "true", "[]", "1e-3", "nan", "18446744073709551616"]), 0..4),
        section in prop::sample::select(vec!["grid", "random", "defaults", "experiment", "[trial]"]),
    ) {
        let text = format!(
            "[experiment]\nname = {name:?}\ncorpus = \"x.txt\"\n[{section}]\n{key} = [{}]\n",
            vals.join(", ")
        );
        let _ = plan::plan(Path::new("s.toml"), &text, 1000, false);
    }

    #[test]
    fn the_event_reader_answers_any_bytes_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("events.out.tfevents.1.0.h.1.0"), &bytes).unwrap();
        let _ = read_scalars(dir.path());
    }
}

#[test]
fn the_event_reader_answers_truncated_real_files() {
    // A real event file cut at every length: a reader of a run being written sees exactly this.
    let dir = tempfile::tempdir().unwrap();
    let mut w = charlab::summary::EventWriter::create(dir.path()).unwrap();
    for step in 0..20 {
        w.scalar("train/loss", step, 1.0 / (step + 1) as f64)
            .unwrap();
    }
    w.sync().unwrap();
    let path = w.path().to_path_buf();
    drop(w);
    let full = std::fs::read(&path).unwrap();
    let cut = tempfile::tempdir().unwrap();
    let file = cut.path().join(path.file_name().unwrap());
    let mut seen = 0;
    for n in 0..=full.len() {
        std::fs::write(&file, &full[..n]).unwrap();
        if let Ok(s) = read_scalars(cut.path()) {
            let pts = s.get("train/loss").map_or(0, |v| v.len());
            assert!(pts >= seen, "fewer points from a longer prefix");
            seen = pts;
        }
    }
    assert_eq!(seen, 20);
}

/// Found by `cleaning_is_idempotent`: `……` became `。`, which tipped the "mostly CJK" count,
/// so a second cleaning removed the spaces the first had kept.
#[test]
fn regression_cleaning_clean_text_keeps_the_same_space_decision() {
    let cfg = CleanConfig::default();
    let (once, _) = clean("……\n 章节目录[< ", &cfg).unwrap();
    assert_eq!(clean(&once, &cfg).unwrap().0, once);
}

/// Any f64, with the values JSON has no number for (NaN, ±∞) and the edge cases made common.
fn any_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0),
        Just(f64::MIN_POSITIVE / 2.0),
        Just(f64::MAX),
        any::<u64>().prop_map(f64::from_bits),
        -1e3..1e3f64,
    ]
}

fn same(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
}

/// A run record with every float field taken from `x` in turn.
fn record(x: &[f64]) -> charlab::run_dir::RunRecord {
    let metrics = |i: usize| {
        serde_json::json!({"step": 7, "val_loss": 0.0, "val_accuracy": 0.0, "val_bpc": 0.0,
                           "train_loss": 0.0, "_": i})
    };
    let mut v = serde_json::json!({
        "status": "diverged", "started": "s", "ended": null, "charlab_version": "0",
        "candle_version": "0", "git_commit": null, "device": "cpu", "host": "h", "pid": 1,
        "command": [], "corpus": {"spec": "x", "source": "x", "key": "k", "chars": 1, "vocab": 1,
                                  "train_chars": 1, "val_chars": 1},
        "params": 1, "steps": 1, "total_steps": 1, "epoch": 0.0, "first_loss": 0.0,
        "ln_vocab": 0.0, "last_train_loss": 0.0, "final_metrics": metrics(0),
        "best_metrics": metrics(1), "evals": [{"step": 1, "val_loss": 0.0}],
        "tokens_per_s": 0.0, "elapsed_secs": 0.0, "message": null
    });
    for m in ["final_metrics", "best_metrics"] {
        v[m].as_object_mut().unwrap().remove("_");
    }
    let mut r: charlab::run_dir::RunRecord = serde_json::from_value(v).unwrap();
    let mut it = x.iter().copied().cycle();
    let mut next = || it.next().unwrap();
    r.epoch = next();
    r.first_loss = Some(next());
    r.ln_vocab = next();
    r.last_train_loss = Some(next());
    for m in [r.final_metrics.as_mut(), r.best_metrics.as_mut()]
        .into_iter()
        .flatten()
    {
        (m.val_loss, m.val_accuracy, m.val_bpc, m.train_loss) = (next(), next(), next(), next());
    }
    r.evals[0].val_loss = next();
    (r.tokens_per_s, r.elapsed_secs) = (next(), next());
    r
}

/// Every float field of a record, in a fixed order.
fn floats_of(r: &charlab::run_dir::RunRecord) -> Vec<f64> {
    let mut out = vec![
        r.epoch,
        r.first_loss.unwrap(),
        r.ln_vocab,
        r.last_train_loss.unwrap(),
    ];
    for m in [r.final_metrics, r.best_metrics].into_iter().flatten() {
        out.extend([m.val_loss, m.val_accuracy, m.val_bpc, m.train_loss]);
    }
    out.extend([r.evals[0].val_loss, r.tokens_per_s, r.elapsed_secs]);
    out
}

proptest! {
    /// A run record and a checkpoint's cursor read back every number as it was written: a NaN
    /// or infinite metric (a diverged run) must not make the record unreadable.
    #[test]
    fn every_number_of_a_record_and_a_cursor_round_trips(x in prop::collection::vec(any_float(), 15)) {
        let dir = tempfile::tempdir().unwrap();
        let run = charlab::run_dir::RunDir::new(dir.path());
        let written = record(&x);
        run.write_record(&written).unwrap();
        let read = run.read_record().unwrap().unwrap();
        for (a, b) in floats_of(&written).into_iter().zip(floats_of(&read)) {
            prop_assert!(same(a, b), "{a:?} read back as {b:?}");
        }

        let cursor = charlab::checkpoint::Cursor {
            step: 1, epoch: 0, window: 0, rng: 0, tokens: 0,
            elapsed_secs: x[0], best_val_loss: Some(x[1]), best_step: Some(1),
        };
        let path = dir.path().join("c.safetensors");
        let t = candle_core::Tensor::zeros(2, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let tensors = std::collections::HashMap::from([("w".to_string(), t)]);
        charlab::checkpoint::save(&path, &tensors, &cursor).unwrap();
        let (_, back) = charlab::checkpoint::load(&path, &candle_core::Device::Cpu).unwrap();
        prop_assert!(same(back.elapsed_secs, x[0]) && same(back.best_val_loss.unwrap(), x[1]));
    }
}

#[test]
fn a_record_written_with_null_for_nan_reads_as_nan() {
    // What charlab wrote before non-finite numbers had names: `null` for NaN.
    let dir = tempfile::tempdir().unwrap();
    let run = charlab::run_dir::RunDir::new(dir.path());
    let mut v = serde_json::to_value(record(&[1.0])).unwrap();
    v["best_metrics"]["train_loss"] = serde_json::Value::Null;
    v["first_loss"] = serde_json::Value::Null;
    std::fs::write(run.record_path(), v.to_string()).unwrap();
    let r = run.read_record().unwrap().unwrap();
    assert!(r.best_metrics.unwrap().train_loss.is_nan());
    assert_eq!(r.first_loss, None);
    assert_eq!(r.best_metrics.unwrap().val_loss, 1.0);
    let text = serde_json::to_string(&record(&[f64::NAN, f64::NEG_INFINITY])).unwrap();
    assert!(
        text.contains("\"NaN\"") && text.contains("\"-Infinity\""),
        "{text}"
    );
}

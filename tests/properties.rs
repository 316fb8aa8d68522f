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

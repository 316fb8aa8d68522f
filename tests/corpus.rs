//! Corpus cleaning, step by step, and the prepared-data cache.

mod common;

use charlab::config::{CleanConfig, Spaces};
use charlab::corpus::{clean, prepare};
use charlab::Error;
use std::path::Path;

fn step<'a>(r: &'a charlab::corpus::CleanReport, name: &str) -> &'a charlab::corpus::StepReport {
    r.steps
        .iter()
        .find(|s| s.step == name)
        .unwrap_or_else(|| panic!("no step {name} in {r:?}"))
}

#[test]
fn each_cleaning_step_removes_its_noise_and_reports_it() {
    let raw = common::noisy_corpus();
    let cfg = CleanConfig {
        start_marker: Some("章节目录".into()),
        ..CleanConfig::default()
    };
    let (text, report) = clean(&raw, &cfg).unwrap();
    // start marker: the lines before it are gone, the marker line stays.
    assert!(text.starts_with("章节目录\n"), "{text:.40}");
    assert_eq!(step(&report, "start_marker").lines_removed, 2);
    // strip_cr: one \r per raw line after the marker.
    assert!(!text.contains('\r'));
    let crs = raw[raw.find("章节目录").unwrap()..].matches('\r').count();
    assert_eq!(step(&report, "strip_cr").chars_removed, crs);
    // brackets: all three default pairs.
    for junk in ['【', '】', '[', ']', '<', '>'] {
        assert!(!text.contains(junk), "{junk} left in text");
    }
    assert!(!text.contains("甲戌侧批"));
    assert!(!text.contains("网站名"));
    assert!(!text.contains("href"));
    assert!(
        text.contains("点此阅读凤姐儿笑道"),
        "text between spans stays"
    );
    assert_eq!(
        step(&report, "brackets 【…】").chars_removed,
        40 * "【甲戌侧批：此回中凡用梦用幻等字】".chars().count()
    );
    // spaces: the text is mostly CJK, so ASCII and full-width spaces go.
    assert!(!text.contains(' ') && !text.contains('\u{3000}'));
    // ellipsis: a trailing …… becomes 。
    assert!(text.contains("我送妹妹一妙字。\n"));
    assert!(!text.contains('…'));
    // blank lines: none left, and the report counts them.
    assert!(!text.contains("\n\n"));
    assert!(step(&report, "drop_blank_lines").lines_removed >= 40 * 3);
    assert_eq!(report.chars, text.chars().count());
    assert_eq!(report.lines, text.lines().count());
}

#[test]
fn cleaning_is_idempotent() {
    let cfg = CleanConfig::default();
    let (once, _) = clean(&common::noisy_corpus(), &cfg).unwrap();
    let (twice, _) = clean(&once, &cfg).unwrap();
    assert_eq!(once, twice);
}

#[test]
fn english_keeps_its_spaces_unless_told() {
    let raw = "To be, or not to be: [Aside] that is the question.\r\n\r\nWhether 'tis nobler\n";
    let (auto, _) = clean(raw, &CleanConfig::default()).unwrap();
    assert_eq!(
        auto,
        "To be, or not to be:  that is the question.\nWhether 'tis nobler\n"
    );
    let remove = CleanConfig {
        spaces: Spaces::Remove,
        ..CleanConfig::default()
    };
    let (removed, _) = clean(raw, &remove).unwrap();
    assert!(removed.starts_with("Tobe,ornottobe:"));
}

#[test]
fn configurable_pairs_and_max_chars() {
    let cfg = CleanConfig {
        brackets: vec![["（".into(), "）".into()]],
        max_chars: Some(5),
        ..CleanConfig::default()
    };
    let (text, report) = clean("甲（注）乙丙丁戊己庚\n", &cfg).unwrap();
    assert_eq!(text, "甲乙丙丁戊");
    assert_eq!(step(&report, "max_chars").chars_removed, 3);
}

#[test]
fn a_missing_start_marker_is_an_error_naming_the_key() {
    let cfg = CleanConfig {
        start_marker: Some("不存在".into()),
        ..CleanConfig::default()
    };
    let err = clean("abc\n", &cfg).unwrap_err().to_string();
    assert!(
        err.contains("clean.start_marker") && err.contains("不存在"),
        "{err}"
    );
}

#[test]
fn invalid_utf8_names_the_byte_offset() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.txt");
    let mut bytes = "好好学习".as_bytes().to_vec();
    bytes.extend_from_slice(&[0xFF, 0xFE]);
    std::fs::write(&p, &bytes).unwrap();
    let err = prepare(
        p.to_str().unwrap(),
        &CleanConfig::default(),
        &dir.path().join("data"),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(err, Error::Utf8 { offset: 12, .. }), "{err}");
    assert!(err.to_string().contains("byte offset 12"));
    assert!(err.to_string().contains("bad.txt"));
}

#[test]
fn missing_and_empty_corpora_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let missing = prepare(
        "no/such/file.txt",
        &CleanConfig::default(),
        &data,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        missing.contains("no/such/file.txt") && missing.contains("hongloumeng"),
        "{missing}"
    );
    let p = dir.path().join("junk.txt");
    std::fs::write(&p, "【全是批注】\r\n\r\n   \r\n").unwrap();
    let empty = prepare(
        p.to_str().unwrap(),
        &CleanConfig::default(),
        &data,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        empty.contains("empty after cleaning") && empty.contains("junk.txt"),
        "{empty}"
    );
}

#[test]
fn prepared_data_is_cached_by_content_and_cleaning() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path());
    let data = dir.path().join("data");
    let spec = corpus.to_str().unwrap();
    let first = prepare(spec, &CleanConfig::default(), &data, &mut |_| {}).unwrap();
    assert!(!first.cached);
    let again = prepare(spec, &CleanConfig::default(), &data, &mut |_| {}).unwrap();
    assert!(again.cached);
    assert_eq!(first.ids, again.ids);
    assert_eq!(first.vocab, again.vocab);
    assert_eq!(first.report, again.report);
    // Another cleaning config is another entry.
    let other = CleanConfig {
        max_chars: Some(100),
        ..CleanConfig::default()
    };
    let third = prepare(spec, &other, &data, &mut |_| {}).unwrap();
    assert!(!third.cached);
    assert_eq!(third.ids.len(), 100);
    // A changed file is not served from the stale entry.
    std::fs::write(&corpus, "完全不同的文字。\n".repeat(10)).unwrap();
    let changed = prepare(spec, &CleanConfig::default(), &data, &mut |_| {}).unwrap();
    assert!(!changed.cached);
    assert_ne!(changed.ids.len(), first.ids.len());
    let _ = Path::new(spec);
}

//! The vocabulary and char-rnn batching.

mod common;

use charlab::batch::{split, Split};
use charlab::vocab::Vocab;

#[test]
fn vocab_round_trips_text_and_json() {
    let text = "红楼梦 Dream of the Red Chamber\n第一回";
    let v = Vocab::build(text);
    let ids = v.encode(text).unwrap();
    assert_eq!(v.decode(&ids), text);
    assert_eq!(
        v.len(),
        text.chars()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vocab.json");
    v.save(&p).unwrap();
    let back = Vocab::load(&p).unwrap();
    assert_eq!(back, v);
    assert_eq!(back.encode(text).unwrap(), ids);
}

#[test]
fn vocab_ids_do_not_depend_on_char_order_in_text() {
    assert_eq!(Vocab::build("cab"), Vocab::build("abcabc"));
}

#[test]
fn a_char_outside_the_vocab_is_named() {
    let v = Vocab::build("abc");
    let err = v.encode("abz").unwrap_err().to_string();
    assert!(err.contains("'z'") && err.contains("position 2"), "{err}");
}

#[test]
fn windows_have_the_right_shape_and_targets_are_shifted() {
    let ids: Vec<u32> = (0..103).collect();
    let s = Split::new(&ids, 4, 5, "train").unwrap();
    // 103 / 4 = 25 per stream; (25 - 1) / 5 = 4 windows.
    assert_eq!(s.windows(), 4);
    let w = s.window(1);
    assert_eq!(w.x.len(), 4 * 5);
    assert_eq!(w.y.len(), 4 * 5);
    // stream 2 starts at id 50; window 1 covers positions 5..10.
    assert_eq!(&w.x[10..15], &[55, 56, 57, 58, 59]);
    assert_eq!(&w.y[10..15], &[56, 57, 58, 59, 60]);
    for i in 0..w.x.len() {
        if i % 5 < 4 {
            assert_eq!(w.y[i], w.x[i + 1]);
        }
    }
}

#[test]
fn consecutive_windows_continue_each_stream() {
    let ids: Vec<u32> = (0..1000).collect();
    let s = Split::new(&ids, 8, 10, "train").unwrap();
    for k in 0..s.windows() - 1 {
        let (a, b) = (s.window(k), s.window(k + 1));
        for stream in 0..8 {
            // The state after window k's last input is the state before window k+1's first.
            assert_eq!(a.x[stream * 10 + 9] + 1, b.x[stream * 10]);
            assert_eq!(a.y[stream * 10 + 9], b.x[stream * 10]);
        }
    }
}

#[test]
fn split_holds_out_the_end_and_refuses_a_too_small_corpus() {
    let ids: Vec<u32> = (0..2000).collect();
    let (train, val) = split(&ids, 0.1, 4, 10).unwrap();
    assert_eq!(train.streams(), 4);
    assert!(val.window(0).x[0] >= 1800, "validation comes from the end");
    let err = split(&ids[..30], 0.1, 4, 10).unwrap_err().to_string();
    assert!(
        err.contains("batch_size") && err.contains("seq_len"),
        "{err}"
    );
}

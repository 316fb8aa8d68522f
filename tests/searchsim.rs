//! `searchsim` from outside: charlab's search run on a fitted surface (scripts/searchsim.py
//! writes the surface and reads these lines), seeded, budgeted, faster with a per-step lead.

use serde_json::Value;
use std::process::Command;

/// A surface in the fitted format: hidden 64 cheap and worse, hidden 128 dearer and better,
/// one layer only, a bowl in log lr around 1e-3.
fn surface(dir: &std::path::Path) -> std::path::PathBuf {
    let cell = |hidden: u64, offset: f64, secs: f64| {
        serde_json::json!({ "hidden": hidden, "layers": 1, "coef": [offset + 0.25, 1.0, 1.0, 0.0, 0.0, 0.0],
                            "gaps": [0.3, 0.1], "sd": 0.01, "secs": secs })
    };
    let s = serde_json::json!({ "lr": [1e-4, 1e-2], "dropout": [0.0, 0.5], "hidden": [64, 128],
                                "layers": [1], "cells": [cell(64, 0.2, 1.0), cell(128, 0.0, 2.0)] });
    let path = dir.join("surface.json");
    std::fs::write(&path, s.to_string()).unwrap();
    path
}

fn searchsim(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_searchsim"))
        .args(args)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// Per seed line: its trials.
fn trials(stdout: &str) -> Vec<Vec<Value>> {
    (stdout.lines())
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["trials"]
                .as_array()
                .unwrap()
                .clone()
        })
        .collect()
}

#[test]
fn a_budgeted_search_per_seed_in_the_race_format_and_the_same_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = surface(dir.path());
    let args = [
        s.to_str().unwrap(),
        "--seeds",
        "3",
        "--minutes",
        "1",
        "--rule",
        "halving",
    ];
    let (ok, out, err) = searchsim(&args);
    assert!(ok, "{err}");
    let seeds = trials(&out);
    assert_eq!(seeds.len(), 3);
    for ts in &seeds {
        let ended = |t: &Value| t["end"].as_f64().unwrap();
        // No trial starts after 60 s, and one takes at most 3 evaluations of 2 s.
        assert!(ts.iter().all(|t| ended(t) <= 66.0), "{ts:?}");
        assert!(
            ts.len() >= 20,
            "two workers for a minute: {} trials",
            ts.len()
        );
        for t in ts {
            let done = t["completed"].as_bool().unwrap();
            assert_eq!(done, !t["pruned"].as_bool().unwrap());
            assert_eq!(done, t["val_loss"].is_number(), "{t}");
            assert!([64, 128].contains(&t["params"]["hidden"].as_u64().unwrap()));
            // The steps it trained: the full 300, or the evaluations reached before a cut.
            let steps = t["steps"].as_u64().unwrap();
            let possible: &[u64] = if done { &[300] } else { &[100, 200] };
            assert!(possible.contains(&steps), "{t}");
        }
        // Each trial's proposal number, once each: what race.py's "first k proposed" reads.
        let mut numbers: Vec<u64> = ts.iter().map(|t| t["number"].as_u64().unwrap()).collect();
        numbers.sort_unstable();
        let all: Vec<u64> = (0..ts.len() as u64).collect();
        assert_eq!(numbers, all, "every proposal ended, once");
        // The search finds the better size near lr 1e-3: the bowl's floor is 0.25.
        let best = (ts.iter().filter_map(|t| t["val_loss"].as_f64())).fold(f64::INFINITY, f64::min);
        assert!(best < 0.35, "best {best}");
    }
    assert_eq!(searchsim(&args).1, out, "the same seeds, the same search");
    // A per-step lead ends more trials in the same minute.
    let fast = trials(&searchsim(&[&args[..], &["--speed", "2"]].concat()).1);
    let count = |s: &[Vec<Value>]| s.iter().map(Vec::len).sum::<usize>();
    assert!(count(&fast) > count(&seeds));
}

#[test]
fn a_bad_rule_or_surface_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let s = surface(dir.path());
    let (ok, _, err) = searchsim(&[s.to_str().unwrap(), "--rule", "median"]);
    assert!(!ok && err.contains("--rule median"), "{err}");
    let empty = dir.path().join("empty.json");
    let text = std::fs::read_to_string(&s).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let mut v = v.as_object().unwrap().clone();
    v.insert("cells".into(), Value::Array(vec![]));
    std::fs::write(&empty, Value::Object(v).to_string()).unwrap();
    let (ok, _, err) = searchsim(&[empty.to_str().unwrap()]);
    assert!(
        !ok && err.contains("empty.json") && err.contains("cells"),
        "{err}"
    );
    let missing = dir.path().join("none.json");
    let (ok, _, err) = searchsim(&[missing.to_str().unwrap()]);
    assert!(!ok && err.contains("none.json"), "{err}");
}

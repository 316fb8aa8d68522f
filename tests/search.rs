//! Search that learns (issue 13): TPE sweeps end to end — proposals from finished trials, a
//! sweep killed mid-search continues with the same proposals and no trial lost or run twice,
//! `--extend`, pruning — and `charlab refine`.

mod common;

use charlab::sweep::manifest::Manifest;
use charlab::sweep::plan;
use common::{said, tpe_file};
use std::path::Path;

fn manifest(d: &Path, name: &str) -> Manifest {
    Manifest::load(&d.join("runs").join(name)).unwrap()
}

#[test]
fn a_tpe_sweep_killed_mid_search_continues_with_the_same_proposals_and_each_trial_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Uninterrupted: one trial at a time, so the completion order is the proposal order.
    let a = tpe_file(d, "whole", 7, "");
    let o = common::charlab(d, &["sweep", &a, "--plain"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let whole = manifest(d, "whole");
    assert_eq!(whole.trials.len(), 7);
    let state = whole.search.clone().unwrap();
    assert_eq!(state.completed, (0..7).collect::<Vec<_>>());
    assert_eq!(
        state.seen,
        vec![0, 1, 2, 3, 4, 5, 6],
        "each saw every trial before it"
    );
    common::assert_proposals_replay(d, &a, "whole");
    // The three startup trials are a Latin hypercube: one lr in each third of the log range,
    // one dropout in each third of its interval, both hidden sizes among them.
    let value = |i: usize, k: &str| {
        let (_, v) = whole.trials[i]
            .overrides
            .iter()
            .find(|(n, _)| n == k)
            .unwrap();
        v.clone()
    };
    let thirds = |k: &str, f: &dyn Fn(f64) -> f64| {
        let mut t: Vec<usize> = (0..3)
            .map(|i| (3.0 * f(value(i, k).as_f64().unwrap())) as usize)
            .collect();
        t.sort_unstable();
        t
    };
    let lr = |v: f64| (v / 1e-4).ln() / (3e-2f64 / 1e-4).ln();
    assert_eq!(thirds("lr", &lr), [0, 1, 2]);
    assert_eq!(thirds("dropout", &|v| v / 0.4), [0, 1, 2]);
    let hidden: std::collections::BTreeSet<i64> = (0..3)
        .map(|i| value(i, "hidden").as_i64().unwrap())
        .collect();
    assert_eq!(hidden.len(), 2, "{hidden:?}");

    // The same search, SIGKILLed once the model has proposed, then run again.
    let b = tpe_file(d, "killed", 7, "");
    let root = d.join("runs/killed");
    let mut child = common::spawn_quiet(d, &["sweep", &b, "--plain"]);
    common::wait_until(120, "a proposal past the random start", || {
        Manifest::load(&root).is_ok_and(|m| m.trials.len() >= 5)
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let at_kill = manifest(d, "killed");
    let unfinished = at_kill.trials.len() < 7
        || at_kill
            .trials
            .iter()
            .any(|e| common::record(&root.join(&e.dir))["status"] != "completed");
    assert!(unfinished, "the kill came before the search ended");
    let o = common::charlab(d, &["sweep", &b, "--plain"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let killed = manifest(d, "killed");
    let hashes = |m: &Manifest| m.trials.iter().map(|e| e.hash.clone()).collect::<Vec<_>>();
    assert_eq!(hashes(&killed), hashes(&whole), "the same proposals");
    assert_eq!(killed.search.as_ref().unwrap().seen, state.seen);
    common::assert_proposals_replay(d, &b, "killed");
    for e in &killed.trials {
        let run = root.join(&e.dir);
        assert_eq!(common::record(&run)["status"], "completed", "{}", e.dir);
        let tb = common::tb_read(&run);
        assert_eq!(
            common::tb_steps(&tb, "train/loss"),
            (1..=12).map(|k| k * 10).collect::<Vec<_>>(),
            "{}: each step once",
            e.dir
        );
    }
}

#[test]
fn a_tpe_search_grows_only_with_extend_and_refuses_a_changed_space() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let f = tpe_file(d, "grow", 4, "");
    assert!(common::charlab(d, &["sweep", &f, "--plain"])
        .status
        .success());
    let f = tpe_file(d, "grow", 6, "");
    let o = common::charlab(d, &["sweep", &f, "--plain"]);
    common::assert_user_error(&o, "more trials without --extend", &["--extend", "6"]);
    let o = common::charlab(d, &["sweep", &f, "--plain", "--extend"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = manifest(d, "grow");
    assert_eq!(m.trials.len(), 6);
    assert_eq!(m.search.unwrap().seen[4..], [4, 5]);

    let changed = std::fs::read_to_string(d.join(&f))
        .unwrap()
        .replace("3e-2", "1e-1");
    std::fs::write(d.join(&f), changed).unwrap();
    let o = common::charlab(d, &["sweep", &f, "--plain", "--extend"]);
    common::assert_user_error(
        &o,
        "a changed space",
        &["changed the search", "new experiment name"],
    );
}

#[test]
fn a_tpe_search_with_seed_per_trial_trains_each_trial_from_its_own_seed_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let f = tpe_file(d, "seeds", 5, "");
    let text = std::fs::read_to_string(d.join(&f))
        .unwrap()
        .replace("[search]\n", "[search]\nseed_per_trial = true\n")
        .replace("[defaults]\n", "[defaults]\nseed = 40\n");
    std::fs::write(d.join(&f), &text).unwrap();
    let o = common::charlab(d, &["sweep", &f, "--plain"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = manifest(d, "seeds");
    assert_eq!(m.trials.len(), 5);
    for (i, e) in m.trials.iter().enumerate() {
        let (_, seed) = e.overrides.iter().find(|(k, _)| k == "seed").unwrap();
        assert_eq!(seed.as_i64(), Some(40 + i as i64), "{}", e.dir);
        let run = d.join("runs/seeds").join(&e.dir);
        let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
        assert!(
            config.contains(&format!("\nseed = {}\n", 40 + i)),
            "{config}"
        );
        assert_eq!(common::record(&run)["status"], "completed", "{}", e.dir);
    }
    // A proposal, seed included, is a pure function of its recorded history.
    common::assert_proposals_replay(d, &f, "seeds");

    let both = text
        .replace("name = \"seeds\"", "name = \"both\"")
        .replace("[random]\n", "[random]\nseed = { choice = [1, 2, 3] }\n");
    std::fs::write(d.join("both.toml"), both).unwrap();
    let o = common::charlab(d, &["sweep", "both.toml", "--plain"]);
    common::assert_user_error(
        &o,
        "a seed both per trial and searched",
        &["both.toml", "seed_per_trial", "[random]"],
    );
}

#[test]
fn a_tpe_search_with_halving_reads_pruned_curves_and_says_how_it_spent_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The early cut off: the glimpses below need every trial to reach an evaluation.
    let prune = "jobs = 2\npruning = { rule = \"halving\", warmup_evals = 1, min_trials = 2, \
                 eta = 2, min_progress = 0 }";
    let f = tpe_file(d, "prune", 8, prune);
    let o = common::charlab(d, &["sweep", &f, "--plain"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = manifest(d, "prune");
    let state = m.search.clone().unwrap();
    assert_eq!(m.trials.len(), 8);
    let mut completed = state.completed.clone();
    completed.sort();
    assert_eq!(
        completed,
        (0..8).collect::<Vec<_>>(),
        "every trial's end is known"
    );
    let records: Vec<serde_json::Value> = m
        .trials
        .iter()
        .map(|e| common::record(&d.join("runs/prune").join(&e.dir)))
        .collect();
    let pruned = records.iter().filter(|r| r["status"] == "pruned").count();
    assert!(
        records
            .iter()
            .all(|r| r["status"] == "completed" || r["status"] == "pruned"),
        "{records:?}"
    );
    // Two at a time: running trials are in each proposal's history, and the replay from the
    // manifest still gives every proposal. What a proposal read of a running trial is kept with
    // it: the trial was running then (not among the completions it saw), and what was read is
    // the start of the curve the trial ended with.
    common::assert_proposals_replay(d, &f, "prune");
    let evals = |i: usize| -> Vec<(u64, f64)> {
        (records[i]["evals"].as_array().unwrap().iter())
            .map(|p| (p["step"].as_u64().unwrap(), p["val_loss"].as_f64().unwrap()))
            .collect()
    };
    for (i, read) in state.glimpsed.iter().enumerate() {
        for g in read {
            assert!(g.trial < i, "proposal {i} read trial {}", g.trial);
            assert!(!state.completed[..state.seen[i]].contains(&g.trial));
            assert!(
                !g.curve.is_empty() && evals(g.trial).starts_with(&g.curve),
                "{g:?}"
            );
        }
    }
    // The log says what each proposal was fitted on.
    let log = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert_eq!(log.matches("(startup design)").count(), 3, "{log}");
    assert_eq!(log.matches("(TPE fitted at ").count(), 5, "{log}");

    // compare: steps per hidden value sum to the sweep's steps; pruned trials by step.
    let o = common::charlab(d, &["compare", "runs/prune", "--format", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let per_value = v["budget"]["per_value"].as_array().unwrap();
    let hidden: Vec<&serde_json::Value> =
        per_value.iter().filter(|s| s["key"] == "hidden").collect();
    let steps = |s: &&serde_json::Value| s["steps"].as_u64().unwrap();
    let total: u64 = records.iter().map(|r| r["steps"].as_u64().unwrap()).sum();
    assert_eq!(
        hidden.iter().map(steps).sum::<u64>(),
        total,
        "{per_value:?}"
    );
    let pruned_at: u64 = v["budget"]["pruned_at"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["trials"].as_u64().unwrap())
        .sum();
    assert_eq!(pruned_at as usize, pruned);
    let o = common::charlab(d, &["compare", "runs/prune"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("budget (steps trained per value"), "{text}");
    assert_eq!(text.contains("pruned: "), pruned > 0, "{text}");
    let html = common::report(d, &d.join("runs/prune"));
    let html = std::fs::read_to_string(html).unwrap();
    assert!(html.contains("How the sweep spent its budget"));

    // Whether a proposal found the other trial past an evaluation depends on timing above;
    // here not: the last trial to end, its end not yet heard of, is read by the next proposal
    // (the search extended by one) as far as its record goes, and that proposal replays.
    let last = *state.completed.last().unwrap();
    let extended = tpe_file(d, "prune", 9, prune);
    let plan = plan::load(&d.join(&extended), 1000, false).unwrap();
    let mut m = manifest(d, "prune");
    m.search.as_mut().unwrap().completed.pop();
    let proposer = charlab::sweep::search::Proposer::new(&plan, &d.join("runs/prune")).unwrap();
    assert_eq!(proposer.propose(&mut m).unwrap(), Some(8));
    let read = &m.search.as_ref().unwrap().glimpsed[8];
    assert_eq!(read.len(), 1, "{read:?}");
    assert_eq!((read[0].trial, &read[0].curve), (last, &evals(last)));
    common::assert_proposals_replay(d, &extended, "prune");
}

#[test]
fn a_tpe_search_under_the_early_cut_stops_hopeless_draws_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // One at a time, so which trials are cut does not hang on timing.
    let f = tpe_file(
        d,
        "cut",
        8,
        "pruning = { rule = \"hyperband\", min_trials = 2 }",
    );
    let o = common::charlab(d, &["sweep", &f, "--plain"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = manifest(d, "cut");
    let records: Vec<serde_json::Value> = (m.trials.iter())
        .map(|e| common::record(&d.join("runs/cut").join(&e.dir)))
        .collect();
    // 120 steps: the early point is step 12, before the first evaluation (30).
    let cut: Vec<&serde_json::Value> = (records.iter())
        .filter(|r| r["status"] == "pruned" && r["steps"] == 12)
        .collect();
    assert!(!cut.is_empty(), "{records:?}");
    for r in &cut {
        assert_eq!(r["evals"], serde_json::json!([]), "{r}");
        assert!(r["message"].as_str().unwrap().contains("early cut"), "{r}");
    }
    // Every trial's end is known to the search, the cut ones too, and the proposals replay.
    assert_eq!(m.search.unwrap().completed.len(), 8);
    common::assert_proposals_replay(d, &f, "cut");
    let o = common::charlab(d, &["compare", "runs/cut"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("at step 12"));
}

/// A TPE sweep of `trials` with `setting` added to `[search]`, run to its end: its file and the
/// log.
fn sweep_with(d: &std::path::Path, name: &str, trials: usize, setting: &str) -> (String, String) {
    let f = tpe_file(d, name, trials, "");
    let text = std::fs::read_to_string(d.join(&f)).unwrap();
    let text = text.replace("[search]\n", &format!("[search]\n{setting}\n"));
    std::fs::write(d.join(&f), text).unwrap();
    let o = common::charlab(d, &["sweep", &f, "--plain"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    (f, log)
}

/// The log line of proposal `i` (of fewer than ten).
fn proposal(log: &str, i: usize) -> &str {
    (log.lines())
        .find(|l| l.contains(&format!("proposed trial 00{i}")))
        .unwrap_or_else(|| panic!("no proposal {i}: {log}"))
}

#[test]
fn a_cost_aware_search_says_its_cost_weight_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (f, log) = sweep_with(d, "costly", 6, "cost_aware = true");
    // Three random draws, then three proposals weighing cost by 1 - index / 6.
    for (i, w) in [(3, "0.50"), (4, "0.33"), (5, "0.17")] {
        let line = proposal(&log, i);
        assert!(line.contains(&format!("cost weight {w}")), "{line}");
    }
    common::assert_proposals_replay(d, &f, "costly");
}

/// A TPE sweep with `setting` added to `[search]`: its proposals' log lines hold `says`, they
/// replay, and the same directory without the setting is refused, the message naming the file
/// and `refusal`.
fn a_search_variant_says_so_replays_and_is_another_search(
    name: &str,
    setting: &str,
    says: &str,
    refusal: &str,
) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let f = tpe_file(d, name, 5, "");
    let default = std::fs::read_to_string(d.join(&f)).unwrap();
    let variant = default.replace("[search]\n", &format!("[search]\n{setting}\n"));
    std::fs::write(d.join(&f), &variant).unwrap();
    let o = common::charlab(d, &["sweep", &f, "--plain"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    let fitted: Vec<&str> = log.lines().filter(|l| l.contains("TPE fitted")).collect();
    assert_eq!(fitted.len(), 2, "{log}");
    assert!(fitted.iter().all(|l| l.contains(says)), "{log}");
    common::assert_proposals_replay(d, &f, name);
    std::fs::write(d.join(&f), default.replace("trials = 5", "trials = 6")).unwrap();
    let o = common::charlab(d, &["sweep", &f, "--plain", "--extend"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&f) && err.contains(refusal), "{err}");
}

#[test]
fn a_key_by_key_search_says_so_replays_and_is_another_search_than_the_joint_default() {
    // Under the default (joint) model the message says how to go on.
    let says = ", key by key,";
    let refusal = "`multivariate = false`";
    a_search_variant_says_so_replays_and_is_another_search(
        "perkey",
        "multivariate = false",
        says,
        refusal,
    );
}

#[test]
fn an_ordered_choices_search_says_so_replays_and_is_another_search() {
    let says = ", ordered choices,";
    let refusal = "changed the search";
    a_search_variant_says_so_replays_and_is_another_search(
        "ordered",
        "ordered_choices = true",
        says,
        refusal,
    );
}

#[test]
fn a_search_with_a_share_of_wide_draws_that_does_not_fade_says_so_and_is_another_search() {
    // A search begun while half the candidates came from the whole space throughout: its
    // directory resumes only with `explore_fade = 0`, and the message says so.
    let says = ", 50 % of candidates from the whole space)";
    let refusal = "`explore_fade = 0`";
    a_search_variant_says_so_replays_and_is_another_search(
        "wide",
        "explore_fade = 0",
        says,
        refusal,
    );
}

#[test]
fn a_search_without_wide_draws_says_nothing_of_them_and_is_another_search() {
    // A search begun while every candidate came from the good density by default.
    let says = " scored there)";
    let refusal = "`explore = 0`";
    a_search_variant_says_so_replays_and_is_another_search("narrow", "explore = 0", says, refusal);
}

#[test]
fn the_share_of_wide_draws_fades_proposal_by_proposal_and_the_log_says_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (f, log) = sweep_with(d, "fade", 6, "explore_fade = 2");
    // Three random draws, then half, a quarter and none of the candidates from the whole space.
    for (i, end) in [
        (3, ", 50 % of candidates from the whole space)"),
        (4, ", 25 % of candidates from the whole space)"),
        (5, " scored there)"),
    ] {
        let line = proposal(&log, i);
        assert!(line.ends_with(end), "{line}");
    }
    common::assert_proposals_replay(d, &f, "fade");
    let dry = common::charlab(d, &["sweep", &f, "--dry-run"]);
    let said = String::from_utf8_lossy(&dry.stdout).to_string();
    assert!(
        said.contains("50 % of them from the whole space at first, falling to none over 2"),
        "{said}"
    );
}

#[test]
fn refine_writes_a_valid_sweep_file_whose_domains_hold_the_best_trials() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let f = tpe_file(d, "coarse", 6, "");
    assert!(common::charlab(d, &["sweep", &f, "--plain"])
        .status
        .success());
    let o = common::charlab(
        d,
        &["refine", "runs/coarse", "--top", "3", "-o", "fine.toml"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(d.join("fine.toml")).unwrap();
    assert!(
        text.starts_with("# Refined from experiment `coarse`"),
        "{text}"
    );
    let fine = plan::load(&d.join("fine.toml"), 1000, false).unwrap();
    assert_eq!(fine.experiment.name, "coarse-refined");
    // The best three by best val/loss.
    let o = common::charlab(
        d,
        &["compare", "runs/coarse", "--format", "json", "--top", "3"],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for run in v["runs"].as_array().unwrap() {
        let hp = run["hparams"].as_array().unwrap();
        let value = |k: &str| {
            hp.iter()
                .find(|p| p[0] == k)
                .and_then(|p| p[1].as_str())
                .unwrap()
                .to_string()
        };
        for (key, sampler) in &fine.space.random {
            let x = value(key);
            let inside = match sampler {
                plan::Sampler::LogUniform(a, b) | plan::Sampler::Uniform(a, b) => {
                    let x: f64 = x.parse().unwrap();
                    *a <= x * (1.0 + 1e-9) && x <= *b * (1.0 + 1e-9)
                }
                plan::Sampler::Choice(c) => c.iter().any(|v| v.to_string() == x),
                plan::Sampler::IntUniform(a, b) => {
                    let x: i64 = x.parse().unwrap();
                    *a <= x && x <= *b
                }
            };
            assert!(inside, "{key} = {x} outside the refined {sampler:?}");
        }
    }
    // Narrower than before, and charlab runs it.
    let old = plan::load(&d.join(&f), 1000, false).unwrap();
    let width = |p: &plan::Plan| match &p.space.random[0].1 {
        plan::Sampler::LogUniform(a, b) => (b / a).ln(),
        s => panic!("{s:?}"),
    };
    assert!(width(&fine) < width(&old));
    let o = common::charlab(d, &["sweep", "fine.toml", "--dry-run"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `[search] extra` lines added to a TPE sweep file.
fn with_search(d: &Path, file: &str, extra: &str) {
    let path = d.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace(
        "startup_trials = 3\n",
        &format!("startup_trials = 3\n{extra}\n"),
    );
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_warm_started_search_proposes_from_an_earlier_sweeps_trials_at_once_and_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = tpe_file(d, "earlier", 5, "");
    assert!(common::charlab(d, &["sweep", &a, "--plain"])
        .status
        .success());

    // Three startup draws, all covered by the five told: the first proposal is TPE's.
    let b = tpe_file(d, "warm", 2, "");
    with_search(d, &b, "warm_start = [\"runs/earlier\"]");
    let o = common::charlab(d, &["sweep", &b, "--plain"]);
    let out = said(&o);
    assert!(o.status.success(), "{out}");
    let first = out.lines().find(|l| l.contains("proposed trial")).unwrap();
    assert!(
        first.contains("TPE fitted") && first.contains("5 of them from the warm start"),
        "{out}"
    );
    let warm = manifest(d, "warm").search.unwrap().warm.unwrap();
    assert_eq!(warm.len(), 5);
    assert!(warm
        .iter()
        .all(|w| w.score.is_some() && w.run.contains("earlier")));
    let cmp = common::charlab(d, &["compare", "runs/warm"]);
    let cmp = String::from_utf8_lossy(&cmp.stdout);
    assert!(cmp.contains("warm start: 5 finished trials"), "{cmp}");
    common::assert_proposals_replay(d, &b, "warm");

    // The history is the manifest's: the earlier sweep may go, the search grows the same way.
    std::fs::rename(d.join("runs/earlier"), d.join("gone")).unwrap();
    let text = std::fs::read_to_string(d.join(&b)).unwrap();
    std::fs::write(d.join(&b), text.replace("trials = 2\n", "trials = 3\n")).unwrap();
    let o = common::charlab(d, &["sweep", &b, "--plain", "--extend"]);
    assert!(o.status.success(), "{}", said(&o));
    assert_eq!(manifest(d, "warm").trials.len(), 3);
    common::assert_proposals_replay(d, &b, "warm");

    // Another sweep's keys are refused in one line naming it.
    std::fs::rename(d.join("gone"), d.join("runs/earlier")).unwrap();
    let c = tpe_file(d, "other", 2, "");
    let text = std::fs::read_to_string(d.join(&c)).unwrap();
    let text = text.replace("dropout = { uniform = [0.0, 0.4] }\n", "");
    std::fs::write(d.join(&c), text).unwrap();
    with_search(d, &c, "warm_start = [\"runs/earlier\"]");
    let o = common::charlab(d, &["sweep", &c, "--plain"]);
    common::assert_user_error(&o, "different keys", &["runs/earlier", "same keys"]);
}

#[test]
fn two_objectives_mark_the_pareto_front_in_compare_and_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let f = tpe_file(d, "two", 6, "");
    with_search(d, &f, "objectives = [\"val/loss\", \"params\"]");
    let o = common::charlab(d, &["sweep", &f, "--plain"]);
    let out = said(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("along the Pareto front of val/loss and params"),
        "{out}"
    );
    let json = common::charlab(d, &["compare", "runs/two", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let runs = v["runs"].as_array().unwrap();
    let point = |r: &serde_json::Value| {
        let rec = common::record(&d.join("runs/two").join(r["run"].as_str().unwrap()));
        (
            r["best_val_loss"].as_f64().unwrap(),
            rec["params"].as_f64().unwrap(),
        )
    };
    // On the front exactly when no other completed run is at least as good on both and
    // better on one.
    for r in runs {
        let (l, p) = point(r);
        let beaten = runs
            .iter()
            .map(point)
            .any(|(l2, p2)| l2 <= l && p2 <= p && (l2 < l || p2 < p));
        assert_eq!(r["pareto"].as_bool(), Some(!beaten), "{r}");
    }
    let front = common::charlab(d, &["compare", "runs/two", "--pareto", "--format", "csv"]);
    let front = String::from_utf8_lossy(&front.stdout);
    let on = runs.iter().filter(|r| r["pareto"] == true).count();
    assert_eq!(front.lines().count(), 1 + on, "{front}");
    let table = common::charlab(d, &["compare", "runs/two"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("objectives: val/loss and params"));
    let report = common::report(d, &d.join("runs/two"));
    let html = std::fs::read_to_string(report).unwrap();
    assert!(html.contains("Two objectives: the Pareto front") && html.contains("<svg"));
}

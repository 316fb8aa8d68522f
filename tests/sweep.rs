//! Sweeps: planning (expansion and every bad-input case), and end-to-end runs through the CLI,
//! checked with TensorBoard's own reader and `compare`.

mod common;

use charlab::sweep::plan;
use common::{record, run_dirs, Sweep};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn plan_of(text: &str) -> charlab::Result<plan::Plan> {
    plan::plan(Path::new("sweep.toml"), text, 1000, false)
}

fn err_of(text: &str) -> String {
    plan_of(text).unwrap_err().to_string()
}

const HEAD: &str = "[experiment]\nname = \"t\"\ncorpus = \"x.txt\"\n";

#[test]
fn grid_count_is_the_product_of_list_lengths_in_file_order() {
    let p = plan_of(&format!(
        "{HEAD}[grid]\nseq_len = [50, 100]\nlayers = [1, 2, 3]\ndropout = [0.0, 0.25, 0.5]\nlr = [1e-3, 2e-3]\n"
    ))
    .unwrap();
    assert_eq!(p.trials.len(), 2 * 3 * 3 * 2);
    let keys: Vec<&str> = p.swept.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["seq_len", "layers", "dropout", "lr"]);
    // Last key varies fastest.
    assert_eq!(p.trials[0].config.lr, 1e-3);
    assert_eq!(p.trials[1].config.lr, 2e-3);
    assert_eq!(p.trials[0].config.seq_len, 50);
    assert_eq!(p.trials[35].config.seq_len, 100);
    assert!(p.trials.iter().all(|t| t.config.corpus == "x.txt"));
}

#[test]
fn random_search_is_deterministic_and_within_its_domains() {
    let text = format!(
        "{HEAD}seed = 7\n[random]\ntrials = 20\nlr = {{ log_uniform = [1e-4, 1e-2] }}\n\
         dropout = {{ uniform = [0.0, 0.6] }}\nhidden = {{ choice = [128, 256, 512] }}\n"
    );
    let a = plan_of(&text).unwrap();
    let b = plan_of(&text).unwrap();
    assert_eq!(a.trials, b.trials);
    assert_eq!(a.trials.len(), 20);
    for t in &a.trials {
        assert!((1e-4..=1e-2).contains(&t.config.lr));
        assert!((0.0..=0.6).contains(&t.config.dropout));
        assert!([128, 256, 512].contains(&t.config.hidden));
    }
    let other = plan_of(&text.replace("seed = 7", "seed = 8")).unwrap();
    assert_ne!(a.trials, other.trials);
}

#[test]
fn duplicates_collapse_and_explicit_trials_are_added() {
    let p = plan_of(&format!(
        "{HEAD}[grid]\nlr = [1e-3, 0.001, 2e-3]\n[[trial]]\nlr = 5e-3\nlayers = 3\n[[trial]]\nlr = 1e-3\nlayers = 1\n"
    ))
    .unwrap();
    // 1e-3 == 0.001 collapses; the explicit (1e-3, layers 1) is a new point unless layers=1
    // is already the default for the grid: defaults have layers = 2, so it is new.
    assert_eq!(p.duplicates, 1);
    assert_eq!(p.trials.len(), 4);
    assert_eq!(p.trials[2].config.layers, 3);
    // An explicit trial that repeats another explicit one is an error.
    let e = err_of(&format!(
        "{HEAD}[[trial]]\nlr = 5e-3\n[[trial]]\nlr = 5e-3\n"
    ));
    assert!(e.contains("duplicates"), "{e}");
}

#[test]
fn every_bad_input_names_the_file_line_and_key() {
    let cases: &[(&str, &[&str])] = &[
        (
            "[grid]\nhiden = [1, 2]\n",
            &["sweep.toml", "line 5", "hiden", "did you mean `hidden`"],
        ),
        (
            "[defaults]\nlearning_rate = 1e-3\n",
            &["line 5", "learning_rate"],
        ),
        (
            "[grid]\ndropout = [0.0, 1.0]\n",
            &["line 5", "dropout", "[0, 1)"],
        ),
        ("[grid]\nlr = [1e-3, 0.0]\n", &["line 5", "`lr`", "> 0"]),
        ("[grid]\nseq_len = [0, 10]\n", &["line 5", "seq_len"]),
        ("[grid]\nlayers = []\n", &["line 5", "layers", "empty"]),
        ("[grid]\nlayers = 2\n", &["line 5", "layers", "list"]),
        (
            "[grid]\nhidden = [\"big\"]\n",
            &["line 5", "hidden", "integer"],
        ),
        (
            "[random]\ntrials = 3\nlr = { log_uniform = [0.0, 1e-2] }\n",
            &["line 6", "lr", "low > 0"],
        ),
        ("[random]\nlr = { uniform = [1e-3, 1e-2] }\n", &["trials"]),
        ("[gird]\nlr = [1]\n", &["gird", "did you mean `grid`"]),
        ("[grid]\nlr = [1e-3\n", &["line 5"]),
    ];
    for (body, needles) in cases {
        let e = err_of(&format!("{HEAD}{body}"));
        for n in *needles {
            assert!(e.contains(n), "{body:?}: `{n}` not in: {e}");
        }
    }
    let e = err_of("[experiment]\nnme = \"x\"\n");
    assert!(
        e.contains("nme") && e.contains("did you mean `name`") && e.contains("line 2"),
        "{e}"
    );
}

/// Each of `cases` (a line, between `before` and `after`) is refused with every needle said.
fn assert_errors(before: &str, after: &str, cases: &[(&str, &[&str])]) {
    for (line, needles) in cases {
        let e = err_of(&format!("{before}{line}{after}"));
        for n in *needles {
            assert!(e.contains(n), "{line:?}: `{n}` not in: {e}");
        }
    }
}

#[test]
fn stop_and_constraints_refuse_bad_input_naming_the_line_and_key() {
    let cases: &[(&str, &[&str])] = &[
        (
            "stop = { targt = 1.5 }",
            &["line 4", "targt", "did you mean `target`"],
        ),
        (
            "stop = {}",
            &[
                "line 4",
                "needs target, patience_trials, patience_minutes or minutes",
            ],
        ),
        ("stop = 1.5", &["line 4", "`stop` must be a table"]),
        (
            "stop = { patience_trials = 0 }",
            &["patience_trials", "≥ 1"],
        ),
        (
            "stop = { patience_minutes = -2 }",
            &["patience_minutes", "> 0"],
        ),
        ("stop = { minutes = 0 }", &["minutes", "> 0"]),
        (
            "stop = { target = \"low\" }",
            &["target", "must be a number"],
        ),
        (
            "constraints = { max_params = 0 }",
            &["line 4", "max_params"],
        ),
        (
            "constraints = { max_seconds = 5 }",
            &["max_seconds", "max_trial_seconds"],
        ),
        (
            "pruning = { rule = \"hyperbnd\" }",
            &["line 4", "rule", "\"hyperband\"", "hyperbnd"],
        ),
        (
            "pruning = { min_progress = 1 }",
            &["line 4", "min_progress = 1", "[0, 1)"],
        ),
        (
            "pruning = { min_progress = \"most\" }",
            &["min_progress", "must be a number"],
        ),
    ];
    assert_errors(HEAD, "\n[grid]\nlr = [1e-3]\n", cases);
    let tpe =
        "[random]\nlr = { log_uniform = [1e-4, 1e-2] }\n[search]\nmethod = \"tpe\"\ntrials = 4\n";
    let searches: &[(&str, &[&str])] = &[
        (
            "objectives = [\"val/loss\", \"speed\"]",
            &["objectives", "time, params"],
        ),
        ("objectives = [\"time\"]", &["objectives", "[METRIC, COST]"]),
        (
            "objectives = \"val/loss\"",
            &["objectives", "must be a list"],
        ),
        (
            "metric = \"val/bpc\"\nobjectives = [\"val/loss\", \"time\"]",
            &["metric", "give one of them"],
        ),
        (
            "warm_start = \"runs/a\"",
            &["warm_start", "list of sweep directories"],
        ),
        ("explore = 1.5", &["explore = 1.5", "between 0 and 1"]),
        ("explore = \"half\"", &["explore", "must be a number"]),
        (
            "explore_fade = 2.5",
            &["explore_fade", "must be an integer ≥ 0"],
        ),
    ];
    assert_errors(&format!("{HEAD}{tpe}"), "\n", searches);
    let e = err_of(&format!(
        "{HEAD}[grid]\nlr = [1e-3]\n[search]\nwarm_start = [\"runs/a\"]\n"
    ));
    assert!(e.contains("warm_start") && e.contains("TPE setting"), "{e}");
}

#[test]
fn experiment_names_cannot_escape_runs() {
    for name in ["../up", "/abs", "a/b", "..", "tab\tname", ""] {
        let e = err_of(&format!("[experiment]\nname = {name:?}\n"));
        assert!(e.contains("experiment name"), "{name:?}: {e}");
    }
}

#[test]
fn a_huge_grid_is_refused_before_it_is_built() {
    let lists: String = (0..12)
        .map(|i| {
            format!(
                "{} = [{}]\n",
                [
                    "lr",
                    "dropout",
                    "hidden",
                    "layers",
                    "seq_len",
                    "embed_dim",
                    "batch_size",
                    "seed",
                    "momentum",
                    "beta1",
                    "beta2",
                    "eps"
                ][i],
                (1..=10)
                    .map(|v| match i {
                        0 => format!("{}e-4", v),
                        1 | 8 | 9 => format!("0.{v}"),
                        10 => format!("0.9{v}"),
                        11 => format!("{v}e-9"),
                        _ => v.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    // 10^12 points: refused from the count alone (expanding them would not end).
    let e = err_of(&format!("{HEAD}[grid]\n{lists}"));
    assert!(
        e.contains("more than the limit of 1000") && e.contains("--force"),
        "{e}"
    );
    let small = plan::plan(
        Path::new("s.toml"),
        &format!("{HEAD}[grid]\nlr = [1e-3, 2e-3, 3e-3]\n"),
        2,
        false,
    );
    assert!(small.unwrap_err().to_string().contains("limit of 2"));
    assert_eq!(
        plan::plan(
            Path::new("s.toml"),
            &format!("{HEAD}[grid]\nlr = [1e-3, 2e-3, 3e-3]\n"),
            2,
            true
        )
        .unwrap()
        .trials
        .len(),
        3
    );
}

#[test]
fn run_directory_names_are_short_and_unique() {
    let p = plan_of(&format!(
        "{HEAD}[grid]\nlr = [1e-3, 2e-3]\nweight_decay = [0.0, 0.0001]\nlr_schedule = [\"none\", \"cosine\"]\nembed_dim = [64, 128]\n"
    ))
    .unwrap();
    let names: Vec<String> = p
        .trials
        .iter()
        .enumerate()
        .map(|(i, t)| plan::dir_name(i, t))
        .collect();
    for n in &names {
        assert!(n.len() <= 64, "{n}");
        assert!(
            n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c)),
            "{n}"
        );
    }
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len());
    assert!(
        names[0].starts_with("000-lr0.001_wd0_lsnone_ed64-"),
        "{}",
        names[0]
    );
}

// ---- end to end, through the CLI ----

#[test]
fn a_sweep_of_four_trials_is_read_by_tensorboard_and_compared() {
    let s = Sweep::new("four", "lr = [1e-3, 1e-2]\nlayers = [1, 2]", "");
    let o = s.run(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let root = s.root("four");
    assert!(root.join("sweep.toml").exists() && root.join("manifest.json").exists());
    let dirs = run_dirs(&root);
    assert_eq!(dirs.len(), 4);
    for d in &dirs {
        assert_eq!(record(d)["status"], "completed", "{}", d.display());
        let tb = common::tb_read(d);
        assert_eq!(
            common::tb_steps(&tb, "train/loss"),
            (1..=40).collect::<Vec<_>>()
        );
        assert_eq!(common::tb_steps(&tb, "val/loss"), vec![10, 20, 30, 40]);
        let hp = &tb["hparams"];
        assert_eq!(hp["end"]["status"], "STATUS_SUCCESS");
        let lr = hp["start"]["hparams"]["lr"].as_f64().unwrap();
        assert!(lr == 1e-3 || lr == 1e-2);
        assert!(!hp["start"]["group_name"].as_str().unwrap().is_empty());
        assert!(
            hp.get("experiment").is_none(),
            "runs of a sweep leave the experiment to the root"
        );
    }
    let root_tb = common::tb_read(&root);
    let declared: Vec<&str> = root_tb["hparams"]["experiment"]["hparams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(&declared[..2], ["lr", "layers"]);
    let metrics = root_tb["hparams"]["experiment"]["metrics"]
        .as_array()
        .unwrap();
    assert!(metrics.iter().any(|m| m == "val/loss"));

    // compare: one row per trial, sorted by best val loss.
    let c = s.cmd(&["compare", root.to_str().unwrap(), "--format", "json"]);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let j: serde_json::Value = serde_json::from_slice(&c.stdout).unwrap();
    let runs = j["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    let losses: Vec<f64> = runs
        .iter()
        .map(|r| r["best_val_loss"].as_f64().unwrap())
        .collect();
    assert!(losses.windows(2).all(|w| w[0] <= w[1]), "{losses:?}");
    for r in runs {
        let dir = root.join(r["run"].as_str().unwrap());
        assert_eq!(
            record(&dir)["best_metrics"]["val_loss"].as_f64().unwrap(),
            r["best_val_loss"].as_f64().unwrap()
        );
    }
    let table = s.cmd(&["compare", root.to_str().unwrap(), "--top", "2"]);
    let text = String::from_utf8(table.stdout).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.lines().next().unwrap().contains("lr") && text.contains("completed"));
    let md = s.cmd(&[
        "compare",
        root.to_str().unwrap(),
        "--format",
        "markdown",
        "--sort",
        "lr",
    ]);
    assert!(String::from_utf8(md.stdout)
        .unwrap()
        .starts_with("| run | lr | layers |"));

    // Running it again does nothing: every trial is done.
    let again = s.run(&[]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("0 to run"));
}

#[test]
fn a_sweep_killed_mid_way_finishes_on_rerun_with_each_step_once() {
    let s = Sweep::new(
        "killed",
        "lr = [1e-3, 3e-3, 1e-2]\nseed = [1, 2]",
        "max_steps = 300\neval_every = 50\nhidden = 64",
    );
    let root = s.root("killed");
    let mut child = s.spawn(&[]);
    // Kill the parent once some trial has checkpointed past its first evaluation.
    common::wait_until(60, "a trial past its first evaluation", || {
        root.join("manifest.json").exists()
            && run_dirs(&root)
                .iter()
                .any(|d| record(d)["steps"].as_u64().unwrap_or(0) >= 60)
    });
    child.kill().unwrap(); // SIGKILL: no cleanup in the parent
    child.wait().unwrap();
    // Orphaned workers finish or die on their own; the lock's owner is dead, so a rerun takes over.
    let o = s.run(&["--retries", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for d in run_dirs(&root) {
        assert_eq!(record(&d)["status"], "completed", "{}", d.display());
        let tb = common::tb_read(&d);
        assert_eq!(
            common::tb_steps(&tb, "train/loss"),
            (1..=300).collect::<Vec<_>>(),
            "{}",
            d.display()
        );
        assert_eq!(
            common::tb_steps(&tb, "val/loss"),
            vec![50, 100, 150, 200, 250, 300]
        );
    }
    // compare agrees with the run directories.
    let c = s.cmd(&["compare", root.to_str().unwrap(), "--format", "csv"]);
    let csv = String::from_utf8(c.stdout).unwrap();
    assert_eq!(csv.lines().count(), 1 + 6, "{csv}");
    assert_eq!(
        csv.lines()
            .filter(|l| l.contains(",completed,300/300,"))
            .count(),
        6,
        "{csv}"
    );
    assert!(csv.starts_with("run,lr,seed,status,"), "{csv}");
}

#[test]
fn a_second_sweep_on_the_same_experiment_is_refused() {
    let s = Sweep::new(
        "locked",
        "lr = [1e-3, 2e-3]",
        "max_steps = 30000\nhidden = 64",
    );
    let root = s.root("locked");
    let mut first = s.spawn(&[]);
    common::wait_until(30, "the first sweep's lock", || root.join(".lock").exists());
    // Every command that finds another at work where it would write is refused at once, exit
    // 2, in one shape: a second sweep, an --extend, a trainer on a run the sweep is training.
    let pid = format!("(pid {})", first.id());
    let root_s = "runs/locked: another";
    for extra in [&[][..], &["--extend"][..]] {
        let o = s.run(extra);
        let needles = [
            root_s,
            "another charlab sweep",
            &pid,
            "wait for it to end or stop it first",
        ];
        common::assert_user_error(&o, &format!("sweep {extra:?}"), &needles);
    }
    let mut busy = None;
    common::wait_until(60, "a trial in training", || {
        // The lock is taken before the manifest is written.
        if !root.join("manifest.json").exists() {
            return false;
        }
        busy = run_dirs(&root)
            .into_iter()
            .find(|d| record(d)["status"] == "running" && d.join("config.toml").exists());
        busy.is_some()
    });
    let run = busy.unwrap();
    let (cfg, out) = (run.join("config.toml"), run.to_str().unwrap().to_string());
    let started = std::time::Instant::now();
    let o = s.cmd(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        &out,
        "--resume",
    ]);
    let needles = [
        &out[..],
        "another charlab process training this run (pid ",
        "wait for it to end",
    ];
    common::assert_user_error(&o, "train --resume on a run in training", &needles);
    assert!(
        started.elapsed().as_secs() < 30,
        "refused at once, not after a wait"
    );
    // SIGINT: the sweep asks its workers to checkpoint, and exits 130 with them interrupted.
    common::kill("-INT", first.id());
    let status = common::wait_exit(&mut first, 120, "the interrupted sweep");
    assert_eq!(status.code(), Some(130));
    for d in run_dirs(&root) {
        if d.join("run.json").exists() {
            let st = record(&d)["status"].clone();
            assert!(st == "interrupted" || st == "completed", "{st}");
        }
    }
    assert!(!root.join(".lock").exists(), "the lock is released");
}

#[test]
fn sweeps_started_together_run_once() {
    // The lock must be whole the moment it exists: a second sweep that read it half-written took
    // it over and ran the same trials beside the first.
    let s = Sweep::new("together", "lr = [1e-3]", "max_steps = 30000\nhidden = 64");
    let mut children: Vec<_> = (0..6).map(|_| s.spawn(&[])).collect();
    let mut refused = 0;
    common::wait_until(60, "all but one sweep refused", || {
        children.retain_mut(|c| match c.try_wait().expect("wait for charlab") {
            Some(st) => {
                assert_eq!(st.code(), Some(2), "a sweep started together exits refused");
                refused += 1;
                false
            }
            None => true,
        });
        refused == 5
    });
    assert_eq!(children.len(), 1, "one sweep runs");
    let mut first = children.pop().unwrap();
    common::kill("-INT", first.id());
    let status = common::wait_exit(&mut first, 120, "the interrupted sweep");
    assert_eq!(status.code(), Some(130));
}

#[test]
fn a_killed_worker_is_retried_from_its_checkpoint() {
    // Long enough that the worker is still training when the test kills it.
    let s = Sweep::new(
        "retry",
        "lr = [2e-3]",
        "max_steps = 1500\neval_every = 20\nhidden = 64",
    );
    let root = s.root("retry");
    let mut parent = s.spawn(&["--retries", "2"]);
    common::wait_until(60, "the trial to get going", || {
        root.join("manifest.json").exists()
            && record(&run_dirs(&root)[0])["steps"].as_u64().unwrap_or(0) >= 40
    });
    let dir = run_dirs(&root).remove(0);
    let pid = record(&dir)["pid"].as_u64().unwrap();
    common::kill("-KILL", pid as u32);
    assert!(parent.wait().unwrap().success());
    assert_eq!(record(&dir)["status"], "completed");
    let tb = common::tb_read(&dir);
    assert_eq!(
        common::tb_steps(&tb, "train/loss"),
        (1..=1500).collect::<Vec<_>>()
    );
    let log = std::fs::read_to_string(dir.join("worker.log")).unwrap();
    assert!(log.contains("resuming"), "{log}");
}

#[test]
fn a_changed_sweep_file_is_refused_unless_extended() {
    let s = Sweep::new("grow", "lr = [1e-3, 2e-3]", "max_steps = 10");
    assert!(s.run(&[]).status.success());
    let text = std::fs::read_to_string(&s.file).unwrap();
    std::fs::write(
        &s.file,
        text.replace("lr = [1e-3, 2e-3]", "lr = [1e-3, 2e-3, 3e-3]"),
    )
    .unwrap();
    let refused = s.run(&[]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--extend"));
    let extended = s.run(&["--extend"]);
    assert!(
        extended.status.success(),
        "{}",
        String::from_utf8_lossy(&extended.stderr)
    );
    let dirs = run_dirs(&s.root("grow"));
    assert_eq!(dirs.len(), 3);
    assert!(dirs[2]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("002-lr0.003"));
    std::fs::write(&s.file, text.replace("lr = [1e-3, 2e-3]", "lr = [1e-3]")).unwrap();
    let shrunk = s.run(&["--extend"]);
    assert_eq!(shrunk.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&shrunk.stderr).contains("no longer in it"));
}

#[test]
fn the_median_rule_prunes_a_trial_worse_than_its_siblings() {
    let s = Sweep::new("prune", "lr = [1e-2, 9e-3, 8e-3, 1e-5]", "max_steps = 60");
    let text = std::fs::read_to_string(&s.file).unwrap().replace(
        "jobs = 2",
        "jobs = 1\npruning = { rule = \"median\", warmup_evals = 1, min_trials = 3, \
         min_progress = 0 }",
    );
    std::fs::write(&s.file, text).unwrap();
    let o = s.run(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dirs = run_dirs(&s.root("prune"));
    for d in &dirs[..3] {
        assert_eq!(record(d)["status"], "completed");
    }
    let slow = record(&dirs[3]);
    assert_eq!(slow["status"], "pruned", "{slow}");
    assert_eq!(
        slow["steps"], 20,
        "pruned at the first evaluation after the warm-up"
    );
    let c = s.cmd(&["compare", s.root("prune").to_str().unwrap()]);
    assert!(String::from_utf8(c.stdout).unwrap().contains("pruned"));
}

#[test]
fn a_trial_over_its_timeout_fails_and_the_sweep_goes_on() {
    let s = Sweep::new(
        "timeout",
        "hidden = [256, 16]",
        "max_steps = 100000\neval_every = 1000",
    );
    let text = std::fs::read_to_string(&s.file)
        .unwrap()
        .replace("jobs = 2", "jobs = 1\ntimeout = \"2s\"");
    std::fs::write(&s.file, text).unwrap();
    let o = s.run(&[]);
    assert_eq!(o.status.code(), Some(1));
    let dirs = run_dirs(&s.root("timeout"));
    for d in &dirs {
        let r = record(d);
        assert_eq!(r["status"], "failed");
        assert!(
            r["message"]
                .as_str()
                .unwrap()
                .contains("timed out after 2s"),
            "{r}"
        );
    }
}

#[test]
fn sweep_worker_rejects_an_index_out_of_range() {
    let s = Sweep::new("worker", "lr = [1e-3]", "max_steps = 5");
    assert!(s.run(&[]).status.success());
    let o = s.cmd(&[
        "sweep-worker",
        "--sweep",
        s.root("worker").to_str().unwrap(),
        "--index",
        "7",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--index"));
    let dry = s.cmd(&["sweep", s.file.to_str().unwrap(), "--dry-run"]);
    assert!(String::from_utf8_lossy(&dry.stdout).contains("1 trials"));
}

#[test]
fn fail_fast_stops_at_the_first_failed_trial() {
    // A worker that fails (not on bad input, which pre-flight or the same-error rule handle).
    let s = Sweep::new("fails", "lr = [1e-3, 2e-3, 3e-3]", "");
    let (outcome, started) = s.with_stand_in_worker(1, "worker crashed", 0, true);
    assert_eq!(started, 1, "--fail-fast stops after the first failure");
    assert_eq!(outcome.unfinished(), 3);
    // Without it every trial is tried (and fails the same way).
    let (outcome, started) = s.with_stand_in_worker(1, "worker crashed", 0, false);
    assert_eq!((started, outcome.unfinished()), (3, 3));
}

#[test]
fn the_early_cut_stops_a_trial_that_has_not_started_learning_at_a_tenth_of_its_steps() {
    // One at a time: the hopeless second trial meets one sibling at the early point (step 6 of
    // 60), and one is enough, though the median rule waits for three.
    let lrs = "lr = [1e-2, 1e-5, 9e-3, 8e-3]";
    let s = Sweep::new("early", lrs, "max_steps = 60");
    s.experiment("jobs = 1\npruning = { rule = \"median\", min_trials = 3 }");
    let o = s.run(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dirs = run_dirs(&s.root("early"));
    for i in [0, 2, 3] {
        let r = record(&dirs[i]);
        assert_eq!(r["status"], "completed", "{r}");
        assert_eq!(r["early"]["step"], 6, "{r}");
    }
    let slow = record(&dirs[1]);
    assert_eq!(slow["status"], "pruned", "{slow}");
    assert_eq!(slow["steps"], 6, "{slow}");
    assert_eq!(
        slow["evals"],
        serde_json::json!([]),
        "before any evaluation"
    );
    assert!(
        slow["message"].as_str().unwrap().contains("early cut"),
        "{slow}"
    );
    // Its training loss there is the trainer's mean of the steps before it, not a made-up
    // figure: between the good trials' and ln V.
    let early = |r: &serde_json::Value| r["early"]["train_loss"].as_f64().unwrap();
    let ln_v = slow["ln_vocab"].as_f64().unwrap();
    assert!(early(&slow) < ln_v + 0.1 && early(&slow) > early(&record(&dirs[0])));
    // Turned off, the same trial trains to its end: at each evaluation it had one sibling
    // beside it, and the median rule waits for three.
    let off = Sweep::new("late", lrs, "max_steps = 60");
    off.experiment("jobs = 1\npruning = { rule = \"median\", min_trials = 3, min_progress = 0 }");
    assert!(off.run(&[]).status.success());
    let late = record(&run_dirs(&off.root("late"))[1]);
    assert_eq!(
        (late["status"].as_str(), late["steps"].as_u64()),
        (Some("completed"), Some(60))
    );
}

#[test]
fn halving_decides_from_one_sibling_by_default_and_median_waits_for_three() {
    // One at a time, the early cut off: the hopeless second trial meets one sibling at every
    // evaluation. Halving keeps only the best so far at a rung with fewer than eta there (as
    // Optuna's pruner does), so it stops it at its first rung (step 10); the median of one
    // sibling is noise, so median lets it run.
    let said = [
        "pruning: halving, eta 3, first rung at evaluation 1, once 1 sibling has reached the \
         step; no early cut",
        "pruning: median, after evaluation 1, once 3 siblings have reached the step; no early cut",
    ];
    for ((rule, want), said) in [("halving", ("pruned", 10)), ("median", ("completed", 90))]
        .into_iter()
        .zip(said)
    {
        let s = Sweep::new(rule, "lr = [1e-2, 1e-5]", "max_steps = 90");
        s.experiment(&format!(
            "jobs = 1\npruning = {{ rule = {rule:?}, min_progress = 0 }}"
        ));
        // `--dry-run` says the defaults the file left out.
        let dry = s.cmd(&["sweep", s.file.to_str().unwrap(), "--dry-run"]);
        assert!(
            String::from_utf8_lossy(&dry.stdout).contains(said),
            "{dry:?}"
        );
        let o = s.run(&[]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let dirs = run_dirs(&s.root(rule));
        assert_eq!(record(&dirs[0])["status"], "completed", "{rule}");
        let r = record(&dirs[1]);
        assert_eq!(
            (r["status"].as_str(), r["steps"].as_u64()),
            (Some(want.0), Some(want.1)),
            "{rule}: {r}"
        );
    }
}

/// A sweep of one trial at a time over `lrs`, `max_steps` each, under pruning `rule` (eta 3,
/// warm-up 1, `min_trials`, the early cut off: the rules alone), run to its end: each trial's
/// status and steps, in trial order.
fn pruned_sweep(rule: &str, min_trials: usize, lrs: &str, max_steps: u64) -> Vec<(String, u64)> {
    let s = Sweep::new(rule, lrs, &format!("max_steps = {max_steps}"));
    s.experiment(&format!(
        "jobs = 1\npruning = {{ rule = {rule:?}, eta = 3, warmup_evals = 1, min_trials = \
         {min_trials}, min_progress = 0 }}"
    ));
    let o = s.run(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (run_dirs(&s.root(rule)).iter())
        .map(|d| {
            let r = record(d);
            (
                r["status"].as_str().unwrap().to_string(),
                r["steps"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Status and steps, as [`pruned_sweep`] gives them.
fn ended(said: &[(&str, u64)]) -> Vec<(String, u64)> {
    said.iter().map(|&(s, n)| (s.to_string(), n)).collect()
}

#[test]
fn successive_halving_keeps_the_best_third_at_each_rung() {
    // The last two are pruned at the first rung.
    assert_eq!(
        pruned_sweep("halving", 3, "lr = [1e-2, 9e-3, 8e-3, 1e-5, 2e-5]", 90),
        ended(&[
            ("completed", 90),
            ("completed", 90),
            ("completed", 90),
            ("pruned", 10),
            ("pruned", 10)
        ])
    );
}

#[test]
fn hyperband_runs_its_last_brackets_trials_to_the_end_and_halves_the_first() {
    // 30 steps evaluated every 10: two brackets, dealt 0, 1, 0, 1, 0. Bracket 1's trials (the
    // second and fourth) never meet a rung before the end: their poor lrs run to the end.
    // Bracket 0's last trial meets the two before it in its bracket at step 10 and is pruned.
    let lrs = "lr = [1e-2, 1e-5, 9e-3, 2e-5, 1.5e-5]";
    assert_eq!(
        pruned_sweep("hyperband", 2, lrs, 30),
        ended(&[
            ("completed", 30),
            ("completed", 30),
            ("completed", 30),
            ("completed", 30),
            ("pruned", 10)
        ])
    );
    // Halving prunes the fourth there: two better trials among its three siblings.
    assert_eq!(
        pruned_sweep("halving", 2, lrs, 30)[3],
        ("pruned".to_string(), 10)
    );
}

/// The worker processes of a sweep (children of its pid).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Crash soak: SIGKILL the sweep, or one of its workers and then the sweep, at random moments,
/// rerun the same command, `CHARLAB_SOAK_ROUNDS` times (scripts/soak.sh runs more); then every
/// trial has finished, each step's scalar appears exactly once for TensorBoard, and `compare`
/// agrees with the run directories.
#[test]
fn crash_soak_random_sigkills_lose_nothing_and_duplicate_nothing() {
    let rounds: u64 = std::env::var("CHARLAB_SOAK_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("CHARLAB_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let steps = 200 + 500 * rounds;
    let s = Sweep::new(
        "soak",
        "lr = [1e-3, 3e-3]\nseed = [1, 2]",
        &format!("max_steps = {steps}\neval_every = 20\nhistogram_every = 20\nhidden = 48"),
    );
    let root = s.root("soak");
    let mut rng = charlab::rng::Rng::new(seed, 99);
    let (mut parent_kills, mut worker_kills) = (0, 0);
    for round in 0..rounds {
        let mut child = s.spawn(&["--retries", "5"]);
        let until = Instant::now() + Duration::from_millis(200 + rng.next_u64() % 1000);
        while Instant::now() < until && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
        if child.try_wait().unwrap().is_some() {
            break; // finished before the kill
        }
        if round % 2 == 1 {
            let workers = children(child.id());
            if !workers.is_empty() {
                let w = workers[(rng.next_u64() % workers.len() as u64) as usize];
                let _ = Command::new("kill")
                    .args(["-KILL", &w.to_string()])
                    .status();
                worker_kills += 1;
                std::thread::sleep(Duration::from_millis(100 + rng.next_u64() % 700));
            }
        }
        let _ = child.kill(); // SIGKILL the sweep itself
        child.wait().unwrap();
        parent_kills += 1;
    }
    println!("soak: {rounds} rounds, {parent_kills} sweep kills, {worker_kills} worker kills");
    let o = s.run(&["--retries", "5"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dirs = run_dirs(&root);
    assert_eq!(dirs.len(), 4);
    let evals: Vec<u64> = (1..=steps / 20).map(|k| 20 * k).collect();
    for d in &dirs {
        assert_eq!(record(d)["status"], "completed", "{}", d.display());
        assert_eq!(record(d)["steps"], steps, "{}", d.display());
        let tb = common::tb_read(d);
        assert_eq!(
            common::tb_steps(&tb, "train/loss"),
            (1..=steps).collect::<Vec<_>>(),
            "{}",
            d.display()
        );
        assert_eq!(common::tb_steps(&tb, "val/loss"), evals, "{}", d.display());
        // No half-written files left behind.
        for e in walkdir::WalkDir::new(d).into_iter().filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy();
            assert!(!name.contains(".tmp."), "leftover {}", e.path().display());
        }
    }
    let c = s.cmd(&["compare", root.to_str().unwrap(), "--format", "csv"]);
    let csv = String::from_utf8(c.stdout).unwrap();
    let done = format!(",completed,{steps}/{steps},");
    assert_eq!(
        csv.lines().filter(|l| l.contains(&done)).count(),
        4,
        "{csv}"
    );
}

#[test]
fn compare_importance_ranks_the_key_that_drives_the_metric_first_and_declines_with_too_few() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let corpus = common::write_corpus(d);
    // lr over three decades drives the loss; lr_decay does nothing without a schedule.
    let file = |name: &str, trials: usize| {
        format!(
            "[experiment]\nname = {name:?}\ncorpus = {:?}\njobs = 2\nseed = 3\n[defaults]\n\
             batch_size = 4\nseq_len = 16\nembed_dim = 16\nhidden = 32\nmax_steps = 60\n\
             eval_every = 20\nlog_every = 5\nhistogram_every = 0\nsample_length = 10\n\
             val_fraction = 0.1\ndevice = \"cpu\"\n[random]\ntrials = {trials}\n\
             lr = {{ log_uniform = [1e-5, 1e-2] }}\nlr_decay = {{ uniform = [0.5, 0.99] }}\n",
            corpus.to_str().unwrap()
        )
    };
    std::fs::write(d.join("imp.toml"), file("imp", 10)).unwrap();
    let o = common::charlab(d, &["sweep", "imp.toml", "--plain"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = common::charlab(
        d,
        &["compare", "runs/imp", "--importance", "--format", "json"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let imp = &v["importance"];
    assert_eq!(imp["result"], "ranked", "{v}");
    assert_eq!(imp["observations"], 10);
    let keys = imp["keys"].as_array().unwrap();
    assert_eq!(keys[0]["key"], "lr", "{v}");
    assert!(keys[0]["importance"].as_f64().unwrap() > 0.5, "{v}");
    assert!(
        keys[0]["spearman"].as_f64().unwrap() < 0.0,
        "a larger lr gives a lower loss here: {v}"
    );
    for format in ["table", "markdown", "csv"] {
        let o = common::charlab(
            d,
            &["compare", "runs/imp", "--importance", "--format", format],
        );
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains("lr") && text.contains("lr_decay"),
            "{format}: {text}"
        );
    }

    std::fs::write(d.join("few.toml"), file("few", 3)).unwrap();
    assert!(common::charlab(d, &["sweep", "few.toml", "--plain"])
        .status
        .success());
    let o = common::charlab(d, &["compare", "runs/few", "--importance"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(text.contains("too few finished trials"), "{text}");
}

#[test]
fn every_shipped_experiment_file_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let mut seen = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        if text.contains("[experiment]") {
            let plan = charlab::sweep::plan::load(&path, usize::MAX, true);
            assert!(plan.is_ok(), "{}: {:?}", path.display(), plan.err());
        } else {
            let cfg = charlab::config::RunConfig::load(&path);
            assert!(cfg.is_ok(), "{}: {:?}", path.display(), cfg.err());
        }
        seen += 1;
    }
    assert!(seen >= 5, "the experiments folder holds the shipped files");
}

#[test]
fn a_stop_target_ends_the_sweep_early_and_a_looser_rule_resumes_it() {
    // The first trial long enough to be under way when the rule is looked at.
    let s = Sweep::new(
        "stop",
        "max_steps = [8000, 100, 100]",
        "eval_every = 10\nlog_every = 10",
    );
    // Any val loss reaches 100: the first evaluation stops the sweep.
    let strict = s.experiment("jobs = 1\nstop = { target = 100.0 }");
    let root = s.root("stop");
    let o = s.run(&[]);
    let said = common::said(&o);
    assert!(
        o.status.success(),
        "stopped by its rule is a success: {said}"
    );
    assert!(
        said.contains("stopping the sweep: target reached"),
        "{said}"
    );
    let manifest = common::manifest_json(&root);
    assert!(manifest["stopped"]
        .as_str()
        .is_some_and(|w| w.contains("target reached")));
    let dirs = run_dirs(&root);
    let first = record(&dirs[0]);
    assert_eq!(first["status"], "interrupted", "checkpointed, resumable");
    let at = first["steps"].as_u64().unwrap();
    assert!(at < 8000, "stopped early, at {at}");
    assert!(
        dirs[1..].iter().all(|d| !d.join("run.json").exists()),
        "nothing else started"
    );
    // TensorBoard's reader shows why at the sweep's root.
    let tb = common::tb_read(&root);
    let why = tb["text"]["sweep/stopped"][0][1].as_str().unwrap_or("");
    assert!(why.contains("target reached"), "{tb}");
    let cmp = s.cmd(&["compare", root.to_str().unwrap()]);
    let cmp = String::from_utf8_lossy(&cmp.stdout);
    assert!(
        cmp.contains("the sweep stopped early: target reached"),
        "{cmp}"
    );

    // The same rule again: stopped at once, nothing trained.
    let o = s.run(&[]);
    assert!(o.status.success());
    assert_eq!(record(&dirs[0])["steps"].as_u64(), Some(at));

    // A looser rule: the stopped trial resumes and the sweep ends.
    std::fs::write(
        &s.file,
        strict.replace("target = 100.0", "patience_trials = 5"),
    )
    .unwrap();
    let o = s.run(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for d in &dirs {
        assert_eq!(record(d)["status"], "completed");
    }
    let tb = common::tb_read(&dirs[0]);
    assert_eq!(
        common::tb_steps(&tb, "val/loss"),
        (1..=800).map(|k| 10 * k).collect::<Vec<_>>(),
        "each evaluation once across the stop"
    );
    let manifest = common::manifest_json(&root);
    assert!(manifest.get("stopped").is_none());
}

#[test]
fn a_time_budget_stops_the_sweep_and_a_rerun_gets_it_anew() {
    let s = Sweep::new(
        "budget",
        "max_steps = [1000000, 100]",
        "eval_every = 50\nlog_every = 10",
    );
    s.experiment("jobs = 1\nstop = { minutes = 0.05 }");
    let root = s.root("budget");
    let o = s.run(&[]);
    let said = common::said(&o);
    assert!(o.status.success(), "a spent budget is a success: {said}");
    assert!(
        said.contains("stopping the sweep: the 0.05-minute budget is spent"),
        "{said}"
    );
    let manifest = common::manifest_json(&root);
    assert!(manifest["stopped"]
        .as_str()
        .is_some_and(|w| w.contains("budget is spent")));
    let dirs = run_dirs(&root);
    let first = record(&dirs[0]);
    assert_eq!(first["status"], "interrupted", "checkpointed, resumable");
    let at = first["steps"].as_u64().unwrap();
    assert!(!dirs[1].join("run.json").exists(), "nothing else started");
    // Run again: the budget counts this invocation, so the trial trains on from its checkpoint.
    let o = s.run(&[]);
    assert!(o.status.success(), "{}", common::said(&o));
    let again = record(&dirs[0]);
    assert_eq!(again["status"], "interrupted");
    let later = again["steps"].as_u64().unwrap();
    assert!(later > at, "resumed and trained on: {at} then {later}");
}

#[test]
fn constraints_make_a_trial_infeasible_before_it_starts_or_when_crossed() {
    let s = Sweep::new(
        "limits",
        "hidden = [16, 128]\n[[trial]]\nhidden = 16\nmax_steps = 1000000",
        "max_steps = 40",
    );
    s.experiment("jobs = 2\nconstraints = { max_params = 50_000, max_trial_seconds = 2 }");
    let o = s.run(&[]);
    let said = common::said(&o);
    assert!(
        o.status.success(),
        "infeasible is an answer, not a failure: {said}"
    );
    let dirs = run_dirs(&s.root("limits"));
    let rec: Vec<_> = dirs.iter().map(|d| record(d)).collect();
    assert_eq!(rec[0]["status"], "completed", "{said}");
    // Too big: said before it starts, refused before its first step.
    assert!(
        said.contains("over max_params = 50000: infeasible"),
        "{said}"
    );
    assert_eq!(rec[1]["status"], "infeasible");
    assert_eq!(rec[1]["steps"], 0);
    assert!(rec[1]["message"].as_str().unwrap().contains("max_params"));
    // Too slow: stopped where it crossed the limit, its evaluations kept.
    assert_eq!(rec[2]["status"], "infeasible");
    let msg = rec[2]["message"].as_str().unwrap();
    assert!(msg.contains("past max_trial_seconds = 2"), "{msg}");
    assert!(rec[2]["steps"].as_u64().unwrap() > 10);
    assert!(
        said.contains("1 completed, 0 pruned, 0 diverged, 2 infeasible"),
        "{said}"
    );
    let tb = common::tb_read(&dirs[1]);
    assert_eq!(tb["hparams"]["end"]["status"], "STATUS_FAILURE", "{tb}");
    let cmp = s.cmd(&["compare", s.root("limits").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&cmp.stdout).contains("infeasible"));
    // A rerun trains nothing again.
    let o = s.run(&[]);
    assert!(o.status.success());
    assert_eq!(record(&dirs[2])["steps"], rec[2]["steps"]);
}

//! Nothing finished is lost (issue 19): runs whose numbers are not finite, damaged or deleted
//! files of a finished sweep. Each test drives the CLI as a user would and reads what is left.

mod common;

use common::{record, run_dirs, Sweep};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn event_files(run: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut v: Vec<_> = std::fs::read_dir(run)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("events.out"))
        .map(|e| (e.path(), e.metadata().unwrap().len()))
        .collect();
    v.sort();
    v
}

#[test]
fn a_diverged_trial_keeps_a_readable_record_and_is_not_trained_again() {
    // The run blows up at its first evaluation, before any train loss was logged: its best
    // metrics hold a NaN train loss and its val loss is absurd.
    let s = Sweep::new(
        "nonfinite",
        "lr = [6.5, 1.0, 1e-3]",
        "grad_clip = 0\neval_every = 1\nlog_every = 10\nmax_steps = 20",
    );
    let o = s.run(&[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let root = s.root("nonfinite");
    let runs = run_dirs(&root);
    for run in &runs[..2] {
        let r = record(run);
        assert_eq!(r["status"], "diverged", "{r}");
        assert_eq!(r["best_metrics"]["train_loss"], "NaN", "{r}");
        assert!(
            r["message"].as_str().unwrap().contains("twice ln(vocab)"),
            "lr = 1 evaluates far above a uniform guess and is called diverged: {r}"
        );
    }
    assert_eq!(record(&runs[2])["status"], "completed");

    let o = s.cmd(&["compare", root.to_str().unwrap(), "--format", "csv"]);
    assert!(o.status.success());
    assert!(!text(&o.stderr).contains("warning"), "{}", text(&o.stderr));
    let csv = text(&o.stdout);
    assert_eq!(csv.lines().count(), 4, "header and three trials: {csv}");
    assert_eq!(csv.matches(",diverged,").count(), 2, "{csv}");

    let before: Vec<_> = runs.iter().map(|r| event_files(r)).collect();
    let o = s.run(&[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("0 to run"), "{}", text(&o.stderr));
    let after: Vec<_> = runs.iter().map(|r| event_files(r)).collect();
    assert_eq!(before, after, "a finished trial was trained again");
}

#[test]
fn the_blow_up_rule_compares_with_a_uniform_guess() {
    use charlab::train::blown_up;
    let ln_v = 84f64.ln();
    assert!(!blown_up(ln_v, ln_v, 2.0) && !blown_up(1.9 * ln_v, ln_v, 2.0));
    assert!(blown_up(2.1 * ln_v, ln_v, 2.0));
    assert!(blown_up(f64::NAN, ln_v, 10.0) && blown_up(f64::INFINITY, ln_v, 10.0));
    // A one- or two-char vocabulary: ln V < 1, the rule still leaves room to learn.
    assert!(!blown_up(1.5, 2f64.ln(), 2.0));
}

/// A finished two-trial grid sweep of 40 steps, evaluated every 10.
fn finished_sweep(name: &str) -> Sweep {
    let s = Sweep::new(name, "lr = [1e-3, 1e-2]", "");
    let o = s.run(&[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    s
}

#[test]
fn a_finished_trials_damaged_or_deleted_record_is_rebuilt_from_its_events_not_retrained() {
    for damage in ["truncated", "deleted"] {
        let s = finished_sweep("rec");
        let root = s.root("rec");
        let run = run_dirs(&root).remove(0);
        let before = record(&run);
        let record_path = run.join("run.json");
        match damage {
            "truncated" => {
                let bytes = std::fs::read(&record_path).unwrap();
                std::fs::write(&record_path, &bytes[..bytes.len() / 2]).unwrap();
            }
            _ => std::fs::remove_file(&record_path).unwrap(),
        }
        let o = s.run(&[]);
        let err = text(&o.stderr);
        assert!(o.status.success(), "{damage}: {err}");
        let named = err
            .lines()
            .filter(|l| {
                l.contains("run.json") && l.contains(run.file_name().unwrap().to_str().unwrap())
            })
            .count();
        assert_eq!(named, 1, "{damage}: one line names the record: {err}");
        let after = record(&run);
        assert_eq!(after["status"], "completed", "{damage}: {after}");
        let (b, a) = (&before["best_metrics"], &after["best_metrics"]);
        assert_eq!(a["step"], b["step"], "{damage}");
        for key in ["val_loss", "val_accuracy", "val_bpc"] {
            let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-6 * y.abs(),
                "{damage}: {key} {x} vs {y}"
            );
        }
        let steps = |r: &serde_json::Value| -> Vec<u64> {
            r["evals"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["step"].as_u64().unwrap())
                .collect()
        };
        assert_eq!(steps(&after), steps(&before), "{damage}");
        assert_eq!(damage == "truncated", run.join("run.json.damaged").exists());
        // Nothing was trained again, and TensorBoard shows each step once.
        let tb = common::tb_read(&run);
        assert_eq!(
            common::tb_steps(&tb, "val/loss"),
            vec![10, 20, 30, 40],
            "{damage}"
        );
        assert_eq!(
            common::tb_steps(&tb, "train/loss"),
            (1..=40).collect::<Vec<_>>()
        );
    }
}

#[test]
fn a_lost_manifest_is_named_and_rebuilt_from_a_grid_file_but_refused_for_a_search() {
    for damage in ["deleted", "garbage"] {
        let s = finished_sweep("man");
        let root = s.root("man");
        let runs = run_dirs(&root);
        let events: Vec<_> = runs.iter().map(|r| event_files(r)).collect();
        let path = root.join("manifest.json");
        match damage {
            "deleted" => std::fs::remove_file(&path).unwrap(),
            _ => std::fs::write(&path, "{\"trials\": 3}").unwrap(),
        }
        let o = s.run(&[]);
        let err = text(&o.stderr);
        assert!(o.status.success(), "{damage}: {err}");
        assert!(
            err.lines()
                .any(|l| l.contains("manifest.json") && l.contains("rebuilt")),
            "{damage}: {err}"
        );
        assert!(err.contains("0 to run"), "{damage}: {err}");
        assert_eq!(
            run_dirs(&root),
            runs,
            "{damage}: the same trials, the same directories"
        );
        let now: Vec<_> = runs.iter().map(|r| event_files(r)).collect();
        assert_eq!(now, events, "{damage}: a finished trial was trained again");
    }

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = common::tpe_file(d, "tpe", 3, "");
    let o = common::charlab(d, &["sweep", &file, "--plain"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let root = d.join("runs/tpe");
    std::fs::remove_file(root.join("manifest.json")).unwrap();
    let o = common::charlab(d, &["sweep", &file, "--plain"]);
    let err = text(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("manifest.json") && err.contains("TPE") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn a_sweep_refused_before_it_starts_leaves_nothing_behind() {
    for (what, defaults) in [
        ("a model too large", "hidden = 100000"),
        ("a missing corpus", "corpus = \"nowhere.txt\""),
    ] {
        let s = Sweep::new("refused", "lr = [1e-3]", defaults);
        let o = s.run(&[]);
        assert!(!o.status.success(), "{what}");
        assert!(
            !s.root("refused").exists(),
            "{what}: left {:?}",
            s.root("refused")
        );
    }
}

#[test]
fn every_random_domain_is_checked_whole_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = common::tpe_file(d, "dom", 4, "");
    let good = std::fs::read_to_string(d.join(&file)).unwrap();
    let cases = [
        ("lr = { uniform = [-0.01, 0.01] }", "lr"),
        ("dropout = { uniform = [0.5, 1.5] }", "dropout"),
        ("optimizer = { choice = [\"adam\", \"bogus\"] }", "bogus"),
        ("layers = { int_uniform = [1.5, 3.2] }", "whole numbers"),
    ];
    for (domain, needle) in cases {
        let text = good.replace("[random]\n", &format!("[random]\n{domain}\n"));
        let text = if domain.starts_with("lr") || domain.starts_with("dropout") {
            // Replace the file's own domain of the same key.
            let key = domain.split(' ').next().unwrap();
            let own = text
                .lines()
                .filter(|l| l.starts_with(key) && *l != domain)
                .map(|l| format!("{l}\n"))
                .collect::<String>();
            text.replace(&own, "")
        } else {
            text
        };
        std::fs::write(d.join(&file), text).unwrap();
        let o = common::charlab(d, &["sweep", &file, "--plain"]);
        common::assert_user_error(&o, domain, &[&file, needle]);
        assert!(!d.join("runs/dom").exists(), "{domain}: left runs/dom");
    }
    // A startup longer than the search.
    let text = good.replace("startup_trials = 3", "startup_trials = 9");
    std::fs::write(d.join(&file), text).unwrap();
    let o = common::charlab(d, &["sweep", &file, "--plain"]);
    common::assert_user_error(&o, "startup_trials", &["startup_trials", "trials = 4"]);

    // A corpus that is not UTF-8: one line before any trial is proposed.
    std::fs::write(d.join("novel.txt"), b"abc\xff\xfedef").unwrap();
    std::fs::write(d.join(&file), &good).unwrap();
    let o = common::charlab(d, &["sweep", &file, "--plain"]);
    common::assert_user_error(&o, "a corpus that is not UTF-8", &["novel.txt", "UTF-8"]);
    assert!(!d.join("runs/dom").exists());
}

#[test]
fn a_search_with_the_default_startup_grows_with_extend() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = common::tpe_file(d, "grow", 2, "");
    let sweep = std::fs::read_to_string(d.join(&file))
        .unwrap()
        .replace("startup_trials = 3\n", "");
    std::fs::write(d.join(&file), &sweep).unwrap();
    let o = common::charlab(d, &["sweep", &file, "--plain"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    std::fs::write(d.join(&file), sweep.replace("trials = 2", "trials = 3")).unwrap();
    let o = common::charlab(d, &["sweep", &file, "--plain", "--extend"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let m = charlab::sweep::manifest::Manifest::load(&d.join("runs/grow")).unwrap();
    assert_eq!(m.trials.len(), 3);
}

#[test]
fn refine_narrows_around_completed_trials_only_and_keeps_an_existing_output() {
    let s = Sweep::new("ref", "lr = [1e-3, 3e-3, 1e-2, 3e-2]", "max_steps = 20");
    assert!(s.run(&[]).status.success());
    let root = s.root("ref");
    let runs = run_dirs(&root);
    // Two trials killed early, after one lucky evaluation.
    let killed: Vec<String> = runs[..2]
        .iter()
        .map(|run| {
            let mut r = record(run);
            r["status"] = "interrupted".into();
            r["best_metrics"]["val_loss"] = 0.01.into();
            std::fs::write(run.join("run.json"), r.to_string()).unwrap();
            run.file_name().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    let d = s.dir.path();
    let o = common::charlab(d, &["refine", "runs/ref", "--top", "2", "-o", "f.toml"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let header: String = std::fs::read_to_string(d.join("f.toml"))
        .unwrap()
        .lines()
        .take_while(|l| l.starts_with('#'))
        .collect();
    for k in &killed {
        assert!(
            !header.contains(k.as_str()),
            "narrowed around unfinished {k}: {header}"
        );
    }
    let o = common::charlab(d, &["refine", "runs/ref", "--top", "2", "-o", "f.toml"]);
    common::assert_user_error(&o, "an existing -o", &["f.toml", "--force"]);
    let o = common::charlab(
        d,
        &[
            "refine", "runs/ref", "--top", "2", "-o", "f.toml", "--force",
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    for top in ["0", "1"] {
        let o = common::charlab(d, &["refine", "runs/ref", "--top", top]);
        common::assert_user_error(&o, "--top below 2", &["--top", "at least 2"]);
    }
    // Two completed trials left of four: enough; one left is not, and says how many.
    let mut r = record(&runs[2]);
    r["status"] = "interrupted".into();
    std::fs::write(runs[2].join("run.json"), r.to_string()).unwrap();
    let o = common::charlab(d, &["refine", "runs/ref"]);
    common::assert_user_error(&o, "one completed trial", &["has 1"]);
}

#[test]
fn the_smaller_holes_are_closed() {
    let s = Sweep::new("holes", "sample_temperature = [0.5, 1.0]", "max_steps = 10");
    let d = s.dir.path();
    let file = s.file.to_str().unwrap();
    let o = s.cmd(&["sweep", file, "--jobs", "0"]);
    common::assert_user_error(&o, "--jobs 0", &["--jobs"]);
    let o = s.cmd(&["sweep", file, "--dry-run", "--runs", "elsewhere"]);
    assert!(
        text(&o.stdout).contains("elsewhere/holes/"),
        "{}",
        text(&o.stdout)
    );

    // A name of 22 CJK letters is 66 bytes but 22 letters.
    let named = std::fs::read_to_string(&s.file).unwrap().replace(
        "name = \"holes\"",
        &format!("name = \"{}\"", "红".repeat(22)),
    );
    std::fs::write(d.join("named.toml"), named).unwrap();
    let o = s.cmd(&["sweep", "named.toml", "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o.stderr));

    // TPE settings under method = "list", and a search longer than its space.
    let list =
        std::fs::read_to_string(&s.file).unwrap() + "[search]\nmethod = \"list\"\ntrials = 5\n";
    std::fs::write(d.join("list.toml"), list).unwrap();
    let o = s.cmd(&["sweep", "list.toml", "--dry-run"]);
    common::assert_user_error(&o, "trials under list", &["list.toml", "trials", "TPE"]);
    let file = common::tpe_file(d, "small", 5, "");
    let small = std::fs::read_to_string(d.join(&file)).unwrap();
    let small = small
        .lines()
        .filter(|l| !l.starts_with("lr =") && !l.starts_with("dropout ="))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(d.join(&file), small).unwrap();
    let o = s.cmd(&["sweep", &file, "--dry-run"]);
    common::assert_user_error(&o, "a space of 2 points", &["trials = 5", "only 2"]);

    // A swept observation key shows in compare; a killed trial does not show `running`.
    let o = s.run(&[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let runs = run_dirs(&s.root("holes"));
    let mut r = record(&runs[0]);
    r["status"] = "running".into();
    std::fs::write(runs[0].join("run.json"), r.to_string()).unwrap();
    let o = s.cmd(&["compare", "runs/holes", "--format", "csv"]);
    let csv = text(&o.stdout);
    assert!(
        csv.lines().next().unwrap().contains("sample_temperature"),
        "{csv}"
    );
    assert!(csv.contains(",0.5,") && csv.contains(",1,"), "{csv}");
    assert!(
        !csv.contains("running") && csv.contains("interrupted"),
        "{csv}"
    );
}

// ---- the fault matrix: every file of a finished sweep × every kind of damage ----

/// The damages a file can suffer.
const DAMAGES: &[&str] = &[
    "deleted",
    "truncated",
    "zero bytes",
    "garbage",
    "wrong-shape JSON",
];

fn damage(path: &std::path::Path, how: &str) {
    let bytes = std::fs::read(path).unwrap();
    match how {
        "deleted" => return std::fs::remove_file(path).unwrap(),
        "truncated" => std::fs::write(path, &bytes[..bytes.len() / 2]),
        "zero bytes" => std::fs::write(path, b""),
        "garbage" => std::fs::write(path, b"\x00\xffnot what was written\x7f\n"),
        _ => std::fs::write(path, br#"{"trials": {"lr": [1, 2]}, "status": 3}"#),
    }
    .unwrap()
}

/// Every file under `dir`, relative to it, in a fixed order.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    for rel in files_under(from) {
        let dst = to.join(&rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(from.join(&rel), dst).unwrap();
    }
}

/// The trial directories under a sweep root (read from the disk, not the manifest, which may
/// be the damaged file).
fn trial_dirs(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// What each trial holds that must survive: its status and best val loss, by directory.
fn results(root: &std::path::Path) -> Vec<(String, String, f64)> {
    trial_dirs(root)
        .iter()
        .map(|r| {
            let rec = record(r);
            let name = r.file_name().unwrap().to_string_lossy().into_owned();
            let best = rec["best_metrics"]["val_loss"].as_f64().unwrap_or(f64::NAN);
            (
                name,
                rec["status"].as_str().unwrap_or("-").to_string(),
                best,
            )
        })
        .collect()
}

/// Runs the fault matrix over a finished sweep in `template` (`file` its sweep file, `name` its
/// experiment); returns the number of cases.
fn fault_matrix(template: &std::path::Path, file: &str, name: &str) -> usize {
    let root_rel = std::path::Path::new("runs").join(name);
    let want = results(&template.join(&root_rel));
    let trial0 = run_dirs(&template.join(&root_rel))[0].clone();
    let trial0 = trial0.strip_prefix(template).unwrap().to_path_buf();
    let targets = files_under(&template.join(&root_rel));
    let mut cases = 0;
    for rel in &targets {
        for how in DAMAGES {
            let case = tempfile::tempdir().unwrap();
            let d = case.path();
            copy_tree(template, d);
            let target = d.join(&root_rel).join(rel);
            damage(&target, how);
            let base = rel.file_name().unwrap().to_string_lossy().into_owned();
            let what = format!("{name}: {} {how}", rel.display());
            let root = root_rel.to_str().unwrap();
            let sample_run = trial0.to_str().unwrap();
            let commands: Vec<Vec<&str>> = vec![
                vec!["compare", root],
                vec!["report", root, "-o", "r.html"],
                vec!["refine", root],
                vec!["sample", "--run", sample_run, "--length", "5"],
                vec!["sweep", file, "--plain"],
            ];
            for args in &commands {
                let o = common::charlab(d, args);
                let err = text(&o.stderr);
                let code = o.status.code();
                assert!(
                    !err.contains("panicked") && matches!(code, Some(0..=2)),
                    "{what}: {args:?} exited {code:?}: {err}"
                );
                // A command that fails names the file; the sweep names the records it repairs.
                let repaired =
                    args[0] == "sweep" && (base == "manifest.json" || base == "run.json");
                if code != Some(0) || repaired {
                    assert!(
                        err.contains(&base),
                        "{what}: {args:?} does not name {base}: {err}"
                    );
                }
            }
            // After the rerun nothing finished is lost, re-trained or shown twice.
            let got = results(&d.join(&root_rel));
            let same = got.len() == want.len()
                && got.iter().zip(&want).all(|(g, w)| {
                    // A rebuilt record holds the event files' f32 values.
                    g.0 == w.0 && g.1 == w.1 && (g.2 - w.2).abs() <= 1e-6 * w.2.abs()
                });
            assert!(same, "{what}: {got:?} after, {want:?} before");
            for run in trial_dirs(&d.join(&root_rel)) {
                let scalars = charlab::summary::read_scalars(&run).unwrap();
                let steps: Vec<u64> = scalars
                    .get("val/loss")
                    .map_or(Vec::new(), |v| v.iter().map(|p| p.0).collect());
                if target.starts_with(&run) && base.starts_with("events.out") {
                    // The damaged event file's points are gone; none may appear twice.
                    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{what}: {steps:?}");
                } else {
                    assert_eq!(steps, vec![10, 20], "{what}: {}", run.display());
                }
            }
            cases += 1;
        }
    }
    cases
}

#[test]
fn the_fault_matrix_of_a_finished_grid_and_tpe_sweep() {
    let grid = Sweep::new(
        "fm",
        "lr = [1e-3, 1e-2]",
        "max_steps = 20\nhidden = 16\nembed_dim = 8",
    );
    assert!(grid.run(&[]).status.success());
    let n = fault_matrix(grid.dir.path(), grid.file.to_str().unwrap(), "fm");

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = common::tpe_file(d, "fmt", 2, "");
    let text_ = std::fs::read_to_string(d.join(&file))
        .unwrap()
        .replace("max_steps = 120", "max_steps = 20")
        .replace("eval_every = 30", "eval_every = 10")
        .replace("startup_trials = 3", "startup_trials = 2");
    std::fs::write(d.join(&file), text_).unwrap();
    assert!(common::charlab(d, &["sweep", &file, "--plain"])
        .status
        .success());
    let m = fault_matrix(d, &file, "fmt");
    eprintln!("fault matrix: {n} grid cases, {m} TPE cases");
}

#[test]
fn a_device_that_cannot_be_opened_is_one_error_before_any_trial_starts() {
    if cfg!(feature = "cuda") {
        return; // This build may have a GPU; the check is about one that cannot.
    }
    for (what, defaults) in [
        ("a trial's device", "device = \"cuda\""),
        ("the experiment's devices", ""),
    ] {
        let s = Sweep::new("dev", "lr = [1e-3, 1e-2]", defaults);
        if defaults.is_empty() {
            let text = std::fs::read_to_string(&s.file)
                .unwrap()
                .replace("jobs = 2\n", "jobs = 2\ndevices = [\"cuda:0\"]\n");
            std::fs::write(&s.file, text).unwrap();
        }
        let o = s.run(&[]);
        common::assert_user_error(&o, what, &["cuda", "without CUDA"]);
        assert!(!s.root("dev").exists(), "{what}: nothing is left behind");
    }
}

#[test]
fn trials_failing_on_the_same_bad_input_stop_the_sweep_once() {
    let s = Sweep::new("same", "lr = [1e-3, 2e-3, 3e-3, 4e-3]", "");
    // A worker that sees bad input the parent could not: every trial would fail the same way.
    let (outcome, started) =
        s.with_stand_in_worker(2, "error: corpus: novel.txt vanished", 2, false);
    assert_eq!(started, 2, "two trials, no retries, then the sweep stops");
    assert_eq!(outcome.unfinished(), 4);
}

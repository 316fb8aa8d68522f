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

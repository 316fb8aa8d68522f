//! Issue 5's guarantees that are not covered elsewhere: every bad input answered with one line
//! and exit code 2, storage faults (read-only and full filesystems), damaged checkpoints, and
//! `compare` reading a sweep while it writes. RELIABILITY.md maps each guarantee to its test.

mod common;

use charlab::run_dir::{Checkpoint, RunDir};
use charlab::train::{train, RunStatus, TrainOptions};
use common::{assert_user_error, charlab, kill, spawn_quiet, wait_exit, wait_until};
use std::path::{Path, PathBuf};
use std::process::Command;

const SWEEP_HEAD: &str = "[experiment]\nname = \"t\"\ncorpus = \"novel.txt\"\n";

#[test]
fn every_bad_input_gets_one_line_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::write_corpus(d);
    let mut sweeps: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "malformed TOML",
            "[experiment\nname = \"t\"\n".into(),
            vec!["bad.toml", "line 1"],
        ),
        (
            "unknown key",
            format!("{SWEEP_HEAD}[defaults]\nhiden = 3\n"),
            vec!["bad.toml", "line 5", "hiden", "hidden"],
        ),
        (
            "wrong type",
            format!("{SWEEP_HEAD}[defaults]\nlr = \"fast\"\n"),
            vec!["bad.toml", "lr"],
        ),
        (
            "out of range",
            format!("{SWEEP_HEAD}[grid]\ndropout = [0.1, 1.5]\n"),
            vec!["bad.toml", "dropout"],
        ),
        (
            "empty grid list",
            format!("{SWEEP_HEAD}[grid]\nlr = []\n"),
            vec!["bad.toml", "lr"],
        ),
        (
            "duplicate trial",
            format!("{SWEEP_HEAD}[[trial]]\nlr = 1e-3\n[[trial]]\nlr = 1e-3\n"),
            vec!["bad.toml", "duplicates"],
        ),
        (
            "a million trials",
            format!(
                "{SWEEP_HEAD}[grid]\n{}",
                ["lr", "hidden", "seed", "dropout", "seq_len", "batch_size"]
                    .iter()
                    .enumerate()
                    .map(|(k, key)| {
                        let v: Vec<String> = (1..=10)
                            .map(|i| match *key {
                                "lr" => format!("{i}e-4"),
                                "dropout" => format!("0.0{i}"),
                                _ => format!("{}", i + k),
                            })
                            .collect();
                        format!("{key} = [{}]\n", v.join(", "))
                    })
                    .collect::<String>()
            ),
            vec!["bad.toml", "1000000"],
        ),
    ];
    // Experiment names that would escape runs/: a parent, an absolute path, a separator, a
    // control character.
    for name in ["..", "/etc/x", "a/b", "a\\u0007b"] {
        sweeps.push((
            "an escaping experiment name",
            format!("[experiment]\nname = \"{name}\"\ncorpus = \"novel.txt\"\n"),
            vec!["bad.toml", "name"],
        ));
    }
    for (what, text, needles) in &sweeps {
        std::fs::write(d.join("bad.toml"), text).unwrap();
        // A million-trial grid that were expanded would not end; `charlab` fails on a hang.
        let o = charlab(d, &["sweep", "bad.toml", "--dry-run"]);
        assert_user_error(&o, what, needles);
        assert!(!d.join("runs").exists(), "{what}: nothing is created");
    }

    // Corpora: invalid UTF-8, empty after cleaning, smaller than one batch, missing.
    std::fs::write(d.join("bad.txt"), b"ok text\n\xff\xfe more").unwrap();
    std::fs::write(d.join("empty.txt"), "[junk]\n<more junk>\n\n").unwrap();
    std::fs::write(d.join("small.txt"), "abc\n").unwrap();
    let corpora: Vec<(&str, &str, Vec<&str>)> = vec![
        ("invalid UTF-8", "bad.txt", vec!["bad.txt", "byte offset 8"]),
        (
            "empty after cleaning",
            "empty.txt",
            vec!["empty.txt", "empty after cleaning"],
        ),
        (
            "smaller than one batch",
            "small.txt",
            vec!["batch_size", "seq_len"],
        ),
        ("missing", "nope.txt", vec!["nope.txt"]),
    ];
    for (what, corpus, needles) in &corpora {
        std::fs::write(
            d.join("run.toml"),
            format!("corpus = {corpus:?}\ndevice = \"cpu\"\n"),
        )
        .unwrap();
        let o = charlab(d, &["train", "--config", "run.toml", "--out", "out"]);
        assert_user_error(&o, what, needles);
    }

    // A device this build does not have.
    if !cfg!(feature = "cuda") {
        let cfg = format!("corpus = \"novel.txt\"\n{}", "max_steps = 1\n");
        std::fs::write(d.join("run.toml"), cfg).unwrap();
        let o = charlab(
            d,
            &[
                "train", "--config", "run.toml", "--out", "out", "--device", "cuda",
            ],
        );
        assert_user_error(&o, "--device cuda", &["without CUDA"]);
    }

    // A prime with chars outside the run's vocabulary.
    let run = d.join("tiny");
    let cfg = common::tiny_config(&d.join("novel.txt"));
    train(&cfg, &run, &common::quiet(d)).unwrap();
    let o = charlab(d, &["sample", "--run", "tiny", "--prime", "Ω∂"]);
    assert_user_error(&o, "prime outside vocab", &["Ω"]);

    // A directory as corpus.
    std::fs::create_dir_all(d.join("adir")).unwrap();
    std::fs::write(d.join("run.toml"), "corpus = \"adir\"\ndevice = \"cpu\"\n").unwrap();
    let o = charlab(d, &["train", "--config", "run.toml", "--out", "out"]);
    assert_user_error(&o, "a directory as corpus", &["adir", "directory"]);

    // A run that exists, without --resume; --resume with a changed key.
    let tiny_cfg = d.join("tiny/config.toml");
    let o = charlab(
        d,
        &[
            "train",
            "--config",
            tiny_cfg.to_str().unwrap(),
            "--out",
            "tiny",
        ],
    );
    assert_user_error(
        &o,
        "train into a run without --resume",
        &["tiny", "--resume"],
    );
    let changed = std::fs::read_to_string(&tiny_cfg)
        .unwrap()
        .replace("hidden = 32", "hidden = 48");
    std::fs::write(d.join("changed.toml"), changed).unwrap();
    let o = charlab(
        d,
        &[
            "train",
            "--config",
            "changed.toml",
            "--out",
            "tiny",
            "--resume",
        ],
    );
    assert_user_error(&o, "--resume with a changed key", &["tiny", "hidden"]);

    // Missing or wrong directories given to the commands that read them.
    for (what, args, needles) in [
        (
            "sample, no such run",
            vec!["sample", "--run", "nowhere"],
            vec!["nowhere"],
        ),
        (
            "sample, not a run",
            vec!["sample", "--run", "adir"],
            vec!["adir", "not a run"],
        ),
        (
            "report, no such dir",
            vec!["report", "nowhere", "-o", "r.html"],
            vec!["nowhere"],
        ),
        (
            "report, no runs",
            vec!["report", "adir", "-o", "r.html"],
            vec!["adir", "no runs"],
        ),
        (
            "refine, no such dir",
            vec!["refine", "nowhere"],
            vec!["nowhere"],
        ),
        (
            "refine, not a sweep",
            vec!["refine", "tiny"],
            vec!["tiny", "not a sweep"],
        ),
        (
            "compare, no such dir",
            vec!["compare", "nowhere"],
            vec!["nowhere"],
        ),
    ] {
        let o = charlab(d, &args);
        assert_user_error(&o, what, &needles);
    }
}

/// Mounts a tmpfs of `size` at `dir` (read-only when `ro`); None, with the reason printed, where
/// this machine does not allow it (not root, no mount namespace).
fn mount_tmpfs(dir: &Path, size: &str, ro: bool) -> Option<()> {
    std::fs::create_dir_all(dir).ok()?;
    let opts = format!("size={size}{}", if ro { ",ro" } else { "" });
    let o = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
        .arg(dir)
        .output();
    match o {
        Ok(o) if o.status.success() => Some(()),
        Ok(o) => {
            println!(
                "skipped: cannot mount a tmpfs here: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            None
        }
        Err(e) => {
            println!("skipped: cannot run mount: {e}");
            None
        }
    }
}

struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_read_only_runs_dir_fails_the_trial_with_the_path_and_os_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::write_corpus(d);
    let runs = d.join("runs");
    if mount_tmpfs(&runs, "4m", true).is_none() {
        return;
    }
    let _guard = Unmount(runs.clone());
    std::fs::write(
        d.join("s.toml"),
        format!("{SWEEP_HEAD}[defaults]\nbatch_size = 4\nseq_len = 16\nhidden = 16\nmax_steps = 5\n[grid]\nlr = [1e-3, 2e-3]\n"),
    )
    .unwrap();
    let o = charlab(d, &["sweep", "s.toml", "--plain"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("runs/t: "), "names the path: {err}");
    assert_eq!(
        err.matches("Read-only file system").count(),
        1,
        "names the OS error once: {err}"
    );
}

#[test]
fn a_full_disk_fails_the_run_cleanly_and_a_rerun_resumes_after_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let corpus = common::write_corpus(d);
    let runs = d.join("small");
    // Room for the run's small files and one checkpoint, not for the second (see the sizes below).
    if mount_tmpfs(&runs, "900k", false).is_none() {
        return;
    }
    let _guard = Unmount(runs.clone());
    let cfg = charlab::config::RunConfig {
        max_steps: Some(30),
        eval_every: 5,
        histogram_every: 0,
        ..common::tiny_config(&corpus)
    };
    let out = runs.join("run");
    let opts = common::quiet(d);
    let err = train(&cfg, &out, &opts).expect_err("the disk fills up");
    println!("{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&runs.display().to_string()),
        "names the path: {msg}"
    );
    assert!(
        msg.contains("No space left on device"),
        "names the OS error: {msg}"
    );
    // The run record says what happened, and a checkpoint survived whole.
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
    assert_ne!(rec["status"], "completed");
    let done = rec["steps"].as_u64().unwrap();
    assert!(done >= 5, "some work was checkpointed: {rec}");

    // Space returns: the rerun resumes from the checkpoint and finishes.
    let o = Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&runs)
        .status()
        .unwrap();
    assert!(o.success());
    let r = train(
        &cfg,
        &out,
        &TrainOptions {
            resume: true,
            ..common::quiet(d)
        },
    )
    .unwrap();
    assert_eq!(r.status, RunStatus::Completed);
    let s = charlab::summary::read_scalars(&out).unwrap();
    let steps: Vec<u64> = s["train/loss"].iter().map(|p| p.0).collect();
    assert_eq!(steps, (1..=30).collect::<Vec<_>>(), "each step once");
    let tb = common::tb_read(&out);
    assert_eq!(tb["scalars"]["val/loss"].as_array().unwrap().len(), 6);
}

#[test]
fn a_damaged_last_checkpoint_is_reported_and_the_run_resumes_from_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let corpus = common::write_corpus(d);
    let cfg = charlab::config::RunConfig {
        max_steps: Some(30),
        eval_every: 5,
        ..common::tiny_config(&corpus)
    };
    for damage in ["flip", "truncate"] {
        let out = d.join(damage);
        let first = TrainOptions {
            stop_after: Some(12),
            ..common::quiet(d)
        };
        assert_eq!(
            train(&cfg, &out, &first).unwrap().status,
            RunStatus::Interrupted
        );
        let run = RunDir::new(&out);
        let last = run.checkpoint(Checkpoint::Last);
        let prev = run.checkpoint(Checkpoint::Previous);
        assert!(prev.exists(), "the checkpoint before last is kept");
        let mut bytes = std::fs::read(&last).unwrap();
        match damage {
            "flip" => {
                let n = bytes.len() - 10;
                bytes[n] ^= 0x40;
            }
            _ => bytes.truncate(bytes.len() / 2),
        }
        std::fs::write(&last, bytes).unwrap();
        // Loading it says what is wrong and where.
        let e = charlab::checkpoint::load(&last, &candle_core::Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("last.safetensors"), "{e}");
        let r = train(
            &cfg,
            &out,
            &TrainOptions {
                resume: true,
                ..common::quiet(d)
            },
        )
        .unwrap();
        assert_eq!(r.status, RunStatus::Completed, "{damage}");
        let s = charlab::summary::read_scalars(&out).unwrap();
        let steps: Vec<u64> = s["train/loss"].iter().map(|p| p.0).collect();
        assert_eq!(
            steps,
            (1..=30).collect::<Vec<_>>(),
            "{damage}: each step once"
        );
    }
    // Both damaged: an error naming the checkpoints, not a silent restart.
    let out = d.join("both");
    let first = TrainOptions {
        stop_after: Some(12),
        ..common::quiet(d)
    };
    train(&cfg, &out, &first).unwrap();
    for which in [Checkpoint::Last, Checkpoint::Previous] {
        std::fs::write(RunDir::new(&out).checkpoint(which), b"garbage").unwrap();
    }
    let e = train(
        &cfg,
        &out,
        &TrainOptions {
            resume: true,
            ..common::quiet(d)
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("no intact checkpoint"), "{e}");
}

#[test]
fn compare_never_fails_while_a_sweep_writes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::write_corpus(d);
    std::fs::write(
        d.join("s.toml"),
        format!(
            "{SWEEP_HEAD}jobs = 2\n[defaults]\nbatch_size = 4\nseq_len = 16\nhidden = 32\nmax_steps = 60\n\
             eval_every = 5\nlog_every = 1\nhistogram_every = 5\nval_fraction = 0.1\ndevice = \"cpu\"\n\
             [grid]\nlr = [1e-3, 2e-3, 3e-3, 4e-3]\n"
        ),
    )
    .unwrap();
    let mut sweep = spawn_quiet(d, &["sweep", "s.toml", "--plain"]);
    // Compare, as often as it can, from the moment the first run has a record until the sweep
    // ends: every call must succeed whatever it catches the writers doing.
    let mut compares = 0;
    let status = loop {
        if let Some(s) = sweep.try_wait().unwrap() {
            break s;
        }
        if !d.join("runs/t").exists() {
            continue;
        }
        let o = charlab(d, &["compare", "runs/t", "--format", "csv"]);
        assert!(
            o.status.success(),
            "compare failed mid-sweep: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        if String::from_utf8_lossy(&o.stdout).lines().count() > 1 {
            compares += 1;
        }
    };
    assert!(status.success());
    assert!(compares >= 1, "compare never ran while the sweep wrote");
    let o = charlab(d, &["compare", "runs/t", "--format", "csv"]);
    let csv = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        csv.lines().filter(|l| l.contains(",completed,")).count(),
        4,
        "{csv}"
    );
}

#[test]
fn sigint_and_sigterm_checkpoint_and_exit_130_143_before_the_end_and_the_rerun_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::write_corpus(d);
    std::fs::write(
        d.join("run.toml"),
        "corpus = \"novel.txt\"\nbatch_size = 4\nseq_len = 16\nembed_dim = 16\nhidden = 48\n\
         max_steps = 2500\neval_every = 100\nlog_every = 1\nhistogram_every = 0\nval_fraction = 0.1\n\
         device = \"cpu\"\n",
    )
    .unwrap();
    let record = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(d.join("out/run.json")).unwrap_or_default())
            .unwrap_or_default()
    };
    let mut last_steps = 0;
    for (sig, code) in [("-INT", 130), ("-TERM", 143)] {
        let mut args = vec!["train", "--config", "run.toml", "--out", "out", "--plain"];
        if last_steps > 0 {
            args.push("--resume");
        }
        let mut child = spawn_quiet(d, &args);
        // Signal once this invocation has trained past its first checkpoint.
        wait_until(60, "training past a checkpoint", || {
            record()["steps"].as_u64().unwrap_or(0) > last_steps + 100
        });
        kill(sig, child.id());
        let status = wait_exit(&mut child, 120, sig);
        assert_eq!(status.code(), Some(code), "{sig}");
        let rec = record();
        assert_eq!(rec["status"], "interrupted", "{sig}");
        let steps = rec["steps"].as_u64().unwrap();
        assert!(
            steps > last_steps && steps < 2500,
            "{sig}: checkpointed at {steps}"
        );
        last_steps = steps;
    }
    let o = charlab(
        d,
        &[
            "train", "--config", "run.toml", "--out", "out", "--resume", "--plain",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(record()["status"], "completed");
    let tb = common::tb_read(&d.join("out"));
    let steps = common::tb_steps(&tb, "train/loss");
    assert_eq!(
        steps,
        (1..=2500).collect::<Vec<_>>(),
        "each step once after two resumes"
    );
}

/// A trained tiny run at `d/runs/a/<name>` (library call).
fn tiny_run(d: &Path, name: &str) -> PathBuf {
    let corpus = common::write_corpus(d);
    let out = d.join("runs/a").join(name);
    let mut cfg = common::tiny_config(&corpus);
    cfg.max_steps = Some(10);
    cfg.eval_every = 10;
    let r = train(&cfg, &out, &common::quiet(d)).unwrap();
    assert_eq!(r.status, RunStatus::Completed);
    out
}

#[test]
fn a_model_too_large_for_memory_is_refused_in_one_line_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::write_corpus(d);
    std::fs::write(
        d.join("run.toml"),
        "corpus = \"novel.txt\"\nhidden = 100000\nbatch_size = 4\nseq_len = 16\nval_fraction = 0.1\n\
         device = \"cpu\"\n",
    )
    .unwrap();
    let o = charlab(d, &["train", "--config", "run.toml", "--out", "big"]);
    assert_user_error(
        &o,
        "hidden = 100000",
        &["too large", "hidden 100000", "GiB"],
    );
    assert!(!d.join("big").exists(), "no run directory is left behind");

    // The same trial in a sweep: the sweep is refused, naming it, before any trial starts.
    std::fs::write(
        d.join("s.toml"),
        format!(
            "{SWEEP_HEAD}[defaults]\nbatch_size = 4\nseq_len = 16\nval_fraction = 0.1\nmax_steps = 5\n\
             device = \"cpu\"\n[grid]\nhidden = [32, 100000]\n"
        ),
    )
    .unwrap();
    let o = charlab(d, &["sweep", "s.toml", "--plain"]);
    assert_user_error(
        &o,
        "a sweep with hidden = 100000",
        &["too large", "trial 001-h100000"],
    );
    let runs = d.join("runs/t");
    let trained: Vec<_> = std::fs::read_dir(&runs)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("run.json").exists())
                .collect()
        })
        .unwrap_or_default();
    assert!(trained.is_empty(), "no trial ran: {trained:?}");
}

#[test]
fn a_train_that_fails_before_its_first_step_leaves_no_run_directory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::write_corpus(d);
    std::fs::create_dir(d.join("a-dir")).unwrap();
    for (corpus, needle) in [("missing.txt", "missing.txt"), ("a-dir", "a-dir")] {
        std::fs::write(
            d.join("run.toml"),
            format!("corpus = \"{corpus}\"\nbatch_size = 4\nseq_len = 16\ndevice = \"cpu\"\n"),
        )
        .unwrap();
        let o = charlab(d, &["train", "--config", "run.toml", "--out", "out"]);
        assert!(!o.status.success(), "{corpus}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(needle),
            "{corpus}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            !d.join("out").exists(),
            "{corpus}: the run directory is left behind"
        );
    }
}

#[test]
fn sample_streams_as_it_generates_and_stops_quietly_when_its_reader_goes_away() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = tiny_run(d, "r");
    let mut child = common::charlab_cmd(
        d,
        &[
            "sample",
            "--run",
            run.to_str().unwrap(),
            "--prime",
            "宝玉",
            "--length",
            "2000000000",
        ],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 300];
    stdout.read_exact(&mut first).unwrap();
    assert!(
        child.try_wait().unwrap().is_none(),
        "text arrives while it is being generated, not at the end"
    );
    assert!(String::from_utf8_lossy(&first).starts_with("宝玉"));
    drop(stdout); // the reader goes away, as `| head` does
    let status = common::wait_exit(&mut child, 300, "sample with a closed pipe");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(err.is_empty(), "nothing on stderr: {err}");
}

#[test]
fn compare_names_a_run_given_directly_and_says_which_damaged_run_it_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = tiny_run(d, "good");
    let bad = tiny_run(d, "bad");
    // A run compared by itself keeps its name.
    let o = charlab(d, &["compare", good.to_str().unwrap(), "--format", "csv"]);
    assert!(o.status.success());
    let csv = String::from_utf8_lossy(&o.stdout);
    assert!(csv.lines().nth(1).unwrap().starts_with("good,"), "{csv}");

    std::fs::write(bad.join("run.json"), "{ \"status\": \"compl").unwrap();
    let o = charlab(d, &["compare", "runs/a", "--format", "csv"]);
    assert!(o.status.success());
    let csv = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(csv.lines().count(), 2, "header and the good run: {csv}");
    assert!(csv.contains("good,"), "{csv}");
    assert!(
        err.contains("skipped") && err.contains("bad") && err.contains("run.json"),
        "{err}"
    );
}

#[test]
fn a_config_or_sweep_file_that_is_not_there_is_a_usage_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let missing = d.join("nope.toml");
    let m = missing.to_str().unwrap();
    let out = d.join("run");
    let o = common::charlab(d, &["train", "--config", m, "--out", out.to_str().unwrap()]);
    common::assert_user_error(&o, "missing run config", &["nope.toml", "no such file"]);
    assert!(!out.exists(), "nothing made for a missing config");
    let o = common::charlab(d, &["sweep", m]);
    common::assert_user_error(&o, "missing sweep file", &["nope.toml", "no such file"]);
    let o = common::charlab(d, &["sweep", d.to_str().unwrap()]);
    common::assert_user_error(&o, "a directory for a sweep file", &["is a directory"]);
}

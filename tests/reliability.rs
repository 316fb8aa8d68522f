//! Issue 5's guarantees that are not covered elsewhere: every bad input answered with one line
//! and exit code 2, storage faults (read-only and full filesystems), damaged checkpoints, and
//! `compare` reading a sweep while it writes. RELIABILITY.md maps each guarantee to its test.

mod common;

use charlab::run_dir::{Checkpoint, RunDir};
use charlab::train::{train, RunStatus, TrainOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn charlab(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_charlab"))
        .args(args)
        .current_dir(cwd)
        .env("CHARLAB_DATA", cwd.join("data"))
        .output()
        .expect("run charlab")
}

/// Asserts a one-line `error: …` on stderr with exit code 2 that contains every needle.
fn assert_user_error(o: &Output, what: &str, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{what}: {err}");
    assert!(err.starts_with("error: "), "{what}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{what}: one line: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{what}: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "{what}: `{n}` not in {err}");
    }
}

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
        let t = Instant::now();
        let o = charlab(d, &["sweep", "bad.toml", "--dry-run"]);
        assert_user_error(&o, what, needles);
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{what}: answered slowly"
        );
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
    let mut sweep = Command::new(env!("CARGO_BIN_EXE_charlab"))
        .args(["sweep", "s.toml", "--plain"])
        .current_dir(d)
        .env("CHARLAB_DATA", d.join("data"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut compares = 0;
    let status = loop {
        if let Some(s) = sweep.try_wait().unwrap() {
            break s;
        }
        if d.join("runs/t").exists() {
            let o = charlab(d, &["compare", "runs/t", "--format", "csv"]);
            assert!(
                o.status.success(),
                "compare failed mid-sweep: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            compares += 1;
        }
        std::thread::sleep(Duration::from_millis(30));
    };
    assert!(status.success());
    assert!(
        compares >= 3,
        "compare ran only {compares} times during the sweep"
    );
    let o = charlab(d, &["compare", "runs/t", "--format", "csv"]);
    let csv = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        csv.lines().filter(|l| l.contains(",completed,")).count(),
        4,
        "{csv}"
    );
}

#[test]
fn sigint_and_sigterm_checkpoint_and_exit_130_143_quickly_and_the_rerun_resumes() {
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
        let mut child = Command::new(env!("CARGO_BIN_EXE_charlab"))
            .args(&args)
            .current_dir(d)
            .env("CHARLAB_DATA", d.join("data"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Signal once this invocation has trained past its first checkpoint.
        let deadline = Instant::now() + Duration::from_secs(60);
        while record()["steps"].as_u64().unwrap_or(0) <= last_steps + 100
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let t = Instant::now();
        Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap();
        let status = child.wait().unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{sig}: exit took {:?}",
            t.elapsed()
        );
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

//! Shared test helpers: a noisy fixture corpus written by the tests themselves, a tiny run
//! config, and the path of TensorBoard's Python reader.
#![allow(dead_code)]

use charlab::config::RunConfig;
use charlab::train::{Progress, TrainOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Output};

/// A small novel-like text with the noise charlab cleans: CRLF, blank-line runs, `【…】`
/// commentary, `[…]` and `<…>` junk, full-width and ASCII spaces, trailing `……`.
pub fn noisy_corpus() -> String {
    let mut s = String::from("网站目录\r\n\r\n章节目录\r\n");
    let lines = [
        "第一回　甄士隐梦幻识通灵【甲戌侧批：此回中凡用梦用幻等字】",
        "  宝玉笑道：我送妹妹一妙字……",
        "[网站名 www.example.com]黛玉听了，便不言语。",
        "<a href=\"x\">点此阅读</a>凤姐儿笑道：你们来了。",
        "",
        "　　却说那僧道二人，携了玉石，往太虚幻境去了……",
    ];
    for i in 0..40 {
        for l in lines {
            s.push_str(l);
            s.push_str("\r\n");
        }
        s.push_str(&format!("第{i}回完\r\n\r\n\r\n"));
    }
    s
}

/// Writes the fixture corpus into `dir` and returns its path.
pub fn write_corpus(dir: &Path) -> PathBuf {
    let p = dir.join("novel.txt");
    std::fs::write(&p, noisy_corpus()).expect("write fixture corpus");
    p
}

/// A tiny model that trains in well under a second per few dozen steps.
pub fn tiny_config(corpus: &Path) -> RunConfig {
    RunConfig {
        corpus: corpus.to_string_lossy().into_owned(),
        batch_size: 4,
        seq_len: 16,
        embed_dim: 16,
        hidden: 32,
        layers: 2,
        max_steps: Some(20),
        eval_every: 10,
        log_every: 1,
        histogram_every: 10,
        sample_length: 40,
        val_fraction: 0.1,
        device: "cpu".into(),
        ..RunConfig::default()
    }
}

/// Options for tests: quiet, caches under `dir`.
pub fn quiet(dir: &Path) -> TrainOptions {
    TrainOptions {
        progress: Progress::Quiet,
        data_dir: dir.join("data"),
        ..TrainOptions::default()
    }
}

/// The Python interpreter that has the `tensorboard` package (`$CHARLAB_TB_PYTHON`, else the
/// repository's `.venv-tb`, which scripts/test.sh creates).
pub fn tb_python() -> PathBuf {
    if let Some(p) = std::env::var_os("CHARLAB_TB_PYTHON") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-tb/bin/python");
    assert!(
        p.exists(),
        "TensorBoard's reader is needed: run scripts/test.sh (it creates .venv-tb) or set CHARLAB_TB_PYTHON"
    );
    p
}

/// Runs tests/tb_read.py on a run directory and returns its JSON report.
pub fn tb_read(run_dir: &Path) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tb_read.py");
    let out = std::process::Command::new(tb_python())
        .arg(script)
        .arg(run_dir)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "tb_read.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("tb_read.py prints JSON")
}

/// The steps of scalar `tag` in a `tb_read` report, in the order TensorBoard gives them.
pub fn tb_steps(tb: &serde_json::Value, tag: &str) -> Vec<u64> {
    tb["scalars"][tag]
        .as_array()
        .unwrap_or_else(|| panic!("no scalar {tag} in {tb}"))
        .iter()
        .map(|p| p[0].as_u64().unwrap())
        .collect()
}

/// `charlab ARGS` with `cwd` as working directory and `cwd/data` as its data cache.
pub fn charlab_cmd(cwd: &Path, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_charlab"));
    c.args(args)
        .current_dir(cwd)
        .env("CHARLAB_DATA", cwd.join("data"));
    c
}

/// Runs `charlab ARGS` in `cwd` to the end and returns its output. A command that never ends
/// fails the test after ten minutes instead of hanging the suite.
pub fn charlab(cwd: &Path, args: &[&str]) -> std::process::Output {
    output_of(charlab_cmd(cwd, args))
}

/// Runs `cmd` (a [`charlab_cmd`]) to the end, with [`charlab`]'s ten-minute limit.
pub fn output_of(mut cmd: std::process::Command) -> std::process::Output {
    let what = format!("{cmd:?}");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(cmd.output()));
    rx.recv_timeout(std::time::Duration::from_secs(600))
        .unwrap_or_else(|_| panic!("{what} did not end"))
        .expect("run charlab")
}

/// `charlab train --plain` on a run config of the fixture corpus and `body` (written to
/// `dir/NAME.toml`), into `dir/NAME`, with the environment variables `env`: its output and run
/// directory.
pub fn train_run(
    dir: &Path,
    name: &str,
    body: &str,
    env: &[(&str, &str)],
) -> (std::process::Output, PathBuf) {
    let corpus = write_corpus(dir);
    let cfg = dir.join(format!("{name}.toml"));
    let text = format!("corpus = {:?}\n{body}", corpus.to_str().unwrap());
    std::fs::write(&cfg, text).expect("write run config");
    let out = dir.join(name);
    let (c, o) = (cfg.to_string_lossy(), out.to_string_lossy());
    let mut cmd = charlab_cmd(dir, &["train", "--config", &c, "--out", &o, "--plain"]);
    cmd.envs(env.iter().copied());
    (output_of(cmd), out)
}

/// Runs `charlab report ROOT -o CWD/report.html`, fails the test if it did not succeed, and
/// returns the page's path.
pub fn report(cwd: &Path, root: &Path) -> PathBuf {
    let html = cwd.join("report.html");
    let o = charlab(
        cwd,
        &[
            "report",
            root.to_str().unwrap(),
            "-o",
            html.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    html
}

/// Fails unless the PBT decisions recorded before a kill open the list recorded after the rerun,
/// unchanged but applied by then; returns every decision's (member, step) after, sorted.
pub fn assert_decisions_kept(
    before: &[charlab::sweep::manifest::Decision],
    after: &[charlab::sweep::manifest::Decision],
) -> Vec<(usize, u64)> {
    let done = |d: &charlab::sweep::manifest::Decision| charlab::sweep::manifest::Decision {
        applied: true,
        ..d.clone()
    };
    let before: Vec<_> = before.iter().map(done).collect();
    assert!(after.len() >= before.len(), "decisions lost: {after:?}");
    assert_eq!(&after[..before.len()], &before[..]);
    let mut at: Vec<(usize, u64)> = after.iter().map(|d| (d.member, d.step)).collect();
    at.sort();
    at
}

/// Starts `charlab ARGS` in `cwd` with its output discarded.
pub fn spawn_quiet(cwd: &Path, args: &[&str]) -> std::process::Child {
    charlab_cmd(cwd, args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start charlab")
}

/// Polls `f` every 20 ms until it holds; fails the test naming `what` after `secs` seconds.
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Waits for `child` to exit; kills it and fails naming `what` after `secs` seconds.
pub fn wait_exit(
    child: &mut std::process::Child,
    secs: u64,
    what: &str,
) -> std::process::ExitStatus {
    let mut status = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while status.is_none() {
        status = child.try_wait().expect("wait for charlab");
        if status.is_none() && std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what}: did not exit");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    status.expect("exited")
}

/// Sends `sig` (`-INT`, `-KILL`, …) to `pid`, and fails the test when `kill` did not: a
/// misspelt signal would otherwise leave a kill-and-rerun test running an uninterrupted sweep.
pub fn kill(sig: &str, pid: u32) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid} failed: {status}");
}

/// A run directory's `run.json` as JSON (`null` when it has none yet).
pub fn record(dir: &Path) -> serde_json::Value {
    std::fs::read(dir.join("run.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Asserts a one-line `error: …` on stderr with exit code 2 that contains every needle.
pub fn assert_user_error(o: &std::process::Output, what: &str, needles: &[&str]) {
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

/// Each proposal is what the sampler makes of the history the manifest says it saw.
pub fn assert_proposals_replay(d: &Path, file: &str, name: &str) {
    let p = charlab::sweep::plan::load(&d.join(file), 1000, false).unwrap();
    let root = d.join("runs").join(name);
    let m = charlab::sweep::manifest::Manifest::load(&root).unwrap();
    let proposer = charlab::sweep::search::Proposer::new(&p, &root).unwrap();
    let state = m.search.clone().unwrap();
    for (i, e) in m.trials.iter().enumerate() {
        let earlier: Vec<&str> = m.trials[..i].iter().map(|t| t.hash.as_str()).collect();
        let replayed = proposer
            .candidates(&m, i, state.seen[i])
            .into_iter()
            .map(|o| p.trial(o).unwrap().hash)
            .find(|h| !earlier.contains(&h.as_str()))
            .unwrap();
        assert_eq!(
            replayed, e.hash,
            "trial {i} replays from its recorded history"
        );
    }
}

/// A sweep of tiny trials on the fixture corpus, in its own temporary directory.
pub struct Sweep {
    pub dir: tempfile::TempDir,
    pub file: PathBuf,
}

impl Sweep {
    /// A sweep of tiny trials on the fixture corpus; `extra_defaults` lines (`key = value`)
    /// replace the defaults of the same key.
    pub fn new(name: &str, grid: &str, extra_defaults: &str) -> Sweep {
        let dir = tempfile::tempdir().unwrap();
        let corpus = write_corpus(dir.path());
        let file = dir.path().join("sweep.toml");
        let mut defaults: Vec<String> = [
            "batch_size = 4",
            "seq_len = 16",
            "embed_dim = 16",
            "hidden = 32",
            "max_steps = 40",
            "eval_every = 10",
            "log_every = 1",
            "histogram_every = 0",
            "sample_length = 10",
            "val_fraction = 0.1",
            "device = \"cpu\"",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for line in extra_defaults.lines().filter(|l| !l.trim().is_empty()) {
            let key = line.split('=').next().unwrap().trim();
            defaults.retain(|d| d.split('=').next().unwrap().trim() != key);
            defaults.push(line.to_string());
        }
        let text = format!(
            "[experiment]\nname = {name:?}\ncorpus = {:?}\njobs = 2\n\n[defaults]\n{}\n\n[grid]\n{grid}\n",
            corpus.to_str().unwrap(),
            defaults.join("\n")
        );
        std::fs::write(&file, text).unwrap();
        Sweep { dir, file }
    }

    pub fn cmd(&self, args: &[&str]) -> Output {
        charlab(self.dir.path(), args)
    }

    pub fn run(&self, extra: &[&str]) -> Output {
        let mut args = vec!["sweep", self.file.to_str().unwrap(), "--plain"];
        args.extend(extra);
        self.cmd(&args)
    }

    pub fn spawn(&self, extra: &[&str]) -> Child {
        let mut args = vec!["sweep", self.file.to_str().unwrap(), "--plain"];
        args.extend(extra);
        spawn_quiet(self.dir.path(), &args)
    }

    pub fn root(&self, name: &str) -> PathBuf {
        self.dir.path().join("runs").join(name)
    }

    /// Replaces the file's `jobs = 2` line of [experiment] with `lines`; returns the new text.
    pub fn experiment(&self, lines: &str) -> String {
        let text = std::fs::read_to_string(&self.file).unwrap();
        let text = text.replace("jobs = 2", lines);
        std::fs::write(&self.file, &text).unwrap();
        text
    }
}

/// What a command printed, stdout then stderr.
pub fn said(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A sweep's `manifest.json` as written, as JSON.
pub fn manifest_json(root: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(root.join("manifest.json")).unwrap()).unwrap()
}

/// The run directories of a sweep's manifest, in trial order.
pub fn run_dirs(root: &Path) -> Vec<PathBuf> {
    manifest_json(root)["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| root.join(t["dir"].as_str().unwrap()))
        .collect()
}

/// A TPE sweep file over lr (log-uniform), hidden (choice) and dropout on the fixture corpus;
/// `extra` lines go into [experiment].
pub fn tpe_file(d: &Path, name: &str, trials: usize, extra: &str) -> String {
    let corpus = write_corpus(d);
    let jobs = if extra.contains("jobs") {
        ""
    } else {
        "jobs = 1\n"
    };
    let text = format!(
        "[experiment]\nname = {name:?}\ncorpus = {:?}\n{jobs}seed = 7\n{extra}\n[defaults]\n\
         batch_size = 4\nseq_len = 16\nembed_dim = 16\nmax_steps = 120\neval_every = 30\n\
         log_every = 10\nhistogram_every = 0\nsample_length = 10\nval_fraction = 0.1\n\
         device = \"cpu\"\n[search]\nmethod = \"tpe\"\ntrials = {trials}\nstartup_trials = 3\n\
         [random]\nlr = {{ log_uniform = [1e-4, 3e-2] }}\nhidden = {{ choice = [16, 32] }}\n\
         dropout = {{ uniform = [0.0, 0.4] }}\n",
        corpus.to_str().unwrap()
    );
    let file = format!("{name}.toml");
    std::fs::write(d.join(&file), text).unwrap();
    file
}

impl Sweep {
    /// Runs the sweep through the library, one trial at a time with `retries`, its workers a
    /// stand-in script that logs each start and exits `code` with `message` on stderr; returns
    /// the outcome and how many workers started.
    pub fn with_stand_in_worker(
        &self,
        code: i32,
        message: &str,
        retries: u32,
        fail_fast: bool,
    ) -> (charlab::sweep::SweepOutcome, usize) {
        use std::os::unix::fs::PermissionsExt;
        let d = self.dir.path();
        let starts = d.join("starts.log");
        let _ = std::fs::remove_file(&starts);
        let worker = d.join("worker.sh");
        let script = format!(
            "#!/bin/sh\necho \"$@\" >> {}\necho '{message}' >&2\nexit {code}\n",
            starts.display()
        );
        std::fs::write(&worker, script).unwrap();
        std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).unwrap();
        let opts = charlab::sweep::SweepOptions {
            runs_root: d.join("runs"),
            data_dir: d.join("data"),
            jobs: Some(1),
            retries: Some(retries),
            fail_fast,
            worker_exe: Some(worker),
            progress: charlab::train::Progress::Quiet,
            ..Default::default()
        };
        let outcome = charlab::sweep::sweep(&self.file, &opts).unwrap();
        let started = std::fs::read_to_string(&starts).map_or(0, |s| s.lines().count());
        (outcome, started)
    }
}

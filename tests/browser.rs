//! What a user sees, in a real browser: a sweep in TensorBoard's HPARAMS tab (and the HTTP API
//! behind it), and `charlab report`'s HTML page, both opened in headless Chromium (Debian's
//! `chromium`, driven by playwright-core from tests/browser/). Screenshots are kept under
//! `target/artifacts/`. Where Chromium, Node or playwright-core is missing the tests say so and
//! pass (`.ci/run` installs them).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// Why the browser checks cannot run here, if they cannot.
fn missing() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !Path::new(&chromium).exists() {
        return Some(format!(
            "no Chromium at {chromium} (apt-get install chromium)"
        ));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("no node on PATH".into());
    }
    if !here.join("node_modules/playwright-core").exists() {
        return Some("tests/browser has no node_modules (npm install in tests/browser)".into());
    }
    None
}

fn artifacts() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/artifacts");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs tests/browser/check.mjs and returns its JSON report.
fn check(mode: &str, target: &str) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/check.mjs");
    let out = Command::new("node")
        .arg(script)
        .args([mode, target, artifacts().to_str().unwrap()])
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "check.mjs {mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("check.mjs prints JSON")
}

/// A small sweep (3 lr × 2 hidden, two seeds each: six configurations, enough for the
/// importance analysis) trained in `d`; returns its directory.
fn sweep(d: &Path) -> PathBuf {
    let corpus = common::write_corpus(d);
    std::fs::write(
        d.join("s.toml"),
        format!(
            "[experiment]\nname = \"look\"\ncorpus = {:?}\njobs = 2\n[defaults]\nbatch_size = 4\n\
             seq_len = 16\nembed_dim = 16\nlayers = 1\nmax_steps = 40\neval_every = 10\nlog_every = 5\n\
             histogram_every = 0\nsample_length = 40\nval_fraction = 0.1\ndevice = \"cpu\"\n\
             [grid]\nlr = [1e-3, 3e-3, 1e-2]\nhidden = [16, 32]\nseed = [1, 2]\n",
            corpus.to_str().unwrap()
        ),
    )
    .unwrap();
    let o = common::charlab(d, &["sweep", "s.toml", "--plain"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    d.join("runs/look")
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tensorboard --logdir DIR` on a free port, once it answers.
fn tensorboard(logdir: &Path) -> (Server, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bin = common::tb_python().with_file_name("tensorboard");
    let child = Command::new(bin)
        .args(["--logdir", logdir.to_str().unwrap(), "--host", "127.0.0.1"])
        .args(["--port", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start tensorboard");
    let server = Server(child);
    common::wait_until(120, "tensorboard to answer", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (server, format!("http://127.0.0.1:{port}"))
}

#[test]
fn tensorboard_hparams_opens_on_the_swept_keys_with_readable_trial_names_and_best_metrics() {
    if let Some(why) = missing() {
        println!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = sweep(dir.path());
    let (_server, url) = tensorboard(&root);
    let r = check("hparams", &url);
    // The API: the swept keys first (TensorBoard sorts those that differ by name), marked as
    // differing; the others not.
    let hp = r["api_hparams"].as_array().unwrap();
    let names: Vec<&str> = hp.iter().map(|h| h["name"].as_str().unwrap()).collect();
    assert_eq!(&names[..3], ["hidden", "lr", "seed"], "{names:?}");
    for h in hp {
        let swept = ["lr", "hidden", "seed"].contains(&h["name"].as_str().unwrap());
        assert_eq!(h["differs"].as_bool(), Some(swept), "{h}");
    }
    let metrics: Vec<&str> = r["api_metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for m in [
        "best/val_loss",
        "best/val_bpc",
        "best/val_accuracy",
        "best/step",
    ] {
        assert!(metrics.contains(&m), "{metrics:?}");
    }
    // Seeds of one configuration share a row, named by its swept values.
    let mut groups: Vec<&str> = r["api_groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    groups.sort();
    assert_eq!(
        groups,
        [
            "lr0.001_h16",
            "lr0.001_h32",
            "lr0.003_h16",
            "lr0.003_h32",
            "lr0.01_h16",
            "lr0.01_h32"
        ]
    );
    // The page: the swept keys among the columns shown, the readable names, the best metrics.
    let text: Vec<&str> = r["text"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for needle in ["lr", "hidden", "lr0.01_h32", "best/val_loss"] {
        assert!(
            text.contains(&needle),
            "`{needle}` not on the page: {text:?}"
        );
    }
    assert!(artifacts().join("hparams.png").exists());
}

#[test]
fn the_report_renders_every_chart_in_chromium_and_ranks_the_runs() {
    if let Some(why) = missing() {
        println!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = sweep(d);
    let html = common::report(d, &root);
    let r = check("report", html.to_str().unwrap());
    let charts = r["charts"].as_array().unwrap();
    let ids: Vec<&str> = charts.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["curves", "parallel", "importance"], "{r}");
    for c in charts {
        assert!(c["marks"].as_u64().unwrap() > 8, "{c}");
        assert!(c["width"].as_f64().unwrap() > 300.0, "{c}");
    }
    assert_eq!(r["notes"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(r["rows"], 12, "every run ranked");
    // A grid without pruning spends evenly: no budget section (tests/search.rs has one).
    assert_eq!(r["budget"].as_array().map(Vec::len), Some(0), "{r}");
    assert_eq!(
        r["external"], 0,
        "self-contained: no scripts, styles or images to fetch"
    );
    assert!(
        r["sample"]
            .as_str()
            .is_some_and(|s| s.chars().count() > 100),
        "{r}"
    );
    assert_eq!(
        r["errors"].as_array().unwrap().len(),
        0,
        "console errors: {r}"
    );
    assert!(artifacts().join("report.png").exists());
}

//! The run key `precision` from the outside: what a run says and records, `auto`'s choice on a
//! CPU with and without AVX512-BF16 (`CHARLAB_SIMD=avx2` hides the unit, as an older node
//! would), bf16 runs that work everywhere, and a sweep over the key that HParams and `compare`
//! show.

mod common;

use charlab::model::bf16;
use std::path::Path;

/// `charlab train` of the tiny config with `precision`, optionally hiding the bf16 unit;
/// returns what it printed (on stderr, as progress is) and its run.json.
fn train(dir: &Path, name: &str, precision: &str, hide_bf16: bool) -> (String, serde_json::Value) {
    let body = format!(
        "batch_size = 4\nseq_len = 16\nembed_dim = 16\nhidden = 32\nmax_steps = 30\n\
         eval_every = 10\nhistogram_every = 0\nsample_length = 10\nval_fraction = 0.1\n\
         device = \"cpu\"\nlr = 0.01\nprecision = {precision:?}\n"
    );
    let env: &[(&str, &str)] = if hide_bf16 {
        &[("CHARLAB_SIMD", "avx2")]
    } else {
        &[]
    };
    let (o, out) = common::train_run(dir, name, &body, env);
    let text = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{text}");
    (text, common::record(&out))
}

fn products(rec: &serde_json::Value) -> (&str, &str) {
    (
        rec["precision"]["products"].as_str().unwrap(),
        rec["precision"]["why"].as_str().unwrap(),
    )
}

#[test]
fn a_run_says_which_precision_it_trains_in_and_why_before_its_first_step() {
    let dir = tempfile::tempdir().unwrap();
    let (text, rec) = train(dir.path(), "auto", "auto", false);
    let line = text.lines().position(|l| l.starts_with("precision: "));
    let first_step = text.lines().position(|l| l.starts_with("step "));
    assert!(line.is_some() && line < first_step, "{text}");
    let (p, why) = products(&rec);
    if bf16::native_available() {
        // The unit is there: auto decided from its measured rate, and says so.
        assert!(why.contains("FMA rate"), "{why}");
        assert_eq!(p == "bf16", why.starts_with("bf16"), "{why}");
    } else {
        assert_eq!(p, "fp32");
        assert!(why.contains("no AVX512-BF16"), "{why}");
    }
    // The saved config keeps `auto` out, so configs written before the key hash the same.
    let saved = std::fs::read_to_string(dir.path().join("auto/config.toml")).unwrap();
    assert!(!saved.contains("precision"), "{saved}");
}

#[test]
fn without_avx512_bf16_auto_is_fp32_and_bf16_is_emulated_with_the_same_learning() {
    let dir = tempfile::tempdir().unwrap();
    let (_, auto) = train(dir.path(), "auto", "auto", true);
    assert_eq!(products(&auto).0, "fp32");
    assert!(products(&auto).1.contains("no AVX512-BF16"));
    let (text, emulated) = train(dir.path(), "emulated", "bf16", true);
    let (p, why) = products(&emulated);
    assert_eq!(p, "bf16");
    assert!(why.contains("emulated"), "{why}");
    assert!(text.contains("precision: bf16 products emulated"), "{text}");
    let (_, fp32) = train(dir.path(), "fp32", "fp32", true);
    let val = |r: &serde_json::Value| r["final_metrics"]["val_loss"].as_f64().unwrap();
    let first = fp32["first_loss"].as_f64().unwrap();
    // The same learning, not the same bits: bf16 rounding moves the loss a little.
    assert!(
        val(&emulated) < 0.8 * first,
        "bf16 did not learn: {}",
        val(&emulated)
    );
    assert!((val(&emulated) - val(&fp32)).abs() < 0.05 * val(&fp32));
    assert_ne!(val(&emulated), val(&fp32), "bf16 ran fp32 products");
    if bf16::native_available() {
        // On the bf16 unit, where it is the faster one, the same arithmetic again.
        let (_, native) = train(dir.path(), "native", "bf16", false);
        assert!((val(&native) - val(&emulated)).abs() < 0.02 * val(&emulated));
    }
}

#[test]
fn precision_is_a_sweepable_key_that_hparams_and_compare_show() {
    let sweep = common::Sweep::new(
        "prec",
        "precision = [\"fp32\", \"bf16\"]",
        "lr = 0.01\nmax_steps = 20",
    );
    let o = sweep.run(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let root = sweep.root("prec");
    let dirs = common::run_dirs(&root);
    assert_eq!(dirs.len(), 2);
    for (d, want) in dirs.iter().zip(["fp32", "bf16"]) {
        assert_eq!(products(&common::record(d)).0, want);
        let tb = common::tb_read(d);
        assert_eq!(
            tb["hparams"]["start"]["hparams"]["precision"], want,
            "{}",
            tb["hparams"]
        );
    }
    let out = sweep.cmd(&["compare", root.to_str().unwrap(), "--format", "csv"]);
    let csv = String::from_utf8_lossy(&out.stdout);
    let header = csv.lines().next().unwrap();
    assert!(header.split(',').any(|h| h == "precision"), "{csv}");
    assert!(csv.contains(",bf16,") && csv.contains(",fp32,"), "{csv}");
}

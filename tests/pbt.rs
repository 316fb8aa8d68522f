//! Population-based training (issue 21) from the outside: a PBT sweep with fewer jobs than
//! members copies, explores and shows it in TensorBoard and `compare`; its best member's schedule
//! replays as one `charlab train`; it decides the same when run again; a SIGKILL mid-search
//! loses no decision and writes no step twice; what makes no sense is refused in one line.

mod common;

use charlab::sweep::manifest::{Decision, Manifest};
use std::path::{Path, PathBuf};

/// A PBT sweep file on the fixture corpus: `population` members of 60 steps, a decision every
/// 20; `extra` lines go into [experiment].
fn pbt_file(d: &Path, name: &str, population: usize, extra: &str) -> String {
    let corpus = common::write_corpus(d);
    let text = format!(
        "[experiment]\nname = {name:?}\ncorpus = {:?}\nseed = 3\n{extra}\n[defaults]\n\
         batch_size = 4\nseq_len = 16\nembed_dim = 16\nhidden = 32\nmax_steps = 60\n\
         eval_every = 10\nlog_every = 5\nhistogram_every = 0\nsample_length = 10\n\
         val_fraction = 0.1\ndevice = \"cpu\"\nprecision = \"fp32\"\n[search]\nmethod = \"pbt\"\n\
         population = {population}\ninterval = 20\n[random]\n\
         lr = {{ log_uniform = [1e-4, 3e-2] }}\ndropout = {{ uniform = [0.0, 0.3] }}\n",
        corpus.to_str().unwrap()
    );
    let file = format!("{name}.toml");
    std::fs::write(d.join(&file), text).unwrap();
    file
}

fn decisions(root: &Path) -> Vec<Decision> {
    Manifest::load(root).unwrap().pbt.unwrap().decisions
}

fn members(root: &Path) -> Vec<PathBuf> {
    common::run_dirs(root)
}

/// Every member: completed, each evaluation step once and in order (TensorBoard's reader),
/// its explored keys traced as scalars.
fn assert_members_whole(root: &Path) {
    for m in members(root) {
        assert_eq!(common::record(&m)["status"], "completed", "{}", m.display());
        let tb = common::tb_read(&m);
        let steps = common::tb_steps(&tb, "val/loss");
        assert_eq!(
            steps,
            vec![10, 20, 30, 40, 50, 60],
            "{}: no step twice",
            m.display()
        );
        let lr = common::tb_steps(&tb, "hparams/lr");
        assert!(
            lr.windows(2).all(|w| w[0] < w[1]),
            "{}: {lr:?}",
            m.display()
        );
        assert!(tb["scalars"]["hparams/dropout"].is_array());
    }
}

#[test]
fn a_pbt_sweep_with_fewer_jobs_than_members_copies_explores_and_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = pbt_file(d, "pop", 4, "jobs = 2");
    let o = common::charlab(d, &["sweep", &file, "--plain"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let said = format!("{}{err}", String::from_utf8_lossy(&o.stdout));
    assert!(
        !said.contains("paused at"),
        "pauses only with --verbose: {said}"
    );
    let root = d.join("runs/pop");
    let ds = decisions(&root);
    // Every member decides once at each boundary before its end (20 and 40), all applied.
    let mut at: Vec<(usize, u64)> = ds.iter().map(|d| (d.member, d.step)).collect();
    at.sort();
    let want: Vec<(usize, u64)> = (0..4).flat_map(|m| [(m, 20), (m, 40)]).collect();
    assert_eq!(at, want);
    assert!(ds.iter().all(|d| d.applied));
    // Asynchronous, as Ray Tune's: a member decides against the members that have reached its
    // boundary, so a boundary's rankings grow as members arrive (two run at a time, and which
    // pauses first is the machine's timing) and the last to decide there sees all four. In
    // each, the bottom quantile (0.25, the default) copies from the top one, and only it.
    for step in [20, 40] {
        let here: Vec<&Decision> = ds.iter().filter(|d| d.step == step).collect();
        assert!(
            here.windows(2)
                .all(|w| w[0].ranking.len() <= w[1].ranking.len()),
            "{here:?}"
        );
        let full = &here.last().expect("decisions at the boundary").ranking;
        assert_eq!(full.len(), 4, "{here:?}");
        // The worst of all four is the worst of whatever it saw (never alone: two run at a
        // time, so another has paused there before it starts again), so it copied.
        let worst = full[3].0;
        assert!(
            here.iter().any(|d| d.member == worst && d.donor.is_some()),
            "{here:?}"
        );
    }
    for d in &ds {
        let k = charlab::sweep::pbt::quantile_count(d.ranking.len(), 0.25);
        let place = d.ranking.iter().position(|(m, _)| *m == d.member);
        let bottom = place.is_some_and(|p| k > 0 && p >= d.ranking.len() - k);
        assert_eq!(
            d.donor.is_some(),
            bottom,
            "the bottom quantile copies: {d:?}"
        );
        if let Some(donor) = d.donor {
            assert!(d.ranking[..k].contains(&donor), "from the top: {d:?}");
        }
    }
    let copies: Vec<&Decision> = ds.iter().filter(|d| d.donor.is_some()).collect();
    for c in &copies {
        assert!(
            err.contains(&format!("step {}:", c.step)),
            "said on the console: {err}"
        );
    }
    let names = members(&root);
    for c in &copies {
        // Its text event says so, at the first step it trained after the copy.
        let tb = common::tb_read(&names[c.member]);
        let notes = tb["text"]["pbt/exploit"]
            .as_array()
            .expect("pbt/exploit text");
        assert!(
            notes
                .iter()
                .any(|n| n[0] == c.step + 1 && n[1].as_str().unwrap().contains("copied")),
            "{notes:?}"
        );
    }
    assert_members_whole(&root);

    // HPARAMS: each member's session holds the values it ended with (its schedule's last) and
    // its lineage, and the experiment declares the lineage column.
    let manifest = Manifest::load(&root).unwrap();
    for (m, dir) in names.iter().enumerate() {
        let session = &common::tb_read(dir)["hparams"]["start"]["hparams"];
        let (_, last) = charlab::sweep::pbt::schedule(&manifest, m).pop().unwrap();
        for (key, value) in last {
            let shown = session[&key].as_f64().unwrap();
            assert!(
                (shown - value).abs() <= 1e-12 * value.abs(),
                "{m} {key}: {shown} vs {value}"
            );
        }
        let copied = copies.iter().filter(|c| c.member == m).collect::<Vec<_>>();
        let lineage = session["lineage"].as_str().unwrap();
        match copied.last() {
            Some(c) => assert!(lineage.contains(&format!("{}←{:03}", c.step, c.donor.unwrap().0))),
            None => assert_eq!(lineage, "-"),
        }
    }
    let declared = &common::tb_read(&root)["hparams"]["experiment"]["hparams"];
    assert!(
        declared.as_array().unwrap().iter().any(|h| h == "lineage"),
        "{declared}"
    );

    // compare shows who copied whom.
    let o = common::charlab(d, &["compare", root.to_str().unwrap()]);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("lineage"), "{table}");
    let c = copies[0];
    assert!(
        table.contains(&format!("{}←{:03}", c.step, c.donor.unwrap().0)),
        "{table}"
    );

    // The report draws the schedules and shows the lineage.
    let html = common::report(d, &root);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("each member&#x27;s schedule") || page.contains("each member's schedule")
    );
    assert!(
        page.contains("log10(lr) of every member"),
        "the schedules chart is drawn"
    );
    assert!(page.contains(&format!("{}←{:03}", c.step, c.donor.unwrap().0)));

    // The best member's schedule runs as one plain run from scratch.
    let replay = root.join("pbt-replay.toml");
    let text = std::fs::read_to_string(&replay).expect("pbt-replay.toml written");
    assert!(text.contains("Lineage"), "{text}");
    let out = d.join("replay");
    let o = common::charlab(
        d,
        &[
            "train",
            "--config",
            replay.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--plain",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(common::record(&out)["status"], "completed");
    // The members share the run seed, so the phases retrace the winner's lineage: the replay
    // reaches the winner's best val loss (up to float summation order at another thread count).
    // fp32 products (`pbt_file`): where `auto` is bf16 (Zen 4), a summation-order difference
    // that moves an operand across a bf16 rounding boundary grows to ~1e-3 within 60 steps.
    let best = |run: &Path| {
        common::record(run)["best_metrics"]["val_loss"]
            .as_f64()
            .unwrap()
    };
    let winner = names.iter().map(|m| best(m)).fold(f64::INFINITY, f64::min);
    assert!(
        (best(&out) - winner).abs() < 1e-3,
        "replay {} vs winner {winner}",
        best(&out)
    );
    assert!(
        !root
            .join(&names[0])
            .join("checkpoints/pbt-20.safetensors")
            .exists(),
        "snapshots removed"
    );

    // A copied member's config, lost, is rebuilt from its decisions, not from its first draw.
    let member = &names[copies[0].member];
    let config = member.join("config.toml");
    let before = std::fs::read_to_string(&config).unwrap();
    std::fs::remove_file(&config).unwrap();
    let o = common::charlab(d, &["sweep", &file, "--plain"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), before);
}

#[test]
fn phases_change_the_values_a_run_trains_with_from_their_step() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = |body: &str, out: &str| common::train_run(d, out, body, &[]);
    let (o, out) = train(
        "batch_size = 4\nseq_len = 16\nembed_dim = 16\nhidden = 32\nmax_steps = 30\n\
         eval_every = 10\nlog_every = 5\nhistogram_every = 0\nsample_length = 10\n\
         val_fraction = 0.1\ndevice = \"cpu\"\nlr = 0.001\n\
         [[phases]]\nstep = 10\nlr = 0.005\ndropout = 0.2\n[[phases]]\nstep = 20\nlr = 0.002\n",
        "run",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tb = common::tb_read(&out);
    let lr: Vec<(u64, f64)> = tb["scalars"]["lr"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
        .collect();
    for (step, v) in &lr {
        // The value logged at step s is the one step s trained with (from step s - 1).
        let want = match step - 1 {
            0..=9 => 0.001,
            10..=19 => 0.005,
            _ => 0.002,
        };
        assert!(
            (v - want).abs() < 1e-9,
            "lr at step {step}: {v}, want {want}"
        );
    }
    let dropout = tb["scalars"]["hparams/dropout"].as_array().unwrap();
    assert!(dropout.iter().any(|p| p[1].as_f64().unwrap() == 0.0));
    assert!(dropout
        .iter()
        .any(|p| (p[1].as_f64().unwrap() - 0.2).abs() < 1e-6));

    // Phases out of order, or setting what cannot change while a run trains, are refused.
    let (o, _) = train(
        "[[phases]]\nstep = 20\nlr = 0.1\n[[phases]]\nstep = 10\nlr = 0.2\n",
        "bad",
    );
    common::assert_user_error(&o, "phases out of order", &["phases"]);
    let (o, _) = train("[[phases]]\nstep = 10\nhidden = 64\n", "bad");
    common::assert_user_error(&o, "a shape key in a phase", &["phases", "hidden"]);
}

#[test]
fn on_a_terminal_a_pbt_sweep_counts_population_steps_and_prints_decisions_only() {
    // `script` (util-linux) gives the sweep a terminal, so it draws its progress bar.
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no `script` to give the sweep a terminal");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = pbt_file(d, "tty", 4, "jobs = 2");
    let exe = env!("CARGO_BIN_EXE_charlab");
    let o = std::process::Command::new("script")
        .args(["-qec", &format!("{exe} sweep {file}"), "/dev/null"])
        .current_dir(d)
        .env("CHARLAB_DATA", d.join("data"))
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{screen}");
    // The bar counts the population's steps: 4 members × 60 (this sweep ends before its
    // once-a-second update moves it; docs/pbt-terminal.txt shows one that does).
    assert!(screen.contains("population step 0/240"), "{screen}");
    assert!(screen.contains("step 20: "), "the decisions: {screen}");
    assert!(
        !screen.contains("paused at"),
        "no pauses without --verbose: {screen}"
    );
}

#[test]
fn the_same_pbt_sweep_one_member_at_a_time_decides_the_same_twice() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in ["once", "twice"] {
        let file = pbt_file(d, name, 3, "jobs = 1");
        // The second time with --verbose: each member's pause at each boundary is printed,
        // and printing it changes nothing the search decides.
        let verbose = name == "twice";
        let args = [
            &["sweep", &file, "--plain"][..],
            if verbose { &["--verbose"] } else { &[] },
        ];
        let o = common::charlab(d, &args.concat());
        let said = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{said}");
        let pauses = said
            .lines()
            .filter(|l| l.contains("paused at step"))
            .count();
        assert_eq!(pauses, if verbose { 6 } else { 0 }, "{said}");
    }
    let (a, b) = (
        decisions(&d.join("runs/once")),
        decisions(&d.join("runs/twice")),
    );
    assert_eq!(a.len(), 6);
    assert_eq!(a, b);
}

/// A PBT sweep file whose members come in two sizes (the small ones reach a boundary first, as
/// a real sweep's do), run `jobs` at a time.
fn two_speed_file(d: &Path, name: &str, jobs: usize) -> String {
    let file = pbt_file(d, name, 4, &format!("jobs = {jobs}"));
    let text = std::fs::read_to_string(d.join(&file)).unwrap();
    std::fs::write(d.join(&file), text + "hidden = { choice = [16, 128] }\n").unwrap();
    file
}

/// A sweep's decisions as who, where, the ranking's order, the donor and the new values.
fn shape(root: &Path) -> Vec<DecisionShape> {
    decisions(root)
        .into_iter()
        .map(|x| {
            let order: Vec<usize> = x.ranking.iter().map(|r| r.0).collect();
            (x.member, x.step, order, x.donor.map(|d| d.0), x.new)
        })
        .collect()
}

type DecisionShape = (
    usize,
    u64,
    Vec<usize>,
    Option<usize>,
    Vec<(String, serde_json::Value)>,
);

#[test]
fn a_deterministic_pbt_sweep_decides_the_same_two_at_a_time_as_one_at_a_time() {
    // Asynchronous PBT ranks a member against whoever has reached its boundary by then (with
    // members of two speeds and two jobs, not all of them); --deterministic waits for all of
    // them and decides in member order, so `jobs` changes nothing it decides.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (one, two) = (two_speed_file(d, "one", 1), two_speed_file(d, "two", 2));
    for file in [&one, &two] {
        let args = ["sweep", file.as_str(), "--plain", "--deterministic"];
        let o = common::charlab(d, &args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // The same decisions (the val losses themselves differ in the 8th digit: one job gets 2
    // threads, two get 1 each).
    let (a, b) = (shape(&d.join("runs/one")), shape(&d.join("runs/two")));
    assert_eq!(a.len(), 8);
    assert!(
        b.iter().all(|x| x.2.len() == 4),
        "every ranking is whole: {b:?}"
    );
    assert_eq!(a, b);
    let o = common::charlab(
        d,
        &["sweep", &two, "--deterministic", "--launcher", "slurm"],
    );
    common::assert_user_error(
        &o,
        "--deterministic on slurm",
        &["--deterministic", "local"],
    );
}

#[test]
fn a_deterministic_pbt_sweep_killed_and_rerun_decides_as_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (calm, killed) = (two_speed_file(d, "calm", 2), two_speed_file(d, "killed", 2));
    let args = |f: &str| {
        vec![
            "sweep".to_string(),
            f.into(),
            "--plain".into(),
            "--deterministic".into(),
        ]
    };
    let o = common::charlab(
        d,
        &args(&calm).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let root = d.join("runs/killed");
    let killed_args = args(&killed);
    let killed_args: Vec<&str> = killed_args.iter().map(String::as_str).collect();
    let mut child = common::spawn_quiet(d, &killed_args);
    common::wait_until(180, "five decisions", || {
        Manifest::load(&root).is_ok_and(|m| m.pbt.is_some_and(|p| p.decisions.len() >= 5))
    });
    common::kill("-KILL", child.id());
    let _ = child.wait();
    common::wait_until(60, "the workers to stop", || {
        members(&root)
            .iter()
            .all(|m| !charlab::run_dir::RunDir::new(m).is_training())
    });
    let o = common::charlab(d, &killed_args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(shape(&root), shape(&d.join("runs/calm")));
}

#[test]
fn a_pbt_sweep_killed_mid_search_keeps_its_decisions_and_writes_no_step_twice() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = pbt_file(d, "killed", 4, "jobs = 2");
    let root = d.join("runs/killed");
    let mut child = common::spawn_quiet(d, &["sweep", &file, "--plain"]);
    common::wait_until(180, "three decisions", || {
        Manifest::load(&root).is_ok_and(|m| m.pbt.is_some_and(|p| p.decisions.len() >= 3))
    });
    common::kill("-KILL", child.id());
    let _ = child.wait();
    let before = decisions(&root);
    // The workers follow their parent down (they checkpoint and stop on SIGTERM).
    common::wait_until(60, "the workers to stop", || {
        members(&root).iter().all(|m| {
            !std::fs::read_to_string(m.join("run.json")).is_ok_and(|t| t.contains("\"running\""))
                || !charlab::run_dir::RunDir::new(m).is_training()
        })
    });
    let o = common::charlab(d, &["sweep", &file, "--plain"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after = decisions(&root);
    // What was decided stays decided (and is done by now, if the kill came before); nothing is
    // decided twice.
    let mut at = common::assert_decisions_kept(&before, &after);
    at.dedup();
    assert_eq!(at.len(), after.len(), "a decision made twice: {after:?}");
    assert_eq!(after.len(), 8);
    assert!(after.iter().all(|d| d.applied));
    assert_members_whole(&root);
}

#[test]
fn pbt_refuses_what_makes_no_sense_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = pbt_file(d, "bad", 4, "");
    let base = std::fs::read_to_string(d.join(&file)).unwrap();
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "a grid",
            format!("{base}[grid]\nhidden = [16, 32]\n"),
            vec!["[grid]"],
        ),
        (
            "a pruning rule",
            base.replace("seed = 3\n", "seed = 3\npruning = { rule = \"median\" }\n"),
            vec!["pruning", "pbt"],
        ),
        (
            "an interval that is not a multiple of eval_every",
            base.replace("interval = 20", "interval = 15"),
            vec!["interval", "eval_every"],
        ),
        (
            "nothing to explore",
            base.replace(
                "lr = { log_uniform = [1e-4, 3e-2] }\ndropout = { uniform = [0.0, 0.3] }\n",
                "hidden = { choice = [16, 32] }\n",
            ),
            vec!["explores", "lr"],
        ),
        (
            "a TPE key",
            base.replace("interval = 20", "interval = 20\nstartup_trials = 3"),
            vec!["startup_trials", "TPE"],
        ),
    ];
    for (what, text, needles) in cases {
        std::fs::write(d.join(&file), text).unwrap();
        let o = common::charlab(d, &["sweep", &file, "--plain"]);
        common::assert_user_error(&o, what, &needles);
        assert!(!d.join("runs/bad").exists(), "{what}: nothing created");
    }
}

#[test]
fn a_pbt_sweep_stops_at_its_target_and_a_looser_rule_resumes_every_member_whole() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let f = pbt_file(d, "stop", 4, "jobs = 2\nstop = { target = 100.0 }");
    let text = std::fs::read_to_string(d.join(&f)).unwrap();
    let long = text
        .replace("max_steps = 60", "max_steps = 3000")
        .replace("interval = 20", "interval = 500");
    std::fs::write(d.join(&f), &long).unwrap();
    let o = common::charlab(d, &["sweep", &f, "--plain"]);
    let said = common::said(&o);
    assert!(o.status.success(), "{said}");
    assert!(
        said.contains("stopping the sweep: target reached"),
        "{said}"
    );
    let root = d.join("runs/stop");
    let status = |m: &PathBuf| {
        common::record(m)["status"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(
        members(&root).iter().any(|m| status(m) != "completed"),
        "stopped before the population ended"
    );
    std::fs::write(
        d.join(&f),
        long.replace("target = 100.0", "patience_minutes = 60"),
    )
    .unwrap();
    let o = common::charlab(d, &["sweep", &f, "--plain"]);
    assert!(o.status.success(), "{}", common::said(&o));
    for m in members(&root) {
        assert_eq!(status(&m), "completed", "{}", m.display());
        let steps = common::tb_steps(&common::tb_read(&m), "val/loss");
        assert_eq!(steps, (1..=300).map(|k| 10 * k).collect::<Vec<_>>());
    }
    assert!(
        !decisions(&root).is_empty(),
        "the population decided across the stop"
    );
}

//! The Slurm launcher against a real single-node Slurm (Debian's packages, brought up by
//! scripts/slurm-up.sh): a 4-trial sweep as a job array, two tasks at a time; one task is
//! cancelled mid-run (the watcher resubmits it) and one gets Slurm's time-limit warning SIGUSR1
//! (it checkpoints and requeues itself); every run is then complete, each step once for
//! TensorBoard's reader, and `compare` agrees. Skipped, with the reason printed, where Slurm
//! cannot be installed or started (not root, no package registry).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

struct SlurmDown;
impl Drop for SlurmDown {
    fn drop(&mut self) {
        let _ = Command::new(script("slurm-down.sh")).output();
    }
}

fn json(path: &Path) -> serde_json::Value {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

#[test]
fn a_sweep_runs_as_a_slurm_job_array_with_retry_and_requeue() {
    let up = Command::new(script("slurm-up.sh")).output().unwrap();
    if !up.status.success() {
        println!(
            "skipped: Slurm could not be brought up here: {}",
            String::from_utf8_lossy(&up.stderr).trim()
        );
        return;
    }
    let _down = SlurmDown;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::write_corpus(d);
    let steps = 3000;
    std::fs::write(
        d.join("big.toml"),
        format!(
            "[experiment]\nname = \"big\"\ncorpus = \"novel.txt\"\n[defaults]\nbatch_size = 4\n\
             seq_len = 16\nembed_dim = 16\nhidden = 64\nmax_steps = {steps}\neval_every = 500\n\
             log_every = 5\nhistogram_every = 0\nval_fraction = 0.1\ndevice = \"cpu\"\n\
             [grid]\nlr = [1e-3, 2e-3, 3e-3, 4e-3]\n[slurm]\ncpus_per_task = 1\n"
        ),
    )
    .unwrap();
    let log = d.join("watch.log");
    let t0 = Instant::now();
    let mut watcher = common::charlab_cmd(
        d,
        &[
            "sweep",
            "big.toml",
            "--launcher",
            "slurm",
            "--array-parallelism",
            "2",
        ],
    )
    .args(["--retries", "2", "--plain"])
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    let root = d.join("runs/big");
    let manifest_dirs = || -> Vec<PathBuf> {
        json(&root.join("manifest.json"))["trials"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|t| root.join(t["dir"].as_str().unwrap()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let steps_of = |dir: &Path| json(&dir.join("run.json"))["steps"].as_u64().unwrap_or(0);
    let status_of = |dir: &Path| {
        json(&dir.join("run.json"))["status"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let job = || {
        json(&root.join("slurm/jobs.json"))["submissions"][0][0]
            .as_str()
            .map(str::to_string)
    };

    // Cancel the first trial well under way (a node failure, an admin, a user's scancel): the
    // watcher resubmits it and it resumes from its checkpoint.
    let mut victim = None;
    common::wait_until(120, "a running trial to cancel", || {
        victim = manifest_dirs()
            .iter()
            .position(|p| status_of(p) == "running" && steps_of(p) >= 250);
        victim.is_some() && job().is_some()
    });
    let (victim, job) = (victim.unwrap(), job().unwrap());
    let victim_dir = manifest_dirs()[victim].clone();
    let o = Command::new("scancel")
        .arg(format!("{job}_{victim}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    common::wait_until(60, "the cancelled trial to checkpoint", || {
        status_of(&victim_dir) == "interrupted"
    });
    let at = steps_of(&victim_dir);
    let resubmitted = || {
        json(&root.join("slurm/jobs.json"))["submissions"]
            .as_array()
            .into_iter()
            .flatten()
            .skip(1)
            .find(|s| {
                s[1].as_array()
                    .unwrap()
                    .iter()
                    .any(|i| i.as_u64() == Some(victim as u64))
            })
            .map(|s| s[0].as_str().unwrap().to_string())
    };
    common::wait_until(60, "the cancelled trial to run again", || {
        resubmitted().is_some() && status_of(&victim_dir) == "running" && steps_of(&victim_dir) > at
    });
    let job2 = resubmitted().unwrap();

    // Then Slurm's time-limit warning (what `--signal=B:USR1@…` sends) to the same trial: it
    // checkpoints and requeues its own task. scancel delivers at once but then waits on the
    // requeue it causes: judge by the effect, not by its exit status.
    let mut signal = Command::new("scancel")
        .args(["--signal=USR1", "--batch"])
        .arg(format!("{job2}_{victim}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_until(60, "the warned trial to checkpoint", || {
        status_of(&victim_dir) == "interrupted"
    });
    common::wait_until(300, "the sweep to finish", || {
        watcher.try_wait().unwrap().is_some()
    });
    let _ = signal.kill();
    let _ = signal.wait();
    let took = t0.elapsed();
    let watch_log = std::fs::read_to_string(&log).unwrap();
    assert!(watcher.wait().unwrap().success(), "{watch_log}");
    println!(
        "slurm sweep: 4 trials × {steps} steps, submit to done in {:.1} s",
        took.as_secs_f64()
    );

    // The cancelled trial was resubmitted once, then requeued itself (no third submission).
    let victim_name = victim_dir.file_name().unwrap().to_string_lossy();
    assert!(
        watch_log.contains(&format!("trial {victim_name} ended without finishing"))
            && watch_log.contains("retry 1/"),
        "{watch_log}"
    );
    let jobs = json(&root.join("slurm/jobs.json"));
    assert_eq!(
        jobs["attempts"][victim.to_string()],
        2,
        "{jobs}\n{watch_log}"
    );
    let out = std::fs::read_to_string(root.join(format!("slurm/{job2}_{victim}.out")))
        .unwrap_or_default();
    assert!(out.contains("requeued slurm task"), "{out}");
    assert!(
        out.matches("resuming").count() >= 2,
        "resumed after the requeue: {out}"
    );

    let dirs = manifest_dirs();
    assert_eq!(dirs.len(), 4);
    for p in &dirs {
        assert_eq!(status_of(p), "completed", "{}", p.display());
        let tb = common::tb_read(p);
        let got = common::tb_steps(&tb, "train/loss");
        let want: Vec<u64> = (1..=steps / 5).map(|k| 5 * k).collect();
        assert_eq!(got, want, "{}: each step once", p.display());
    }
    let c = common::charlab(d, &["compare", "runs/big", "--format", "csv"]);
    let csv = String::from_utf8_lossy(&c.stdout);
    let done = format!(",completed,{steps}/{steps},");
    assert_eq!(
        csv.lines().filter(|l| l.contains(&done)).count(),
        4,
        "{csv}"
    );
    let st = common::charlab(d, &["sweep", "big.toml", "--launcher", "slurm", "--status"]);
    let table = String::from_utf8_lossy(&st.stdout);
    assert_eq!(
        table.lines().filter(|l| l.contains(" completed ")).count(),
        4,
        "{table}"
    );

    tpe_search_on_slurm(d);
    pbt_on_slurm(d);
    controls_on_slurm(d);
}

/// `stop` and `constraints` on the job array: a trial over max_params ends infeasible in its
/// task, and the watcher stops the sweep at its target (the running task checkpoints).
fn controls_on_slurm(d: &Path) {
    std::fs::write(
        d.join("controls.toml"),
        "[experiment]\nname = \"controls\"\ncorpus = \"novel.txt\"\n\
         stop = { target = 100.0 }\nconstraints = { max_params = 20000 }\n[defaults]\n\
         batch_size = 4\nseq_len = 16\nembed_dim = 16\nmax_steps = 100000\neval_every = 10\n\
         log_every = 10\nhistogram_every = 0\nval_fraction = 0.1\ndevice = \"cpu\"\n[grid]\n\
         hidden = [128, 16]\n[slurm]\ncpus_per_task = 1\n",
    )
    .unwrap();
    let args = ["sweep", "controls.toml", "--launcher", "slurm", "--plain"];
    let o = common::charlab(d, &args);
    let said = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{said}");
    assert!(
        said.contains("stopping the sweep: target reached"),
        "{said}"
    );
    let root = d.join("runs/controls");
    let m = charlab::sweep::manifest::Manifest::load(&root).unwrap();
    assert!(m.stopped.is_some_and(|w| w.contains("target reached")));
    let dirs: Vec<_> = m.trials.iter().map(|e| root.join(&e.dir)).collect();
    assert_eq!(common::record(&dirs[0])["status"], "infeasible");
    common::wait_until(60, "the stopped task to checkpoint", || {
        common::record(&dirs[1])["status"] == "interrupted"
    });
    assert!(common::record(&dirs[1])["steps"].as_u64().unwrap() < 100000);
}

/// A TPE search on the job array: proposals are submitted as results come in; a watcher that
/// dies and is started again continues the same search.
fn tpe_search_on_slurm(d: &Path) {
    std::fs::write(
        d.join("tpe.toml"),
        "[experiment]\nname = \"tpe\"\ncorpus = \"novel.txt\"\nseed = 3\n[defaults]\nbatch_size = 4\n\
         seq_len = 16\nembed_dim = 16\nmax_steps = 200\neval_every = 50\nlog_every = 10\n\
         histogram_every = 0\nval_fraction = 0.1\ndevice = \"cpu\"\n[search]\nmethod = \"tpe\"\n\
         trials = 5\nstartup_trials = 2\n[random]\nlr = { log_uniform = [1e-4, 3e-2] }\n\
         hidden = { choice = [16, 32] }\n[slurm]\ncpus_per_task = 1\n",
    )
    .unwrap();
    let args = [
        "sweep",
        "tpe.toml",
        "--launcher",
        "slurm",
        "--array-parallelism",
        "2",
        "--plain",
    ];
    let root = d.join("runs/tpe");
    let mut watcher = common::spawn_quiet(d, &args);
    common::wait_until(120, "three proposals", || {
        charlab::sweep::manifest::Manifest::load(&root).is_ok_and(|m| m.trials.len() >= 3)
    });
    watcher.kill().unwrap();
    watcher.wait().unwrap();
    let o = common::charlab(d, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = charlab::sweep::manifest::Manifest::load(&root).unwrap();
    assert_eq!(m.trials.len(), 5);
    assert_eq!(m.search.as_ref().unwrap().completed.len(), 5);
    for e in &m.trials {
        let run = root.join(&e.dir);
        assert_eq!(common::record(&run)["status"], "completed", "{}", e.dir);
        let tb = common::tb_read(&run);
        assert_eq!(
            common::tb_steps(&tb, "train/loss"),
            (1..=20).map(|k| 10 * k).collect::<Vec<_>>(),
            "{}: each step once",
            e.dir
        );
    }
    common::assert_proposals_replay(d, "tpe.toml", "tpe");
}

/// Population-based training on the job array: each piece of a member is a task and the
/// watcher decides between them; a watcher killed mid-search leaves the paused members waiting,
/// and the same command run again decides what is due, and nothing twice.
fn pbt_on_slurm(d: &Path) {
    std::fs::write(
        d.join("pbt.toml"),
        "[experiment]\nname = \"pbt\"\ncorpus = \"novel.txt\"\nseed = 3\n[defaults]\nbatch_size = 4\n\
         seq_len = 16\nembed_dim = 16\nhidden = 32\nmax_steps = 60\neval_every = 10\n\
         log_every = 5\nhistogram_every = 0\nval_fraction = 0.1\ndevice = \"cpu\"\n[search]\n\
         method = \"pbt\"\npopulation = 4\ninterval = 20\n[random]\n\
         lr = { log_uniform = [1e-4, 3e-2] }\ndropout = { uniform = [0.0, 0.3] }\n\
         [slurm]\ncpus_per_task = 1\n",
    )
    .unwrap();
    let args = [
        "sweep",
        "pbt.toml",
        "--launcher",
        "slurm",
        "--array-parallelism",
        "2",
        "--plain",
    ];
    let root = d.join("runs/pbt");
    let decisions = || {
        charlab::sweep::manifest::Manifest::load(&root)
            .ok()
            .and_then(|m| m.pbt)
            .map(|p| p.decisions)
            .unwrap_or_default()
    };
    let mut watcher = common::spawn_quiet(d, &args);
    common::wait_until(180, "two decisions", || decisions().len() >= 2);
    watcher.kill().unwrap();
    watcher.wait().unwrap();
    let before = decisions();
    let o = common::charlab(d, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after = decisions();
    // What was decided stays decided (and is done by now, if the kill came before).
    let at = common::assert_decisions_kept(&before, &after);
    let want: Vec<(usize, u64)> = (0..4).flat_map(|m| [(m, 20), (m, 40)]).collect();
    assert_eq!(
        at,
        want,
        "each member decided once per boundary: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(after.iter().all(|x| x.applied));
    assert!(
        after.iter().any(|x| x.donor.is_some()),
        "someone copied: {after:?}"
    );
    for run in common::run_dirs(&root) {
        assert_eq!(
            common::record(&run)["status"],
            "completed",
            "{}",
            run.display()
        );
        let tb = common::tb_read(&run);
        assert_eq!(
            common::tb_steps(&tb, "val/loss"),
            vec![10, 20, 30, 40, 50, 60],
            "{}: each step once",
            run.display()
        );
        assert!(tb["scalars"]["hparams/lr"].is_array());
    }
    assert!(root.join("pbt-replay.toml").exists());
}

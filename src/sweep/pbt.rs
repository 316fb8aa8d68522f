//! Population-based training (Jaderberg et al. 2017), asynchronous as Ray Tune's: the
//! `[random]` draw gives `population` members, each a run of the sweep trained in pieces of
//! `interval` steps by ordinary `sweep-worker`s (the worker pauses it at each boundary). Before a
//! member's next piece, it is ranked against every member that has reached the same boundary
//! (their val loss there); in the bottom `quantile` it copies a top member's checkpoint (weights,
//! optimizer state, carried state and data position) and config, then explores: each explored
//! key is drawn anew with probability `resample`, else multiplied by one of `factors` (a choice
//! moves to a neighbour), inside its domain.
//!
//! Every decision is a pure function of (seed, member, step, the ranking it saw) and is written
//! to the manifest before it is acted on, and acting on it is idempotent: a sweep killed at any
//! point and run again applies what was decided and decides nothing twice. A member's weights at
//! a boundary are kept (`checkpoints/pbt-<step>.safetensors`) until every member has passed it,
//! so a copy always takes the donor as it was ranked.

use super::manifest::{Decision, Manifest};
use super::plan::{self, PbtSearch, Plan, Sampler};
use crate::checkpoint;
use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::run_dir::{Checkpoint, RunDir, RunStatus};
use candle_core::Device;
use std::path::{Path, PathBuf};
use toml::Value;

/// Members in the bottom (and top) quantile of a ranking of `n`: at least one, at most half.
pub fn quantile_count(n: usize, quantile: f64) -> usize {
    ((n as f64 * quantile).ceil() as usize).min(n / 2)
}

/// The member `member` copies, given the ranking at its boundary (best first): one of the top
/// quantile, drawn, when it is in the bottom quantile; `None` otherwise.
pub fn pick_donor(
    s: &PbtSearch,
    rng: &mut Rng,
    member: usize,
    ranking: &[(usize, f64)],
) -> Option<(usize, f64)> {
    let k = quantile_count(ranking.len(), s.quantile);
    let place = ranking.iter().position(|(m, _)| *m == member)?;
    if k == 0 || place < ranking.len() - k {
        return None;
    }
    Some(ranking[(rng.next_u64() % k as u64) as usize])
}

/// An explored key's next value: drawn anew from its domain with probability `resample`, else
/// the value times one of `factors` (a choice: the next or previous one), kept in the domain.
pub fn explore_value(s: &PbtSearch, rng: &mut Rng, domain: &Sampler, v: &Value) -> Value {
    if rng.uniform_f64() < s.resample {
        return plan::space::draw(domain, rng, false);
    }
    match domain {
        Sampler::Choice(c) => {
            let at = c.iter().position(|x| x == v).unwrap_or(0);
            let up = rng.next_u64().is_multiple_of(2);
            let next = if up {
                (at + 1).min(c.len() - 1)
            } else {
                at.saturating_sub(1)
            };
            c[next].clone()
        }
        _ => {
            let x = plan::space::as_f64(v).unwrap_or(0.0);
            let f = s.factors[(rng.next_u64() % s.factors.len() as u64) as usize];
            let (lo, hi) = plan::sampler_bounds(domain).unwrap_or((f64::MIN, f64::MAX));
            plan::space::number((x * f).clamp(lo, hi), false)
        }
    }
}

/// What a decision comes to: the donor (with its val loss) if any, and the explored values after.
pub type Outcome = (Option<(usize, f64)>, Vec<(String, Value)>);

/// The generator of member `member`'s decision at `step`.
fn decision_rng(seed: u64, member: usize, step: u64) -> Rng {
    Rng::new(
        seed ^ (member as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step.rotate_left(32),
        17,
    )
}

/// Member `member`'s decision at `step`: whom it copies (if anyone) and its explored values
/// after. `values(m)` is member m's explored values now; `domains` the explored keys' samplers.
pub fn decide(
    s: &PbtSearch,
    seed: u64,
    (member, step): (usize, u64),
    ranking: &[(usize, f64)],
    domains: &[(String, Sampler)],
    values: impl Fn(usize) -> Vec<(String, Value)>,
) -> Outcome {
    let mut rng = decision_rng(seed, member, step);
    let Some(donor) = pick_donor(s, &mut rng, member, ranking) else {
        return (None, values(member));
    };
    let new = values(donor.0)
        .into_iter()
        .map(|(k, v)| match domains.iter().find(|(n, _)| *n == k) {
            Some((_, d)) => {
                let nv = explore_value(s, &mut rng, d, &v);
                (k, nv)
            }
            None => (k, v),
        })
        .collect();
    (Some(donor), new)
}

/// True for a member its worker paused at a boundary (not stopped by a signal or a crash).
pub fn is_paused(record: &crate::run_dir::RunRecord) -> bool {
    record.status == RunStatus::Interrupted
        && record
            .message
            .as_deref()
            .is_some_and(|m| m.starts_with(crate::train::PAUSED))
}

/// Member `m`'s config as its decisions left it (`None` when it never copied): what its
/// `config.toml` is rebuilt from when that file is damaged or lost.
pub fn current_config(manifest: &Manifest, m: usize) -> Option<RunConfig> {
    manifest
        .pbt
        .as_ref()?
        .decisions
        .iter()
        .rfind(|d| d.member == m && d.config.is_some())?
        .config
        .clone()
}

/// A member's boundary snapshot.
fn snapshot_path(run: &RunDir, step: u64) -> PathBuf {
    run.checkpoints().join(format!("pbt-{step}.safetensors"))
}

/// Keeps a member's `last` checkpoint, which is at `step`, as its snapshot there (once).
fn snapshot(run: &RunDir, step: u64) -> Result<()> {
    let snap = snapshot_path(run, step);
    if !snap.exists() {
        let last = run.checkpoint(Checkpoint::Last);
        let bytes = std::fs::read(&last).map_err(|e| Error::io(&last, e))?;
        crate::atomic::write(&snap, &bytes)?;
    }
    Ok(())
}

fn to_json(v: &Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// The population of a PBT sweep, as the launcher drives it.
pub struct Population<'a> {
    plan: &'a Plan,
    pbt: &'a PbtSearch,
    root: PathBuf,
}

impl<'a> Population<'a> {
    /// The population of `plan`, when it is a PBT sweep.
    pub fn new(plan: &'a Plan, root: &Path) -> Option<Self> {
        Some(Population {
            pbt: plan.pbt.as_ref()?,
            plan,
            root: root.to_path_buf(),
        })
    }

    fn run(&self, manifest: &Manifest, member: usize) -> RunDir {
        RunDir::new(self.root.join(&manifest.trials[member].dir))
    }

    /// The steps the whole population trains (0 where a member's length is set in epochs).
    pub fn total_steps(&self) -> u64 {
        self.plan
            .trials
            .iter()
            .map(|t| t.config.max_steps.unwrap_or(0))
            .sum()
    }

    /// On (re)start: the decisions must be this sweep file's, and what was decided but not
    /// yet done is done now.
    pub fn catch_up(&self, manifest: &mut Manifest) -> Result<()> {
        let key = self.plan.pbt_key();
        let Some(state) = &manifest.pbt else {
            return Ok(());
        };
        if state.key != key {
            return Err(Error::usage(
                &self.root,
                "the sweep file's population-based search changed since its decisions were \
                 made (defaults, [random], [search] or seed): run it under another experiment \
                 name",
            ));
        }
        let undone: Vec<usize> = (0..state.decisions.len())
            .filter(|&i| !state.decisions[i].applied)
            .collect();
        for i in undone {
            self.apply(manifest, i)?;
        }
        manifest.save(&self.root)
    }

    /// The step member `member` stands on: where its next piece starts.
    pub fn stands_at(&self, manifest: &Manifest, member: usize) -> Result<u64> {
        self.step_of(&self.run(manifest, member))
    }

    /// A member's step: its last checkpoint's (0 without one).
    fn step_of(&self, run: &RunDir) -> Result<u64> {
        let path = run.checkpoint(Checkpoint::Last);
        if !path.exists() {
            return Ok(0);
        }
        Ok(checkpoint::cursor(&path)?.step)
    }

    /// A member's worker paused it at a boundary: its checkpoint there is kept for the others.
    /// Returns the boundary's step.
    pub fn paused(&self, manifest: &Manifest, member: usize) -> Result<u64> {
        let run = self.run(manifest, member);
        let step = self.step_of(&run)?;
        snapshot(&run, step)?;
        Ok(step)
    }

    /// Before a member's next piece: its decision at the boundary it stands on, when that is
    /// due and not made yet, recorded and applied. Returns a line for the console.
    pub fn before_piece(&self, manifest: &mut Manifest, member: usize) -> Result<Option<String>> {
        let run = self.run(manifest, member);
        let step = self.step_of(&run)?;
        let total = manifest_total(&run)?;
        let due = step > 0 && step.is_multiple_of(self.pbt.interval) && step < total;
        let decided = self
            .decisions(manifest)
            .any(|d| d.member == member && d.step == step);
        if !due || decided {
            return Ok(None);
        }
        snapshot(&run, step)?;
        let ranking = self.ranking(manifest, step);
        let values = |m: usize| self.values(manifest, m);
        let (donor, new) = decide(
            self.pbt,
            self.plan.experiment.seed,
            (member, step),
            &ranking,
            &self.domains(),
            values,
        );
        let old = self.values(manifest, member);
        let config = match donor {
            Some((from, _)) => {
                let mut cfg = self.run(manifest, from).load_config()?;
                for (k, v) in &new {
                    if let Some(x) = plan::space::as_f64(v) {
                        cfg.set_explorable(k, x);
                    }
                }
                Some(cfg)
            }
            None => None,
        };
        let d = Decision {
            member,
            step,
            ranking,
            donor,
            old: old.iter().map(|(k, v)| (k.clone(), to_json(v))).collect(),
            new: new.iter().map(|(k, v)| (k.clone(), to_json(v))).collect(),
            config,
            applied: false,
        };
        let line = describe(manifest, &d);
        let Some(state) = manifest.pbt.as_mut() else {
            return Ok(None);
        };
        let i = state.decisions.len();
        state.decisions.push(d);
        // Written before it is acted on: a rerun applies it, never decides it again.
        manifest.save(&self.root)?;
        self.apply(manifest, i)?;
        manifest.save(&self.root)?;
        self.tidy(manifest);
        Ok(line)
    }

    /// Decisions made so far.
    fn decisions<'m>(&self, manifest: &'m Manifest) -> impl Iterator<Item = &'m Decision> {
        manifest.pbt.iter().flat_map(|p| p.decisions.iter())
    }

    /// The members that have reached `step` (their snapshot there exists), with their val loss
    /// there, best first.
    fn ranking(&self, manifest: &Manifest, step: u64) -> Vec<(usize, f64)> {
        let mut out: Vec<(usize, f64)> = (0..manifest.trials.len())
            .filter_map(|m| {
                let run = self.run(manifest, m);
                if !snapshot_path(&run, step).exists() {
                    return None;
                }
                let rec = run.record()?;
                let e = rec.evals.iter().find(|e| e.step == step)?;
                e.val_loss.is_finite().then_some((m, e.val_loss))
            })
            .collect();
        out.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        out
    }

    fn domains(&self) -> Vec<(String, Sampler)> {
        self.plan
            .space
            .random
            .iter()
            .filter(|(k, _)| self.pbt.explored.contains(k))
            .cloned()
            .collect()
    }

    /// Member m's explored values, from its config now.
    fn values(&self, manifest: &Manifest, m: usize) -> Vec<(String, Value)> {
        let cfg = self.run(manifest, m).load_config().ok();
        self.pbt
            .explored
            .iter()
            .filter_map(|k| {
                let v = cfg.as_ref()?.explorable(k)?;
                Some((k.clone(), Value::Float(v)))
            })
            .collect()
    }

    /// Does decision `i`: a copy of the donor's snapshot and config with the new values.
    /// Idempotent: the snapshot and the decision say everything it writes.
    fn apply(&self, manifest: &mut Manifest, i: usize) -> Result<()> {
        let Some(d) = manifest.pbt.as_ref().map(|p| p.decisions[i].clone()) else {
            return Ok(());
        };
        if let Some((donor, _)) = d.donor {
            let me = self.run(manifest, d.member);
            let from = self.run(manifest, donor);
            let (tensors, cursor) = checkpoint::load(&snapshot_path(&from, d.step), &Device::Cpu)?;
            // The member's own count and best so far go on; the rest is the donor's.
            let mine = checkpoint::cursor(&snapshot_path(&me, d.step))?;
            let cursor = checkpoint::Cursor {
                tokens: mine.tokens,
                elapsed_secs: mine.elapsed_secs,
                best_val_loss: mine.best_val_loss,
                best_step: mine.best_step,
                ..cursor
            };
            if let Some(cfg) = &d.config {
                me.save_config(cfg)?;
            }
            // No fallback to the member's own weights: the copy is its checkpoint now.
            let _ = std::fs::remove_file(me.checkpoint(Checkpoint::Previous));
            checkpoint::save(&me.checkpoint(Checkpoint::Last), &tensors, &cursor)?;
        }
        if let Some(p) = manifest.pbt.as_mut() {
            p.decisions[i].applied = true;
        }
        Ok(())
    }

    /// Removes the boundary snapshots no member will rank against or copy again: those at
    /// steps every unfinished member has passed.
    fn tidy(&self, manifest: &Manifest) {
        let lowest = (0..manifest.trials.len())
            .filter_map(|m| {
                let run = self.run(manifest, m);
                if run.status().is_some_and(RunStatus::is_final) {
                    return None;
                }
                let decided = self
                    .decisions(manifest)
                    .filter(|d| d.member == m)
                    .map(|d| d.step)
                    .max()
                    .unwrap_or(0);
                Some(decided)
            })
            .min();
        for m in 0..manifest.trials.len() {
            let dir = self.run(manifest, m).checkpoints();
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let step = name
                    .strip_prefix("pbt-")
                    .and_then(|r| r.strip_suffix(".safetensors"))
                    .and_then(|n| n.parse::<u64>().ok());
                if step.is_some_and(|s| lowest.is_none_or(|l| s < l)) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// When every member has finished: writes the best member's schedule as a plain run config
    /// (`pbt-replay.toml`) and removes the snapshots. Returns the path written.
    pub fn finish(&self, manifest: &Manifest) -> Result<Option<PathBuf>> {
        let all_final = (0..manifest.trials.len()).all(|m| {
            self.run(manifest, m)
                .status()
                .is_some_and(RunStatus::is_final)
        });
        if !all_final {
            return Ok(None);
        }
        self.tidy(manifest);
        let Some((text, _)) = replay(&self.root, manifest)? else {
            return Ok(None);
        };
        let path = self.root.join("pbt-replay.toml");
        crate::atomic::write(&path, text.as_bytes())?;
        Ok(Some(path))
    }
}

/// A run's total steps, from its config (PBT members run `max_steps`).
fn manifest_total(run: &RunDir) -> Result<u64> {
    Ok(run.load_config()?.max_steps.unwrap_or(u64::MAX))
}

/// A decision as one line: "step 400: copied 003-… (val 4.21), lr 0.002 → 0.0024".
pub fn describe(manifest: &Manifest, d: &Decision) -> Option<String> {
    let (donor, score) = d.donor?;
    let changes: Vec<String> = d
        .old
        .iter()
        .zip(&d.new)
        .map(|((k, a), (_, b))| format!("{k} {a} → {b}"))
        .collect();
    Some(format!(
        "step {}: {} copied {} (val {score:.4}), {}",
        d.step,
        manifest.trials[d.member].dir,
        manifest.trials[donor].dir,
        changes.join(", ")
    ))
}

/// Member `member`'s lineage: (step, donor) for each copy, oldest first.
pub fn lineage(manifest: &Manifest, member: usize) -> Vec<(u64, usize)> {
    manifest
        .pbt
        .iter()
        .flat_map(|p| &p.decisions)
        .filter(|d| d.member == member && d.applied)
        .filter_map(|d| Some((d.step, d.donor?.0)))
        .collect()
}

/// Member `member`'s lineage as text: `200←005 400←001` (copied member 005 at step 200, ...),
/// `-` when it copied no one (compare's column, the HParams `lineage` value).
pub fn lineage_text(manifest: &Manifest, member: usize) -> String {
    let copies = lineage(manifest, member);
    if copies.is_empty() {
        return "-".into();
    }
    copies
        .iter()
        .map(|(step, donor)| format!("{step}←{donor:03}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Member `m`'s schedule: its explored values from step 0 (its draw) and after each of its
/// decisions, as (step, values).
pub fn schedule(manifest: &Manifest, m: usize) -> Vec<(u64, Vec<(String, f64)>)> {
    let Some(state) = &manifest.pbt else {
        return Vec::new();
    };
    let initial: Vec<(String, f64)> = manifest.trials[m]
        .overrides
        .iter()
        .filter(|(k, _)| state.explored.contains(k))
        .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
        .collect();
    let mut out = vec![(0, initial.clone())];
    for d in state
        .decisions
        .iter()
        .filter(|d| d.member == m && d.applied)
    {
        out.push((d.step, values_at(manifest, &initial, m, d.step)));
    }
    out
}

/// The explored values member `m` trained with from `step` on: its initial ones, then each of
/// its decisions' up to `step`.
fn values_at(
    manifest: &Manifest,
    initial: &[(String, f64)],
    m: usize,
    step: u64,
) -> Vec<(String, f64)> {
    let mut v = initial.to_vec();
    for d in manifest.pbt.iter().flat_map(|p| &p.decisions) {
        if d.member == m && d.step <= step {
            for (k, x) in &d.new {
                if let (Some(slot), Some(x)) = (v.iter_mut().find(|(n, _)| n == k), x.as_f64()) {
                    slot.1 = x;
                }
            }
        }
    }
    v
}

/// Whose training the winner's weights went through: (from step, member), oldest first. Each
/// copy hands the history before it to the donor.
pub fn ancestry(manifest: &Manifest, winner: usize) -> Vec<(u64, usize)> {
    let mut pieces: Vec<(u64, usize)> = Vec::new();
    let (mut member, mut upto) = (winner, u64::MAX);
    loop {
        match lineage(manifest, member)
            .into_iter()
            .rfind(|(s, _)| *s < upto)
        {
            Some((s, donor)) => {
                pieces.push((s, member));
                member = donor;
                upto = s;
            }
            None => {
                pieces.push((0, member));
                break;
            }
        }
    }
    pieces.reverse();
    pieces
}

/// The values along `pieces`: those at step 0 set on `cfg`, each later change a phase.
fn phases(
    manifest: &Manifest,
    pieces: &[(u64, usize)],
    initial: &dyn Fn(usize) -> Vec<(String, f64)>,
    cfg: &mut RunConfig,
) -> Vec<crate::config::Phase> {
    let mut phases: Vec<crate::config::Phase> = Vec::new();
    let mut last: Vec<(String, f64)> = Vec::new();
    for &(from, m) in pieces {
        let v = values_at(manifest, &initial(m), m, from);
        if v == last {
            continue;
        }
        if from == 0 {
            for (k, x) in &v {
                cfg.set_explorable(k, *x);
            }
        } else {
            phases.push(crate::config::Phase {
                step: from,
                values: v.iter().cloned().collect(),
            });
        }
        last = v;
    }
    phases
}

/// The best member's schedule as a run config `charlab train` runs from scratch: its final
/// config with the explored keys set as its lineage had them at step 0 and `[[phases]]` where
/// they changed. `None` before a member has a validation loss.
pub fn replay(root: &Path, manifest: &Manifest) -> Result<Option<(String, usize)>> {
    let run = |m: usize| RunDir::new(root.join(&manifest.trials[m].dir));
    let best = (0..manifest.trials.len())
        .filter_map(|m| Some((m, run(m).record()?.best_metrics?.val_loss)))
        .filter(|(_, l)| l.is_finite())
        .min_by(|a, b| a.1.total_cmp(&b.1));
    let Some((winner, loss)) = best else {
        return Ok(None);
    };
    let mut cfg = run(winner).load_config()?;
    let explored: Vec<String> = manifest
        .pbt
        .iter()
        .flat_map(|p| &p.decisions)
        .flat_map(|d| d.new.iter().map(|(k, _)| k.clone()))
        .fold(Vec::new(), |mut acc, k| {
            if !acc.contains(&k) {
                acc.push(k);
            }
            acc
        });
    let initial = |m: usize| -> Vec<(String, f64)> {
        let e = &manifest.trials[m];
        explored
            .iter()
            .filter_map(|k| {
                let (_, v) = e.overrides.iter().find(|(n, _)| n == k)?;
                Some((k.clone(), v.as_f64()?))
            })
            .collect()
    };
    let pieces = ancestry(manifest, winner);
    cfg.phases = phases(manifest, &pieces, &initial, &mut cfg);
    cfg.device = "auto".into();
    cfg.threads = None;
    let body = toml::to_string(&cfg).map_err(|e| Error::Run {
        path: root.to_path_buf(),
        message: format!("cannot write the replay config: {e}"),
    })?;
    let path_of = |m: usize| manifest.trials[m].dir.clone();
    let header = format!(
        "# The schedule population-based training found for its best member, {} (best val/loss \
         {loss:.4}),\n# replayed by one run from scratch: `charlab train --config THIS --out DIR`.\n\
         # Lineage: {}.\n\n",
        path_of(winner),
        pieces
            .iter()
            .map(|(s, m)| format!("{} from step {s}", path_of(*m)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Some((header + &body, winner)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(quantile: f64, resample: f64) -> PbtSearch {
        PbtSearch {
            population: 8,
            interval: 100,
            quantile,
            resample,
            factors: vec![1.2, 0.8],
            explored: vec!["lr".into(), "dropout".into()],
        }
    }

    /// Eight members ranked best first: member m's loss is 1 + m / 10, so 0 is best, 7 worst.
    fn ranking() -> Vec<(usize, f64)> {
        (0..8).map(|m| (m, 1.0 + m as f64 / 10.0)).collect()
    }

    #[test]
    fn quantiles_take_at_least_one_member_and_at_most_half() {
        assert_eq!(quantile_count(8, 0.25), 2);
        assert_eq!(quantile_count(5, 0.25), 2);
        assert_eq!(quantile_count(2, 0.25), 1);
        assert_eq!(quantile_count(1, 0.25), 0, "a member alone copies no one");
        assert_eq!(quantile_count(4, 0.5), 2);
    }

    #[test]
    fn only_the_bottom_quantile_copies_and_only_from_the_top() {
        let s = settings(0.25, 0.25);
        for member in 0..8 {
            for seed in 0..50 {
                let mut rng = decision_rng(seed, member, 100);
                let donor = pick_donor(&s, &mut rng, member, &ranking());
                match member {
                    6 | 7 => {
                        let (d, loss) = donor.expect("the bottom quarter copies");
                        assert!(d == 0 || d == 1, "from the top quarter, not {d}");
                        assert_eq!(loss, 1.0 + d as f64 / 10.0);
                    }
                    _ => assert_eq!(donor, None, "member {member} keeps its own"),
                }
            }
        }
        // Both of the top quarter are drawn over the seeds.
        let donors: std::collections::BTreeSet<usize> = (0..50)
            .filter_map(|seed| pick_donor(&s, &mut decision_rng(seed, 7, 100), 7, &ranking()))
            .map(|d| d.0)
            .collect();
        assert_eq!(donors.into_iter().collect::<Vec<_>>(), vec![0, 1]);
        // A member not in the ranking (it has not reached the step) decides nothing.
        assert_eq!(pick_donor(&s, &mut Rng::new(1, 1), 9, &ranking()), None);
    }

    #[test]
    fn exploring_perturbs_by_a_factor_or_resamples_inside_the_domain() {
        let lr = Sampler::LogUniform(1e-4, 1e-2);
        let never = settings(0.25, 0.0);
        let mut rng = Rng::new(3, 3);
        for _ in 0..100 {
            let v = explore_value(&never, &mut rng, &lr, &Value::Float(2e-3));
            let x = plan::space::as_f64(&v).unwrap();
            assert!(
                (x - 2.4e-3).abs() < 1e-9 || (x - 1.6e-3).abs() < 1e-9,
                "2e-3 × 1.2 or × 0.8, not {x}"
            );
        }
        // At the domain's edge the product is clamped into it.
        for _ in 0..50 {
            let v = explore_value(&never, &mut rng, &lr, &Value::Float(1e-2));
            assert!(plan::space::as_f64(&v).unwrap() <= 1e-2);
        }
        let always = settings(0.25, 1.0);
        let drawn: Vec<f64> = (0..100)
            .map(|_| explore_value(&always, &mut rng, &lr, &Value::Float(2e-3)))
            .map(|v| plan::space::as_f64(&v).unwrap())
            .collect();
        assert!(drawn.iter().all(|x| (1e-4..=1e-2).contains(x)));
        assert!(drawn.iter().any(|x| *x < 1e-3) && drawn.iter().any(|x| *x > 4e-3));
        // A choice moves to a neighbour.
        let choice = Sampler::Choice(vec![
            Value::Float(0.0),
            Value::Float(0.2),
            Value::Float(0.4),
        ]);
        for _ in 0..50 {
            let v = explore_value(&never, &mut rng, &choice, &Value::Float(0.2));
            assert!(v == Value::Float(0.0) || v == Value::Float(0.4), "{v}");
        }
    }

    #[test]
    fn a_decision_is_a_pure_function_of_seed_member_step_and_ranking() {
        let s = settings(0.25, 0.25);
        let domains = vec![
            ("lr".to_string(), Sampler::LogUniform(1e-4, 1e-2)),
            ("dropout".to_string(), Sampler::Uniform(0.0, 0.5)),
        ];
        let values = |m: usize| {
            vec![
                ("lr".to_string(), Value::Float(1e-3 * (m + 1) as f64)),
                ("dropout".to_string(), Value::Float(0.05 * m as f64)),
            ]
        };
        let a = decide(&s, 7, (7, 200), &ranking(), &domains, values);
        let b = decide(&s, 7, (7, 200), &ranking(), &domains, values);
        assert_eq!(a, b, "same inputs, same decision");
        let (donor, new) = a;
        let (d, _) = donor.expect("the worst member copies");
        // The new values start from the donor's and change by a factor or a fresh draw.
        assert!(d <= 1, "from the top quarter");
        for (k, v) in &new {
            let x = plan::space::as_f64(v).unwrap();
            let (_, dom) = domains.iter().find(|(n, _)| n == k).unwrap();
            let (lo, hi) = plan::sampler_bounds(dom).unwrap();
            assert!((lo..=hi).contains(&x), "{k} = {x} outside its domain");
        }
        // A member at the top keeps its values; another seed or step may decide otherwise.
        assert_eq!(
            decide(&s, 7, (0, 200), &ranking(), &domains, values),
            (None, values(0))
        );
        let others: Vec<_> = (0..20u64)
            .map(|seed| decide(&s, seed, (7, 200), &ranking(), &domains, values))
            .collect();
        assert!(others.iter().any(|o| *o != others[0]));
    }
}

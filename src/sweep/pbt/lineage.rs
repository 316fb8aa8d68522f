//! What a population's decisions come to, read back from the manifest: the log's line for a
//! decision, each member's lineage and schedule (compare's column, the HParams value, the
//! scalars), and the best member's schedule replayed as one run.

use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::run_dir::RunDir;
use crate::sweep::manifest::{Decision, Manifest};
use std::path::Path;

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

//! A sweep's pruning rule: at an evaluation, a trial's val loss against its siblings' at the
//! same step, once `min_trials` of them have reached it. `median` prunes a trial worse than
//! their median (from the evaluation after the warm-up on); `halving` (successive halving, as
//! ASHA) decides only at rung evaluations, warm-up × eta^k, and keeps a trial only among the
//! best 1/eta of all trials at that step; `hyperband` deals the trials into brackets, each a
//! halving of its own among its own trials, bracket b's rungs starting at warm-up × eta^b (the
//! last bracket never prunes). The rule itself is [`decide`], a pure function; the trainer's
//! hook ([`hook`]) only reads the siblings' records.
//!
//! Under every rule, an early cut ([`hopeless`]) comes first: at a tenth of its steps, long
//! before the first evaluation of a short trial, a trial whose training loss has come down far
//! less than its best sibling's is stopped, as soon as one sibling has passed that point (the
//! first trial there waits for one, training on: [`early_verdict`]). A
//! search proposes such trials often (a learning rate a decade too low, a startup draw in a
//! poor corner) and the rules above let a third to a half of them run to their end
//! (Hyperband's last bracket, halving's first rung). The training loss costs nothing to read,
//! and a gap that large is not noise.

use super::manifest::Manifest;
use super::plan::{PruneRule, Pruning};
use crate::run_dir::RunDir;
use crate::train::{PruneHook, Reading, Verdict};
use std::path::Path;
use std::sync::Arc;

/// How many brackets a trial of `evals` evaluations has: under `hyperband`, one per rung the
/// first bracket has before the end and one that never prunes (Hyperband's `s_max + 1` where
/// `evals` is a power of eta, as Optuna's `HyperbandPruner` counts them; Optuna's last bracket
/// prunes at its one rung otherwise); one under the other rules.
pub fn brackets(rule: &Pruning, evals: u64) -> usize {
    if rule.rule != PruneRule::Hyperband {
        return 1;
    }
    1 + rungs(rule, 0).take_while(|&r| r < evals).count()
}

/// The rung evaluations of `bracket` under `halving` or `hyperband`: warm-up × eta^(bracket + k)
/// for k = 0, 1, … (ending at u64's limit).
fn rungs(rule: &Pruning, bracket: usize) -> impl Iterator<Item = u64> {
    let eta = rule.eta.max(2) as u64;
    let first = (0..bracket).fold(rule.warmup_evals.max(1) as u64, |r, _| {
        r.saturating_mul(eta)
    });
    std::iter::successors(Some(first), move |&r| {
        (r < u64::MAX).then(|| r.saturating_mul(eta))
    })
}

/// The bracket of trial `index` (of trials of `evals` evaluations). Bracket b of B gets
/// Hyperband's share of the trials, `⌈B · eta^s / (s + 1)⌉` with `s = B − 1 − b` (Optuna's
/// allocation: most to the bracket that prunes soonest, as each of its trials costs least),
/// dealt in a smooth round robin so that the first few trials already meet every bracket:
/// a pure function of the index, so a resumed or Slurm sweep deals the same way.
pub fn bracket(rule: &Pruning, index: usize, evals: u64) -> usize {
    let n = brackets(rule, evals);
    if n == 1 {
        return 0;
    }
    let eta = rule.eta.max(2) as f64;
    let shares: Vec<f64> = (0..n)
        .map(|b| {
            let s = (n - 1 - b) as f64;
            (n as f64 * eta.powf(s) / (s + 1.0)).ceil()
        })
        .collect();
    // Many brackets (an evaluation every step) make shares in the millions: scaled to a deal of
    // at most 1,000 trials, as the deal walks up to a whole round per call.
    let scale = (1000.0 / shares.iter().sum::<f64>()).min(1.0);
    let weights: Vec<i64> = shares
        .iter()
        .map(|w| (w * scale).round().max(1.0) as i64)
        .collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; n];
    let mut chosen = 0;
    for _ in 0..=(index as i64 % total) {
        current.iter_mut().zip(&weights).for_each(|(c, w)| *c += w);
        chosen = (0..n).max_by_key(|&b| (current[b], n - b)).unwrap_or(0);
        current[chosen] -= total;
    }
    chosen
}

/// Whether the rule may prune a trial of `bracket` at evaluation number `eval` (step /
/// eval_every) at all.
pub fn is_decision_point(rule: &Pruning, eval: u64, bracket: usize) -> bool {
    match rule.rule {
        PruneRule::Median => eval > rule.warmup_evals.max(1) as u64,
        PruneRule::Halving | PruneRule::Hyperband => {
            rungs(rule, bracket).find(|&r| r >= eval) == Some(eval)
        }
    }
}

/// True when a trial of `bracket` with val loss `loss` at evaluation `eval` is pruned, given
/// the val losses at the same step of the siblings it is compared with (`others`, in any
/// order: under `hyperband`, those of its own bracket).
pub fn decide(rule: &Pruning, eval: u64, bracket: usize, loss: f64, others: &[f64]) -> bool {
    if !is_decision_point(rule, eval, bracket) || others.len() < rule.min_trials {
        return false;
    }
    let mut others = others.to_vec();
    others.sort_by(f64::total_cmp);
    match rule.rule {
        PruneRule::Halving | PruneRule::Hyperband => {
            let keep = (others.len() + 1).div_ceil(rule.eta);
            let better = others.iter().filter(|&&o| o < loss).count();
            better >= keep
        }
        PruneRule::Median => {
            let n = others.len();
            let median = if n % 2 == 1 {
                others[n / 2]
            } else {
                (others[n / 2 - 1] + others[n / 2]) / 2.0
            };
            loss > median
        }
    }
}

/// True when a trial whose mean training loss at the early point ([`crate::train::early_step`])
/// is `loss` has come down from `ln_vocab` (a fresh model's loss) by less than `min_progress`
/// of the most any of its siblings had come down at that step (`others`: one is enough, not
/// the rules' `min_trials`, as the bar is the best sibling's and more siblings only raise it;
/// waiting for three let the startup's hopeless draws, run before three had passed the point,
/// train to their end). A share of the progress, not a gap in loss, so that one rule needs no
/// loss scale for a vocabulary of 60 or of 4,000; and early in a short run the shares spread
/// widely, while late in a long one every trial has come most of the way and only one that is
/// not learning at all falls short. On a large vocabulary most of the early progress is what
/// character frequencies alone give, so there it separates less (BENCHMARKS.md, "红楼梦 on
/// Zen 1").
pub fn hopeless(min_progress: f64, ln_vocab: f64, loss: f64, others: &[f64]) -> bool {
    if min_progress <= 0.0 || others.is_empty() || !loss.is_finite() {
        return false;
    }
    let best = others.iter().copied().fold(f64::INFINITY, f64::min);
    let most = ln_vocab - best;
    most > 0.0 && ln_vocab - loss < min_progress * most
}

/// The rule as trial `me`'s hook: its siblings' losses come from their run records, read only
/// at decision points, the sweep's trials listed afresh there (a search records its proposals
/// as workers free up, so trials begun after this one, often cheaper and further along, count
/// too, as in Optuna's study; the first trial's only sibling is often such a one). Under
/// `hyperband` the siblings are dealt into brackets by the trial's own number of evaluations (a
/// sweep that varies `max_steps` compares trials of other lengths by that count too). The
/// early cut compares all siblings that passed the same early step on the same vocabulary,
/// whatever their bracket.
pub fn hook(
    root: &Path,
    manifest: &Manifest,
    me: usize,
    eval_every: u64,
    rule: Pruning,
) -> PruneHook {
    let known = sibling_dirs(root, manifest, me);
    let root = root.to_path_buf();
    let siblings = move || {
        Manifest::load(&root).map_or_else(|_| known.clone(), |m| sibling_dirs(&root, &m, me))
    };
    let every = eval_every.max(1);
    Arc::new(move |step, total_steps, reading| {
        let loss = match reading {
            Reading::Val(loss) => loss,
            Reading::Early {
                train_loss,
                ln_vocab,
            } => {
                let others: Vec<f64> = siblings()
                    .iter()
                    .filter_map(|(_, d)| d.record())
                    .filter(|r| (r.ln_vocab - ln_vocab).abs() < 1e-9)
                    .filter_map(|r| r.early.filter(|e| e.step == step))
                    .map(|e| e.train_loss)
                    .collect();
                return early_verdict(rule.min_progress, ln_vocab, train_loss, &others);
            }
        };
        let (eval, evals) = (step / every, total_steps / every);
        let mine = bracket(&rule, me, evals);
        if !is_decision_point(&rule, eval, mine) {
            return Verdict::Keep;
        }
        let others: Vec<f64> = siblings()
            .iter()
            .filter(|(i, _)| bracket(&rule, *i, evals) == mine)
            .filter_map(|(_, d)| d.record())
            .filter_map(|r| r.evals.iter().find(|e| e.step == step).map(|e| e.val_loss))
            .collect();
        if decide(&rule, eval, mine, loss, &others) {
            Verdict::Prune
        } else {
            Verdict::Keep
        }
    })
}

/// Every trial of the sweep but `me`, with its run directory.
fn sibling_dirs(root: &Path, manifest: &Manifest, me: usize) -> Vec<(usize, RunDir)> {
    manifest
        .trials
        .iter()
        .filter(|e| e.index != me)
        .map(|e| (e.index, RunDir::new(root.join(&e.dir))))
        .collect()
}

/// The early cut's answer at a trial's early point ([`hopeless`] against `others`, the
/// siblings' training losses there): [`Verdict::Wait`] while none has passed the point, so
/// that the first trial of a sweep to get there (its cheapest, not its best) is judged as soon
/// as a second one does, not let run to its end.
pub fn early_verdict(min_progress: f64, ln_vocab: f64, loss: f64, others: &[f64]) -> Verdict {
    if min_progress <= 0.0 {
        Verdict::Keep
    } else if others.is_empty() {
        Verdict::Wait
    } else if hopeless(min_progress, ln_vocab, loss, others) {
        Verdict::Prune
    } else {
        Verdict::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(rule: PruneRule, warmup_evals: usize, min_trials: usize, eta: usize) -> Pruning {
        Pruning {
            rule,
            eta,
            warmup_evals,
            min_trials,
            min_progress: 0.0,
        }
    }

    #[test]
    fn the_early_cut_stops_a_trial_far_behind_its_best_sibling_and_nothing_else() {
        // ln V = 4; the best sibling is down to 2 (progress 2): below 0.8 × 2 = 1.6 is cut.
        let others = [3.0, 2.0, 2.5];
        assert!(hopeless(0.8, 4.0, 2.5, &others), "progress 1.5");
        assert!(!hopeless(0.8, 4.0, 2.3, &others), "progress 1.7");
        assert!(hopeless(0.8, 4.0, 4.2, &others), "worse than a fresh model");
        assert!(
            !hopeless(0.8, 4.0, f64::NAN, &others),
            "diverging is the trainer's"
        );
        // Off, no sibling yet, or no sibling has learned anything: never.
        assert!(!hopeless(0.0, 4.0, 3.9, &others));
        assert!(!hopeless(0.8, 4.0, 3.9, &[]));
        assert!(!hopeless(0.8, 4.0, 4.5, &[4.1, 4.0]));
        // One sibling is enough (the startup's first pair): the bar is the best sibling's, so
        // the others above only raise it; against the poorest alone the same trial stands.
        assert!(hopeless(0.8, 4.0, 2.5, &[2.0]));
        assert!(!hopeless(0.8, 4.0, 2.5, &[3.0]));
        // The same shares on another vocabulary's scale decide the same.
        let scaled: Vec<f64> = others.iter().map(|o| 8.0 - (4.0 - o) * 2.0).collect();
        assert!(hopeless(0.8, 8.0, 5.0, &scaled) && !hopeless(0.8, 8.0, 4.6, &scaled));
        // Late in a long run every sibling has come most of the way: a trial 0.3 behind the
        // best is kept, one that has hardly learned is cut.
        let late = [1.6, 1.7, 1.65];
        assert!(!hopeless(0.8, 4.3, 1.9, &late) && hopeless(0.8, 4.3, 3.9, &late));
        assert_eq!(crate::train::early_step(300), 30);
        assert_eq!(crate::train::early_step(5), 1);
    }

    #[test]
    fn the_hook_meets_the_trials_begun_after_its_own() {
        use crate::run_dir::{test_record, EvalPoint, RunRecord, TrainPoint};
        use crate::sweep::manifest::test_manifest;
        let d = tempfile::tempdir().unwrap();
        // Trial 1 is proposed after trial 0's worker started.
        let (mut m, later) = (test_manifest(1), test_manifest(2));
        m.save(d.path()).unwrap();
        let halving = Pruning {
            min_progress: 0.8,
            ..rule(PruneRule::Halving, 1, 1, 3)
        };
        let hook = hook(d.path(), &m, 0, 10, halving);
        let early = Reading::Early {
            train_loss: 3.9,
            ln_vocab: 4.0,
        };
        assert_eq!(
            hook(3, 30, early),
            Verdict::Wait,
            "alone at the early point"
        );
        // Trial 1 is in the manifest now, and has passed both points far ahead.
        m = later;
        m.save(d.path()).unwrap();
        let ahead = RunRecord {
            ln_vocab: 4.0,
            early: Some(TrainPoint {
                step: 3,
                train_loss: 2.0,
            }),
            evals: vec![EvalPoint {
                step: 10,
                val_loss: 1.0,
            }],
            ..test_record()
        };
        let dir = RunDir::new(d.path().join("001-t"));
        std::fs::create_dir_all(dir.path()).unwrap();
        dir.write_record(&ahead).unwrap();
        assert_eq!(hook(3, 30, early), Verdict::Prune);
        assert_eq!(hook(10, 30, Reading::Val(2.0)), Verdict::Prune);
        assert_eq!(hook(10, 30, Reading::Val(0.5)), Verdict::Keep);
    }

    #[test]
    fn the_early_cut_waits_for_a_sibling_and_never_while_it_is_off() {
        assert_eq!(early_verdict(0.8, 4.0, 3.9, &[]), Verdict::Wait);
        assert_eq!(early_verdict(0.8, 4.0, 3.9, &[2.0]), Verdict::Prune);
        assert_eq!(early_verdict(0.8, 4.0, 2.3, &[2.0]), Verdict::Keep);
        assert_eq!(early_verdict(0.0, 4.0, 3.9, &[]), Verdict::Keep);
        assert_eq!(early_verdict(0.0, 4.0, 3.9, &[2.0]), Verdict::Keep);
    }

    #[test]
    fn median_prunes_only_worse_than_the_median_after_the_warmup() {
        let r = rule(PruneRule::Median, 2, 3, 3);
        let others = [1.0, 2.0, 3.0, 4.0];
        // The median of four is 2.5.
        assert!(decide(&r, 3, 0, 2.6, &others));
        assert!(!decide(&r, 3, 0, 2.5, &others));
        assert!(!decide(&r, 3, 0, 1.0, &others));
        // At or before the warm-up, never.
        assert!(!decide(&r, 2, 0, 100.0, &others));
        assert!(!decide(&r, 1, 0, 100.0, &others));
        // Too few siblings at that step yet.
        assert!(!decide(&r, 3, 0, 100.0, &others[..2]));
        // The order the records came in does not matter.
        assert!(decide(&r, 3, 0, 2.6, &[4.0, 1.0, 3.0, 2.0]));
    }

    #[test]
    fn halving_decides_at_rungs_and_keeps_the_best_third() {
        let r = rule(PruneRule::Halving, 1, 2, 3);
        // Rungs at 1, 3, 9, 27 evaluations.
        let rungs: Vec<u64> = (0..30).filter(|&e| is_decision_point(&r, e, 0)).collect();
        assert_eq!(rungs, vec![1, 3, 9, 27]);
        // Five siblings and this trial: keep ceil(6 / 3) = 2.
        let others = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert!(!decide(&r, 3, 0, 0.5, &others), "the best is kept");
        assert!(!decide(&r, 3, 0, 1.5, &others), "second best is kept");
        assert!(decide(&r, 3, 0, 2.5, &others), "third is pruned");
        assert!(!decide(&r, 4, 0, 9.0, &others), "no rung at 4 evaluations");
    }

    #[test]
    fn halving_rungs_start_at_the_warmup() {
        let r = rule(PruneRule::Halving, 2, 1, 2);
        let rungs: Vec<u64> = (0..20).filter(|&e| is_decision_point(&r, e, 0)).collect();
        assert_eq!(rungs, vec![2, 4, 8, 16]);
    }

    #[test]
    fn hyperband_counts_brackets_as_optuna_and_deals_trials_by_its_shares() {
        let r = rule(PruneRule::Hyperband, 1, 1, 3);
        // 3 evaluations (step 100 of 300): a bracket pruning at the first, one never.
        assert_eq!(
            [1, 2, 3, 9, 10].map(|e| brackets(&r, e)),
            [1, 2, 2, 3, 4],
            "one per rung below the last evaluation, and one more"
        );
        assert_eq!(brackets(&rule(PruneRule::Halving, 1, 1, 3), 9), 1);
        // Shares ⌈B·eta^s/(s+1)⌉: 3 and 2 of every 5 trials; 9, 5 and 3 of every 17.
        for (evals, shares) in [(3u64, vec![3usize, 2]), (9, vec![9, 5, 3])] {
            let total: usize = shares.iter().sum();
            for start in [0, total, 7 * total] {
                let mut count = vec![0; shares.len()];
                (start..start + total).for_each(|i| count[bracket(&r, i, evals)] += 1);
                assert_eq!(count, shares, "{evals} evaluations from trial {start}");
            }
            // Dealt, not in blocks: every bracket among the first few trials.
            let first: Vec<usize> = (0..4).map(|i| bracket(&r, i, evals)).collect();
            assert!((0..shares.len()).all(|b| first.contains(&b)), "{first:?}");
        }
        assert_eq!(bracket(&rule(PruneRule::Halving, 1, 1, 3), 4, 9), 0);
        // An evaluation every step of 100,000, eta 2: 18 brackets, shares scaled to a deal of
        // about 1,000 trials, each bracket dealt in it.
        let every_step = rule(PruneRule::Hyperband, 1, 1, 2);
        assert_eq!(brackets(&every_step, 100_000), 18);
        let mut seen = [false; 18];
        (0..1100).for_each(|i| seen[bracket(&every_step, i, 100_000)] = true);
        assert!(seen.iter().all(|&s| s), "{seen:?}");
    }

    #[test]
    fn a_later_bracket_starts_pruning_a_rung_later_and_the_last_never_does() {
        let r = rule(PruneRule::Hyperband, 1, 1, 3);
        let rungs = |b| -> Vec<u64> { (0..30).filter(|&e| is_decision_point(&r, e, b)).collect() };
        assert_eq!(rungs(0), vec![1, 3, 9, 27]);
        assert_eq!(rungs(1), vec![3, 9, 27]);
        // Of 9 evaluations, bracket 2's first rung is the last evaluation: the run has ended
        // there, so it is never pruned.
        assert_eq!(rungs(2), vec![9, 27]);
        let others = [1.0, 2.0, 3.0];
        assert!(
            decide(&r, 1, 0, 9.0, &others),
            "bracket 0 prunes at its rung"
        );
        assert!(
            !decide(&r, 1, 1, 9.0, &others),
            "bracket 1 has no rung there"
        );
        assert!(
            decide(&r, 3, 1, 9.0, &others),
            "bracket 1 prunes at its first rung"
        );
    }
}

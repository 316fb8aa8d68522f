//! A sweep's pruning rule: at an evaluation, a trial's val loss against its siblings' at the
//! same step, once `min_trials` of them have reached it. `median` prunes a trial worse than
//! their median (from the evaluation after the warm-up on); `halving` (successive halving, as
//! ASHA) decides only at rung evaluations, warm-up × eta^k, and keeps a trial only among the
//! best 1/eta of all trials at that step. The rule itself is [`decide`], a pure function; the
//! trainer's hook ([`hook`]) only reads the siblings' records.

use super::manifest::Manifest;
use super::plan::{PruneRule, Pruning};
use crate::run_dir::RunDir;
use crate::train::PruneHook;
use std::path::Path;
use std::sync::Arc;

/// Whether the rule may prune at evaluation number `eval` (step / eval_every) at all.
pub fn is_decision_point(rule: &Pruning, eval: u64) -> bool {
    let warmup = rule.warmup_evals.max(1) as u64;
    match rule.rule {
        PruneRule::Median => eval > warmup,
        PruneRule::Halving => {
            let mut rung = warmup;
            while rung < eval {
                rung *= rule.eta.max(2) as u64;
            }
            rung == eval
        }
    }
}

/// True when a trial with val loss `loss` at evaluation `eval` is pruned, given the siblings'
/// val losses at the same step (`others`, in any order).
pub fn decide(rule: &Pruning, eval: u64, loss: f64, others: &[f64]) -> bool {
    if !is_decision_point(rule, eval) || others.len() < rule.min_trials {
        return false;
    }
    let mut others = others.to_vec();
    others.sort_by(f64::total_cmp);
    match rule.rule {
        PruneRule::Halving => {
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

/// The rule as trial `me`'s hook: its siblings' losses come from their run records, read only
/// at decision points.
pub fn hook(
    root: &Path,
    manifest: &Manifest,
    me: usize,
    eval_every: u64,
    rule: Pruning,
) -> PruneHook {
    let siblings: Vec<RunDir> = manifest
        .trials
        .iter()
        .filter(|e| e.index != me)
        .map(|e| RunDir::new(root.join(&e.dir)))
        .collect();
    Arc::new(move |step, loss| {
        let eval = step / eval_every.max(1);
        if !is_decision_point(&rule, eval) {
            return false;
        }
        let others: Vec<f64> = siblings
            .iter()
            .filter_map(RunDir::record)
            .filter_map(|r| r.evals.iter().find(|e| e.step == step).map(|e| e.val_loss))
            .collect();
        decide(&rule, eval, loss, &others)
    })
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
        }
    }

    #[test]
    fn median_prunes_only_worse_than_the_median_after_the_warmup() {
        let r = rule(PruneRule::Median, 2, 3, 3);
        let others = [1.0, 2.0, 3.0, 4.0];
        // The median of four is 2.5.
        assert!(decide(&r, 3, 2.6, &others));
        assert!(!decide(&r, 3, 2.5, &others));
        assert!(!decide(&r, 3, 1.0, &others));
        // At or before the warm-up, never.
        assert!(!decide(&r, 2, 100.0, &others));
        assert!(!decide(&r, 1, 100.0, &others));
        // Too few siblings at that step yet.
        assert!(!decide(&r, 3, 100.0, &others[..2]));
        // The order the records came in does not matter.
        assert!(decide(&r, 3, 2.6, &[4.0, 1.0, 3.0, 2.0]));
    }

    #[test]
    fn halving_decides_at_rungs_and_keeps_the_best_third() {
        let r = rule(PruneRule::Halving, 1, 2, 3);
        // Rungs at 1, 3, 9, 27 evaluations.
        let rungs: Vec<u64> = (0..30).filter(|&e| is_decision_point(&r, e)).collect();
        assert_eq!(rungs, vec![1, 3, 9, 27]);
        // Five siblings and this trial: keep ceil(6 / 3) = 2.
        let others = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert!(!decide(&r, 3, 0.5, &others), "the best is kept");
        assert!(!decide(&r, 3, 1.5, &others), "second best is kept");
        assert!(decide(&r, 3, 2.5, &others), "third is pruned");
        assert!(!decide(&r, 4, 9.0, &others), "no rung at 4 evaluations");
    }

    #[test]
    fn halving_rungs_start_at_the_warmup() {
        let r = rule(PruneRule::Halving, 2, 1, 2);
        let rungs: Vec<u64> = (0..20).filter(|&e| is_decision_point(&r, e)).collect();
        assert_eq!(rungs, vec![2, 4, 8, 16]);
    }
}

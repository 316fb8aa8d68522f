//! When a whole sweep stops early (`[experiment] stop`): a target reached, no improvement for
//! N trials or M minutes, or a time budget spent. Judged from the run records alone (the same
//! records, the same verdict) except the minutes, which count this invocation's time: a sweep
//! run again after a long pause is not stopped for the pause, and gets its budget anew.

use super::plan::StopRule;
use crate::run_dir::{Metric, RunRecord, RunStatus};
use std::time::{Duration, Instant};

/// One trial as the rule sees it: its name and record (`None` before it has one).
pub struct Seen<'a> {
    pub name: &'a str,
    pub record: Option<&'a RunRecord>,
}

/// The rule, with what it remembers between looks (when the best last improved).
pub struct Watch {
    rule: StopRule,
    metric: Metric,
    best: Option<f64>,
    improved_at: Instant,
    started: Instant,
}

impl Watch {
    pub fn new(rule: StopRule, metric: Metric) -> Watch {
        let now = Instant::now();
        Watch {
            rule,
            metric,
            best: None,
            improved_at: now,
            started: now,
        }
    }

    /// The objective as the user writes it (accuracy is shown as itself, not negated).
    fn shown(&self, v: f64) -> String {
        let v = if self.metric == Metric::ValAccuracy {
            -v
        } else {
            v
        };
        format!("{} {v:.4}", self.metric.name())
    }

    /// Why the sweep stops now, if it does.
    pub fn verdict(&mut self, trials: &[Seen]) -> Option<String> {
        self.verdict_at(trials, Instant::now())
    }

    fn verdict_at(&mut self, trials: &[Seen], now: Instant) -> Option<String> {
        let value = |s: &Seen| {
            let v = self.metric.of(s.record?)?;
            v.is_finite().then_some(v)
        };
        // The best so far, a running trial's best evaluation included.
        let best = (trials.iter())
            .filter_map(|s| Some((value(s)?, s.name)))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((v, _)) = best {
            if self.best.is_none_or(|b| v < b) {
                self.best = Some(v);
                self.improved_at = now;
            }
        }
        // What every rule but the target adds to its reason: the best so far, if any.
        let said = || {
            best.map_or(String::new(), |(v, name)| {
                format!(" (best {} by {name})", self.shown(v))
            })
        };
        let past = |since: Instant, m: f64| {
            now.saturating_duration_since(since) >= Duration::from_secs_f64(m * 60.0)
        };
        if let (Some(target), Some((v, name))) = (self.rule.target, best) {
            let goal = if self.metric == Metric::ValAccuracy {
                -target
            } else {
                target
            };
            if v <= goal {
                return Some(format!("target reached: {name} has {}", self.shown(v)));
            }
        }
        if let Some(n) = self.rule.patience_trials {
            let since = ended_since_best(trials, &value);
            if since.is_some_and(|k| k >= n) {
                return Some(format!(
                    "no better trial in the last {n} that ended{}",
                    said()
                ));
            }
        }
        if let Some(m) = self
            .rule
            .patience_minutes
            .filter(|&m| past(self.improved_at, m))
        {
            return Some(format!("no improvement for {m} minutes{}", said()));
        }
        if let Some(m) = self.rule.minutes.filter(|&m| past(self.started, m)) {
            return Some(format!("the {m}-minute budget is spent{}", said()));
        }
        None
    }
}

/// Trials that ended (final or failed), in the order they ended, after the one that set the
/// best among them; `None` before one has a value.
fn ended_since_best(trials: &[Seen], value: &dyn Fn(&Seen) -> Option<f64>) -> Option<usize> {
    let mut ended: Vec<(&str, usize, Option<f64>)> = (trials.iter().enumerate())
        .filter_map(|(i, s)| {
            let r = s.record?;
            let done = r.status.is_final() || r.status == RunStatus::Failed;
            done.then(|| (r.ended.as_deref().unwrap_or(""), i, value(s)))
        })
        .collect();
    ended.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let mut best: Option<(f64, usize)> = None;
    for (at, &(_, _, v)) in ended.iter().enumerate() {
        if let Some(v) = v {
            if best.is_none_or(|(b, _)| v < b) {
                best = Some((v, at));
            }
        }
    }
    best.map(|(_, at)| ended.len() - 1 - at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: RunStatus, ended: &str, loss: Option<f64>) -> RunRecord {
        let mut r = crate::run_dir::test_record();
        r.status = status;
        r.ended = Some(ended.into());
        r.best_metrics = loss.map(|l| crate::run_dir::Metrics {
            step: 10,
            val_loss: l,
            val_accuracy: 0.5,
            val_bpc: l / std::f64::consts::LN_2,
            train_loss: l,
        });
        r
    }

    /// The rule's view of `trials` (name, record).
    fn seen<'a>(trials: &'a [(&'a str, Option<RunRecord>)]) -> Vec<Seen<'a>> {
        (trials.iter())
            .map(|(name, r)| Seen {
                name,
                record: r.as_ref(),
            })
            .collect()
    }

    fn rule(target: Option<f64>, trials: Option<usize>, minutes: Option<f64>) -> Watch {
        let rule = StopRule {
            target,
            patience_trials: trials,
            patience_minutes: minutes,
            minutes: None,
        };
        Watch::new(rule, Metric::ValLoss)
    }

    #[test]
    fn a_target_stops_as_soon_as_any_trial_reaches_it_running_or_not() {
        let c = RunStatus::Completed;
        let recs_trials = vec![
            ("a", Some(record(c, "t1", Some(2.0)))),
            ("b", Some(record(RunStatus::Running, "", Some(1.7)))),
            ("c", None),
        ];
        let trials = seen(&recs_trials);
        assert_eq!(rule(Some(1.6), None, None).verdict(&trials), None);
        let why = rule(Some(1.7), None, None).verdict(&trials).unwrap();
        assert!(
            why.contains("target reached: b has val/loss 1.7000"),
            "{why}"
        );
        let mut acc = Watch::new(
            StopRule {
                target: Some(0.5),
                ..StopRule::default()
            },
            Metric::ValAccuracy,
        );
        let why = acc.verdict(&trials).unwrap();
        assert!(
            why.contains("val/accuracy 0.5000"),
            "shown as itself: {why}"
        );
    }

    #[test]
    fn patience_counts_the_trials_that_ended_after_the_best_in_end_order() {
        let c = RunStatus::Completed;
        // In end order: 2.0, 1.5 (best), 1.8, failed, 1.6: three ended after the best.
        let recs_trials = vec![
            ("e", Some(record(c, "t5", Some(1.6)))),
            ("a", Some(record(c, "t1", Some(2.0)))),
            ("b", Some(record(c, "t2", Some(1.5)))),
            ("c", Some(record(c, "t3", Some(1.8)))),
            ("d", Some(record(RunStatus::Failed, "t4", None))),
            ("r", Some(record(RunStatus::Running, "", Some(1.9)))),
        ];
        let trials = seen(&recs_trials);
        assert_eq!(rule(None, Some(4), None).verdict(&trials), None);
        let why = rule(None, Some(3), None).verdict(&trials).unwrap();
        assert!(why.contains("last 3") && why.contains("by b"), "{why}");
        // Nothing ended with a value yet: no verdict.
        assert_eq!(rule(None, Some(1), None).verdict(&trials[4..5]), None);
    }

    #[test]
    fn minutes_count_from_the_last_improvement_seen() {
        let c = RunStatus::Completed;
        let mut w = rule(None, None, Some(10.0));
        let t0 = Instant::now();
        let recs_first = vec![("a", Some(record(c, "t1", Some(2.0))))];
        let first = seen(&recs_first);
        assert_eq!(w.verdict_at(&first, t0), None);
        let recs_better = vec![
            ("a", Some(record(c, "t1", Some(2.0)))),
            ("b", Some(record(c, "t2", Some(1.9)))),
        ];
        let better = seen(&recs_better);
        let at = |m: u64| t0 + Duration::from_secs(m * 60);
        assert_eq!(w.verdict_at(&better, at(9)), None, "improved at minute 9");
        assert_eq!(w.verdict_at(&better, at(18)), None);
        let why = w.verdict_at(&better, at(19)).unwrap();
        assert!(why.contains("no improvement for 10 minutes"), "{why}");
    }

    #[test]
    fn a_budget_counts_from_the_start_whatever_the_trials_do() {
        let c = RunStatus::Completed;
        let budget = StopRule {
            minutes: Some(5.0),
            ..StopRule::default()
        };
        let mut w = Watch::new(budget, Metric::ValLoss);
        let t0 = w.started;
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(
            w.verdict_at(&[], at(299)),
            None,
            "nothing ran yet, in budget"
        );
        let recs = vec![("a", Some(record(c, "t1", Some(2.0))))];
        let trials = seen(&recs);
        assert_eq!(w.verdict_at(&trials, at(200)), None);
        // Improving does not extend a budget (as it does patience).
        let recs = vec![("a", Some(record(c, "t1", Some(1.5))))];
        let better = seen(&recs);
        let why = w.verdict_at(&better, at(300)).unwrap();
        assert!(why.contains("the 5-minute budget is spent"), "{why}");
        assert!(why.contains("best val/loss 1.5000 by a"), "{why}");
    }
}

//! PBT's policy, pure: who copies whom at a boundary and how the copied values are explored,
//! a function of (seed, member, step, the ranking) alone, so a rerun decides the same.

use crate::rng::Rng;
use crate::sweep::plan::{self, PbtSearch, Sampler};
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
pub(super) fn decision_rng(seed: u64, member: usize, step: u64) -> Rng {
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

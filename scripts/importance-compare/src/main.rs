//! Reads the synthetic sweeps scripts/importance_compare.py wrote, and prints (JSON) what
//! charlab's importance estimate and the `fanova` crate say of each, over three seeds; with
//! `tpe`, runs charlab's TPE and the `tpe` crate on the same objectives and prints the best
//! value each found.

use charlab::importance::{analyse, Importance, Observation};
use charlab::sweep::tpe::{self as ours, Dim};
use rand::SeedableRng;
use serde_json::{json, Value};

fn shares(keys: &[String], imp: &Importance) -> Vec<f64> {
    let Importance::Ranked { keys: ranked, .. } = imp else {
        return vec![f64::NAN; keys.len()];
    };
    keys.iter()
        .map(|k| ranked.iter().find(|r| &r.key == k).map_or(0.0, |r| r.importance))
        .collect()
}

/// The crate's first-order importances, normalised to sum 1 (as Optuna reports them).
fn fanova_shares(features: &[Vec<f64>], y: &[f64], seed: u64) -> Vec<f64> {
    let cols: Vec<&[f64]> = features.iter().map(|c| c.as_slice()).collect();
    let mut f = fanova::FanovaOptions::new()
        .random_forest(fanova::RandomForestOptions::new().seed(seed))
        .fit(cols, y)
        .expect("fit");
    let raw: Vec<f64> = (0..features.len())
        .map(|i| f.quantify_importance(&[i]).mean)
        .collect();
    let total: f64 = raw.iter().sum();
    raw.iter().map(|r| r / total.max(1e-300)).collect()
}

fn importance(sweeps: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for s in sweeps.as_array().expect("sweeps") {
        let keys: Vec<String> = s["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()).collect();
        let rows = s["rows"].as_array().unwrap();
        let obs: Vec<Observation> = rows
            .iter()
            .map(|r| Observation {
                values: r["values"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect(),
                metric: r["metric"].as_f64().unwrap(),
            })
            .collect();
        // The crate gets the encoding charlab's estimate uses: log10 for keys spanning two
        // orders of magnitude, the value otherwise.
        let features: Vec<Vec<f64>> = (0..keys.len())
            .map(|k| {
                let xs: Vec<f64> = obs.iter().map(|o| o.values[k].parse().unwrap()).collect();
                let (lo, hi) = xs.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
                if lo > 0.0 && hi / lo >= 100.0 { xs.iter().map(|x| x.log10()).collect() } else { xs }
            })
            .collect();
        let y: Vec<f64> = obs.iter().map(|o| o.metric).collect();
        let charlab: Vec<Vec<f64>> = (1..=3).map(|seed| shares(&keys, &analyse(&keys, &obs, seed))).collect();
        let crate_: Vec<Vec<f64>> = (0..3).map(|seed| fanova_shares(&features, &y, seed)).collect();
        out.insert(s["name"].as_str().unwrap().to_string(), json!({"keys": keys, "charlab": charlab, "fanova_crate": crate_}));
    }
    Value::Object(out)
}

/// The objectives of the TPE question (the same shapes as the importance sweeps): lr in log
/// space, hidden a choice of 3, dropout in [0, 0.5].
fn objective(which: usize, x: &[f64]) -> f64 {
    let (lr, h, d) = (x[0].log10(), [64.0f64, 128.0, 256.0][x[1] as usize], x[2]);
    match which {
        0 => 0.8 * (lr + 2.2).powi(2) + 0.12 * (256.0 / h).log2(),
        1 => 0.5 * (256.0 / h).log2() + 0.05 * (lr + 2.5).powi(2),
        _ => 4.0 * (d - 0.3).powi(2) + 0.05 * (256.0 / h).log2(),
    }
}

fn dims() -> Vec<Dim> {
    vec![Dim::LogUniform(1e-4, 1e-1), Dim::Choice(3), Dim::Uniform(0.0, 0.5)]
}

fn run_ours(which: usize, seed: u64, trials: usize) -> f64 {
    let s = ours::Settings { startup: 10, candidates: 24, seed };
    let mut history: Vec<ours::Observation> = Vec::new();
    for i in 0..trials {
        let x = ours::propose(&dims(), &history, &s, i as u64).remove(0);
        let y = objective(which, &x);
        history.push(ours::Observation { x, score: Some(y) });
    }
    history.iter().filter_map(|o| o.score).fold(f64::INFINITY, f64::min)
}

fn run_crate(which: usize, seed: u64, trials: usize) -> f64 {
    let mut lr = tpe::TpeOptimizer::new(tpe::parzen_estimator(), tpe::range(1e-4f64.ln(), 1e-1f64.ln()).unwrap());
    let mut h = tpe::TpeOptimizer::new(tpe::histogram_estimator(), tpe::categorical_range(3).unwrap());
    let mut d = tpe::TpeOptimizer::new(tpe::parzen_estimator(), tpe::range(0.0, 0.5).unwrap());
    let mut best = f64::INFINITY;
    for i in 0..trials {
        // Replayable: each proposal's generator is seeded from (seed, index) alone.
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 1_000_003 + i as u64);
        let x = [lr.ask(&mut rng).unwrap(), h.ask(&mut rng).unwrap(), d.ask(&mut rng).unwrap()];
        let y = objective(which, &[x[0].exp(), x[1].floor().min(2.0), x[2]]);
        lr.tell(x[0], y).unwrap();
        h.tell(x[1], y).unwrap();
        d.tell(x[2], y).unwrap();
        best = best.min(y);
    }
    best
}

fn tpe_race() -> Value {
    let mut out = Vec::new();
    for which in 0..3 {
        let seeds = 0..20u64;
        let a: Vec<f64> = seeds.clone().map(|s| run_ours(which, s, 30)).collect();
        let b: Vec<f64> = seeds.map(|s| run_crate(which, s, 30)).collect();
        out.push(json!({"objective": which, "charlab": a, "tpe_crate": b}));
    }
    Value::Array(out)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("tpe") {
        println!("{}", tpe_race());
        return;
    }
    let text = std::fs::read_to_string(&args[1]).expect("sweeps.json");
    let sweeps: Value = serde_json::from_str(&text).expect("json");
    println!("{}", importance(&sweeps));
}

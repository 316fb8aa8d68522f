//! charlab's search run against a loss surface fitted to a race's measured trials
//! (`scripts/searchsim.py` fits it and runs Optuna against the same surface): many seeds of a
//! time-budgeted TPE search in seconds, where a real race gives five in forty minutes. One JSON
//! line per seed, its trials in `scripts/race.py`'s format, so a race's tables read them.
//!
//! The surface (JSON): the race's space (lr log-uniform, dropout uniform, a choice of hidden
//! size and of layers) and per (hidden, layers) cell a quadratic in `u = log10(lr) + 2.5` and
//! dropout `p` (coefficients of 1, u, u², p, p², u·p) for the val loss at the full budget, the
//! gap above it at each earlier evaluation, the seed-to-seed std, and the seconds one
//! evaluation's steps take.

use anyhow::Context;
use charlab::rng::Rng;
use charlab::sweep::plan::{PruneRule, Pruning, Sampler};
use charlab::sweep::search;
use charlab::sweep::simulate::{self, Setup, Surface};
use charlab::sweep::tpe::Settings;
use clap::Parser;
use serde::Deserialize;
use serde_json::json;
use toml::Value;

#[derive(Parser)]
struct Args {
    /// The surface file.
    surface: std::path::PathBuf,
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// The time budget: no trial starts after it.
    #[arg(long, default_value_t = 8.0)]
    minutes: f64,
    /// `none`, `halving` or `hyperband` (the sweep's pruning rule, its default settings).
    #[arg(long, default_value = "hyperband")]
    rule: String,
    /// Model the keys one by one (`multivariate = false`).
    #[arg(long)]
    key_by_key: bool,
    /// Model the sizes as ordered keys (`ordered_choices = true`).
    #[arg(long)]
    ordered: bool,
    #[arg(long, default_value_t = 4)]
    startup: usize,
    #[arg(long, default_value_t = 24)]
    candidates: usize,
    /// The share of the candidates drawn from the whole space (`[search] explore`).
    #[arg(long, default_value_t = charlab::sweep::plan::DEFAULT_EXPLORE)]
    explore: f64,
    /// Proposals after the startup over which that share falls to none (`[search] explore_fade`).
    #[arg(long, default_value_t = charlab::sweep::plan::DEFAULT_EXPLORE_FADE)]
    explore_fade: usize,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// charlab's speed per step relative to the surface's (its trials take `1 / speed` of the
    /// surface's time): what a per-step lead is worth to the search.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// The share of a trial's noise variance that is its sweep's luck with its cell (one draw
    /// per seed and cell): all trials of a sweep share a seed, so the same initial weights.
    #[arg(long, default_value_t = 0.0)]
    shared: f64,
}

#[derive(Deserialize)]
struct Cell {
    hidden: u64,
    layers: u64,
    coef: [f64; 6],
    gaps: Vec<f64>,
    sd: f64,
    secs: f64,
}

#[derive(Deserialize)]
struct Fitted {
    lr: [f64; 2],
    dropout: [f64; 2],
    hidden: Vec<u64>,
    layers: Vec<u64>,
    cells: Vec<Cell>,
}

/// One seed's surface: the fitted one as charlab's side meets it.
struct Seeded<'a> {
    fitted: &'a Fitted,
    speed: f64,
    /// The share of the noise variance that is `luck`, and per cell this sweep's draw.
    shared: f64,
    luck: Vec<f64>,
}

impl Seeded<'_> {
    /// The cell of a point (lr, hidden index, dropout, layers index) and its index.
    fn cell(&self, x: &[f64]) -> Option<(usize, &Cell)> {
        let f = self.fitted;
        let (h, l) = (f.hidden[x[1] as usize], f.layers[x[3] as usize]);
        (f.cells.iter().enumerate()).find(|(_, c)| c.hidden == h && c.layers == l)
    }
}

impl Surface for Seeded<'_> {
    fn loss(&self, x: &[f64], eval: u64, evals: u64, noise: f64) -> f64 {
        let Some((i, c)) = self.cell(x) else {
            return f64::INFINITY;
        };
        let (u, p) = (x[0].log10() + 2.5, x[2]);
        let f = [1.0, u, u * u, p, p * p, u * p];
        let full: f64 = c.coef.iter().zip(f).map(|(a, b)| a * b).sum();
        let gap = if eval < evals {
            c.gaps.get(eval as usize - 1).copied().unwrap_or(0.0)
        } else {
            0.0
        };
        let z = self.shared.sqrt() * self.luck[i] + (1.0 - self.shared).sqrt() * noise;
        full + gap + c.sd * z
    }

    fn time(&self, x: &[f64]) -> f64 {
        self.cell(x).map_or(1.0, |(_, c)| c.secs) / self.speed
    }
}

/// The surface file, checked enough that the search cannot index past it.
fn read(path: &std::path::Path) -> anyhow::Result<Fitted> {
    let name = path.display();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {name}"))?;
    let f: Fitted =
        serde_json::from_str(&text).with_context(|| format!("{name}: not a fitted surface"))?;
    if f.hidden.is_empty() || f.layers.is_empty() || f.cells.is_empty() {
        anyhow::bail!("{name}: needs hidden sizes, layer counts and cells");
    }
    Ok(f)
}

/// The search's settings for one seed, as a sweep file with the race's space would give them
/// (the pruning table's defaults).
fn setup(a: &Args, f: &Fitted, rule: Option<PruneRule>, seed: u64) -> Setup {
    // The keys modelled as the sweep models them.
    let choice = |v: &[u64]| Sampler::Choice(v.iter().map(|&x| Value::Integer(x as i64)).collect());
    let samplers = [
        Sampler::LogUniform(f.lr[0], f.lr[1]),
        choice(&f.hidden),
        Sampler::Uniform(f.dropout[0], f.dropout[1]),
        choice(&f.layers),
    ];
    Setup {
        dims: samplers.iter().map(|s| search::dim(s, a.ordered)).collect(),
        tpe: Settings {
            startup: a.startup,
            candidates: a.candidates,
            seed,
            joint: !a.key_by_key,
            explore: a.explore,
            explore_fade: a.explore_fade,
        },
        pruning: rule.map(|rule| Pruning {
            rule,
            eta: 3,
            warmup_evals: 1,
            min_trials: 3,
            // The surface has no training loss: the early cut is not simulated.
            min_progress: 0.0,
        }),
        evals: (f.cells.iter())
            .map(|c| c.gaps.len() as u64 + 1)
            .max()
            .unwrap_or(1),
        workers: a.workers,
        read_running: true,
        until: a.minutes * 60.0,
    }
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let f = read(&a.surface)?;
    let rule = match a.rule.as_str() {
        "none" => None,
        "halving" => Some(PruneRule::Halving),
        "hyperband" => Some(PruneRule::Hyperband),
        other => anyhow::bail!("--rule {other}: expected none, halving or hyperband"),
    };
    for seed in a.first_seed..a.first_seed + a.seeds {
        let surface = Seeded {
            fitted: &f,
            speed: a.speed,
            shared: a.shared.clamp(0.0, 1.0),
            luck: (0..f.cells.len() as u64)
                .map(|c| Rng::new(seed ^ 0x5EED, c).normal() as f64)
                .collect(),
        };
        let trials: Vec<_> = simulate::run(&surface, &setup(&a, &f, rule, seed))
            .iter()
            .map(|t| {
                json!({
                    "params": {
                        "lr": t.x[0],
                        "hidden": f.hidden[t.x[1] as usize],
                        "dropout": t.x[2],
                        "layers": f.layers[t.x[3] as usize],
                    },
                    "completed": t.completed,
                    "pruned": !t.completed,
                    "end": t.end,
                    "val_loss": if t.completed { Some(t.loss) } else { None },
                    "number": t.number,
                    "steps": t.steps,
                })
            })
            .collect();
        println!("{}", json!({ "seed": seed, "trials": trials }));
    }
    Ok(())
}

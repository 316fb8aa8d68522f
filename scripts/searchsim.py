"""The TPE race on a loss surface fitted to measured trials, both searches on one virtual clock.

A real race (scripts/race.sh tpe) gives five seeds in forty minutes on a 2-core machine, and its
seed-to-seed spread is as large as the differences between search variants. This fits a surface
to the trials races have already run, then races charlab's search (src/bin/searchsim.rs, the
sweep's own TPE and pruning) against Optuna's TPESampler + HyperbandPruner (ask and tell) on it:
same space, same costs per trial (so only the searches differ: goal 3 of issue 28 at every
minute), two trials at a time, hundreds of seeds. The tables are scripts/race.py's.

  scripts/searchsim.sh fit --runs DIR... --races FILE... --out surface.json
  scripts/searchsim.sh race --surface surface.json --seeds 100 --minutes 8 [--key-by-key]

`--runs`: race sweep directories (`runs/<name>` of charlab's side: each trial's config.toml and
run.json give the curve at every evaluation and the seconds it took). `--races`: race.py
`--save` files, whose Optuna trials add final val losses. The surface per (hidden, layers): a
quadratic in u = log10(lr) + 2.5 and dropout for the final val loss (least squares, a light
ridge), the mean gap above it at each earlier evaluation, the residual std as the seed noise,
the median seconds per evaluation of charlab's trials.
"""
import argparse
import glob
import json
import math
import os
import random
import subprocess
import sys
import tomllib
import warnings

import numpy as np

import race

# Steps between two evaluations of a simulated trial, as src/sweep/simulate.rs's STEPS_PER_EVAL:
# the surface holds losses per evaluation, not per step.
STEPS_PER_EVAL = 100
SPACE = {"lr": [1e-4, 2e-2], "dropout": [0.0, 0.5], "hidden": [64, 128, 256], "layers": [1, 2]}


def features(lr, p):
    u = math.log10(lr) + 2.5
    return [1.0, u, u * u, p, p * p, u * p]


def measured(runs, races):
    """Per trial: hidden, layers, lr, dropout, curve {eval: loss} (final = last), secs per eval."""
    rows, ran = [], set()
    for d in runs:
        for rj in glob.glob(os.path.join(d, "*", "run.json")):
            try:
                r = json.load(open(rj))
                c = tomllib.load(open(os.path.join(os.path.dirname(rj), "config.toml"), "rb"))
            except (OSError, ValueError):
                continue
            # Races of one seed share their startup design: the same config and seed train
            # the same curve, which would weigh the fit towards those points.
            key = json.dumps(c, sort_keys=True, default=str)
            if key in ran:
                continue
            ran.add(key)
            every, steps = c.get("eval_every", 100), c.get("max_steps", 300)
            curve = {e["step"] // every: e["val_loss"] for e in r["evals"]
                     if e["val_loss"] is not None and math.isfinite(e["val_loss"])}
            rows.append(dict(hidden=c["hidden"], layers=c["layers"], lr=c["lr"], dropout=c["dropout"],
                             evals=steps // every, curve=curve,
                             secs=r["elapsed_secs"] / max(len(r["evals"]), 1)))
    seen = set()
    for f in races:
        for _, (_, trials) in json.load(open(f))["races"]:
            for t in trials:
                p, key = t["params"], json.dumps(t, sort_keys=True)
                if t["completed"] and t["val_loss"] is not None and key not in seen:
                    seen.add(key)
                    rows.append(dict(hidden=p["hidden"], layers=p["layers"], lr=p["lr"],
                                     dropout=p["dropout"], evals=None, curve={}, final=t["val_loss"]))
    return rows


def fit(a):
    rows = measured(a.runs, a.races)
    evals = max(r["evals"] for r in rows if r["evals"])
    cells = []
    for h in SPACE["hidden"]:
        for layers in SPACE["layers"]:
            mine = [r for r in rows if r["hidden"] == h and r["layers"] == layers]
            done = [(r, r.get("final", r["curve"].get(evals))) for r in mine]
            done = [(r, y) for r, y in done if y is not None and y < a.max_loss]
            if len(done) < 8:
                sys.exit(f"hidden {h} x {layers} layers: {len(done)} finished trials, 8 needed")
            X = np.array([features(r["lr"], r["dropout"]) for r, _ in done])
            y = np.array([y for _, y in done])
            coef = np.linalg.solve(X.T @ X + a.ridge * np.eye(6), X.T @ y)
            sd = float(np.std(y - X @ coef))
            full = [r for r, _ in done if len(r["curve"]) == evals]
            gaps = [float(np.mean([r["curve"][e] - r["curve"][evals] for r in full]))
                    for e in range(1, evals)]
            # Trials cut before their first evaluation would count 30 steps as one evaluation.
            timed = [r["secs"] for r in mine if "secs" in r and len(r["curve"]) == evals]
            secs = float(np.median(timed or [r["secs"] for r in mine if "secs" in r]))
            best = min((float(np.array(features(lr, p)) @ coef), lr, p)
                       for lr in np.logspace(-4, math.log10(2e-2), 60) for p in np.linspace(0, 0.5, 11))
            print(f"hidden {h} x {layers}: {len(done)} trials, residual std {sd:.3f}, gaps "
                  f"{', '.join(f'{g:.3f}' for g in gaps)}, {secs:.1f} s per evaluation, "
                  f"lowest {best[0]:.3f} at lr {best[1]:.4f}, dropout {best[2]:.2f}")
            cells.append(dict(hidden=h, layers=layers, coef=coef.tolist(), gaps=gaps, sd=sd,
                              secs=secs))
    json.dump(dict(SPACE, cells=cells), open(a.out, "w"), indent=1)


def cell(surface, p):
    """The index and cell of trial parameters p."""
    return next((i, c) for i, c in enumerate(surface["cells"])
                if c["hidden"] == p["hidden"] and c["layers"] == p["layers"])


def loss(surface, p, e, evals, noise, luck, shared):
    """Val loss at evaluation e, as src/bin/searchsim.rs computes it; `luck` per cell, a sweep's own."""
    i, c = cell(surface, p)
    full = float(np.array(features(p["lr"], p["dropout"])) @ np.array(c["coef"]))
    z = math.sqrt(shared) * luck[i] + math.sqrt(1 - shared) * noise
    return full + (c["gaps"][e - 1] if e < evals else 0.0) + c["sd"] * z


def optuna_side(surface, seed, a):
    """Optuna's TPESampler + HyperbandPruner on the surface: two trials at a time on a virtual
    clock, as src/sweep/simulate.rs runs charlab's, one noise draw per trial."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")
    dist = {"lr": optuna.distributions.FloatDistribution(*SPACE["lr"], log=True),
            "hidden": optuna.distributions.CategoricalDistribution(SPACE["hidden"]),
            "dropout": optuna.distributions.FloatDistribution(*SPACE["dropout"]),
            "layers": optuna.distributions.CategoricalDistribution(SPACE["layers"])}
    pruner = optuna.pruners.HyperbandPruner() if a.optuna_rule != "none" else optuna.pruners.NopPruner()
    # A named study: HyperbandPruner deals trials to brackets by a hash of the study name.
    study = optuna.create_study(study_name=f"searchsim-{seed}",
                                sampler=optuna.samplers.TPESampler(n_startup_trials=a.startup, seed=seed),
                                pruner=pruner)
    evals = len(surface["cells"][0]["gaps"]) + 1
    rng = random.Random(seed * 7919 + 1)
    luck = [rng.gauss(0, 1) for _ in surface["cells"]]
    running, out, now = [], [], 0.0
    while True:
        while now <= a.minutes * 60 and len(running) < 2:
            t = study.ask(dist)
            running.append(dict(t=t, start=now, noise=rng.gauss(0, 1), done=0))
        if not running:
            return out
        times = [r["start"] + cell(surface, r["t"].params)[1]["secs"] * (r["done"] + 1) for r in running]
        i = min(range(len(running)), key=times.__getitem__)
        r, now = running[i], times[i]
        r["done"] += 1
        value = loss(surface, r["t"].params, r["done"], evals, r["noise"], luck, a.shared)
        r["t"].report(value, r["done"])
        pruned = r["done"] < evals and r["t"].should_prune()
        if pruned or r["done"] == evals:
            study.tell(r["t"], state=optuna.trial.TrialState.PRUNED) if pruned else study.tell(r["t"], value)
            out.append(dict(params=r["t"].params, completed=not pruned, pruned=pruned, end=now,
                            val_loss=None if pruned else value, number=r["t"].number,
                            steps=STEPS_PER_EVAL * r["done"]))
            running.pop(i)


def race_on(a):
    surface = json.load(open(a.surface))
    cmd = (["target/release/searchsim", a.surface, "--seeds", str(a.seeds), "--first-seed",
           str(a.first_seed), "--minutes", str(a.minutes), "--rule", a.rule,
           "--startup", str(a.startup), "--shared", str(a.shared), "--speed", str(a.speed)]
           + (["--explore", str(a.explore)] if a.explore is not None else [])
           + (["--key-by-key"] if a.key_by_key else []) + (["--ordered"] if a.ordered else []))
    mine = [json.loads(line)["trials"] for line in
            subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()]
    if a.opponent:
        saved = json.load(open(a.opponent))
        same = {k: saved["args"].get(k) == vars(a)[k]
                for k in ("surface", "first_seed", "minutes", "startup", "shared", "optuna_rule")}
        if not all(same.values()) or len(saved["races"]) < a.seeds:
            sys.exit(f"{a.opponent}: Optuna's side of another simulation (differs in "
                     f"{[k for k, v in same.items() if not v] or 'seeds'})")
        theirs = [t for _, (_, t) in saved["races"]][:a.seeds]
    else:
        theirs = [optuna_side(surface, s, a) for s in range(a.first_seed, a.first_seed + a.seeds)]
    end = a.minutes * 60
    races = [((end, m), (end, t)) for m, t in zip(mine, theirs)]
    if a.save:
        json.dump(dict(args=vars(a), races=races), open(a.save, "w"))
    ns = argparse.Namespace(minutes=a.minutes, startup=a.startup, prune=a.optuna_rule != "none",
                            optuna_unpruned=False, rule=a.rule, cost_aware=False,
                            eval_every=STEPS_PER_EVAL, trials=10_000,
                            steps=STEPS_PER_EVAL * (len(surface["cells"][0]["gaps"]) + 1),
                            seeds=a.seeds, first_seed=a.first_seed, svg=None,
                            only=None, mine=None, opponent=None, ordered=a.ordered)
    print(f"Simulated on {a.surface}: charlab TPE{' key by key' if a.key_by_key else ' (joint)'}"
          f" against Optuna, the same surface, costs{f' / {a.speed:g} for charlab' if a.speed != 1 else ''}"
          f"{f', {a.shared:g} of the noise shared per sweep and size' if a.shared else ''}\n")
    race.report_tpe(races, ns)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit")
    f.add_argument("--runs", nargs="+", default=[])
    f.add_argument("--races", nargs="*", default=[])
    f.add_argument("--out", required=True)
    f.add_argument("--ridge", type=float, default=0.01)
    f.add_argument("--max-loss", type=float, default=4.0, help="leave out diverged trials")
    r = sub.add_parser("race")
    r.add_argument("--surface", required=True)
    r.add_argument("--seeds", type=int, default=100)
    r.add_argument("--first-seed", type=int, default=1)
    r.add_argument("--minutes", type=float, default=8.0)
    r.add_argument("--rule", choices=["none", "halving", "hyperband"], default="hyperband")
    r.add_argument("--startup", type=int, default=4)
    r.add_argument("--key-by-key", action="store_true")
    r.add_argument("--ordered", action="store_true", help="charlab's ordered_choices = true")
    r.add_argument("--explore", type=float,
                   help="charlab's [search] explore (the sweep's default when not given)")
    r.add_argument("--speed", type=float, default=1.0,
                   help="charlab's per-step speed relative to the surface's (its trials take 1/speed)")
    r.add_argument("--shared", type=float, default=0.0,
                   help="share of the noise variance that is a sweep's luck with a cell (its seed)")
    r.add_argument("--save", help="write the simulated races (race.py's --save format)")
    r.add_argument("--opponent", help="take Optuna's side from a --save file of the same seeds")
    r.add_argument("--optuna-rule", choices=["none", "hyperband"], default="hyperband")
    a = ap.parse_args()
    fit(a) if a.cmd == "fit" else race_on(a)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Issue 20's importance question: on three synthetic sweeps whose answer is known (one key
that matters, one inert, one that matters a little; a different key leads in each), what
charlab's estimate, the `fanova` crate and Optuna's fANOVA say, over three forest seeds each.

    scripts/importance-compare.sh        (builds the Rust side, runs this in .venv-torch)

The metric is a sum of one term per key plus noise, so the true first-order shares are the
terms' variances over the sampled points divided by their sum (noise left out).
"""
import json
import math
import random
import subprocess
import sys

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.importance import FanovaImportanceEvaluator, get_param_importances

KEYS = ["lr", "hidden", "dropout"]
HIDDEN = [64, 128, 256]


def terms(which, lr, h, d):
    """Each key's term of the metric (lr in log10): one key matters, one a little, one not."""
    lg = math.log10(lr)
    if which == "lr-leads":  # lr matters, hidden a little, dropout inert
        return [0.8 * (lg + 2.2) ** 2, 0.12 * math.log2(256 / h), 0.0]
    if which == "hidden-leads":  # hidden matters, lr a little, dropout inert
        return [0.05 * (lg + 2.5) ** 2, 0.5 * math.log2(256 / h), 0.0]
    # dropout matters, hidden a little, lr inert
    return [0.0, 0.05 * math.log2(256 / h), 4.0 * (d - 0.3) ** 2]


def points(design, n, rng):
    if design == "grid":
        return [(lr, h, d) for lr in (1e-4, 1e-3, 3e-3, 1e-2, 1e-1) for h in HIDDEN for d in (0.0, 0.25, 0.5)]
    return [(10 ** rng.uniform(-4, -1), rng.choice(HIDDEN), rng.uniform(0, 0.5)) for _ in range(n)]


def sweeps():
    rng = random.Random(20)
    # Each shape twice: a sweep of a usual size with little noise, and 12 trials with seed-sized
    # noise (the size of issue 20's example).
    specs = [("lr-leads", "random", 40, 0.02), ("hidden-leads", "grid", 45, 0.02),
             ("dropout-leads", "random", 24, 0.02), ("lr-leads", "random", 12, 0.05),
             ("hidden-leads", "random", 12, 0.05), ("dropout-leads", "random", 12, 0.05)]
    out = []
    for which, design, n, noise in specs:
        rows, parts = [], []
        for lr, h, d in points(design, n, rng):
            t = terms(which, lr, h, d)
            parts.append(t)
            y = 1.5 + sum(t) + rng.gauss(0, noise)
            rows.append({"values": [f"{lr:.4g}", str(h), f"{d:.4g}"], "metric": y, "x": [lr, h, d]})
        var = [variance([p[k] for p in parts]) for k in range(3)]
        truth = [v / sum(var) for v in var]
        out.append({"name": f"{which} ({design}, {len(rows)} trials, noise {noise})", "keys": KEYS, "rows": rows, "truth": truth})
    return out


def variance(xs):
    m = sum(xs) / len(xs)
    return sum((x - m) ** 2 for x in xs) / len(xs)


def optuna_shares(rows, seed):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {
        "lr": FloatDistribution(1e-4, 1e-1, log=True),
        "hidden": CategoricalDistribution(HIDDEN),
        "dropout": FloatDistribution(0.0, 0.5),
    }
    study = optuna.create_study()
    for r in rows:
        lr, h, d = r["x"]
        study.add_trial(optuna.trial.create_trial(
            params={"lr": lr, "hidden": h, "dropout": d}, distributions=dists, value=r["metric"]))
    imp = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed))
    return [imp[k] for k in KEYS]


def stats(runs):
    """Per key: mean over seeds, and the range."""
    return [(sum(c) / len(c), min(c), max(c)) for c in zip(*runs)]


def main():
    binary = sys.argv[1]
    data = sweeps()
    path = "/tmp/importance-sweeps.json"
    with open(path, "w") as f:
        json.dump(data, f)
    rust = json.loads(subprocess.run([binary, path], check=True, capture_output=True, text=True).stdout)
    print(f"optuna {optuna.__version__}; three forest seeds each (charlab 1-3, crate and Optuna 0-2)\n")
    print("| sweep | key | truth | charlab | fanova crate | Optuna fANOVA |")
    print("|---|---|---|---|---|---|")
    err = {"charlab": [], "fanova crate": []}
    err_truth = {"charlab": [], "fanova crate": [], "Optuna fANOVA": []}
    for s in data:
        r = rust[s["name"]]
        opt = stats([optuna_shares(s["rows"], seed) for seed in range(3)])
        ours, crate = stats(r["charlab"]), stats(r["fanova_crate"])
        for k, key in enumerate(KEYS):
            cell = lambda st: f"{st[k][0]:.2f} ({st[k][1]:.2f}–{st[k][2]:.2f})"
            print(f"| {s['name']} | {key} | {s['truth'][k]:.2f} | {cell(ours)} | {cell(crate)} | {cell(opt)} |")
            err["charlab"].append(abs(ours[k][0] - opt[k][0]))
            err["fanova crate"].append(abs(crate[k][0] - opt[k][0]))
            for name, st in (("charlab", ours), ("fanova crate", crate), ("Optuna fANOVA", opt)):
                err_truth[name].append(abs(st[k][0] - s["truth"][k]))
    print()
    for name in err:
        e = err[name]
        print(f"{name}: mean |share − Optuna's| {sum(e) / len(e):.3f}, largest {max(e):.3f}")
    for name, e in err_truth.items():
        print(f"{name}: mean |share − truth| {sum(e) / len(e):.3f}, largest {max(e):.3f}")
    tpe = json.loads(subprocess.run([binary, "tpe"], check=True, capture_output=True, text=True).stdout)
    print("\nTPE, 30 trials (10 random first), 20 seeds: best value found, mean (worst)")
    for o in tpe:
        a, b = o["charlab"], o["tpe_crate"]
        print(f"objective {o['objective']}: charlab {sum(a) / len(a):.4f} ({max(a):.4f}), "
              f"tpe crate {sum(b) / len(b):.4f} ({max(b):.4f})")


if __name__ == "__main__":
    main()

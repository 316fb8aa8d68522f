"""Driver of scripts/race.sh: the same sweep run by charlab and by Optuna + PyTorch, on the same
prepared ids, two trials at a time with one thread each, sides alternated on each repeat.

grid: charlab's `[grid]` against Optuna's GridSampler over the same points (two worker processes
sharing a journal file): wall time of the whole sweep, best val loss, and a per-configuration
table. tpe: charlab's `[search] method = "tpe"` against Optuna's TPESampler over the same space
and trial count: the best val loss each side has reached at equal wall times.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib

from bench import cpu_model

MAX_CHARS = {"hongloumeng": 300_000, "shakespeare": 1_000_000}
FIXED = dict(embed_dim=64, layers=2, batch_size=32, seq_len=64, grad_clip=5.0)
TPE_SPACE = {"lr": ["log_uniform", 1e-4, 2e-2], "hidden": ["choice", [64, 128, 256], None],
             "dropout": ["uniform", 0.0, 0.5]}


def toml_value(v):
    return json.dumps(v) if not isinstance(v, float) else repr(v)


def sweep_file(a, name, grid):
    lines = ["[experiment]", f'name = "{name}"', f'corpus = "{a.corpus}"', 'device = "cpu"',
             "jobs = 2", "seed = 1", "", "[defaults]"]
    fixed = dict(FIXED, max_steps=a.steps, eval_every=a.steps, log_every=10, histogram_every=0,
                 sample_length=20, precision=a.precision)
    if grid:
        fixed["dropout"] = a.dropout
    lines += [f"{k} = {toml_value(v)}" for k, v in fixed.items()]
    lines.append(f"clean.max_chars = {MAX_CHARS[a.corpus]}")
    if grid:
        lines += ["", "[grid]", f"lr = {grid['lr']}", f"hidden = {grid['hidden']}"]
    else:
        lines += ["", "[search]", 'method = "tpe"', f"trials = {a.trials}",
                  f"startup_trials = {a.startup}", "", "[random]",
                  "lr = { log_uniform = [1e-4, 2e-2] }", "hidden = { choice = [64, 128, 256] }",
                  "dropout = { uniform = [0.0, 0.5] }"]
    return "\n".join(lines) + "\n"


def run_charlab(a, grid, rep):
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "race.toml")
    with open(path, "w") as f:
        f.write(sweep_file(a, f"race{rep}", grid))
    t0 = time.time()
    p = subprocess.run(["target/release/charlab", "sweep", path, "--runs", tmp, "--plain"],
                       capture_output=True, text=True)
    wall = time.time() - t0
    if p.returncode != 0:
        sys.exit(f"charlab sweep failed ({p.returncode}):\n{p.stderr[-3000:]}")
    trials = []
    for rj in glob.glob(os.path.join(tmp, f"race{rep}", "*", "run.json")):
        r = json.load(open(rj))
        cfg = tomllib.load(open(os.path.join(os.path.dirname(rj), "config.toml"), "rb"))
        end = os.path.getmtime(rj) - t0
        trials.append(dict(params={k: cfg[k] for k in ["lr", "hidden", "dropout"]},
                           val_loss=r["final_metrics"]["val_loss"], end=end))
    return wall, trials


def run_optuna(a, data, grid, rep):
    tmp = tempfile.mkdtemp()
    fixed = (f"--data {data} --steps {a.steps} --threads 1 --embed {FIXED['embed_dim']} "
             f"--layers {FIXED['layers']} --batch {FIXED['batch_size']} --seq {FIXED['seq_len']} "
             f"--clip {FIXED['grad_clip']} --seed 1 --dropout {a.dropout}"
             + (" --autocast" if a.autocast else ""))
    space = {"grid": grid} if grid else {"random": TPE_SPACE}
    trials = len(grid["lr"]) * len(grid["hidden"]) if grid else a.trials
    cmd = [sys.executable, "scripts/race_optuna.py", "--journal", os.path.join(tmp, "j.log"),
           "--study", f"race{rep}", "--space", json.dumps(space), "--sampler",
           "grid" if grid else "tpe", "--trials", str(trials), "--startup", str(a.startup),
           "--fixed", fixed]
    env = dict(os.environ, PYTHONPATH="scripts")
    t0 = time.time()
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
               for _ in range(2)]
    outs = [w.communicate()[0] for w in workers]
    wall = time.time() - t0
    if any(w.returncode for w in workers):
        sys.exit("an Optuna worker failed")
    found = [json.loads(line) for out in outs for line in out.splitlines() if line.startswith("{")]
    for t in found:
        t["end"] -= t0
    return wall, found


def prepared_data(a):
    """Prepares the corpus once (both sides read the same ids) and returns its directory."""
    tmp = tempfile.mkdtemp()
    cfg = os.path.join(tmp, "run.toml")
    with open(cfg, "w") as f:
        f.write(f'corpus = "{a.corpus}"\nmax_steps = 1\nhistogram_every = 0\n'
                f'device = "cpu"\n[clean]\nmax_chars = {MAX_CHARS[a.corpus]}\n')
    out = os.path.join(tmp, "run")
    subprocess.run(["target/release/charlab", "train", "--config", cfg, "--out", out, "--plain"],
                   check=True, capture_output=True)
    key = json.load(open(os.path.join(out, "run.json")))["corpus"]["key"]
    return os.path.join(os.environ.get("CHARLAB_DATA", "data"), "prepared", key)


def key_of(params):
    return (round(float(params["lr"]), 8), int(params["hidden"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["grid", "tpe"])
    ap.add_argument("--corpus", default="hongloumeng", choices=sorted(MAX_CHARS))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lrs", default="5e-4,2e-3,5e-3,1e-2")
    ap.add_argument("--hiddens", default="64,128,256")
    ap.add_argument("--dropout", type=float, default=0.2, help="grid mode's fixed dropout")
    ap.add_argument("--trials", type=int, default=16, help="tpe mode's trial count")
    ap.add_argument("--startup", type=int, default=8, help="tpe mode's random trials")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="charlab's precision key")
    ap.add_argument("--autocast", action="store_true",
                    help="PyTorch under autocast-bf16 (the expert's setup)")
    ap.add_argument("--optuna-first", action="store_true",
                    help="start with the Optuna side (then alternate)")
    a = ap.parse_args()
    grid = None
    if a.mode == "grid":
        grid = {"lr": [float(x) for x in a.lrs.split(",")],
                "hidden": [int(x) for x in a.hiddens.split(",")]}
    data = prepared_data(a)
    races = []
    for rep in range(a.repeat):
        # Alternate which side goes first, so drift in the machine's speed hits both.
        if (rep + a.optuna_first) % 2 == 0:
            mine, theirs = run_charlab(a, grid, rep), run_optuna(a, data, grid, rep)
        else:
            theirs, mine = run_optuna(a, data, grid, rep), run_charlab(a, grid, rep)
        races.append((mine, theirs))
    print(f"{cpu_model()}, {os.cpu_count()} logical CPUs; {a.corpus} "
          f"(first {MAX_CHARS[a.corpus]:,} clean chars); {a.steps} steps per trial, 2 trials at a "
          f"time, 1 thread each; embed 64, 2 layers, batch 32, seq 64, Adam, clip 5; charlab "
          f"precision {a.precision}, PyTorch {'autocast-bf16' if a.autocast else 'fp32'}")
    (report_grid if grid else report_tpe)(races, a)


def report_grid(races, a):
    print(f"dropout {a.dropout}; Optuna GridSampler, 2 workers, journal storage\n")
    print("| repeat | charlab wall s | Optuna + PyTorch wall s | speed-up | charlab best val | "
          "PyTorch best val |")
    print("|---|---|---|---|---|---|")
    for i, ((mw, mt), (tw, tt)) in enumerate(races):
        print(f"| {i + 1} | {mw:.1f} | {tw:.1f} | **{tw / mw:.2f}x** | "
              f"{min(t['val_loss'] for t in mt):.3f} | {min(t['val_loss'] for t in tt):.3f} |")
    (_, mt), (_, tt) = races[0]
    mine = {key_of(t["params"]): t["val_loss"] for t in mt}
    theirs = {}
    for t in tt:  # a grid point two workers both ran: keep the first
        theirs.setdefault(key_of(t["params"]), t["val_loss"])
    print("\n| lr | hidden | charlab val | PyTorch val | charlab − PyTorch |")
    print("|---|---|---|---|---|")
    lower = 0
    for k in sorted(mine):
        m, t = mine[k], theirs.get(k, float("nan"))
        lower += m <= t
        print(f"| {k[0]:g} | {k[1]} | {m:.3f} | {t:.3f} | {m - t:+.3f} |")
    print(f"\ncharlab ends lower in {lower} of {len(mine)} configurations.")


def report_tpe(races, a):
    print(f"{a.trials} trials, {a.startup} random first; Optuna TPESampler, 2 workers\n")
    for i, ((mw, mt), (tw, tt)) in enumerate(races):
        print(f"repeat {i + 1}: charlab {mw:.1f} s, Optuna + PyTorch {tw:.1f} s")
        print("| wall s | charlab best val | PyTorch best val |")
        print("|---|---|---|")
        horizon = max(mw, tw)
        for frac in [0.125, 0.25, 0.375, 0.5, 0.75, 1.0]:
            at = horizon * frac
            best = lambda ts: min((t["val_loss"] for t in ts if t["end"] <= at), default=None)
            f = lambda v: "-" if v is None else f"{v:.3f}"
            print(f"| {at:.0f} | {f(best(mt))} | {f(best(tt))} |")
        print()


if __name__ == "__main__":
    main()

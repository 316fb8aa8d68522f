"""Driver of scripts/race.sh: the same sweep run by charlab and by Optuna + PyTorch, on the same
prepared ids, two trials at a time with one thread each, sides alternated on each repeat.

grid: charlab's `[grid]` against Optuna's GridSampler over the same points (two worker processes
sharing a journal file): wall time of the whole sweep, best val loss, and a per-configuration
table. tpe: charlab's `[search] method = "tpe"` against Optuna's TPESampler over the same space
(lr, hidden, dropout, layers) and trial count, `--seeds N` races: the best finished val loss
each side holds at every minute, after k trials (the first k to end, and the first k proposed)
and after S steps trained in all (mean ± std over seeds), the area under the best-so-far curve,
when charlab reaches Optuna's final best, and an SVG chart.
`--prune` adds charlab's pruning rule (`--rule`: hyperband, the default, as Optuna's, or halving)
and Optuna's HyperbandPruner (val loss every 100 steps);
`--bf16` runs PyTorch under autocast-bf16. `--minutes M` gives both sides M minutes instead of
a trial count (charlab's `stop = { minutes = M }`, Optuna's `timeout`; `--trials` is then only a
cap): the tables stop at M minutes, and a trial counts only if it ended by then.
`--key-by-key` runs charlab's TPE with `multivariate = false`, `--ordered` with
`ordered_choices = true` (hidden sizes and layer counts as ordered keys); `--opponent FILE` takes Optuna's
side from an earlier race's `--save` file instead of running it again, `--mine FILE` charlab's
(to race one side's variant against the other side's saved runs: each side runs alone on the
machine in any case); `--first-seed S` numbers the seeds from S (to add seeds to a race; in
grid mode, the one seed of every repeat).
`--optuna-unpruned` keeps charlab's pruning but runs Optuna without its pruner (and without the
mid-trial evaluations only the pruner reads): the expert's setup without Hyperband.
`--seed-per-trial` trains each trial of both sides from its own init seed (the race's seed plus the
trial's number: charlab's `seed_per_trial = true`), so that a side's result is not one draw's luck.
`--explore X`, `--explore-fade N` and `--min-progress X` set charlab's `[search] explore`,
`explore_fade` and its pruning's early cut (`min_progress = 0` races without it).
`--charlab-startup N` gives charlab's side N startup trials while Optuna keeps `--startup` (to
race charlab's startup length alone against a saved Optuna side).
"""
import argparse
import glob
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib

from bench import autocast_refusal, cpu_model

MAX_CHARS = {"hongloumeng": 300_000, "shakespeare": 1_000_000}
FIXED = dict(embed_dim=64, layers=2, batch_size=32, seq_len=64, grad_clip=5.0)
TPE_SPACE = {"lr": ["log_uniform", 1e-4, 2e-2], "hidden": ["choice", [64, 128, 256], None],
             "dropout": ["uniform", 0.0, 0.5], "layers": ["choice", [1, 2], None]}
SWEPT = ["lr", "hidden", "dropout", "layers"]


def toml_value(v):
    return json.dumps(v) if not isinstance(v, float) else repr(v)


def sweep_file(a, name, grid, seed=1):
    lines = ["[experiment]", f'name = "{name}"', f'corpus = "{a.corpus}"', 'device = "cpu"',
             "jobs = 2", f"seed = {seed}"]
    if a.prune and not grid:
        early = "" if a.min_progress is None else f", min_progress = {a.min_progress}"
        lines.append(f'pruning = {{ rule = "{a.rule}"{early} }}')
    if a.minutes and not grid:
        lines.append(f"stop = {{ minutes = {a.minutes} }}")
    lines += ["", "[defaults]"]
    # The race's seed draws the initial weights too, as Optuna's side passes it to every trial
    # (`--seed`): without it every charlab race would train from seed 1's draw.
    fixed = dict(FIXED, max_steps=a.steps, eval_every=a.eval_every or a.steps, log_every=10,
                 histogram_every=0, sample_length=20, precision=a.precision, seed=seed)
    if grid:
        fixed["dropout"] = a.dropout
    else:
        del fixed["layers"]
    lines += [f"{k} = {toml_value(v)}" for k, v in fixed.items()]
    lines.append(f"clean.max_chars = {MAX_CHARS[a.corpus]}")
    if grid:
        lines += ["", "[grid]", f"lr = {grid['lr']}", f"hidden = {grid['hidden']}"]
    else:
        lines += ["", "[search]", 'method = "tpe"', f"trials = {a.trials}",
                  f"startup_trials = {charlab_startup(vars(a))}"]
        if a.cost_aware:
            lines.append("cost_aware = true")
        if a.ordered:
            lines.append("ordered_choices = true")
        if a.key_by_key:
            lines.append("multivariate = false")
        if a.explore is not None:
            lines.append(f"explore = {a.explore}")
        if a.explore_fade is not None:
            lines.append(f"explore_fade = {a.explore_fade}")
        if a.seed_per_trial:
            lines.append("seed_per_trial = true")
        lines += ["", "[random]", "lr = { log_uniform = [1e-4, 2e-2] }",
                  "hidden = { choice = [64, 128, 256] }", "dropout = { uniform = [0.0, 0.5] }",
                  "layers = { choice = [1, 2] }"]
    return "\n".join(lines) + "\n"


def run_charlab(a, grid, rep, seed=1):
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "race.toml")
    with open(path, "w") as f:
        f.write(sweep_file(a, f"race{rep}", grid, seed))
    t0 = time.time()
    p = subprocess.run(["target/release/charlab", "sweep", path, "--runs", tmp, "--plain"],
                       capture_output=True, text=True)
    wall = time.time() - t0
    if p.returncode != 0:
        sys.exit(f"charlab sweep failed ({p.returncode}):\n{p.stderr[-3000:]}")
    trials = []
    sweep = os.path.join(tmp, f"race{rep}")
    manifest = json.load(open(os.path.join(sweep, "manifest.json")))
    numbers = {t["dir"]: t["index"] for t in manifest["trials"]}
    for rj in glob.glob(os.path.join(sweep, "*", "run.json")):
        r = json.load(open(rj))
        cfg = tomllib.load(open(os.path.join(os.path.dirname(rj), "config.toml"), "rb"))
        end = os.path.getmtime(rj) - t0
        done = r["status"] == "completed"
        number = numbers[os.path.basename(os.path.dirname(rj))]
        trials.append(dict(params={k: cfg[k] for k in SWEPT}, completed=done, end=end,
                           pruned=r["status"] == "pruned", number=number, steps=r["steps"],
                           val_loss=r["final_metrics"]["val_loss"] if done else None))
    return wall, trials


def run_optuna(a, data, grid, rep, seed=1):
    tmp = tempfile.mkdtemp()
    fixed = (f"--data {data} --steps {a.steps} --threads 1 --embed {FIXED['embed_dim']} "
             f"--batch {FIXED['batch_size']} --seq {FIXED['seq_len']} "
             f"--clip {FIXED['grad_clip']} --seed {seed}"
             + (f" --layers {FIXED['layers']} --dropout {a.dropout}" if grid else "")
             + (" --autocast" if a.autocast else ""))
    pruned = a.prune and not grid and not a.optuna_unpruned
    if pruned:
        fixed += " --eval-at " + ",".join(str(s) for s in range(a.eval_every, a.steps,
                                                                 a.eval_every))
    space = {"grid": grid} if grid else {"random": TPE_SPACE}
    trials = len(grid["lr"]) * len(grid["hidden"]) if grid else a.trials
    cmd = [sys.executable, "scripts/race_optuna.py", "--journal", os.path.join(tmp, "j.log"),
           "--study", f"race{rep}", "--space", json.dumps(space), "--sampler",
           "grid" if grid else "tpe", "--trials", str(trials), "--startup", str(a.startup),
           "--fixed", fixed] + (["--prune"] if pruned else []) + (
               ["--seed-per-trial", str(seed)] if a.seed_per_trial else []) + (
               ["--timeout", str(a.minutes * 60)] if a.minutes and not grid else [])
    env = dict(os.environ, PYTHONPATH="scripts")
    t0 = time.time()
    # Each worker its own sampler seed: two with one seed would draw the same startup trials.
    workers = [subprocess.Popen(cmd + ["--seed", str(seed * 10 + w)], stdout=subprocess.PIPE,
                                text=True, env=env) for w in range(2)]
    outs = [w.communicate()[0] for w in workers]
    wall = time.time() - t0
    if any(w.returncode for w in workers):
        sys.exit("an Optuna worker failed")
    found = [json.loads(line) for out in outs for line in out.splitlines() if line.startswith("{")]
    for t in found:
        t["end"] -= t0
        t.setdefault("completed", True)
        t["pruned"] = not t["completed"]
        if not t["completed"]:
            t["val_loss"] = None
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
    ap.add_argument("--trials", type=int, default=12, help="tpe mode's trial count")
    ap.add_argument("--startup", type=int, default=4, help="tpe mode's random trials")
    ap.add_argument("--charlab-startup", type=int,
                    help="tpe mode: charlab's startup_trials when not --startup's")
    ap.add_argument("--seeds", type=int, default=1, help="tpe mode: races, seeds 1..N")
    ap.add_argument("--first-seed", type=int, default=1,
                    help="tpe mode: number the seeds from here (to add seeds to a race); grid "
                    "mode: every repeat's seed (initial weights; the grid itself is fixed)")
    ap.add_argument("--prune", action="store_true",
                    help="tpe mode: charlab's halving rule, Optuna's HyperbandPruner")
    ap.add_argument("--eval-every", type=int, default=100, help="tpe mode with --prune")
    ap.add_argument("--rule", default="hyperband", choices=["hyperband", "halving"],
                    help="tpe mode with --prune: charlab's pruning rule")
    ap.add_argument("--cost-aware", action="store_true", help="charlab's cost_aware = true")
    ap.add_argument("--ordered", action="store_true",
                    help="charlab's ordered_choices = true (sizes as ordered keys)")
    ap.add_argument("--key-by-key", action="store_true",
                    help="charlab's multivariate = false (TPE's keys modelled one by one)")
    ap.add_argument("--seed-per-trial", action="store_true",
                    help="tpe mode: each trial of both sides its own init seed (the race's seed "
                         "plus its number) instead of the race's seed for every trial")
    ap.add_argument("--explore", type=float,
                    help="charlab's [search] explore (its default when not given)")
    ap.add_argument("--explore-fade", type=int,
                    help="charlab's [search] explore_fade (its default when not given)")
    ap.add_argument("--min-progress", type=float,
                    help="tpe mode with --prune: charlab's pruning min_progress, the early cut "
                    "(its default when not given; 0 turns it off)")
    ap.add_argument("--svg", help="tpe mode: write the best-so-far chart here")
    ap.add_argument("--only", choices=["charlab"],
                    help="tpe mode: run charlab's side alone (to compare its own variants)")
    ap.add_argument("--save", help="tpe mode: write every trial's end and loss here (JSON)")
    ap.add_argument("--minutes", type=float, help="tpe mode: a time budget per side, not trials")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="charlab's precision key")
    ap.add_argument("--autocast", "--bf16", action="store_true",
                    help="PyTorch under autocast-bf16 (the expert's setup)")
    ap.add_argument("--opponent", help="tpe mode: the Optuna side from this --save file of a race "
                    "with the same settings, not run again (to measure a charlab variant)")
    ap.add_argument("--mine", help="tpe mode: charlab's side from this --save file of a race with "
                    "the same settings, not run again (to measure an Optuna variant)")
    ap.add_argument("--optuna-unpruned", action="store_true",
                    help="tpe mode with --prune: Optuna without its HyperbandPruner")
    ap.add_argument("--optuna-first", action="store_true",
                    help="start with the Optuna side (then alternate)")
    a = ap.parse_args()
    grid = None
    if a.mode == "grid":
        grid = {"lr": [float(x) for x in a.lrs.split(",")],
                "hidden": [int(x) for x in a.hiddens.split(",")]}
    a.eval_every = a.eval_every if a.prune and not grid else 0
    data = prepared_data(a)
    refused = a.autocast and not a.only and not a.opponent and autocast_refusal(data)
    if refused:
        sys.exit(f"--autocast: PyTorch's autocast cannot train this model on this CPU "
                 f"({refused}); race PyTorch fp32 instead (leave out --autocast)")
    races = []
    mine_saved = saved_side(a, a.mine, 0) if a.mine else None
    theirs_saved = saved_side(a, a.opponent, 1) if a.opponent else None
    for rep in range(a.repeat if grid else a.seeds):
        seed = a.first_seed if grid else rep + a.first_seed
        # Alternate which side goes first, so drift in the machine's speed hits both.
        if a.only or mine_saved or theirs_saved:
            mine = mine_saved[rep] if mine_saved else run_charlab(a, grid, rep, seed)
            theirs = (theirs_saved[rep] if theirs_saved else
                      (0.0, []) if a.only else run_optuna(a, data, grid, rep, seed))
        elif (rep + a.optuna_first) % 2 == 0:
            mine, theirs = run_charlab(a, grid, rep, seed), run_optuna(a, data, grid, rep, seed)
        else:
            theirs, mine = run_optuna(a, data, grid, rep, seed), run_charlab(a, grid, rep, seed)
        print(f"seed {seed}: charlab {mine[0]:.0f} s, Optuna {theirs[0]:.0f} s", file=sys.stderr,
              flush=True)
        races.append((mine, theirs))
    print(f"{cpu_model()}, {os.cpu_count()} logical CPUs; {a.corpus} "
          f"(first {MAX_CHARS[a.corpus]:,} clean chars); {a.steps} steps per trial, 2 trials at a "
          f"time, 1 thread each; embed 64, {'2 layers, ' if grid else ''}batch 32, seq 64, Adam, "
          f"clip 5; charlab precision {a.precision}, PyTorch "
          f"{'autocast-bf16' if a.autocast else 'fp32'}")
    if a.save:
        with open(a.save, "w") as f:
            json.dump({"args": vars(a), "races": races}, f)
    (report_grid if grid else report_tpe)(races, a)


# What shapes each side's runs: a saved side is reused only under the same values.
SHAPES = ({"charlab": ["precision", "cost_aware", "joint", "rule", "ordered", "explore",
                       "explore_fade", "min_progress", "charlab_startup"],
           "Optuna": ["autocast", "optuna_unpruned"]},
          ["mode", "corpus", "steps", "trials", "startup", "prune", "eval_every", "minutes",
           "first_seed", "seed_per_trial"])


def charlab_startup(args):
    """charlab's startup_trials in a race's arguments: `--charlab-startup`, else `--startup`."""
    return args.get("charlab_startup") or args["startup"]


def shape(args, side):
    """The settings of `side` in a race's arguments, reading files from before a flag existed:
    `multivariate` (joint on request) preceded `key_by_key` (joint by default); a race saved
    before `--min-progress` ran without the early cut (0), not with today's default (None)."""
    args = dict(args, first_seed=args.get("first_seed", 1), rule=args.get("rule", "halving"),
                ordered=args.get("ordered", False), explore=args.get("explore"),
                explore_fade=args.get("explore_fade"),
                min_progress=args.get("min_progress", 0.0),
                seed_per_trial=args.get("seed_per_trial", False),
                optuna_unpruned=args.get("optuna_unpruned", False),
                charlab_startup=charlab_startup(args),
                joint=(not args["key_by_key"]) if "key_by_key" in args
                else bool(args.get("multivariate", False)))
    return {k: args.get(k) for k in SHAPES[0][side] + SHAPES[1]}


def saved_side(a, path, index):
    """Side `index` (0 charlab, 1 Optuna) of each seed from an earlier race's --save file,
    refused unless that race ran the side with the settings that shape it, and enough seeds."""
    side = ["charlab", "Optuna"][index]
    old = json.load(open(path))
    ours, theirs = shape(old["args"], side), shape(vars(a), side)
    differ = [k for k in ours if ours[k] != theirs[k]]
    ran = old["args"].get("only") in (None, side.lower()) or (index == 1 and old["args"].get("opponent"))
    if differ or not ran or len(old["races"]) < a.seeds:
        sys.exit(f"{path}: not a race that ran {side}'s side with these settings "
                 f"(differs in {differ or 'seeds'})")
    return [tuple(r[index]) for r in old["races"][:a.seeds]]


def report_grid(races, a):
    print(f"dropout {a.dropout}; seed {a.first_seed}; Optuna GridSampler, 2 workers, journal "
          "storage\n")
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


def best_at(trials, t):
    """The best finished val loss at time t (None before the first finished trial)."""
    return min((x["val_loss"] for x in trials if x["completed"] and x["end"] <= t), default=None)


def best_after(trials, k):
    """The best finished val loss once k trials (of any end) have ended."""
    ended = sorted(trials, key=lambda x: x["end"])[:k]
    return min((x["val_loss"] for x in ended if x["completed"]), default=None)


def best_of_first(trials, k):
    """The best finished val loss among the first k trials proposed (by number, as Optuna's
    optimization history orders them): unlike `best_after`, a trial pruned soon does not push
    an earlier-proposed one out. None for a race saved before trials carried their number."""
    if any("number" not in x for x in trials):
        return None
    return min((x["val_loss"] for x in trials if x["number"] < k and x["completed"]),
               default=None)


def best_after_steps(trials, steps):
    """The best finished val loss once the trials that have ended trained `steps` steps in all
    (per-step speed taken out, a pruned trial's cost counted as the steps it ran). None for a
    race saved before trials carried their steps, or one that never trained that many."""
    if any("steps" not in x for x in trials):
        return None
    spent, best = 0, None
    for x in sorted(trials, key=lambda x: x["end"]):
        spent += x["steps"]
        if spent > steps:
            return best
        if x["completed"]:
            best = x["val_loss"] if best is None else min(best, x["val_loss"])
    return None


def mean_std(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.3f} ± {sd:.3f}" + (f" ({len(vals)})" if len(vals) < N[0] else "")


def paired(ours, theirs):
    """charlab − Optuna, seed by seed, as mean ± its standard error: whether a gap between the
    means stands out of the seeds' noise (each seed fixes both sides' startups, so the paired
    difference is the reading; the two sides' own stds overstate it)."""
    d = [o - t for o, t in zip(ours, theirs) if o is not None and t is not None]
    if len(d) < 2:
        return "-"
    return f"{statistics.mean(d):+.3f} ± {statistics.stdev(d) / math.sqrt(len(d)):.3f}"


N = [1]


def area(trials, start, end, floor):
    """Area between the best-so-far curve and `floor` over [start, end], in loss × s."""
    ts = sorted(x["end"] for x in trials if x["completed"] and start < x["end"] < end)
    total, prev = 0.0, start
    for t in ts + [end]:
        b = best_at(trials, prev)
        total += ((b if b is not None else math.inf) - floor) * (t - prev)
        prev = t
    return total


def report_tpe(races, a):
    N[0] = len(races)
    if a.minutes:
        # A time budget: what ended after it does not count, and each side's end is the budget.
        end = a.minutes * 60
        races = [((end, [x for x in mt if x["end"] <= end]), (end, [x for x in tt if x["end"] <= end]))
                 for (_, mt), (_, tt) in races]
    budget = f"{a.minutes:g} minutes a side (trials ended by then)" if a.minutes else f"{a.trials} trials"
    ours = charlab_startup(vars(a))
    first = f"{a.startup} random first" + (f" (charlab {ours})" if ours != a.startup else "")
    print(f"{budget}, {first}, {len(races)} seeds; Optuna TPESampler"
          f"{' + HyperbandPruner' if a.prune and not a.optuna_unpruned else ''}, 2 workers; charlab TPE"
          f"{f' + {a.rule}' if a.prune else ''}{', cost-aware' if a.cost_aware else ''}"
          f"{', ordered choices' if getattr(a, 'ordered', False) else ''}"
          f"{f'; val loss every {a.eval_every} steps' if a.prune else ''}\n")
    print("| seed | charlab wall s | Optuna wall s | charlab best | Optuna best | "
          "charlab trials (pruned) | Optuna trials (pruned) |")
    print("|---|---|---|---|---|---|---|")
    for i, ((mw, mt), (tw, tt)) in enumerate(races):
        f = lambda ts: f"{min((x['val_loss'] for x in ts if x['completed']), default=math.nan):.3f}"
        p = lambda ts: f"{len(ts)} ({sum(x['pruned'] for x in ts)})"
        print(f"| {i + a.first_seed} | {mw:.0f} | {tw:.0f} | {f(mt)} | {f(tt)} | {p(mt)} | "
              f"{p(tt)} |")
    horizon = max(max(mw, tw) for (mw, _), (tw, _) in races)
    print("\n| minute | charlab best-so-far | Optuna best-so-far | charlab ≤ Optuna | "
          "charlab − Optuna (± s.e.) |")
    print("|---|---|---|---|---|")
    curve = []
    for m in range(1, math.ceil(horizon / 60) + 1):
        ours = [best_at(mt, 60 * m) for (_, mt), _ in races]
        theirs = [best_at(tt, 60 * m) for _, (_, tt) in races]
        both = [(o, t) for o, t in zip(ours, theirs) if o is not None and t is not None]
        lead = "-" if len(both) < len(races) else (
            "yes" if statistics.mean(o for o, _ in both) <= statistics.mean(t for _, t in both)
            else "**no**")
        curve.append((m, ours, theirs))
        print(f"| {m} | {mean_std(ours)} | {mean_std(theirs)} | {lead} | {paired(ours, theirs)} |")
    print("\n| trials | charlab best of first k ended | Optuna best of first k ended | "
          "charlab best of first k proposed | Optuna best of first k proposed | "
          "difference by proposal (± s.e.) |")
    print("|---|---|---|---|---|---|")
    last = min(a.trials, min(len(ts) for (_, mt), (_, tt) in races for ts in (mt, tt) if ts))
    for k in range(min(8, last), last + 1):
        bests = [[pick(side[1], k) for side in sides]
                 for pick in (best_after, best_of_first) for sides in zip(*races)]
        cells = [mean_std(b) for b in bests] + [paired(*bests[2:])]
        print(f"| {k} | " + " | ".join(cells) + " |")
    print(f"\n| steps trained (in trials of {a.steps}) | charlab best | Optuna best | "
          "charlab − Optuna (± s.e.) |")
    print("|---|---|---|---|")
    for n in (4, 6, 8, 10, 12, 15, 20, 25, 30, 40, 60, 80):
        bests = [[best_after_steps(side[1], n * a.steps) for side in sides]
                 for sides in zip(*races)]
        if all(b is not None for side in bests for b in side):  # every seed got that far
            print(f"| {n} | " + " | ".join(mean_std(side) for side in bests)
                  + f" | {paired(*bests)} |")
    if a.only and not (a.mine or a.opponent):
        if a.svg:
            write_svg(a.svg, curve, a)
        return
    floor = min(x["val_loss"] for (_, mt), (_, tt) in races for x in mt + tt if x["completed"])
    ratios, reach = [], []
    for (mw, mt), (tw, tt) in races:
        start = max(min(x["end"] for x in ts if x["completed"]) for ts in (mt, tt))
        ours, theirs = area(mt, start, tw, floor), area(tt, start, tw, floor)
        ratios.append(ours / theirs if theirs > 0 else float("nan"))
        target = best_at(tt, tw)
        hit = min((x["end"] for x in mt if x["completed"] and x["val_loss"] <= target),
                  default=None)
        reach.append(hit / tw if hit is not None else None)
    print(f"\nArea under best-so-far (above the lowest loss either side reached, {floor:.3f}), "
          f"from when both have a finished trial to the end of Optuna's budget: charlab / Optuna "
          f"= {statistics.mean(ratios):.2f} (per seed: {', '.join(f'{r:.2f}' for r in ratios)}).")
    print("When charlab first holds Optuna's final best, as a share of Optuna's wall time: "
          + ", ".join("never" if r is None else f"{r:.2f}" for r in reach)
          + (f" (mean of those reached {statistics.mean([r for r in reach if r is not None]):.2f})"
             if any(r is not None for r in reach) else ""))
    if a.svg:
        write_svg(a.svg, curve, a)


def write_svg(path, curve, a):
    """Mean best-so-far per minute, one line per side."""
    w, h, pad = 640, 360, 50
    vals = [statistics.mean(v) for _, *sides in curve for v in sides
            if all(x is not None for x in v)]
    lo, hi = min(vals), max(vals)
    mx = max(m for m, _, _ in curve)
    xy = lambda m, v: (pad + (w - 2 * pad) * m / mx,
                       h - pad - (h - 2 * pad) * (v - lo) / max(hi - lo, 1e-9))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{pad}" y="20">best finished val loss, mean over seeds ({a.corpus})</text>',
             f'<text x="{w / 2}" y="{h - 10}">minutes</text>']
    for side, colour, label in [(1, "#d62728", "charlab"), (2, "#1f77b4", "Optuna + PyTorch")]:
        pts = [(c[0], statistics.mean(c[side])) for c in curve
               if all(v is not None for v in c[side])]
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(m, v) for m, v in pts))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                     f'points="{line}"/>')
        parts.append(f'<text x="{w - 190}" y="{30 + 16 * side}" fill="{colour}">{label}</text>')
    for v in (lo, hi):
        parts.append(f'<text x="4" y="{xy(0, v)[1]:.0f}">{v:.2f}</text>')
    for m in range(1, mx + 1):
        parts.append(f'<text x="{xy(m, lo)[0]:.0f}" y="{h - pad + 16}">{m}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts))


if __name__ == "__main__":
    main()

"""Driver of scripts/parity.sh: does charlab learn as fast per step as PyTorch's nn.LSTM?

Runs charlab (`charlab train`) and the PyTorch reference (scripts/torch_ref.py) on the same
prepared ids, batching, optimizer and clipping over a grid of learning rates, hidden sizes and
dropouts, several seeds each, two runs at a time with one thread each (a sweep's trials), and
prints per cell the mean ± std over seeds of the validation loss at each evaluated step. A cell
passes when charlab's mean is at most PyTorch's mean plus one PyTorch seed std.

With --bf16 (issue 27) the question is charlab's own precision: charlab with `precision =
"bf16"` against charlab fp32 (the cell passes when the bf16 mean is at most the fp32 mean plus
one fp32 seed std), with PyTorch under autocast-bf16 in the same table.

Also prints the time to quality: per configuration, the training seconds each side needs to reach
a validation loss both reach (the worse of the two sides' best means), from each run's own
tokens/s, so the figure counts speed only at equal learning.
"""
import argparse
import concurrent.futures as cf
import json
import os
import statistics
import subprocess
import tempfile

from bench import cpu_model

CORPORA = {"hongloumeng": 300_000, "shakespeare": 1_000_000}
BATCH, SEQ, EMBED, LAYERS, CLIP = 32, 64, 64, 2, 5.0


def charlab_config(corpus, cell, seed, steps, threads=1, precision="fp32"):
    lr, hidden, dropout = cell
    return (
        f'precision = "{precision}"\n'

        f'corpus = "{corpus}"\nmax_steps = {steps}\neval_every = 100\nlog_every = 10\n'
        f'histogram_every = 0\nsample_length = 20\nthreads = {threads}\ndevice = "cpu"\n'
        f"embed_dim = {EMBED}\nhidden = {hidden}\nlayers = {LAYERS}\ndropout = {dropout}\n"
        f'batch_size = {BATCH}\nseq_len = {SEQ}\noptimizer = "adam"\nlr = {lr}\n'
        f"grad_clip = {CLIP}\nseed = {seed}\n[clean]\nmax_chars = {CORPORA[corpus]}\n"
    )


def run_charlab(corpus, cell, seed, steps, precision="fp32"):
    tmp = tempfile.mkdtemp()
    cfg = os.path.join(tmp, "run.toml")
    with open(cfg, "w") as f:
        f.write(charlab_config(corpus, cell, seed, steps, precision=precision))
    out = os.path.join(tmp, "run")
    p = subprocess.run(["target/release/charlab", "train", "--config", cfg, "--out", out,
                        "--plain"], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"charlab failed: {p.stderr[-2000:]}")
    r = json.load(open(os.path.join(out, "run.json")))
    data = os.path.join(os.environ.get("CHARLAB_DATA", "data"), "prepared", r["corpus"]["key"])
    return data, dict(evals={e["step"]: e["val_loss"] for e in r["evals"]},
                      tps=r["tokens_per_s"])


def run_torch(data, cell, seed, steps, eval_at, autocast=False):
    lr, hidden, dropout = cell
    p = subprocess.run([".venv-torch/bin/python", "scripts/torch_ref.py", "--data", data,
                        "--steps", str(steps), "--threads", "1", "--seed", str(seed),
                        "--embed", str(EMBED), "--hidden", str(hidden), "--layers", str(LAYERS),
                        "--dropout", str(dropout), "--lr", str(lr), "--clip", str(CLIP),
                        "--eval-at", ",".join(map(str, eval_at))]
                       + (["--autocast"] if autocast else []),
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"torch_ref failed: {p.stderr[-2000:]}")
    t = json.loads(p.stdout.strip().splitlines()[-1])
    return dict(evals={int(k): v for k, v in t["evals"].items()}, tps=t["tokens_per_s"])


def load_cache(path):
    """(corpus, cell, seed, side, steps) → result, from a --cache file."""
    out = {}
    if path and os.path.exists(path):
        for line in open(path):
            r = json.loads(line)
            key = (r["corpus"], tuple(r["cell"]), r["seed"], r["side"], r["steps"])
            out[key] = dict(r["result"], evals={int(k): v for k, v in r["result"]["evals"].items()})
    return out


def save_cache(path, key, steps, result):
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(dict(corpus=key[0], cell=key[1], seed=key[2], side=key[3],
                                    steps=steps, result=result)) + "\n")


def stats(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--long", type=int, default=1000, help="steps of the long cells")
    ap.add_argument("--lrs", default="1e-3,1e-2")
    ap.add_argument("--hiddens", default="64,256")
    ap.add_argument("--dropouts", default="0,0.3")
    ap.add_argument("--corpora", default=",".join(CORPORA))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", help="also write every run's evaluations here")
    ap.add_argument("--cache", help="JSON lines of finished runs: read at the start (those runs "
                    "are not run again), appended as each run ends, so a long grid can resume")
    ap.add_argument("--bf16", action="store_true",
                    help="charlab bf16 against charlab fp32, PyTorch autocast-bf16 beside them")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                    help="without --bf16: charlab's precision against PyTorch fp32 (bf16: issue "
                    "27's time to quality)")
    ap.add_argument("--no-torch", action="store_true",
                    help="with --bf16: only the two charlab sides (a check of charlab's own "
                    "precision after a kernel change, without the hour PyTorch's column takes)")
    a = ap.parse_args()
    cells = [(float(lr), int(h), float(d)) for lr in a.lrs.split(",")
             for h in a.hiddens.split(",") for d in a.dropouts.split(",")]
    small = min(c[1] for c in cells)
    # The long cells: the smallest model without dropout, at each learning rate.
    steps_of = {c: a.long if (c[1] == small and c[2] == 0) else a.steps for c in cells}
    eval_at = {c: list(range(100, steps_of[c] + 1, 100)) for c in cells}
    seeds = range(1, a.seeds + 1)
    corpora = a.corpora.split(",")
    results = {}
    # (side, how it runs): the checked side first, its reference second, then the extra column.
    sides = ([("charlab bf16", "bf16"), ("charlab fp32", "fp32"), ("PyTorch autocast", True)]
             if a.bf16 else [("charlab" if a.precision == "fp32" else f"charlab {a.precision}", a.precision),
                ("PyTorch", False)])
    if a.no_torch:
        sides = [side for side in sides if isinstance(side[1], str)]
    cache = load_cache(a.cache)
    with cf.ThreadPoolExecutor(a.jobs) as pool:
        # charlab first (its runs prepare the corpus both sides read), then PyTorch.
        data = {k[0]: v["data"] for k, v in cache.items() if "data" in v}
        for side, how in sides:
            jobs = {}
            for co in corpora:
                for c in cells:
                    for s in seeds:
                        key = (co, c, s, side)
                        if (co, c, s, side, steps_of[c]) in cache:
                            results[key] = cache[(co, c, s, side, steps_of[c])]
                        elif isinstance(how, str):
                            jobs[key] = pool.submit(run_charlab, co, c, s, steps_of[c], how)
                        else:
                            jobs[key] = pool.submit(run_torch, data[co], c, s, steps_of[c],
                                                    eval_at[c], how)
            for key, fut in jobs.items():
                r = fut.result()
                if isinstance(r, tuple):
                    data[key[0]], r = r
                    r = dict(r, data=data[key[0]])
                results[key] = r
                save_cache(a.cache, key, steps_of[key[1]], r)
    if a.json:
        json.dump([dict(corpus=k[0], cell=k[1], seed=k[2], side=k[3], **v)
                   for k, v in results.items()], open(a.json, "w"))
    report(results, corpora, cells, seeds, steps_of, a, [side for side, _ in sides])


def report(results, corpora, cells, seeds, steps_of, a, sides):
    mine, ref, extra = (sides + [None])[:3]
    print(f"{cpu_model()}, {os.cpu_count()} logical CPUs; {a.jobs} runs at a time, 1 thread each; "
          f"embed {EMBED}, {LAYERS} layers, batch {BATCH}, seq {SEQ}, Adam, clip {CLIP}; "
          f"{len(seeds)} seeds; val loss mean ± std")
    print(f"| corpus | lr | hidden | dropout | step | {mine} | {ref} | {mine} − {ref} | "
          f"≤ {ref} + 1 std |" + (f" {extra} |" if extra else ""))
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if extra else ""))
    passed = total = 0
    ttq = []
    for co in corpora:
        for c in cells:
            for step in [100, 300, 1000]:
                if step > steps_of[c]:
                    continue
                m = stats([results[(co, c, s, mine)]["evals"][step] for s in seeds])
                t = stats([results[(co, c, s, ref)]["evals"][step] for s in seeds])
                ok = m[0] <= t[0] + t[1]
                passed, total = passed + ok, total + 1
                x = (stats([results[(co, c, s, extra)]["evals"][step] for s in seeds])
                     if extra else None)
                print(f"| {co} | {c[0]:g} | {c[1]} | {c[2]:g} | {step} | {m[0]:.3f} ± {m[1]:.3f} "
                      f"| {t[0]:.3f} ± {t[1]:.3f} | {m[0] - t[0]:+.3f} | {'yes' if ok else '**no**'} |"
                      + (f" {x[0]:.3f} ± {x[1]:.3f} |" if x else ""))
            ttq.append((co, c, time_to_quality(results, co, c, seeds, mine, ref)))
    print(f"\n{passed} of {total} cells pass.\n")
    print("Time to quality: training seconds (mean over seeds, from each run's tokens/s) to the "
          "first evaluation at or below the target, the worse of the two sides' best mean val loss.")
    print(f"| corpus | lr | hidden | dropout | target val loss | {mine} s | {ref} s | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for co, c, (target, ms, ts) in ttq:
        ratio = f"{ts / ms:.2f}x" if ms and ts else "-"
        print(f"| {co} | {c[0]:g} | {c[1]} | {c[2]:g} | {target:.3f} | "
              f"{ms:.1f} | {ts:.1f} | {ratio} |" if ms and ts else
              f"| {co} | {c[0]:g} | {c[1]} | {c[2]:g} | {target:.3f} | - | - | - |")


def time_to_quality(results, co, c, seeds, mine, ref):
    """(target, seconds of `mine`, seconds of `ref`) over the seed-mean curves."""
    curves = {}
    for side in [mine, ref]:
        runs = [results[(co, c, s, side)] for s in seeds]
        steps = sorted(runs[0]["evals"])
        curves[side] = ([statistics.mean(r["evals"][k] for r in runs) for k in steps], steps,
                        statistics.mean(r["tps"] for r in runs))
    target = max(min(v) for v, _, _ in curves.values())
    secs = []
    for side in [mine, ref]:
        vals, steps, tps = curves[side]
        step = next(k for v, k in zip(vals, steps) if v <= target)
        secs.append(step * BATCH * SEQ / tps)
    return target, secs[0], secs[1]


if __name__ == "__main__":
    main()

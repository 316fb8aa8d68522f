"""Replays the sweep's early cut (src/sweep/pruning.rs `hopeless`) on sweeps already run, so its
`min_progress` is chosen from trials that really trained, not from a guess.

  python3 scripts/early_cut.py --runs DIR... [--shares 0.6,0.7,0.8,0.85,0.9]

`--runs`: sweep directories (`runs/<name>`; race.py's charlab sides are such sweeps). Each
trial's mean training loss at its early point (a tenth of its steps) comes from its run.json
(`early`) or, for runs from before it was recorded, from its worker.log line at that step (the
mean of the logging interval before it: the same 10 steps when `log_every = 10`). Within a
sweep the trials are replayed in their numbering, each compared with the trials numbered before
it, as the sweep's hook compares a trial with the siblings that reached the point first (with
two at a time the real order differs by at most the running trial); the first, which the sweep
has wait for a sibling to pass the point, with the second. For each share: the
trials cut, the share of the sweep's training time they would have saved (what each trained
after its early point), and how many cut trials ended within 0.03 of their sweep's best, or
were its best. Plain Python, no dependencies.

`--unigram NATS [--margin M]` replays a variant the sweep does not run (yet): progress measured
below the training text's unigram entropy (what character frequencies alone give) instead of
below ln V, cutting only where the best sibling is more than M nats below it. On a large
vocabulary (红楼梦: ln V 8.25, unigram 6.12) nearly all of ln V's progress at a tenth of the
steps is the unigram part, so the ln V share barely separates trials there. The unigram
entropy of a corpus (nats): `python3 scripts/early_cut.py --entropy-of FILE [--max-chars N]`.
"""
import argparse
import glob
import json
import math
import os
import re


def trials(sweep):
    """(number, early train loss, ln V, final val loss or None, seconds, steps) per trial."""
    out = []
    for rj in sorted(glob.glob(os.path.join(sweep, "*", "run.json"))):
        d = os.path.dirname(rj)
        try:
            r = json.load(open(rj))
        except (OSError, ValueError):
            continue
        total = r.get("total_steps") or 0
        at = max(total // 10, 1)
        early = (r.get("early") or {}).get("train_loss")
        if early is None:
            try:
                log = open(os.path.join(d, "worker.log")).read()
            except OSError:
                continue
            m = re.search(rf"step {at}/{total}\s+loss ([\d.]+)", log)
            early = float(m.group(1)) if m else None
        if early is None:
            continue
        done = r["status"] == "completed" and r.get("final_metrics")
        final = r["final_metrics"]["val_loss"] if done else None
        out.append((int(os.path.basename(d)[:3]), early, r["ln_vocab"], final,
                    r.get("elapsed_secs") or 0.0, r.get("steps") or 0, at))
    return sorted(out)


def replay(sweeps, share, min_trials, unigram=None, margin=0.0):
    cut = secs = saved = near = best_cut = n = 0
    for ts in sweeps:
        finals = [t[3] for t in ts if t[3] is not None]
        best = min(finals) if finals else math.inf
        before = []
        for i, (_, early, ln_v, final, s, steps, at) in enumerate(ts):
            n += 1
            secs += s
            ref = ln_v if unigram is None else unigram
            # The first trial waits for the next to pass the point (counted as saved from it).
            seen = before or [t[1] for t in ts[i + 1:i + 2]]
            most = ref - min(seen) if len(seen) >= min_trials else 0.0
            if most > margin and ref - early < share * most:
                cut += 1
                saved += s * max(0.0, 1 - at / max(steps, 1))
                near += final is not None and final < best + 0.03
                best_cut += final == best
            before.append(early)
    return n, cut, saved / max(secs, 1e-9), near, best_cut


def correlation(xs, ys):
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sx = math.sqrt(sum((x - mx) ** 2 for x in xs))
    sy = math.sqrt(sum((y - my) ** 2 for y in ys))
    return sxy / (sx * sy)


def entropy(path, max_chars):
    """Unigram entropy (nats) of the first `max_chars` characters of a text, `\r` dropped."""
    text = open(path, encoding="utf-8").read().replace("\r", "")[:max_chars]
    counts = {}
    for ch in text:
        counts[ch] = counts.get(ch, 0) + 1
    return -sum(c / len(text) * math.log(c / len(text)) for c in counts.values())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--entropy-of", help="print a text's unigram entropy (nats) and stop")
    ap.add_argument("--max-chars", type=int, help="with --entropy-of: its first N characters")
    ap.add_argument("--runs", nargs="+", help="sweep directories")
    ap.add_argument("--shares", default="0.6,0.7,0.8,0.85,0.9", help="min_progress values")
    ap.add_argument("--min-trials", type=int, default=1,
                    help="siblings needed (the sweep's early cut needs one)")
    ap.add_argument("--unigram", type=float, help="progress below this entropy (nats), not ln V")
    ap.add_argument("--margin", type=float, default=0.0,
                    help="with --unigram: cut only where the best sibling is this far below it")
    a = ap.parse_args()
    if a.entropy_of:
        print(f"{entropy(a.entropy_of, a.max_chars):.3f}")
        return
    if not a.runs:
        ap.error("--runs is required")
    sweeps = [ts for ts in map(trials, a.runs) if ts]
    done = [(t[1], t[3]) for ts in sweeps for t in ts if t[3] is not None]
    print(f"{len(sweeps)} sweeps, {sum(map(len, sweeps))} trials with an early point, "
          f"{len(done)} completed; correlation of the early training loss with the final val "
          f"loss: {correlation(*zip(*done)):.3f}\n")
    if a.unigram is not None:
        print(f"progress measured below the unigram entropy {a.unigram:g} nats, not ln V; "
              f"a cut needs the best sibling {a.margin:g} nats below it\n")
    print("| min_progress | trials cut | training time saved | cut within 0.03 of the sweep's "
          "best | cut that were the sweep's best |")
    print("|---|---|---|---|---|")
    for share in map(float, a.shares.split(",")):
        n, cut, saved, near, best = replay(sweeps, share, a.min_trials, a.unigram, a.margin)
        print(f"| {share:g} | {cut} of {n} | {saved:.0%} | {near} | {best} of {len(sweeps)} |")


if __name__ == "__main__":
    main()

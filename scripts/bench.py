"""Driver of scripts/bench.sh: runs charlab, the PyTorch reference in fp32 and the same under
autocast-bf16 on each named config and thread count, each in its own process (peak RSS from
that process's own rusage), rotating which side goes first on each repeat (the machine is shared
and noisy), and prints one table naming the processor, with each side's GFLOP/s as a share of
the machine's measured fp32 and bf16 peaks (src/bin/peak.rs).

Configs (issue 4's): M = vocab ~3000 (the first 95k clean chars of hongloumeng), embed 128,
2x256; S = vocab 84 (shakespeare), embed 64, 2x128; H = all of hongloumeng (vocab 4504), embed
128, 2x256. All batch 32, seq 64, Adam 2e-3, clip 5, dropout 0.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

CONFIGS = {
    "M": dict(corpus="hongloumeng", max_chars=95000, embed=128, hidden=256, layers=2),
    "S": dict(corpus="shakespeare", max_chars=None, embed=64, hidden=128, layers=2),
    "H": dict(corpus="hongloumeng", max_chars=None, embed=128, hidden=256, layers=2),
    # The TPE race's costliest trial (scripts/race.py): where a small vocabulary leaves the
    # recurrence nearly all of the step.
    "R": dict(corpus="shakespeare", max_chars=1_000_000, embed=64, hidden=256, layers=2),
}


def cpu_model():
    """The processor's name with its family and model (a VM's name can hide the generation:
    AMD family 25 is Zen 3/4, 26 is Zen 5)."""
    info = {}
    try:
        for line in open("/proc/cpuinfo"):
            k, _, v = line.partition(":")
            info.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or "unknown CPU"
    if "cpu family" in info:
        name += f" (family {info['cpu family']}, model {info.get('model', '?')})"
    return name


class Failed(Exception):
    """A side's process exited non-zero; the message is the tail of its stderr."""


def measured(cmd):
    """Runs cmd under a tiny wrapper that reports its own child's peak RSS (KiB) on stderr."""
    wrapper = (
        "import os,sys\n"
        "pid=os.fork()\n"
        "if pid==0:\n"
        "    os.execvp(sys.argv[1],sys.argv[1:])\n"
        "_,st,ru=os.wait4(pid,0)\n"
        "sys.stderr.write('\\nPEAK_RSS_KB %d\\n'%ru.ru_maxrss)\n"
        "sys.exit(os.waitstatus_to_exitcode(st))\n"
    )
    p = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True)
    if p.returncode != 0:
        raise Failed(f"{cmd[0]} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    rss = [l for l in p.stderr.splitlines() if l.startswith("PEAK_RSS_KB ")][-1]
    return p.stdout, int(rss.split()[1]) / 1024


def autocast_refusal(data):
    """Why PyTorch's autocast cannot train the LSTM on this CPU (the error's line), or None
    where it can. oneDNN has no bf16 LSTM on a CPU without AVX-512 (an AMD Zen 1 refuses it):
    there autocast is not a setup a user can run, so a table or race leaves it out and says so."""
    p = subprocess.run([".venv-torch/bin/python", "scripts/torch_ref.py", "--data", data,
                        "--steps", "1", "--threads", "1", "--autocast"],
                       capture_output=True, text=True)
    if p.returncode == 0:
        return None
    lines = [l.strip() for l in p.stderr.splitlines() if "Error" in l]
    return lines[-1] if lines else p.stderr[-500:].strip()


def flops_per_token(c, vocab):
    """A training token's FLOPs: 3 × the forward's 2 × multiply-adds (forward, input gradient,
    weight gradient), counted as nn.LSTM computes them (charlab's layer-0 table does fewer)."""
    e, h, layers = c["embed"], c["hidden"], c["layers"]
    macs = 4 * h * e + 4 * h * h + (layers - 1) * 8 * h * h + h * vocab
    return 6 * macs


def peaks():
    """GFLOP/s of one thread and of every core per unit: {"fp32" | "bf16" | "bf16 AMX":
    {threads: GFLOP/s}}, from src/bin/peak.rs's "<unit> peak: X GFLOP/s on 1 thread, Y GFLOP/s
    on N threads" lines."""
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "peak"], check=True)
    out = subprocess.run(["target/release/peak"], capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        kind, sep, rest = line.partition(" peak: ")
        nums = [float(w) for w in rest.replace(",", " ").split() if w.replace(".", "").isdigit()]
        if sep and len(nums) >= 4:
            found[kind] = {int(nums[1]): nums[0], int(nums[3]): nums[2]}
    return found


def share(gflops, peak, threads):
    p = peak.get(threads) if peak else None
    return f"{100 * gflops / p:.0f} %" if p else "-"


def run_charlab(c, steps, threads, precision="auto"):
    tmp = tempfile.mkdtemp()
    cfg = os.path.join(tmp, "run.toml")
    with open(cfg, "w") as f:
        f.write(
            f'corpus = "{c["corpus"]}"\nmax_steps = {steps}\neval_every = {steps}\n'
            f'log_every = 10\nhistogram_every = 0\nthreads = {threads}\ndevice = "cpu"\n'
            f'embed_dim = {c["embed"]}\nhidden = {c["hidden"]}\nlayers = {c["layers"]}\n'
            'dropout = 0.0\nbatch_size = 32\nseq_len = 64\noptimizer = "adam"\nlr = 2e-3\n'
            'grad_clip = 5.0\n'
        )
        if c["max_chars"]:
            f.write(f"[clean]\nmax_chars = {c['max_chars']}\n")
    out = os.path.join(tmp, "run")
    _, rss = measured(["target/release/charlab", "train", "--config", cfg, "--out", out, "--plain"])
    r = json.load(open(os.path.join(out, "run.json")))
    data = os.path.join(os.environ.get("CHARLAB_DATA", "data"), "prepared", r["corpus"]["key"])
    prec = r.get("precision") or {}
    return data, dict(impl=f"charlab {r['charlab_version']} (candle {r['candle_version']}), "
                           f"{prec.get('why', 'fp32')}",
                      tps=r["tokens_per_s"], rss=rss, first=r["first_loss"],
                      val=r["final_metrics"]["val_loss"])


def run_torch(c, data, steps, threads, autocast=False):
    out, rss = measured([".venv-torch/bin/python", "scripts/torch_ref.py", "--data", data,
                         "--steps", str(steps), "--threads", str(threads),
                         "--embed", str(c["embed"]), "--hidden", str(c["hidden"]),
                         "--layers", str(c["layers"])] + (["--autocast"] if autocast else []))
    t = json.loads(out.strip().splitlines()[-1])
    return dict(impl=t["impl"], tps=t["tokens_per_s"], rss=rss, first=t["first_loss"],
                val=t["val_loss"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", default="2", help="comma-separated thread counts, e.g. 1,2")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each side, rotating")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="charlab's precision key")
    ap.add_argument("configs", nargs="+", choices=sorted(CONFIGS))
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    peak = peaks()
    rows = []
    for name in a.configs:
        c = CONFIGS[name]
        # charlab prepares the corpus both PyTorch sides read.
        data, _ = run_charlab(c, 1, 1, a.precision)
        vocab = len(json.load(open(os.path.join(data, "vocab.json"), encoding="utf-8"))["chars"])
        sides = [lambda th: run_charlab(c, a.steps, th, a.precision)[1],
                 lambda th: run_torch(c, data, a.steps, th),
                 lambda th: run_torch(c, data, a.steps, th, autocast=True)]
        refused = autocast_refusal(data)
        if refused:
            print(f"{name}: PyTorch autocast-bf16 left out on this CPU: {refused}",
                  file=sys.stderr)
            sides.pop()
        for th in threads:
            got = [[], [], []]
            for rep in range(a.repeat):
                # Rotate which side goes first, so drift in the machine's speed hits all of them.
                for k in range(len(sides)):
                    side = (rep + k) % len(sides)
                    got[side].append(sides[side](th))
            rows.append((name, vocab, th, got))

    print(f"{cpu_model()}, {os.cpu_count()} logical CPUs; {a.steps} steps, batch 32, seq 64; "
          f"{a.repeat} runs per side, rotating; peaks (src/bin/peak.rs) "
          + "; ".join(f"{k} " + ", ".join(f"{g:.0f} GFLOP/s at {t} thread(s)" for t, g in v.items())
                      for k, v in peak.items()))
    # The bf16 share is of the fastest bf16 unit: AMX tiles where the CPU has them (oneDNN's
    # autocast uses them too), else AVX512-BF16's dot products.
    bf16_unit = "bf16 AMX" if "bf16 AMX" in peak else "bf16"
    print("| config | threads | charlab tokens/s | PyTorch fp32 | PyTorch autocast-bf16 | "
          "charlab ÷ fp32 | charlab ÷ autocast | GFLOP/s charlab / fp32 / autocast | "
          f"share of fp32 peak | share of {bf16_unit} peak | peak RSS MB | val loss |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, vocab, th, (mine, fp32, bf16) in rows:
        c = CONFIGS[name]
        # A side left out (autocast where the CPU cannot run it) shows as "-".
        tps = lambda xs: " / ".join(f"{x['tps']:,.0f}" for x in xs) or "-"
        ratio = lambda xs: (f"**{statistics.median(m['tps'] / t['tps'] for m, t in zip(mine, xs)):.2f}x**"
                            if xs else "-")
        gf = [statistics.median(x["tps"] for x in xs) * flops_per_token(c, vocab) / 1e9
              if xs else None for xs in (mine, fp32, bf16)]
        shares = lambda kind: " / ".join(share(g, peak.get(kind), th) if g else "-" for g in gf)
        each = lambda f: " / ".join(f(xs) if xs else "-" for xs in (mine, fp32, bf16))
        rss = lambda xs: f"{max(x['rss'] for x in xs):,.0f}"
        val = lambda xs: f"{xs[0]['val']:.4f}"
        print(f"| {name} (V={vocab}, {c['layers']}x{c['hidden']}) | {th} | {tps(mine)} | "
              f"{tps(fp32)} | {tps(bf16)} | {ratio(fp32)} | {ratio(bf16)} | "
              f"{' / '.join(f'{g:.0f}' if g else '-' for g in gf)} | {shares('fp32')} | "
              f"{shares(bf16_unit)} | {each(rss)} | {each(val)} |")
    print("implementations: " + "; ".join(xs[0]["impl"] for xs in (mine, fp32, bf16) if xs))


if __name__ == "__main__":
    try:
        main()
    except Failed as e:
        sys.exit(str(e))

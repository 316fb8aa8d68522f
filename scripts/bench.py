"""Driver of scripts/bench.sh: runs charlab and the PyTorch reference on each named config and
thread count, each in its own process (peak RSS from that process's own rusage), alternating
which side goes first on each repeat (the machine is shared and noisy), and prints one table
naming the processor.

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
        sys.exit(f"{cmd[0]} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    rss = [l for l in p.stderr.splitlines() if l.startswith("PEAK_RSS_KB ")][-1]
    return p.stdout, int(rss.split()[1]) / 1024


def run_charlab(c, steps, threads):
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
    return data, dict(impl=f"charlab {r['charlab_version']} (candle {r['candle_version']})",
                      tps=r["tokens_per_s"], rss=rss, first=r["first_loss"],
                      val=r["final_metrics"]["val_loss"])


def run_torch(c, data, steps, threads):
    out, rss = measured([".venv-torch/bin/python", "scripts/torch_ref.py", "--data", data,
                         "--steps", str(steps), "--threads", str(threads),
                         "--embed", str(c["embed"]), "--hidden", str(c["hidden"]),
                         "--layers", str(c["layers"])])
    t = json.loads(out.strip().splitlines()[-1])
    return dict(impl=t["impl"], tps=t["tokens_per_s"], rss=rss, first=t["first_loss"],
                val=t["val_loss"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", default="2", help="comma-separated thread counts, e.g. 1,2")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each side, alternating")
    ap.add_argument("configs", nargs="+", choices=sorted(CONFIGS))
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    vocab = {}
    rows = []
    for name in a.configs:
        c = CONFIGS[name]
        for th in threads:
            mine, theirs = [], []
            for rep in range(a.repeat):
                # Alternate which side runs first, so drift in the machine's speed hits both.
                if rep % 2 == 0:
                    data, m = run_charlab(c, a.steps, th)
                    t = run_torch(c, data, a.steps, th)
                else:
                    t = run_torch(c, vocab[name][1], a.steps, th)
                    data, m = run_charlab(c, a.steps, th)
                mine.append(m)
                theirs.append(t)
                v = len(json.load(open(os.path.join(data, "vocab.json"), encoding="utf-8"))["chars"])
                vocab[name] = (v, data)
            rows.append((name, th, mine, theirs))

    print(f"{cpu_model()}, {os.cpu_count()} logical CPUs; {a.steps} steps, batch 32, seq 64; "
          f"{a.repeat} runs per side, alternating")
    print("| config | threads | charlab tokens/s | PyTorch tokens/s | ratio (median) | "
          "peak RSS charlab / PyTorch MB | val loss charlab / PyTorch |")
    print("|---|---|---|---|---|---|---|")
    for name, th, mine, theirs in rows:
        c = CONFIGS[name]
        ratios = [m["tps"] / t["tps"] for m, t in zip(mine, theirs)]
        tps = lambda xs: " / ".join(f"{x['tps']:,.0f}" for x in xs)
        print(f"| {name} (V={vocab[name][0]}, {c['layers']}x{c['hidden']}) | {th} | {tps(mine)} | "
              f"{tps(theirs)} | **{statistics.median(ratios):.2f}x** "
              f"({', '.join(f'{r:.2f}' for r in ratios)}) | "
              f"{max(m['rss'] for m in mine):,.0f} / {max(t['rss'] for t in theirs):,.0f} | "
              f"{mine[0]['val']:.4f} / {theirs[0]['val']:.4f} |")
    print(f"implementations: {mine[0]['impl']}; {theirs[0]['impl']}")


if __name__ == "__main__":
    main()

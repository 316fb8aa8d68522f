"""Driver of scripts/bench.sh: runs charlab and the PyTorch reference on each named config, each
in its own process (peak RSS from that process's own rusage), and prints one table.

Configs (issue 4's): M = vocab ~3000 (the first 95k clean chars of hongloumeng), embed 128,
2x256; S = vocab 84 (shakespeare), embed 64, 2x128; H = all of hongloumeng (vocab 4504), embed
128, 2x256. All batch 32, seq 64, Adam 2e-3, clip 5, dropout 0.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

CONFIGS = {
    "M": dict(corpus="hongloumeng", max_chars=95000, embed=128, hidden=256, layers=2),
    "S": dict(corpus="shakespeare", max_chars=None, embed=64, hidden=128, layers=2),
    "H": dict(corpus="hongloumeng", max_chars=None, embed=128, hidden=256, layers=2),
}


def measured(cmd):
    """Runs cmd under a tiny wrapper that reports its own child's peak RSS (KiB) on fd 3."""
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("configs", nargs="+", choices=sorted(CONFIGS))
    a = ap.parse_args()
    rows = []
    for name in a.configs:
        c = CONFIGS[name]
        tmp = tempfile.mkdtemp()
        cfg = os.path.join(tmp, "run.toml")
        with open(cfg, "w") as f:
            f.write(
                f'corpus = "{c["corpus"]}"\nmax_steps = {a.steps}\neval_every = {a.steps}\n'
                f'log_every = 10\nhistogram_every = 0\nthreads = {a.threads}\ndevice = "cpu"\n'
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
        vocab = len(json.load(open(os.path.join(data, "vocab.json"), encoding="utf-8"))["chars"])
        mine = dict(impl=f"charlab {r['charlab_version']} (candle {r['candle_version']})",
                    tps=r["tokens_per_s"], rss=rss, first=r["first_loss"],
                    val=r["final_metrics"]["val_loss"])
        tout, trss = measured([".venv-torch/bin/python", "scripts/torch_ref.py", "--data", data,
                               "--steps", str(a.steps), "--threads", str(a.threads),
                               "--embed", str(c["embed"]), "--hidden", str(c["hidden"]),
                               "--layers", str(c["layers"])])
        t = json.loads(tout.strip().splitlines()[-1])
        theirs = dict(impl=t["impl"], tps=t["tokens_per_s"], rss=trss, first=t["first_loss"],
                      val=t["val_loss"])
        rows.append((f"{name} (V={vocab}, {c['layers']}x{c['hidden']})", mine, theirs))

    print(f"{a.steps} steps, batch 32, seq 64, {a.threads} threads")
    print(f"| config | implementation | tokens/s | peak RSS MB | first loss | val loss |")
    print(f"|---|---|---|---|---|---|")
    for name, mine, theirs in rows:
        for x in (mine, theirs):
            print(f"| {name} | {x['impl']} | {x['tps']:,.0f} | {x['rss']:,.0f} | {x['first']:.4f} | {x['val']:.4f} |")
        print(f"| {name} | ratio charlab / PyTorch | {mine['tps'] / theirs['tps']:.2f}x | "
              f"{mine['rss'] / theirs['rss']:.2f}x | | |")


if __name__ == "__main__":
    main()

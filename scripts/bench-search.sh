#!/usr/bin/env bash
# TPE against random search on the default corpus, same budget, same seeds: a sweep over lr
# (log-uniform), hidden (choice) and dropout (uniform) per method and seed, then one table:
# best val/loss and the trials it took to get within 1% of the best either method found.
#   scripts/bench-search.sh [TRIALS] [SEED...]      (defaults: 16 trials, seeds 1 2)
# Runs under runs/bench-search/ (delete it to start over). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
trials=${1:-16}
shift || true
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(1 2)
cargo build --release -q
out=runs/bench-search
mkdir -p "$out"
for seed in "${seeds[@]}"; do
  for method in tpe random; do
    name="$method-s$seed"
    if [ "$method" = tpe ]; then
      search="[search]
method = \"tpe\"
trials = $trials
startup_trials = $(( trials / 4 > 2 ? trials / 4 : 2 ))"
      count=""
    else
      search=""
      count="trials = $trials"
    fi
    cat > "$out/$name.toml" <<TOML
[experiment]
name = "$name"
corpus = "hongloumeng"
device = "cpu"
jobs = 2
seed = $seed

[defaults]
embed_dim = 64
layers = 1
batch_size = 32
seq_len = 64
max_steps = 250
eval_every = 50
log_every = 10
histogram_every = 0
sample_length = 50
clean.max_chars = 200000

$search

[random]
$count
lr = { log_uniform = [1e-4, 2e-2] }
hidden = { choice = [64, 128, 256] }
dropout = { uniform = [0.0, 0.5] }
TOML
    target/release/charlab sweep "$out/$name.toml" --runs "$out" --plain 2>&1 | tail -1
  done
done
python3 - "$out" "$trials" "${seeds[@]}" <<'PY'
import json, subprocess, sys
out, trials, seeds = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def losses(name):
    m = json.load(open(f"{out}/{name}/manifest.json"))
    vals = []
    for e in m["trials"]:
        r = json.load(open(f"{out}/{name}/{e['dir']}/run.json"))
        b = r.get("best_metrics")
        vals.append(b["val_loss"] if b and r["status"] == "completed" else float("inf"))
    return vals
print(f"{trials} trials per sweep, 2 at a time; trials to within 1% of the best either method found")
print("| seed | method | best val/loss | trials to within 1% | mean val/loss of the last half |")
print("|---|---|---|---|---|")
for s in seeds:
    runs = {m: losses(f"{m}-s{s}") for m in ("tpe", "random")}
    best = min(min(v) for v in runs.values())
    for m, v in runs.items():
        hit = next((i + 1 for i, x in enumerate(v) if x <= 1.01 * best), None)
        tail = [x for x in v[len(v) // 2:] if x != float("inf")]
        print(f"| {s} | {m} | {min(v):.4f} | {hit if hit else '-'} | {sum(tail) / max(len(tail), 1):.4f} |")
PY

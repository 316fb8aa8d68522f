#!/usr/bin/env bash
# Population-based training against TPE and random search at equal total training steps: per
# corpus and seed, three sweeps over the same domains (lr log-uniform, dropout uniform, hidden a
# choice), each 8 runs × STEPS steps (PBT: a population of 8 deciding every STEPS/5 steps; TPE:
# 8 trials, 4 random first; random: 8 draws), 2 at a time. Prints one table naming the
# processor: best val/loss per sweep, the mean over seeds, and each sweep's wall time.
#   scripts/bench-pbt.sh [STEPS] [SEED...]      (defaults: 300 steps, seeds 1 2 3)
#   CORPORA="hongloumeng shakespeare" (default both)
# Runs under runs/bench-pbt/ (a finished sweep is not rerun; delete it to start over).
# Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-300}
shift || true
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(1 2 3)
corpora=(${CORPORA:-hongloumeng shakespeare})
interval=$(( steps / 5 ))
eval_every=$(( interval / 2 ))
# CHARLAB=path runs that binary (a copy, so rebuilding meanwhile does not change it midway).
bin=${CHARLAB:-target/release/charlab}
[ -n "${CHARLAB:-}" ] || cargo build --release -q
out=runs/bench-pbt
mkdir -p "$out"
for corpus in "${corpora[@]}"; do
  for seed in "${seeds[@]}"; do
    for method in pbt tpe random; do
      name="$method-$corpus-s$seed"
      case $method in
        pbt) search="[search]
method = \"pbt\"
population = 8
interval = $interval"; count="" ;;
        tpe) search="[search]
method = \"tpe\"
trials = 8
startup_trials = 4"; count="" ;;
        random) search=""; count="trials = 8" ;;
      esac
      cat > "$out/$name.toml" <<TOML
[experiment]
name = "$name"
corpus = "$corpus"
device = "cpu"
jobs = 2
seed = $seed

[defaults]
embed_dim = 64
layers = 1
batch_size = 32
seq_len = 64
max_steps = $steps
eval_every = $eval_every
log_every = 10
histogram_every = 0
sample_length = 50
clean.max_chars = 200000

$search

[random]
$count
lr = { log_uniform = [1e-4, 2e-2] }
dropout = { uniform = [0.0, 0.5] }
hidden = { choice = [64, 128, 256] }
TOML
      if [ ! -f "$out/$name/wall_s" ]; then
        start=$(date +%s.%N)
        "$bin" sweep "$out/$name.toml" --runs "$out" --plain 2>&1 | tail -1
        python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$start" "$(date +%s.%N)" > "$out/$name/wall_s"
      fi
    done
  done
done
python3 - "$out" "$steps" "${seeds[*]}" "${corpora[*]}" <<'PY'
import json, statistics, sys
out, steps, seeds, corpora = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()
info = {}
for line in open("/proc/cpuinfo"):
    k, _, v = line.partition(":")
    info.setdefault(k.strip(), v.strip())
cpu = f"{info.get('model name', '?')} (family {info.get('cpu family', '?')}, model {info.get('model', '?')})"
def best(name):
    m = json.load(open(f"{out}/{name}/manifest.json"))
    vals = []
    for e in m["trials"]:
        r = json.load(open(f"{out}/{name}/{e['dir']}/run.json"))
        b = r.get("best_metrics")
        if b and r["status"] == "completed":
            vals.append(b["val_loss"])
    return min(vals) if vals else float("inf")
print(f"{cpu}; 8 runs × {steps} steps per sweep (PBT: interval {steps // 5}), 2 at a time, 1 thread each")
print("| corpus | method | best val/loss per seed | mean ± std | wall s per seed |")
print("|---|---|---|---|---|")
for c in corpora:
    for m in ("pbt", "tpe", "random"):
        names = [f"{m}-{c}-s{s}" for s in seeds]
        b = [best(n) for n in names]
        w = [float(open(f"{out}/{n}/wall_s").read()) for n in names]
        sd = statistics.stdev(b) if len(b) > 1 else 0.0
        print(f"| {c} | {m} | {', '.join(f'{x:.4f}' for x in b)} | {statistics.mean(b):.4f} ± {sd:.4f} | {', '.join(f'{x:.0f}' for x in w)} |")
PY

#!/usr/bin/env bash
# On a GPU machine with no Rust and no network (see BENCHMARKS.md): checks the CUDA build against
# the CPU, then benchmarks it against PyTorch + cuDNN on configs M and L, and measures sweep
# packing (trials finished per hour, one trial per GPU at a time vs several), in one short call.
# Needs: target/cuda/release/charlab (scripts/build-cuda.sh), the prepared corpora under
# $CHARLAB_DATA (default data/; run `charlab prepare` for hongloumeng here first and carry data/),
# and a python3 with torch built for CUDA (its nvidia/*/lib folders provide cuBLAS and friends).
#   scripts/gpu-check.sh [STEPS]          (default 200)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-200}
bin=$PWD/target/cuda/release/charlab
py=${PYTHON:-python3}
export CHARLAB_DATA=${CHARLAB_DATA:-$PWD/data}
site=$($py -c 'import os, nvidia; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null || true)
if [ -n "$site" ]; then
  libs=$(find "$site/nvidia" -maxdepth 3 -type d -name lib | tr '\n' ':')
  export LD_LIBRARY_PATH=${libs}${LD_LIBRARY_PATH:-}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

echo "== equivalence: cuda vs the CPU fused path =="
"$bin" check-device --device cuda
"$bin" check-device --device cuda --dims 500,64,128,3 --batch 16 --seq 50

work=$(mktemp -d)
bench() { # name corpus embed hidden layers batch seq [clean toml]
  local name=$1 cfg=$work/$1.toml
  cat > "$cfg" <<TOML
corpus = "$2"
embed_dim = $3
hidden = $4
layers = $5
batch_size = $6
seq_len = $7
max_steps = $steps
eval_every = $steps
log_every = 20
histogram_every = 0
dropout = 0.0
lr = 2e-3
grad_clip = 5.0
device = "cuda"
$8
TOML
  "$bin" train --config "$cfg" --out "$work/$name" --plain > "$work/$name.log" 2>&1 || { tail -20 "$work/$name.log"; return 1; }
  local key
  key=$($py -c "import json,sys; print(json.load(open(sys.argv[1]))['corpus']['key'])" "$work/$name/run.json")
  $py scripts/torch_ref.py --device cuda --data "$CHARLAB_DATA/prepared/$key" --steps "$steps" \
    --embed "$3" --hidden "$4" --layers "$5" --batch "$6" --seq "$7" > "$work/$name.torch.json"
  $py - "$name" "$work/$name/run.json" "$work/$name.torch.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[2])); t = json.load(open(sys.argv[3]))
print(f"| {sys.argv[1]} | {c['tokens_per_s']:,.0f} | {t['tokens_per_s']:,.0f} | {c['tokens_per_s'] / t['tokens_per_s']:.2f}x | {c['final_metrics']['val_loss']:.4f} | {t['val_loss']:.4f} |")
PY
}
echo "== per-run tokens/s, $steps steps =="
echo "| config | charlab cuda | PyTorch cuDNN | ratio | charlab val loss | PyTorch val loss |"
echo "|---|---|---|---|---|---|"
bench M hongloumeng 128 256 2 32 64 "$(printf '[clean]\nmax_chars = 95000')"
bench L hongloumeng 256 512 3 128 100 ""

echo "== sweep packing: 6 trials of M, 1 vs 3 per GPU =="
for per in 1 3; do
  cat > "$work/pack$per.toml" <<TOML
[experiment]
name = "pack$per"
corpus = "hongloumeng"
devices = ["cuda:0"]
trials_per_device = $per
[defaults]
embed_dim = 128
hidden = 256
layers = 2
max_steps = $steps
eval_every = $steps
histogram_every = 0
clean.max_chars = 95000
[grid]
lr = [1e-3, 2e-3, 3e-3]
seed = [1, 2]
TOML
  start=$(date +%s.%N)
  "$bin" sweep "$work/pack$per.toml" --runs "$work/runs" --plain > "$work/pack$per.log" 2>&1 || tail -5 "$work/pack$per.log"
  end=$(date +%s.%N)
  $py -c "import sys; s = float(sys.argv[2]) - float(sys.argv[1]); print(f'trials_per_device=$per: {s:.1f} s for 6 trials, {6 * 3600 / s:.0f} trials/hour')" "$start" "$end"
done

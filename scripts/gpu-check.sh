#!/usr/bin/env bash
# On a GPU machine with no Rust and no network: the CUDA build checked against the CPU, its
# tokens/s on configs M and L beside PyTorch + cuDNN (fp32, strict fp32 and autocast-bf16) with
# each side's peak GPU memory, the packing of 4 trials on one GPU against the same 4 one after the
# other, and a quickstart sweep on cuda:0 whose runs come back for TensorBoard's reader — one call.
# Needs: the stripped CUDA binary (scripts/build-cuda.sh) at $BIN, data/corpora/hongloumeng.txt
# under $CHARLAB_DATA, and a python3 with torch built for CUDA (its nvidia/*/lib folders provide
# cuBLAS and friends). Writes the log and the quickstart runs under $OUT (default ./gpu-out).
#   scripts/gpu-check.sh [STEPS]          (default 100; timing starts after the first 30)
# KERNELS="fused step" (the default) picks the CUDA paths measured (CHARLAB_CUDA_KERNELS of each run);
# REPEATS (default 2) runs the table that many times, the sides alternating; PACK_STEPS (default
# 400) is each packed trial's length (long enough that a process's start does not dominate).
set -uo pipefail
cd "$(dirname "$0")/.."
steps=${1:-100}
bin=${BIN:-$PWD/target/cuda/release/charlab}
py=${PYTHON:-python3}
out=${OUT:-$PWD/gpu-out}
kernels=${KERNELS:-fused step}
repeats=${REPEATS:-2}
pack_steps=${PACK_STEPS:-400}
mkdir -p "$out"
export CHARLAB_DATA=${CHARLAB_DATA:-$PWD/data}
site=$($py -c 'import os, nvidia; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null || true)
if [ -n "$site" ]; then
  libs=$(find "$site/nvidia" -maxdepth 3 -type d -name lib | tr '\n' ':')
  export LD_LIBRARY_PATH=${libs}${LD_LIBRARY_PATH:-}
fi
work=$(mktemp -d)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$py -c 'import torch; print("torch", torch.__version__, "cuDNN", torch.backends.cudnn.version())'

# Peak GPU memory in use while "$@" runs, sampled by nvidia-smi, minus what was in use before.
peak_mib() {
  local base log=$work/mem.$$ pid
  base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -n1)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "$log" &
  pid=$!
  "$@"
  local rc=$?
  kill $pid 2>/dev/null; wait $pid 2>/dev/null
  echo $(( $(sort -n "$log" | tail -n1) - base )) > "$work/peak"
  return $rc
}

echo "== equivalence: the fused path and candle's step-by-step ops vs the CPU reference =="
"$bin" check-device --device cuda:0
"$bin" check-device --device cuda:0 --dims 500,64,128,3 --batch 16 --seq 50

# Median chars/s of a plain log's progress lines after step 30 (the first steps load kernels).
steady() {
  grep -oE 'step [0-9]+/[0-9]+ .* [0-9]+ chars/s' "$1" \
    | awk '{split($2, s, "/"); if (s[1] > 30) print $(NF-1)}' | sort -n \
    | awk '{v[NR] = $1} END {print (NR ? v[int((NR + 1) / 2)] : 0)}'
}

row() { printf '| %s | %s | %s | %s | %s |\n' "$@"; }
charlab_run() { # name kernels corpus embed hidden layers batch seq [extra toml]
  local name=$1 k=$2 cfg=$work/$1-$2-$round.toml dir=$work/$1-$2-$round
  cat > "$cfg" <<TOML
corpus = "$3"
embed_dim = $4
hidden = $5
layers = $6
batch_size = $7
seq_len = $8
max_steps = $steps
eval_every = $steps
log_every = 10
histogram_every = 0
sample_length = 20
dropout = 0.0
lr = 2e-3
grad_clip = 5.0
device = "cuda:0"
$9
TOML
  if ! CHARLAB_CUDA_KERNELS=$k peak_mib "$bin" train --config "$cfg" --out "$dir" --plain > "$dir.log" 2>&1; then
    tail -n 20 "$dir.log"; return 1
  fi
  local val
  val=$($py -c "import json,sys; print('%.4f' % json.load(open(sys.argv[1]))['final_metrics']['val_loss'])" "$dir/run.json")
  row "$name" "charlab cuda ($k)" "$(steady "$dir.log")" "$(cat "$work/peak")" "$val"
  $py -c "import json,sys; print(json.load(open(sys.argv[1]))['corpus']['key'])" "$dir/run.json" > "$work/$name.key"
}
torch_run() { # name label extra-args... (after charlab_run: the same prepared corpus)
  local name=$1 label=$2; shift 2
  local key; key=$(cat "$work/$name.key")
  if ! peak_mib $py scripts/torch_ref.py --device cuda --data "$CHARLAB_DATA/prepared/$key" \
      --steps "$steps" --warmup 30 "$@" > "$work/$name-torch.json"; then
    return 1
  fi
  $py - "$name" "$label" "$work/$name-torch.json" "$(cat "$work/peak")" <<'PY'
import json, sys
t = json.load(open(sys.argv[3]))
print(f"| {sys.argv[1]} | {sys.argv[2]} | {t['tokens_per_s']:.0f} | {sys.argv[4]} "
      f"(allocator {t['peak_gpu_bytes'] / 2**20:.0f}) | {t['val_loss']:.4f} |")
PY
}
config() { # name corpus embed hidden layers batch seq [extra toml]
  local name=$1 corpus=$2 e=$3 h=$4 l=$5 b=$6 s=$7 extra=${8:-}
  for k in $kernels; do charlab_run "$name" "$k" "$corpus" "$e" "$h" "$l" "$b" "$s" "$extra"; done
  local args=(--embed "$e" --hidden "$h" --layers "$l" --batch "$b" --seq "$s")
  torch_run "$name" "PyTorch cuDNN fp32 (TF32 on, its default)" "${args[@]}"
  NVIDIA_TF32_OVERRIDE=0 torch_run "$name" "PyTorch cuDNN fp32 (TF32 off)" "${args[@]}"
  torch_run "$name" "PyTorch cuDNN autocast-bf16" "${args[@]}" --autocast
}
echo "== per-run tokens/s, $steps steps (steady: after step 30), peak GPU MiB =="
row config side "tokens/s" "peak GPU MiB" "val loss"
row --- --- --- --- ---
for round in $(seq "$repeats"); do
  config M hongloumeng 128 256 2 32 64 "$(printf '[clean]\nmax_chars = 95000')"
  config L hongloumeng 256 512 3 128 100
done

echo "== packing: 4 trials of M on one GPU, one at a time vs all 4 at once =="
for k in $kernels; do
  for per in 1 4; do
    cat > "$work/pack$per-$k.toml" <<TOML
[experiment]
name = "pack$per-$k"
corpus = "hongloumeng"
devices = ["cuda:0"]
trials_per_device = $per
[defaults]
embed_dim = 128
hidden = 256
layers = 2
max_steps = $pack_steps
eval_every = $pack_steps
histogram_every = 0
sample_length = 20
clean.max_chars = 95000
[grid]
lr = [1e-3, 2e-3]
seed = [1, 2]
TOML
    start=$(date +%s.%N)
    CHARLAB_CUDA_KERNELS=$k "$bin" sweep "$work/pack$per-$k.toml" --runs "$work/runs" --plain \
      > "$work/pack$per-$k.log" 2>&1 || tail -n 5 "$work/pack$per-$k.log"
    end=$(date +%s.%N)
    $py -c "import sys; s = float(sys.argv[2]) - float(sys.argv[1]); print(f'$k, trials_per_device=$per: {s:.1f} s for 4 trials')" "$start" "$end"
  done
done

echo "== the quickstart sweep on cuda:0 =="
sed -e 's/^device *= *"cpu"/devices = ["cuda:0"]\ntrials_per_device = 3/' experiments/quickstart.toml \
  > "$work/quickstart.toml"
start=$(date +%s)
if "$bin" sweep "$work/quickstart.toml" --runs "$work/qs" --plain > "$out/quickstart.log" 2>&1; then
  echo "quickstart on cuda:0: finished in $(( $(date +%s) - start )) s"
else
  tail -n 20 "$out/quickstart.log"
fi
tail -n 8 "$out/quickstart.log"
echo "== the quickstart's runs through TensorBoard's reader =="
for run in "$work"/qs/quickstart/[0-9]*/; do
  $py tests/tb_read.py "$run" | $py -c '
import json, sys
r = json.load(sys.stdin)
print(sys.argv[1].rstrip("/").split("/")[-1], "scalars", len(r["scalars"]), "histograms", len(r["histograms"]),
      "text", len(r["text"]), "graph nodes", len(r["graph_nodes"]), "hparams", sorted(r["hparams"].get("start", {}).get("hparams", {})),
      "val/loss points", len(r["scalars"].get("val/loss", [])))' "$run"
done
(cd "$work/qs" && find . -name 'events.out.tfevents.*' -o -name '*.json' | tar -czf "$out/quickstart-runs.tar.gz" -T -)
(cd "$work" && find . -maxdepth 2 \( -name '*.log' -o -name '*.json' -o -name '*.toml' \) -print0 \
  | tar -czf "$out/logs.tar.gz" --null -T -)

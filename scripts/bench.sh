#!/usr/bin/env bash
# Side by side: charlab, a PyTorch char-LSTM (scripts/torch_ref.py) in fp32, and the same under
# autocast-bf16, with the same model, data, batching, optimizer and thread count, rotating which
# goes first, on the configs of BENCHMARKS.md (M, S, H). Prints one table naming the processor:
# tokens/s, ratios, GFLOP/s as shares of the measured fp32 and bf16 peaks, peak RSS, val losses.
#   scripts/bench.sh [STEPS] [CONFIG...] [--threads 1,2] [--repeat N] [--precision auto|fp32|bf16]
#   (defaults: 300 steps, M S, all cores, 2 runs per side, charlab's precision auto)
# Makes .venv-torch (scripts/torch-venv.sh; large) on first use. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=300
threads=${THREADS:-$(nproc)}
repeat=2
precision=auto
configs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --precision) precision=$2; shift 2 ;;
    [0-9]*) steps=$1; shift ;;
    *) configs+=("$1"); shift ;;
  esac
done
[ ${#configs[@]} -gt 0 ] || configs=(M S)

source scripts/torch-venv.sh
exec python3 scripts/bench.py --steps "$steps" --threads "$threads" --repeat "$repeat" --precision "$precision" "${configs[@]}"

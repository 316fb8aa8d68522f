#!/usr/bin/env bash
# Side by side: charlab and a PyTorch char-LSTM (scripts/torch_ref.py) with the same model, data,
# batching, optimizer and thread count, one after the other in this one command, on the configs
# of BENCHMARKS.md (M, S, H). Prints one table: tokens/s, peak RSS, first and validation loss, and
# the charlab / PyTorch ratios.
#   scripts/bench.sh [STEPS] [CONFIG...]      (defaults: 300 M S)
# Makes .venv-torch (pip install torch; large) on first use. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-300}
shift || true
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(M S)

if ! .venv-torch/bin/python -c "import torch" >/dev/null 2>&1; then
  python3 -m venv .venv-torch
  .venv-torch/bin/pip install -q --disable-pip-version-check torch numpy
fi
cargo build --release -q
exec python3 scripts/bench.py --steps "$steps" --threads "${THREADS:-$(nproc)}" "${configs[@]}"

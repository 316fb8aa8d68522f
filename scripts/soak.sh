#!/usr/bin/env bash
# Longer crash soak than CI's: the soak test of tests/sweep.rs with more SIGKILL rounds, once per
# seed (each seed draws other kill moments and victims).
#   scripts/soak.sh [ROUNDS] [SEEDS...]        (defaults: 20 rounds, seeds 1 2 3)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-20}
shift || true
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(1 2 3)
[ -x .venv-tb/bin/python ] || { python3 -m venv .venv-tb && .venv-tb/bin/pip install -q tensorboard; }
for seed in "${seeds[@]}"; do
  CHARLAB_SOAK_ROUNDS=$rounds CHARLAB_SOAK_SEED=$seed cargo test --release --locked --test sweep \
    crash_soak -- --nocapture 2>&1 | grep -E "^soak:|test result|panicked|assert" || true
done

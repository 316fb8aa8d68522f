#!/usr/bin/env bash
# The sweep race (issue 18): charlab against Optuna + PyTorch on the same sweep, two trials at a
# time, one thread each, sides alternated. One table per call, naming the processor.
#   scripts/race.sh grid [--corpus hongloumeng|shakespeare] [--steps 300] [--repeat N]
#   scripts/race.sh tpe  [--corpus ...] [--trials 16] [--startup 8] [--steps 300] [--seeds N]
#                        [--prune] [--minutes M: a time budget a side, not a trial count]
#   either with [--precision auto|fp32|bf16] (charlab's) and [--autocast] (PyTorch's bf16)
# Makes .venv-torch (PyTorch + Optuna) on first use. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/torch-venv.sh
exec .venv-torch/bin/python scripts/race.py "$@"

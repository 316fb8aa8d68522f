#!/usr/bin/env bash
# The TPE race on a loss surface fitted to measured trials (scripts/searchsim.py): charlab's
# search (src/bin/searchsim.rs) against Optuna's on one virtual clock, hundreds of seeds.
#   scripts/searchsim.sh fit --runs DIR... [--races FILE...] --out surface.json
#   scripts/searchsim.sh race --surface surface.json [--seeds 100] [--minutes 8] [--key-by-key]
# Makes .venv-torch (PyTorch + Optuna) on first use. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/torch-venv.sh
exec .venv-torch/bin/python scripts/searchsim.py "$@"

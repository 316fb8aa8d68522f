#!/usr/bin/env bash
# Makes .venv-torch (PyTorch, numpy, Optuna: the peer the scripts/bench*, parity and race scripts
# measure charlab against) unless it already imports them, and builds charlab's release binary.
# Sourced by those scripts; never part of CI.
if ! .venv-torch/bin/python -c "import torch, optuna" >/dev/null 2>&1; then
  python3 -m venv .venv-torch
  .venv-torch/bin/pip install -q --disable-pip-version-check torch numpy optuna scikit-learn
fi
cargo build --release -q

#!/usr/bin/env bash
# Issue 20's side-by-side: charlab's importance estimate, the `fanova` crate and Optuna's
# fANOVA on three sweeps with a known answer; charlab's TPE against the `tpe` crate. Needs
# .venv-torch (scripts/torch-venv.sh; it has Optuna). Never run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="$PWD/target/importance-compare"
cargo build --release -q --manifest-path scripts/importance-compare/Cargo.toml
.venv-torch/bin/python scripts/importance_compare.py "$CARGO_TARGET_DIR/release/importance-compare"

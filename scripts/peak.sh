#!/usr/bin/env bash
# The machine's fp32 and bf16 arithmetic ceilings (src/bin/peak.rs), named with the CPU, so that
# a benchmark's GFLOP/s reads as a share of the limit. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q --bin peak
python3 -c "import sys; sys.path.insert(0, 'scripts'); import bench; print(bench.cpu_model())"
target/release/peak

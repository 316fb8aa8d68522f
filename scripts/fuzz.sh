#!/usr/bin/env bash
# Bounded fuzzing of the input parsers (sweep files, cleaning, vocab, event files) with proptest:
# the same properties as tests/properties.rs, with many more cases. A failure prints the minimal
# input; add it to tests/properties.rs as a regression test.
#   scripts/fuzz.sh [CASES]        (default 200000 per property)
set -euo pipefail
cd "$(dirname "$0")/.."
PROPTEST_CASES=${1:-200000} cargo test --release --locked --test properties -- --test-threads "$(nproc)"

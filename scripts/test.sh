#!/usr/bin/env bash
# The test command: checks formatting and lints, makes the Python venv with TensorBoard's reader
# (the tests check charlab's event files with it) and the browser checks' node package, then runs
# the whole test suite.
# Works on a fresh machine with cargo and python3 (node and Chromium for the browser tests).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-tb
if ! "$venv/bin/python" -c "import tensorboard" >/dev/null 2>&1; then
  echo "setting up $venv (pip install tensorboard)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check tensorboard
fi
export CHARLAB_TB_PYTHON="$PWD/$venv/bin/python"

# playwright-core drives the system's Chromium in the browser tests (tests/browser.rs); without
# node, npm or Chromium those tests say so and pass.
if command -v npm >/dev/null 2>&1 && [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "installing tests/browser (npm install playwright-core)"
  npm install --prefix tests/browser --no-audit --no-fund --silent || echo "npm install failed: browser tests will be skipped"
fi

# The house rules first: formatted, no clippy warning in any target, imports that follow the
# pipeline (no module importing a later stage, no two importing each other).
cargo fmt --check
cargo clippy --release --locked --all-targets -- -D warnings
python3 scripts/house.py --check > /dev/null || { python3 scripts/house.py; exit 1; }

# The release profile, as the README's main job builds: one build of the dependencies serves both.
cargo test --release --locked "$@"

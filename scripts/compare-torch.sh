#!/usr/bin/env bash
# Side by side: charlab and a PyTorch char-LSTM with the same model, data, batching, optimizer and
# thread count, N steps each, one after the other in this command. Prints tokens/s, first loss
# and validation loss for both, and their ratio.
#   scripts/compare-torch.sh [STEPS] [CORPUS]      (defaults: 300 hongloumeng)
# Makes .venv-torch (pip install torch; large) on first use. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-300}
corpus=${2:-hongloumeng}
threads=${THREADS:-$(nproc)}

if ! .venv-torch/bin/python -c "import torch" >/dev/null 2>&1; then
  python3 -m venv .venv-torch
  .venv-torch/bin/pip install -q --disable-pip-version-check torch numpy
fi
cargo build --release -q

out=$(mktemp -d)/run
cfg=$(mktemp --suffix .toml)
cat > "$cfg" <<TOML
corpus = "$corpus"
max_steps = $steps
eval_every = $steps
log_every = 10
histogram_every = 0
threads = $threads
device = "cpu"
TOML
target/release/charlab train --config "$cfg" --out "$out" --plain 2> "$out.log" || { cat "$out.log"; exit 1; }
key=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['corpus']['key'])" "$out/run.json")
data=${CHARLAB_DATA:-data}/prepared/$key
torch_json=$(.venv-torch/bin/python scripts/torch_ref.py --data "$data" --steps "$steps" --threads "$threads")

python3 - "$out/run.json" "$torch_json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
t = json.loads(sys.argv[2])
m = c["final_metrics"]
rows = [
    ("charlab " + c["charlab_version"] + " (candle " + c["candle_version"] + ")", c["tokens_per_s"], c["first_loss"], m["val_loss"]),
    (t["impl"], t["tokens_per_s"], t["first_loss"], t["val_loss"]),
]
print(f"{'implementation':<34} {'tokens/s':>10} {'first loss':>11} {'val loss':>9}   (ln V = {c['ln_vocab']:.3f}, {c['steps']} steps)")
for name, tps, first, val in rows:
    print(f"{name:<34} {tps:>10.0f} {first:>11.4f} {val:>9.4f}")
print(f"charlab / pytorch tokens/s: {rows[0][1] / rows[1][1]:.2f}x")
PY

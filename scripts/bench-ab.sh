#!/usr/bin/env bash
# Two charlab binaries side by side on the same run (a refactor must not cost speed): trains
# BENCHMARKS.md's config M (红楼梦, embed 128, hidden 256, 2 layers, batch 32 × seq 64) with
# each, alternating which goes first, at 1 thread and at all cores, and prints each side's
# chars/s (from run.json, evaluation excluded) and the ratio NEW / OLD, naming the processor.
#   scripts/bench-ab.sh OLD_BINARY [NEW_BINARY] [--steps N] [--pairs N]
#   (defaults: NEW = target/release/charlab, 200 steps, 4 pairs per thread count)
# Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1; shift
new=target/release/charlab
steps=200
pairs=4
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps=$2; shift 2 ;;
    --pairs) pairs=$2; shift 2 ;;
    *) new=$1; shift ;;
  esac
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
fam=$(grep -m1 "cpu family" /proc/cpuinfo | cut -d: -f2 | tr -d ' ')
mod=$(grep -m1 "^model\s*:" /proc/cpuinfo | cut -d: -f2 | tr -d ' ')
echo "$cpu (family $fam, model $mod), $(nproc) logical CPUs; $steps steps of config M per run"
run() { # BINARY THREADS OUT -> chars/s
  cat > "$work/cfg.toml" <<TOML
corpus = "hongloumeng"
embed_dim = 128
hidden = 256
layers = 2
batch_size = 32
seq_len = 64
max_steps = $steps
eval_every = $steps
log_every = 50
histogram_every = 0
sample_length = 1
threads = $2
seed = 1
clean.max_chars = 95000
TOML
  rm -rf "$3"
  "$1" train --config "$work/cfg.toml" --out "$3" --plain > /dev/null 2>&1
  python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['tokens_per_s'])" "$3/run.json"
}
for threads in 1 $(nproc); do
  a=(); b=()
  for i in $(seq "$pairs"); do
    if [ $((i % 2)) = 1 ]; then
      a+=("$(run "$old" "$threads" "$work/old")"); b+=("$(run "$new" "$threads" "$work/new")")
    else
      b+=("$(run "$new" "$threads" "$work/new")"); a+=("$(run "$old" "$threads" "$work/old")")
    fi
  done
  python3 - "$threads" "${a[*]}" "${b[*]}" <<'PY'
import statistics, sys
t, a, b = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
ratios = [y / x for x, y in zip(a, b)]
print(f"{t} thread(s): old {statistics.median(a):,.0f} chars/s, new {statistics.median(b):,.0f} chars/s; "
      f"new/old per pair {', '.join(f'{r:.3f}' for r in ratios)}; median {statistics.median(ratios):.3f}")
PY
done

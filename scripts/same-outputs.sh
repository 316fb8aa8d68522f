#!/usr/bin/env bash
# A refactor's check: two charlab binaries must write the same outputs, byte for byte (report
# timestamps aside), on the same fixtures. OLD trains a small grid sweep (with seeds) and a TPE
# sweep on 红楼梦's first 50k chars; then both binaries run compare (every format, sorts,
# --importance), report, refine, dry runs, sample, check-device, --help, and one training run
# whose checkpoints are compared by their tensors' sha256 and cursor.
#   scripts/same-outputs.sh OLD_BINARY [NEW_BINARY]      (default NEW: target/release/charlab)
# Exit 0 when everything is the same. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
old=$(realpath "$1"); new=$(realpath "${2:-target/release/charlab}")
corpus=$PWD/data/corpora/hongloumeng.txt
[ -f "$corpus" ] || { "$new" prepare hongloumeng > /dev/null; }
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
mkdir -p "$w/bin-old" "$w/bin-new"
# The same file name on both sides: clap prints it in usage lines.
cp "$old" "$w/bin-old/charlab"; cp "$new" "$w/bin-new/charlab"
common="[defaults]
embed_dim = 16
layers = 1
batch_size = 8
seq_len = 16
max_steps = 40
eval_every = 10
log_every = 5
histogram_every = 0
sample_length = 30
clean.max_chars = 50000"
printf '[experiment]\nname = "g-grid"\ncorpus = "%s"\ndevice = "cpu"\njobs = 2\n\n%s\n\n[grid]\nlr = [1e-3, 5e-3]\nhidden = [16, 32]\nseed = [1, 2]\n' "$corpus" "$common" > "$w/grid.toml"
printf '[experiment]\nname = "g-tpe"\ncorpus = "%s"\ndevice = "cpu"\njobs = 2\nseed = 1\n\n%s\n\n[search]\nmethod = "tpe"\ntrials = 8\nstartup_trials = 4\n\n[random]\nlr = { log_uniform = [1e-4, 2e-2] }\nhidden = { choice = [16, 32] }\ndropout = { uniform = [0.0, 0.5] }\n' "$corpus" "$common" > "$w/tpe.toml"
printf 'corpus = "%s"\nembed_dim = 16\nhidden = 32\nlayers = 2\ndropout = 0.1\nbatch_size = 8\nseq_len = 16\nmax_steps = 30\neval_every = 10\nlog_every = 5\nhistogram_every = 10\nsample_length = 30\nseed = 7\nclean.max_chars = 50000\n' "$corpus" > "$w/run.toml"
"$w/bin-old/charlab" sweep "$w/grid.toml" --runs "$w/runs" --plain > /dev/null 2>&1
"$w/bin-old/charlab" sweep "$w/tpe.toml" --runs "$w/runs" --plain > /dev/null 2>&1
outputs() { # SIDE
  local B="$w/bin-$1/charlab" O="$w/out-$1" R="$w/runs"
  mkdir -p "$O"
  for s in g-grid g-tpe; do
    for fmt in table markdown csv json; do
      "$B" compare "$R/$s" --format $fmt > "$O/$s.compare.$fmt" 2>&1 || echo "rc $?" >> "$O/$s.compare.$fmt"
      "$B" compare "$R/$s" --importance --format $fmt > "$O/$s.imp.$fmt" 2>&1 || echo "rc $?" >> "$O/$s.imp.$fmt"
    done
    for sort in val/bpc val/accuracy time steps lr bogus; do
      f="$O/$s.sort.${sort//\//_}"
      "$B" compare "$R/$s" --sort $sort --top 3 > "$f" 2>&1 || echo "rc $?" >> "$f"
    done
    "$B" report "$R/$s" -o "$O/$s.report.html" > /dev/null 2>&1 || echo "rc $?" >> "$O/$s.report.log"
    "$B" refine "$R/$s" --top 3 > "$O/$s.refine" 2>&1 || echo "rc $?" >> "$O/$s.refine"
  done
  local one; one=$(ls -d "$R"/g-grid/000-*)
  "$B" compare "$one" > "$O/single.compare" 2>&1 || true
  "$B" compare /nonexistent > "$O/missing.compare" 2>&1 || echo "rc $?" >> "$O/missing.compare"
  "$B" sweep "$w/grid.toml" --dry-run --runs "$w/dry" > "$O/grid.dry" 2>&1 || true
  "$B" sweep "$w/tpe.toml" --dry-run --runs "$w/dry" > "$O/tpe.dry" 2>&1 || true
  "$B" sample --run "$one" --length 50 --seed 3 > "$O/sample" 2>&1 || true
  "$B" check-device --device cpu > "$O/check" 2>&1 || true
  "$B" train --help > "$O/help.train" 2>&1; "$B" sweep --help > "$O/help.sweep" 2>&1
  "$B" train --config "$w/run.toml" --out "$w/train-$1" --plain > /dev/null 2>&1
  python3 - "$w/train-$1" > "$O/train.ckpt" <<'PY'
import glob, hashlib, json, struct, sys
d = sys.argv[1]
for f in sorted(glob.glob(d + "/checkpoints/*")):
    b = open(f, "rb").read(); n = struct.unpack("<Q", b[:8])[0]
    meta = json.loads(b[8:8 + n])["__metadata__"]; cur = json.loads(meta["charlab"]); cur.pop("elapsed_secs")
    print(f.split("/")[-1], hashlib.sha256(b[8 + n:]).hexdigest(), sorted(cur.items()))
r = json.load(open(d + "/run.json"))
print(r["best_metrics"], r["final_metrics"], r["steps"], r["params"])
PY
}
outputs old; outputs new
norm() { sed -E 's/generated [0-9T:+-]+/generated X/'; }
diffs=0
for f in $(cd "$w/out-old" && ls); do
  if ! diff -q <(norm < "$w/out-old/$f") <(norm < "$w/out-new/$f") > /dev/null; then
    echo "differs: $f"; diff <(norm < "$w/out-old/$f") <(norm < "$w/out-new/$f") | head -5; diffs=$((diffs + 1))
  fi
done
n=$(ls "$w/out-old" | wc -l)
[ "$diffs" = 0 ] && echo "same outputs: $n files" || { echo "$diffs of $n files differ"; exit 1; }

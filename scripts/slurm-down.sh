#!/usr/bin/env bash
# Stops what scripts/slurm-up.sh started: cancels every job first (else job processes outlive
# slurmd), then slurmd, slurmctld and munged, by their pid files. Idempotent.
set -uo pipefail
dir=${CHARLAB_SLURM_DIR:-/tmp/charlab-slurm}
if command -v scancel >/dev/null && scontrol ping 2>/dev/null | grep -q UP; then
  scancel --full -u "$(id -un)" 2>/dev/null
  for _ in $(seq 50); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.1; done
fi
stop() { # pidfile
  [ -f "$1" ] || return 0
  local pid; pid=$(cat "$1")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
  fi
  rm -f "$1"
}
stop "$dir/slurmd.pid"
stop "$dir/slurmctld.pid"
if [ -f /run/munge/munged.pid ]; then stop /run/munge/munged.pid; fi
echo "slurm down"

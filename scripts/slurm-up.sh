#!/usr/bin/env bash
# Brings up a real single-node Slurm on this machine (Debian 12's packages: slurmctld, slurmd,
# munge), as root, without systemd or cgroups: for the launcher's integration test and for trying
# `charlab sweep --launcher slurm` locally. Idempotent: a running cluster is left as it is.
# State, logs and pid files live under $CHARLAB_SLURM_DIR (default /tmp/charlab-slurm).
#   scripts/slurm-up.sh        then: sinfo; scripts/slurm-down.sh
set -euo pipefail
dir=${CHARLAB_SLURM_DIR:-/tmp/charlab-slurm}
[ "$(id -u)" = 0 ] || { echo "slurm-up: needs root (it starts munged, slurmctld and slurmd)" >&2; exit 1; }
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; }
fi
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() { # seconds, command...
  local n=$1; shift
  for _ in $(seq $((n * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}
mkdir -p "$dir"/{state,spool,log}

# munge: the authentication daemon every Slurm daemon and client talks to.
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  mungekey -c -f >/dev/null 2>&1 || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged --force
  wait_for 10 sh -c 'munge -n | unmunge' || { echo "slurm-up: munged did not start" >&2; exit 1; }
fi

host=$(hostname -s)
conf=/etc/slurm/slurm.conf
if ! alive "$dir/slurmctld.pid"; then
  # The node's CPU layout as slurmd detects it; RealMemory below the detected value (at or above
  # it, the node drains).
  layout=$(slurmd -C | head -n1 | sed -E 's/^NodeName=[^ ]+ //; s/ RealMemory=[0-9]+//')
  mem=$(slurmd -C | head -n1 | sed -E 's/.*RealMemory=([0-9]+).*/\1/')
  mkdir -p /etc/slurm
  cat > "$conf" <<CONF
ClusterName=charlab
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
ReturnToService=2
MinJobAge=3600
SchedulerType=sched/backfill
NodeName=$host NodeAddr=127.0.0.1 $layout RealMemory=$((mem * 9 / 10)) State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  slurmctld -i
  wait_for 20 sh -c 'scontrol ping | grep -q UP' || { echo "slurm-up: slurmctld did not come up; see $dir/log/slurmctld.log" >&2; exit 1; }
fi
if ! alive "$dir/slurmd.pid"; then
  slurmd
fi
state() { sinfo -h -n "$host" -o %T 2>/dev/null | head -n1; }
for _ in $(seq 200); do
  case "$(state)" in
    idle|mixed|allocated) break ;;
    down*|drain*|*drained*) scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 0.1
done
case "$(state)" in
  idle|mixed|allocated) echo "slurm up: node $host $(state), state in $dir" ;;
  *) echo "slurm-up: node $host is '$(state)'; see $dir/log/slurmd.log" >&2; exit 1 ;;
esac

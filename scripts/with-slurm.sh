#!/usr/bin/env bash
# Usage: scripts/with-slurm.sh CMD [ARG...]
#
# Starts a single-node Slurm cluster on this machine, runs CMD with SLURM_CONF
# pointing at it, then stops the cluster and returns CMD's exit code.
#
# The cluster is Debian's slurm-wlm and munge (installed with apt-get when
# missing): munged, slurmctld and slurmd, all run as root in the foreground of
# this script, with a generated slurm.conf, a fresh munge key, state, spool,
# pid files and logs in one temporary folder that is removed at the end. The
# node is this host (`hostname -s`) with its real CPUs and memory; there is no
# accounting database, no cgroups (proctrack/linuxproc, task/none) and no
# systemd. The controller starts a submitted job at its next scheduling pass
# instead of batching submissions for up to 3 s (`batch_sched_delay=0`). Needs
# root (it installs packages and runs the daemons).
#
# Examples:
#   scripts/with-slurm.sh sinfo
#   scripts/with-slurm.sh cargo test --workspace --test slurm
#   scripts/with-slurm.sh bench/slurm_overhead.sh
set -euo pipefail

if [[ $# -eq 0 ]]; then
  echo "usage: $0 CMD [ARG...]  (runs CMD against a temporary single-node Slurm cluster)" >&2
  exit 2
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "with-slurm.sh: needs root (it installs slurm-wlm and munge and runs their daemons); run it with sudo" >&2
  exit 2
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
  || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  echo "with-slurm.sh: installing slurm-wlm and munge" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

dir=$(mktemp -d /tmp/pipe-slurm.XXXXXX)
chmod 700 "$dir"
pids=()

stop() {
  local code=$?
  if [[ -n "${SLURM_CONF:-}" ]] && [[ ${#pids[@]} -gt 1 ]]; then
    # Cancel what CMD left and let the jobs end while the daemons still run,
    # so no job step is left behind waiting for a controller that is gone.
    scancel --user=root --quiet 2>/dev/null || true
    for _ in $(seq 40); do
      [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break
      sleep 0.25
    done
  fi
  local pid
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid=${pids[i]}
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$dir"
  exit "$code"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
  echo "with-slurm.sh: $1" >&2
  for log in munged.log slurmctld.log slurmd.log; do
    if [[ -s "$dir/$log" ]]; then
      echo "--- last lines of $log:" >&2
      tail -n 15 "$dir/$log" >&2
    fi
  done
  exit 2
}

# Two free TCP ports for the controller and the node daemon.
read -r ctld_port slurmd_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
')

host=$(hostname -s)
cpus=$(nproc)
mem=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo) # MB, as `free -m` says
mkdir -p "$dir/state" "$dir/spool"

dd if=/dev/urandom of="$dir/munge.key" bs=1024 count=1 status=none
chmod 400 "$dir/munge.key"
munged --foreground --force \
  --key-file="$dir/munge.key" \
  --socket="$dir/munge.socket" \
  --pid-file="$dir/munged.pid" \
  --seed-file="$dir/munged.seed" \
  --log-file="$dir/munged.log" 2>>"$dir/munged.log" &
pids+=($!)
for _ in $(seq 50); do
  [[ -S "$dir/munge.socket" ]] && break
  sleep 0.1
done
[[ -S "$dir/munge.socket" ]] || fail "munged did not start"

cat >"$dir/slurm.conf" <<EOF
ClusterName=pipe
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=2
SchedulerParameters=batch_sched_delay=0
MinJobAge=600
InactiveLimit=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$dir/slurm.conf"

slurmctld -D -i -f "$SLURM_CONF" >>"$dir/slurmctld.log" 2>&1 &
pids+=($!)
slurmd -D -N "$host" -f "$SLURM_CONF" >>"$dir/slurmd.log" 2>&1 &
pids+=($!)

state=
for _ in $(seq 120); do
  state=$(sinfo -h -N -o '%T' 2>/dev/null | head -n 1 || true)
  [[ $state == idle ]] && break
  sleep 0.5
done
[[ $state == idle ]] || fail "the node did not become idle within 60 s (state: ${state:-unknown})"

set +e
"$@"
code=$?
set -e
exit "$code"

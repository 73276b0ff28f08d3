#!/usr/bin/env bash
# Stop the one-node SLURM that tests/cluster/slurm_up.sh DIR started: its jobs, slurmd, slurmctld
# and munged, each by the pid in its pid file under DIR; then remove DIR.
set -uo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR (the folder given to slurm_up.sh)" >&2; exit 2; }
DIR=$1
[ -d "$DIR" ] || exit 0
if [ -f "$DIR/slurm.conf" ] && [ -f "$DIR/slurmctld.pid" ]; then
  SLURM_CONF="$DIR/slurm.conf" scancel --full --quiet --state=RUNNING,PENDING --user="$(id -un)" 2> /dev/null
fi
stop() {  # pid file, daemon name
  [ -f "$1" ] || return 0
  local pid; pid=$(cat "$1")
  [ -n "$pid" ] && kill -0 "$pid" 2> /dev/null || return 0
  kill -TERM "$pid"
  for _ in $(seq 50); do kill -0 "$pid" 2> /dev/null || return 0; sleep 0.2; done
  echo "slurm_down: $2 ($pid) still running after 10 s; killing it" >&2
  kill -KILL "$pid" 2> /dev/null
}
stop "$DIR/slurmd.pid" slurmd
stop "$DIR/slurmctld.pid" slurmctld
stop "$DIR/munge/munged.pid" munged
rm -rf "$DIR"

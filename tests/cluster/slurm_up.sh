#!/usr/bin/env bash
# A one-node SLURM cluster for the cluster test (tests/cluster/), self-contained in one folder:
# its own munge key and socket, its own slurm.conf, ports, spool and logs, so it neither reads nor
# disturbs a SLURM or munge the machine may already run.
#
#   tests/cluster/slurm_up.sh --install         install slurm-wlm and munge (Debian/Ubuntu, as root)
#   tests/cluster/slurm_up.sh DIR [PORT PORT]   install if missing, start munged, slurmctld and slurmd
#                                               with everything under DIR; exits 0 once the node is idle
#   tests/cluster/slurm_down.sh DIR             stop them again
#
# Then `. DIR/env` (SLURM_CONF=DIR/slurm.conf, DIR/bin first on PATH) points sbatch, squeue, scancel,
# srun... at it.
# The node has partitions `cpu` (default) and `gpu`, the names workflows/profiles/slurm uses, and
# two GPUs as SLURM sees them (GRES backed by placeholder device files, so SLURM schedules them and
# sets CUDA_VISIBLE_DEVICES for each job; CUDA itself finds none and jobs compute on the CPU).
# No accounting (no slurmdbd): job state comes from squeue (MinJobAge=3600 keeps finished jobs there).
# Exit status 3: SLURM cannot be installed or started here; the reason is on stderr.
set -euo pipefail

cannot() { echo "slurm_up: $*" >&2; exit 3; }

install() {
  local missing=()
  for tool in munged slurmctld slurmd sbatch; do command -v "$tool" > /dev/null || missing+=("$tool"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || cannot "${missing[*]} not installed, and installing them needs root (apt-get install slurm-wlm munge)"
  command -v apt-get > /dev/null || cannot "${missing[*]} not installed and no apt-get here; install SLURM (slurmctld, slurmd, munge) yourself"
  echo "slurm_up: installing slurm-wlm and munge with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends slurm-wlm munge > /dev/null 2>&1 \
    || { apt-get update > /dev/null 2>&1 && apt-get install -y --no-install-recommends slurm-wlm munge > /dev/null; } \
    || cannot "apt-get install slurm-wlm munge failed"
}

if [ "${1:-}" = "--install" ]; then install; exit 0; fi
[ $# -ge 1 ] || { sed -n '2,17p' "$0" >&2; exit 2; }
install
[ "$(id -u)" -eq 0 ] || cannot "slurmd runs jobs as their submitting user, which needs root; run as root"

DIR=$(mkdir -p "$1" && cd "$1" && pwd)
CTLD_PORT=${2:-16817}
SLURMD_PORT=${3:-16818}
NODE=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 ))
chmod 700 "$DIR"
mkdir -p "$DIR"/{munge,ctld,spool,log,dev}
[ ${#DIR} -lt 80 ] || cannot "DIR $DIR is too long for a unix socket path; use a shorter one"

# munge: a key of its own and a socket in DIR.
dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$DIR/munge/munge.key"
chmod 700 "$DIR/munge"
munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/socket" \
  --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/seed" \
  || cannot "munged did not start: $(tail -n3 "$DIR/log/munged.log" 2>/dev/null)"

# Two GPUs for the scheduler: GRES needs a device file per GPU; character devices like /dev/null.
for i in 0 1; do
  [ -e "$DIR/dev/gpu$i" ] || mknod "$DIR/dev/gpu$i" c 1 3 2> /dev/null || touch "$DIR/dev/gpu$i"
done

cat > "$DIR/slurm.conf" <<EOF
ClusterName=kdbench-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
ReturnToService=2
MinJobAge=3600
KillWait=5
InactiveLimit=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF
cat > "$DIR/gres.conf" <<EOF
NodeName=$NODE Name=gpu File=$DIR/dev/gpu[0-1]
EOF
# The plugin's job step runs each rule under `srun` after dropping every SLURM_* variable, SLURM_CONF
# too (snakemake-executor-plugin-slurm issue #164), so that srun would look for /etc/slurm: this srun
# on PATH points it at DIR's cluster again. (A real cluster keeps its config where srun looks.)
mkdir -p "$DIR/bin"
printf '#!/bin/sh\nSLURM_CONF=%s exec %s "$@"\n' "$DIR/slurm.conf" "$(command -v srun)" > "$DIR/bin/srun"
chmod +x "$DIR/bin/srun"
printf 'export SLURM_CONF=%s\nexport PATH=%s:$PATH\n' "$DIR/slurm.conf" "$DIR/bin" > "$DIR/env"
export SLURM_CONF="$DIR/slurm.conf"

slurmctld -i || cannot "slurmctld did not start: $(tail -n5 "$DIR/log/slurmctld.log" 2>/dev/null)"
slurmd -N "$NODE" || cannot "slurmd did not start: $(tail -n5 "$DIR/log/slurmd.log" 2>/dev/null)"
for _ in $(seq 60); do
  state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1 || true)
  case "$state" in idle*) echo "slurm_up: node $NODE idle ($CPUS CPUs, 2 GPUs); . $DIR/env to use it" >&2; exit 0 ;; esac
  sleep 0.5
done
cannot "the node did not become idle within 30 s (state: ${state:-none}); logs in $DIR/log:
$(tail -n5 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" 2>/dev/null)"

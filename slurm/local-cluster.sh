#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests and CI: slurm/local-cluster.sh start|stop|status
# Installs Debian's slurm-wlm and munge if missing, writes a configuration for this host under
# $CC_SLURM_DIR (default /tmp/cc-train-slurm), starts munged, slurmctld and slurmd, waits until the
# node is idle. Nothing listens beyond this host; stop kills the three daemons.
set -euo pipefail
DIR=${CC_SLURM_DIR:-/tmp/cc-train-slurm}
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
# The default config path, so every client (sbatch, submitit, tests) finds this cluster without setup.
export SLURM_CONF=/etc/slurm/slurm.conf

install() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

configure() {
  mkdir -p "$DIR"/{state,spool,log} /etc/slurm /etc/munge /run/munge /var/lib/munge /var/log/munge
  [ -f /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chown -R root:root /etc/munge /run/munge /var/lib/munge /var/log/munge  # munged runs as root here (--force)
  chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key
  cat > "$SLURM_CONF" <<CONF
ClusterName=cctrain
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# A job stopped by SIGTERM has KillWait seconds to save its checkpoint (a tiny model's takes a second or two); a
# requeued job may start again once its credential expired (cred_expire, 120 s by default: 30 here, still ample to
# launch a step on a loaded 2-core node), and the scheduler looks at pending jobs every 5 s, not every 60. Tests read
# finished jobs with scontrol, which forgets them MinJobAge seconds after they end (a sweep's evaluation job can run
# for many minutes after its training jobs ended).
KillWait=60
AuthInfo=cred_expire=30
SchedulerParameters=sched_interval=5,bf_interval=5
MinJobAge=7200
InactiveLimit=0
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
}

start() {
  install
  configure
  # A daemon is started unless it answers: munge by a credential round trip, SLURM by its own ping.
  if ! munge -n </dev/null >/dev/null 2>&1; then
    munged --force
    for _ in $(seq 1 20); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.5; done
  fi
  pgrep -x slurmctld >/dev/null || slurmctld -f "$SLURM_CONF"
  pgrep -x slurmd >/dev/null || slurmd -f "$SLURM_CONF"
  for _ in $(seq 1 60); do
    if timeout 5 sinfo -h -o "%t" 2>/dev/null | grep -qE "^(idle|mix|alloc)"; then
      echo "slurm: node $HOST idle (SLURM_CONF=$SLURM_CONF)"; return 0
    fi
    timeout 5 scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  echo "slurm: node did not become idle; logs in $DIR/log" >&2; tail -20 "$DIR"/log/*.log >&2; return 1
}

stop() {
  pkill -x slurmd || true; pkill -x slurmctld || true; pkill -x munged || true
  for _ in $(seq 1 20); do
    pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || pgrep -x munged >/dev/null || break
    sleep 0.5
  done
  echo "slurm: stopped"
}

status() {
  if ! { timeout 5 sinfo 2>/dev/null && timeout 5 squeue 2>/dev/null; }; then
    echo "slurm: not running"
    return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac

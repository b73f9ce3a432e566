#!/usr/bin/env bash
# Bring up a real single-node SLURM with accounting on localhost, for meshctl's tests and demos.
#
# Daemons: munged, MariaDB (private datadir), slurmdbd, slurmctld, slurmd, all from Debian's packages,
# started by hand (no systemd), run as root, with their state, logs and PID files under DIR.
#
# Usage:   scripts/slurm/start_local_slurm.sh [DIR]     (DIR: $MESHCTL_SLURM_DIR or /tmp/meshctl-slurm)
# Stop:    scripts/slurm/stop_local_slurm.sh [DIR] [--clean]
# Clients: `source DIR/env.sh` sets SLURM_CONF; /etc/slurm/slurm.conf is also linked to DIR's file
#          (only if that path is free or a dangling link), so sbatch/sacct/submitit work from any shell.
#
# Idempotent: installs only the packages that are missing, starts only the daemons that are not
# running, restarts slurmctld/slurmd if the generated configuration changed. It returns once
# `sinfo` shows the node idle and `sacct` answers, and prints one summary line on stdout; progress
# goes to stderr. Exit status 1 with a message naming the log to read when anything fails.
#
# Settings (environment, all optional):
#   MESHCTL_SLURM_CPUS        CPUs of the node (default: nproc; more than the machine has is allowed)
#   MESHCTL_SLURM_MEM_MB      RealMemory of the node (default: what `slurmd -C` reports)
#   MESHCTL_SLURM_MAXTIME     MaxTime of partition `debug`, minutes (default 60)
#   MESHCTL_SLURM_ARRAY_SIZE  MaxArraySize (default 1001: array indices 0-1000)
#   MESHCTL_SLURM_PORT        first of four TCP ports: slurmctld, slurmd, slurmdbd, MariaDB (default 6817)
#   MESHCTL_SLURM_TIMEOUT     seconds to wait for each daemon (default 60)
#   MESHCTL_SLURM_SMOKE       1 (default): after starting daemons, run one batch job and wait until
#                             sacct reports it COMPLETED (also absorbs the slow first schedule)
set -euo pipefail

T0=$(date +%s%N)
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
DIR=${1:-${MESHCTL_SLURM_DIR:-/tmp/meshctl-slurm}}
case "$DIR" in *[[:space:]]*) echo "error: DIR must not contain spaces: '$DIR'" >&2; exit 1 ;; esac
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
CPUS=${MESHCTL_SLURM_CPUS:-$(nproc)}
MAXTIME=${MESHCTL_SLURM_MAXTIME:-60}
ARRAY_SIZE=${MESHCTL_SLURM_ARRAY_SIZE:-1001}
PORT=${MESHCTL_SLURM_PORT:-6817}
CTLD_PORT=$PORT SLURMD_PORT=$((PORT + 1)) DBD_PORT=$((PORT + 2)) DB_PORT=$((PORT + 3))
TIMEOUT=${MESHCTL_SLURM_TIMEOUT:-60}
CLUSTER=meshctl
DB_USER=slurm
DB_PASS=meshctl-local
SOCK="$DIR/run/mysqld.sock"
export SLURM_CONF="$DIR/etc/slurm.conf"

elapsed() { awk -v a="$(date +%s%N)" -v b="$T0" 'BEGIN { printf "%.1f", (a - b) / 1e9 }'; }
log() { echo "[start_local_slurm $(elapsed)s] $*" >&2; }
fail() {  # fail MESSAGE [LOGFILE]: say what broke, show the log's tail, exit 1
  echo "error: $1" >&2
  if [ -n "${2:-}" ] && [ -s "$2" ]; then echo "--- last lines of $2:" >&2; tail -n 15 "$2" >&2; fi
  exit 1
}
running() {  # running PIDFILE COMM: the PID in PIDFILE is alive and is that program
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}
wait_until() {  # wait_until WHAT LOGFILE CMD...: poll CMD every 0.2 s for up to TIMEOUT seconds
  local what=$1 logfile=$2 end=$(( $(date +%s) + TIMEOUT ))
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] \
      || fail "timed out after ${TIMEOUT}s waiting for $what (ports $CTLD_PORT-$DB_PORT taken? see below)" "$logfile"
    sleep 0.2
  done
}
stop_pid() {  # stop_pid PIDFILE COMM: SIGTERM, wait up to 20 s, then SIGKILL
  local pid
  running "$1" "$2" || return 0
  pid=$(cat "$1")
  log "stopping $2 (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$1"
}

[ "$(id -u)" = 0 ] || fail "must run as root: it installs packages and runs the SLURM daemons as root"

# Packages: only what is missing. The lists may be stale, so a failed install updates them and retries.
missing=()
for pair in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge \
            slurmdbd:slurmdbd mariadbd:mariadb-server; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      -o DPkg::Lock::Timeout=300 "${missing[@]}" >>"$DIR/apt.log" 2>&1
  }
  if ! apt_install; then
    log "install failed; running apt-get update and retrying"
    apt-get update -q -o DPkg::Lock::Timeout=300 >>"$DIR/apt.log" 2>&1 || fail "apt-get update failed" "$DIR/apt.log"
    apt_install || fail "apt-get install ${missing[*]} failed" "$DIR/apt.log"
  fi
  log "packages installed"
fi
mkdir -p "$DIR"/{etc,run,log,state,spool}

# munge: reuse a working munged; otherwise start one (the Debian postinst made the key and user).
if ! { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }; then
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key >/dev/null 2>&1 \
      || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 0755 /run/munge /var/log/munge /var/lib/munge
  log "starting munged"
  runuser -u munge -- munged || fail "munged did not start" /var/log/munge/munged.log
  wait_until munged /var/log/munge/munged.log bash -c 'munge -n | unmunge'
  cp /run/munge/munged.pid "$DIR/run/munged.pid"   # tells the stop script that munged is ours
fi

# Configuration. Memory is not a consumable (CR_Core), so --mem is only checked against RealMemory.
MEM=${MESHCTL_SLURM_MEM_MB:-$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')}
MEM=${MEM:-1024}
SLURM_CONF_TEXT="# Written by meshctl scripts/slurm/start_local_slurm.sh: one node on localhost.
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job may start again after cred_expire seconds (default 120: minutes lost per requeue test).
AuthInfo=cred_expire=10
# A container has no usable cgroups and no systemd: track processes through /proc, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
MpiDefault=none
# The node may advertise more CPUs than the machine has (MESHCTL_SLURM_CPUS).
SlurmdParameters=config_overrides
ReturnToService=2
MailProg=/bin/true
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# Schedule at once instead of batching submissions for 3 s; look again every 5 s (requeued jobs).
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MaxArraySize=$ARRAY_SIZE
MaxJobCount=100000
# Jobs may be requeued (submitit requeues a Checkpointable at its time limit or on preemption);
# --signal is sent on preemption too, not only before the time limit.
JobRequeue=1
SlurmctldParameters=preempt_send_user_signal
KillWait=10
OverTimeLimit=0
MinJobAge=300
InactiveLimit=0
NodeName=localhost NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=$MAXTIME DefaultTime=10 State=UP"
SLURMDBD_CONF_TEXT="AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db"

write_conf() {  # write_conf FILE TEXT: write only if changed; status 0 if it changed
  [ -f "$1" ] && [ "$(cat "$1")" = "$2" ] && return 1
  printf '%s\n' "$2" > "$1"
}
if write_conf "$DIR/etc/slurmdbd.conf" "$SLURMDBD_CONF_TEXT"; then
  stop_pid "$DIR/run/slurmdbd.pid" slurmdbd
fi
chmod 600 "$DIR/etc/slurmdbd.conf"   # slurmdbd refuses a file others can read (it holds a password)
if write_conf "$SLURM_CONF" "$SLURM_CONF_TEXT"; then
  stop_pid "$DIR/run/slurmd.pid" slurmd
  stop_pid "$DIR/run/slurmctld.pid" slurmctld
fi
echo "export SLURM_CONF=$SLURM_CONF" > "$DIR/env.sh"

started=0

# MariaDB, private to DIR, on 127.0.0.1 only.
if [ ! -d "$DIR/mysql/mysql" ]; then
  log "initialising the MariaDB datadir"
  rm -rf "$DIR/mysql"
  mariadb-install-db --user=root --datadir="$DIR/mysql" --auth-root-authentication-method=socket \
    --skip-test-db >"$DIR/log/mariadb-install-db.log" 2>&1 \
    || fail "mariadb-install-db failed" "$DIR/log/mariadb-install-db.log"
fi
if ! running "$DIR/run/mysqld.pid" mariadbd; then
  log "starting mariadbd on 127.0.0.1:$DB_PORT"
  # mariadbd stays in the foreground: detach it from this shell.
  setsid mariadbd --no-defaults --user=root --datadir="$DIR/mysql" --socket="$SOCK" \
    --pid-file="$DIR/run/mysqld.pid" --bind-address=127.0.0.1 --port="$DB_PORT" \
    --log-error="$DIR/log/mysqld.log" --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 \
    </dev/null >/dev/null 2>&1 &
  wait_until mariadbd "$DIR/log/mysqld.log" mariadb-admin --socket="$SOCK" ping
  wait_until "mariadbd's PID file" "$DIR/log/mysqld.log" test -s "$DIR/run/mysqld.pid"
  mariadb --socket="$SOCK" -uroot -e "
    CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO '$DB_USER'@'127.0.0.1';" \
    || fail "could not create the accounting database" "$DIR/log/mysqld.log"
  started=1
fi

# slurmdbd (reads slurmdbd.conf next to SLURM_CONF), then the controller, which registers the cluster.
if ! running "$DIR/run/slurmdbd.pid" slurmdbd; then
  log "starting slurmdbd on :$DBD_PORT"
  slurmdbd || fail "slurmdbd did not start" "$DIR/log/slurmdbd.log"
  wait_until slurmdbd "$DIR/log/slurmdbd.log" sacctmgr -n list cluster
  started=1
fi
if ! running "$DIR/run/slurmctld.pid" slurmctld; then
  log "starting slurmctld on :$CTLD_PORT"
  slurmctld || fail "slurmctld did not start" "$DIR/log/slurmctld.log"
  wait_until slurmctld "$DIR/log/slurmctld.log" bash -c 'scontrol ping | grep -q UP'
  started=1
fi
if ! running "$DIR/run/slurmd.pid" slurmd; then
  log "starting slurmd"
  slurmd -N localhost || fail "slurmd did not start" "$DIR/log/slurmd.log"
  started=1
fi

node_idle() {
  local state
  state=$(sinfo -h -n localhost -o %T 2>/dev/null | head -n 1)
  case "$state" in
    idle|mixed|allocated|completing) return 0 ;;
    *drain*|*down*) scontrol update nodename=localhost state=resume >/dev/null 2>&1 ;;
  esac
  return 1
}
wait_until "node localhost to be idle in sinfo" "$DIR/log/slurmd.log" node_idle
wait_until "the cluster to be registered in slurmdbd" "$DIR/log/slurmctld.log" \
  bash -c "sacctmgr -n -P list cluster format=cluster | grep -qx $CLUSTER"
wait_until "sacct to answer" "$DIR/log/slurmdbd.log" sacct -n -X -P -o JobID -S now

if [ "$started" = 1 ] && [ "${MESHCTL_SLURM_SMOKE:-1}" = 1 ]; then
  jid=$(sbatch --parsable -J meshctl-smoke -D "$DIR" -o /dev/null -t 1 --wrap true) \
    || fail "sbatch of the smoke job failed" "$DIR/log/slurmctld.log"
  wait_until "sacct to report smoke job $jid COMPLETED" "$DIR/log/slurmctld.log" \
    bash -c "sacct -n -X -P -j $jid -o State | grep -qx COMPLETED"
  log "smoke job $jid completed"
fi

# Clients in any shell find this cluster through /etc/slurm/slurm.conf, unless that is a real file
# or a link to another cluster's configuration that still exists.
if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$SLURM_CONF" ]; then
  :
elif [ ! -e /etc/slurm/slurm.conf ]; then   # absent, or a link left dangling by a removed DIR
  mkdir -p /etc/slurm
  ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf
else
  log "note: /etc/slurm/slurm.conf is not ours, left alone; clients need: source $DIR/env.sh"
fi

state=$(sinfo -h -n localhost -o %T | head -n 1)
echo "slurm up in $(elapsed)s: cluster $CLUSTER, node localhost $state (CPUs=$CPUS RealMemory=${MEM}MB)," \
  "partition debug (default, MaxTime=${MAXTIME}min), MaxArraySize=$ARRAY_SIZE, sacct via slurmdbd," \
  "SLURM_CONF=$SLURM_CONF"

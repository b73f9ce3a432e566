#!/usr/bin/env bash
# Stop the SLURM that start_local_slurm.sh started, daemon by daemon, by the PIDs in DIR/run.
#
# Usage: scripts/slurm/stop_local_slurm.sh [DIR] [--clean]   (DIR: $MESHCTL_SLURM_DIR or /tmp/meshctl-slurm)
#   Jobs still queued or running are cancelled first. munged is stopped only if the start script
#   started it. --clean also deletes DIR (state, accounting database, logs) and the
#   /etc/slurm/slurm.conf link when it points into DIR. Packages stay installed.
# Safe to run twice, and when nothing runs.
set -uo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
DIR=${MESHCTL_SLURM_DIR:-/tmp/meshctl-slurm}
CLEAN=0
for arg in "$@"; do
  case "$arg" in
    --clean) CLEAN=1 ;;
    -*) echo "error: unknown option $arg (usage: stop_local_slurm.sh [DIR] [--clean])" >&2; exit 2 ;;
    *) DIR=$arg ;;
  esac
done
[ -d "$DIR" ] || { echo "nothing to stop: $DIR does not exist" >&2; exit 0; }
DIR=$(cd "$DIR" && pwd)
export SLURM_CONF="$DIR/etc/slurm.conf"
T0=$(date +%s%N)
elapsed() { awk -v a="$(date +%s%N)" -v b="$T0" 'BEGIN { printf "%.1f", (a - b) / 1e9 }'; }
log() { echo "[stop_local_slurm $(elapsed)s] $*" >&2; }

stop_all() {  # stop_all PIDFILE:COMM...: SIGTERM each live one, then wait for all (SIGKILL after 20 s)
  local item pidfile comm pid pids=()
  for item in "$@"; do
    pidfile=${item%%:*} comm=${item#*:}
    [ -s "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ]; then
      log "stopping $comm (pid $pid)"
      kill -TERM "$pid" && pids+=("$pid")
    fi
    rm -f "$pidfile"
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then log "pid $pid ignored SIGTERM; SIGKILL"; kill -KILL "$pid"; fi
  done
}

# Cancel jobs first, so that their steps end cleanly and their final states reach accounting.
if [ -f "$SLURM_CONF" ] && scontrol ping 2>/dev/null | grep -q UP; then
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs $jobs"
    # shellcheck disable=SC2086  # one argument per job id
    scancel $jobs 2>/dev/null
    for _ in $(seq 75); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi

# slurmctld sends its last job records to slurmdbd as it exits, and slurmdbd writes to MariaDB.
stop_all "$DIR/run/slurmd.pid:slurmd" "$DIR/run/slurmctld.pid:slurmctld"
stop_all "$DIR/run/slurmdbd.pid:slurmdbd"
stop_all "$DIR/run/mysqld.pid:mariadbd" "$DIR/run/munged.pid:munged"

if [ "$CLEAN" = 1 ]; then
  if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$SLURM_CONF" ]; then
    rm -f /etc/slurm/slurm.conf
  fi
  rm -rf "$DIR"
  log "removed $DIR"
fi
log "stopped"

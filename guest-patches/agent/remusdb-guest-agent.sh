#!/bin/sh
# remusdb-guest-agent: runs inside the protected guest and tells the patched databases
# that a failover happened, so they abort every transaction that is not committing
# (RemusDB §5.4, the recovery half of the commit protection protocol).
#
# Signal source (first that applies):
#   xenstore  `xenstore-watch data/remusdb/failover` (relative to the guest's own
#             /local/domain/<domid>); the backup's dom0 writes a new value (the failover
#             epoch) there after it resumes the guest. A value seen at start-up is
#             remembered, not acted on.
#   file      --watch-file PATH (plain Linux, tests): polled every --interval-ms; each new
#             content (e.g. `date +%s%N > PATH`) is one failover.
#   now       --now: signal once and exit.
# Targets: --pg-data DIR (PostgreSQL: SIGUSR2 to the postmaster in DIR/postmaster.pid)
# and/or --mysql-pid-file FILE (MariaDB: SIGUSR2 to mysqld). Both may be repeated.
set -u

WATCH_FILE=
INTERVAL_MS=200
NOW=0
PG_DATA=
MYSQL_PIDS=
XS_KEY=data/remusdb/failover

usage() { echo "usage: $0 [--watch-file PATH [--interval-ms N] | --now] [--pg-data DIR]... [--mysql-pid-file FILE]..." >&2; exit 2; }

while [ $# -gt 0 ]; do
  case $1 in
    --watch-file) WATCH_FILE=$2; shift 2 ;;
    --interval-ms) INTERVAL_MS=$2; shift 2 ;;
    --now) NOW=1; shift ;;
    --pg-data) PG_DATA="$PG_DATA $2"; shift 2 ;;
    --mysql-pid-file) MYSQL_PIDS="$MYSQL_PIDS $2"; shift 2 ;;
    *) usage ;;
  esac
done
[ -n "$PG_DATA$MYSQL_PIDS" ] || usage
case $INTERVAL_MS in ''|*[!0-9]*) usage ;; esac

log() { echo "remusdb-guest-agent: $*" >&2; logger -t remusdb-guest-agent "$*" 2>/dev/null || true; }

signal_pid_file() {   # <pid file> <what>
  pid=$(head -n 1 "$1" 2>/dev/null)
  case $pid in ''|*[!0-9]*) log "$2: no pid in $1"; return 1 ;; esac
  kill -USR2 "$pid" && log "$2: SIGUSR2 sent to $pid"
}

failover() {
  log "failover ($1): aborting non-committing transactions"
  for d in $PG_DATA; do signal_pid_file "$d/postmaster.pid" "postgresql $d"; done
  for f in $MYSQL_PIDS; do signal_pid_file "$f" "mariadb $f"; done
}

if [ "$NOW" = 1 ]; then failover now; exit 0; fi

if [ -n "$WATCH_FILE" ]; then
  sleep_s=$(awk "BEGIN { printf \"%.3f\", $INTERVAL_MS / 1000 }")
  last=$(cat "$WATCH_FILE" 2>/dev/null || true)
  log "watching $WATCH_FILE every ${INTERVAL_MS} ms"
  while :; do
    cur=$(cat "$WATCH_FILE" 2>/dev/null || true)
    if [ "$cur" != "$last" ] && [ -n "$cur" ]; then failover "file: $cur"; fi
    last=$cur
    sleep "$sleep_s"
  done
fi

command -v xenstore-watch >/dev/null 2>&1 || { log "xenstore-watch not found (install xenstore-utils) and no --watch-file"; exit 1; }
last=$(xenstore-read "$XS_KEY" 2>/dev/null || true)
log "watching xenstore $XS_KEY"
# xenstore-watch prints the path once at start and once per change.
xenstore-watch "$XS_KEY" | while read -r _path; do
  cur=$(xenstore-read "$XS_KEY" 2>/dev/null || true)
  if [ "$cur" != "$last" ] && [ -n "$cur" ]; then failover "xenstore: $cur"; fi
  last=$cur
done

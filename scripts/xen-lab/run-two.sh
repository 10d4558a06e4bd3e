#!/bin/bash
# run-two.sh: the two-host protect scenario: a primary host A and a backup host B, two QEMU
# VMs booted from the same cached dom0 image (snapshot=on: neither writes it), linked only
# by a QEMU socket netdev on 127.0.0.1 (B listens, A connects). A runs scenarios/two-host-a.sh
# (domU + `remusdb protect` to B with the plug buffer), B runs scenarios/two-host-b.sh
# (`remusdb backup` + a client reading the domU's counter over the link). When A's serial
# console says "ready-to-kill", this script kills QEMU A with SIGKILL (a host crash, not
# `xl destroy`), tells B through its share (/lab/killed), and waits for B's result line.
#
#   scripts/xen-lab/run-two.sh            (as root; the project must be built)
#
# Holds the lab's QEMU lock ($XENLAB_CACHE/qemu.lock) for the whole run (waits up to 3600 s).
# Output: a run folder $XENLAB_CACHE/runs/<time>-two-host/ with a/ and b/ (share/, serial.log),
# result.txt; a last line "XENLAB RESULT two-host: PASS|FAIL ..."; exit 0 only on PASS.
# Env: XENLAB_PROJECT, XENLAB_MEM (MiB per VM, 3072), XENLAB_DOM0_MEM (1536M), XENLAB_SMP (2),
#   XENLAB_TIMEOUT (s per QEMU, 2400), XENLAB_TWO_PORT (link port, default: a free one),
#   XENLAB_KILL_DELAY_S (s between the marker and the kill, 0), XENLAB_VARS (NAME=value ...
#   for both dom0s: TWO_HB_MS (45000), TWO_INTERVAL_MS (200), TWO_MIN_ACKED (3),
#   TWO_PROTECT_S (30), TWO_AFTER_KILL_S (360)), XENLAB_VERBOSE=1 (every console line).
set -uo pipefail
. "$(dirname "$0")/lib.sh"
. "$XENLAB_DIR/stage.sh"

PROJECT=${XENLAB_PROJECT:-$XENLAB_REPO}
TIMEOUT=${XENLAB_TIMEOUT:-2400}
MEM=${XENLAB_MEM:-3072}
DOM0_MEM=${XENLAB_DOM0_MEM:-1536M}
SMP=${XENLAB_SMP:-2}
T_ALL=$(xl_now)

IMG=$("$XENLAB_DIR/build-image.sh" | tail -1)
[ -f "$IMG/complete" ] || xl_die "image build failed"
RUN=$XENLAB_CACHE/runs/$(date +%Y%m%d-%H%M%S)-two-host
mkdir -p "$RUN"
xl_stage_project "$PROJECT" "$RUN/project" "$RUN/project.tar"

share() { # share ROLE SELF_IP PEER_IP: $RUN/ROLE/share with the role's scenario and env
  local role=$1 sh=$RUN/$1/share
  mkdir -p "$sh/out"
  install -m 0755 "$XENLAB_DIR/scenarios/two-host-$role.sh" "$sh/scenario.sh"
  install -m 0644 "$XENLAB_DIR/dom0-lib.sh" "$XENLAB_DIR/dom0-two-lib.sh" "$sh/"
  ln "$RUN/project.tar" "$sh/project.tar" 2>/dev/null || cp "$RUN/project.tar" "$sh/project.tar"
  xl_scenario_env "two-host-$role" "$((TIMEOUT - 200))" > "$sh/env"
  printf 'export TWO_ROLE=%q TWO_SELF_IP=%q TWO_PEER_IP=%q\n' "$role" "$2" "$3" >> "$sh/env"
}
share a 10.99.0.1 10.99.0.10
share b 10.99.0.10 10.99.0.1
rm -f "$RUN/project.tar"
xl_prune_runs

T=$(xl_now)
xl_lab_lock # both VMs under one hold
T_LOCK=$(xl_since "$T")

PORT=${XENLAB_TWO_PORT:-}
if [ -z "$PORT" ]; then
  for PORT in $(seq 12340 12399); do ss -Hltn "sport = :$PORT" | grep -q . || break; done
fi

qpid() { # qpid ROLE: the pid of that VM's QEMU, only while it is still QEMU
  local pid; pid=$(cat "$RUN/$1/qemu.pid" 2>/dev/null) || return 1
  grep -q '^qemu-system' "/proc/$pid/comm" 2>/dev/null && echo "$pid"
}
alive() { [ ! -e "$RUN/$1/qemu.rc" ]; } # ROLE: its QEMU has not exited (rc written at exit)
cleanup() { local r p; for r in a b; do p=$(qpid $r) && kill -9 "$p"; done; return 0; }
trap 'cleanup' EXIT
trap 'exit 130' INT TERM

T0=${EPOCHREALTIME/./}
tsec() { local d=$(( (${EPOCHREALTIME/./} - T0) / 10000 )); printf '%d.%02d' $((d / 100)) $((d % 100)); }
boot() { # boot ROLE MAC NETDEV_OPTS: QEMU in the background, serial -> ROLE/serial.log
  local role=$1 dir=$RUN/$1 line
  xl_qemu_argv "$IMG" "$dir/share" "$dir/qemu.pid"
  local q=("${QEMU_ARGV[@]}" -netdev "socket,id=n1,$3" -device "virtio-net-pci,netdev=n1,mac=$2" -monitor none -serial stdio)
  printf '%q ' "${q[@]}" > "$dir/qemu-cmdline.txt"; echo >> "$dir/qemu-cmdline.txt"
  # (the group's own stderr is dropped: bash's "Killed" notice when QEMU A is SIGKILLed)
  { timeout -k 20 "$TIMEOUT" "${q[@]}" < /dev/null 2>&1; echo $? > "$dir/qemu.rc"; } 2> /dev/null |
    while IFS= read -r line; do
      line=${line//$'\r'/}
      printf '[%7s] %s\n' "$(tsec)" "$line" >> "$dir/serial.log"
      if [ "${XENLAB_VERBOSE:-0}" = 1 ] || [[ "$line" == XENLAB\ * ]]; then
        printf '[%7s] %s: %s\n' "$(tsec)" "${role^^}" "$line" >&2
      fi
    done &
}
stamp() { grep -m1 -F "$2" "$RUN/$1/serial.log" 2>/dev/null | sed -n 's/^\[ *\([0-9.]*\)\].*/\1/p'; }
has() { grep -q -F "$2" "$RUN/$1/serial.log" 2>/dev/null; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "") print "?"; else printf "%.1f", a - b }'; }

xl_log "two-host: B listens on 127.0.0.1:$PORT, A connects; ${MEM} MiB each, dom0 $DOM0_MEM; run $RUN (lock waited ${T_LOCK}s)"
boot b 52:54:00:00:00:0b "listen=127.0.0.1:$PORT"
for i in $(seq 1 60); do ss -Hltn "sport = :$PORT" | grep -q . && break; sleep 0.5; done
ss -Hltn "sport = :$PORT" | grep -q . || xl_die "QEMU B does not listen on $PORT"
boot a 52:54:00:00:00:0a "connect=127.0.0.1:$PORT"

# Wait for A's marker (or a result line from either side: a failure before the kill).
why=; T_KILL=; KILL_MS=
while :; do
  has a "two-host-a: ready-to-kill" && break
  has a "XENLAB RESULT " && { why="A ended before the crash: $(sed -n 's/.*\(XENLAB RESULT .*\)/\1/p' "$RUN/a/serial.log" | tail -1)"; break; }
  has b "XENLAB RESULT " && { why="B ended before the crash"; break; }
  alive a || { why="QEMU A exited before ready-to-kill (rc $(cat "$RUN/a/qemu.rc" 2>/dev/null))"; break; }
  alive b || { why="QEMU B exited before the crash (rc $(cat "$RUN/b/qemu.rc" 2>/dev/null))"; break; }
  [ "$(tsec | cut -d. -f1)" -lt $((TIMEOUT - 300)) ] || { why="no ready-to-kill within $((TIMEOUT - 300)) s"; break; }
  sleep 1
done
if [ -z "$why" ]; then
  sleep "${XENLAB_KILL_DELAY_S:-0}"
  for i in 1 2 3 4 5; do PA=$(qpid a) && break; xl_log "no QEMU A pid? pidfile '$(cat "$RUN/a/qemu.pid" 2>&1)'"; sleep 0.2; done
  [ -n "$PA" ] || PA=$(pgrep -f -- "-pidfile $RUN/a/qemu.pid" | head -1)
  t=${EPOCHREALTIME/./}
  T_KILL=$(tsec); T_KILL_ISO=$(date -u +%FT%T.%3NZ); kill -9 "$PA"
  while [ -e "/proc/$PA" ] && grep -q '^qemu-system' "/proc/$PA/comm" 2>/dev/null; do sleep 0.01; done
  KILL_MS=$(( (${EPOCHREALTIME/./} - t) / 1000 ))
  touch "$RUN/b/share/killed"
  xl_log "killed QEMU A (pid $PA) with SIGKILL at ${T_KILL}s ($T_KILL_ISO); gone after ${KILL_MS} ms"
  # B's result (its own bound after the kill is TWO_AFTER_KILL_S; ours a little longer).
  end=$(( $(tsec | cut -d. -f1) + ${TWO_HOST_WAIT_S:-600} ))
  until has b "XENLAB RESULT "; do
    alive b || break
    [ "$(tsec | cut -d. -f1)" -lt $end ] || { why="no result from B within ${TWO_HOST_WAIT_S:-600} s of the kill"; break; }
    sleep 1
  done
else
  touch "$RUN/b/share/abort" "$RUN/a/share/abort"
fi
# B powers itself off after its result (init); bounded, then the trap kills what is left.
for i in $(seq 1 180); do alive b || break; sleep 1; done
cleanup; wait 2>/dev/null

RB=$(tr -d '\r' < "$RUN/b/serial.log" | sed -n 's/^\[[ 0-9.]*\] \(XENLAB RESULT two-host-b: .*\)/\1/p' | tail -1)
if [ -n "$why" ]; then RESULT="XENLAB RESULT two-host: FAIL $why${RB:+ ($RB)}"
elif [[ "$RB" == *": PASS" ]]; then RESULT="XENLAB RESULT two-host: PASS"
else RESULT="XENLAB RESULT two-host: FAIL ${RB:-no result line from B}"; fi
{
  echo "$RESULT"
  echo "boot:      A dom0 up $(stamp a 'XENLAB dom0 up:')s, B dom0 up $(stamp b 'XENLAB dom0 up:')s (since QEMU start, both started together)"
  echo "A:         domU up $(stamp a 'two-host-a: domU up')s, protect $(stamp a 'two-host-a: protect started')s, first acks $(stamp a 'two-host-a: acked epoch')s, ready-to-kill $(stamp a 'two-host-a: ready-to-kill')s"
  echo "kill:      at ${T_KILL:-?}s = ${T_KILL_ISO:-?} host clock (SIGKILL -> QEMU gone ${KILL_MS:-?} ms)"
  grep -h -m1 -o 'two-host-b: failover: .*' "$RUN/b/serial.log" | sed 's/^/B log:     /' # its ISO time is B dom0's clock
  echo "B:         failover line $(sub "$(stamp b 'two-host-b: failover:')" "$T_KILL")s after the kill, first answer $(sub "$(stamp b 'two-host-b: answered after failover')" "$T_KILL")s after the kill"
  grep -h -o 'XENLAB NUMBERS .*' "$RUN/a/serial.log" "$RUN/b/serial.log" 2>/dev/null
  echo "total:     $(xl_since "$T_ALL")s (lock wait ${T_LOCK}s)"
  echo "logs:      $RUN (a/, b/: serial.log, share/out/)"
} | tee "$RUN/result.txt" >&2
[[ "$RESULT" == *": PASS" ]]

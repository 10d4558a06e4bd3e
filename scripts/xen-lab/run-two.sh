#!/bin/bash
# run-two.sh: the two-host protect scenario: a primary host A and a backup host B, two QEMU
# VMs booted from the same cached dom0 image (snapshot=on: neither writes it), linked only
# by a QEMU socket netdev on 127.0.0.1 (B listens, A connects). A runs scenarios/two-host-a.sh
# (domU + `remusdb protect` to B with the plug buffer; with TWO_DISK=1 the domU's disk is
# replicated too), B runs scenarios/two-host-b.sh (`remusdb backup` + a client reading the
# domU's counter over the link). When A's serial console says "ready-to-kill", this script
# kills QEMU A with SIGKILL (a host crash, not `xl destroy`), tells B through its share
# (/lab/killed), and waits for B's result line ("XENLAB RESULT two-host-b: ...").
# Second phase (TWO_REPROTECT=1, the default; only when B's result is PASS): B keeps running
# the domain and its backup process; this script boots a third VM, host C (scenarios/
# two-host-c.sh): a fresh dom0 from the same snapshot image, so it holds no old copy of the
# domain's disk (B's reprotection copies the whole disk), with A's MAC and address, connecting
# to B's socket netdev port again (QEMU's listening socket netdev accepts a new connection once
# the old peer closed; the run logs whether B took it). C starts `remusdb backup`, B runs
# `remusdb reprotect domu 10.99.0.1:7400 ... --no-wait`, C's client reads the domU while B
# protects it. On B's "ready-to-kill" this script SIGKILLs QEMU B, writes C's /lab/killed, and
# waits for C's result. PASS only if B's and (with the second phase) C's results are PASS.
# TWO_GUEST=pg: the domU is protect-pg's PostgreSQL guest instead of the counter (with its disk
# always: TWO_DISK does not apply). This script first runs protect-pg's prepare scripts as run.sh
# does (pg-guest.sh; guest-kernel.sh, which builds only with PG_KERNEL=patched) and puts their
# files in the shares' in/ (/lab/in): A gets pg-disk.img (and guest-bzImage, guest-kernel.release),
# B and C pg-client.tar. A protects the guest with PG_NET's network options; the backup host's
# clients (B's, then C's: pgbench and protect-pg's commit ledger over the link) run their
# protected load and mark "protected load done", whereupon this script writes the protecting
# host's /lab/go (A's, then B's): it marks ready-to-kill once its figures cover that load. B
# copies its ledger's acknowledged ids to its out/two-pg-b-acked.ids before its ready-to-kill;
# after the kill of B this script copies that file to C's share (b-acked.ids) before writing C's
# /lab/killed, and C checks that no id of either ledger was lost.
#
#   scripts/xen-lab/run-two.sh            (as root; the project must be built)
#   XENLAB_VARS="TWO_DISK=0 TWO_REPROTECT=0" scripts/xen-lab/run-two.sh   (the counter-only run)
#   XENLAB_VARS="TWO_GUEST=pg PG_NET=plug" scripts/xen-lab/run-two.sh     (PostgreSQL; pgwire, or
#     dscp with PG_KERNEL=patched)
#
# Holds the lab's QEMU lock ($XENLAB_CACHE/qemu.lock) for the whole run (waits up to 3600 s).
# At most two VMs run at once (C boots after A was killed).
# Output: a run folder $XENLAB_CACHE/runs/<time>-two-host/ with a/, b/, c/ (share/, serial.log),
# result.txt; a last line "XENLAB RESULT two-host: PASS|FAIL ..."; exit 0 only on PASS.
# Env: XENLAB_PROJECT, XENLAB_MEM (MiB per VM, 3072), XENLAB_DOM0_MEM (1536M), XENLAB_SMP (2),
#   XENLAB_TIMEOUT (s per QEMU, 2400), XENLAB_TIMEOUT_A / _C (default XENLAB_TIMEOUT),
#   XENLAB_TIMEOUT_B (4200 with the second phase: B lives through both; else XENLAB_TIMEOUT),
#   XENLAB_TWO_PORT (link port, default: a free one), XENLAB_KILL_DELAY_S (s between a marker
#   and its kill, 0), TWO_HOST_WAIT_S (host env: s for a result after a kill, 600),
#   TWO_HOST_REPROTECT_WAIT_S (host env: s from C's boot to B's ready-to-kill, 2100),
#   XENLAB_IN (a folder copied to every share's in/, as run.sh does),
#   XENLAB_VARS (NAME=value ... for all dom0s: TWO_GUEST (counter, the default, or pg),
#   TWO_DISK (1: replicated 32 MiB disk with the
#   stamping hook; 0: counter only), TWO_REPROTECT (1: the second phase; 0: end after B),
#   TWO_REUSE (0; 1: A's disk image lives on its share, outlives the kill and is handed to C,
#   whose backup keeps it with --reuse-disk: the reprotection copies only changed blocks),
#   TWO_HB_MS (90000 with the disk, else 45000; A's protect and B's reprotect), TWO_INTERVAL_MS
#   (200; auto: protect's --interval auto, up to TWO_LOSS_WINDOW_MS, 5000), TWO_MIN_ACKED (3), TWO_PROTECT_S (30), TWO_AFTER_KILL_S (360), TWO_C_WAIT_S (B waits
#   for C's ping, 900), TWO_REPROTECT_WAIT_S (B waits for TWO_MIN_ACKED acks of the
#   reprotection, 900; pg: 1500), TWO_C_FIRST_S (C waits for the domU's first answer, 1200; pg: 1800);
#   with TWO_GUEST=pg also protect-pg's PG_NET (plug, pgwire, dscp), PG_KERNEL (stock,
#   patched; dscp needs patched), PG_SECONDS (45), PG_CLIENTS (2), PG_LEDGERS (2), PROTECT_MEM
#   (192), PG_SCALE / PG_DISK_MIB (pg-guest.sh's), and TWO_PG_FIRST_S (B waits for PostgreSQL
#   and TWO_MIN_ACKED committed epochs, 1800), TWO_GO_WAIT_S (A, then B, waits for its /lab/go,
#   1800), TWO_PG_KILL_WAIT_S (a backup host waits for the kill after "protected load done",
#   900)), XENLAB_VERBOSE=1 (every console line).
# With TWO_GUEST=pg the defaults grow: XENLAB_TIMEOUT_A / _C 3600 / 4200, _B 7200 (3600 without
# the second phase), TWO_HOST_WAIT_S 1200, TWO_HOST_REPROTECT_WAIT_S 3000.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
. "$XENLAB_DIR/stage.sh"

knob() { # knob NAME DEFAULT: a dom0 knob's value as XENLAB_VARS sets it (the dom0s get the same)
  local kv v=$2
  for kv in ${XENLAB_VARS:-}; do [ "${kv%%=*}" = "$1" ] && v=${kv#*=}; done
  printf '%s\n' "$v"
}
xl_knobs > /dev/null # dies on a word that is not NAME=value
GUEST=$(knob TWO_GUEST counter)
DISK=$(knob TWO_DISK 1)
REPROTECT=$(knob TWO_REPROTECT 1)
REUSE=$(knob TWO_REUSE 0)
[[ "$DISK$REPROTECT$REUSE" =~ ^[01][01][01]$ ]] ||
  xl_die "TWO_DISK, TWO_REPROTECT and TWO_REUSE are 0 or 1 ('$DISK', '$REPROTECT', '$REUSE')"
PGDESC=
case $GUEST in
  counter) ;;
  pg) # protect-pg's guest: its disk always; its knobs checked here rather than after two boots
    [ "$DISK" = 1 ] || xl_log "TWO_GUEST=pg: the PostgreSQL guest always has its replicated disk (TWO_DISK=0 ignored)"
    DISK=1
    PGNET=$(knob PG_NET plug); PGKERNEL=$(knob PG_KERNEL stock)
    [[ "$PGNET" =~ ^(plug|pgwire|dscp)$ ]] || xl_die "PG_NET '$PGNET' is not plug, pgwire or dscp"
    [[ "$PGKERNEL" =~ ^(stock|patched)$ ]] || xl_die "PG_KERNEL '$PGKERNEL' is not stock or patched"
    [ "$PGNET" != dscp ] || [ "$PGKERNEL" = patched ] || xl_die "PG_NET=dscp needs PG_KERNEL=patched"
    PGDESC=", PostgreSQL guest (net $PGNET, kernel $PGKERNEL)" ;;
  *) xl_die "TWO_GUEST '$GUEST' is not counter or pg" ;;
esac
# With the disk, the first commit of a full checkpoint (disk copy and check) kept a backup
# silent for 35 s under emulation (protect-disk): a longer heartbeat by default.
HB=$(knob TWO_HB_MS "$([ "$DISK" = 1 ] && echo 90000 || echo 45000)")

PROJECT=${XENLAB_PROJECT:-$XENLAB_REPO}
# PostgreSQL's guest takes longer everywhere (a 192 MiB domU and a 256 MiB disk to copy, a
# database to start, the clients' load phases before each kill).
if [ "$GUEST" = pg ]; then
  TIMEOUT_A=${XENLAB_TIMEOUT_A:-${XENLAB_TIMEOUT:-3600}}
  TIMEOUT_B=${XENLAB_TIMEOUT_B:-$([ "$REPROTECT" = 1 ] && echo 7200 || echo "${XENLAB_TIMEOUT:-3600}")}
  TIMEOUT_C=${XENLAB_TIMEOUT_C:-${XENLAB_TIMEOUT:-4200}}
  HOST_WAIT_S=${TWO_HOST_WAIT_S:-1200}
  REPROTECT_WAIT_S=${TWO_HOST_REPROTECT_WAIT_S:-3000}
else
  TIMEOUT_A=${XENLAB_TIMEOUT_A:-${XENLAB_TIMEOUT:-2400}}
  TIMEOUT_B=${XENLAB_TIMEOUT_B:-$([ "$REPROTECT" = 1 ] && echo 4200 || echo "${XENLAB_TIMEOUT:-2400}")}
  TIMEOUT_C=${XENLAB_TIMEOUT_C:-${XENLAB_TIMEOUT:-2400}}
  HOST_WAIT_S=${TWO_HOST_WAIT_S:-600}
  REPROTECT_WAIT_S=${TWO_HOST_REPROTECT_WAIT_S:-2100}
fi
MEM=${XENLAB_MEM:-3072}
DOM0_MEM=${XENLAB_DOM0_MEM:-1536M}
SMP=${XENLAB_SMP:-2}
T_ALL=$(xl_now)

IMG=$("$XENLAB_DIR/build-image.sh" | tail -1)
[ -f "$IMG/complete" ] || xl_die "image build failed"
RUN=$XENLAB_CACHE/runs/$(date +%Y%m%d-%H%M%S)-two-host
mkdir -p "$RUN"
xl_stage_project "$PROJECT" "$RUN/project" "$RUN/project.tar"

share() { # share ROLE SELF_IP PEER_IP TIMEOUT_S: $RUN/ROLE/share with the role's scenario and env
  local role=$1 sh=$RUN/$1/share
  mkdir -p "$sh/out" "$sh/in"
  install -m 0755 "$XENLAB_DIR/scenarios/two-host-$role.sh" "$sh/scenario.sh"
  install -m 0644 "$XENLAB_DIR/dom0-lib.sh" "$XENLAB_DIR/dom0-two-lib.sh" "$XENLAB_DIR/dom0-pg-lib.sh" "$sh/"
  ln "$RUN/project.tar" "$sh/project.tar" 2>/dev/null || cp "$RUN/project.tar" "$sh/project.tar"
  xl_scenario_env "two-host-$role" "$(($4 - 200))" > "$sh/env"
  printf 'export TWO_ROLE=%q TWO_SELF_IP=%q TWO_PEER_IP=%q TWO_DISK=%q TWO_REPROTECT=%q TWO_HB_MS=%q TWO_GUEST=%q\n' \
    "$role" "$2" "$3" "$DISK" "$REPROTECT" "$HB" "$GUEST" >> "$sh/env"
  [ -n "${XENLAB_IN:-}" ] && cp -a "$XENLAB_IN"/. "$sh/in/"
  return 0
}
share a 10.99.0.1 10.99.0.10 "$TIMEOUT_A"
share b 10.99.0.10 10.99.0.1 "$TIMEOUT_B" # B's peer: A, then C at the same address
[ "$REPROTECT" = 1 ] && share c 10.99.0.1 10.99.0.10 "$TIMEOUT_C"
rm -f "$RUN/project.tar"
if [ "$GUEST" = pg ]; then
  # protect-pg's prepare scripts, run as run.sh runs them (the knobs in their environment), into
  # one folder; each host gets what it uses (hard links: the disk image is 256 MiB, sparse).
  mapfile -t PREPS < <(xl_prepare_list "$XENLAB_DIR/scenarios/protect-pg.sh")
  xl_prepare two-host "$RUN/prepared" "${PREPS[@]}"
  put() { # put FILE ROLE...: prepared/FILE into those roles' in/ (when it was made)
    local f=$1 r; shift
    [ -e "$RUN/prepared/$f" ] || return 0
    for r in "$@"; do
      [ -d "$RUN/$r/share" ] || continue
      ln "$RUN/prepared/$f" "$RUN/$r/share/in/$f" 2>/dev/null || cp --sparse=always "$RUN/prepared/$f" "$RUN/$r/share/in/$f" ||
        xl_die "could not put $f into ${r^^}'s share"
    done
  }
  [ -f "$RUN/prepared/pg-disk.img" ] && [ -f "$RUN/prepared/pg-client.tar" ] || xl_die "pg-guest.sh made no pg-disk.img / pg-client.tar"
  put pg-disk.img a; put guest-bzImage a; put guest-kernel.release a
  put pg-client.tar b c
  rm -rf "$RUN/prepared"
fi
xl_prune_runs

T=$(xl_now)
xl_lab_lock # all VMs under one hold
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
running() { [ -e "$RUN/$1/qemu-cmdline.txt" ] && alive "$1"; } # ROLE: booted and not exited
cleanup() { local r p; for r in a b c; do p=$(qpid $r) && kill -9 "$p"; done; return 0; }
trap 'cleanup' EXIT
trap 'exit 130' INT TERM

T0=${EPOCHREALTIME/./}
tsec() { local d=$(( (${EPOCHREALTIME/./} - T0) / 10000 )); printf '%d.%02d' $((d / 100)) $((d % 100)); }
now_s() { tsec | cut -d. -f1; }
declare -A TBOOT=() TKILL=() TKILL_ISO=() KILL_MS=()
boot() { # boot ROLE MAC NETDEV_OPTS TIMEOUT_S: QEMU in the background, serial -> ROLE/serial.log
  local role=$1 dir=$RUN/$1 to=$4 line
  xl_qemu_argv "$IMG" "$dir/share" "$dir/qemu.pid"
  local q=("${QEMU_ARGV[@]}" -netdev "socket,id=n1,$3" -device "virtio-net-pci,netdev=n1,mac=$2" -monitor none -serial stdio)
  printf '%q ' "${q[@]}" > "$dir/qemu-cmdline.txt"; echo >> "$dir/qemu-cmdline.txt"
  TBOOT[$role]=$(tsec)
  # (the group's own stderr is dropped: bash's "Killed" notice when a QEMU is SIGKILLed)
  { timeout -k 20 "$to" "${q[@]}" < /dev/null 2>&1; echo $? > "$dir/qemu.rc"; } 2> /dev/null |
    while IFS= read -r line; do
      line=${line//$'\r'/}
      printf '[%7s] %s\n' "$(tsec)" "$line" >> "$dir/serial.log"
      if [ "${XENLAB_VERBOSE:-0}" = 1 ] || [[ "$line" == XENLAB\ * ]]; then
        printf '[%7s] %s: %s\n' "$(tsec)" "${role^^}" "$line" >&2
      fi
    done &
}
kill_vm() { # kill_vm ROLE: SIGKILL of its QEMU (a host crash), timed until the process is gone
  local role=$1 pid='' t _
  sleep "${XENLAB_KILL_DELAY_S:-0}"
  for _ in 1 2 3 4 5; do pid=$(qpid "$role") && break; xl_log "no QEMU ${role^^} pid? pidfile '$(cat "$RUN/$role/qemu.pid" 2>&1)'"; sleep 0.2; done
  [ -n "$pid" ] || pid=$(pgrep -f -- "-pidfile $RUN/$role/qemu.pid" | head -1)
  [ -n "$pid" ] || { xl_log "no QEMU ${role^^} to kill"; return 1; }
  t=${EPOCHREALTIME/./}
  TKILL[$role]=$(tsec); TKILL_ISO[$role]=$(date -u +%FT%T.%3NZ); kill -9 "$pid"
  while [ -e "/proc/$pid" ] && grep -q '^qemu-system' "/proc/$pid/comm" 2>/dev/null; do sleep 0.01; done
  KILL_MS[$role]=$(( (${EPOCHREALTIME/./} - t) / 1000 ))
  xl_log "killed QEMU ${role^^} (pid $pid) with SIGKILL at ${TKILL[$role]}s (${TKILL_ISO[$role]}); gone after ${KILL_MS[$role]} ms"
}
stamp() { grep -m1 -F "$2" "$RUN/$1/serial.log" 2>/dev/null | sed -n 's/^\[ *\([0-9.]*\)\].*/\1/p'; }
has() { grep -q -F "$2" "$RUN/$1/serial.log" 2>/dev/null; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "") print "?"; else printf "%.1f", a - b }'; }
result_of() { # result_of ROLE NAME: that VM's last "XENLAB RESULT NAME: ..." line
  tr -d '\r' < "$RUN/$1/serial.log" 2>/dev/null | sed -n "s/^\[[ 0-9.]*\] \(XENLAB RESULT $2: .*\)/\1/p" | tail -1
}
wait_result() { # wait_result ROLE NAME: until its result line, its QEMU's exit, or HOST_WAIT_S; sets why on the bound
  local end=$(( $(now_s) + HOST_WAIT_S ))
  until has "$1" "XENLAB RESULT $2: "; do
    alive "$1" || break
    [ "$(now_s)" -lt $end ] || { why="no result from ${1^^} within $HOST_WAIT_S s of the kill"; break; }
    sleep 1
  done
}

xl_log "two-host: B listens on 127.0.0.1:$PORT, A connects$([ "$REPROTECT" = 1 ] && echo ', then C'); ${MEM} MiB each, dom0 $DOM0_MEM; disk $DISK, reprotect $REPROTECT, heartbeat $HB ms$PGDESC; run $RUN (lock waited ${T_LOCK}s)"
boot b 52:54:00:00:00:0b "listen=127.0.0.1:$PORT" "$TIMEOUT_B"
for _ in $(seq 1 60); do ss -Hltn "sport = :$PORT" | grep -q . && break; sleep 0.5; done
ss -Hltn "sport = :$PORT" | grep -q . || xl_die "QEMU B does not listen on $PORT"
boot a 52:54:00:00:00:0a "connect=127.0.0.1:$PORT" "$TIMEOUT_A"

# Phase 1. Wait for A's marker (or a result line from either side: a failure before the kill).
why=
go() { # go ROLE BY: the backup host BY's clients had their protected load: ROLE's /lab/go (TWO_GUEST=pg)
  [ "$GUEST" = pg ] && [ ! -e "$RUN/$1/share/go" ] && has "$2" "two-host-$2: protected load done" || return 0
  touch "$RUN/$1/share/go"; xl_log "${2^^}'s clients had their protected load: go for ${1^^} (mark ready-to-kill)"
}
while :; do
  go a b
  has a "two-host-a: ready-to-kill" && break
  has a "XENLAB RESULT " && { why="A ended before the crash: $(result_of a two-host-a)"; break; }
  has b "XENLAB RESULT " && { why="B ended before the crash"; break; }
  alive a || { why="QEMU A exited before ready-to-kill (rc $(cat "$RUN/a/qemu.rc" 2>/dev/null))"; break; }
  alive b || { why="QEMU B exited before the crash (rc $(cat "$RUN/b/qemu.rc" 2>/dev/null))"; break; }
  [ "$(now_s)" -lt $((TIMEOUT_A - 300)) ] || { why="no ready-to-kill within $((TIMEOUT_A - 300)) s"; break; }
  sleep 1
done
if [ -z "$why" ]; then
  kill_vm a || why="could not kill QEMU A"
  touch "$RUN/b/share/killed"
  # B's result (its own bound after the kill is TWO_AFTER_KILL_S; ours a little longer).
  [ -n "$why" ] || wait_result b two-host-b
else
  touch "$RUN/b/share/abort" "$RUN/a/share/abort"
fi
RB=$(result_of b two-host-b)

# Phase 2: C, B's reprotection to it, the crash of B.
BOOT0=
if [ -z "$why" ] && [ "$REPROTECT" = 1 ] && [[ "$RB" == *": PASS" ]]; then
  # The domU's boot id as B saw it in phase 1: C checks the domain it ends up with is that one.
  BOOT0=$(tr -d '\r' < "$RUN/b/serial.log" | sed -n 's/.*two-host-b: domU answers over the link, boot \([0-9A-Za-z-]*\).*/\1/p' | head -1)
  printf 'export TWO_BOOT0=%q\n' "$BOOT0" >> "$RUN/c/share/env"
  if [ "$REUSE" = 1 ]; then # A's disk as its host's crash left it: C's backup keeps it (--reuse-disk)
    mkdir -p "$RUN/c/share/keep" && cp --sparse=always "$RUN/a/share/keep/disk.img" "$RUN/c/share/keep/old-disk.img" &&
      xl_log "A's disk image handed to C ($(du -h "$RUN/c/share/keep/old-disk.img" | cut -f1) used)" ||
      xl_log "WARNING: no A disk image to hand to C"
  fi
  xl_log "B passed phase 1 (boot id ${BOOT0:-?}); booting C (A's MAC and address; connects to B's port $PORT again)"
  boot c 52:54:00:00:00:0a "connect=127.0.0.1:$PORT" "$TIMEOUT_C"
  end=$(( $(now_s) + REPROTECT_WAIT_S )); linked=
  while :; do
    go b c
    if [ -z "$linked" ] && has c "XENLAB dom0 up:"; then
      # QEMU B's listening socket: an empty accept queue means it took C's connection.
      linked=$(ss -Hltn "sport = :$PORT" | awk '{ print $2; exit }'); linked=${linked:-none}
      if [ "$linked" = 0 ]; then xl_log "link: QEMU B accepted C's connection on port $PORT"
      else xl_log "WARNING: QEMU B has not accepted C's connection (accept queue '${linked}' on port $PORT): B and C cannot talk"; fi
    fi
    has b "two-host-b: ready-to-kill" && break
    has b "XENLAB RESULT two-host-b-reprotect: " && { why="B's reprotection failed: $(result_of b two-host-b-reprotect)"; break; }
    has c "XENLAB RESULT " && { why="C ended before the crash of B: $(result_of c two-host-c)"; break; }
    alive b || { why="QEMU B exited before ready-to-kill (rc $(cat "$RUN/b/qemu.rc" 2>/dev/null))"; break; }
    alive c || { why="QEMU C exited before the crash of B (rc $(cat "$RUN/c/qemu.rc" 2>/dev/null))"; break; }
    [ "$(now_s)" -lt $end ] || { why="no ready-to-kill from B within $REPROTECT_WAIT_S s of C's boot"; break; }
    sleep 1
  done
  if [ -z "$why" ]; then
    kill_vm b || why="could not kill QEMU B"
    if [ "$GUEST" = pg ]; then # B's ledger (written before its ready-to-kill), for C's check
      cp "$RUN/b/share/out/two-pg-b-acked.ids" "$RUN/c/share/b-acked.ids" &&
        xl_log "B's ledger to C: $(wc -l < "$RUN/c/share/b-acked.ids") acknowledged ids" ||
        xl_log "WARNING: no ledger of B (b/share/out/two-pg-b-acked.ids) for C"
    fi
    touch "$RUN/c/share/killed"
    [ -n "$why" ] || wait_result c two-host-c
  else
    touch "$RUN/c/share/abort" "$RUN/b/share/abort"
  fi
fi
# B (without the second phase) and C power themselves off after their result (init); bounded,
# then the trap kills what is left.
for _ in $(seq 1 180); do running b || running c || break; sleep 1; done
cleanup; wait 2>/dev/null

RB=$(result_of b two-host-b); RBR=$(result_of b two-host-b-reprotect); RC=$(result_of c two-host-c)
seen=$(printf '%s; ' ${RB:+"$RB"} ${RBR:+"$RBR"} ${RC:+"$RC"}); seen=${seen%; }
if [ -n "$why" ]; then RESULT="XENLAB RESULT two-host: FAIL $why${seen:+ ($seen)}"
elif [[ "$RB" != *": PASS" ]]; then RESULT="XENLAB RESULT two-host: FAIL ${RB:-no result line from B}"
elif [ "$REPROTECT" = 1 ] && [[ "$RC" != *": PASS" ]]; then RESULT="XENLAB RESULT two-host: FAIL ${RC:-no result line from C}"
else RESULT="XENLAB RESULT two-host: PASS"; fi
{
  echo "$RESULT"
  echo "boot:      A dom0 up $(stamp a 'XENLAB dom0 up:')s, B dom0 up $(stamp b 'XENLAB dom0 up:')s (since QEMU start, both started together)"
  echo "A:         domU up $(stamp a 'two-host-a: domU up')s, protect $(stamp a 'two-host-a: protect started')s, first acks $(stamp a 'two-host-a: acked epoch')s, ready-to-kill $(stamp a 'two-host-a: ready-to-kill')s"
  echo "kill A:    at ${TKILL[a]:-?}s = ${TKILL_ISO[a]:-?} host clock (SIGKILL -> QEMU gone ${KILL_MS[a]:-?} ms)"
  grep -h -m1 -o 'two-host-b: failover: .*' "$RUN/b/serial.log" | sed 's/^/B log:     /' # its ISO time is B dom0's clock
  echo "B:         failover line $(sub "$(stamp b 'two-host-b: failover:')" "${TKILL[a]:-}")s after the kill, first answer $(sub "$(stamp b 'two-host-b: answered after failover')" "${TKILL[a]:-}")s after the kill"
  [ "$GUEST" = pg ] && echo "B pg:      PostgreSQL answered (protected) at $(stamp b 'two-host-b: domU answers over the link')s, protected load done at $(stamp b 'two-host-b: protected load done')s, the kill $(sub "${TKILL[a]:-}" "$(stamp b 'two-host-b: protected load done')")s later"
  if [ -n "${TBOOT[c]:-}" ]; then
    tc=${TBOOT[c]}
    echo "C:         booted at ${tc}s; dom0 up $(sub "$(stamp c 'XENLAB dom0 up:')" "$tc")s, backup listening $(sub "$(stamp c 'two-host-c: backup listening')" "$tc")s, domU answered $(sub "$(stamp c 'two-host-c: domU answers over the link')" "$tc")s after C's QEMU started (link accept queue '${linked:-?}')"
    rp=$(stamp b 'two-host-b: reprotect started')
    echo "reprotect: started at ${rp:-?}s (C up + B's ping wait), first ack $(sub "$(stamp b 'two-host-b: reprotect first ack')" "$rp")s, $(knob TWO_MIN_ACKED 3) acks $(sub "$(stamp b 'two-host-b: reprotect acked epoch')" "$rp")s, ready-to-kill $(sub "$(stamp b 'two-host-b: ready-to-kill')" "$rp")s after it (B's console)"
    echo "kill B:    at ${TKILL[b]:-?}s = ${TKILL_ISO[b]:-?} host clock (SIGKILL -> QEMU gone ${KILL_MS[b]:-?} ms)"
    grep -h -m1 -o 'two-host-c: failover: .*' "$RUN/c/serial.log" | sed 's/^/C log:     /'
    echo "C:         failover line $(sub "$(stamp c 'two-host-c: failover:')" "${TKILL[b]:-}")s after the kill of B, first answer $(sub "$(stamp c 'two-host-c: answered after failover')" "${TKILL[b]:-}")s after it"
    [ "$GUEST" = pg ] && echo "C pg:      protected load done at $(sub "$(stamp c 'two-host-c: protected load done')" "$tc")s after C's QEMU started, the kill of B $(sub "${TKILL[b]:-}" "$(stamp c 'two-host-c: protected load done')")s later"
  fi
  for r in a b c; do grep -h -o 'XENLAB NUMBERS .*' "$RUN/$r/serial.log" 2>/dev/null; done
  for r in "$RB" "$RBR" "$RC"; do [ -z "$r" ] || echo "result:    $r"; done
  echo "total:     $(xl_since "$T_ALL")s (lock wait ${T_LOCK}s)"
  echo "logs:      $RUN (a/, b/$([ -n "${TBOOT[c]:-}" ] && echo ', c/'): serial.log, share/out/)"
} | tee "$RUN/result.txt" >&2
[[ "$RESULT" == *": PASS" ]]

#!/bin/bash
# protect-restart: a `protect` that crashes while its domU keeps running, and is started
# again as systemd would (docs/operations.md, "When systemd restarts a crashed protect").
# Primary and backup in one dom0, as in the protect scenario; the network buffer is sch_plug
# (PROTECT_NET, or nfqueue). A client reads the domU's counter every 0.2 s throughout.
#  1. protect is SIGKILLed while the domU is suspended for a checkpoint (PROTECT_KILL_AT=running:
#     while it runs); the domU stays suspended (or runs on). The backup sees the connection
#     close and fails over: its copy ("domu--incoming": the name stays taken) resumes, answers.
#  2. Nothing the stale domU sends may reach the bridge from then on: its buffer stays closed
#     in the kernel. Counted by an iptables rule on its vif (physdev, br_netfilter).
#  3. 5 s later (RestartSec) protect starts again. It finds the dead run's lock (and the domU
#     left suspended, which it leaves so), holds outputs from the start, replaces the buffer
#     without opening it, is fenced by the backup's TAKEOVER, pauses the stale domU, removes
#     the buffer and exits 3 (EXIT_FENCED).
#  4. The counter served by the backup's copy never goes below what a client saw before.
# PROTECT_BACKUP_GONE=1 (scenario protect-restart-alone): the backup dies with protect (SIGKILL
# first, its incoming domain destroyed: its host is gone), so nobody takes over. The restarted
# protect holds outputs, and the domU left suspended, for 3 heartbeat timeouts; then it resumes
# the domU and runs unprotected: the same boot, a counter at or above what was seen, frames
# flowing again (none during the hold), and SIGTERM ends it with exit 0, the buffer removed.
# PROTECT_KILL_FIRST=1 (scenario protect-restart-first): the kill comes while the first
# checkpoint has the domU suspended, before anything was committed. The backup does not fail
# over (nothing to resume); the restarted protect's first save resumes the domU and protects
# it again: the same boot, the counter from at least what was seen, checkpoints acknowledged.
# xenlab-bound: 1200
. /lab/dom0-lib.sh
lab_begin "${LAB_SCENARIO_NAME:-protect-restart}"
DOMU=domu
IP=10.99.0.2
MEM=${PROTECT_MEM:-128}
INTERVAL=${PROTECT_INTERVAL:-200}
NET=${PROTECT_NET:-plug}
lab_domu_up "$DOMU" "$IP" 00:16:3e:00:00:02 "$MEM" || { lab_result; exit; }
cd "$REMUSDB" || lab_fail "no project"
export REMUSDB_RUN_DIR=/tmp/remusdb-run

node bin/remusdb backup --listen 127.0.0.1:7400 --insecure > /tmp/backup.out 2> /tmp/backup.err &
BP=$!
sleep 3
start_protect() { # start_protect LOG: the same command line both times, as the unit's
  node bin/remusdb protect "$DOMU" 127.0.0.1:7400 --insecure --net-buffer "$NET" -i "$INTERVAL" \
    --heartbeat-timeout "${PROTECT_HB_MS:-60000}" > "$1.out" 2> "$1.err" &
  PP=$!
}
start_protect /tmp/protect1
FIRST=${PROTECT_KILL_FIRST:-0}
acked=3
[ "$FIRST" = 1 ] || acked=$(lab_wait_acked "$PP" 3 420) # FIRST: killed in the first checkpoint
if ! [[ "$acked" =~ ^[0-9]+$ ]] || [ "$acked" -lt 3 ]; then
  lab_fail "checkpoints were not acknowledged (acked '${acked}')"
  tail -n 40 /tmp/protect1.err; tail -n 20 /tmp/backup.err
  cp /tmp/protect1.* /tmp/backup.* "$LAB_OUT/" 2>/dev/null
  kill -TERM "$PP" "$BP" 2>/dev/null; sleep 3
  lab_result; exit
fi

# Frames entering the bridge from the stale domU's vif (IPv4; ARP is not counted).
PRIM=$(xl domid "$DOMU"); VIF=vif$PRIM.0
modprobe br_netfilter 2> /dev/null
sysctl -qw net.bridge.bridge-nf-call-iptables=1
iptables -t mangle -A PREROUTING -m physdev --physdev-in "$VIF" -m comment --comment lab-stale
from_vif() { iptables -t mangle -L PREROUTING -v -x -n | awk '/lab-stale/ { print $1; exit }'; }
# Each answer waits for its checkpoint's acknowledgement: seconds under TCG.
(while :; do v=$(lab_http "$IP" 7777 /counter 20); [[ "$v" =~ ^[0-9]+$ ]] && echo "$(lab_now) $v"; sleep 0.2; done) \
  > /tmp/reads.txt &
READER=$!
highest() { awk '{ if ($2 > m) m = $2 } END { print m + 0 }' /tmp/reads.txt; }
for _ in $(seq 1 120); do [ "$(highest)" -gt 0 ] && break; sleep 1; done
[ "$FIRST" = 1 ] || sleep 5
[ "$(from_vif)" -gt 0 ] || lab_fail "the rule counted no frame from $VIF while the client read the counter"

# The end of every variant: the vif's rule removed, the backup stopped, logs kept, the result.
finish() {
  iptables -t mangle -D PREROUTING -m physdev --physdev-in "$VIF" -m comment --comment lab-stale
  kill -TERM "$BP" 2> /dev/null; sleep 2
  tail -n 30 /tmp/protect2.err; tail -n 20 /tmp/backup.err
  cp /tmp/protect1.* /tmp/protect2.* /tmp/backup.* /tmp/reads.txt "$LAB_OUT/" 2> /dev/null
  lab_result
}
# A restarted protect that was not fenced: SIGTERM ends it with exit 0 and no buffer left.
stop_protect() {
  local rc
  kill -TERM "$PP"; wait "$PP"; rc=$?
  lab_log "protect ended on SIGTERM with exit $rc"
  [ "$rc" = 0 ] || lab_fail "protect exited $rc on SIGTERM, not 0"
  lab_check_no_buffer
  kill "$READER" 2> /dev/null
}

# PROTECT_BACKUP_GONE=1: protect restarts with no backup anywhere; the domU must run again.
alone_restart() {
  local hb=${PROTECT_HB_MS:-60000} hold_frames=-1 resumed=0
  sleep 5 # systemd's RestartSec
  start_protect /tmp/protect2
  TR=$(lab_now)
  for _ in $(seq 1 $((3 * hb / 1000 + 120))); do
    grep -q "which a crashed protect had left suspended: no backup answered" /tmp/protect2.err && { resumed=1; break; }
    hold_frames=$(from_vif)
    sleep 1
  done
  lab_log "the restarted protect resumed the domU $(lab_since "$TR") s after it started (hold: 3 x ${hb} ms)"
  grep -E "ended without stopping|suspended|resumed|UNPROTECTED|unprotected" /tmp/protect2.err | sed 's/^/  protect: /'
  [ $resumed = 1 ] || lab_fail "the restarted protect never resumed the domU with no backup to answer"
  if [[ "$st" == *s* ]]; then
    grep -q "suspended with no save running" /tmp/protect2.err ||
      lab_fail "the domU was killed suspended, and the restarted protect did not say it found it so"
  fi
  [ "$hold_frames" = "$AT_KILL" ] ||
    lab_fail "frames from $VIF during the hold: $AT_KILL at the kill, $hold_frames before the resume"
  local c2 boot2 state
  c2=$(lab_http_body "$IP" 7777 /counter 60); boot2=$(lab_http_body "$IP" 7777 /boot 60)
  state=$(state_now)
  lab_log "after the resume: $DOMU is '$state', the counter answers $c2 (boot $boot2; highest seen $seen)"
  [[ "$state" != *s* && "$state" != *p* ]] || lab_fail "$DOMU is not running ('$state')"
  [ -n "$boot2" ] && [ "$boot2" = "$boot0" ] || lab_fail "boot id changed ('$boot0' -> '$boot2')"
  [[ "$c2" =~ ^[0-9]+$ ]] && [ "$c2" -ge "$seen" ] || lab_fail "the domU answered '$c2', below the $seen seen"
  [ "$(from_vif)" -gt "$AT_KILL" ] || lab_fail "no frame from $VIF after the resume"
  stop_protect
  echo "XENLAB NUMBERS protect-restart-alone: net=$NET kill_at=$KILL_AT hold_ms=$((3 * hb))" \
    "resumed_after_s=$(lab_since "$TR") frames_at_kill=$AT_KILL frames_in_hold=$hold_frames seen=$seen after=$c2"
  finish
}

# PROTECT_KILL_FIRST=1: killed in the first checkpoint; the backup keeps waiting, protect restarts.
first_restart() {
  local c2 boot2 ack2
  sleep 10
  if grep -q FAILOVER /tmp/backup.err; then
    lab_fail "the backup failed over: the kill came after the first commit (retry: the first pause was missed)"
  fi
  grep -m1 "nothing to resume" /tmp/backup.err | sed 's/^/  backup: /'
  sleep 5 # systemd's RestartSec
  start_protect /tmp/protect2
  ack2=$(lab_wait_acked "$PP" 3 600)
  grep -E "ended without stopping|suspended|resumed|protected" /tmp/protect2.err | head -n 8 | sed 's/^/  protect: /'
  [[ "$ack2" =~ ^[0-9]+$ ]] && [ "$ack2" -ge 3 ] || lab_fail "the restarted protect did not protect (acked '$ack2')"
  if [[ "$st" == *s* ]]; then
    grep -q "suspended with no save running" /tmp/protect2.err ||
      lab_fail "the domU was killed suspended, and the restarted protect did not say it found it so"
    grep -q "left suspended: a session starts" /tmp/protect2.err ||
      lab_fail "the restarted protect's session did not say it resumed the domU"
  fi
  c2=$(lab_http_body "$IP" 7777 /counter 60); boot2=$(lab_http_body "$IP" 7777 /boot 60)
  lab_log "protected again (acked $ack2): the counter answers $c2 (boot $boot2; highest seen $seen)"
  [ -n "$boot2" ] && [ "$boot2" = "$boot0" ] || lab_fail "boot id changed ('$boot0' -> '$boot2')"
  [[ "$c2" =~ ^[0-9]+$ ]] && [ "$c2" -ge "$seen" ] || lab_fail "the domU answered '$c2', below the $seen seen"
  stop_protect
  echo "XENLAB NUMBERS protect-restart-first: net=$NET kill_at=$st acked_after_restart=$ack2 seen=$seen after=$c2"
  finish
}

# 1. The crash, while the domU is suspended for a checkpoint (PROTECT_KILL_AT=suspended, the
#    default: the dead run leaves it so) or while it runs (running).
#    protect is stopped (SIGSTOP) while the state is read, so that it cannot change before the kill.
state_now() { xl list "$DOMU" 2> /dev/null | awk 'NR == 2 { print $5 }'; }
KILL_AT=${PROTECT_KILL_AT:-suspended}
for _ in $(seq 1 300); do
  kill -STOP "$PP"; st=$(state_now)
  case $KILL_AT in suspended) [[ "$st" == *s* ]] && break ;; *) [[ "$st" != *s* ]] && break ;; esac
  kill -CONT "$PP"; sleep 0.$((RANDOM % 10))
done
GONE=${PROTECT_BACKUP_GONE:-0}
if [ "$GONE" = 1 ]; then # the backup's host goes first: nobody can fail over
  kill -KILL "$BP"; wait "$BP" 2> /dev/null
  xl destroy "$DOMU--incoming" 2> /dev/null
fi
kill -KILL "$PP"; wait "$PP" 2> /dev/null
TK=$(lab_now); AT_KILL=$(from_vif); seen=$(highest)
[ "$seen" -gt 0 ] || lab_fail "no client read answered before the crash"
lab_log "killed protect (pid $PP) at acked epoch >= $acked; $AT_KILL frames from $VIF so far; highest value" \
  "seen $seen; $DOMU then: $(state_now) (killed at '$st', asked: $KILL_AT)"
if [ "$GONE" = 1 ]; then alone_restart; exit; fi
if [ "$FIRST" = 1 ]; then first_restart; exit; fi
ok=0
for _ in $(seq 1 900); do
  grep -q FAILOVER /tmp/backup.err && { ok=1; break; }
  sleep 0.1
done
if [ $ok = 1 ]; then
  lab_log "the backup failed over $(lab_since "$TK") s after the kill: $(grep -m1 FAILOVER /tmp/backup.err)"
else lab_fail "the backup did not fail over within 90 s of the crash"; fi

# 3. systemd's RestartSec.
sleep 5
start_protect /tmp/protect2
TR=$(lab_now)
for _ in $(seq 1 240); do kill -0 "$PP" 2> /dev/null || break; sleep 0.5; done
kill -0 "$PP" 2> /dev/null && { lab_fail "the restarted protect still runs after 120 s"; kill -TERM "$PP"; }
wait "$PP"; RC=$?; RESTART_S=$(lab_since "$TR")
lab_log "the restarted protect exited $RC after $RESTART_S s (3: fenced)"
[ "$RC" = 3 ] || lab_fail "the restarted protect exited $RC, not 3 (EXIT_FENCED)"
grep -E "ended without stopping|suspended|took over|fenced|network buffer" /tmp/protect2.err | sed 's/^/  protect: /'
grep -q "ended without stopping" /tmp/protect2.err ||
  lab_fail "the restarted protect did not say it found a crashed run"
grep -q "network buffer is removed" /tmp/protect2.err || lab_fail "the restarted protect did not remove the buffer"
if [[ "$st" == *s* ]]; then
  grep -q "suspended with no save running" /tmp/protect2.err ||
    lab_fail "the domU was killed suspended, and the restarted protect did not say it found it so"
fi
AFTER=$(from_vif)

# 2. Nothing of the stale copy left.
if [ "$AFTER" = "$AT_KILL" ]; then
  lab_log "ok: no frame from the stale domU's $VIF reached the bridge ($AT_KILL at the kill and after the fence)"
else lab_fail "$((AFTER - AT_KILL)) frames from the stale domU reached the bridge after the crash"; fi
xl list
state=$(xl list "$DOMU" 2> /dev/null | awk 'NR == 2 { print $5 }')
if [[ "$state" == *p* ]]; then lab_log "ok: the stale $DOMU is paused ($state)"
else lab_fail "the stale $DOMU is not paused (state '$state')"; fi
lab_check_no_buffer

# 4. The backup's copy serves, from at least what a client saw.
c2=$(lab_http_body "$IP" 7777 /counter 60)
kill "$READER" 2> /dev/null
boot2=$(lab_http "$IP" 7777 /boot)
lab_log "after the restart: the counter answers $c2 (boot $boot2; highest seen before the crash $seen)"
[ -n "$boot2" ] && [ "$boot2" = "$boot0" ] || lab_fail "boot id changed ('$boot0' -> '$boot2'): not the resumed copy"
[[ "$c2" =~ ^[0-9]+$ ]] && [ "$c2" -ge "$seen" ] ||
  lab_fail "the backup's copy answered '$c2', below the $seen a client saw"
low=$(awk -v t="$TK" -v s="$seen" '$1 > t && $2 < s { n++ } END { print n + 0 }' /tmp/reads.txt)
[ "$low" = 0 ] || lab_fail "$low reads after the crash went below the $seen seen before it"

echo "XENLAB NUMBERS protect-restart: net=$NET kill_at=$KILL_AT interval_ms=$INTERVAL exit=$RC" \
  "frames_before_kill=$AT_KILL restart_to_exit_s=$RESTART_S" \
  "frames_after_fence=$AFTER seen=$seen after=$c2 reads=$(wc -l < /tmp/reads.txt)"
finish

#!/bin/bash
# two-host-b: the BACKUP dom0 of the two-host lab (run by scripts/xen-lab/run-two.sh). It puts
# the link NIC on xenbr0, starts `remusdb backup --listen 0.0.0.0:7400`, and only then takes
# its address (10.99.0.10), so A's ping to it means "the backup listens". A client here reads
# the domU's counter (10.99.0.2:7777; with TWO_DISK=1 also /disk) over the link while A
# protects it, keeping the highest value seen. The host SIGKILLs QEMU A and writes /lab/killed;
# the backup notices the silent primary (heartbeat timeout), resumes the domU from the last
# acknowledged checkpoint on this host (FAILOVER in its log), and the client's next answer
# comes from B's bridge. Checks: no failover before the kill, an answer after it, the same
# boot id (resumed, not rebooted), counter >= the highest value any client saw (plug
# buffering: nothing lost was shown). With TWO_DISK=1 (as protect-disk.sh): the resumed guest
# goes on stamping its disk with no mismatch against its memory (/diskbad empty), at or beyond
# the last block a client saw, and the replica image the domain now runs on
# ($REMUSDB_RUN_DIR/xen-domu.backup.disk, served by the backup process) holds blocks
# 1..highest with no hole and no wrong stamp. Then "XENLAB RESULT two-host-b: PASS|FAIL".
#
# With TWO_REPROTECT=1 (the default) and that result PASS, a second phase follows (otherwise
# the backup stops and the scenario ends as before). The backup process keeps running: the
# resumed domain's disk is served by it, and it holds the domain's resync state. The host
# boots host C (a fresh dom0 at A's address 10.99.0.1, same MAC, on the same link) with a new
# `remusdb backup`; once C answers ping (its backup listens) this host runs
#   remusdb reprotect domu 10.99.0.1:7400 --insecure --net-buffer plug -i I --heartbeat-timeout H --no-wait
# (exit status 0, "reprotecting domu → ..."): the domain is protected again, by a primary
# inside this backup process with its own control socket (role primary in lab_status). C keeps
# no copy of the disk, so the whole disk is copied, then a full memory copy. After
# TWO_MIN_ACKED acknowledged epochs (bounded by TWO_REPROTECT_WAIT_S, 900: the first copy under
# emulation takes minutes) and TWO_PROTECT_S more seconds (C's client reads meanwhile), it prints
# "XENLAB NUMBERS two-host-b-reprotect: ...", copies its logs to /lab/out and marks
# "XENLAB two-host-b: ready-to-kill"; the host then SIGKILLs this VM (nothing after the marker
# is expected to run). A failure in this phase ends with "XENLAB RESULT two-host-b-reprotect: FAIL".
. /lab/dom0-lib.sh
. /lab/dom0-two-lib.sh
lab_begin two-host-b
DOMU=domu
IP=10.99.0.2
SELF=${TWO_SELF_IP:-10.99.0.10}
C_IP=${TWO_PEER_IP:-10.99.0.1} # host C takes A's address
AFTER_S=${TWO_AFTER_KILL_S:-360}
DISK=${TWO_DISK:-1}
HB=${TWO_HB_MS:-45000}
INTERVAL=${TWO_INTERVAL_MS:-200}
lab_link_up || { lab_result; exit; }
# The backup names a free /dev/nbdN for the domain's disk at the first checkpoint.
[ "$DISK" = 1 ] && { modprobe nbd nbds_max=8 || lab_fail "modprobe nbd failed"; }

cd "$REMUSDB" || lab_fail "no project"
export REMUSDB_RUN_DIR=/tmp/remusdb-run
node bin/remusdb backup --listen 0.0.0.0:7400 --insecure > /tmp/backup.out 2> /tmp/backup.err &
BP=$!
end=$((SECONDS + 120))
until ss -ltn 2>/dev/null | grep -q ':7400 '; do
  kill -0 $BP 2>/dev/null && [ $SECONDS -lt $end ] || { lab_fail "backup did not listen on 7400"; cat /tmp/backup.err; lab_result; exit; }
  sleep 0.5
done
ip addr add "$SELF/24" dev "$LAB_BRIDGE"
lab_mark "backup listening, address $SELF up"

# 1. A's domU answers over the link (A boots alongside, creates the domU, then protects it).
lab_wait_http "$IP" 7777 /boot 1200 || { lab_fail "A's domU never answered over the link"; lab_result; exit; }
boot0=$(lab_http_body "$IP" 7777 /boot 30)
lab_mark "domU answers over the link, boot $boot0" # run-two.sh passes this boot id to C

# 2. Client loop until the first answer after the failover (bounded).
lab_two_client "$IP" /tmp/backup.err A "$AFTER_S"
xl list

# 3. Checks.
lab_two_client_checks A "$AFTER_S" "$boot0"
DISKNUM=
if [ "$DISK" = 1 ] && [ -n "$c2" ]; then
  lab_two_disk_checks "$IP" "$REMUSDB_RUN_DIR/xen-$DOMU.backup.disk"
  DISKNUM=" $(lab_two_disk_numbers)"
  xl block-list "$DOMU" 2>&1 | sed 's/^/  /'
fi
echo "XENLAB NUMBERS two-host-b: $(lab_two_client_numbers)$DISKNUM" >&7
grep -E "primary|FAILOVER|resum|silent|replica disk|backup domain's disk" /tmp/backup.err | head -20 | sed 's/^/  backup: /'
if [ "${TWO_REPROTECT:-1}" != 1 ] || [ ${#LAB_FAILS[@]} != 0 ]; then
  kill -TERM $BP 2>/dev/null; sleep 2
  cp /tmp/backup.out /tmp/backup.err "$LAB_OUT/" 2>/dev/null
  lab_result; exit
fi
cp /tmp/backup.out /tmp/backup.err "$LAB_OUT/" 2>/dev/null
# Phase 1's result now, for the host (which boots C on it); the domain and the backup stay.
lab_result_line

# 4. Reprotection to host C. Failures from here on end as two-host-b-reprotect; markers keep
# the name two-host-b.
LAB_FAILS=()
end2() {
  cp /tmp/backup.out /tmp/backup.err /tmp/reprotect.out /tmp/reprotect.err /tmp/status-reprotect.json "$LAB_OUT/" 2>/dev/null
  LAB_NAME=two-host-b-reprotect
  lab_result; exit
}
MIN=${TWO_MIN_ACKED:-3}
RP_WAIT=${TWO_REPROTECT_WAIT_S:-900}
lab_mark "waiting for host C ($C_IP) to answer ping (it takes its address once its backup listens)"
lab_wait_ping "$C_IP" "${TWO_C_WAIT_S:-900}" || { lab_fail "host C ($C_IP) did not answer ping within ${TWO_C_WAIT_S:-900} s"; end2; }
kill -0 $BP 2>/dev/null || { lab_fail "the backup process (it serves the domain's disk) exited before the reprotection"; end2; }
T_RP=$(lab_now)
lab_mark "reprotect started (to $C_IP:7400, heartbeat ${HB} ms, interval ${INTERVAL} ms)"
lab_step reprotect 300 node bin/remusdb reprotect "$DOMU" "$C_IP:7400" --insecure --net-buffer plug -i "$INTERVAL" \
  --heartbeat-timeout "$HB" --no-wait > /tmp/reprotect.out 2> /tmp/reprotect.err
rc=$?
sed 's/^/  reprotect: /' /tmp/reprotect.out; tail -n 5 /tmp/reprotect.err | sed 's/^/  reprotect err: /'
[ $rc = 0 ] || { lab_fail "reprotect exited with status $rc: $(tail -n 3 /tmp/reprotect.err | tr '\n' ' ')"; end2; }
grep -q "^reprotecting $DOMU " /tmp/reprotect.out || lab_fail "reprotect printed no 'reprotecting $DOMU → ...' line"

# The reprotected primary's status: its own control socket (role primary); the backup's
# status carries the same under reprotecting, read if the first is missing.
rp_status() { lab_status > /tmp/status-reprotect.json; }
rp() {
  local v
  v=$(lab_field primary "$1" < /tmp/status-reprotect.json)
  [ -n "$v" ] || v=$(lab_field backup "reprotecting.$1" < /tmp/status-reprotect.json)
  echo "$v"
}
FIRST_S=; MIN_S=; acked=; next_log=$((SECONDS + 60))
while [ "$(lab_since "$T_RP" | cut -d. -f1)" -lt "$RP_WAIT" ]; do
  sleep 5
  rp_status; acked=$(rp ackedEpoch)
  if [[ "$acked" =~ ^[0-9]+$ ]] && [ "$acked" -ge 1 ]; then
    if [ -z "$FIRST_S" ]; then
      FIRST_S=$(lab_since "$T_RP")
      lab_mark "reprotect first ack: epoch $acked after $FIRST_S s (disk and memory copied to C)"
    fi
    [ "$acked" -ge "$MIN" ] && { MIN_S=$(lab_since "$T_RP"); break; }
  fi
  kill -0 $BP 2>/dev/null || { lab_fail "the backup process exited during the reprotection"; break; }
  [ -e /lab/abort ] && { lab_fail "host aborted the run (C failed) during the reprotection"; break; }
  if [ $SECONDS -ge $next_log ]; then
    next_log=$((SECONDS + 60))
    lab_log "reprotecting: acked ${acked:-none}, checkpoints $(rp checkpoints), disk copied $(rp disk.resyncCopiedBytes) B + zeros $(rp disk.resyncZeroBytes) B, pending $(rp disk.resyncPendingBytes) B"
  fi
done
if [ -z "$MIN_S" ]; then
  [ ${#LAB_FAILS[@]} != 0 ] || lab_fail "the reprotection acknowledged no $MIN epochs within $RP_WAIT s (acked '${acked}')"
  grep -i -E "reprotect|silent|lost|error" /tmp/backup.err | tail -n 20 | sed 's/^/  backup: /'
  end2
fi
lab_mark "reprotect acked epoch $acked after $MIN_S s"
sleep "${TWO_PROTECT_S:-30}"
rp_status
acked2=$(rp ackedEpoch)
[[ "$acked2" =~ ^[0-9]+$ ]] && [ "$acked2" -gt "$acked" ] ||
  lab_fail "no epoch acknowledged in the ${TWO_PROTECT_S:-30} s after epoch $acked (now '$acked2')"
DISKNUM=
if [ "$DISK" = 1 ]; then
  VER=$(rp diskVerifiedEpoch)
  # C is a fresh dom0 (no old copy of the disk): the resync covers the whole disk, copied or
  # sent as zeros.
  lab_log "reprotect disk: $(rp disk.resyncCopiedBytes) B copied + $(rp disk.resyncZeroBytes) B as zeros of $(rp disk.sizeBytes) B, $(rp disk.forwardedWrites) writes forwarded, disks verified equal at epoch '${VER}'"
  [[ "$VER" =~ ^[0-9]+$ ]] && [ "$VER" -ge 1 ] || lab_fail "the reprotected disks were not verified equal (diskVerifiedEpoch '$VER')"
  DISKNUM=" disk_copied_bytes=$(rp disk.resyncCopiedBytes) disk_zero_bytes=$(rp disk.resyncZeroBytes) disk_size_bytes=$(rp disk.sizeBytes) disk_writes_forwarded=$(rp disk.forwardedWrites) disk_verified_epoch=$VER"
fi
echo "XENLAB NUMBERS two-host-b-reprotect: acked=$acked2 checkpoints=$(rp checkpoints) pause_p50_ms=$(rp pauseMsP50) pause_p99_ms=$(rp pauseMsP99) first_pause_ms=$(rp fullPauseMs) wire_bytes=$(rp wireBytes)$DISKNUM reprotect_to_first_ack_s=$FIRST_S reprotect_to_min_acked_s=$MIN_S hb_ms=$HB interval_ms=$INTERVAL" >&7
grep -i -E "reprotect|silent|lost|reconnect" /tmp/backup.err | head -10 | sed 's/^/  backup: /'
kill -0 $BP 2>/dev/null || lab_fail "the backup process exited before the crash"
xl list
cp /tmp/backup.out /tmp/backup.err /tmp/reprotect.out /tmp/reprotect.err /tmp/status-reprotect.json "$LAB_OUT/" 2>/dev/null
sync
[ ${#LAB_FAILS[@]} = 0 ] || end2
lab_mark "ready-to-kill"
# The host kills this VM now. If it does not, end with a failure after a bound.
sleep "${TWO_KILL_WAIT_S:-600}"
lab_fail "not killed within ${TWO_KILL_WAIT_S:-600} s of ready-to-kill"
end2

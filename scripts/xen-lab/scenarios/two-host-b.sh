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
#
# TWO_GUEST=pg (run-two.sh): the domU is protect-pg's PostgreSQL guest (two-host-a.sh) and this
# host's clients are protect-pg's (dom0-pg-lib.sh, dom0-two-lib.sh's lab_two_pg_*): once
# PostgreSQL answers over the link and the backup committed TWO_MIN_ACKED epochs (within
# TWO_PG_FIRST_S, 1800), PG_LEDGERS (2) psql ledger sessions and pgbench (PG_CLIENTS, 2; the
# pipelined TPC-B) run PG_SECONDS (45) of protected load, then pgbench again while the ledger
# goes on; "XENLAB two-host-b: protected load done" lets the host give A its go (A marks
# ready-to-kill, the host SIGKILLs QEMU A). After the failover: the same boot id, a commit sent
# after the kill acknowledged, the guest agent signalled PostgreSQL (PostgreSQL logged the
# failover abort), every id the ledger logged as acknowledged is in the resumed database
# (acked_lost=0), TPC-B's sums agree, pgbench's crash run has transactions in the database;
# "XENLAB NUMBERS two-host-b-pg: ..." (acked_lost, TPS and commit latency p50/p99 protected,
# kill -> guest answers / first new commit, ledger sessions re-opened, agent_signalled).
# The ledger goes on through the second phase (its commits then protected by the reprotection).
# The reprotection takes PG_NET's network options (plug: --net-buffer plug; pgwire / dscp:
# --net-buffer nfqueue --commit-protection pgwire / dscp, with br_netfilter's hooks on here);
# after TWO_MIN_ACKED epochs (TWO_REPROTECT_WAIT_S: 1500 with pg) it waits (TWO_GO_WAIT_S,
# 1800) for the host's /lab/go (C's clients have had their protected load) instead of
# TWO_PROTECT_S; with nfqueue packets must have been held and let through at once; then the
# ledger's acknowledged ids go to /lab/out/two-pg-b-acked.ids (the host hands them to C, which
# checks them after the second crash) before ready-to-kill.
. /lab/dom0-lib.sh
. /lab/dom0-two-lib.sh
GUEST=${TWO_GUEST:-counter}
[ "$GUEST" = pg ] && . /lab/dom0-pg-lib.sh
lab_begin two-host-b
DOMU=domu
IP=10.99.0.2
SELF=${TWO_SELF_IP:-10.99.0.10}
C_IP=${TWO_PEER_IP:-10.99.0.1} # host C takes A's address
AFTER_S=${TWO_AFTER_KILL_S:-360}
DISK=${TWO_DISK:-1}
HB=${TWO_HB_MS:-45000}
INTERVAL=${TWO_INTERVAL_MS:-200}
# TWO_INTERVAL_MS=auto: the interval that keeps the guest paused ≤ 10 %, up to TWO_LOSS_WINDOW_MS
INTERVAL_ARGS=(-i "$INTERVAL")
[ "$INTERVAL" = auto ] && INTERVAL_ARGS+=(--max-loss-window "${TWO_LOSS_WINDOW_MS:-5000}")
NETARGS=(--net-buffer plug) # the reprotection's; PG_NET's with TWO_GUEST=pg
[ "$GUEST" = pg ] && { lab_two_pg_knobs && pg_net_args "$MODE" && pg_clients || { lab_result; exit; }; }
lab_two_backup_up "$SELF" "$DISK" || { lab_result; exit; }

if [ "$GUEST" = pg ]; then
  # 1. PostgreSQL in A's domU answers over the link, protected; 2. load, crash, checks.
  lab_two_pg_wait_db "${TWO_PG_FIRST_S:-1800}" || { kill -TERM $BP 2>/dev/null; lab_result; exit; }
  # shellcheck disable=SC2154 # boot1: lab_two_pg_wait_db's
  boot0=$boot1
  lab_mark "domU answers over the link, boot $boot0" # run-two.sh passes this boot id to C
  lab_two_pg_load /tmp/backup.err A "$AFTER_S" 1
  xl list
  echo "XENLAB NUMBERS two-host-b-pg: $(lab_two_pg_numbers)" >&7
else
  # 1. A's domU answers over the link (A boots alongside, creates the domU, then protects it).
  lab_wait_http "$IP" 7777 /boot 1200 || { lab_fail "A's domU never answered over the link"; lab_result; exit; }
  boot0=$(lab_http_body "$IP" 7777 /boot 30)
  lab_mark "domU answers over the link, boot $boot0" # run-two.sh passes this boot id to C

  # 2. Client loop until the first answer after the failover (bounded).
  lab_two_counter_after_kill "$IP" A "$AFTER_S" "$boot0" "$DISK" "$REMUSDB_RUN_DIR/xen-$DOMU.backup.disk" \
    two-host-b
fi
grep -E "primary|FAILOVER|resum|silent|replica disk|backup domain's disk" /tmp/backup.err | head -20 | sed 's/^/  backup: /'
[ "$GUEST" = pg ] && cp "$W"/ledger-* "$W"/pgbench-*.out "$W"/*.ids "$LAB_OUT/" 2>/dev/null
if [ "${TWO_REPROTECT:-1}" != 1 ] || [ ${#LAB_FAILS[@]} != 0 ]; then
  lab_two_stop_backup $BP
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
  [ "$GUEST" = pg ] && cp "$W"/ledger-* "$W"/pgbench-*.out "$LAB_OUT/" 2>/dev/null
  LAB_NAME=two-host-b-reprotect
  lab_result; exit
}
MIN=${TWO_MIN_ACKED:-3}
RP_WAIT=${TWO_REPROTECT_WAIT_S:-$([ "$GUEST" = pg ] && echo 1500 || echo 900)} # pg: a 256 MiB disk, 192 MiB domU
lab_mark "waiting for host C ($C_IP) to answer ping (it takes its address once its backup listens)"
lab_wait_ping "$C_IP" "${TWO_C_WAIT_S:-900}" || { lab_fail "host C ($C_IP) did not answer ping within ${TWO_C_WAIT_S:-900} s"; end2; }
kill -0 $BP 2>/dev/null || { lab_fail "the backup process (it serves the domain's disk) exited before the reprotection"; end2; }
# nfqueue (PG_NET=pgwire or dscp) matches the vif with physdev: bridged packets through iptables.
[ "$GUEST" = pg ] && [ "$MODE" != plug ] && pg_br_netfilter
T_RP=$(lab_now)
lab_mark "reprotect started (to $C_IP:7400, heartbeat ${HB} ms, interval ${INTERVAL} ms)"
[ "$GUEST" = pg ] && lab_log "reprotect's network options: ${NETARGS[*]}; the ledger goes on: $(pg_acked_ids | wc -l) ids acknowledged so far"
lab_step reprotect 300 node bin/remusdb reprotect "$DOMU" "$C_IP:7400" --insecure "${NETARGS[@]}" "${INTERVAL_ARGS[@]}" \
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
if [ "$GUEST" = pg ]; then
  # C's clients run their protected load now; the host says when it is done.
  T_GO=$(lab_now)
  lab_wait_file /lab/go "${TWO_GO_WAIT_S:-1800}" || {
    lab_fail "no go from the host within ${TWO_GO_WAIT_S:-1800} s (C's clients' protected load)$([ -e /lab/abort ] && echo ': host aborted')"
    end2
  }
  WAITED=$(lab_since "$T_GO")
  lab_log "go from the host after $WAITED s (C's clients' protected load done)"
else
  sleep "${TWO_PROTECT_S:-30}"; WAITED=${TWO_PROTECT_S:-30}
fi
rp_status
acked2=$(rp ackedEpoch)
[[ "$acked2" =~ ^[0-9]+$ ]] && [ "$acked2" -gt "$acked" ] ||
  lab_fail "no epoch acknowledged in the $WAITED s after epoch $acked (now '$acked2')"
DISKNUM=
if [ "$DISK" = 1 ]; then
  VER=$(rp diskVerifiedEpoch)
  # C is a fresh dom0 (no old copy of the disk): the resync covers the whole disk, copied or
  # sent as zeros.
  lab_log "reprotect disk: $(rp disk.resyncCopiedBytes) B copied + $(rp disk.resyncZeroBytes) B as zeros of $(rp disk.sizeBytes) B, $(rp disk.forwardedWrites) writes forwarded, disks verified equal at epoch '${VER}'"
  [[ "$VER" =~ ^[0-9]+$ ]] && [ "$VER" -ge 1 ] || lab_fail "the reprotected disks were not verified equal (diskVerifiedEpoch '$VER')"
  DISKNUM=" disk_copied_bytes=$(rp disk.resyncCopiedBytes) disk_zero_bytes=$(rp disk.resyncZeroBytes) disk_size_bytes=$(rp disk.sizeBytes) disk_writes_forwarded=$(rp disk.forwardedWrites) disk_verified_epoch=$VER"
fi
PGNUM=
if [ "$GUEST" = pg ]; then
  HELD=; AT_ONCE=
  [ "$MODE" = plug ] || pg_net_ledger rp "$MODE"
  PGNUM=" net=$MODE packets_held=${HELD:-na} packets_at_once=${AT_ONCE:-na}"
fi
echo "XENLAB NUMBERS two-host-b-reprotect: acked=$acked2 checkpoints=$(rp checkpoints) pause_p50_ms=$(rp pauseMsP50) pause_p99_ms=$(rp pauseMsP99) first_pause_ms=$(rp fullPauseMs) wire_bytes=$(rp wireBytes)$DISKNUM reprotect_to_first_ack_s=$FIRST_S reprotect_to_min_acked_s=$MIN_S hb_ms=$HB interval_ms=$INTERVAL$PGNUM" >&7
grep -i -E "reprotect|silent|lost|reconnect" /tmp/backup.err | head -10 | sed 's/^/  backup: /'
kill -0 $BP 2>/dev/null || lab_fail "the backup process exited before the crash"
xl list
cp /tmp/backup.out /tmp/backup.err /tmp/reprotect.out /tmp/reprotect.err /tmp/status-reprotect.json "$LAB_OUT/" 2>/dev/null
if [ "$GUEST" = pg ]; then
  # The ledger's acknowledged ids for C's check after this host's crash (run-two.sh copies the
  # file into C's share); what the ledger acknowledges after this copy is not checked.
  pg_acked_ids > "$LAB_OUT/two-pg-b-acked.ids"
  cp "$W"/ledger-* "$W"/pgbench-*.out "$LAB_OUT/" 2>/dev/null
  lab_log "ledger: $(wc -l < "$LAB_OUT/two-pg-b-acked.ids") acknowledged ids in $LAB_OUT/two-pg-b-acked.ids for C"
  [ -s "$LAB_OUT/two-pg-b-acked.ids" ] || lab_fail "the ledger has no acknowledged id for C to check"
fi
sync
[ ${#LAB_FAILS[@]} = 0 ] || end2
lab_mark "ready-to-kill"
# The host kills this VM now. If it does not, end with a failure after a bound.
sleep "${TWO_KILL_WAIT_S:-600}"
lab_fail "not killed within ${TWO_KILL_WAIT_S:-600} s of ready-to-kill"
end2

#!/bin/bash
# two-host-c: the NEW BACKUP dom0 of the two-host lab's second phase (run by run-two.sh with
# TWO_REPROTECT=1, booted only after B failed over and passed its checks). Host C is a fresh
# dom0 from the same snapshot image as A, with A's MAC (52:54:00:00:00:0a) and address
# (10.99.0.1) on the same link (QEMU B's listening socket netdev accepts C's connection after A's
# ended), so B's bridge and ARP need nothing new. Being fresh, it keeps no copy of the domain's
# disk: B's reprotection copies the whole disk (then a full memory copy).
# C puts its link NIC on xenbr0, starts `remusdb backup --listen 0.0.0.0:7400`, and only then
# takes 10.99.0.1, so B's ping to it means "the backup listens"; B then runs `remusdb reprotect
# domu 10.99.0.1:7400 ... --net-buffer plug`. A client here reads the domU's counter (and with
# TWO_DISK=1 /disk) over the link while B protects it, keeping the highest value seen, exactly
# as B did in the first phase (lab_two_client). On B's "ready-to-kill" the host SIGKILLs QEMU B
# and writes /lab/killed; C's backup notices the silent primary and resumes the domU here
# (FAILOVER in its log). Checks: no failover before the kill, an answer after it, the same boot
# id as in the first phase (TWO_BOOT0 from run-two.sh: resumed twice, never rebooted; the domain
# B ran before the kill had it too), counter >= the highest value seen; with TWO_DISK=1 the
# resumed guest goes on stamping its disk with no mismatch, at or beyond the last block seen,
# and C's replica image ($REMUSDB_RUN_DIR/xen-domu.backup.disk) has no hole or wrong stamp.
# Prints "XENLAB NUMBERS two-host-c: ..." and "XENLAB RESULT two-host-c: PASS|FAIL ...".
#
# TWO_GUEST=pg (run-two.sh): the domain is protect-pg's PostgreSQL guest, and this host's clients
# run the same load as B's did (dom0-two-lib.sh's lab_two_pg_*, with their own ledger, ids apart
# from B's) against the domain B protects: once PostgreSQL answers over the link and this
# host's backup committed TWO_MIN_ACKED epochs (within TWO_C_FIRST_S, 1800 here), PG_SECONDS of
# protected load, then pgbench again; "XENLAB two-host-c: protected load done" lets the host give
# B its go (B copies its own ledger out and marks ready-to-kill; the host SIGKILLs QEMU B, copies
# B's ledger to this share's b-acked.ids and writes /lab/killed). Checks after the failover: the
# first phase's boot id, a commit sent after the kill acknowledged, the guest agent signalled
# PostgreSQL again (more "SIGUSR2 sent" lines than before the kill, a new failover line in
# PostgreSQL's log), every id this host's ledger AND B's ledger logged as acknowledged is in the
# resumed database (acked_lost=0 for both), TPC-B's sums agree. Prints "XENLAB NUMBERS
# two-host-c-pg: ..." (b_acked, b_acked_lost for B's ledger).
. /lab/dom0-lib.sh
. /lab/dom0-two-lib.sh
GUEST=${TWO_GUEST:-counter}
[ "$GUEST" = pg ] && . /lab/dom0-pg-lib.sh
lab_begin two-host-c
DOMU=domu
IP=10.99.0.2
SELF=${TWO_SELF_IP:-10.99.0.1}
AFTER_S=${TWO_AFTER_KILL_S:-360}
DISK=${TWO_DISK:-1}
[ "$GUEST" = pg ] && { lab_two_pg_knobs && pg_clients || { lab_result; exit; }; }
# TWO_REUSE=1: A's disk image as it was when its host was killed (kept on the host's share),
# so the reprotection copies only the blocks that changed since (and verifies the rest).
OLD=
if [ "${TWO_REUSE:-0}" = 1 ]; then
  OLD=/tmp/two-old-disk.img
  cp --sparse=always /lab/keep/old-disk.img "$OLD" || { lab_fail "no /lab/keep/old-disk.img (A's disk)"; lab_result; exit; }
  lab_log "A's old disk kept: $(du -h --apparent-size "$OLD" | cut -f1) ($(du -h "$OLD" | cut -f1) used)"
fi
lab_two_backup_up "$SELF" "$DISK" $OLD || { lab_result; exit; }

# 1. The domU, running on B since the first failover, answers over the link (unbuffered until
# B's reprotection starts, then once each checkpoint is acknowledged). Bounded; /lab/abort ends it.
t=$(lab_now); boot1=
if [ "$GUEST" = pg ]; then
  # PostgreSQL answers and this host's backup committed TWO_MIN_ACKED epochs of the reprotection.
  lab_two_pg_wait_db "${TWO_C_FIRST_S:-1800}" || { kill -TERM $BP 2>/dev/null; lab_result; exit; }
else
  end=$((SECONDS + ${TWO_C_FIRST_S:-1200}))
  while [ -z "$boot1" ] && [ $SECONDS -lt $end ] && [ ! -e /lab/abort ]; do
    boot1=$(lab_http "$IP" 7777 /boot 10); [ -n "$boot1" ] || sleep 1
  done
  [ -n "$boot1" ] || { lab_fail "the domU on B never answered over the link ($([ -e /lab/abort ] && echo 'host aborted' || echo "${TWO_C_FIRST_S:-1200} s"))"; lab_result; exit; }
fi
lab_mark "domU answers over the link after $(lab_since "$t") s, boot $boot1"
boot0=${TWO_BOOT0:-}
if [ -n "$boot0" ]; then
  [ "$boot1" = "$boot0" ] && lab_log "ok: the domain B runs has the first phase's boot id" ||
    lab_fail "the domain B runs has boot id '$boot1', not the first phase's '$boot0'"
else
  lab_log "no first-phase boot id from the host: comparing with the one read now"; boot0=$boot1
fi

if [ "$GUEST" = pg ]; then
  # What the first failover left in the guest's logs: this failover must add to them (if the
  # agent's log cannot be read, the first phase's one signal is what B checked).
  AGENT0=$(lab_http_body "$IP" 7777 /agentlog 60 | grep -c "SIGUSR2 sent")
  [ "$AGENT0" -ge 1 ] || AGENT0=1
  PGLAST0=$(lab_http_body "$IP" 7777 /pglog 60 | pg_failover_line)
  lab_log "before the kill of B: $AGENT0 agent signal(s); PostgreSQL's last failover line: '${PGLAST0:-none}'"
  # 2. Load, crash of B, checks (C's ledger clients are numbered from 51: ids apart from B's).
  if lab_two_pg_load /tmp/backup.err B "$AFTER_S" 51 "$AGENT0" "$PGLAST0"; then
    NUM=$(lab_two_pg_numbers)
    # B's ledger (its acknowledged ids when it marked ready-to-kill, handed over by the host).
    if [ -f /lab/b-acked.ids ]; then
      pg_lost_check /lab/b-acked.ids "B's"
      cp /lab/b-acked.ids "$W/b-acked.ids"
    else
      lab_fail "no /lab/b-acked.ids: the host handed over no ledger of B"; ACKED=; LOST=
    fi
  else
    NUM=$(lab_two_pg_numbers); ACKED=; LOST=
  fi
  xl list
  echo "XENLAB NUMBERS two-host-c-pg: $NUM b_acked=${ACKED:-none} b_acked_lost=${LOST:-none}" >&7
  cp "$W"/ledger-* "$W"/pgbench-*.out "$W"/*.ids "$LAB_OUT/" 2>/dev/null
else
  # 2. Client loop until the first answer after the failover (bounded).
  lab_two_counter_after_kill "$IP" B "$AFTER_S" "$boot0" "$DISK" "$REMUSDB_RUN_DIR/xen-$DOMU.backup.disk" \
    two-host-c
fi
grep -E "primary|FAILOVER|resum|silent|replica disk|backup domain's disk|disk" /tmp/backup.err | head -25 | sed 's/^/  backup: /'
lab_two_stop_backup $BP
cp /tmp/backup.out /tmp/backup.err "$LAB_OUT/" 2>/dev/null
lab_result

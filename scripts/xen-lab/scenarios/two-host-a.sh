#!/bin/bash
# two-host-a: the PRIMARY dom0 of the two-host lab (run by scripts/xen-lab/run-two.sh, not by
# run.sh). It bridges the link NIC and its domU's vif on xenbr0 (dom0 10.99.0.1), starts the
# PV domU with the counter service (10.99.0.2), waits until host B answers ping (B adds its
# address only once `remusdb backup` listens), then runs `remusdb protect domu B:7400` with
# the plug output buffer (Xen's default) and prints "XENLAB two-host-a: ready-to-kill" once
# TWO_MIN_ACKED epochs are acknowledged and B's client has had TWO_PROTECT_S seconds to read.
# With TWO_DISK=1 (run-two.sh's default) the domU also has a replicated disk: protect gets
# --disk-image /tmp/two/disk.img (32 MiB, sparse) and serves it over NBD at /dev/nbd0 with
# replication to B, and waits for the domain (--wait-domain), so protect starts first (after
# B's ping: it connects to B once the domain is there) and the domU is created once /dev/nbd0
# is attached (lab_domu_on_nbd0, as protect-disk.sh does), with xvdb = blkback on /dev/nbd0 and
# the stamping hook (lab_disk_stamp_hook: block n = "REMUSDB-BLOCK n", checked against memory).
# With the plug buffer the domU's answers, also to this dom0, wait for the first acknowledged
# checkpoint (the first full copy: minutes under emulation). TWO_DISK=0: the counter-only domU.
# TWO_GUEST=pg (run-two.sh): the guest is protect-pg's (dom0-pg-lib.sh): a PV domU of PROTECT_MEM
# (192) MiB whose data disk is pg-guest.sh's PostgreSQL disk (/lab/in/pg-disk.img), served and
# replicated by `remusdb protect --disk-image ... --disk-device /dev/nbd0` with PG_NET's network
# options (plug: --net-buffer plug; pgwire / dscp: --net-buffer nfqueue --commit-protection
# pgwire / dscp, with br_netfilter's hooks on), the hook starting PostgreSQL and the guest agent,
# PG_KERNEL stock or patched (/lab/in/guest-bzImage; dscp needs it; the guest must report it).
# After TWO_MIN_ACKED acknowledged epochs it waits (TWO_GO_WAIT_S, 1800) for the host's /lab/go
# instead of TWO_PROTECT_S: B's clients have had their protected load (B's "protected load
# done" marker); then protect's status gives the NUMBERS (with nfqueue: packets held and let
# through at once, both must be > 0; disk writes must have been forwarded) and it marks
# ready-to-kill.
# The host then kills this whole VM with SIGKILL (a host crash): nothing after the marker
# is expected to run, so logs go to /lab/out before it.
. /lab/dom0-lib.sh
. /lab/dom0-two-lib.sh
GUEST=${TWO_GUEST:-counter}
[ "$GUEST" = pg ] && . /lab/dom0-pg-lib.sh
lab_begin two-host-a
DOMU=domu
IP=10.99.0.2
SELF=${TWO_SELF_IP:-10.99.0.1}
PEER=${TWO_PEER_IP:-10.99.0.10}
DISK=${TWO_DISK:-1}
# TWO_REUSE=1: the disk image lives on the host's share (/lab/keep), so it outlives this VM's
# SIGKILL as a real host's disk outlives its crash; the host hands it to C (backup --reuse-disk).
DISKIMG=/tmp/two/disk.img
[ "${TWO_REUSE:-0}" = 1 ] && { mkdir -p /lab/keep; DISKIMG=/lab/keep/disk.img; }
HB=${TWO_HB_MS:-45000}
INTERVAL=${TWO_INTERVAL_MS:-200}
# TWO_INTERVAL_MS=auto: the interval that keeps the guest paused ≤ 10 %, up to TWO_LOSS_WINDOW_MS
INTERVAL_ARGS=(-i "$INTERVAL")
[ "$INTERVAL" = auto ] && INTERVAL_ARGS+=(--max-loss-window "${TWO_LOSS_WINDOW_MS:-5000}")
W=/tmp/two
MIN=${TWO_MIN_ACKED:-3}

lab_link_up "$SELF/24" || { lab_result; exit; }
cd "$REMUSDB" || lab_fail "no project"
export REMUSDB_RUN_DIR=/tmp/remusdb-run
num() { local v; v=$(lab_http "$IP" 7777 "$1" "${2:-10}"); [[ "$v" =~ ^[0-9]+$ ]] && echo "$v"; }
early_end() { # early_end WHY: the guest's console and protect's log kept
  lab_fail "$1"; lab_guest_log $DOMU | tail; tail -n 40 /tmp/protect.err
  cp /tmp/protect.* "$LAB_OUT/" 2>/dev/null; lab_result; exit
}

if [ "$GUEST" = pg ]; then
  MODE=${PG_NET:-plug}
  KERNEL=${PG_KERNEL:-stock}
  MEM=${PROTECT_MEM:-192}
  mkdir -p $W
  pg_net_args "$MODE" && pg_kernel "$KERNEL" "$MODE" && pg_disk $DISKIMG || { lab_result; exit; }
  modprobe nbd nbds_max=8 || lab_fail "modprobe nbd failed"
  [ "$MODE" = plug ] || pg_br_netfilter
  pg_hook_img $W/hook.img
  lab_wait_ping "$PEER" 900 || { lab_fail "host B ($PEER) did not answer ping"; lab_result; exit; }
  T_PROT=$(lab_now)
  TRACE=${NET_TRACE:+$LAB_OUT/net-trace.txt} # NET_TRACE=1: every packet of the guest (packet-trace.ts)
  REMUSDB_NET_TRACE=$TRACE node bin/remusdb protect "$DOMU" "$PEER:7400" --insecure "${NETARGS[@]}" "${INTERVAL_ARGS[@]}" \
    --heartbeat-timeout "$HB" --disk-image $DISKIMG --disk-listen 127.0.0.1:10809 \
    --disk-device /dev/nbd0 --wait-domain 900 > /tmp/protect.out 2> /tmp/protect.err &
  PP=$!
  lab_mark "protect started (heartbeat ${HB} ms, interval ${INTERVAL} ms, ${NETARGS[*]}, PostgreSQL's disk $DISKIMG)"
  lab_domu_on_nbd0 $PP "$DOMU" "$IP" 00:16:3e:00:00:02 "$MEM" $W/hook.img $W ||
    { cat /tmp/protect.err; cp /tmp/protect.* "$LAB_OUT/" 2>/dev/null; lab_result; exit; }
  # plug: the first answer waits for the first acknowledged checkpoint (disk + memory copy)
  lab_wait_http "$IP" 7777 /boot 1500 "$DOMU" || early_end "the domU did not answer"
  boot0=$(lab_http_body "$IP" 7777 /boot 60)
  pg_guest_kernel "$KERNEL" 600 # the hook reports the kernel once PostgreSQL is up
  lab_mark "domU up boot=$boot0 kernel=${GUEST_KERNEL:-unknown}"
  [ ${#LAB_FAILS[@]} = 0 ] || { cp /tmp/protect.* "$LAB_OUT/" 2>/dev/null; lab_result; exit; }
elif [ "$DISK" = 1 ]; then
  mkdir -p $W
  modprobe nbd nbds_max=8 || lab_fail "modprobe nbd failed"
  truncate -s 32M $DISKIMG
  lab_disk_stamp_hook $W/hook.img
  lab_wait_ping "$PEER" 900 || { lab_fail "host B ($PEER) did not answer ping"; lab_result; exit; }
  T_PROT=$(lab_now)
  node bin/remusdb protect "$DOMU" "$PEER:7400" --insecure --net-buffer plug "${INTERVAL_ARGS[@]}" \
    --heartbeat-timeout "$HB" --disk-image $DISKIMG --disk-listen 127.0.0.1:10809 \
    --disk-device /dev/nbd0 --wait-domain 900 > /tmp/protect.out 2> /tmp/protect.err &
  PP=$!
  lab_mark "protect started (heartbeat ${HB} ms, interval ${INTERVAL} ms, disk $DISKIMG)"
  lab_domu_on_nbd0 $PP "$DOMU" "$IP" 00:16:3e:00:00:02 128 $W/hook.img $W phy ||
    { cat /tmp/protect.err; cp /tmp/protect.* "$LAB_OUT/" 2>/dev/null; lab_result; exit; }
  lab_log "disk: $(grep -h 'disk:' /tmp/protect.err | tail -2 | tr '\n' ' ')"
  # plug: the first answer waits for the first acknowledged checkpoint (disk + memory copy)
  lab_wait_http "$IP" 7777 /counter 900 "$DOMU" ||
    { lab_fail "domU counter did not answer"; lab_guest_log $DOMU | tail; tail -n 40 /tmp/protect.err; cp /tmp/protect.* "$LAB_OUT/" 2>/dev/null; lab_result; exit; }
  t=$(lab_now); d0=
  while [ -z "$d0" ] && [ "$(lab_since "$t" | cut -d. -f1)" -lt 180 ]; do d0=$(num /disk); [ -n "$d0" ] || sleep 1; done
  [ -n "$d0" ] || { lab_fail "the guest's disk writer did not start"; lab_guest_log $DOMU | tail; lab_result; exit; }
  boot0=$(lab_http_body "$IP" 7777 /boot 30); c0=$(num /counter)
  lab_mark "domU up boot=$boot0 counter=$c0 block=$d0"
else
  lab_domu_up "$DOMU" "$IP" 00:16:3e:00:00:02 128 || { lab_result; exit; }
  lab_mark "domU up boot=$boot0 counter=$c0"
  lab_wait_ping "$PEER" 900 || { lab_fail "host B ($PEER) did not answer ping"; lab_result; exit; }
  T_PROT=$(lab_now)
  node bin/remusdb protect "$DOMU" "$PEER:7400" --insecure --net-buffer plug "${INTERVAL_ARGS[@]}" \
    --heartbeat-timeout "$HB" > /tmp/protect.out 2> /tmp/protect.err &
  PP=$!
  lab_mark "protect started (heartbeat ${HB} ms, interval ${INTERVAL} ms)"
fi
acked=$(lab_wait_acked "$PP" "$MIN" "$([ "$GUEST" = pg ] && echo 1500 || echo 900)")
if ! [[ "$acked" =~ ^[0-9]+$ ]] || [ "$acked" -lt "$MIN" ]; then
  lab_fail "checkpoints were not acknowledged (acked '$acked')"
  tail -n 40 /tmp/protect.err; cp /tmp/protect.* "$LAB_OUT/" 2>/dev/null
  lab_result; exit
fi
lab_mark "acked epoch $acked after $(lab_since "$T_PROT") s"
if [ "$GUEST" = pg ]; then
  # B's clients run their protected load now; the host says when it is done.
  T_GO=$(lab_now)
  lab_wait_file /lab/go "${TWO_GO_WAIT_S:-1800}" ||
    early_end "no go from the host within ${TWO_GO_WAIT_S:-1800} s (B's clients' protected load)$([ -e /lab/abort ] && echo ': host aborted')"
  lab_log "go from the host after $(lab_since "$T_GO") s (B's clients' protected load done)"
else
  [ "$DISK" = 1 ] && dA=$(num /disk)
  sleep "${TWO_PROTECT_S:-30}"
fi
lab_status > /tmp/status-primary.json
f() { lab_field primary "$1" < /tmp/status-primary.json; }
DISKNUM=; PGNUM=
if [ "$DISK" = 1 ]; then # the counter's stamped disk, or PostgreSQL's (TWO_GUEST=pg)
  [ "$GUEST" = pg ] || dB=$(num /disk)
  FWDN=$(f disk.forwardedWrites)
  DISKLOG="disk: $(f disk.resyncCopiedBytes) B copied at start, $FWDN writes / $(f disk.forwardedBytes) B forwarded, verified at epoch $(f diskVerifiedEpoch)"
  if [ "$GUEST" = pg ]; then
    lab_log "while protected: $DISKLOG"
  else
    lab_log "while protected: blocks $dA -> $dB in ${TWO_PROTECT_S:-30} s; $DISKLOG"
    [[ "$dA" =~ ^[0-9]+$ && "$dB" =~ ^[0-9]+$ ]] && [ "$dB" -gt "$dA" ] || lab_fail "the guest did not write its disk while protected ($dA -> $dB)"
  fi
  [[ "$FWDN" =~ ^[0-9]+$ ]] && [ "$FWDN" -gt 0 ] || lab_fail "no disk write was forwarded to the backup ($FWDN)"
  DISKNUM=" disk_sync_bytes=$(f disk.resyncCopiedBytes) disk_zero_bytes=$(f disk.resyncZeroBytes) disk_writes_forwarded=$FWDN disk_bytes_forwarded=$(f disk.forwardedBytes) disk_verified_epoch=$(f diskVerifiedEpoch)"
  [ "$GUEST" = pg ] || DISKNUM+=" block_at_marker=$dB"
fi
if [ "$GUEST" = pg ]; then
  HELD=; AT_ONCE=
  [ "$MODE" = plug ] || pg_net_ledger f "$MODE"
  PGNUM=" net=$MODE kernel=$KERNEL guest_kernel=${GUEST_KERNEL% *} mem_mib=$MEM packets_held=${HELD:-na} packets_at_once=${AT_ONCE:-na}"
fi
echo "XENLAB NUMBERS two-host-a: acked=$(f ackedEpoch) checkpoints=$(f checkpoints) pause_p50_ms=$(f pauseMsP50) pause_p99_ms=$(f pauseMsP99) first_pause_ms=$(f fullPauseMs) wire_bytes=$(f wireBytes) hb_ms=$HB interval_ms=$INTERVAL$DISKNUM$PGNUM" >&7
grep -i -E "silent|lost|reconnect" /tmp/protect.err | head -5 | sed 's/^/  protect: /'
kill -0 "$PP" 2>/dev/null || lab_fail "protect exited before the crash"
xl list
cp /tmp/protect.out /tmp/protect.err /tmp/status-primary.json "$LAB_OUT/" 2>/dev/null
[ "$DISK" = 1 ] && cp $W/*.cfg "$LAB_OUT/" 2>/dev/null
sync
[ ${#LAB_FAILS[@]} = 0 ] || { lab_result; exit; }
lab_mark "ready-to-kill"
# The host kills this VM now. If it does not, end with a failure after a bound.
sleep "${TWO_KILL_WAIT_S:-600}"
lab_fail "not killed within ${TWO_KILL_WAIT_S:-600} s of ready-to-kill"
lab_result

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
# The host then kills this whole VM with SIGKILL (a host crash): nothing after the marker
# is expected to run, so logs go to /lab/out before it.
. /lab/dom0-lib.sh
. /lab/dom0-two-lib.sh
lab_begin two-host-a
DOMU=domu
IP=10.99.0.2
SELF=${TWO_SELF_IP:-10.99.0.1}
PEER=${TWO_PEER_IP:-10.99.0.10}
DISK=${TWO_DISK:-1}
HB=${TWO_HB_MS:-45000}
INTERVAL=${TWO_INTERVAL_MS:-200}
W=/tmp/two

lab_link_up "$SELF/24" || { lab_result; exit; }
cd "$REMUSDB" || lab_fail "no project"
export REMUSDB_RUN_DIR=/tmp/remusdb-run
num() { local v; v=$(lab_http "$IP" 7777 "$1" "${2:-10}"); [[ "$v" =~ ^[0-9]+$ ]] && echo "$v"; }

if [ "$DISK" = 1 ]; then
  mkdir -p $W
  modprobe nbd nbds_max=8 || lab_fail "modprobe nbd failed"
  truncate -s 32M $W/disk.img
  lab_disk_stamp_hook $W/hook.img
  lab_wait_ping "$PEER" 900 || { lab_fail "host B ($PEER) did not answer ping"; lab_result; exit; }
  T_PROT=$(lab_now)
  node bin/remusdb protect "$DOMU" "$PEER:7400" --insecure --net-buffer plug -i "$INTERVAL" \
    --heartbeat-timeout "$HB" --disk-image $W/disk.img --disk-listen 127.0.0.1:10809 \
    --disk-device /dev/nbd0 --wait-domain 900 > /tmp/protect.out 2> /tmp/protect.err &
  PP=$!
  lab_mark "protect started (heartbeat ${HB} ms, interval ${INTERVAL} ms, disk $W/disk.img)"
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
  node bin/remusdb protect "$DOMU" "$PEER:7400" --insecure --net-buffer plug -i "$INTERVAL" \
    --heartbeat-timeout "$HB" > /tmp/protect.out 2> /tmp/protect.err &
  PP=$!
  lab_mark "protect started (heartbeat ${HB} ms, interval ${INTERVAL} ms)"
fi
acked=$(lab_wait_acked "$PP" "${TWO_MIN_ACKED:-3}" 900)
if ! [[ "$acked" =~ ^[0-9]+$ ]] || [ "$acked" -lt "${TWO_MIN_ACKED:-3}" ]; then
  lab_fail "checkpoints were not acknowledged (acked '$acked')"
  tail -n 40 /tmp/protect.err; cp /tmp/protect.* "$LAB_OUT/" 2>/dev/null
  lab_result; exit
fi
lab_mark "acked epoch $acked after $(lab_since "$T_PROT") s"
[ "$DISK" = 1 ] && dA=$(num /disk)
sleep "${TWO_PROTECT_S:-30}"
lab_status > /tmp/status-primary.json
f() { lab_field primary "$1" < /tmp/status-primary.json; }
DISKNUM=
if [ "$DISK" = 1 ]; then
  dB=$(num /disk)
  FWDN=$(f disk.forwardedWrites)
  lab_log "while protected: blocks $dA -> $dB in ${TWO_PROTECT_S:-30} s; disk: $(f disk.resyncCopiedBytes) B copied at start, $FWDN writes / $(f disk.forwardedBytes) B forwarded, verified at epoch $(f diskVerifiedEpoch)"
  [[ "$dA" =~ ^[0-9]+$ && "$dB" =~ ^[0-9]+$ ]] && [ "$dB" -gt "$dA" ] || lab_fail "the guest did not write its disk while protected ($dA -> $dB)"
  [[ "$FWDN" =~ ^[0-9]+$ ]] && [ "$FWDN" -gt 0 ] || lab_fail "no disk write was forwarded to the backup ($FWDN)"
  DISKNUM=" disk_sync_bytes=$(f disk.resyncCopiedBytes) disk_zero_bytes=$(f disk.resyncZeroBytes) disk_writes_forwarded=$FWDN disk_bytes_forwarded=$(f disk.forwardedBytes) disk_verified_epoch=$(f diskVerifiedEpoch) block_at_marker=$dB"
fi
echo "XENLAB NUMBERS two-host-a: acked=$(f ackedEpoch) checkpoints=$(f checkpoints) pause_p50_ms=$(f pauseMsP50) pause_p99_ms=$(f pauseMsP99) first_pause_ms=$(f fullPauseMs) wire_bytes=$(f wireBytes) hb_ms=$HB interval_ms=$INTERVAL$DISKNUM" >&7
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

#!/bin/bash
# protect-disk: remusdb protects a PV domU together with its disk, primary and backup in the
# same dom0 (network not buffered: -n -F). `remusdb protect --disk-image` serves the domU's
# raw image over NBD with replication and attaches it at /dev/nbd0 (nbd-client); the domU
# (created after that) has xvdb = blkback (phy) on /dev/nbd0 — PD_BACKEND=qdisk for qdisk,
# which goes through dom0's page cache of /dev/nbd0 (docs/xen-adapter.md). The backup keeps the
# replica disk, applies each epoch's writes at its commit, and at failover serves it and
# attaches it to a free /dev/nbdN, which the configuration xl restores names instead.
# The guest (hook script on xvdc) stamps block n of xvdb with "REMUSDB-BLOCK n" (fsync),
# then publishes n (memory only: tmpfs /tmp/www/disk). Before each next write it checks,
# on the disk itself (page cache dropped), that block n carries n and block n+2 is still
# empty: after a failover, n comes from the resumed memory and the disk is the backup's, so
# a completed write the backup lost, or a write from beyond the checkpoint, is caught by the
# resumed guest (/tmp/www/diskbad). dom0 also scans the backup's image: the highest stamp
# at failover + what the resumed guest wrote since.
. /lab/dom0-lib.sh
[ -f /lab/in/env ] && . /lab/in/env   # knobs from the host: XENLAB_IN=dir with an env file
lab_begin protect-disk
DOMU=domu
IP=10.99.0.2
MEM=${PROTECT_MEM:-128}
INTERVAL=${PROTECT_INTERVAL:-200}
RUN_S=${PROTECT_SECONDS:-30}
W=/tmp/pd
mkdir -p $W
lab_bridge_up
modprobe nbd nbds_max=8 || lab_fail "modprobe nbd failed"
truncate -s 32M $W/disk.img

lab_disk_stamp_hook $W/hook.img # the stamping hook (dom0-lib.sh), described above

cd "$REMUSDB" || lab_fail "no project"
export REMUSDB_RUN_DIR=/tmp/remusdb-run
node bin/remusdb backup --listen 127.0.0.1:7400 --insecure > $W/backup.out 2> $W/backup.err &
BP=$!
node bin/remusdb protect "$DOMU" 127.0.0.1:7400 --insecure -n -F -i "$INTERVAL" --heartbeat-timeout "${PROTECT_HB_MS:-90000}" \
  --disk-image $W/disk.img --disk-listen 127.0.0.1:10809 --disk-device /dev/nbd0 --wait-domain 900 > $W/protect.out 2> $W/protect.err &
PP=$!
lab_domu_on_nbd0 $PP "$DOMU" "$IP" 00:16:3e:00:00:02 "$MEM" $W/hook.img $W "${PD_BACKEND:-phy}" ||
  { cat $W/protect.err; lab_result; exit; }
lab_log "disk: $(grep -h 'disk:' $W/protect.err | tail -2 | tr '\n' ' ')"
lab_wait_http "$IP" 7777 /counter 300 "$DOMU" || { lab_fail "domU counter did not answer"; lab_guest_log $DOMU | tail; lab_result; exit; }
num() { local v; v=$(lab_http "$IP" 7777 "$1" "${2:-5}"); [[ "$v" =~ ^[0-9]+$ ]] && echo "$v"; }
t=$(lab_now); d0=
while [ -z "$d0" ] && [ "$(lab_since "$t" | cut -d. -f1)" -lt 120 ]; do d0=$(num /disk); sleep 1; done
[ -n "$d0" ] || { lab_fail "the guest's disk writer did not start"; lab_guest_log $DOMU | tail; lab_result; exit; }
boot0=$(lab_http "$IP" 7777 /boot)
lab_log "domU up: boot $boot0, last block written $d0"

status() { lab_status; }
field() { lab_field "$@"; }

# 1. Protection starts (disk copy, full memory copy), then epochs are acknowledged.
acked=$(lab_wait_acked "$PP" 3 420)
if ! { [[ "$acked" =~ ^[0-9]+$ ]] && [ "$acked" -ge 3 ]; }; then
  lab_fail "checkpoints were not acknowledged (acked '${acked}')"
  status > $W/status-primary.json; lab_guest_log $DOMU | tail -n 20
  kill -TERM $PP $BP 2>/dev/null; sleep 3
  tail -n 40 $W/protect.err; tail -n 20 $W/backup.err
  cp $W/*.out $W/*.err $W/*.json $W/*.cfg "$LAB_OUT/" 2>/dev/null
  lab_result; exit
fi

# 2. The guest keeps writing while protected.
dA=$(lab_http "$IP" 7777 /disk 10)
sleep "$RUN_S"
status > $W/status-primary.json
dB=$(lab_http "$IP" 7777 /disk 10)
acked2=$(field primary ackedEpoch < $W/status-primary.json)
lab_log "while protected: blocks $dA -> $dB in ${RUN_S} s, acked epoch $acked -> $acked2"
[[ "$dA" =~ ^[0-9]+$ && "$dB" =~ ^[0-9]+$ ]] && [ "$dB" -gt "$dA" ] || lab_fail "the guest did not write while protected ($dA -> $dB)"
P50=$(field primary pauseMsP50 < $W/status-primary.json); P99=$(field primary pauseMsP99 < $W/status-primary.json)
FULLP=$(field primary fullPauseMs < $W/status-primary.json); CK=$(field primary checkpoints < $W/status-primary.json)
FWD=$(field primary disk.forwardedBytes < $W/status-primary.json); FWDN=$(field primary disk.forwardedWrites < $W/status-primary.json)
SYNC=$(field primary disk.resyncCopiedBytes < $W/status-primary.json); VER=$(field primary diskVerifiedEpoch < $W/status-primary.json)
lab_log "pause p50 $P50 ms p99 $P99 ms (first $FULLP ms); $CK checkpoints; disk: $SYNC B copied at start, $FWDN writes / $FWD B forwarded, verified at epoch $VER"
[[ "$FWDN" =~ ^[0-9]+$ ]] && [ "$FWDN" -gt 0 ] || lab_fail "no disk write was forwarded to the backup ($FWDN)"

# 3. Crash the primary; the resumed guest checks its disk against its memory.
PRIM=$(xl domid "$DOMU"); before=$(lab_http "$IP" 7777 /disk 5)
TF=$(lab_now)
xl destroy "$PRIM"
lab_log "destroyed the primary (id $PRIM); last block the guest reported: $before"
ok=0
for i in $(seq 1 900); do c=$(lab_http "$IP" 7777 /disk 1); [[ "$c" =~ ^[0-9]+$ ]] && { ok=1; break; }; sleep 0.1; done
FAILOVER_S=$(lab_since "$TF")
boot2=$(lab_http "$IP" 7777 /boot)
lab_log "after failover (${FAILOVER_S} s): boot $boot2, last block $c"
[ $ok = 1 ] || lab_fail "the backup domain did not answer after failover"
[ -n "$boot2" ] && [ "$boot2" = "$boot0" ] && lab_log "ok: same boot id (resumed, not rebooted)" || lab_fail "boot id changed ('$boot0' -> '$boot2')"
grep -E "FAILOVER|runs on the backup|replica disk|backup domain's disk" $W/backup.err | sed 's/^/  backup: /'
xl block-list "$DOMU" 2>&1 | sed 's/^/  /'
ls /sys/block/ | grep nbd | while read -r b; do [ -e /sys/block/$b/pid ] && echo "  $b attached (pid $(cat /sys/block/$b/pid))"; done
# Let the resumed guest run a few checks on the backup's disk.
t=$(lab_now); c2=$c
while [ "$(lab_since "$t" | cut -d. -f1)" -lt 120 ]; do
  c2=$(lab_http "$IP" 7777 /disk 5)
  [[ "$c2" =~ ^[0-9]+$ && "$c" =~ ^[0-9]+$ ]] && [ "$c2" -ge $((c + 3)) ] && break
  sleep 1
done
bad=$(lab_http "$IP" 7777 /diskbad 5); checks=$(lab_http "$IP" 7777 /diskchecks 5)
lab_log "resumed guest: blocks $c -> $c2, $checks checks in all, mismatches: '${bad}'"
[[ "$c2" =~ ^[0-9]+$ && "$c" =~ ^[0-9]+$ ]] && [ "$c2" -ge $((c + 3)) ] || lab_fail "the resumed guest did not go on writing its disk ($c -> $c2)"
[ -z "$bad" ] || lab_fail "disk and memory disagree after failover: $bad"
if [[ "$c" =~ ^[0-9]+$ && "$before" =~ ^[0-9]+$ ]]; then
  lab_log "the primary's guest had reported block $before; the backup resumed at (or soon after) block $c (network not buffered: a client may see a block the backup then rewrites)"
fi
# The backup's image: every stamped block k holds k, all of 1..highest present (no hole).
img=$REMUSDB_RUN_DIR/xen-$DOMU.backup.disk
scan=$(lab_disk_scan "$img")
read -r HI HOLES WRONG <<< "$scan"
lab_log "backup image $img: highest stamped block $HI, holes $HOLES, wrong stamps $WRONG (guest now at $(lab_http "$IP" 7777 /disk 5))"
[ "$HOLES" = 0 ] && [ "$WRONG" = 0 ] || lab_fail "the backup's image has holes ($HOLES) or wrong stamps ($WRONG): $scan"

echo "XENLAB NUMBERS protect-disk: backend=${PD_BACKEND:-phy} mem_mib=$MEM interval_ms=$INTERVAL checkpoints=$CK pause_p50_ms=$P50 pause_p99_ms=$P99 first_pause_ms=$FULLP disk_sync_bytes=$SYNC disk_writes_forwarded=$FWDN disk_bytes_forwarded=$FWD disk_verified_epoch=$VER blocks_while_protected=$((dB - dA)) failover_s=$FAILOVER_S block_before=$before block_resumed=$c block_later=$c2 diskbad=${bad:-none}"
lab_guest_log $DOMU | grep -E "DOMU|xvd|blkfront" | tail -n 15
kill -TERM $PP 2>/dev/null; sleep 2
kill -TERM $BP 2>/dev/null; sleep 2
tail -n 25 $W/protect.err; tail -n 25 $W/backup.err
cp $W/*.out $W/*.err $W/*.json $W/*.cfg "$LAB_OUT/" 2>/dev/null
lab_result

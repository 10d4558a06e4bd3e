#!/bin/bash
# xl-remus: the comparison baseline for the protect scenario — Xen's own `xl remus` on the
# same PV domU, to localhost, unsafe mode (-F -n: Debian's libxl has no network buffering).
# Measures checkpoints per second, bytes per checkpoint on the stream (counted by a tee in
# the receiver's pipe) and the failover time after `xl destroy` of the primary (libxl's
# suspend wait notices the dead domain late). xl reports no pause times.
. /lab/dom0-lib.sh
lab_begin xl-remus
DOMU=domu
IP=10.99.0.2
INTERVAL=${PROTECT_INTERVAL:-200}
RUN_S=${PROTECT_SECONDS:-30}
lab_domu_up "$DOMU" "$IP" 00:16:3e:00:00:02 128 || { lab_result; exit; }

# The receiver's stdin passes through tee, which counts the stream's bytes.
xl -T -vv remus -F -n -i "$INTERVAL" -s "" "$DOMU" \
  "bash -c 'tee >(wc -c > /tmp/remus-bytes) | xl migrate-receive -r -e 2> /tmp/remus-rx.log'" > /tmp/remus.log 2>&1 &
RP=$!
t=$(lab_now)
until grep -q 'Checkpointed save' /tmp/remus.log 2>/dev/null; do
  kill -0 $RP 2>/dev/null || break
  [ "$(lab_since "$t" | cut -d. -f1)" -gt 400 ] && break
  sleep 2
done
FIRST_S=$(lab_since "$t")
n0=$(grep -c 'Checkpointed save' /tmp/remus.log); t0=$(lab_now)
seen=0
for i in $(seq 1 "$RUN_S"); do
  v=$(lab_http "$IP" 7777 /counter 2); [[ "$v" =~ ^[0-9]+$ ]] && [ "$v" -gt "$seen" ] && seen=$v
  sleep 1
done
n1=$(grep -c 'Checkpointed save' /tmp/remus.log); dt=$(lab_since "$t0")
RATE=$(awk -v a="$n0" -v b="$n1" -v t="$dt" 'BEGIN { printf "%.2f", (b - a) / t }')
lab_log "first checkpoint after ${FIRST_S} s; $((n1 - n0)) checkpoints in ${dt} s ($RATE/s)"
[ "$n1" -gt "$n0" ] || lab_fail "xl remus took no checkpoints"

PRIM=$(xl domid "$DOMU"); TF=$(lab_now)
xl destroy "$PRIM"
ok=0
for i in $(seq 1 1200); do
  xl list | grep -q "^$DOMU " && { c2=$(lab_http "$IP" 7777 /counter 1); [[ "$c2" =~ ^[0-9]+$ ]] && { ok=1; break; }; }
  sleep 0.2
done
FAILOVER_S=$(lab_since "$TF")
wait $RP 2>/dev/null
BYTES=$(cat /tmp/remus-bytes 2>/dev/null)
boot2=$(lab_http "$IP" 7777 /boot)
lab_log "failover ${FAILOVER_S} s: boot $boot2 counter $c2 (seen $seen); stream ${BYTES:-?} bytes for $n1 checkpoints"
[ $ok = 1 ] || lab_fail "the backup did not answer after failover"
[ "$boot2" = "$boot0" ] || lab_fail "boot id changed ('$boot0' -> '$boot2')"
echo "XENLAB NUMBERS xl-remus: interval_ms=$INTERVAL checkpoints=$n1 rate_per_s=$RATE first_s=$FIRST_S stream_bytes=$BYTES failover_s=$FAILOVER_S seen=$seen after=$c2"
grep -E 'Remus|migration target|error' /tmp/remus.log /tmp/remus-rx.log | head -20
cp /tmp/remus.log /tmp/remus-rx.log "$LAB_OUT/" 2>/dev/null
lab_result

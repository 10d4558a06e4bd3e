#!/bin/bash
# xen-save: our Xen bindings drive libxenguest's checkpointed save loop (Remus mode) of a
# running PV domU into a local stock receiver (`xl migrate-receive -r -e`), with our
# suspend / postcopy / checkpoint callbacks (dom0/hypervisor/xen/save-to-xl.ts). Then the
# primary domain is destroyed and the stream closed: the receiver must fail over and the
# domU must answer again with the same boot id (resumed from a checkpoint, not rebooted),
# its counter continuing from where the checkpoints left it.
. /lab/dom0-lib.sh
lab_begin xen-save
DOMU=domu
IP=10.99.0.2
lab_domu_up "$DOMU" "$IP" 00:16:3e:00:00:02 128 || { lab_result; exit; }

cd "$REMUSDB" || lab_fail "no project"
node dist/dom0/hypervisor/xen/save-to-xl.js "$DOMU" 200 10 > /tmp/save.out 2> /tmp/save.err &
SP=$!
t=$(lab_now)
until grep -q SAVE-TO-XL /tmp/save.out 2>/dev/null; do
  kill -0 $SP 2>/dev/null || break
  [ "$(lab_since "$t" | cut -d. -f1)" -gt 600 ] && break
  sleep 1
done
cat /tmp/save.err | tail -n 20
line=$(grep SAVE-TO-XL /tmp/save.out)
lab_log "save loop: ${line:-none} after $(lab_since "$t") s"
cp /tmp/save.out /tmp/save.err "$LAB_OUT/" 2>/dev/null
[[ "$line" == *checkpoints=10* && "$line" == *rc=0* ]] && lab_log "ok: 10 checkpoints through our callbacks" || lab_fail "save loop did not complete 10 checkpoints: $line"
c1=$(lab_http "$IP" 7777 /counter)
lab_log "primary counter after checkpoints: $c1"
xl list

# Crash the primary, end the stream: the receiver fails over to its last checkpoint.
PRIM=$(xl domid "$DOMU")
TF=$(lab_now)
xl destroy "$PRIM"
kill -TERM $SP
ok=0
for i in $(seq 1 120); do
  if xl list | grep -q "^$DOMU "; then
    c2=$(lab_http "$IP" 7777 /counter 3)
    if [[ "$c2" =~ ^[0-9]+$ ]]; then ok=1; break; fi
  fi
  sleep 1
done
boot2=$(lab_http "$IP" 7777 /boot)
lab_log "after failover ($(lab_since "$TF") s): boot $boot2 counter $c2"
xl list
[ $ok = 1 ] || lab_fail "the backup domain did not answer after failover"
[ -n "$boot2" ] && [ "$boot2" = "$boot0" ] && lab_log "ok: same boot id: resumed, not rebooted" || lab_fail "boot id changed ('$boot0' -> '$boot2')"
[[ "$c2" =~ ^[0-9]+$ && "$c0" =~ ^[0-9]+$ ]] && [ "$c2" -ge "$c0" ] && lab_log "ok: counter continues ($c0 before, $c1 at the end of checkpoints, $c2 after failover)" || lab_fail "counter did not continue ($c0 -> $c2)"
echo "boot0=$boot0 c0=$c0 c1=$c1 c2=$c2 failover_s=$(lab_since "$TF")" > "$LAB_OUT/result.txt"
wait $SP 2>/dev/null
lab_result

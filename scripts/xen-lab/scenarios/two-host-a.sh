#!/bin/bash
# two-host-a: the PRIMARY dom0 of the two-host lab (run by scripts/xen-lab/run-two.sh, not by
# run.sh). It bridges the link NIC and its domU's vif on xenbr0 (dom0 10.99.0.1), starts the
# PV domU with the counter service (10.99.0.2), waits until host B answers ping (B adds its
# address only once `remusdb backup` listens), then runs `remusdb protect domu B:7400` with
# the plug output buffer (Xen's default) and prints "XENLAB two-host-a: ready-to-kill" once
# TWO_MIN_ACKED epochs are acknowledged and B's client has had TWO_PROTECT_S seconds to read.
# The host then kills this whole VM with SIGKILL (a host crash): nothing after the marker
# is expected to run, so logs go to /lab/out before it.
. /lab/dom0-lib.sh
. /lab/dom0-two-lib.sh
lab_begin two-host-a
DOMU=domu
IP=10.99.0.2
SELF=${TWO_SELF_IP:-10.99.0.1}
PEER=${TWO_PEER_IP:-10.99.0.10}
HB=${TWO_HB_MS:-45000}
INTERVAL=${TWO_INTERVAL_MS:-200}

lab_link_up "$SELF/24" || { lab_result; exit; }
lab_domu_up "$DOMU" "$IP" 00:16:3e:00:00:02 128 || { lab_result; exit; }
lab_mark "domU up boot=$boot0 counter=$c0"
lab_wait_ping "$PEER" 900 || { lab_fail "host B ($PEER) did not answer ping"; lab_result; exit; }

cd "$REMUSDB" || lab_fail "no project"
export REMUSDB_RUN_DIR=/tmp/remusdb-run
T_PROT=$(lab_now)
node bin/remusdb protect "$DOMU" "$PEER:7400" --insecure --net-buffer plug -i "$INTERVAL" \
  --heartbeat-timeout "$HB" > /tmp/protect.out 2> /tmp/protect.err &
PP=$!
lab_mark "protect started (heartbeat ${HB} ms, interval ${INTERVAL} ms)"
acked=$(lab_wait_acked "$PP" "${TWO_MIN_ACKED:-3}" 900)
if ! [[ "$acked" =~ ^[0-9]+$ ]] || [ "$acked" -lt "${TWO_MIN_ACKED:-3}" ]; then
  lab_fail "checkpoints were not acknowledged (acked '$acked')"
  tail -n 40 /tmp/protect.err; cp /tmp/protect.* "$LAB_OUT/" 2>/dev/null
  lab_result; exit
fi
lab_mark "acked epoch $acked after $(lab_since "$T_PROT") s"
sleep "${TWO_PROTECT_S:-30}"
lab_status > /tmp/status-primary.json
f() { lab_field primary "$1" < /tmp/status-primary.json; }
echo "XENLAB NUMBERS two-host-a: acked=$(f ackedEpoch) checkpoints=$(f checkpoints) pause_p50_ms=$(f pauseMsP50) pause_p99_ms=$(f pauseMsP99) first_pause_ms=$(f fullPauseMs) wire_bytes=$(f wireBytes) hb_ms=$HB interval_ms=$INTERVAL" >&7
grep -i -E "silent|lost|reconnect" /tmp/protect.err | head -5 | sed 's/^/  protect: /'
kill -0 "$PP" 2>/dev/null || lab_fail "protect exited before the crash"
xl list
cp /tmp/protect.out /tmp/protect.err /tmp/status-primary.json "$LAB_OUT/" 2>/dev/null
sync
[ ${#LAB_FAILS[@]} = 0 ] || { lab_result; exit; }
lab_mark "ready-to-kill"
# The host kills this VM now. If it does not, end with a failure after a bound.
sleep "${TWO_KILL_WAIT_S:-600}"
lab_fail "not killed within ${TWO_KILL_WAIT_S:-600} s of ready-to-kill"
lab_result

#!/bin/bash
# plug: the `plug` network output buffer (Linux sch_plug + IFB) on the lab dom0's kernel,
# which has both (the CI machine's kernel lacks sch_plug). dist/scripts/plug-check.js holds
# a guest namespace's IPv4 and IPv6 output (and the ARP/ND before it) until the epoch is
# released, then checks everything arrives in order. The last line is the result.
. /lab/dom0-lib.sh
lab_begin plug
cd "$REMUSDB" || lab_fail "no project at $REMUSDB"
modprobe sch_plug 2>/dev/null; modprobe ifb 2>/dev/null
lab_step plug-check 120 node dist/scripts/plug-check.js > /tmp/plug.json 2> /tmp/plug.err
rc=$?
lab_log "plug-check rc=$rc: $(cat /tmp/plug.json) $(head -c 400 /tmp/plug.err)"
cp /tmp/plug.json "$LAB_OUT/plug.json" 2>/dev/null
[ $rc = 0 ] || lab_fail "plug driver: $(cat /tmp/plug.json)"
lab_result

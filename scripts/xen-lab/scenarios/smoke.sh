#!/bin/bash
# smoke: proves the lab is a usable Xen host for remusdb. Runs inside dom0 (run.sh smoke):
#   1. Node.js is the carried-in >= 20.19 and runs the project (/opt/remusdb);
#   2. `remusdb doctor --json` reports the addon's Xen part (addon.xen) and a working
#      hypervisor interface (xen: xc_interface_open from our addon) as available;
#   3. a PV domU (128 MiB, 1 vCPU, busybox initramfs) on bridge xenbr0 boots, its counter
#      service answers on 10.99.0.2:7777 from dom0, and the counter advances between two
#      reads (same guest boot id);
#   4. `xl destroy` removes it.
# Every check runs even when an earlier one failed; the last line is the result.
. /lab/dom0-lib.sh
lab_begin smoke
DOMU=smoke-domu
DOMU_IP=10.99.0.2

# 1. Node.js
NODE_V=$(node --version 2>&1)
lab_log "node $NODE_V at $(command -v node)"
lab_check "node >= 20.19 (got $NODE_V)" node -e '
  const [a, b] = process.versions.node.split(".").map(Number);
  process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)'

# 2. remusdb doctor (from the project directory, as a user would)
cd "$REMUSDB" || lab_fail "no project at $REMUSDB"
lab_step doctor 120 node bin/remusdb doctor --json > /tmp/doctor.json 2> /tmp/doctor.err
rc=$?
lab_log "doctor rc=$rc stdout:"; cat /tmp/doctor.json; echo
[ -s /tmp/doctor.err ] && { lab_log "doctor stderr:"; cat /tmp/doctor.err; }
cp /tmp/doctor.json "$LAB_OUT/doctor.json"; cp /tmp/doctor.err "$LAB_OUT/doctor.err"
if [ $rc != 0 ]; then
  lab_fail "remusdb doctor exited rc=$rc: $(head -c 300 /tmp/doctor.err | tr '\n' ' ' | sed 's/ *$//')"
else
  for cap in addon.xen xen; do
    st=$(node -e '
      const r = JSON.parse(require("fs").readFileSync("/tmp/doctor.json", "utf8"));
      const c = (r.capabilities || []).find((x) => x.name === process.argv[1]);
      console.log(c ? (c.available ? "available" : "unavailable: " + c.reason) : "missing");' "$cap" 2>&1)
    [ "$st" = available ] && lab_log "ok: doctor $cap available" || lab_fail "doctor $cap $st"
  done
fi
cd /root || true

# 3. PV domU with the counter service
lab_log "xen: $(xl info | awk -F': ' '/^xen_version/ { v = $2 } /^free_memory/ { m = $2 } END { print v ", free " m " MiB" }')"
lab_bridge_up
lab_domu_cfg "$DOMU" "$DOMU_IP/24" 00:16:3e:00:00:02 128 > /tmp/$DOMU.cfg
if lab_step create 180 xl create /tmp/$DOMU.cfg; then
  xl list
  if lab_wait_http "$DOMU_IP" 7777 /counter 240 "$DOMU"; then
    boot1=$(lab_http "$DOMU_IP" 7777 /boot); c1=$(lab_http "$DOMU_IP" 7777 /counter)
    sleep 3
    boot2=$(lab_http "$DOMU_IP" 7777 /boot); c2=$(lab_http "$DOMU_IP" 7777 /counter)
    lab_log "counter $c1 -> $c2 over ~3 s; boot id $boot1 / $boot2"
    echo "counter1=$c1 counter2=$c2 boot=$boot1" > "$LAB_OUT/counter.txt"
    if [[ "$c1" =~ ^[0-9]+$ && "$c2" =~ ^[0-9]+$ ]] && [ "$c2" -gt "$c1" ]; then
      lab_log "ok: counter increases"
    else
      lab_fail "counter did not increase ('$c1' -> '$c2')"
    fi
    [ -n "$boot1" ] && [ "$boot1" = "$boot2" ] || lab_fail "guest boot id changed ('$boot1' -> '$boot2')"
  else
    lab_fail "domU counter service did not answer on $DOMU_IP:7777"
  fi
  lab_log "guest console (tail):"; lab_guest_log "$DOMU" | tail -n 15
  # 4. destroy
  lab_step destroy 120 xl destroy "$DOMU" || lab_fail "xl destroy failed"
  xl list | grep -q "^$DOMU " && lab_fail "$DOMU still listed after xl destroy"
else
  lab_fail "xl create failed"
  lab_guest_log "$DOMU" | tail -n 30
fi
xl list

lab_result

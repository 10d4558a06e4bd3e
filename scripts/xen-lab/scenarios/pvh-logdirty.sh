#!/bin/bash
# xenlab-machine: XENLAB_CPU=qemu64,+svm,+npt XENLAB_HV=stock XENLAB_XEN_ARGS=hap_2mb=false,hap_1gb=false
# pvh-logdirty: does live log-dirty of a PVH domU work on this hypervisor and machine, with
# Xen's own tools only (no remusdb)? A live `xl migrate` to localhost runs libxc's HVM save
# with log-dirty rounds while the guest runs; afterwards the guest must answer with the same
# boot id and no kernel BUG in its console. Knobs: XENLAB_HV (stock: HAP only; shadow: also
# shadow paging), LAB_DOMU_EXTRA (e.g. "hap = 0": log-dirty by shadow paging).
. /lab/dom0-lib.sh
lab_begin pvh-logdirty
export LAB_DOMU_TYPE=pvh
IP=10.99.0.2
xl info | grep -E '^(virt_caps|xen_version|xen_extra)' | sed 's/^/  /'
[ -n "${LAB_DOMU_EXTRA:-}" ] && lab_log "domU config adds: $LAB_DOMU_EXTRA"
lab_domu_up domu "$IP" 00:16:3e:00:00:02 128 || { lab_result; exit; }
t=$(lab_now)
timeout 900 xl -vv migrate -s "" domu "xl migrate-receive" > /tmp/migrate.log 2>&1
rc=$?
lab_log "xl migrate (live) rc=$rc in $(lab_since "$t") s"
grep -iE 'error|fail|iteration|complete|migration' /tmp/migrate.log | head -20 | sed 's/^/  /'
xl list
sleep 5
c=$(lab_http "$IP" 7777 /counter 10)
b=$(lab_http "$IP" 7777 /boot 10)
lab_log "after the migration: boot $b counter $c"
bugs=$(lab_guest_log domu | grep -E 'BUG|Kernel panic|Oops' | head -3)
[ -z "$bugs" ] || lab_fail "the guest crashed during live log-dirty: $bugs"
[ "$rc" = 0 ] || lab_fail "xl migrate failed (rc $rc)"
[ -n "$b" ] && [ "$b" = "$boot0" ] || lab_fail "the migrated guest does not answer with boot id $boot0 (got '$b')"
cp /tmp/migrate.log "$LAB_OUT/" 2>/dev/null
lab_result

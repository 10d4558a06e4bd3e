#!/bin/bash
# xenlab-machine: XENLAB_CPU=qemu64,+svm,+npt XENLAB_HV=stock XENLAB_XEN_ARGS=hap_2mb=false,hap_1gb=false
# protect-pvh: the protect scenario (scenarios/protect.sh: protect, client reads, destroy the
# primary, the backup resumes with the same boot id and a counter that continues) with a PVH
# domU, on the hypervisor Debian 12 ships (bookworm-security, no shadow paging: PV could not
# be protected on it) and a CPU with SVM + nested paging, so log-dirty runs on HAP. The domU
# is the lab's PV kernel and initramfs booted as `type = "pvh"`. The save is libxc's HVM
# ops (HVM_CONTEXT, HVM_PARAMS records; no device model, so no EMULATOR records) through the
# same engine, replica and `xl migrate-receive -r -e` as PV.
export LAB_DOMU_TYPE=pvh LAB_SCENARIO_NAME=protect-pvh
xl info | grep -E '^(virt_caps|xen_version|xen_extra)' | sed 's/^/  /'
xl info | grep -q '^virt_caps.*hap' || { echo "XENLAB RESULT protect-pvh: FAIL the hypervisor offers no HAP (virt_caps)"; exit 1; }
. /lab/scenarios/protect.sh

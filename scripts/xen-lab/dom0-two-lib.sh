# dom0-two-lib.sh: helpers for the two-host scenarios (scenarios/two-host-a.sh, -b.sh), sourced
# in dom0 after dom0-lib.sh. run-two.sh puts it in each host's share as /lab/dom0-two-lib.sh.
# The two dom0s are two QEMU VMs whose only link is a QEMU socket netdev (a virtio NIC in
# each); each dom0 puts that NIC on the lab bridge with its vifs, so both bridges form one
# 10.99.0.0/24 segment. /lab/env gives TWO_SELF_IP, TWO_PEER_IP, TWO_HB_MS, TWO_INTERVAL_MS.
# The host talks to a dom0 through files in its share: /lab/killed (QEMU A was killed),
# /lab/abort (the other host failed: stop waiting).

lab_up() { cut -d' ' -f1 /proc/uptime; }
lab_mark() { echo "XENLAB $LAB_NAME: $*" >&7; } # a marker run-two.sh sees on the serial console

lab_nic_name() { # the virtio NIC (no udev in dom0: found by its driver, else by its name)
  local d n
  for d in /sys/class/net/*; do
    n=${d##*/}
    [ "$(basename "$(readlink -f "$d/device/driver" 2>/dev/null)")" = virtio_net ] && { echo "$n"; return 0; }
  done
  ls /sys/class/net | grep -m1 -E '^(eth|enp|ens)'
}

lab_link_up() { # lab_link_up [IP/PREFIX]: lab bridge (with IP if given), the link NIC on it
  local nic i
  modprobe virtio_net 2>/dev/null
  for i in $(seq 1 20); do nic=$(lab_nic_name); [ -n "$nic" ] && break; sleep 0.5; done
  [ -n "$nic" ] || { lab_fail "no virtio NIC in /sys/class/net ($(ls /sys/class/net | tr '\n' ' '))"; return 1; }
  ip link show "$LAB_BRIDGE" > /dev/null 2>&1 || ip link add "$LAB_BRIDGE" type bridge
  ip link set "$LAB_BRIDGE" type bridge stp_state 0 forward_delay 0 2>/dev/null
  ip link set "$nic" master "$LAB_BRIDGE" && ip link set "$nic" up && ip link set "$LAB_BRIDGE" up ||
    { lab_fail "could not put $nic on $LAB_BRIDGE"; return 1; }
  [ -n "${1:-}" ] && ip addr add "$1" dev "$LAB_BRIDGE" 2>/dev/null
  lab_log "link: $nic ($(cat "/sys/class/net/$nic/address")) on $LAB_BRIDGE ${1:-(no address yet)}"
}

lab_wait_ping() { # lab_wait_ping IP SECONDS: until IP answers a ping (or /lab/abort appears)
  local end=$((SECONDS + $2)) t
  t=$(lab_now)
  while [ $SECONDS -lt $end ]; do
    ping -c1 -W1 "$1" > /dev/null 2>&1 && { lab_log "$1 answers ping after $(lab_since "$t")s"; return 0; }
    [ -e /lab/abort ] && { lab_log "host says abort"; return 1; }
    sleep 1
  done
  return 1
}

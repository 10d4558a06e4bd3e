# dom0-two-lib.sh: helpers for the two-host scenarios (scenarios/two-host-a.sh, -b.sh, -c.sh),
# sourced in dom0 after dom0-lib.sh. run-two.sh puts it in each host's share as
# /lab/dom0-two-lib.sh. The dom0s are QEMU VMs whose only link is a QEMU socket netdev (a virtio
# NIC in each); each dom0 puts that NIC on the lab bridge with its vifs, so the bridges form one
# 10.99.0.0/24 segment. /lab/env gives TWO_ROLE, TWO_SELF_IP, TWO_PEER_IP, TWO_DISK,
# TWO_REPROTECT, TWO_HB_MS (resolved by run-two.sh, so all hosts agree), the other knobs as set,
# and for C TWO_BOOT0 (the domU's boot id as B saw it in the first phase).
# The host talks to a dom0 through files in its share: /lab/killed (the VM this host backs up
# was killed: A for B, B for C), /lab/abort (another host failed: stop waiting).

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

# The client of a backup host: reads the domU's counter (IP:7777/counter; with TWO_DISK=1 also
# /disk, the last block its hook stamped) over the link while the other host protects it, keeping
# the highest values seen, until the host killed that host's VM (/lab/killed) and this host's
# backup failed over (FAILOVER in BACKUP_ERR); then until the first answer from the resumed
# domain. With the plug buffer an answer leaves the protecting host only once its checkpoint is
# acknowledged, so nothing a client saw may be lost by the failover. Bounded: AFTER_S after the
# kill, CLIENT_S (1800) in all; /lab/abort before the kill ends it. VICTIM names the protecting
# host in the log. Sets reads seen dseen t_last killed_at fo_at c2 t_after falsefo boot2.
lab_two_client() { # lab_two_client IP BACKUP_ERR VICTIM AFTER_S [CLIENT_S]
  local ip=$1 err=$2 victim=$3 after_s=$4 end v d after to
  seen=0; dseen=0; reads=0; t_last=; killed_at=; fo_at=; c2=; t_after=; falsefo=0; boot2=
  end=$((SECONDS + ${5:-1800}))
  while [ $SECONDS -lt $end ]; do
    if [ -z "$killed_at" ] && [ -e /lab/killed ]; then
      killed_at=$(lab_up); end=$((SECONDS + after_s))
      lab_mark "host killed $victim (noticed at uptime $killed_at; last answer before at ${t_last:-none}, highest seen $seen$([ "${TWO_DISK:-0}" = 1 ] && echo ", block $dseen"))"
    fi
    [ -e /lab/abort ] && [ -z "$killed_at" ] && { lab_fail "host aborted the run before the kill of $victim"; break; }
    if [ -z "$fo_at" ] && grep -q FAILOVER "$err"; then
      fo_at=$(lab_up)
      lab_mark "failover: $(grep -m1 FAILOVER "$err")"
      [ -z "$killed_at" ] && { falsefo=1; lab_fail "the backup failed over while $victim was alive (heartbeat ${TWO_HB_MS:-?} ms too short?)"; }
    fi
    after=$fo_at # a read that starts once the backup has failed over counts as after
    to=$([ -n "$killed_at" ] && echo 3 || echo 10) # plug: answers wait for an ack
    v=$(lab_http "$ip" 7777 /counter "$to")
    if [[ "$v" =~ ^[0-9]+$ ]]; then
      if [ -z "$after" ]; then
        reads=$((reads + 1)); t_last=$(lab_up); [ "$v" -gt "$seen" ] && seen=$v
        if [ "${TWO_DISK:-0}" = 1 ]; then
          d=$(lab_http "$ip" 7777 /disk "$to")
          [[ "$d" =~ ^[0-9]+$ ]] && [ "$d" -gt "$dseen" ] && dseen=$d
        fi
      else
        c2=$v; t_after=$(lab_up); break
      fi
    fi
    [ $falsefo = 1 ] && break
    sleep 0.5
  done
  if [ -n "$c2" ]; then
    boot2=$(lab_http_body "$ip" 7777 /boot 30)
    lab_mark "answered after failover: counter $c2 boot $boot2"
  fi
  return 0
}

# The checks after lab_two_client: the kill happened, the client read before it, the backup
# failed over, and the domain answered with the same boot id (resumed, not rebooted) and a
# counter at least the highest value seen.
lab_two_client_checks() { # lab_two_client_checks VICTIM AFTER_S BOOT0
  [ -n "$killed_at" ] || lab_fail "the host never killed $1"
  [ "$reads" -ge 3 ] || lab_fail "only $reads counter reads over the link before the crash"
  [ -n "$fo_at" ] || lab_fail "no FAILOVER line in the backup's log"
  if [ -n "$c2" ]; then
    if [ -n "$boot2" ] && [ "$boot2" = "$3" ]; then lab_log "ok: same boot id: resumed, not rebooted"
    else lab_fail "boot id changed ('$3' -> '$boot2')"; fi
    if [ "$c2" -ge "$seen" ]; then lab_log "ok: counter $c2 >= highest seen $seen"
    else lab_fail "a client saw $seen, which the failover lost (resumed at $c2)"; fi
  else
    [ "$falsefo" = 1 ] || lab_fail "the domU did not answer on this host within $2 s of the kill"
  fi
}

lab_diff() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a - b }'; } # A - B, or nothing

# The client's figures for a NUMBERS line (uptimes in dom0's clock).
lab_two_client_numbers() {
  echo "reads_before=$reads seen=$seen after=${c2:-none} killed_seen_uptime=${killed_at:-none} last_answer_to_noticed_kill_s=$(lab_diff "$killed_at" "$t_last") noticed_kill_to_failover_line_s=$(lab_diff "$fo_at" "$killed_at") noticed_kill_to_answer_s=$(lab_diff "$t_after" "$killed_at") failover_line_to_answer_s=$(lab_diff "$t_after" "$fo_at")"
}

# After a failover with TWO_DISK=1 (as protect-disk.sh checks it): the resumed guest goes on
# stamping blocks (3 more within 120 s) with its own disk checks passing (/diskbad empty), it
# resumed at or beyond the last block a client saw (dseen: acknowledged, so on the backup's
# disk), and this host's replica image (IMAGE, the disk the resumed domain runs on) holds blocks
# 1..highest with no hole and no wrong stamp, highest at least the block it resumed at.
# Sets dres dlater dbad dchecks dhi dholes dwrong.
lab_two_disk_checks() { # lab_two_disk_checks IP IMAGE
  local ip=$1 t scan
  dres=$(lab_http_body "$ip" 7777 /disk 60); dlater=$dres
  [[ "$dres" =~ ^[0-9]+$ ]] || { lab_fail "the resumed guest publishes no block number ('$dres')"; dres=; }
  t=$(lab_now)
  while [ -n "$dres" ] && [ "$(lab_since "$t" | cut -d. -f1)" -lt 120 ]; do
    dlater=$(lab_http "$ip" 7777 /disk 5)
    [[ "$dlater" =~ ^[0-9]+$ ]] && [ "$dlater" -ge $((dres + 3)) ] && break
    sleep 1
  done
  dbad=$(lab_http "$ip" 7777 /diskbad 5); dchecks=$(lab_http "$ip" 7777 /diskchecks 5)
  lab_log "resumed guest: blocks ${dres:-?} -> $dlater, $dchecks checks in all, mismatches: '$dbad' (a client saw block $dseen before the crash)"
  if [ -n "$dres" ]; then
    [[ "$dlater" =~ ^[0-9]+$ ]] && [ "$dlater" -ge $((dres + 3)) ] || lab_fail "the resumed guest did not go on writing its disk ($dres -> $dlater)"
    [ "$dres" -ge "$dseen" ] || lab_fail "a client saw block $dseen, which the failover lost (resumed at block $dres)"
  fi
  [ -z "$dbad" ] || lab_fail "disk and memory disagree after failover: $dbad"
  [ -f "$2" ] || lab_log "no replica image $2; the run folder holds: $(ls "$(dirname "$2")" 2>&1 | tr '\n' ' ')"
  scan=$(lab_disk_scan "$2")
  if ! [[ "$scan" =~ ^[0-9]+\ [0-9]+\ [0-9]+$ ]]; then
    dhi='?'; dholes='?'; dwrong='?'; lab_fail "$scan"; return 0
  fi
  read -r dhi dholes dwrong <<< "$scan"
  lab_log "replica image $2: highest stamped block $dhi, holes $dholes, wrong stamps $dwrong (guest now at $(lab_http "$ip" 7777 /disk 5))"
  [ "$dholes" = 0 ] && [ "$dwrong" = 0 ] || lab_fail "the replica image has holes ($dholes) or wrong stamps ($dwrong)"
  if [ -n "$dres" ] && [ "$dhi" -lt "$dres" ]; then
    lab_fail "the replica image ends at block $dhi, before the block the resumed guest had written ($dres)"
  fi
  return 0
}

# The disk figures of lab_two_disk_checks for a NUMBERS line.
lab_two_disk_numbers() {
  echo "block_seen=$dseen block_resumed=${dres:-none} block_later=$dlater disk_checks=$dchecks diskbad=${dbad:-none} image_highest=$dhi image_holes=$dholes image_wrong=$dwrong"
}

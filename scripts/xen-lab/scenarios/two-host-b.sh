#!/bin/bash
# two-host-b: the BACKUP dom0 of the two-host lab (run by scripts/xen-lab/run-two.sh). It puts
# the link NIC on xenbr0, starts `remusdb backup --listen 0.0.0.0:7400`, and only then takes
# its address (10.99.0.10), so A's ping to it means "the backup listens". A client here reads
# the domU's counter (10.99.0.2:7777) over the link while A protects it, keeping the highest
# value seen. The host SIGKILLs QEMU A and writes /lab/killed; the backup notices the silent
# primary (heartbeat timeout), resumes the domU from the last acknowledged checkpoint on this
# host (FAILOVER in its log), and the client's next answer comes from B's bridge. Checks: no
# failover before the kill, an answer after it, the same boot id (resumed, not rebooted),
# counter >= the highest value any client saw (plug buffering: nothing lost was shown).
. /lab/dom0-lib.sh
. /lab/dom0-two-lib.sh
lab_begin two-host-b
IP=10.99.0.2
SELF=${TWO_SELF_IP:-10.99.0.10}
AFTER_S=${TWO_AFTER_KILL_S:-360}
lab_link_up || { lab_result; exit; }

cd "$REMUSDB" || lab_fail "no project"
export REMUSDB_RUN_DIR=/tmp/remusdb-run
node bin/remusdb backup --listen 0.0.0.0:7400 --insecure > /tmp/backup.out 2> /tmp/backup.err &
BP=$!
end=$((SECONDS + 120))
until ss -ltn 2>/dev/null | grep -q ':7400 '; do
  kill -0 $BP 2>/dev/null && [ $SECONDS -lt $end ] || { lab_fail "backup did not listen on 7400"; cat /tmp/backup.err; lab_result; exit; }
  sleep 0.5
done
ip addr add "$SELF/24" dev "$LAB_BRIDGE"
lab_mark "backup listening, address $SELF up"

# 1. A's domU answers over the link (A boots alongside, creates the domU, then protects it).
lab_wait_http "$IP" 7777 /boot 1200 || { lab_fail "A's domU never answered over the link"; lab_result; exit; }
boot0=$(lab_http "$IP" 7777 /boot 10)
lab_mark "domU answers over the link, boot $boot0"

# 2. Client loop until the first answer after the failover (bounded).
seen=0; reads=0; t_last=; killed_at=; fo_at=; c2=; t_after=; falsefo=0
end=$((SECONDS + 1800))
while [ $SECONDS -lt $end ]; do
  if [ -z "$killed_at" ] && [ -e /lab/killed ]; then
    killed_at=$(lab_up); end=$((SECONDS + AFTER_S))
    lab_mark "host killed A (noticed at uptime $killed_at; last answer before at ${t_last:-none}, highest seen $seen)"
  fi
  [ -e /lab/abort ] && [ -z "$killed_at" ] && { lab_fail "host aborted the run (A failed) before the kill"; break; }
  if [ -z "$fo_at" ] && grep -q FAILOVER /tmp/backup.err; then
    fo_at=$(lab_up)
    lab_mark "failover: $(grep -m1 FAILOVER /tmp/backup.err)"
    [ -z "$killed_at" ] && { falsefo=1; lab_fail "the backup failed over while A was alive (heartbeat ${TWO_HB_MS:-?} ms too short?)"; }
  fi
  after=$fo_at # a read that starts once the backup has failed over counts as after
  v=$(lab_http "$IP" 7777 /counter "$([ -n "$killed_at" ] && echo 3 || echo 10)") # plug: answers wait for an ack
  if [[ "$v" =~ ^[0-9]+$ ]]; then
    if [ -z "$after" ]; then
      reads=$((reads + 1)); t_last=$(lab_up); [ "$v" -gt "$seen" ] && seen=$v
    else
      c2=$v; t_after=$(lab_up); break
    fi
  fi
  [ $falsefo = 1 ] && break
  sleep 0.5
done
boot2=$(lab_http "$IP" 7777 /boot 10)
[ -n "$c2" ] && lab_mark "answered after failover: counter $c2 boot $boot2"
xl list

# 3. Checks.
[ -n "$killed_at" ] || lab_fail "the host never killed A"
[ "$reads" -ge 3 ] || lab_fail "only $reads counter reads over the link before the crash"
[ -n "$fo_at" ] || lab_fail "no FAILOVER line in the backup's log"
if [ -n "$c2" ]; then
  [ -n "$boot2" ] && [ "$boot2" = "$boot0" ] && lab_log "ok: same boot id: resumed, not rebooted" || lab_fail "boot id changed ('$boot0' -> '$boot2')"
  if [ "$c2" -ge "$seen" ]; then lab_log "ok: counter $c2 >= highest seen $seen"
  else lab_fail "a client saw $seen, which the failover lost (resumed at $c2)"; fi
else
  [ $falsefo = 1 ] || lab_fail "the domU did not answer on B within ${AFTER_S} s of the kill"
fi
d() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a - b }'; }
echo "XENLAB NUMBERS two-host-b: reads_before=$reads seen=$seen after=${c2:-none} killed_seen_uptime=${killed_at:-none} last_answer_to_noticed_kill_s=$(d "$killed_at" "$t_last") noticed_kill_to_failover_line_s=$(d "$fo_at" "$killed_at") noticed_kill_to_answer_s=$(d "$t_after" "$killed_at") failover_line_to_answer_s=$(d "$t_after" "$fo_at")" >&7
grep -E "primary|FAILOVER|resum|silent" /tmp/backup.err | head -20 | sed 's/^/  backup: /'
kill -TERM $BP 2>/dev/null; sleep 2
cp /tmp/backup.out /tmp/backup.err "$LAB_OUT/" 2>/dev/null
lab_result

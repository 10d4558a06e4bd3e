# dom0-two-lib.sh: helpers for the two-host scenarios (scenarios/two-host-a.sh, -b.sh, -c.sh),
# sourced in dom0 after dom0-lib.sh. run-two.sh puts it in each host's share as
# /lab/dom0-two-lib.sh. The dom0s are QEMU VMs whose only link is a QEMU socket netdev (a virtio
# NIC in each); each dom0 puts that NIC on the lab bridge with its vifs, so the bridges form one
# 10.99.0.0/24 segment. /lab/env gives TWO_ROLE, TWO_SELF_IP, TWO_PEER_IP, TWO_DISK,
# TWO_REPROTECT, TWO_HB_MS, TWO_GUEST (resolved by run-two.sh, so all hosts agree), the other
# knobs as set, and for C TWO_BOOT0 (the domU's boot id as B saw it in the first phase).
# The host talks to a dom0 through files in its share: /lab/killed (the VM this host backs up
# was killed: A for B, B for C), /lab/abort (another host failed: stop waiting); with
# TWO_GUEST=pg also /lab/go (for the protecting host: the backup host's clients have had their
# protected load, mark ready-to-kill now) and, for C, /lab/b-acked.ids (B's ledger).

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

lab_wait_file() { # lab_wait_file FILE SECONDS: until FILE exists (0), or /lab/abort appears or SECONDS pass (1)
  local end=$((SECONDS + $2))
  until [ -e "$1" ]; do
    [ ! -e /lab/abort ] && [ $SECONDS -lt $end ] || return 1
    sleep 1
  done
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

# TWO_GUEST=pg: the clients of a backup host (B in the first phase, C in the second) are
# protect-pg's (dom0-pg-lib.sh, sourced by the scenario, with W, IP, MODE = PG_NET, RUN_S,
# CLIENTS, LEDGERS set): pgbench's pipelined TPC-B and the commit ledger, over the link to the
# domU's PostgreSQL while the other host protects it.
# Waits until PostgreSQL answers and this host's backup has committed TWO_MIN_ACKED epochs (the
# load is measured under protection), within SECONDS; /lab/abort ends it. Sets boot1 (the
# guest's boot id). 1 after lab_fail.
lab_two_pg_wait_db() { # lab_two_pg_wait_db SECONDS
  local end=$((SECONDS + $1)) ep=
  pg_wait_ok "$1" ||
    { lab_fail "PostgreSQL in the domU never answered over the link ($([ -e /lab/abort ] && echo 'host aborted' || echo "$1 s"))"; return 1; }
  while :; do
    ep=$(lab_status | lab_field backup committedEpoch)
    [[ "$ep" =~ ^[0-9]+$ ]] && [ "$ep" -ge "${TWO_MIN_ACKED:-3}" ] && break
    [ ! -e /lab/abort ] && [ $SECONDS -lt $end ] ||
      { lab_fail "this host's backup committed no ${TWO_MIN_ACKED:-3} epochs within $1 s (committed '$ep')"; return 1; }
    sleep 5
  done
  # Any new connection waits for a checkpoint (all of it with plug, its SYN-ACK with pgwire: not a
  # PostgreSQL port); early checkpoints of a busy guest took over 60 s under TCG.
  boot1=$(lab_http_body "$IP" 7777 /boot 300)
  [ -n "$boot1" ] || { lab_fail "the guest's boot id could not be read (GET /boot stayed empty)"; return 1; }
  lab_log "PostgreSQL answers, this host's backup committed epoch $ep: $(psql -X -Atc 'SELECT version()' | cut -c1-40)"
}

# The load and the crash, as protect-pg's: the ledger (LEDGERS clients numbered from FIRST: B's
# from 1, C's from 51, so their ids never meet) and pgbench for RUN_S while VICTIM protects the
# domain; then pgbench again (the crash run, stopped after the checks; TWO_PG_CRASH_S is only its
# bound, 3600) while the ledger goes on. Once this host's backup committed epochs over RUN_S/2
# it marks "protected load done" (run-two.sh then writes the protecting host's /lab/go: it marks
# ready-to-kill, and the host kills it) and waits for /lab/killed (TWO_PG_KILL_WAIT_S, 900; a
# FAILOVER before it is a false failover), then for FAILOVER in BACKUP_ERR (AFTER_S). After the
# kill (TK: when this dom0 saw /lab/killed, polled every 0.5 s): the resumed guest has the same
# boot (boot0), a commit sent after the kill is acknowledged, the agent signalled PostgreSQL
# (more "SIGUSR2 sent" lines than AGENT0, a failover line other than PGLAST0), every id of
# this host's ledger is in the database (acked_lost=0) and TPC-B's sums agree; TX_C = the crash
# run's transactions in the resumed database (pgbench_history's rows). The ledger goes on.
# 1 when the kill or the failover did not come (after lab_fail).
# shellcheck disable=SC2034,SC2154 # TK and the figures for dom0-pg-lib.sh and the NUMBERS line; ep_b from it
lab_two_pg_load() { # lab_two_pg_load BACKUP_ERR VICTIM AFTER_S FIRST [AGENT0 [PGLAST0]]
  local err=$1 victim=$2 after_s=$3 end h0 h1
  falsefo=0; killed_at=; fo_at=; TK=; TX_C=; sessions_before=; sessions_after=
  pg_ledgers "$LEDGERS" "$4"
  pg_load_phase protected $((RUN_S * 3)) # pgbench's connections took 70-90 s here (pg_load_phase)
  TPS_P=$TPS TX_P=$TX LAT_P50=$L50 LAT_P99=$L99 N_P=$LN LR_P=$LR CONN_P=$CONN_MS
  lab_log "protected by $victim ($MODE): pgbench $TPS_P tps after connecting in ${CONN_P:-?} ms; ledger $N_P" \
    "commits in $WIN_S s, latency p50 $LAT_P50 ms p99 $LAT_P99 ms"
  grep -E "^progress|aborted|error" "$W/pgbench-protected.out" | tail -n 8 | sed 's/^/  pgbench: /'
  [ "$N_P" -gt 0 ] || lab_fail "no ledger commit was acknowledged under protection"
  h0=$(pg_history)
  pg_bench_run crash "${TWO_PG_CRASH_S:-3600}"; PGB_CRASH=$PGB
  pg_crash_run_committing "$h0" $((RUN_S * 3)) || true
  pg_protected_while $((RUN_S / 2)) backup committedEpoch "committed epoch"
  sessions_before=$(pg_sessions)
  lab_mark "protected load done: committed epoch $ep_b, $(cat "$W"/ledger-*.log | wc -l) ledger commits acknowledged, history $h0"
  end=$((SECONDS + ${TWO_PG_KILL_WAIT_S:-900}))
  until [ -e /lab/killed ]; do
    if grep -q FAILOVER "$err"; then
      falsefo=1; lab_fail "the backup failed over while $victim was alive (heartbeat ${TWO_HB_MS:-?} ms too short?)"; break
    fi
    [ -e /lab/abort ] && { lab_fail "host aborted the run before the kill of $victim"; break; }
    [ $SECONDS -lt $end ] || { lab_fail "the host did not kill $victim within ${TWO_PG_KILL_WAIT_S:-900} s of 'protected load done'"; break; }
    sleep 0.5
  done
  if [ ! -e /lab/killed ] || [ $falsefo = 1 ]; then
    kill -TERM "$PGB_CRASH" 2> /dev/null; wait "$PGB_CRASH" 2> /dev/null
    return 1
  fi
  TK=${EPOCHREALTIME/./}; killed_at=$(lab_up)
  lab_mark "host killed $victim (noticed at uptime $killed_at; $(cat "$W"/ledger-*.log | wc -l) ledger commits acknowledged so far)"
  end=$((SECONDS + after_s))
  until grep -q FAILOVER "$err" || [ $SECONDS -ge $end ]; do sleep 0.5; done
  if ! grep -q FAILOVER "$err"; then
    lab_fail "no FAILOVER line in the backup's log within $after_s s of the kill"
    kill -TERM "$PGB_CRASH" 2> /dev/null; wait "$PGB_CRASH" 2> /dev/null
    return 1
  fi
  fo_at=$(lab_up)
  lab_mark "failover: $(grep -m1 FAILOVER "$err")"
  pg_wait_resumed
  [ -n "$boot2" ] && lab_mark "answered after failover: boot $boot2"
  pg_first_commit
  pg_agent_check "${5:-0}" "${6:-}"
  kill -TERM "$PGB_CRASH" 2> /dev/null; wait "$PGB_CRASH" 2> /dev/null
  grep -E "aborted|error|^progress" "$W/pgbench-crash.out" | tail -n 6 | sed 's/^/  pgbench: /'
  sessions_after=$(pg_sessions)
  PGB_ABORTED=$(grep -c 'aborted in command' "$W/pgbench-crash.out")
  h1=$(pg_history)
  [[ "$h0" =~ ^[0-9]+$ && "$h1" =~ ^[0-9]+$ ]] && TX_C=$((h1 - h0))
  # The crash run's transactions must exist for the balance check to say anything.
  [[ "$TX_C" =~ ^[0-9]+$ ]] && [ "$TX_C" -gt 0 ] ||
    lab_fail "no TPC-B transaction of the crash run in the resumed database (history rows '$h0' -> '$h1')"
  pg_acked_ids > "$W/acked.ids"
  pg_lost_check "$W/acked.ids"
  pg_tpcb_check "$TX_P transactions protected, ${TX_C:-no} of the crash run in the database"
}

# lab_two_pg_load's figures for a NUMBERS line (kill times: as this dom0 noticed the kill).
lab_two_pg_numbers() {
  echo "net=$MODE kernel=${PG_KERNEL:-stock} acked_lost=$LOST acked=$ACKED present=$PRESENT" \
    "tps_protected=$TPS_P tx_protected=$TX_P tx_crash_run_present=$TX_C ledger_commits_protected=$N_P" \
    "pgbench_connect_ms_protected=$CONN_P ledger_commits_per_s_protected=$LR_P" \
    "commit_p50_ms=$LAT_P50 commit_p99_ms=$LAT_P99 noticed_kill_to_failover_line_s=$(lab_diff "$fo_at" "$killed_at")" \
    "kill_to_answer_s=$FAILOVER_S kill_to_first_ack_s=$KILL_TO_ACK_S" \
    "ledger_sessions_new_after_kill=$([ -n "$sessions_after" ] && echo $((sessions_after - sessions_before))) pgbench_clients_aborted=$PGB_ABORTED" \
    "agent_signalled=$AGENT_SIGNALLED pg_failover_logged=$PG_ABORT_LOGGED"
}

# The backup side's start (B and C): the link NIC on the bridge, the nbd module when the domU
# has a replicated disk (the backup names a free /dev/nbdN at the first checkpoint), then
# `remusdb backup` on 0.0.0.0:7400, and only once it listens this host's address (so the
# primary's ping means "the backup listens"). With REUSE_IMAGE, the backup keeps that old
# copy of the domain's disk (--reuse-disk): a session copies only the blocks that differ.
# Sets BP (the backup's pid). 1 on a failure.
lab_two_backup_up() { # lab_two_backup_up SELF_IP DISK [REUSE_IMAGE]
  local end reuse=()
  [ -n "${3:-}" ] && reuse=(--reuse-disk "$3")
  lab_link_up || return 1
  [ "$2" = 1 ] && { modprobe nbd nbds_max=8 || lab_fail "modprobe nbd failed"; }
  cd "$REMUSDB" || { lab_fail "no project"; return 1; }
  export REMUSDB_RUN_DIR=/tmp/remusdb-run
  node bin/remusdb backup --listen 0.0.0.0:7400 --insecure "${reuse[@]}" > /tmp/backup.out 2> /tmp/backup.err &
  BP=$!
  end=$((SECONDS + 120))
  until ss -ltn 2>/dev/null | grep -q ':7400 '; do
    if ! kill -0 $BP 2>/dev/null || [ $SECONDS -ge $end ]; then
      lab_fail "backup did not listen on 7400"; cat /tmp/backup.err; return 1
    fi
    sleep 0.5
  done
  ip addr add "$1/24" dev "$LAB_BRIDGE"
  lab_mark "backup listening, address $1 up"
}

# Counter mode after the primary's host was killed (B for A, C for B): the client loop until
# the first answer after the failover, its checks and, with a disk, the disk checks against
# this host's replica image; prints "XENLAB NUMBERS NAME: ...".
lab_two_counter_after_kill() { # lab_two_counter_after_kill IP VICTIM AFTER_S BOOT0 DISK IMAGE NAME
  local disknum=
  lab_two_client "$1" /tmp/backup.err "$2" "$3"
  xl list
  lab_two_client_checks "$2" "$3" "$4"
  if [ "$5" = 1 ] && [ -n "$c2" ]; then
    lab_two_disk_checks "$1" "$6"
    disknum=" $(lab_two_disk_numbers)"
    xl block-list "$DOMU" 2>&1 | sed 's/^/  /'
  fi
  echo "XENLAB NUMBERS $7: $(lab_two_client_numbers)$disknum" >&7
}

# A backup host's PostgreSQL knobs (B and C): the work folder and protect-pg's load knobs.
# shellcheck disable=SC2034 # dom0-pg-lib.sh's
lab_two_pg_knobs() {
  W=/tmp/pg
  MODE=${PG_NET:-plug}
  RUN_S=${PG_SECONDS:-45}
  CLIENTS=${PG_CLIENTS:-2}
  LEDGERS=${PG_LEDGERS:-2}
  mkdir -p $W
}

# Ends this host's backup once its checks are done. After a failover the backup serves the resumed
# domU's disk (/dev/nbdM): the domU goes first, or its blkback keeps failing I/O on a device whose
# server is gone and dom0's poweroff waited the host's full 180 s bound (20261206-053404, C).
lab_two_stop_backup() { # lab_two_stop_backup BACKUP_PID
  xl destroy "$DOMU" 2> /dev/null
  kill -TERM "$1" 2> /dev/null; sleep 2
}

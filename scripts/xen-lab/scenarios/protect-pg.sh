#!/bin/bash
# protect-pg: PostgreSQL in a protected domU loses no acknowledged commit when its host dies.
# xenlab-prepare: pg-guest.sh
# xenlab-prepare: guest-kernel.sh
# xenlab-bound: 2400
#
# The guest: the lab's PV domU whose data disk (xvdb, ext4) is pg-guest.sh's disk — the
# patched PostgreSQL 15 of guest-patches with its PGDATA (fsync and synchronous_commit on) —
# served and replicated by `remusdb protect --disk-image` (/dev/nbd0, blkback), its memory
# checkpointed and its vif's output held (PG_NET: plug = every output held, as Remus;
# pgwire = nfqueue with --commit-protection pgwire, only commit acknowledgements held, found by
# parsing PostgreSQL's protocol; dscp = nfqueue with --commit-protection dscp: the server marks
# its commit acknowledgements with the guest kernel's TCP_REMUS_PROTECT and only marked packets
# are held; the run fails if none was). PG_KERNEL: stock = dom0's Debian kernel; patched =
# scripts/xen-lab/guest-kernel.sh's (guest-patches/linux, /lab/in/guest-bzImage); dscp needs it.
# In the guest, guest-patches/agent's remusdb-guest-agent.sh watches xenstore's
# data/remusdb/failover (the backup writes it after resuming the guest) and signals PostgreSQL,
# which aborts the transactions that were not committing; the run checks it did (agent_signalled).
# Primary and backup in this one dom0; the clients run in dom0 too, beside the backup.
# The clients are PostgreSQL's own: pgbench (TPC-B, PG_CLIENTS clients) for load, and a
# commit ledger of PG_LEDGERS psql sessions, each running autocommit INSERTs of fresh ids and
# logging an id only after psql printed that PostgreSQL acknowledged its commit.
# Runs: (1) protected load for PG_SECONDS; (2) the same load again and `xl destroy` of the
# primary in its middle; the backup resumes the domU with its disk. Checks: every logged id
# is in the resumed database (acked_lost=0), TPC-B's balances agree (sum of accounts =
# tellers = branches = history: nothing half-applied), the resumed guest is the same boot;
# (3) the same load on the resumed, now unprotected, guest: the same guest, clients and disk
# path minus replication, the run's baseline for TPS and commit latency. The old primary's
# protect, fenced by the takeover, exits 3 with its network buffer removed. Prints one
# "XENLAB NUMBERS protect-pg:" line (acked_lost, TPS protected / unprotected, commit latency
# p50/p99, pause p50/p99, bytes per checkpoint, kill -> first acknowledged commit on B, the
# guest kernel, packets held / let through at once by nfqueue, agent_signalled).
. /lab/dom0-lib.sh
lab_begin protect-pg
DOMU=domu
IP=10.99.0.2
MODE=${PG_NET:-plug}
KERNEL=${PG_KERNEL:-stock}
MEM=${PROTECT_MEM:-192}
INTERVAL=${PROTECT_INTERVAL:-200}
RUN_S=${PG_SECONDS:-45}
CLIENTS=${PG_CLIENTS:-2}
LEDGERS=${PG_LEDGERS:-2}
W=/tmp/pg
mkdir -p $W
case $MODE in
  plug) NETARGS=(--net-buffer plug) ;;
  pgwire) NETARGS=(--net-buffer nfqueue --commit-protection pgwire) ;;
  dscp) NETARGS=(--net-buffer nfqueue --commit-protection dscp) ;;
  *) lab_fail "PG_NET '$MODE' is not plug, pgwire or dscp"; lab_result; exit ;;
esac
# dscp without the kernel patch would only test PostgreSQL's IP_TOS fallback.
case $KERNEL in
  stock) [ "$MODE" != dscp ] || { lab_fail "PG_NET=dscp needs PG_KERNEL=patched"; lab_result; exit; } ;;
  patched)
    [ -f /lab/in/guest-bzImage ] ||
      { lab_fail "no /lab/in/guest-bzImage (run.sh runs guest-kernel.sh)"; lab_result; exit; }
    cp /lab/in/guest-bzImage $W/guest-bzImage
    export LAB_DOMU_KERNEL=$W/guest-bzImage
    lab_log "guest kernel: the patched one, $(cat /lab/in/guest-kernel.release 2> /dev/null)" ;;
  *) lab_fail "PG_KERNEL '$KERNEL' is not stock or patched"; lab_result; exit ;;
esac
[ -f /lab/in/pg-disk.img ] || { lab_fail "no /lab/in/pg-disk.img (run.sh runs pg-guest.sh)"; lab_result; exit; }
cp --sparse=always /lab/in/pg-disk.img $W/disk.img
mkdir -p /opt/pgc && tar -xf /lab/in/pg-client.tar -C /opt/pgc
export PATH=/opt/pgc/bin:$PATH LD_LIBRARY_PATH=/opt/pgc/lib
export PGHOST=$IP PGUSER=postgres PGDATABASE=bench PGCONNECT_TIMEOUT=60
lab_bridge_up
modprobe nbd nbds_max=8 || lab_fail "modprobe nbd failed"
if [ "$MODE" != plug ]; then # nfqueue matches the vif with physdev: bridged packets through iptables
  modprobe br_netfilter && sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1 ||
    lab_fail "br_netfilter's IP hooks could not be enabled"
fi

# The guest's side: mount the disk, chroot, PostgreSQL as uid 999 (its own /etc/passwd).
lab_hook_img $W/hook.img <<'EOF'
i=0; while [ ! -b /dev/xvdb ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
R=/pgroot
mkdir -p $R && mount -t ext4 /dev/xvdb $R || { echo "DOMU pg: cannot mount /dev/xvdb"; exit 1; }
mount -t proc proc $R/proc; mount -o bind /dev $R/dev; mount -t tmpfs tmp $R/tmp
echo "DOMU pg: starting PostgreSQL"
chroot $R /bin/busybox start-stop-daemon -S -c 999:999 -x /pg/bin/postgres -- -D /data > $R/tmp/pg.log 2>&1 &
i=0; while ! grep -q "ready to accept" $R/tmp/pg.log && [ $i -lt 600 ]; do sleep 0.5; i=$((i + 1)); done
echo "DOMU pg: $(tail -n 1 $R/tmp/pg.log)"
# The kernel: its release, and whether it has the patch's TCP_REMUS_PROTECT (its functions).
echo "$(uname -r) remus_protect=$(grep -c ' tcp_remus_sending$' /proc/kallsyms)" > /tmp/www/kernel
echo "DOMU pg: kernel $(cat /tmp/www/kernel)"
# The guest agent (xenstore mode, through /dev/xen/xenbus), in PostgreSQL's root.
[ -c /dev/xen/xenbus ] || echo "DOMU pg: no /dev/xen/xenbus: the agent cannot watch xenstore"
chroot $R /bin/sh /agent/remusdb-guest-agent.sh --pg-data /data > $R/tmp/agent.log 2>&1 &
sleep 1; echo "DOMU pg: agent: $(tail -n 1 $R/tmp/agent.log)"
publish() { tail -n 30 "$1" > /tmp/www/$2.new; mv /tmp/www/$2.new /tmp/www/$2; }
while :; do publish $R/tmp/pg.log pglog; publish $R/tmp/agent.log agentlog; sleep 2; done
EOF

cd "$REMUSDB" || lab_fail "no project"
export REMUSDB_RUN_DIR=/tmp/remusdb-run
node bin/remusdb backup --listen 127.0.0.1:7400 --insecure > $W/backup.out 2> $W/backup.err &
BP=$!
node bin/remusdb protect "$DOMU" 127.0.0.1:7400 --insecure "${NETARGS[@]}" -i "$INTERVAL" \
  --heartbeat-timeout "${PROTECT_HB_MS:-90000}" --disk-image $W/disk.img --disk-listen 127.0.0.1:10809 \
  --disk-device /dev/nbd0 --wait-domain 900 > $W/protect.out 2> $W/protect.err &
PP=$!
lab_domu_on_nbd0 $PP "$DOMU" "$IP" 00:16:3e:00:00:02 "$MEM" $W/hook.img $W || { tail $W/protect.err; lab_result; exit; }
boot0=$(lab_wait_http "$IP" 7777 /boot 300 "$DOMU" && lab_http_body "$IP" 7777 /boot 120)
pg_ok() { psql -X -Atc 'SELECT 1' 2> /dev/null | grep -qx 1; }
t=$(lab_now)
until pg_ok || [ "$(lab_since "$t" | cut -d. -f1)" -gt 600 ] || ! kill -0 $PP 2> /dev/null; do sleep 2; done
# An early end keeps what explains it: the guest's console, both remusdb logs.
early_end() { # early_end WHY
  lab_fail "$1"
  lab_guest_log $DOMU | tail -n 20; tail -n 40 $W/protect.err; tail -n 20 $W/backup.err
  cp $W/*.out $W/*.err $W/*.cfg "$LAB_OUT/" 2> /dev/null; kill -TERM $PP $BP 2> /dev/null; sleep 3
  lab_result; exit
}
pg_ok || early_end "PostgreSQL in the domU did not answer"
[ -n "$boot0" ] || early_end "the guest's boot id could not be read (GET /boot stayed empty)"
lab_log "PostgreSQL answers after $(lab_since "$t") s: $(psql -X -Atc 'SELECT version()' | cut -c1-40); boot $boot0"
GUEST_KERNEL=$(lab_http_body "$IP" 7777 /kernel 60)
lab_log "guest kernel: ${GUEST_KERNEL:-unknown}; agent: $(lab_http "$IP" 7777 /agentlog | tail -n 1)"
if [ "$KERNEL" = patched ]; then
  [ "${GUEST_KERNEL% *}" = "$(cat /lab/in/guest-kernel.release)" ] && [ "${GUEST_KERNEL#* }" = remus_protect=1 ] ||
    lab_fail "the guest did not boot the patched kernel: '${GUEST_KERNEL}'"
fi

acked=$(lab_wait_acked "$PP" 3 600)
{ [[ "$acked" =~ ^[0-9]+$ ]] && [ "$acked" -ge 3 ]; } ||
  early_end "checkpoints were not acknowledged (acked '${acked}')"

# The ledger: one psql session per client, reconnecting when its session ends. An id goes to
# ledger-C.log ("id latency_ms acked_at_us") only after psql printed ACK for it, which psql
# does after PostgreSQL acknowledged the INSERT's commit; ids are never reused.
# The coprocess's pipes are duplicated at once: bash closes PSQL's own when psql exits.
ledger() { # ledger CLIENT
  local c=$1 n=0 id t0 line to from pid
  while [ ! -e $W/ledger.stop ]; do
    coproc PSQL { exec psql -X -q 2>&1; }
    pid=$PSQL_PID
    exec {from}<&"${PSQL[0]}" {to}>&"${PSQL[1]}" || { sleep 1; continue; }
    echo "$(date +%s.%N) session" >> $W/ledger-$c.sessions
    while [ ! -e $W/ledger.stop ]; do
      n=$((n + 1)); id=$((c * 10000000 + n)); t0=${EPOCHREALTIME/./}
      printf 'INSERT INTO ledger (id, client) VALUES (%d, %d);\n' $id "$c" >&$to 2> /dev/null || break
      printf '\\if :ERROR\n\\echo FAIL %d\n\\else\n\\echo ACK %d\n\\endif\n' $id $id >&$to 2> /dev/null || break
      line=
      while IFS= read -r -t 180 line <&$from; do
        [[ "$line" == "ACK $id" || "$line" == "FAIL $id" ]] && break
        echo "$(date +%s.%N) $line" >> $W/ledger-$c.err; line=
      done
      [ "$line" = "ACK $id" ] || { echo "$(date +%s.%N) $id: no ACK ('$line')" >> $W/ledger-$c.err; break; }
      echo "$id $(( (${EPOCHREALTIME/./} - t0) / 1000 )) ${EPOCHREALTIME/./}" >> $W/ledger-$c.log
    done
    exec {from}<&- {to}>&-
    kill "$pid" 2> /dev/null; wait "$pid" 2> /dev/null
    sleep 1
  done
}
pct() { sort -n | awk -v p="$1" '{ a[NR] = $1 } END { if (NR) print a[int((NR - 1) * p / 100) + 1] }'; }
acked_since() { cat $W/ledger-*.log 2> /dev/null | awk -v a="$1" -v b="${2:-99999999999999999}" '$3 >= a && $3 < b'; }
tpcb_sums() { psql -X -Atc "SELECT (SELECT sum(abalance) FROM pgbench_accounts) || ' ' || (SELECT sum(tbalance)
  FROM pgbench_tellers) || ' ' || (SELECT sum(bbalance) FROM pgbench_branches) || ' ' ||
  (SELECT coalesce(sum(delta), 0) FROM pgbench_history)" 2>&1; }
# pgbench's TPC-B transaction (its built-in tpcb-like script) sent as one pipeline: one round
# trip per transaction instead of seven. With every output held (plug) each round trip waits
# for a checkpoint, under the lab's emulation ~3 s: the unpipelined script committed no
# transaction in 45 s.
cat > $W/tpcb-pipeline.sql << 'SQL'
\set aid random(1, 100000 * :scale)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
\startpipeline
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
\endpipeline
SQL
pgbench_run() { # pgbench_run NAME SECONDS: TPC-B in the background, output in $W/pgbench-NAME.out
  pgbench -n -M extended -f $W/tpcb-pipeline.sql -c "$CLIENTS" -j 1 -T "$2" -P 10 bench > $W/pgbench-$1.out 2>&1 &
  PGB=$!
}
pgbench_txs() { sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' $W/pgbench-$1.out | head -1; }
pgbench_tps() { sed -n 's/^tps = \([0-9.]*\) .*/\1/p' $W/pgbench-$1.out | head -1; }
# load_phase NAME: pgbench for RUN_S beside the ledger; sets TPS, TX, and the ledger's commits
# (LN) and commit latency p50/p99 (L50, L99) in that time.
load_phase() {
  local t0 t1
  t0=${EPOCHREALTIME/./}
  pgbench_run "$1" "$RUN_S"; wait $PGB
  t1=${EPOCHREALTIME/./}
  TX=$(pgbench_txs "$1"); TPS=$(pgbench_tps "$1")
  [ -n "$TPS" ] || TPS=$(awk -v n="${TX:-0}" -v s="$RUN_S" 'BEGIN { printf "%.3f", n / s }')
  L50=$(acked_since "$t0" "$t1" | awk '{ print $2 }' | pct 50)
  L99=$(acked_since "$t0" "$t1" | awk '{ print $2 }' | pct 99)
  LN=$(acked_since "$t0" "$t1" | wc -l)
}
for c in $(seq 1 "$LEDGERS"); do ledger "$c" & done

# 1. Protected load.
load_phase protected
TPS_P=$TPS TX_P=$TX LAT_P50=$L50 LAT_P99=$L99 N_P=$LN
lab_status > $W/status-primary.json
field() { lab_field primary "$1" < $W/status-primary.json; }
ms() { awk -v v="$1" 'BEGIN { if (v != "") printf "%.0f", v }'; } # whole milliseconds
CK=$(field checkpoints); WIRE=$(field wireBytes); FULLP=$(ms "$(field fullPauseMs)")
P50=$(ms "$(field pauseMsP50)"); P99=$(ms "$(field pauseMsP99)")
# nfqueue's packet ledger: packets classified hold (dscp: marked DSCP 59) and released with
# their checkpoint or still held, minus those that only waited behind a held packet of their
# flow; and the packets let through at once (unmarked, nothing held before them in their flow).
HELD=; AT_ONCE=
if [ "$MODE" != plug ]; then
  led() { local v; v=$(field "net.interfaces.0.ledger.$1"); [[ "$v" =~ ^[0-9]+$ ]] && echo "$v" || echo 0; }
  [ -n "$(field net.interfaces.0.ledger.received)" ] ||
    lab_fail "protect's status has no nfqueue ledger (net.interfaces.0.ledger)"
  HELD=$(( $(led released) + $(led held) - $(led waitedBehindFlow) )); AT_ONCE=$(led releasedAtOnce)
  lab_log "nfqueue ($MODE): $HELD packets held for their checkpoint, $AT_ONCE let through at once," \
    "$(led waitedBehindFlow) waited behind their flow, $(led droppedOverLimit) dropped over the limit"
  [ "$HELD" -gt 0 ] || lab_fail "no packet was held as protected under PG_NET=$MODE (nothing marked?)"
  [ "${AT_ONCE:-0}" -gt 0 ] || lab_fail "no packet went through at once under PG_NET=$MODE: everything was held"
fi
lab_log "protected ($MODE): pgbench $TPS_P tps; ledger $N_P commits, latency p50 $LAT_P50 ms p99 $LAT_P99 ms;" \
  "$CK checkpoints, pause p50/p99 $P50/$P99 ms"
grep -E "^progress|aborted|error" $W/pgbench-protected.out | tail -n 8 | sed 's/^/  pgbench: /'
[ "$N_P" -gt 0 ] || lab_fail "no ledger commit was acknowledged under protection"

# 2. The host dies in the middle of the same load, while its checkpoints are acknowledged.
pgbench_run crash $((RUN_S * 2)); PGB_CRASH=$PGB
ack_a=$(lab_status | lab_field primary ackedEpoch)
sleep $((RUN_S / 2))
ack_b=$(lab_status | lab_field primary ackedEpoch)
[[ "$ack_a" =~ ^[0-9]+$ && "$ack_b" =~ ^[0-9]+$ ]] && [ "$ack_b" -gt "$ack_a" ] ||
  lab_fail "not protected at the kill: acknowledged epoch '$ack_a' -> '$ack_b' in $((RUN_S / 2)) s"
sessions_before=$(cat $W/ledger-*.sessions | wc -l)
PRIM=$(xl domid "$DOMU"); TK=${EPOCHREALTIME/./}
xl destroy "$PRIM"
lab_log "destroyed the primary (id $PRIM) at acked epoch $ack_b;" \
  "$(cat $W/ledger-*.log | wc -l) ledger commits acknowledged so far"
boot2=
for i in $(seq 1 300); do boot2=$(lab_http "$IP" 7777 /boot 1); [ -n "$boot2" ] && break; sleep 1; done
FAILOVER_S=$(awk -v a="${EPOCHREALTIME/./}" -v b="$TK" 'BEGIN { printf "%.1f", (a - b) / 1e6 }')
lab_log "the resumed guest answers ${FAILOVER_S} s after the kill"
[ -n "$boot2" ] && [ "$boot2" = "$boot0" ] && lab_log "ok: same boot id (resumed, not rebooted)" ||
  lab_fail "boot id changed ('$boot0' -> '$boot2')"
# The first commit of an INSERT sent after the kill (not one the dying primary released).
sent_after() {
  cat $W/ledger-*.log 2> /dev/null | awk -v k="$TK" '$3 - $2 * 1000 >= k { print $3 }' | sort -n | head -1
}
t=$(lab_now)
until [ -n "$(sent_after)" ] || [ "$(lab_since "$t" | cut -d. -f1)" -gt 300 ]; do sleep 0.5; done
FIRST_US=$(sent_after)
KILL_TO_ACK_S=$([ -n "$FIRST_US" ] && awk -v a="$FIRST_US" -v b="$TK" 'BEGIN { printf "%.1f", (a - b) / 1e6 }')
lab_log "first commit acknowledged by the resumed guest ${KILL_TO_ACK_S:-never} s after the kill"
[ -n "$FIRST_US" ] || lab_fail "no commit was acknowledged after the failover"
# The guest agent saw the backup's xenstore key and signalled the postmaster, which logged it.
AGENT_SIGNALLED=0; PG_ABORT_LOGGED=0
for i in $(seq 1 60); do
  lab_http "$IP" 7777 /agentlog > $W/agent.log
  lab_http "$IP" 7777 /pglog > $W/pglog-after.log
  grep -q "SIGUSR2 sent" $W/agent.log && AGENT_SIGNALLED=1
  grep -q "received RemusDB failover signal" $W/pglog-after.log && PG_ABORT_LOGGED=1
  [ $AGENT_SIGNALLED = 1 ] && [ $PG_ABORT_LOGGED = 1 ] && break
  sleep 1
done
sed 's/^/  agent: /' $W/agent.log | tail -n 4
grep "failover" $W/pglog-after.log | tail -n 3 | sed 's/^/  postgres: /'
[ $AGENT_SIGNALLED = 1 ] || lab_fail "the guest agent did not signal PostgreSQL after the failover"
[ $PG_ABORT_LOGGED = 1 ] || lab_fail "PostgreSQL did not log the failover signal"
wait $PGB_CRASH
grep -E "FAILOVER|runs on the backup|reset|failed over" $W/backup.err | sed 's/^/  backup: /'
grep -E "aborted|error|^tps" $W/pgbench-crash.out | tail -n 6 | sed 's/^/  pgbench: /'
sessions_after=$(cat $W/ledger-*.sessions | wc -l)
PGB_ABORTED=$(grep -c 'aborted in command' $W/pgbench-crash.out)

# Every acknowledged id is in the resumed database; TPC-B's balances agree.
cat $W/ledger-*.log | awk '{ print $1 }' | sort -u > $W/acked.ids
psql -X -Atc 'SELECT id FROM ledger' 2> $W/select.err | sort -u > $W/present.ids
ACKED=$(wc -l < $W/acked.ids); PRESENT=$(wc -l < $W/present.ids)
LOST=$(comm -23 $W/acked.ids $W/present.ids | wc -l)
lab_log "ledger: $ACKED ids acknowledged, $PRESENT rows in the resumed database, acknowledged but missing: $LOST"
[ "$PRESENT" -gt 0 ] || lab_fail "the resumed database returned no ledger rows: $(cat $W/select.err)"
[ "$LOST" = 0 ] || lab_fail "acknowledged commits lost: $(comm -23 $W/acked.ids $W/present.ids | head -5 | tr '\n' ' ')"
TX_C=$(pgbench_txs crash)
# Under emulation a protected TPC-B transaction takes ~10 s (plug); the crash run's must exist
# for the balance check below to say anything.
[[ "$TX_C" =~ ^[0-9]+$ ]] && [ "$TX_C" -gt 0 ] ||
  lab_fail "no pgbench transaction in the crash run: $(tail -n 3 $W/pgbench-crash.out)"
read -r SA ST SB SH <<< "$(tpcb_sums)"
lab_log "TPC-B sums after the crash ($TX_P transactions protected, ${TX_C:-no} in the crash run):" \
  "accounts $SA tellers $ST branches $SB history $SH"
[ -n "$SA" ] && [ "$SA" = "$ST" ] && [ "$SA" = "$SB" ] && [ "$SA" = "$SH" ] ||
  lab_fail "TPC-B balances disagree after failover: $SA $ST $SB $SH"

# 3. The same load on the resumed guest, now unprotected: the run's baseline.
load_phase unprotected
TPS_U=$TPS LAT_U50=$L50 LAT_U99=$L99 N_U=$LN
touch $W/ledger.stop
LEDGER_RATIO=$(awk -v p="$N_P" -v u="$N_U" 'BEGIN { if (u > 0) printf "%.3f", p / u }')
RATIO=$(awk -v p="$TPS_P" -v u="$TPS_U" 'BEGIN { if (u > 0) printf "%.3f", p / u }')
lab_log "unprotected (after failover): pgbench $TPS_U tps, ledger latency p50 $LAT_U50 ms p99 $LAT_U99 ms;" \
  "protected/unprotected TPS $RATIO, ledger commits $N_P/$N_U = $LEDGER_RATIO"
[[ "$TX" =~ ^[1-9][0-9]*$ ]] ||
  lab_fail "pgbench did not run on the resumed guest: $(tail -n 3 $W/pgbench-unprotected.out)"
BPC=$(awk -v w="$WIRE" -v c="$CK" 'BEGIN { if (c > 0) printf "%d", w / c }')

NUMBERS=(net=$MODE kernel=$KERNEL guest_kernel=${GUEST_KERNEL% *}
  mem_mib=$MEM interval_ms=$INTERVAL acked_lost=$LOST acked=$ACKED present=$PRESENT
  tps_protected=$TPS_P tx_protected=$TX_P tx_crash_run=$TX_C tps_unprotected=$TPS_U tps_ratio=$RATIO
  ledger_commits_protected=$N_P ledger_commits_unprotected=$N_U ledger_ratio=$LEDGER_RATIO
  commit_p50_ms=$LAT_P50 commit_p99_ms=$LAT_P99 commit_unprotected_p50_ms=$LAT_U50 commit_unprotected_p99_ms=$LAT_U99
  checkpoints=$CK pause_p50_ms=$P50 pause_p99_ms=$P99 first_pause_ms=$FULLP bytes_per_checkpoint=$BPC
  failover_s=$FAILOVER_S kill_to_first_ack_s=$KILL_TO_ACK_S
  ledger_sessions_new_after_kill=$((sessions_after - sessions_before)) pgbench_clients_aborted=$PGB_ABORTED
  packets_held=${HELD:-na} packets_at_once=${AT_ONCE:-na} agent_signalled=$AGENT_SIGNALLED
  pg_failover_logged=$PG_ABORT_LOGGED)
echo "XENLAB NUMBERS protect-pg: ${NUMBERS[*]}"
lab_check_fenced $PP $W/protect.err
xl destroy "$DOMU" 2> /dev/null  # before the backup that serves its disk stops
kill -TERM $BP 2> /dev/null; sleep 2
lab_check_no_buffer
tail -n 20 $W/protect.err; tail -n 20 $W/backup.err
lab_http "$IP" 7777 /pglog 5 | tail -n 10 | sed 's/^/  postgres: /'
cp $W/*.out $W/*.err $W/*.json $W/*.cfg $W/*.log $W/*.sessions "$LAB_OUT/" 2> /dev/null
lab_result

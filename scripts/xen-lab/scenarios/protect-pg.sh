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
# The guest's hook, the clients and the checks after the failover are dom0-pg-lib.sh's (shared
# with the two-host lab's TWO_GUEST=pg, run-two.sh).
. /lab/dom0-lib.sh
. /lab/dom0-pg-lib.sh
lab_begin protect-pg
DOMU=domu
IP=10.99.0.2
MODE=${PG_NET:-plug}
KERNEL=${PG_KERNEL:-stock}
MEM=${PROTECT_MEM:-192}
INTERVAL=${PROTECT_INTERVAL:-200}
RUN_S=${PG_SECONDS:-45}
# shellcheck disable=SC2034 # dom0-pg-lib.sh's
CLIENTS=${PG_CLIENTS:-2}
LEDGERS=${PG_LEDGERS:-2}
W=/tmp/pg
mkdir -p $W
pg_net_args "$MODE" && pg_kernel "$KERNEL" "$MODE" && pg_disk $W/disk.img && pg_clients || { lab_result; exit; }
lab_bridge_up
modprobe nbd nbds_max=8 || lab_fail "modprobe nbd failed"
[ "$MODE" = plug ] || pg_br_netfilter

pg_hook_img $W/hook.img

cd "$REMUSDB" || lab_fail "no project"
export REMUSDB_RUN_DIR=/tmp/remusdb-run
node bin/remusdb backup --listen 127.0.0.1:7400 --insecure > $W/backup.out 2> $W/backup.err &
BP=$!
TRACE=${NET_TRACE:+$LAB_OUT/net-trace.txt} # NET_TRACE=1: every packet of the guest (packet-trace.ts)
REMUSDB_NET_TRACE=$TRACE node bin/remusdb protect "$DOMU" 127.0.0.1:7400 --insecure "${NETARGS[@]}" -i "$INTERVAL" \
  --heartbeat-timeout "${PROTECT_HB_MS:-90000}" --disk-image $W/disk.img --disk-listen 127.0.0.1:10809 \
  --disk-device /dev/nbd0 --wait-domain 900 > $W/protect.out 2> $W/protect.err &
PP=$!
lab_domu_on_nbd0 $PP "$DOMU" "$IP" 00:16:3e:00:00:02 "$MEM" $W/hook.img $W || { tail $W/protect.err; lab_result; exit; }
boot0=$(lab_wait_http "$IP" 7777 /boot 300 "$DOMU" && lab_http_body "$IP" 7777 /boot 120)
t=$(lab_now)
pg_wait_ok 600 $PP
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
pg_guest_kernel "$KERNEL" 300 # plug: the first checkpoint may hold its answer for a minute or more

acked=$(lab_wait_acked "$PP" 3 600)
{ [[ "$acked" =~ ^[0-9]+$ ]] && [ "$acked" -ge 3 ]; } ||
  early_end "checkpoints were not acknowledged (acked '${acked}')"

pg_ledgers "$LEDGERS"

# 1. Protected load, twice RUN_S: pgbench's connections take ~30-60 s of it (pg_load_phase).
PAUSED0=$(lab_status | lab_field primary pausedMsTotal)
pg_load_phase protected $((RUN_S * 2))
TPS_P=$TPS TX_P=$TX LAT_P50=$L50 LAT_P99=$L99 N_P=$LN LR_P=$LR CONN_P=$CONN_MS WIN_P=$WIN_S
lab_status > $W/status-primary.json
field() { lab_field primary "$1" < $W/status-primary.json; }
# The share of the phase the guest spent suspended in checkpoints: what bounds its work here.
PAUSED_SHARE=$(awk -v a="$PAUSED0" -v b="$(field pausedMsTotal)" -v s="$WIN_P" \
  'BEGIN { if (a != "" && b != "" && s > 0) printf "%.2f", (b - a) / 1000 / s }')
ms() { awk -v v="$1" 'BEGIN { if (v != "") printf "%.0f", v }'; } # whole milliseconds
CK=$(field checkpoints); WIRE=$(field wireBytes); FULLP=$(ms "$(field fullPauseMs)")
P50=$(ms "$(field pauseMsP50)"); P99=$(ms "$(field pauseMsP99)")
# nfqueue's packet ledger (pg_net_ledger): packets held for their checkpoint, and let through at once.
HELD=; AT_ONCE=
[ "$MODE" = plug ] || pg_net_ledger field "$MODE"
lab_log "protected ($MODE): pgbench $TPS_P tps; ledger $N_P commits, latency p50 $LAT_P50 ms p99 $LAT_P99 ms;" \
  "$CK checkpoints, pause p50/p99 $P50/$P99 ms, guest paused ${PAUSED_SHARE:-?} of ${WIN_P} s;" \
  "pgbench's connections took ${CONN_P:-?} ms"
grep -E "^progress|aborted|error" $W/pgbench-protected.out | tail -n 8 | sed 's/^/  pgbench: /'
[ "$N_P" -gt 0 ] || lab_fail "no ledger commit was acknowledged under protection"

# 2. The host dies in the middle of the same load, while its checkpoints are acknowledged.
H0=$(pg_history)
pg_bench_run crash $((RUN_S * 5)); PGB_CRASH=$PGB
pg_crash_run_committing "$H0" $((RUN_S * 3)) || true
pg_protected_while $((RUN_S / 2)) primary ackedEpoch "acknowledged epoch" # sets ep_b
sessions_before=$(pg_sessions)
PRIM=$(xl domid "$DOMU")
# shellcheck disable=SC2034 # the kill's time, for dom0-pg-lib.sh's checks
TK=${EPOCHREALTIME/./}
xl destroy "$PRIM"
# shellcheck disable=SC2154 # ep_b: pg_protected_while's
lab_log "destroyed the primary (id $PRIM) at acked epoch $ep_b;" \
  "$(cat $W/ledger-*.log | wc -l) ledger commits acknowledged so far"
pg_wait_resumed
pg_first_commit
pg_agent_check
wait $PGB_CRASH
grep -E "FAILOVER|runs on the backup|reset|failed over" $W/backup.err | sed 's/^/  backup: /'
grep -E "aborted|error|^tps" $W/pgbench-crash.out | tail -n 6 | sed 's/^/  pgbench: /'
sessions_after=$(pg_sessions)
PGB_ABORTED=$(grep -c 'aborted in command' $W/pgbench-crash.out)

# Every acknowledged id is in the resumed database; TPC-B's balances agree.
pg_acked_ids > $W/acked.ids
pg_lost_check $W/acked.ids
TX_C=$(pg_bench_txs crash)
# Under emulation a protected TPC-B transaction takes ~10 s (plug); the crash run's must exist
# for the balance check below to say anything.
[[ "$TX_C" =~ ^[0-9]+$ ]] && [ "$TX_C" -gt 0 ] ||
  lab_fail "no pgbench transaction in the crash run: $(tail -n 3 $W/pgbench-crash.out)"
pg_tpcb_check "$TX_P transactions protected, ${TX_C:-no} in the crash run"

# 3. The same load on the resumed guest, now unprotected: the run's baseline.
pg_load_phase unprotected
TPS_U=$TPS LAT_U50=$L50 LAT_U99=$L99 N_U=$LN LR_U=$LR CONN_U=$CONN_MS
touch $W/ledger.stop
# Rates: the two phases' windows differ (the protected one is longer).
LEDGER_RATIO=$(awk -v p="$LR_P" -v u="$LR_U" 'BEGIN { if (u > 0) printf "%.3f", p / u }')
RATIO=$(awk -v p="$TPS_P" -v u="$TPS_U" 'BEGIN { if (u > 0) printf "%.3f", p / u }')
lab_log "unprotected (after failover): pgbench $TPS_U tps, ledger latency p50 $LAT_U50 ms p99 $LAT_U99 ms;" \
  "protected/unprotected TPS $RATIO, ledger commits/s $LR_P/$LR_U = $LEDGER_RATIO"
[[ "$TX" =~ ^[1-9][0-9]*$ ]] ||
  lab_fail "pgbench did not run on the resumed guest: $(tail -n 3 $W/pgbench-unprotected.out)"
BPC=$(awk -v w="$WIRE" -v c="$CK" 'BEGIN { if (c > 0) printf "%d", w / c }')

NUMBERS=(net=$MODE kernel=$KERNEL guest_kernel=${GUEST_KERNEL% *}
  mem_mib=$MEM interval_ms=$INTERVAL acked_lost=$LOST acked=$ACKED present=$PRESENT
  tps_protected=$TPS_P tx_protected=$TX_P tx_crash_run=$TX_C tps_unprotected=$TPS_U tps_ratio=$RATIO
  ledger_commits_protected=$N_P ledger_commits_unprotected=$N_U ledger_ratio=$LEDGER_RATIO
  ledger_commits_per_s_protected=$LR_P ledger_commits_per_s_unprotected=$LR_U paused_share=$PAUSED_SHARE
  pgbench_connect_ms_protected=$CONN_P pgbench_connect_ms_unprotected=$CONN_U
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

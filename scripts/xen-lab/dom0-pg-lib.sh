# shellcheck shell=bash
# shellcheck disable=SC2034,SC2154 # the caller's variables: set there (W, IP, ...), read there (TPS, LOST, ...)
# dom0-pg-lib.sh: the lab's PostgreSQL guest as dom0 drives it, shared by scenarios/protect-pg.sh
# (one host) and the two-host scenarios with TWO_GUEST=pg (two-host-a/-b/-c.sh, the backup
# hosts' flow in dom0-two-lib.sh). Sourced after dom0-lib.sh; run.sh and run-two.sh put it in
# the share as /lab/dom0-pg-lib.sh. One copy of: protect's network options for PG_NET, the
# guest kernel for PG_KERNEL, the PostgreSQL disk (pg-guest.sh's /lab/in/pg-disk.img) and the
# guest hook that starts PostgreSQL and the guest agent, the clients (pg-client.tar's psql and
# pgbench: pgbench's TPC-B sent as one pipeline, the commit ledger of psql sessions), and the
# checks after a failover (same boot, a commit after the kill, the agent signalled, no
# acknowledged id lost, TPC-B's sums).
# The caller sets W (its work folder; the clients' files go there), IP (the domU's address),
# RUN_S (seconds of a load phase, PG_SECONDS), CLIENTS (pgbench clients), and for the checks
# after a failover boot0 (the guest's boot id before it) and TK (the kill, µs since the epoch
# as ${EPOCHREALTIME/./} gives it).
# Files in W: tpcb-pipeline.sql, pgbench-NAME.out, ledger-C.log ("id latency_ms acked_at_us"
# per acknowledged commit), ledger-C.sessions (one line per psql session opened), ledger-C.err,
# ledger.stop (ends the ledger clients), acked.ids / present.ids (the last pg_lost_check).

pg_net_args() { # pg_net_args PG_NET: NETARGS = protect's (and reprotect's) network options; 1 after lab_fail
  case $1 in
    plug) NETARGS=(--net-buffer plug) ;;
    pgwire) NETARGS=(--net-buffer nfqueue --commit-protection pgwire) ;;
    dscp) NETARGS=(--net-buffer nfqueue --commit-protection dscp) ;;
    *) lab_fail "PG_NET '$1' is not plug, pgwire or dscp"; return 1 ;;
  esac
}

# PG_KERNEL: stock = dom0's Debian kernel; patched = guest-kernel.sh's (/lab/in/guest-bzImage,
# copied to W and booted through LAB_DOMU_KERNEL). dscp without the kernel patch would only
# test PostgreSQL's IP_TOS fallback: refused.
pg_kernel() { # pg_kernel PG_KERNEL PG_NET: 1 after lab_fail
  case $1 in
    stock) [ "$2" != dscp ] || { lab_fail "PG_NET=dscp needs PG_KERNEL=patched"; return 1; } ;;
    patched)
      [ -f /lab/in/guest-bzImage ] || { lab_fail "no /lab/in/guest-bzImage (run.sh runs guest-kernel.sh)"; return 1; }
      cp /lab/in/guest-bzImage "$W/guest-bzImage"
      export LAB_DOMU_KERNEL=$W/guest-bzImage
      lab_log "guest kernel: the patched one, $(cat /lab/in/guest-kernel.release 2> /dev/null)" ;;
    *) lab_fail "PG_KERNEL '$1' is not stock or patched"; return 1 ;;
  esac
}

# The kernel the guest booted (its hook's /kernel: "release remus_protect=0|1", within SECONDS):
# with PG_KERNEL=patched it must be guest-kernel.sh's, with the patch. Sets GUEST_KERNEL.
pg_guest_kernel() { # pg_guest_kernel PG_KERNEL SECONDS
  # The hook writes /kernel once PostgreSQL is up; before that busybox httpd answers 404.
  local end=$((SECONDS + $2))
  GUEST_KERNEL=
  while [ $SECONDS -lt $end ]; do
    GUEST_KERNEL=$(lab_http_body "$IP" 7777 /kernel 10)
    [[ "$GUEST_KERNEL" == *remus_protect=* ]] && break
    GUEST_KERNEL=
    sleep 2
  done
  lab_log "guest kernel: ${GUEST_KERNEL:-unknown}; agent: $(lab_http "$IP" 7777 /agentlog | tail -n 1)"
  if [ "$1" = patched ]; then
    [ "${GUEST_KERNEL% *}" = "$(cat /lab/in/guest-kernel.release)" ] && [ "${GUEST_KERNEL#* }" = remus_protect=1 ] ||
      lab_fail "the guest did not boot the patched kernel: '${GUEST_KERNEL}'"
  fi
}

pg_disk() { # pg_disk FILE: pg-guest.sh's PostgreSQL disk copied to FILE (sparse); 1 after lab_fail
  [ -f /lab/in/pg-disk.img ] || { lab_fail "no /lab/in/pg-disk.img (run.sh runs pg-guest.sh)"; return 1; }
  cp --sparse=always /lab/in/pg-disk.img "$1"
}

pg_br_netfilter() { # nfqueue matches the vif with physdev: bridged packets through iptables
  modprobe br_netfilter && sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1 ||
    lab_fail "br_netfilter's IP hooks could not be enabled"
}

# The guest's side: mount the disk, chroot, PostgreSQL as uid 999 (its own /etc/passwd); the
# guest agent (xenstore mode); the kernel's release and whether it has TCP_REMUS_PROTECT, and
# the tails of PostgreSQL's and the agent's logs, published on port 7777 (/kernel, /pglog,
# /agentlog).
pg_hook_img() { # pg_hook_img FILE: that hook as a hook image (lab_hook_img)
  lab_hook_img "$1" <<'EOF'
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
}

# pgbench's TPC-B transaction (its built-in tpcb-like script) sent as one pipeline: one round
# trip per transaction instead of seven. With every output held (plug) each round trip waits
# for a checkpoint, under the lab's emulation ~3 s: the unpipelined script committed no
# transaction in 45 s.
pg_clients() { # pg_clients: psql and pgbench (/lab/in/pg-client.tar) in /opt/pgc, libpq's environment for IP, W/tpcb-pipeline.sql
  [ -f /lab/in/pg-client.tar ] || { lab_fail "no /lab/in/pg-client.tar (run.sh runs pg-guest.sh)"; return 1; }
  mkdir -p /opt/pgc && tar -xf /lab/in/pg-client.tar -C /opt/pgc
  export PATH=/opt/pgc/bin:$PATH LD_LIBRARY_PATH=/opt/pgc/lib
  export PGHOST=$IP PGUSER=postgres PGDATABASE=bench PGCONNECT_TIMEOUT=60
  cat > "$W/tpcb-pipeline.sql" << 'SQL'
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
}

pg_ok() { psql -X -Atc 'SELECT 1' 2> /dev/null | grep -qx 1; }
pg_wait_ok() { # pg_wait_ok SECONDS [PID]: until PostgreSQL answers, SECONDS pass, PID ends or /lab/abort appears; pg_ok's status
  local t
  t=$(lab_now)
  until pg_ok || [ "$(lab_since "$t" | cut -d. -f1)" -gt "$1" ] || [ -e /lab/abort ] ||
    { [ -n "${2:-}" ] && ! kill -0 "$2" 2> /dev/null; }; do sleep 2; done
  pg_ok
}

# The ledger: one psql session per client, reconnecting when its session ends. An id goes to
# ledger-C.log ("id latency_ms acked_at_us") only after psql printed ACK for it, which psql
# does after PostgreSQL acknowledged the INSERT's commit; ids (C * 10^7 + n) are never reused.
# The coprocess's pipes are duplicated at once: bash closes PSQL's own when psql exits.
# shellcheck disable=SC2261 # >&$to is the coprocess's pipe, not stderr
pg_ledger() { # pg_ledger CLIENT (in the background)
  local c=$1 n=0 id t0 line to from pid
  while [ ! -e "$W/ledger.stop" ]; do
    coproc PSQL { exec psql -X -q 2>&1; }
    pid=$PSQL_PID
    exec {from}<&"${PSQL[0]}" {to}>&"${PSQL[1]}" || { sleep 1; continue; }
    echo "$(date +%s.%N) session" >> "$W/ledger-$c.sessions"
    while [ ! -e "$W/ledger.stop" ]; do
      n=$((n + 1)); id=$((c * 10000000 + n)); t0=${EPOCHREALTIME/./}
      printf 'INSERT INTO ledger (id, client) VALUES (%d, %d);\n' $id "$c" >&$to 2> /dev/null || break
      printf '\\if :ERROR\n\\echo FAIL %d\n\\else\n\\echo ACK %d\n\\endif\n' $id $id >&$to 2> /dev/null || break
      line=
      while IFS= read -r -t 180 line <&$from; do
        [[ "$line" == "ACK $id" || "$line" == "FAIL $id" ]] && break
        echo "$(date +%s.%N) $line" >> "$W/ledger-$c.err"; line=
      done
      [ "$line" = "ACK $id" ] || { echo "$(date +%s.%N) $id: no ACK ('$line')" >> "$W/ledger-$c.err"; break; }
      echo "$id $(( (${EPOCHREALTIME/./} - t0) / 1000 )) ${EPOCHREALTIME/./}" >> "$W/ledger-$c.log"
    done
    exec {from}<&- {to}>&-
    kill "$pid" 2> /dev/null; wait "$pid" 2> /dev/null
    sleep 1
  done
}
pg_ledgers() { # pg_ledgers COUNT [FIRST]: COUNT ledger clients in the background, numbered FIRST (1) on
  local c
  for c in $(seq "${2:-1}" $((${2:-1} + $1 - 1))); do pg_ledger "$c" & done
}
pg_sessions() { cat "$W"/ledger-*.sessions 2> /dev/null | wc -l; } # psql sessions the ledger opened so far
pg_acked_ids() { cat "$W"/ledger-*.log 2> /dev/null | awk '{ print $1 }' | sort -u; } # the ids acknowledged so far

pg_pct() { sort -n | awk -v p="$1" '{ a[NR] = $1 } END { if (NR) print a[int((NR - 1) * p / 100) + 1] }'; }
pg_acked_since() { cat "$W"/ledger-*.log 2> /dev/null | awk -v a="$1" -v b="${2:-99999999999999999}" '$3 >= a && $3 < b'; }
pg_tpcb_sums() { psql -X -Atc "SELECT (SELECT sum(abalance) FROM pgbench_accounts) || ' ' || (SELECT sum(tbalance)
  FROM pgbench_tellers) || ' ' || (SELECT sum(bbalance) FROM pgbench_branches) || ' ' ||
  (SELECT coalesce(sum(delta), 0) FROM pgbench_history)" 2>&1; }
pg_history() { psql -X -Atc 'SELECT count(*) FROM pgbench_history' 2> /dev/null; } # TPC-B transactions committed so far
# pg_crash_run_committing H0 SECONDS: waits, up to SECONDS, until the crash run's pgbench has
# committed (pgbench_history past H0) before the kill is armed. Under TCG a new connection can
# take longer than the ~20 s the kill used to leave it, and once the host dies the failover
# (~75 s) outlasts libpq's 60 s connect timeout: the crash run then committed nothing and the
# balance check said nothing (runs 20261206-221342-two-host, 20261206-235753-protect-pg).
# Status 1 when it did not commit in time (the check after the crash then fails, as before).
pg_crash_run_committing() {
  local h0=$1 t0=$SECONDS h
  while [ $((SECONDS - t0)) -lt "$2" ]; do
    h=$(pg_history)
    if [[ "$h" =~ ^[0-9]+$ && "$h0" =~ ^[0-9]+$ ]] && [ "$h" -gt "$h0" ]; then
      lab_log "the crash run committed (history $h0 -> $h) $((SECONDS - t0)) s after it started"
      return 0
    fi
    sleep 2
  done
  lab_log "the crash run committed nothing in $2 s; the kill comes anyway"
  return 1
}

pg_bench_run() { # pg_bench_run NAME SECONDS: TPC-B in the background (PGB), output in W/pgbench-NAME.out
  pgbench -n -M extended -f "$W/tpcb-pipeline.sql" -c "$CLIENTS" -j 1 -T "$2" -P 10 bench > "$W/pgbench-$1.out" 2>&1 &
  PGB=$!
}
pg_bench_txs() { sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$W/pgbench-$1.out" | head -1; }
pg_bench_tps() { sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$W/pgbench-$1.out" | head -1; }
pg_bench_connect_ms() { sed -n 's/^initial connection time = \([0-9]*\).*/\1/p' "$W/pgbench-$1.out" | head -1; }
# pg_load_phase NAME [SECONDS]: pgbench for SECONDS (RUN_S) beside the ledger; sets TPS (without
# pgbench's connection time), TX, CONN_MS (pgbench's connection time), WIN_S (the phase's
# seconds), and the ledger's commits (LN), commits per second (LR) and latency p50/p99 (L50, L99).
# pgbench connects its clients one after another and counts that time in its -T: in a guest
# checkpointed under the lab's emulation a new backend took ~27 s to answer its startup
# (run 20261207-024036), so protected phases pass a longer SECONDS.
pg_load_phase() {
  local t0 t1
  t0=${EPOCHREALTIME/./}
  pg_bench_run "$1" "${2:-$RUN_S}"; wait "$PGB"
  t1=${EPOCHREALTIME/./}
  TX=$(pg_bench_txs "$1"); TPS=$(pg_bench_tps "$1"); CONN_MS=$(pg_bench_connect_ms "$1")
  [ -n "$TPS" ] || TPS=$(awk -v n="${TX:-0}" -v s="${2:-$RUN_S}" 'BEGIN { printf "%.3f", n / s }')
  WIN_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e6 }')
  L50=$(pg_acked_since "$t0" "$t1" | awk '{ print $2 }' | pg_pct 50)
  L99=$(pg_acked_since "$t0" "$t1" | awk '{ print $2 }' | pg_pct 99)
  LN=$(pg_acked_since "$t0" "$t1" | wc -l)
  LR=$(awk -v n="$LN" -v s="$WIN_S" 'BEGIN { if (s > 0) printf "%.3f", n / s }')
}

# The crash comes while checkpoints are committed: ROLE's FIELD in its status (the primary's
# ackedEpoch, a backup's committedEpoch) advances over SECONDS. Sets ep_a, ep_b.
pg_protected_while() { # pg_protected_while SECONDS ROLE FIELD WHAT
  ep_a=$(lab_status | lab_field "$2" "$3")
  sleep "$1"
  ep_b=$(lab_status | lab_field "$2" "$3")
  [[ "$ep_a" =~ ^[0-9]+$ && "$ep_b" =~ ^[0-9]+$ ]] && [ "$ep_b" -gt "$ep_a" ] ||
    lab_fail "not protected at the kill: $4 '$ep_a' -> '$ep_b' in $1 s"
}

# nfqueue's packet ledger from a status (GETTER KEY prints a field): packets classified hold
# (dscp: marked DSCP 59) and released with their checkpoint or still held, minus those that only
# waited behind a held packet of their flow; and the packets let through at once (unmarked,
# nothing held before them in their flow). Sets HELD, AT_ONCE; both must be > 0.
pg_net_ledger() { # pg_net_ledger GETTER PG_NET
  local getter=$1
  _pg_led() { local v; v=$("$getter" "net.interfaces.0.ledger.$1"); [[ "$v" =~ ^[0-9]+$ ]] && echo "$v" || echo 0; }
  [ -n "$("$getter" net.interfaces.0.ledger.received)" ] ||
    lab_fail "protect's status has no nfqueue ledger (net.interfaces.0.ledger)"
  HELD=$(( $(_pg_led released) + $(_pg_led held) - $(_pg_led waitedBehindFlow) )); AT_ONCE=$(_pg_led releasedAtOnce)
  lab_log "nfqueue ($2): $HELD packets held for their checkpoint, $AT_ONCE let through at once," \
    "$(_pg_led waitedBehindFlow) waited behind their flow, $(_pg_led droppedOverLimit) dropped over the limit"
  [ "$HELD" -gt 0 ] || lab_fail "no packet was held as protected under PG_NET=$2 (nothing marked?)"
  [ "${AT_ONCE:-0}" -gt 0 ] || lab_fail "no packet went through at once under PG_NET=$2: everything was held"
}

# After the kill (TK): the resumed guest answers on 7777 with boot0's id. Sets boot2, FAILOVER_S.
pg_wait_resumed() {
  local _
  boot2=
  for _ in $(seq 1 300); do boot2=$(lab_http "$IP" 7777 /boot 1); [ -n "$boot2" ] && break; sleep 1; done
  FAILOVER_S=$(awk -v a="${EPOCHREALTIME/./}" -v b="$TK" 'BEGIN { printf "%.1f", (a - b) / 1e6 }')
  lab_log "the resumed guest answers ${FAILOVER_S} s after the kill"
  if [ -n "$boot2" ] && [ "$boot2" = "$boot0" ]; then lab_log "ok: same boot id (resumed, not rebooted)"
  else lab_fail "boot id changed ('$boot0' -> '$boot2')"; fi
}

# The first commit of an INSERT sent after the kill (not one the dying primary released), within
# 300 s. Sets FIRST_US, KILL_TO_ACK_S.
pg_sent_after() {
  cat "$W"/ledger-*.log 2> /dev/null | awk -v k="$TK" '$3 - $2 * 1000 >= k { print $3 }' | sort -n | head -1
}
pg_first_commit() {
  local t
  t=$(lab_now)
  until [ -n "$(pg_sent_after)" ] || [ "$(lab_since "$t" | cut -d. -f1)" -gt 300 ]; do sleep 0.5; done
  FIRST_US=$(pg_sent_after)
  KILL_TO_ACK_S=$([ -n "$FIRST_US" ] && awk -v a="$FIRST_US" -v b="$TK" 'BEGIN { printf "%.1f", (a - b) / 1e6 }')
  lab_log "first commit acknowledged by the resumed guest ${KILL_TO_ACK_S:-never} s after the kill"
  [ -n "$FIRST_US" ] || lab_fail "no commit was acknowledged after the failover"
}

# The guest agent saw the backup's xenstore key and signalled the postmaster, which logged it
# (within ~60 s): the agent's log has more "SIGUSR2 sent" lines than AGENT0 (0), and PostgreSQL's
# a failover line other than PGLAST0 (the last one before this failover, "" if none). Sets
# AGENT_SIGNALLED, PG_ABORT_LOGGED (1 or 0).
pg_agent_check() { # pg_agent_check [AGENT0] [PGLAST0]
  local _ n last
  AGENT_SIGNALLED=0; PG_ABORT_LOGGED=0
  for _ in $(seq 1 60); do
    lab_http "$IP" 7777 /agentlog > "$W/agent.log"
    lab_http "$IP" 7777 /pglog > "$W/pglog-after.log"
    n=$(grep -c "SIGUSR2 sent" "$W/agent.log"); [ "$n" -gt "${1:-0}" ] && AGENT_SIGNALLED=1
    last=$(pg_failover_line < "$W/pglog-after.log")
    [ -n "$last" ] && [ "$last" != "${2:-}" ] && PG_ABORT_LOGGED=1
    [ $AGENT_SIGNALLED = 1 ] && [ $PG_ABORT_LOGGED = 1 ] && break
    sleep 1
  done
  sed 's/^/  agent: /' "$W/agent.log" | tail -n 4
  grep "failover" "$W/pglog-after.log" | tail -n 3 | sed 's/^/  postgres: /'
  [ $AGENT_SIGNALLED = 1 ] || lab_fail "the guest agent did not signal PostgreSQL after the failover"
  [ $PG_ABORT_LOGGED = 1 ] || lab_fail "PostgreSQL did not log the failover signal"
}
pg_failover_line() { grep "received RemusDB failover signal" | tail -n 1; } # < a PostgreSQL log: its last failover line

# Every id of IDS (sorted, unique) is a row of the resumed database. WHOSE names another ledger
# than this host's in the log. Sets ACKED, PRESENT, LOST.
pg_lost_check() { # pg_lost_check IDS [WHOSE]
  psql -X -Atc 'SELECT id FROM ledger' 2> "$W/select.err" | sort -u > "$W/present.ids"
  ACKED=$(wc -l < "$1"); PRESENT=$(wc -l < "$W/present.ids")
  LOST=$(comm -23 "$1" "$W/present.ids" | wc -l)
  lab_log "${2:+$2 }ledger: $ACKED ids acknowledged, $PRESENT rows in the resumed database, acknowledged but missing: $LOST"
  [ "$PRESENT" -gt 0 ] || lab_fail "the resumed database returned no ledger rows: $(cat "$W/select.err")"
  [ "$LOST" = 0 ] ||
    lab_fail "acknowledged commits lost${2:+ ($2 ledger)}: $(comm -23 "$1" "$W/present.ids" | head -5 | tr '\n' ' ')"
}

# TPC-B's balances agree (sum of accounts = tellers = branches = history: nothing half-applied).
pg_tpcb_check() { # pg_tpcb_check WHAT (the transactions behind them, for the log)
  read -r SA ST SB SH <<< "$(pg_tpcb_sums)"
  lab_log "TPC-B sums after the crash ($1):" \
    "accounts $SA tellers $ST branches $SB history $SH"
  [ -n "$SA" ] && [ "$SA" = "$ST" ] && [ "$SA" = "$SB" ] && [ "$SA" = "$SH" ] ||
    lab_fail "TPC-B balances disagree after failover: $SA $ST $SB $SH"
}

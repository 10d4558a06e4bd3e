#!/bin/bash
# record: `remusdb record` traces a running PV domU's dirty pages (log-dirty + read-only
# foreign mapping) into an RDTRACE1 file while a client reads its counter, then `remusdb
# bench trace` replays that trace in dom0 and verifies every epoch. Also checks that
# log-dirty is off after a recording (a PEEK of the bitmap stays 0 while the guest runs),
# that a second recorder is refused while one runs (the domain's host lock), that SIGINT ends a recording
# cleanly, that a new recording can start, and that the guest was not disturbed.
# Prints XENLAB NUMBERS record: epochs, dirty pages per epoch, trace bytes,
# bench trace's compression ratios. Knobs (dom0 env): RECORD_MEM, RECORD_INTERVAL,
# RECORD_SECONDS, RECORD_EPOCHS_MIN.
. /lab/dom0-lib.sh
lab_begin record
DOMU=domu
IP=10.99.0.2
MEM=${RECORD_MEM:-128}
INTERVAL=${RECORD_INTERVAL:-50}
SECS=${RECORD_SECONDS:-10}
EPOCHS_MIN=${RECORD_EPOCHS_MIN:-60}
TRACE=/tmp/domu.rdt
lab_domu_up "$DOMU" "$IP" 00:16:3e:00:00:02 "$MEM" || { lab_result; exit; }
cd "$REMUSDB" || lab_fail "no project"

# A client keeps reading the counter (the guest's httpd and shell loop dirty pages).
( while :; do lab_http "$IP" 7777 /counter 2 > /dev/null; sleep 0.2; done ) &
CLIENT=$!

# Dirty bits pending in the domain's log-dirty bitmap, read without clearing them (PEEK):
# always 0 while log-dirty is off (Xen frees the bitmap), soon > 0 while it is on.
peek_bits() {
  node -e 'const a = require(process.argv[1]); console.log(a.xenLogdirtyPeekClean(Number(process.argv[2]), Buffer.alloc(8192), false))' \
    "$REMUSDB/native-xc/build/Release/remusdb_native.node" "$(xl domid "$DOMU")" 2>&1
}
check_off() { # check_off WHEN: two peeks 2 s apart, the guest running, both 0
  local a b; a=$(peek_bits); sleep 2; b=$(peek_bits)
  [ "$a" = 0 ] && [ "$b" = 0 ] && lab_log "ok: log-dirty is off $1 (peek: $a, $b)" || lab_fail "log-dirty still on $1 (peek: '$a', '$b')"
}

# 1. The recording.
lab_step record $((SECS + 600)) node bin/remusdb record "$DOMU" --out "$TRACE" --interval "$INTERVAL" --seconds "$SECS" --json > /tmp/record.json 2> /tmp/record.err; rrc=$?
sed 's/^/  record: /' /tmp/record.err
[ $rrc = 0 ] || lab_fail "remusdb record failed (rc $rrc): $(tail -c 400 /tmp/record.err)"
check_off "after the recording"

# 2. A second recorder while one runs must be refused, clearly; Ctrl-C ends the first cleanly.
node bin/remusdb record "$DOMU" --out /tmp/a.rdt --interval "$INTERVAL" --seconds 120 --json > /tmp/a.json 2> /tmp/a.err &
AP=$!
for i in $(seq 1 600); do grep -q "^epoch 0:" /tmp/a.err && break; kill -0 $AP 2>/dev/null || break; sleep 0.5; done
if kill -0 $AP 2>/dev/null; then
  sleep 1; ON=$(peek_bits)
  lab_log "recorder A in its incremental epochs; peek shows $ON pending dirty bits"
  node bin/remusdb record "$DOMU" --out /tmp/busy.rdt --seconds 1 > /dev/null 2> /tmp/busy.err; brc=$?
  lab_log "recorder B while A runs: rc=$brc: $(head -c 700 /tmp/busy.err)"
  BUSY_ERRNO=$(grep -o 'errno [0-9]*' /tmp/busy.err | head -1 | cut -d' ' -f2)
  # remusdb's own trackers exclude each other by the domain's host lock (ERR_LOCKED); another
  # tool's is seen by its pending bits, or by Xen's refusal ("already on").
  [ $brc = 1 ] && grep -qE "already on|dirty tracking of $DOMU .*is held by process $AP" /tmp/busy.err \
    && lab_log "ok: B refused" || lab_fail "recorder B was not refused (lock or 'already on'; rc $brc)"
  kill -INT $AP
else
  lab_fail "recorder A ended before its first epoch: $(tail -c 600 /tmp/a.err)"
fi
wait $AP; arc=$?
sed 's/^/  A: /' /tmp/a.err
[ $arc = 0 ] && grep -q '"stoppedBy":"signal"' /tmp/a.json && lab_log "ok: A stopped by SIGINT, rc 0" || lab_fail "recorder A did not end cleanly on SIGINT (rc $arc)"
check_off "after SIGINT"
rm -f /tmp/a.rdt /tmp/busy.rdt # dom0's /tmp is small: the second recording below once hit ENOSPC
kill $CLIENT 2>/dev/null; wait $CLIENT 2>/dev/null

jf() { node -e 'const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").pop() || "{}"); const v = r[process.argv[2]]; console.log(v == null ? "" : v)' "$1" "$2" 2>/dev/null; }
EPOCHS=$(jf /tmp/record.json epochs); P50=$(jf /tmp/record.json dirtyP50); P99=$(jf /tmp/record.json dirtyP99)
FIRST=$(jf /tmp/record.json firstEpochPages); TOTAL=$(jf /tmp/record.json totalPages); UNREAD=$(jf /tmp/record.json pagesUnreadable)
BYTES=$(stat -c %s "$TRACE" 2>/dev/null); FIRST_MS=$(jf /tmp/record.json firstEpochMs); STOP=$(jf /tmp/record.json stoppedBy)
lab_log "trace: $EPOCHS epochs, first $FIRST of $TOTAL pages ($UNREAD unreadable), dirty p50 $P50 p99 $P99, $BYTES bytes, stopped by $STOP"
[[ "$EPOCHS" =~ ^[0-9]+$ ]] && [ "$EPOCHS" -ge "$EPOCHS_MIN" ] || lab_fail "only '$EPOCHS' epochs (want >= $EPOCHS_MIN)"

# 3. And a new recording can switch it on again.
lab_step record2 300 node bin/remusdb record "$DOMU" --out /tmp/domu2.rdt --interval "$INTERVAL" --seconds 2 > /dev/null 2> /tmp/record2.err \
  && lab_log "ok: log-dirty was off after the first recording (a second one ran)" \
  || lab_fail "a second recording failed: $(tail -c 400 /tmp/record2.err)"

# 4. The guest was never disturbed: same boot, counter advanced.
c1=$(lab_http "$IP" 7777 /counter 10); boot1=$(lab_http "$IP" 7777 /boot)
[ "$boot1" = "$boot0" ] && [[ "$c1" =~ ^[0-9]+$ ]] && [ "$c1" -gt "$c0" ] && lab_log "ok: guest still running (counter $c0 -> $c1)" \
  || lab_fail "guest disturbed: boot '$boot0' -> '$boot1', counter '$c0' -> '$c1'"

# 5. bench trace replays it through the codec and verifies every epoch.
lab_step bench 900 node bin/remusdb bench trace "$TRACE" --json > /tmp/bench.json 2> /tmp/bench.err || lab_fail "bench trace failed: $(tail -c 400 /tmp/bench.err)"
BE=$(jf /tmp/bench.json epochs); VER=$(jf /tmp/bench.json verified)
RATIO=$(jf /tmp/bench.json ratio); RINC=$(jf /tmp/bench.json ratio_incremental); HIT=$(jf /tmp/bench.json hit_rate_incremental)
SENT=$(jf /tmp/bench.json sent_bytes); SENTINC=$(jf /tmp/bench.json sent_bytes_incremental)
lab_log "bench trace: $BE epochs, verified $VER, ratio $RATIO, incremental $RINC, hit rate $HIT"
[ "$VER" = true ] && [ "$BE" = "$EPOCHS" ] || lab_fail "bench trace did not verify every epoch (verified '$VER', $BE of $EPOCHS epochs)"

echo "XENLAB NUMBERS record: mem_mib=$MEM interval_ms=$INTERVAL seconds=$SECS epochs=$EPOCHS total_pages=$TOTAL first_epoch_pages=$FIRST first_epoch_ms=$FIRST_MS unreadable=$UNREAD dirty_p50=$P50 dirty_p99=$P99 trace_bytes=$BYTES bench_ratio=$RATIO bench_ratio_incremental=$RINC hit_rate_incremental=$HIT sent_bytes=$SENT sent_bytes_incremental=$SENTINC busy_errno=${BUSY_ERRNO:-} peek_while_on=${ON:-}"
cp /tmp/record.json /tmp/record.err /tmp/record2.err /tmp/busy.err /tmp/a.json /tmp/a.err /tmp/bench.json /tmp/bench.err "$LAB_OUT/" 2>/dev/null
gzip -1 -c "$TRACE" > /tmp/domu.rdt.gz
GZ=$(stat -c %s /tmp/domu.rdt.gz)
lab_log "gzipped trace: $GZ bytes"
[ "$GZ" -lt $((2 * 1024 * 1024)) ] && cp /tmp/domu.rdt.gz "$LAB_OUT/"
xl destroy "$DOMU"
lab_result

#!/bin/bash
# suite.sh: several lab scenarios in ONE boot of the lab (run.sh a b c …). A boot of Xen and
# dom0 under QEMU costs 2-3 minutes; CI runs five scenarios, so one boot instead of five saves
# about a fifth of the lab's time. Runs inside dom0 as /lab/scenario.sh.
#
# For each NAME:BOUND_S in XENLAB_SUITE (run.sh: BOUND_S from the scenario's "# xenlab-bound:"
# line), in order: /lab/scenarios/NAME.sh runs in its own session (setsid) with its output in
# /lab/out/NAME.log, streamed to this script's output, under min(BOUND_S, what is left of
# XENLAB_SCENARIO_TIMEOUT). It prints its own
# "XENLAB RESULT NAME: …" line; when it dies without one (or is not started because the
# time ran out) this script prints a FAIL line for it. Between scenarios dom0 is put back
# as a fresh boot leaves it: the scenario's session killed, every domU destroyed, kernel NBD
# clients disconnected, remusdb processes gone, /tmp and /run/remusdb emptied, IFB devices
# removed. The suite's own last line is "XENLAB RESULT suite: PASS" when all passed.
. /lab/env # XENLAB_SUITE, XENLAB_SCENARIO_TIMEOUT (run.sh; init does not export them)
. /lab/dom0-lib.sh
lab_begin suite
END_S=$(($(date +%s) + ${XENLAB_SCENARIO_TIMEOUT:-3600} - 30)) # 30 s to hand logs back
START_MIN_S=120 # a scenario given less than this is not started
FAILED=()

suite_reset() { # suite_reset PGID: dom0 as a fresh boot leaves it
  local d n
  kill -KILL -- "-$1" 2>/dev/null
  for d in $(xl list 2>/dev/null | awk 'NR > 2 { print $2 }'); do xl destroy "$d" 2>/dev/null; done
  pkill -KILL -f "bin/remusdb" 2>/dev/null
  for n in /sys/block/nbd*; do
    [ -e "$n/pid" ] && nbd-client -d "/dev/${n##*/}" > /dev/null 2>&1
  done
  for n in $(ip -o link show type ifb 2>/dev/null | awk -F': ' '{ print $2 }'); do ip link del "${n%%@*}"; done
  rm -rf /tmp/* /run/remusdb
  sleep 1
}

for item in ${XENLAB_SUITE:-}; do
  name=${item%%:*} bound=${item#*:}
  left=$((END_S - $(date +%s)))
  if [ ! -f "/lab/scenarios/$name.sh" ]; then
    echo "XENLAB RESULT $name: FAIL no scenario $name.sh in the share"; FAILED+=("$name"); continue
  fi
  if [ "$left" -lt "$START_MIN_S" ]; then
    echo "XENLAB RESULT $name: FAIL not started: ${left}s of the lab's time left"; FAILED+=("$name"); continue
  fi
  step=$((left < bound ? left : bound))
  echo "XENLAB suite: $name start (bound ${step}s, uptime $(cut -d' ' -f1 /proc/uptime))"
  log=/lab/out/$name.log
  # A file, not a pipe: a scenario's stray children cannot keep the suite waiting.
  setsid timeout -k 10 "$step" bash "/lab/scenarios/$name.sh" > "$log" 2>&1 < /dev/null &
  pid=$!
  tail -n +1 -f --pid="$pid" "$log"
  wait "$pid"; rc=$?
  if ! grep -q "^XENLAB RESULT $name: " "$log"; then
    why="exited rc=$rc without a result line"
    [ "$rc" = 124 ] && why="timed out after ${step}s in dom0"
    echo "XENLAB RESULT $name: FAIL $why" | tee -a "$log"
  fi
  grep -q "^XENLAB RESULT $name: PASS" "$log" || FAILED+=("$name")
  suite_reset "$pid"
  echo "XENLAB suite: $name end rc=$rc uptime=$(cut -d' ' -f1 /proc/uptime)"
done

[ ${#FAILED[@]} = 0 ] || lab_fail "failed: ${FAILED[*]}"
lab_result

#!/bin/bash
# run.sh: runs one lab scenario inside a Xen dom0 booted under QEMU, unattended.
#
#   scripts/xen-lab/run.sh [--interactive] <scenario>     (npm run test:xen-lab = smoke)
#   scripts/xen-lab/run.sh <scenario> <scenario> …         (one boot for all: suite.sh; CI)
#
# 1. build-image.sh: the cached dom0 image for the current recipe (built when missing);
# 2. a run folder $XENLAB_CACHE/runs/<time>-<scenario>/ whose share/ becomes /lab in dom0
#    (9p): scenario.sh (scenarios/<scenario>.sh, or a path), dom0-lib.sh, dom0-pg-lib.sh, env, project.tar
#    (the current build of the project: bin/, dist/, package.json, runtime node_modules/,
#    the addon .node; init unpacks it to /opt/remusdb), in/ (XENLAB_IN, optional, and what
#    the scenario's "# xenlab-prepare:" scripts build, e.g. pg-guest.sh), out/;
# 3. QEMU (software emulation; settings known to work on these hosts: q35, -cpu Westmere,
#    single-threaded TCG, no NIC at all) boots Xen + dom0 with the image as a throwaway
#    snapshot, so the cached image never changes; the init script runs the scenario and
#    powers off. Serial console -> serial.log with host timestamps (seconds since QEMU start);
#    "XENLAB ..." marker lines are echoed here as they come (XENLAB_VERBOSE=1: every line);
# 4. the result line "XENLAB RESULT <scenario>: PASS|FAIL ..." decides the exit status
#    (0 PASS, 1 otherwise, also on timeout or no result); timings are printed and kept in
#    result.txt next to serial.log, share/out/ (scenario.log, Xen logs, scenario files).
# --interactive: the console is this terminal and dom0 opens a shell after the scenario
# (exit it to power off; Ctrl-A x quits QEMU).
# Several scenarios: suite.sh runs them in turn in one boot (prepare scripts of all of them,
# their xenlab-machine lines must agree); each one's "XENLAB RESULT" line is printed at the end
# and the exit status is 0 only when all passed. A scenario's "# xenlab-bound: S" line (else
# XENLAB_SUITE_STEP_S, 1200) bounds it in dom0; XENLAB_TIMEOUT bounds the whole boot (default:
# the scenarios' bounds + 600 s).
# Env: XENLAB_PROJECT (project dir, default this repo), XENLAB_IN (dir copied to /lab/in),
#   XENLAB_TIMEOUT (QEMU wall clock s, bounds + 600), XENLAB_SCENARIO_TIMEOUT (in dom0 s, the bound),
#   XENLAB_MEM (MiB, 4096), XENLAB_DOM0_MEM (1536M), XENLAB_SMP (2), XENLAB_KEEP_RUNS (10),
#   XENLAB_FAIL_TAIL (80: lines of a failed scenario's log printed at the end),
#   XENLAB_VARS ("NAME=value ..." exported to the scenario in dom0, and to its prepare scripts here: its knobs).
set -uo pipefail
. "$(dirname "$0")/lib.sh"
. "$XENLAB_DIR/stage.sh"

INTERACTIVE=0
[ "${1:-}" = --interactive ] && { INTERACTIVE=1; shift; }
[ $# -ge 1 ] ||
  { echo "usage: $0 [--interactive] <scenario name under scenarios/ | path to a script> [more names]" >&2; exit 2; }
scenario_file() { # scenario_file NAME|PATH: the script's path
  if [ -f "$1" ]; then echo "$1"; else echo "$XENLAB_DIR/scenarios/$1.sh"; fi
}
SCEN_FILES=()
for s in "$@"; do
  f=$(scenario_file "$s")
  [ -f "$f" ] ||
    xl_die "no scenario '$s' (have: $(cd "$XENLAB_DIR/scenarios" && ls -- *.sh | sed 's/\.sh$//' | tr '\n' ' '))"
  SCEN_FILES+=("$f")
done
scenario_bound() { # scenario_bound FILE: its "# xenlab-bound: S" line, else XENLAB_SUITE_STEP_S (1200)
  local b; b=$(sed -n 's/^# xenlab-bound: \([0-9]*\)$/\1/p' "$1" | head -1)
  echo "${b:-${XENLAB_SUITE_STEP_S:-1200}}"
}
SUITE="" # "name:bound_s …" for suite.sh
BOUNDS_S=0
for f in "${SCEN_FILES[@]}"; do BOUNDS_S=$((BOUNDS_S + $(scenario_bound "$f"))); done
if [ $# = 1 ]; then
  SCEN_FILE=${SCEN_FILES[0]}; SCEN=$(basename "$SCEN_FILE" .sh)
else # several scenarios share one boot (suite.sh runs them in turn)
  for f in "${SCEN_FILES[@]}"; do
    [[ "$f" == "$XENLAB_DIR/scenarios/"* ]] || xl_die "a suite takes scenario names under scenarios/, not '$f'"
    SUITE+="${SUITE:+ }$(basename "$f" .sh):$(scenario_bound "$f")"
  done
  SCEN_FILE=$XENLAB_DIR/suite.sh; SCEN=suite
fi
# A scenario names the machine it needs in a "# xenlab-machine: XENLAB_CPU=… XENLAB_HV=…"
# line (stage.sh, xl_qemu_argv); what the environment sets wins. In a suite the scenarios
# must agree (the first one's settings win; a different one is an error).
declare -A MACHINE=()
for f in "${SCEN_FILES[@]}"; do
  for kv in $(sed -n 's/^# xenlab-machine: //p' "$f"); do
    [[ "$kv" =~ ^XENLAB_(CPU|HV|XEN_ARGS)=[A-Za-z0-9_.,:=+-]+$ ]] ||
      xl_die "$f: xenlab-machine '$kv' is not XENLAB_CPU=…, XENLAB_HV=… or XENLAB_XEN_ARGS=…"
    k=${kv%%=*}
    [ -z "${MACHINE[$k]:-}" ] || [ "${MACHINE[$k]}" = "$kv" ] ||
      xl_die "$f: $kv differs from another scenario's ${MACHINE[$k]}"
    MACHINE[$k]=$kv
    [ -n "${!k:-}" ] || export "$kv"
  done
done
PROJECT=${XENLAB_PROJECT:-$XENLAB_REPO}
TIMEOUT=${XENLAB_TIMEOUT:-$((BOUNDS_S + 600))} # the scenarios' bounds and a boot
MEM=${XENLAB_MEM:-4096}
DOM0_MEM=${XENLAB_DOM0_MEM:-1536M}
SMP=${XENLAB_SMP:-2}
T_ALL=$(xl_now)

# 1. image
T=$(xl_now)
IMG=$("$XENLAB_DIR/build-image.sh" | tail -1)
[ -f "$IMG/complete" ] || xl_die "image build failed"
T_IMAGE=$(xl_since "$T")

# 2. run folder and share
RUN=$XENLAB_CACHE/runs/$(date +%Y%m%d-%H%M%S)-$SCEN
SHARE=$RUN/share
mkdir -p "$SHARE/out" "$SHARE/in"
install -m 0755 "$SCEN_FILE" "$SHARE/scenario.sh"
cp -a "$XENLAB_DIR/scenarios" "$SHARE/scenarios" # a scenario may run another with its own knobs
install -m 0644 "$XENLAB_DIR/dom0-lib.sh" "$XENLAB_DIR/dom0-pg-lib.sh" "$SHARE/" # dom0-pg-lib.sh: protect-pg's
SCEN_TIMEOUT=${XENLAB_SCENARIO_TIMEOUT:-$BOUNDS_S} # one scenario: its bound
[ -n "$SUITE" ] && SCEN_TIMEOUT=${XENLAB_SCENARIO_TIMEOUT:-$((TIMEOUT - 240))} # a suite: QEMU's less the boot
xl_scenario_env "$SCEN" "$SCEN_TIMEOUT" > "$SHARE/env"
[ -n "$SUITE" ] && printf 'XENLAB_SUITE=%q\n' "$SUITE" >> "$SHARE/env"
[ -n "${XENLAB_IN:-}" ] && cp -a "$XENLAB_IN"/. "$SHARE/in/"
# Files a scenario needs built on this host (a guest disk, client programs, a guest kernel):
# its "# xenlab-prepare: NAME.sh" lines name scripts in scripts/xen-lab, run with share/in
# and the scenario's knobs (XENLAB_VARS) in their environment, as the scenario gets them.
mapfile -t PREPS < <(xl_prepare_list "${SCEN_FILES[@]}")
xl_prepare "$SCEN" "$SHARE/in" "${PREPS[@]}"

xl_stage_project "$PROJECT" "$RUN/project" "$SHARE/project.tar"

# Keep the newest runs only.
xl_prune_runs

# 3. QEMU: one lab VM at a time on this machine.
xl_lab_lock
xl_qemu_argv "$IMG" "$SHARE" "$RUN/qemu.pid" "$([ $INTERACTIVE = 1 ] && echo xenlab.shell=1)"
QEMU=("${QEMU_ARGV[@]}")
printf '%q ' "${QEMU[@]}" > "$RUN/qemu-cmdline.txt"; echo >> "$RUN/qemu-cmdline.txt"
LOG=$RUN/serial.log
cleanup() { # on Ctrl-C/TERM: stop this run's QEMU (by its pidfile, only if it is still QEMU)
  local pid; pid=$(cat "$RUN/qemu.pid" 2>/dev/null) || return 0
  grep -q '^qemu-system' "/proc/$pid/comm" 2>/dev/null && kill "$pid"
}
trap 'cleanup; wait; exit 130' INT TERM
xl_log "scenario $SCEN: booting Xen (image $(basename "$IMG"), ${MEM} MiB, dom0 $DOM0_MEM); serial log $LOG"
T_QEMU=$(xl_now)
if [ $INTERACTIVE = 1 ]; then
  timeout --foreground -k 20 "$TIMEOUT" "${QEMU[@]}" -serial mon:stdio | tee "$LOG"
  QRC=${PIPESTATUS[0]}
else
  # In the background + wait, so that a TERM/INT to this script runs the trap at once.
  T0=${EPOCHREALTIME/./}
  { timeout -k 20 "$TIMEOUT" "${QEMU[@]}" -monitor none -serial stdio < /dev/null 2>&1
    echo $? > "$RUN/qemu.rc"; } |
    while IFS= read -r line; do
      line=${line%$'\r'}
      d=$(( (${EPOCHREALTIME/./} - T0) / 10000 ))
      printf '[%5d.%02d] %s\n' $((d / 100)) $((d % 100)) "$line" >> "$LOG"
      if [ "${XENLAB_VERBOSE:-0}" = 1 ] || [[ "$line" == XENLAB\ * ]]; then
        printf '[%5d.%02d] %s\n' $((d / 100)) $((d % 100)) "$line" >&2
      fi
    done &
  wait $!
  QRC=$(cat "$RUN/qemu.rc" 2>/dev/null || echo "?")
fi
T_VM=$(xl_since "$T_QEMU")
trap - INT TERM
exec 8>&-

# 4. result and timings
stamp() { grep -m1 -F "$1" "$LOG" | sed -n 's/^\[ *\([0-9.]*\)\].*/\1/p'; }
RESULT=$(grep -h '^XENLAB RESULT ' "$SHARE/out/scenario.log" 2>/dev/null | tail -1)
[ -z "$RESULT" ] && RESULT=$(sed -n 's/^\[[ 0-9.]*\] \(XENLAB RESULT .*\)/\1/p' "$LOG" | tail -1)
if [ -z "$RESULT" ]; then
  why="no result line"
  [ "$QRC" = 124 ] && why="QEMU timed out after ${TIMEOUT}s"
  grep -q -E 'Kernel panic|Panic on CPU' "$LOG" && why="$why (panic in the serial log)"
  RESULT="XENLAB RESULT $SCEN: FAIL $why"
fi
T_INIT=$(stamp "XENLAB dom0 init: start"); T_UP=$(stamp "XENLAB dom0 up:")
T_S0=$(stamp "XENLAB scenario $SCEN: start"); T_S1=$(stamp "XENLAB scenario $SCEN: end")
T_SCEN=$( [ -n "$T_S0" ] && [ -n "$T_S1" ] && awk -v a="$T_S1" -v b="$T_S0" 'BEGIN { printf "%.1f", a - b }')
{
  echo "$RESULT"
  echo "image:     ${T_IMAGE}s ($(basename "$IMG"))"
  if [ $INTERACTIVE = 1 ]; then
    echo "boot:      not measured with --interactive (no timestamps)"
  else
    echo "boot:      ${T_INIT:-?}s to dom0 init, ${T_UP:-?}s to dom0 up with Xen daemons (since QEMU start)"
    echo "scenario:  ${T_SCEN:-?}s"
  fi
  echo "qemu:      ${T_VM}s, rc=$QRC"
  echo "total:     $(xl_since "$T_ALL")s"
  [ -n "$SUITE" ] && grep -h '^XENLAB RESULT ' "$SHARE/out/scenario.log" 2>/dev/null | grep -v '^XENLAB RESULT suite: '
  echo "logs:      $RUN (serial.log, share/out/)"
} | tee "$RUN/result.txt" >&2
# A failed scenario's last lines go to the console too: CI keeps only what was printed.
failed_logs() {
  if [ -z "$SUITE" ]; then [[ "$RESULT" == *": PASS" ]] || echo "$SHARE/out/scenario.log"; return; fi
  grep -h '^XENLAB RESULT .*: FAIL' "$SHARE/out/scenario.log" 2>/dev/null |
    sed -n 's/^XENLAB RESULT \([^:]*\): .*/\1/p' | grep -vx suite | sed "s|.*|$SHARE/out/&.log|"
}
for f in $(failed_logs); do
  [ -f "$f" ] || continue
  echo "--- the last ${XENLAB_FAIL_TAIL:-80} lines of $f" >&2
  tail -n "${XENLAB_FAIL_TAIL:-80}" "$f" >&2
done
[[ "$RESULT" == *": PASS" ]]

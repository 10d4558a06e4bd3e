#!/usr/bin/env bash
# ci.sh: the guest-patch CI job. Runs the three checks one after the other (never two
# heavy builds at once), prints one PASS/FAIL line per part with its wall time, and exits
# nonzero if any part failed. Everything is cached under $CACHE (see lib.sh); a rerun with
# unchanged patches takes seconds. Afterwards the patched PostgreSQL is at
# $CACHE/pg/patched/bin: run test/70 with REMUSDB_PG_PATCHED_BIN set to it (--test does).
set -uo pipefail
DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$DIR/../.." && pwd)
CACHE=${REMUSDB_GUEST_CACHE:-/var/cache/remusdb-guest}
RUN_TEST=0
[ "${1:-}" = "--test" ] && RUN_TEST=1

failed=0
part() {   # <name> <command...>
  local name=$1; shift
  local t0=$SECONDS
  if "$@"; then
    echo "PASS guest-patches/$name ($((SECONDS - t0)) s)"
  else
    echo "FAIL guest-patches/$name ($((SECONDS - t0)) s)"; failed=1
  fi
}

t_all=$SECONDS
part postgresql "$DIR/build-postgresql.sh"
part linux "$DIR/fetch-and-check-linux.sh"
part mysql "$DIR/check-mariadb.sh"
if [ "$RUN_TEST" = 1 ]; then
  part test-70 env REMUSDB_PG_PATCHED_BIN="$CACHE/pg/patched/bin" \
    sh -c "cd '$REPO' && npx mocha --no-config --timeout 120000 dist/test/70-guest-patches.test.js"
fi
echo "guest-patches: $([ $failed = 0 ] && echo PASS || echo FAIL) in $((SECONDS - t_all)) s"
exit $failed

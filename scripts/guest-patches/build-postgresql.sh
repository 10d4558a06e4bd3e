#!/usr/bin/env bash
# build-postgresql.sh: builds PostgreSQL 15.18 (Debian's postgresql-15 15.18-0+deb12u1
# source, upstream tarball) with guest-patches/postgresql applied, cached under
# $CACHE/pg: `base` is the stock tree configured and built once (installed to
# base-install: the stock server, for comparisons); `patched-<hash>` is a copy of it with
# the patches applied and rebuilt (only the touched objects), keyed by the patches' hash,
# installed to patched-<hash>/install. `patched` points at the current one. Prints the
# line REMUSDB_PG_PATCHED_BIN=<dir> last. Idempotent; works from an empty cache.
# shellcheck source=scripts/guest-patches/lib.sh
source "$(dirname "$0")/lib.sh"

PG_VERSION=15.18
DEB_VERSION=15.18-0+deb12u1
ORIG=postgresql-15_$PG_VERSION.orig.tar.bz2
PATCHES=("$REPO"/guest-patches/postgresql/*.patch)
HASH=$(hash_files "${PATCHES[@]}")
PG=$CACHE/pg
BASE=$PG/base
OUT=$PG/patched-$HASH
mkdir -p "$PG"

build_base() {
  [ "$(cat "$BASE/.built" 2>/dev/null)" = "$PG_VERSION" ] && { log "stock build cached ($BASE)"; return 0; }
  fetch_source postgresql-15 "$DEB_VERSION" "$ORIG"
  rm -rf "$BASE" "$PG/base-install"; mkdir -p "$BASE"
  tar xjf "$CACHE/src/$ORIG" -C "$BASE" --strip-components=1
  log "configuring and building stock PostgreSQL $PG_VERSION (a few minutes)"
  (cd "$BASE" && nice -n 10 ./configure --prefix="$PG/base-install" --without-icu --without-readline >configure.log 2>&1 \
    && nice -n 10 make -j"$JOBS" -s >make.log 2>&1 && make -s install >install.log 2>&1) \
    || { tail -n 30 "$BASE"/*.log >&2; return 1; }
  echo "$PG_VERSION" >"$BASE/.built"
}

build_patched() {
  [ -x "$OUT/install/bin/postgres" ] && { log "patched build cached ($OUT)"; return 0; }
  rm -rf "$OUT"; mkdir -p "$OUT"
  cp -a "$BASE" "$OUT/tree"
  local p
  for p in "${PATCHES[@]}"; do
    patch -d "$OUT/tree" -p1 --forward --quiet <"$p" || { log "patch $(basename "$p") does not apply"; return 1; }
  done
  log "rebuilding the patched objects"
  (cd "$OUT/tree" && nice -n 10 make -j"$JOBS" -s >make-patched.log 2>&1 \
    && make -s install DESTDIR="$OUT/destdir" >install-patched.log 2>&1) \
    || { tail -n 30 "$OUT"/tree/*-patched.log >&2; return 1; }
  if grep -h 'warning:' "$OUT/tree/make-patched.log" >&2; then
    log "the patched build has compiler warnings"; rm -rf "$OUT"; return 1
  fi
  mv "$OUT/destdir$PG/base-install" "$OUT/install"   # PostgreSQL installs are relocatable
  rm -rf "$OUT/destdir" "$OUT/tree"
  grep -q 'RemusDB failover' "$OUT/install/bin/postgres" || { log "patched binary lacks the RemusDB code"; return 1; }
}

# Keeps the cache bounded: only the current patched build stays.
prune_old() {
  local d
  for d in "$PG"/patched-*; do [ "$d" = "$OUT" ] || [ ! -d "$d" ] || rm -rf "$d"; done
}

timed "stock PostgreSQL build" build_base
timed "patched PostgreSQL build" build_patched
prune_old
ln -sfn "$OUT/install" "$PG/patched"
echo "REMUSDB_PG_PATCHED_BIN=$OUT/install/bin"

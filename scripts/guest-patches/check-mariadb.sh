#!/usr/bin/env bash
# check-mariadb.sh: checks guest-patches/mysql against MariaDB 10.11.18 (Debian's
# mariadb 1:10.11.18-0+deb12u1 source, Debian patches applied): it must apply without
# fuzz and the files it touches must compile. Cached under $CACHE/mariadb: `base` is the
# unpacked source with a CMake build directory configured once (generated headers and the
# stock objects built). Each check mounts an overlay on top of `base` itself (the build
# directory holds absolute paths), applies the patch there, rebuilds only the touched
# objects and unmounts, so `base` stays pristine; the result is remembered per patch hash.
# Without overlay mounts (not root) it patches `base` in place and reverses it afterwards.
# shellcheck source=scripts/guest-patches/lib.sh
source "$(dirname "$0")/lib.sh"

DEB_VERSION=1:10.11.18-0+deb12u1
DSC=mariadb_10.11.18-0+deb12u1.dsc
PATCHES=("$REPO"/guest-patches/mysql/*.patch)
# directory in the build tree : object targets (CMake's per-object make targets)
OBJECTS=("sql:handler.cc.o sql_parse.cc.o mysqld.cc.o" "vio:viosocket.c.o")
HASH=$(hash_files "${PATCHES[@]}")
M=$CACHE/mariadb
BASE=$M/base
BUILD=$BASE/build-remusdb
OUT=$M/checked-$HASH
CMAKE_FLAGS=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DWITH_SSL=system -DWITH_PCRE=system -DWITH_WSREP=OFF
  -DWITH_UNIT_TESTS=OFF -DWITH_EMBEDDED_SERVER=OFF -DPLUGIN_MROONGA=NO -DPLUGIN_ROCKSDB=NO
  -DPLUGIN_SPIDER=NO -DPLUGIN_CONNECT=NO -DPLUGIN_COLUMNSTORE=NO -DPLUGIN_S3=NO -DPLUGIN_OQGRAPH=NO)
mkdir -p "$M"

build_objects() {
  local entry
  for entry in "${OBJECTS[@]}"; do
    # shellcheck disable=SC2086
    nice -n 10 make -s -C "$BUILD/${entry%%:*}" -j"$JOBS" ${entry#*:} || return 1
  done
}

prepare_base() {
  [ "$(cat "$BASE/.prepared" 2>/dev/null)" = "$DEB_VERSION" ] && { log "configured MariaDB tree cached ($BASE)"; return 0; }
  fetch_source mariadb "$DEB_VERSION" "$DSC"
  rm -rf "$BASE" "$M/unpack"
  log "unpacking mariadb $DEB_VERSION with Debian's patches"
  nice -n 10 dpkg-source --no-check -x "$CACHE/src/$DSC" "$M/unpack" >"$M/unpack.log" 2>&1 \
    || { tail -n 20 "$M/unpack.log" >&2; return 1; }
  mv "$M/unpack" "$BASE"
  log "cmake configure, generated sources, stock objects"
  mkdir -p "$BUILD"
  (cd "$BUILD" && nice -n 10 cmake .. "${CMAKE_FLAGS[@]}" && nice -n 10 make -s -j"$JOBS" GenError GenServerSource \
    && build_objects) >"$M/prepare.log" 2>&1 || { tail -n 30 "$M/prepare.log" >&2; return 1; }
  echo "$DEB_VERSION" >"$BASE/.prepared"
}

MODE=
unpatch() {
  case $MODE in
    overlay) umount "$BASE" ;;
    inplace) local i; for ((i = ${#PATCHES[@]} - 1; i >= 0; i--)); do patch -d "$BASE" -p1 -R --quiet <"${PATCHES[$i]}"; done ;;
  esac
  MODE=
  rm -rf "$OUT/upper" "$OUT/work"
}

check_patched() {
  [ -f "$OUT/ok" ] && { log "patch $HASH already checked ($OUT)"; return 0; }
  if mountpoint -q "$BASE"; then umount "$BASE"; fi          # left over by a killed run
  rm -rf "$OUT"; mkdir -p "$OUT/upper" "$OUT/work"
  trap unpatch EXIT
  if mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$OUT/upper,workdir=$OUT/work" "$BASE" 2>/dev/null; then
    MODE=overlay
  else
    MODE=inplace
  fi
  local p applied=()
  for p in "${PATCHES[@]}"; do
    if ! patch -d "$BASE" -p1 -F0 --forward --dry-run <"$p" >"$OUT/patch.log" 2>&1 \
      || ! patch -d "$BASE" -p1 -F0 --forward --no-backup-if-mismatch --quiet <"$p" >>"$OUT/patch.log" 2>&1; then
      cat "$OUT/patch.log" >&2; log "$(basename "$p") does not apply cleanly"
      [ "$MODE" = inplace ] && PATCHES=("${applied[@]}")
      unpatch; return 1
    fi
    applied+=("$p")
  done
  log "building the patched objects"
  if ! build_objects >"$OUT/build.log" 2>&1; then cat "$OUT/build.log" >&2; unpatch; return 1; fi
  if grep -q 'warning:' "$OUT/build.log"; then
    grep 'warning:' "$OUT/build.log" >&2; log "the patched objects compile with warnings"; unpatch; return 1
  fi
  unpatch
  trap - EXIT
  touch "$OUT/ok"
}

prune_old() {
  local d
  for d in "$M"/checked-*; do [ "$d" = "$OUT" ] || [ ! -d "$d" ] || rm -rf "$d"; done
}

timed "MariaDB tree (fetch, unpack, configure, generate)" prepare_base
timed "MariaDB patch check" check_patched
prune_old

#!/usr/bin/env bash
# fetch-and-check-linux.sh: checks guest-patches/linux against Debian bookworm's kernel
# source (linux 6.1.176-1, `apt-get source` = upstream tarball + Debian's patch series):
# the patch must apply without fuzz, and the files it touches must compile in a prepared
# x86_64 defconfig tree. Cached under $CACHE/linux: `base` is the unpacked, prepared tree
# (its touched objects built once, as the stock reference); each check overlays it (an
# overlayfs mount; a full copy where mounting is not allowed), applies the patch and
# rebuilds just those objects; the result is remembered per patch hash.
# shellcheck source=scripts/guest-patches/lib.sh
source "$(dirname "$0")/lib.sh"

DEB_VERSION=6.1.176-1
ORIG=linux_6.1.176.orig.tar.xz
PATCHES=("$REPO"/guest-patches/linux/*.patch)
OBJECTS=(net/ipv4/tcp.o net/ipv4/tcp_output.o net/ipv4/ip_sockglue.o net/ipv6/ipv6_sockglue.o)
HASH=$(hash_files "${PATCHES[@]}")
L=$CACHE/linux
BASE=$L/base
OUT=$L/checked-$HASH
mkdir -p "$L"

kmake() { nice -n 10 make -s -j"$JOBS" "$@"; }

prepare_base() {
  [ "$(cat "$BASE/.prepared" 2>/dev/null)" = "$DEB_VERSION" ] && { log "prepared kernel tree cached ($BASE)"; return 0; }
  fetch_source linux "$DEB_VERSION" "$ORIG"
  rm -rf "$BASE" "$L/unpack"
  log "unpacking linux $DEB_VERSION with Debian's patches"
  nice -n 10 dpkg-source --no-check -x "$CACHE/src/linux_$DEB_VERSION.dsc" "$L/unpack" >"$L/unpack.log" 2>&1 \
    || { tail -n 20 "$L/unpack.log" >&2; return 1; }
  mv "$L/unpack" "$BASE"
  log "make defconfig prepare; stock objects: ${OBJECTS[*]}"
  (cd "$BASE" && kmake defconfig >/dev/null && kmake prepare && kmake "${OBJECTS[@]}") >"$L/prepare.log" 2>&1 \
    || { tail -n 30 "$L/prepare.log" >&2; return 1; }
  echo "$DEB_VERSION" >"$BASE/.prepared"
}

check_patched() {
  [ -f "$OUT/ok" ] && { log "patch $HASH already checked ($OUT)"; return 0; }
  rm -rf "$OUT"; mkdir -p "$OUT/tree" "$OUT/upper" "$OUT/work"
  if mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$OUT/upper,workdir=$OUT/work" "$OUT/tree" 2>/dev/null; then
    trap 'umount "$OUT/tree" 2>/dev/null || true' EXIT
  else
    rmdir "$OUT/tree"; cp -a "$BASE" "$OUT/tree"
  fi
  local p
  for p in "${PATCHES[@]}"; do
    # -F0: no fuzz; a patch that needs fuzz does not apply "cleanly"
    patch -d "$OUT/tree" -p1 -F0 --forward --no-backup-if-mismatch <"$p" >"$OUT/patch.log" 2>&1 \
      || { cat "$OUT/patch.log" >&2; log "$(basename "$p") does not apply cleanly"; drop_tree; return 1; }
  done
  log "building the patched objects"
  (cd "$OUT/tree" && kmake "${OBJECTS[@]}") >"$OUT/build.log" 2>&1 \
    || { cat "$OUT/build.log" >&2; drop_tree; return 1; }
  if grep -q 'warning:' "$OUT/build.log"; then
    grep 'warning:' "$OUT/build.log" >&2; log "the patched objects compile with warnings"; drop_tree; return 1
  fi
  drop_tree
  touch "$OUT/ok"
}

drop_tree() {
  if mountpoint -q "$OUT/tree"; then umount "$OUT/tree"; fi
  rm -rf "$OUT/tree" "$OUT/upper" "$OUT/work"
}

prune_old() {
  local d
  for d in "$L"/checked-*; do [ "$d" = "$OUT" ] || [ ! -d "$d" ] || rm -rf "$d"; done
}

timed "kernel tree (fetch, unpack, prepare)" prepare_base
timed "kernel patch check" check_patched
prune_old

#!/bin/bash
# guest-kernel.sh: builds (or finds cached) the lab's patched domU kernel: Debian bookworm's
# linux 6.1 with guest-patches/linux (TCP_REMUS_PROTECT), so that the patched PostgreSQL in
# protect-pg marks its commit acknowledgements through the kernel rather than by IP_TOS.
#
#   scripts/xen-lab/guest-kernel.sh [--print-dir]        -> last line: the cache folder
#   scripts/xen-lab/guest-kernel.sh <out-dir>            (as a scenario's "# xenlab-prepare:")
#
# Why a kernel of our own: Debian's kernel (what the domU boots by default, dom0's) lacks the
# option; the patch is checked to apply and compile by scripts/guest-patches, but only a
# booted kernel shows it working under Xen.
# How: the source is the one scripts/guest-patches/fetch-and-check-linux.sh unpacked (Debian's
# source package, $REMUSDB_GUEST_CACHE/linux/base; that script fetches and unpacks it when it
# is missing). A copy of it, cleaned (`make mrproper`: base is a prepared defconfig tree),
# gets the patch (no fuzz), then `make tinyconfig`, guest-kernel.config merged on top
# (scripts/kconfig/merge_config.sh) and `make olddefconfig`. Every line of the fragment must
# be in the final .config (else: which option Kconfig dropped, and the build stops), and the
# patch's functions must be in System.map (it has no Kconfig option of its own). Then
# `make bzImage` (nice 10, -j$XENLAB_KERNEL_JOBS, default 2).
# Cached in $XENLAB_CACHE/guest-kernel/<key>/ (bzImage, config, System.map, release, seconds =
# the build's wall time, build.log); key = hash of the source version, the patch, the fragment
# and this script. The newest two are kept. A cold build is 4–12 min on the lab machine.
# As a prepare script (one argument, a folder): with PG_KERNEL=patched (run.sh passes the
# scenario's XENLAB_VARS to its prepare scripts) the bzImage goes to <out-dir>/guest-bzImage,
# which dom0 sees as /lab/in/guest-bzImage; with PG_KERNEL unset or stock it does nothing.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

GUEST_CACHE=${REMUSDB_GUEST_CACHE:-/var/cache/remusdb-guest}
BASE=$GUEST_CACHE/linux/base
PATCH=$XENLAB_REPO/guest-patches/linux/0001-tcp-remusdb-commit-protection.patch
FRAGMENT=$XENLAB_DIR/guest-kernel.config
JOBS=${XENLAB_KERNEL_JOBS:-2}
# Symbols the patch adds: present in System.map only if the patched tcp.c was built.
PATCH_SYMBOLS="tcp_remus_sending tcp_remus_tos_changed"

OUT_DIR=
PRINT=0
case "${1:-}" in
  "") ;;
  --print-dir) PRINT=1 ;;
  -*) echo "usage: $0 [--print-dir | <out-dir>]" >&2; exit 2 ;;
  *) OUT_DIR=$1
     case "${PG_KERNEL:-stock}" in
       stock) xl_log "guest kernel: PG_KERNEL=stock, the domU boots dom0's Debian kernel"; exit 0 ;;
       patched) ;;
       *) xl_die "PG_KERNEL '${PG_KERNEL}' is not patched or stock" ;;
     esac ;;
esac

# The unpacked source: scripts/guest-patches makes it (and checks the patch) when missing.
if [ ! -f "$BASE/.prepared" ]; then
  xl_log "no kernel source at $BASE: running scripts/guest-patches/fetch-and-check-linux.sh"
  "$XENLAB_REPO/scripts/guest-patches/fetch-and-check-linux.sh" || xl_die "fetching the kernel source failed"
fi
SRC_VERSION=$(cat "$BASE/.prepared")
[ -f "$PATCH" ] || xl_die "no patch at $PATCH"
KEY=$( { echo "linux $SRC_VERSION"; cat "$PATCH" "$FRAGMENT" "$0"; } | sha256sum | cut -c1-16)
CACHE=$XENLAB_CACHE/guest-kernel
OUT=$CACHE/$KEY
if [ "$PRINT" = 1 ]; then echo "$OUT"; [ -f "$OUT/bzImage" ]; exit; fi

# fragment_lines: the fragment's settings, "CONFIG_X=v" or "# CONFIG_X is not set".
fragment_lines() { grep -E '^(CONFIG_[A-Z0-9_]+=.*|# CONFIG_[A-Z0-9_]+ is not set)$' "$FRAGMENT"; }

# check_config CONFIG: every setting of the fragment is in CONFIG; names those that are not.
check_config() {
  local line missing=0 sym have
  while IFS= read -r line; do
    grep -qxF -- "$line" "$1" && continue
    sym=$(sed -E 's/^# (CONFIG_[A-Z0-9_]+) is not set$/\1/; s/=.*//' <<< "$line")
    have=$(grep -E "^($sym=|# $sym is not set)" "$1" || echo "absent: its dependencies are not met")
    xl_log "guest kernel config: wanted '$line', got '$have'"
    missing=$((missing + 1))
  done < <(fragment_lines)
  [ "$missing" = 0 ] || { xl_log "guest kernel config: $missing option(s) of $FRAGMENT did not survive"; return 1; }
}

build() {
  local work=$CACHE/work-$KEY tree t0 sym
  tree=$work/tree
  rm -rf "$work"; mkdir -p "$work"
  xl_log "guest kernel $KEY: copying linux $SRC_VERSION from $BASE"
  cp -a "$BASE" "$tree"
  local kmake=(nice -n 10 make -C "$tree" -s)
  "${kmake[@]}" mrproper
  patch -d "$tree" -p1 -F0 --forward --no-backup-if-mismatch < "$PATCH" > "$work/patch.log" 2>&1 ||
    { cat "$work/patch.log" >&2; xl_die "$(basename "$PATCH") does not apply to linux $SRC_VERSION without fuzz"; }
  # The release names the build: uname -r in the guest says which kernel it booted.
  "${kmake[@]}" LOCALVERSION=-remusdb tinyconfig > "$work/config.log" 2>&1
  (cd "$tree" && ./scripts/kconfig/merge_config.sh -m .config "$FRAGMENT") >> "$work/config.log" 2>&1 ||
    { tail -n 20 "$work/config.log" >&2; xl_die "merging $FRAGMENT failed"; }
  "${kmake[@]}" LOCALVERSION=-remusdb olddefconfig >> "$work/config.log" 2>&1
  check_config "$tree/.config" || xl_die "the guest kernel's config lacks options of the fragment (above)"
  xl_log "guest kernel $KEY: config ok ($(grep -c '=y$' "$tree/.config") options built in); make -j$JOBS bzImage"
  t0=$(xl_now)
  if ! nice -n 10 make -C "$tree" -j"$JOBS" LOCALVERSION=-remusdb bzImage > "$work/build.log" 2>&1; then
    grep -E 'error|Error' "$work/build.log" | head -n 20 >&2
    xl_die "the guest kernel build failed (log: $work/build.log)"
  fi
  for sym in $PATCH_SYMBOLS; do
    grep -q " $sym$" "$tree/System.map" || xl_die "System.map lacks $sym: the patched tcp.c was not built in"
  done
  mkdir -p "$work/out"
  xl_since "$t0" > "$work/out/seconds"
  cp "$tree/arch/x86/boot/bzImage" "$tree/.config" "$tree/System.map" "$work/build.log" "$work/config.log" "$work/out/"
  mv "$work/out/.config" "$work/out/config"
  cat "$tree/include/config/kernel.release" > "$work/out/release"
  rm -rf "$OUT"; mv "$work/out" "$OUT"
  rm -rf "$work"
}

if [ ! -f "$OUT/bzImage" ]; then
  mkdir -p "$CACHE"; exec 9> "$CACHE/.lock"
  flock -w 3600 9 || xl_die "another guest kernel build holds $CACHE/.lock"
  if [ ! -f "$OUT/bzImage" ]; then
    xl_log "building the guest kernel $KEY (linux $SRC_VERSION + $(basename "$PATCH"), $(basename "$FRAGMENT"))"
    build
    xl_log "guest kernel $KEY built in $(cat "$OUT/seconds") s: $(cat "$OUT/release")," \
      "$(du -h "$OUT/bzImage" | cut -f1)"
    ls -1td "$CACHE"/*/ | grep -v '/work-' | tail -n +3 | xargs -r rm -rf
  fi
fi
if [ -n "$OUT_DIR" ]; then
  mkdir -p "$OUT_DIR"
  cp "$OUT/bzImage" "$OUT_DIR/guest-bzImage"
  cat "$OUT/release" > "$OUT_DIR/guest-kernel.release"
  xl_log "guest kernel $KEY ($(cat "$OUT/release"), built in $(cat "$OUT/seconds") s) -> $OUT_DIR/guest-bzImage"
fi
echo "$OUT"

# shellcheck shell=bash disable=SC2034
# lib.sh: shared helpers for the guest-patch CI scripts (sourced, not run). Cache root,
# timing, PASS/FAIL lines, enabling deb-src and fetching a Debian source package once.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${REMUSDB_GUEST_CACHE:-/var/cache/remusdb-guest}
JOBS=${REMUSDB_GUEST_JOBS:-2}
mkdir -p "$CACHE/src"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Short content hash of files (what a cached build is keyed by).
hash_files() { cat "$@" | sha256sum | cut -c1-12; }

# Makes apt see source packages: adds deb-src to the Types of the deb822 sources.
enable_deb_src() {
  local changed=0 f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    if grep -q '^Types: deb$' "$f"; then sed -i 's/^Types: deb$/Types: deb deb-src/' "$f"; changed=1; fi
  done
  if [ "$changed" = 1 ] || ! apt-cache showsrc hello >/dev/null 2>&1 || [ -z "$(apt-cache showsrc hello 2>/dev/null)" ]; then
    apt-get update -qq
  fi
}

# fetch_source <package> <version> <file-glob>: downloads the source package into
# $CACHE/src unless a file matching the glob is already there.
fetch_source() {
  local pkg=$1 ver=$2 glob=$3
  if ! compgen -G "$CACHE/src/$glob" >/dev/null; then
    enable_deb_src
    log "downloading $pkg=$ver source"
    (cd "$CACHE/src" && apt-get source --download-only -qq "$pkg=$ver" >/dev/null 2>&1) \
      || { log "apt-get source $pkg=$ver failed"; return 1; }
  fi
}

# timed <label> <command...>: runs the command, prints its wall time.
timed() {
  local label=$1; shift
  local t0=$SECONDS rc=0
  "$@" || rc=$?
  log "$label took $((SECONDS - t0)) s"
  return $rc
}

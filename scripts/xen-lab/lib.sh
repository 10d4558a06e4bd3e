# lib.sh: shared by the host side of the Xen lab (build-image.sh, run.sh); sourced, not run.
# It holds the paths (cache, per-key image folder, runs), logging and timing helpers, the
# host packages the lab needs, and the cache key: a hash of every file that goes into the
# dom0 image, so an unchanged recipe reuses the cached image and a changed one rebuilds it.
# Nothing here runs inside dom0 (that is dom0-lib.sh, passed in through the 9p share).

XENLAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
XENLAB_REPO=$(cd "$XENLAB_DIR/../.." && pwd)
XENLAB_CACHE=${XENLAB_CACHE:-/var/cache/remusdb-xenlab}
# The Node.js binary carried into dom0 (Debian bookworm's own nodejs is 18; we need >= 20.19).
XENLAB_NODE=${XENLAB_NODE:-$(command -v node)}

# Host tools: QEMU to boot the lab, debootstrap/cpio/mkfs.ext4 to build it.
XENLAB_HOST_PKGS="qemu-system-x86 debootstrap cpio e2fsprogs gzip"

xl_log() { printf '[xen-lab %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
xl_die() { xl_log "ERROR: $*"; exit 1; }
xl_now() { date +%s.%N; }
# xl_since T0 -> seconds since T0, one decimal
xl_since() { awk -v a="$(xl_now)" -v b="$1" 'BEGIN { printf "%.1f", a - b }'; }

# Installs the host packages the lab needs when one is missing (root only, as scripts/setup.sh).
xl_ensure_host_tools() {
  local p missing=""
  for p in $XENLAB_HOST_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  [ "$(id -u)" = 0 ] || xl_die "missing host packages:$missing (install them as root: apt-get install$missing)"
  xl_log "installing host packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# The files whose content defines the dom0 image. Keep this list in step with build-image.sh:
# anything copied into the image must be here, anything only used at run time must not be.
xl_recipe_files() {
  printf '%s\n' "$XENLAB_DIR/lib.sh" "$XENLAB_DIR/build-image.sh" "$XENLAB_DIR/init"
  find "$XENLAB_DIR/image" -type f | LC_ALL=C sort
}

# Cache key: the recipe files plus the identity of the Node.js binary (version + checksum).
xl_cache_key() {
  {
    xl_recipe_files | while read -r f; do printf '%s  %s\n' "$(sha256sum < "$f" | cut -c1-64)" "${f#"$XENLAB_DIR"/}"; done
    printf 'node %s %s\n' "$("$XENLAB_NODE" --version)" "$(sha256sum < "$XENLAB_NODE" | cut -c1-64)"
  } | sha256sum | cut -c1-16
}

# Folder of the cached image for the current recipe (dom0.img, boot/{xen,vmlinuz,initrd.img}).
xl_image_dir() { echo "$XENLAB_CACHE/images/$(xl_cache_key)"; }

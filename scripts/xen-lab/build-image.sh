#!/bin/bash
# build-image.sh: builds (or finds cached) the Xen lab's dom0 disk image and boot files.
#
#   scripts/xen-lab/build-image.sh [--force] [--print-dir]
#
# What it builds, as root, with no loop mounts and no network but the Debian mirrors:
#   - a Debian bookworm rootfs (debootstrap minbase), then inside it bookworm-updates and
#     bookworm-security are enabled and the dom0 packages installed from there, so dom0
#     gets Xen 4.17.7 from bookworm-security, the same libxen build the host's libxen-dev
#     (which our addon was compiled against) comes from; debootstrap alone only reads the
#     main suite and would give an older Xen;
#   - the host's Node.js binary as /usr/local/bin/node (bookworm's nodejs is 18, we need
#     >= 20.19; /usr/bin/node here only needs glibc and libstdc++, which dom0 has);
#   - /sbin/xenlab-init (scripts/xen-lab/init) as PID 1 and /etc/default/xen;
#   - a PV domU: dom0's own kernel plus a tiny busybox initramfs running image/domu-init
#     (a counter service on TCP 7777), in dom0 at /opt/xenlab/domu/{vmlinuz,initrd.gz};
#   - dom0.img (sparse ext4, `mkfs.ext4 -d`), boot/xen (the hypervisor, gunzipped: QEMU's
#     -kernel loads its multiboot ELF), boot/vmlinuz and boot/initrd.img for dom0.
# Where: $XENLAB_CACHE (default /var/cache/remusdb-xenlab)/images/<key>/, where <key> hashes
# the recipe (lib.sh, this script, init, image/*) and the Node binary (lib.sh:xl_cache_key).
# An unchanged recipe is reused at once; a changed one is rebuilt. Downloaded .debs are kept
# in $XENLAB_CACHE/debs and $XENLAB_CACHE/apt-archives, so a rebuild downloads little.
# The project itself is NOT in the image: run.sh passes it in at each run.
# --force rebuilds even when cached; --print-dir prints the image folder for the current
# recipe (exit 1 when it is not built) and builds nothing.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

FORCE=0
case "${1:-}" in
  --force) FORCE=1 ;;
  --print-dir) d=$(xl_image_dir); echo "$d"; [ -f "$d/complete" ]; exit ;;
  "") ;;
  *) echo "usage: $0 [--force|--print-dir]" >&2; exit 2 ;;
esac

# Packages of dom0. Xen 4.17 + tools, the kernel, what our init and scenarios use, and the
# runtime libraries the remusdb addon links (liblz4, libzstd, libnetfilter_queue); iptables for
# --net-buffer nfqueue's rules (protect-pg with PG_NET=pgwire).
# qemu-system-xen: /usr/libexec/xen-qemu-system-i386, the QEMU libxl starts as the qdisk
# backend of PV disks (backendtype=qdisk); nbd-client: the kernel NBD client that puts a
# remusdb NBD export at /dev/nbdN for qdisk/blkback (docs/xen-adapter.md, "Disk").
DOM0_PKGS="xen-hypervisor-4.17-amd64 xen-utils-4.17 xenstore-utils linux-image-amd64
  iproute2 bridge-utils kmod udev busybox-static socat jq procps e2fsprogs cpio util-linux
  iputils-ping strace liblz4-1 libzstd1 libnetfilter-queue1 iptables qemu-system-xen nbd-client etcd-server"
IMG_SIZE=${XENLAB_IMG_SIZE:-3G}
KEEP_IMAGES=${XENLAB_KEEP_IMAGES:-2}

# The Debian mirrors this host's apt uses (deb822 first, then sources.list), overridable.
host_uri() { # host_uri <suite> -> first URI serving that suite
  { cat /etc/apt/sources.list.d/*.sources 2>/dev/null || true; } | awk -v s="$1" '
    /^URIs:/ { u = $2 } /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) { print u; exit } }'
  { cat /etc/apt/sources.list 2>/dev/null || true; } | awk -v s="$1" '$1 == "deb" && $3 == s { print $2; exit }'
}
MIRROR=${XENLAB_MIRROR:-$(host_uri bookworm | head -1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY=${XENLAB_SECURITY_MIRROR:-$(host_uri bookworm-security | head -1)}
SECURITY=${SECURITY:-http://deb.debian.org/debian-security}

[ "$(id -u)" = 0 ] || xl_die "build-image.sh must run as root (debootstrap, chroot)"
[ -x "$XENLAB_NODE" ] || xl_die "no Node.js binary at '$XENLAB_NODE' (set XENLAB_NODE)"
xl_ensure_host_tools
mkdir -p "$XENLAB_CACHE/images" "$XENLAB_CACHE/work" "$XENLAB_CACHE/debs" "$XENLAB_CACHE/apt-archives/partial"

KEY=$(xl_cache_key)
OUT=$XENLAB_CACHE/images/$KEY
if [ "$FORCE" = 0 ] && [ -f "$OUT/complete" ]; then
  xl_log "image $KEY is cached: $OUT"
  echo "$OUT"; exit 0
fi

exec 9> "$XENLAB_CACHE/build.lock"
flock -w 3600 9 || xl_die "another build holds $XENLAB_CACHE/build.lock"
if [ "$FORCE" = 0 ] && [ -f "$OUT/complete" ]; then   # built by whoever held the lock
  xl_log "image $KEY is cached: $OUT"; echo "$OUT"; exit 0
fi

WORK=$XENLAB_CACHE/work/$KEY
ROOT=$WORK/rootfs
LOG=$WORK/build.log
umount_all() { # unmount whatever is mounted under the work folder, deepest first
  local m
  for m in $(awk -v w="$WORK/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
}
umount_all
rm -rf "$WORK"
mkdir -p "$WORK/out/boot"
trap 'rc=$?; umount_all; [ $rc = 0 ] || { xl_log "build failed (rc=$rc); last lines of $LOG:"; tail -25 "$LOG" >&2; }' EXIT
: > "$LOG"

T_ALL=$(xl_now)
TIMES=()
step() { # step <label> <command...>: runs the command with its output in the build log
  local label=$1 t; shift; t=$(xl_now)
  xl_log "$label ..."
  echo "=== $label: $*" >> "$LOG"
  "$@" >> "$LOG" 2>&1
  TIMES+=("$label $(xl_since "$t")s")
  xl_log "$label done in $(xl_since "$t")s"
}
in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
  LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"; }

xl_log "building image $KEY in $WORK (mirror $MIRROR, security $SECURITY; log $LOG)"
step debootstrap debootstrap --variant=minbase --cache-dir="$XENLAB_CACHE/debs" bookworm "$ROOT" "$MIRROR"

# apt inside the rootfs: main + updates + security, no daemons started, .debs cached on the host.
cat > "$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY bookworm-security main
EOF
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"; chmod +x "$ROOT/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
mount -t proc proc "$ROOT/proc"
mount -t sysfs sys "$ROOT/sys"
mount --bind /dev "$ROOT/dev"
mount --bind /dev/pts "$ROOT/dev/pts"
mount --bind "$XENLAB_CACHE/apt-archives" "$ROOT/var/cache/apt/archives"
step apt-update in_root apt-get update
step apt-upgrade in_root apt-get -y dist-upgrade
# shellcheck disable=SC2086
step apt-install in_root apt-get -y install --no-install-recommends $DOM0_PKGS
umount_all
rm -f "$ROOT/usr/sbin/policy-rc.d"

# Versions: dom0's libxen must be the build the addon was compiled against (host libxen-dev).
XEN_DOM0=$(in_root dpkg-query -W -f='${Version}' xen-utils-4.17)
XEN_HOST=$(dpkg-query -W -f='${Version}' libxen-dev 2>/dev/null || echo none)
if [ "$XEN_HOST" != none ] && [ "$XEN_HOST" != "$XEN_DOM0" ]; then
  xl_log "WARNING: dom0 Xen $XEN_DOM0 differs from host libxen-dev $XEN_HOST (addon ABI)"
fi
KVER=$(ls "$ROOT/lib/modules" | sort -V | tail -1)

# Node.js 20 from the host, checked to run inside the rootfs.
install -m 0755 "$XENLAB_NODE" "$ROOT/usr/local/bin/node"
NODE_VER=$(in_root /usr/local/bin/node --version) || xl_die "the copied node does not run in the rootfs"

# dom0 configuration: our PID 1, Xen defaults, no root password, nothing from the host.
install -m 0755 "$XENLAB_DIR/init" "$ROOT/sbin/xenlab-init"
install -m 0644 "$XENLAB_DIR/image/etc-default-xen" "$ROOT/etc/default/xen"
echo xenlab-dom0 > "$ROOT/etc/hostname"
printf '/dev/vda / ext4 rw 0 1\n' > "$ROOT/etc/fstab"
: > "$ROOT/etc/resolv.conf"
in_root passwd -d root > /dev/null
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin
mkdir -p "$ROOT/var/log/xen/console" "$ROOT/opt/xenlab/domu"

# The PV domU: dom0's kernel + busybox initramfs. Debian's kernel has the Xen front-ends as
# modules: netfront for the counter service, blkfront for scenarios that give it a disk;
# ext4 (with crc16, crc32c, mbcache, jbd2) for the PostgreSQL guest's data disk (protect-pg).
build_domu() {
  local d=$WORK/domu-root m f
  rm -rf "$d"; mkdir -p "$d"/{bin,dev,proc,sys,tmp,lib/modules}
  cp "$ROOT/bin/busybox" "$d/bin/busybox"
  ln -s busybox "$d/bin/sh"            # /init's interpreter; init installs the other applets
  for m in xen-netfront xen-blkfront crc16 crc32c_generic mbcache jbd2 ext4; do
    f=$(find "$ROOT/lib/modules/$KVER" -name "$m.ko*" | head -1)
    [ -n "$f" ] || { echo "module $m not found"; return 1; }
    case "$f" in
      *.ko.xz) xz -dc "$f" > "$d/lib/modules/$m.ko" ;;
      *.ko.zst) zstd -dc "$f" > "$d/lib/modules/$m.ko" ;;
      *) cp "$f" "$d/lib/modules/$m.ko" ;;
    esac
  done
  install -m 0755 "$XENLAB_DIR/image/domu-init" "$d/init"
  (cd "$d" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9) > "$ROOT/opt/xenlab/domu/initrd.gz"
  cp "$ROOT/boot/vmlinuz-$KVER" "$ROOT/opt/xenlab/domu/vmlinuz"
}
step domu build_domu

# Boot files for QEMU: Xen as a multiboot ELF, dom0's kernel and initramfs.
# The hypervisor: bookworm-security's 4.17.7 build has CONFIG_SHADOW_PAGING off, so a PV
# guest cannot enter log-dirty mode ("Failed to enable logdirty: 95"): no live migration,
# no Remus. Without hardware virtualization (TCG) PV is all the lab can run, so it boots
# the bookworm (main) 4.17 hypervisor, built with shadow paging, under the 4.17.7 tools
# (same 4.17 interfaces). Falls back to the installed one, saying so, if that is missing.
pick_hypervisor() {
  local v
  v=$(apt-cache madison xen-hypervisor-4.17-amd64 | awk -F'|' '$3 ~ /bookworm\/main/ { gsub(/ /, "", $2); print $2; exit }')
  rm -rf "$WORK/hv" && mkdir -p "$WORK/hv"
  if [ -n "$v" ] && (cd "$WORK/hv" && apt-get download -q "xen-hypervisor-4.17-amd64=$v" >> "$LOG" 2>&1); then
    dpkg-deb -x "$WORK"/hv/xen-hypervisor-4.17-amd64_*.deb "$WORK/hv/x"
    if grep -q '^CONFIG_SHADOW_PAGING=y' "$WORK/hv/x/boot/xen-4.17-amd64.config"; then
      zcat "$WORK/hv/x/boot/xen-4.17-amd64.gz" > "$WORK/out/boot/xen"
      xl_log "hypervisor: xen $v from bookworm (shadow paging on)"
      return 0
    fi
  fi
  xl_log "WARNING: no bookworm hypervisor with shadow paging ($v); PV log-dirty (Remus) will fail"
  zcat "$ROOT/boot/xen-4.17-amd64.gz" > "$WORK/out/boot/xen"
}
pick_hypervisor
# And Debian's own (bookworm-security, no shadow paging) as boot/xen-stock: the hypervisor a
# user's updated Debian 12 host runs; PVH scenarios boot it (XENLAB_HV=stock, stage.sh).
zcat "$ROOT/boot/xen-4.17-amd64.gz" > "$WORK/out/boot/xen-stock"
xl_log "stock hypervisor: xen $(in_root dpkg-query -W -f='${Version}' xen-hypervisor-4.17-amd64) (shadow paging $(
  grep -q '^CONFIG_SHADOW_PAGING=y' "$ROOT/boot/xen-4.17-amd64.config" && echo on || echo off))"
cp "$ROOT/boot/vmlinuz-$KVER" "$WORK/out/boot/vmlinuz"
cp "$ROOT/boot/initrd.img-$KVER" "$WORK/out/boot/initrd.img"
step mkfs mkfs.ext4 -q -F -L xenlab-dom0 -d "$ROOT" "$WORK/out/dom0.img" "$IMG_SIZE"

{
  echo "key=$KEY"
  echo "built=$(date -Is)"
  echo "xen=$XEN_DOM0"
  echo "host_libxen_dev=$XEN_HOST"
  echo "kernel=$KVER"
  echo "node=$NODE_VER"
  echo "rootfs_mb=$(du -sm "$ROOT" | cut -f1)"
  echo "image_mb_used=$(du -m "$WORK/out/dom0.img" | cut -f1)"
  printf 'time %s\n' "${TIMES[@]}"
  echo "time total $(xl_since "$T_ALL")s"
} > "$WORK/out/manifest"
cp "$LOG" "$WORK/out/build.log"
touch "$WORK/out/complete"
rm -rf "$OUT"
mv "$WORK/out" "$OUT"
rm -rf "$WORK"

# Keep the newest $KEEP_IMAGES images (each ~1 GB on disk).
ls -1dt "$XENLAB_CACHE"/images/*/ 2>/dev/null | tail -n +$((KEEP_IMAGES + 1)) | while read -r old; do
  [ "${old%/}" = "$OUT" ] || { xl_log "pruning old image ${old%/}"; rm -rf "${old%/}"; }
done
xl_log "image $KEY built in $(xl_since "$T_ALL")s: $OUT (xen $XEN_DOM0, kernel $KVER, node $NODE_VER)"
echo "$OUT"

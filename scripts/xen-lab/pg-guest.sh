#!/bin/bash
# pg-guest.sh: builds (or finds cached) the lab's PostgreSQL guest: the data disk a domU runs
# PostgreSQL from, and the client programs dom0 drives it with (scenario protect-pg).
#
#   scripts/xen-lab/pg-guest.sh <out-dir>      -> <out-dir>/pg-disk.img, <out-dir>/pg-client.tar
#
# The server is the patched PostgreSQL 15 that scripts/guest-patches builds for CI (commit
# protection, the failover abort on SIGUSR2), REMUSDB_PG_PATCHED_BIN or its cache; built when
# missing. The domU stays the lab's busybox initramfs: it mounts this disk (ext4, xvdb) and
# chroots into it, so the disk holds a tiny root of its own:
#   /bin/busybox (static, Debian's busybox-static) and /bin/sh; the C library PostgreSQL needs
#   (its ldd closure, from this host: Debian 12, the lab's release); /pg = the PostgreSQL
#   install (bin, lib, share; relocatable); /data = PGDATA, made here by initdb as uid 999
#   (postgres), configured for the lab (below), with pgbench's tables at scale $PG_SCALE and the
#   ledger table (id bigint primary key: one row per acknowledged commit of a ledger client);
#   /agent/remusdb-guest-agent.sh (guest-patches/agent) with what it runs in xenstore mode:
#   Debian's xenstore-utils (/bin/xenstore-read, -watch, -write, -exists; the release dom0
#   runs) and busybox's head, logger, cat, sleep, awk as links; /etc/passwd with postgres = 999.
# So PostgreSQL's binaries, its WAL and its data are all on the disk remusdb replicates.
# dom0 gets psql and pgbench with libpq (pg-client.tar: bin/, lib/; LD_LIBRARY_PATH=lib).
# Cached in $XENLAB_CACHE/pg-guest/<key>, key = this script, the server binary, the agent and
# the scale; the newest two are kept. Needs root (initdb as uid 999, mkfs.ext4 -d).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

OUT_DIR=${1:?usage: pg-guest.sh <out-dir>}
PG_SCALE=${PG_SCALE:-1}
DISK_MIB=${PG_DISK_MIB:-256}
PG_UID=999
PG_BIN=${REMUSDB_PG_PATCHED_BIN:-/var/cache/remusdb-guest/pg/patched/bin}
if [ ! -x "$PG_BIN/postgres" ]; then
  xl_log "no patched PostgreSQL at $PG_BIN: building it (scripts/guest-patches/build-postgresql.sh)"
  PG_BIN=$("$XENLAB_REPO/scripts/guest-patches/build-postgresql.sh" | sed -n 's/^REMUSDB_PG_PATCHED_BIN=//p' | tail -1)
  [ -x "$PG_BIN/postgres" ] || xl_die "the PostgreSQL build failed"
fi
PG_INSTALL=$(cd "$PG_BIN/.." && pwd -P)
AGENT=$XENLAB_REPO/guest-patches/agent/remusdb-guest-agent.sh
KEY=$(cat "$0" "$PG_BIN/postgres" "$AGENT" <(echo "$PG_SCALE $DISK_MIB") | sha256sum | cut -c1-16)
CACHE=$XENLAB_CACHE/pg-guest
OUT=$CACHE/$KEY

build() {
  local work=$OUT.work root lib f
  rm -rf "$work"; mkdir -p "$work"; root=$work/root
  mkdir -p "$root"/{bin,etc,lib64,lib/x86_64-linux-gnu,proc,sys,dev,tmp,run,agent}
  chmod 1777 "$root/tmp"
  # busybox-static from the Debian mirror this host uses (the domU's initramfs has the same).
  (cd "$work" && apt-get download -q -o APT::Sandbox::User=root busybox-static > /dev/null) ||
    xl_die "apt-get download busybox-static failed"
  dpkg-deb -x "$work"/busybox-static_*.deb "$work/bb"
  install -m 0755 "$work/bb/bin/busybox" "$root/bin/busybox"
  ln -s busybox "$root/bin/sh"
  # The agent's tools: xenstore-utils (one binary, dispatching on its name; it reaches
  # xenstore through the guest kernel's /dev/xen/xenbus) with its libraries, busybox applets.
  (cd "$work" && apt-get download -q -o APT::Sandbox::User=root xenstore-utils > /dev/null) ||
    xl_die "apt-get download xenstore-utils failed"
  dpkg-deb -x "$work"/xenstore-utils_*.deb "$work/xsu"
  install -m 0755 "$work/xsu/usr/bin/xenstore" "$root/bin/xenstore"
  for f in read watch write exists; do ln -s xenstore "$root/bin/xenstore-$f"; done
  for f in head logger cat sleep awk; do ln -s busybox "$root/bin/$f"; done
  # PostgreSQL without headers, docs or static libraries.
  mkdir -p "$root/pg"
  cp -a "$PG_INSTALL/bin" "$PG_INSTALL/lib" "$PG_INSTALL/share" "$root/pg/"
  rm -rf "$root/pg/lib/pgxs" "$root/pg/share/doc" "$root/pg/share/man"
  find "$root/pg/lib" -name '*.a' -delete
  # The C library: every shared object the server and its modules resolve from the system.
  for f in "$root/pg/bin/"* "$root/pg/lib/"*.so* "$root/pg/lib/postgresql/"*.so "$root/bin/xenstore"; do
    LD_LIBRARY_PATH=$root/pg/lib ldd "$f" 2>/dev/null | awk '$3 ~ /^\// { print $3 } $1 ~ /^\/lib64/ { print $1 }'
  done | sort -u | while read -r lib; do
    case "$lib" in
      "$root"/*) continue ;;
      /lib64/*) cp -L "$lib" "$root/lib64/" ;;
      *) cp -L "$lib" "$root/lib/x86_64-linux-gnu/" ;;
    esac
  done
  f=$(chroot "$root" /lib64/ld-linux-x86-64.so.2 --list /bin/xenstore 2>&1) || true
  grep -q 'not found' <<< "$f" && xl_die "xenstore-utils in the guest root lacks libraries: $f"
  printf 'root:x:0:0:root:/:/bin/sh\npostgres:x:%d:%d:PostgreSQL:/data:/bin/sh\n' $PG_UID $PG_UID > "$root/etc/passwd"
  printf 'root:x:0:\npostgres:x:%d:\n' $PG_UID > "$root/etc/group"
  install -m 0755 "$AGENT" "$root/agent/remusdb-guest-agent.sh"
  # The install's RUNPATH names the build host's folder: libpq where the loader looks anyway.
  ln -s /pg/lib/libpq.so.5 "$root/lib/x86_64-linux-gnu/libpq.so.5"
  make_data "$root"
  umount "$root/dev" "$root/proc"; trap - EXIT
  truncate -s "${DISK_MIB}M" "$work/pg-disk.img"
  mkfs.ext4 -q -F -b 4096 -L pgdisk -E root_owner=0:0 -d "$root" "$work/pg-disk.img" || xl_die "mkfs.ext4 -d failed"
  mkdir -p "$work/client/bin" "$work/client/lib"
  cp -a "$PG_INSTALL/bin/psql" "$PG_INSTALL/bin/pgbench" "$work/client/bin/"
  cp -a "$PG_INSTALL"/lib/libpq.so* "$work/client/lib/"
  tar -C "$work/client" -cf "$work/pg-client.tar" bin lib
  mkdir -p "$OUT"
  mv "$work/pg-disk.img" "$work/pg-client.tar" "$OUT/"
  rm -rf "$work"
}

# PGDATA: initdb, the lab's settings, pgbench's tables and the ledger, by the disk's own
# root as the guest will run it (chroot, uid 999 from its /etc/passwd), the server on a
# socket only (no TCP), stopped cleanly (a clean checkpoint on disk).
make_data() {
  local root=$1
  mount --bind /dev "$root/dev"; mount -t proc proc "$root/proc"
  trap 'umount "$root/dev" "$root/proc" 2>/dev/null || true' EXIT
  in_pg() { chroot --userspec=$PG_UID:$PG_UID "$root" /bin/sh -c 'cd /data && "$@"' sh "$@"; }
  mkdir -p "$root/data"; chown $PG_UID:$PG_UID "$root/data"; chmod 0700 "$root/data"
  in_pg /pg/bin/initdb -D /data -U postgres -A trust -E UTF8 --locale=C > /dev/null
  # Durability as a user would run it (fsync, synchronous_commit on): what the lab checks is
  # that an acknowledged commit survives the host. Small memory and WAL for a 256 MiB domU.
  cat >> "$root/data/postgresql.conf" <<EOF
# remusdb lab (scripts/xen-lab/pg-guest.sh)
listen_addresses = '*'
port = 5432
unix_socket_directories = '/tmp'
max_connections = 40
shared_buffers = 16MB
dynamic_shared_memory_type = mmap
fsync = on
synchronous_commit = on
min_wal_size = 32MB
max_wal_size = 64MB
log_min_messages = warning
EOF
  echo 'host all all 0.0.0.0/0 trust' >> "$root/data/pg_hba.conf"
  in_pg /pg/bin/pg_ctl -D /data -s -w -l /tmp/build.log -o "-c listen_addresses= -c fsync=off" start
  local psql=(chroot "$root" /pg/bin/psql -X -q -h /tmp -U postgres -v ON_ERROR_STOP=1)
  "${psql[@]}" -d postgres -c 'CREATE DATABASE bench'
  chroot "$root" /pg/bin/pgbench -q -i -s "$PG_SCALE" -h /tmp -U postgres bench 2>&1 | tail -1
  "${psql[@]}" -d bench -c 'CREATE TABLE ledger (id bigint PRIMARY KEY, client int NOT NULL,
    at timestamptz NOT NULL DEFAULT now())'
  in_pg /pg/bin/pg_ctl -D /data -s -w -m fast stop
  rm -f "$root/tmp/build.log"
}

if [ ! -f "$OUT/pg-disk.img" ]; then
  mkdir -p "$CACHE"; exec 9> "$CACHE/.lock"
  flock -w 1800 9 || xl_die "another build holds $CACHE.lock"
  if [ ! -f "$OUT/pg-disk.img" ]; then
    t=$(xl_now)
    xl_log "building the PostgreSQL guest disk $KEY (server $PG_INSTALL, scale $PG_SCALE, ${DISK_MIB} MiB)"
    build
    xl_log "PostgreSQL guest disk built in $(xl_since "$t") s: $(du -h "$OUT/pg-disk.img" | cut -f1) used"
    ls -1td "$CACHE"/*/ | tail -n +3 | xargs -r rm -rf
  fi
fi
mkdir -p "$OUT_DIR"
cp --sparse=always "$OUT/pg-disk.img" "$OUT_DIR/pg-disk.img"
cp "$OUT/pg-client.tar" "$OUT_DIR/pg-client.tar"
xl_log "PostgreSQL guest $KEY -> $OUT_DIR"

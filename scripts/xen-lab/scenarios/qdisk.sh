#!/bin/bash
# qdisk: a PV domU's disk served by remusdb's NBD server (blktap/), reached through Xen's
# disk backends. QEMU 7.2's qdisk (xen-block) opens its target with the "file" or
# "host_device" driver only (it stat()s the target), so an `nbd:HOST:PORT` target cannot
# work there; the export is put at /dev/nbdN by the kernel NBD client (nbd-client) and
# qdisk (or blkback, backendtype=phy) opens that block device. One domU, four disks:
#   xvdb  qdisk on /dev/nbd0  -> `remusdb disk serve A.img` on 127.0.0.1:10809
#   xvdc  phy on a loop device of the hook script (read-only): what the guest runs
#   xvdd  qdisk on B.img directly (the baseline: same backend, no NBD)
#   xvde  phy (blkback) on /dev/nbd1 -> `remusdb disk serve C.img` on 127.0.0.1:10810
# Debian's QEMU 7.2 for Xen: no `direct-io-safe` (it asks for aio=native, which this build
# lacks) and no read-only qdisk ("Block node is read-only"): a blkfront module waits up to
# 300 s for a disk whose backend failed, so those are avoided here.
# The guest writes 16 MiB of random data to each (O_DIRECT, fsync), reads it back (O_DIRECT)
# and publishes the MD5s and times; dom0 checks each image file holds those bytes, and prints
# the MB/s of each path and the ratio to the baseline. Then it tries the direct
# `target=nbd:127.0.0.1:10809` qdisk disk and records what QEMU says.
. /lab/dom0-lib.sh
lab_begin qdisk
DOMU=qd
IP=10.99.0.3
MB=${QDISK_MB:-16}
W=/var/lib/xenlab-qdisk
mkdir -p $W
lab_bridge_up
xl info | grep -E "^(xen_version|free_memory)"
ls -l /usr/libexec/xen-qemu-system-i386 || lab_fail "no qemu-system-xen (/usr/libexec/xen-qemu-system-i386)"
modprobe nbd nbds_max=8 || lab_fail "modprobe nbd failed"
for f in A B C; do truncate -s 64M $W/$f.img; done

cd "$REMUSDB" || lab_fail "no project"
node bin/remusdb disk serve $W/A.img --listen 127.0.0.1:10809 > $W/serveA.out 2> $W/serveA.err &
SA=$!
node bin/remusdb disk serve $W/C.img --listen 127.0.0.1:10810 > $W/serveC.out 2> $W/serveC.err &
SC=$!
# Two Node processes starting at once under emulation: one needed 78 s to listen (12-05).
lab_check "NBD server A listens" lab_wait_tcp 127.0.0.1 10809 240
lab_check "NBD server C listens" lab_wait_tcp 127.0.0.1 10810 240
lab_check "nbd-client /dev/nbd0 -> :10809" lab_nbd_attach 10809 /dev/nbd0
lab_check "nbd-client /dev/nbd1 -> :10810" lab_nbd_attach 10810 /dev/nbd1
lab_log "nbd0 size $(blockdev --getsize64 /dev/nbd0 2>&1), nbd1 size $(blockdev --getsize64 /dev/nbd1 2>&1)"

# The guest side: for each disk, random data -> disk (direct, fsync) -> read back (direct).
lab_hook_img $W/hook.img <<EOF
mb=$MB
for d in xvdb xvdd xvde; do i=0; while [ ! -b /dev/\$d ] && [ \$i -lt 100 ]; do sleep 0.1; i=\$((i + 1)); done; done
dd if=/dev/urandom of=/tmp/pat bs=1M count=\$mb 2>/dev/null
want=\$(md5sum < /tmp/pat | cut -c1-32)
up() { cut -d' ' -f1 /proc/uptime; }
out=""
for d in xvdb xvdd xvde; do
  if [ ! -b /dev/\$d ]; then out="\$out \$d=missing"; continue; fi
  t0=\$(up); dd if=/tmp/pat of=/dev/\$d bs=1M oflag=direct conv=fsync 2>/dev/null; rc=\$?; t1=\$(up)
  got=\$(dd if=/dev/\$d bs=1M count=\$mb iflag=direct 2>/dev/null | md5sum | cut -c1-32); t2=\$(up)
  out="\$out \$d=rc\$rc,w\$(awk -v a=\$t1 -v b=\$t0 'BEGIN{printf "%.2f", a-b}'),r\$(awk -v a=\$t2 -v b=\$t1 'BEGIN{printf "%.2f", a-b}'),\$got"
  echo "DOMU disktest \$d done"
done
echo "want=\$want\$out" > /tmp/www/disktest
echo "DOMU disktest: \$(cat /tmp/www/disktest)"
EOF

HOOKDEV=$(losetup -f --show -r $W/hook.img) || lab_fail "losetup of the hook script failed"
cat > $W/$DOMU.cfg <<EOF
$(lab_domu_cfg "$DOMU" "$IP/24" 00:16:3e:00:00:03 128 | sed 's/^extra = "\(.*\)"/extra = "\1 xenlab.hook=\/dev\/xvdc"/')
disk = [ 'format=raw, vdev=xvdb, access=rw, backendtype=qdisk, target=/dev/nbd0',
         'format=raw, vdev=xvdc, access=ro, backendtype=phy, target=$HOOKDEV',
         'format=raw, vdev=xvdd, access=rw, backendtype=qdisk, target=$W/B.img',
         'format=raw, vdev=xvde, access=rw, backendtype=phy, target=/dev/nbd1' ]
EOF
cat $W/$DOMU.cfg
if lab_step create 240 xl create $W/$DOMU.cfg; then
  xl block-list $DOMU
  ps -eo pid,args | grep -E "[q]emu-system" | cut -c1-200
  lab_wait_http "$IP" 7777 /counter 240 "$DOMU" || lab_fail "domU counter did not answer"
  t=$(lab_now); res=
  while [ "$(lab_since "$t" | cut -d. -f1)" -lt 600 ]; do
    res=$(lab_http "$IP" 7777 /disktest 5); [[ "$res" == want=* ]] && break; res=
    xl domid $DOMU > /dev/null 2>&1 || break
    sleep 3
  done
  lab_log "guest disk test after $(lab_since "$t") s: ${res:-none}"
  [ -n "$res" ] || lab_fail "the guest did not report its disk test"
else
  lab_fail "xl create with the NBD-backed disks failed"
fi
lab_guest_log $DOMU | grep -E "DOMU|blkfront|xvd|error" | tail -n 20
xl destroy $DOMU 2>/dev/null; sleep 2

# dom0 side: each image must hold exactly what the guest wrote (and read back).
want=$(sed -n 's/^want=\([0-9a-f]*\).*/\1/p' <<< "$res")
check_disk() { # check_disk VDEV IMAGE LABEL: sets WS RS (seconds to write, read)
  local f rc w r got img
  f=$(tr ' ' '\n' <<< "$res" | sed -n "s/^$1=//p")
  IFS=, read -r rc w r got <<< "$f"
  img=$(dd if="$2" bs=1M count=$MB 2>/dev/null | md5sum | cut -c1-32)
  if [ "$rc" = rc0 ] && [ -n "$want" ] && [ "$got" = "$want" ] && [ "$img" = "$want" ]; then
    lab_log "ok: $3 ($1): the guest read back what it wrote and $2 holds it ($want)"
  else
    lab_fail "$3 ($1): guest '$f', want '$want', image '$img'"
  fi
  WS=${w#w}; RS=${r#r}
}
check_disk xvdb $W/A.img qdisk-nbd; wA=$WS; rA=$RS
check_disk xvdd $W/B.img qdisk-file; wB=$WS; rB=$RS
check_disk xvde $W/C.img phy-nbd; wC=$WS; rC=$RS
mbs() { awk -v m=$MB -v s="$1" 'BEGIN { if (s > 0) printf "%.2f", m / s; else print "?" }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", b / a; else print "?" }'; }
lab_log "write MB/s: qdisk->nbd $(mbs "$wA"), qdisk->file $(mbs "$wB"), phy->nbd $(mbs "$wC"); read MB/s: $(mbs "$rA"), $(mbs "$rB"), $(mbs "$rC")"
echo "XENLAB NUMBERS qdisk: mb=$MB write_s qdisk_nbd=$wA qdisk_file=$wB phy_nbd=$wC read_s qdisk_nbd=$rA qdisk_file=$rB phy_nbd=$rC" \
  "write_MBps qdisk_nbd=$(mbs "$wA") qdisk_file=$(mbs "$wB") phy_nbd=$(mbs "$wC") read_MBps qdisk_nbd=$(mbs "$rA") qdisk_file=$(mbs "$rB") phy_nbd=$(mbs "$rC")" \
  "ratio_vs_file write qdisk_nbd=$(ratio "$wA" "$wB") phy_nbd=$(ratio "$wC" "$wB") read qdisk_nbd=$(ratio "$rA" "$rB") phy_nbd=$(ratio "$rC" "$rB")"

# The direct form: qdisk with an nbd: target (what QEMU's -drive would accept).
cat > $W/direct.cfg <<EOF
$(lab_domu_cfg qdn 10.99.0.4/24 00:16:3e:00:00:04 128)
disk = [ 'format=raw, vdev=xvdb, access=rw, backendtype=qdisk, target=nbd:127.0.0.1:10809' ]
EOF
nbd-client -d /dev/nbd0 > /dev/null 2>&1
timeout 120 xl create $W/direct.cfg > $W/direct.out 2>&1; lab_log "xl create with target=nbd:127.0.0.1:10809: rc=$?"
sleep 5
if grep -q "failed to create 'qdisk'" /var/log/xen/qemu-dm-qdn.log 2>/dev/null || ! xl domid qdn > /dev/null 2>&1; then
  lab_log "note: qdisk with target=nbd:127.0.0.1:10809 does not attach (expected with QEMU 7.2's xen-block):"
  grep -h -i -E "error|could not|stat|failed" $W/direct.out /var/log/xen/qemu-dm-qdn.log 2>/dev/null | head -n 5 | sed 's/^/  /'
else
  lab_log "note: qdisk with target=nbd:127.0.0.1:10809 attached?"; xl block-list qdn
fi
xl destroy qdn > /dev/null 2>&1
nbd-client -d /dev/nbd1 > /dev/null 2>&1; losetup -d "$HOOKDEV" 2>/dev/null
kill -TERM $SA $SC 2>/dev/null; sleep 1
cat $W/serveA.err $W/serveC.err | tail -n 10
cp $W/*.err $W/*.cfg $W/direct.out "$LAB_OUT/" 2>/dev/null
lab_result

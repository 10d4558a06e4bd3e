# dom0-lib.sh: helpers for scenario scripts, which run inside the lab's dom0. run.sh puts
# this file in the 9p share (/lab/dom0-lib.sh) at every run, so changing it does not
# rebuild the image. A scenario sources it, calls lab_begin NAME, records failed checks
# with lab_fail, and ends with lab_result, which prints the line run.sh looks for:
#   XENLAB RESULT <name>: PASS            or   XENLAB RESULT <name>: FAIL <why>; <why> ...
# Paths in dom0: /opt/remusdb = the project under test (copied from /lab/project by init);
# /lab/in = extra files from the host (run.sh XENLAB_IN); /lab/out = results for the host;
# /opt/xenlab/domu/{vmlinuz,initrd.gz} = the lab's PV guest (image/domu-init).
# Network: the emulated host has no NIC; bridges created here connect dom0 and its guests only.

REMUSDB=/opt/remusdb
LAB_OUT=/lab/out
LAB_BRIDGE=xenbr0
LAB_DOM0_IP=10.99.0.1
LAB_FAILS=()
LAB_NAME=scenario

# Log lines go to fd 7 (the scenario's stdout when this file was sourced), so that
# redirecting a command's output, e.g. `lab_step x 60 cmd > file`, does not capture them.
exec 7>&1
lab_now() { date +%s.%N; }
lab_since() { awk -v a="$(lab_now)" -v b="$1" 'BEGIN { printf "%.1f", a - b }'; }
lab_log() { echo "[$(cut -d' ' -f1 /proc/uptime)] $*" >&7; }

lab_begin() { # lab_begin NAME
  LAB_NAME=$1; LAB_T0=$(lab_now)
  lab_log "=== scenario $LAB_NAME in dom0 $(uname -r), $(nproc) vCPU, $(awk '/MemTotal/ { print int($2/1024) }' /proc/meminfo) MiB"
}

lab_fail() { # lab_fail WHY: records a failed check (the scenario goes on)
  LAB_FAILS+=("$*"); lab_log "CHECK FAILED: $*"
}

lab_check() { # lab_check WHAT COMMAND...: runs COMMAND, lab_fail WHAT if it fails
  local what=$1; shift
  if "$@"; then lab_log "ok: $what"; else lab_fail "$what"; return 1; fi
}

lab_step() { # lab_step LABEL TIMEOUT COMMAND...: timed, logged, returns the command's rc
  local label=$1 to=$2 t rc; shift 2; t=$(lab_now)
  lab_log "--- $label: $*"
  timeout -k 5 "$to" "$@"; rc=$?
  lab_log "--- $label: rc=$rc in $(lab_since "$t")s"
  return $rc
}

lab_result() { # prints the result line; exit status 0 on PASS
  local d
  lab_log "=== scenario $LAB_NAME took $(lab_since "$LAB_T0")s"
  # Guests still there go: each has an `xl` monitor holding the scenario's output pipe open,
  # which would keep init waiting for the scenario until its timeout.
  for d in $(xl list 2>/dev/null | awk 'NR > 2 { print $2 }'); do xl destroy "$d" 2>/dev/null; done
  # So do the scenario's own background processes (a protect still waiting for its domain
  # after an early end kept init waiting until the scenario's timeout, 20 minutes).
  for d in $(jobs -p); do kill "$d" 2>/dev/null; done
  lab_result_line
}

# The result line alone, guests and background processes left running: for a scenario with
# phases whose first result the host acts on while the run goes on (two-host-b.sh: its
# failover's result, then the reprotection of the domain it runs). Exit status 0 on PASS.
lab_result_line() {
  local why
  if [ ${#LAB_FAILS[@]} = 0 ]; then echo "XENLAB RESULT $LAB_NAME: PASS"; return 0; fi
  why=$(printf '%s; ' "${LAB_FAILS[@]}"); echo "XENLAB RESULT $LAB_NAME: FAIL ${why%; }"; return 1
}

lab_remusdb() { node "$REMUSDB/bin/remusdb" "$@"; }

lab_bridge_up() { # lab_bridge_up [BRIDGE] [DOM0_IP/PREFIX]: a bridge for vifs, dom0 on it
  local br=${1:-$LAB_BRIDGE} ip=${2:-$LAB_DOM0_IP/24}
  ip link show "$br" > /dev/null 2>&1 || ip link add "$br" type bridge
  ip addr add "$ip" dev "$br" 2>/dev/null
  ip link set "$br" up
}

lab_domu_cfg() { # lab_domu_cfg NAME IP/PREFIX MAC [MEMORY_MB] [BRIDGE] > file.cfg
  # LAB_DOMU_TYPE: pv (default) or pvh; LAB_DOMU_EXTRA: more config lines (e.g. "hap = 0");
  # LAB_DOMU_KERNEL: the guest's kernel (default dom0's, /opt/xenlab/domu/vmlinuz; protect-pg's
  # PG_KERNEL=patched boots scripts/xen-lab/guest-kernel.sh's bzImage with the same initramfs).
  # A PVH guest boots with pti=off: under QEMU's emulated SVM a PVH guest with page table
  # isolation crashed now and then in its interrupt entry (the kernel's percpu data unmapped,
  # "ENTRY_TRAMPOLINE stack guard page was hit"), also before any remusdb or xl save ran.
  cat <<EOF
name = "$1"
type = "${LAB_DOMU_TYPE:-pv}"
kernel = "${LAB_DOMU_KERNEL:-/opt/xenlab/domu/vmlinuz}"
ramdisk = "/opt/xenlab/domu/initrd.gz"
extra = "console=hvc0 loglevel=4 xenlab.ip=$2$([ "${LAB_DOMU_TYPE:-pv}" = pvh ] && echo ' pti=off')"
memory = ${4:-128}
vcpus = 1
on_crash = "preserve"
vif = [ 'bridge=${5:-$LAB_BRIDGE},mac=$3' ]
${LAB_DOMU_EXTRA:-}
EOF
}

# HTTP GET without wget/nc (busybox's segfault here): bash /dev/tcp. Prints the body.
lab_http() { # lab_http HOST PORT PATH [TIMEOUT]
  timeout "${4:-5}" bash -c 'exec 3<>"/dev/tcp/$1/$2" || exit 1
    printf "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" "$3" "$1" >&3
    sed "1,/^\r\{0,1\}$/d" <&3' _ "$1" "$2" "$3" 2>/dev/null
}

# One GET can come back empty while the guest is busy (protect-pg: PostgreSQL starting under
# TCG; a 5 s lab_http returned nothing just after /boot had answered, and the run then failed
# "boot id changed ('' -> id)"). A value the run compares later is read with retries.
lab_http_body() { # lab_http_body HOST PORT PATH SECONDS: the first non-empty body within SECONDS
  local end=$((SECONDS + $4)) body
  while :; do
    body=$(lab_http "$1" "$2" "$3" 5)
    [ -n "$body" ] && { printf '%s\n' "$body"; return 0; }
    [ $SECONDS -lt "$end" ] || return 1
    sleep 1
  done
}

lab_domu_up() { # lab_domu_up NAME IP MAC [MEMORY_MB]: bridge, /tmp/NAME.cfg, xl create, its
  # counter answering; sets boot0 and c0. Returns 1 after lab_fail (the caller ends the run).
  local name=$1 ip=$2
  lab_bridge_up
  lab_domu_cfg "$name" "$ip/24" "$3" "${4:-128}" > "/tmp/$name.cfg"
  lab_step create 180 xl create "/tmp/$name.cfg" || { lab_fail "xl create failed"; return 1; }
  lab_wait_http "$ip" 7777 /counter 240 "$name" || { lab_fail "domU counter did not answer"; return 1; }
  boot0=$(lab_http "$ip" 7777 /boot); c0=$(lab_http "$ip" 7777 /counter)
  lab_log "domU up: boot $boot0 counter $c0"
}

lab_wait_http() { # lab_wait_http HOST PORT PATH TIMEOUT [DOMAIN]: until a non-empty body
  # arrives; with DOMAIN, gives up early when that guest panicked or is no longer running
  local t end=$((SECONDS + $4)) body
  t=$(lab_now)
  while [ $SECONDS -lt $end ]; do
    body=$(lab_http "$1" "$2" "$3" 3)
    [ -n "$body" ] && { lab_log "http://$1:$2$3 answers after $(lab_since "$t")s: $body"; return 0; }
    if [ -n "${5:-}" ]; then
      lab_guest_log "$5" | grep -q "Kernel panic" && { lab_log "guest $5 panicked"; return 1; }
      xl domid "$5" > /dev/null 2>&1 || { lab_log "guest $5 is gone"; return 1; }
    fi
    sleep 1
  done
  lab_log "http://$1:$2$3 did not answer within $4s"; return 1
}

lab_guest_log() { cat "/var/log/xen/console/guest-$1.log" 2>/dev/null; }

# Guest hooks (image/domu-init): a script for the domU on a small read-only disk, run by the
# guest when its kernel command line says xenlab.hook=/dev/xvdX. Add to the domU config:
#   disk = [ 'format=raw, vdev=xvdc, access=ro, backendtype=phy, target=$(losetup -f --show -r FILE)' ]
#   extra = "... xenlab.hook=/dev/xvdc"
lab_hook_img() { # lab_hook_img FILE < script: the script padded with NULs to 64 KiB
  cat > "$1" && truncate -s 64K "$1"
}

# The disk scenarios' guest hook (protect-disk.sh, the two-host scenarios with TWO_DISK=1):
# the guest stamps block n of xvdb with "REMUSDB-BLOCK n" (fsync), then publishes n (memory
# only: tmpfs /tmp/www/disk). Before each next write it checks, on the disk itself (page cache
# dropped), that block n carries n and block n+2 is still empty: after a failover, n comes from
# the resumed memory and the disk is the backup's, so a completed write the backup lost, or a
# write from beyond the checkpoint, is caught by the resumed guest (/tmp/www/diskbad; the
# number of checks in /tmp/www/diskchecks). It stops at block 7000 (28 MiB: a 32 MiB disk).
lab_disk_stamp_hook() { # lab_disk_stamp_hook FILE: that hook as a hook image (lab_hook_img)
  lab_hook_img "$1" <<'EOF'
i=0; while [ ! -b /dev/xvdb ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -b /dev/xvdb ] || { echo "DOMU diskwriter: no /dev/xvdb"; exit 1; }
blk() { sync; echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/xvdb bs=4096 skip=$1 count=1 2>/dev/null | head -c 22 | tr -d '\000\n'; }
n=0; checks=0
echo 0 > /tmp/www/disk; : > /tmp/www/diskbad; echo 0 > /tmp/www/diskchecks
echo "DOMU diskwriter: starts"
while [ $n -lt 7000 ]; do
  if [ $n -gt 0 ]; then
    got=$(blk $n); want=$(printf 'REMUSDB-BLOCK %08d' $n)
    [ "$got" = "$want" ] || { echo "block $n: '$got'" >> /tmp/www/diskbad; echo "DOMU diskcheck: MISMATCH block $n holds '$got'"; }
  fi
  ahead=$(blk $((n + 2)))
  [ -z "$ahead" ] || { echo "block $((n + 2)) early: '$ahead'" >> /tmp/www/diskbad; echo "DOMU diskcheck: block $((n + 2)) written early: '$ahead'"; }
  checks=$((checks + 1)); echo $checks > /tmp/www/diskchecks
  m=$((n + 1))
  if printf 'REMUSDB-BLOCK %08d\n' $m | dd of=/dev/xvdb bs=4096 seek=$m conv=sync,notrunc,fsync 2>/dev/null; then
    n=$m
    echo $n > /tmp/www/disk.new && mv /tmp/www/disk.new /tmp/www/disk
    [ $((n % 50)) -eq 0 ] && echo "DOMU diskwriter: block $n"
  else
    echo "DOMU diskwriter: write of block $m failed"; sleep 1
  fi
  sleep 0.1
done
EOF
}

# A backup's replica image as that hook left it: every stamped block k must hold k, and all of
# 1..highest must be stamped (no hole). Prints "HIGHEST HOLES WRONG", or one line "scan of IMAGE
# failed: ERROR" (which then fails the caller's check, and keeps its FAIL result on one line).
# The guest may be writing the image meanwhile: it stamps blocks in order, so a block read
# half-written is at most the highest one, never a hole.
lab_disk_scan() { # lab_disk_scan IMAGE
  local out
  out=$(node -e '
  const b = require("fs").readFileSync(process.argv[1]); let hi = 0, holes = 0, wrong = 0;
  for (let k = 1; k * 4096 < b.length; k++) {
    const s = b.subarray(k * 4096, k * 4096 + 22).toString("latin1");
    if (s.startsWith("REMUSDB-BLOCK ")) { hi = k; if (Number(s.slice(14)) !== k) wrong++; }
  }
  for (let k = 1; k <= hi; k++) if (!b.subarray(k * 4096, k * 4096 + 14).toString("latin1").startsWith("REMUSDB-BLOCK ")) holes++;
  console.log(`${hi} ${holes} ${wrong}`);' "$1" 2>&1)
  if [[ "$out" =~ ^[0-9]+\ [0-9]+\ [0-9]+$ ]]; then echo "$out"
  else echo "scan of $1 failed: $(grep -m1 -E '^[A-Za-z]*Error' <<< "$out" || tail -n 1 <<< "$out")"; fi
}

lab_wait_tcp() { # lab_wait_tcp HOST PORT TIMEOUT: until something accepts connections there
  local end=$((SECONDS + $3))
  while [ $SECONDS -lt $end ]; do
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null && return 0
    sleep 0.5
  done
  return 1
}

lab_nbd_attach() { # lab_nbd_attach PORT /dev/nbdN: the kernel NBD client on our export at 127.0.0.1:PORT
  modprobe nbd nbds_max=8 2>/dev/null
  nbd-client 127.0.0.1 "$1" "$2" -N remusdb -b 4096
}

# What `remusdb status --json` prints ({"processes":[…]}: each control socket's status answer),
# asked with socat, and one field of one role's entry from it with jq. Not node: in a dom0 busy
# with a protected guest under emulation a node start-up took ~25 s (run 20261205-210111), and
# protect-pg spent a third of its time in them.
lab_status() {
  local s a sep=
  printf '{"processes":['
  for s in "${REMUSDB_RUN_DIR:-/run/remusdb}"/*.sock; do
    [ -S "$s" ] || continue
    a=$(echo '{"cmd":"status"}' | timeout 60 socat -t 60 - "UNIX-CONNECT:$s" 2>/dev/null | head -n 1)
    [[ "$a" == \{* ]] || continue
    printf '%s%s' "$sep" "$a"; sep=,
  done
  printf ']}\n'
}
lab_field() { # lab_field ROLE KEY < status.json: a value, "" if none (KEY dotted: net.interfaces.0.ledger.held)
  jq -r --arg role "$1" --arg key "$2" '((.processes // []) | map(select(.role == $role)) | .[0] // {})
    | (try getpath($key | split(".") | map(tonumber? // .)) catch null) | if . == null then "" else . end' \
    2>/dev/null
}

# Waits (polling every 5 s) until the primary's acknowledged
# epoch reaches MIN, the protect process PID is gone, or SECONDS pass; prints that epoch.
lab_wait_acked() { # lab_wait_acked PID MIN SECONDS
  local t acked=
  t=$(lab_now)
  while [ "$(lab_since "$t" | cut -d. -f1)" -lt "$3" ]; do
    sleep 5
    acked=$(lab_status | lab_field primary ackedEpoch)
    [[ "$acked" =~ ^[0-9]+$ ]] && [ "$acked" -ge "$2" ] && break
    kill -0 "$1" 2>/dev/null || break
  done
  lab_log "first checkpoints acknowledged after $(lab_since "$t") s (acked epoch ${acked:-none})"
  echo "$acked"
}

# After a failover the backup's TAKEOVER fences the old primary: its protect ends by itself
# (exit 3) after removing its network buffer. SIGTERM only if it has not within 60 s.
lab_check_fenced() { # lab_check_fenced PROTECT_PID PROTECT_STDERR_FILE
  local t i rc
  for i in $(seq 1 120); do kill -0 "$1" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$1" 2>/dev/null; then
    t=$(lab_now); kill -TERM "$1" 2>/dev/null
    for i in $(seq 1 120); do kill -0 "$1" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$1" 2>/dev/null && lab_fail "protect did not exit within 60 s of SIGTERM"
    lab_log "protect was still running after the failover: exited $(lab_since "$t") s after SIGTERM"
  fi
  wait "$1"; rc=$?
  lab_log "protect exit status $rc (3: fenced by the backup's takeover)"
  grep -q "network buffer is removed" "$2" ||
    lab_fail "protect ended without its stop path (no 'network buffer is removed' line)"
}

lab_check_no_buffer() { # no IFB or iptables rule of a network buffer left in dom0
  local left
  left=$(ip -o link show | grep -o 'rdb-[^:@]*'; iptables -t mangle -S | grep REMUSDB)
  [ -z "$left" ] || lab_fail "network buffer left behind after protect stopped: $left"
}

# A domU whose data disk protect serves at /dev/nbd0 (--disk-image … --disk-device /dev/nbd0
# --wait-domain) and whose hook script is FILE: waits until protect PID attached the disk,
# then writes DIR/NAME.cfg (xvdb = /dev/nbd0 through BACKEND, xvdc = the hook) and creates
# the domU. Returns 1 after lab_fail.
lab_domu_on_nbd0() { # lab_domu_on_nbd0 PID NAME IP MAC MEMORY_MB HOOK_FILE DIR [BACKEND]
  local t hookdev
  t=$(lab_now)
  until [ -e /sys/block/nbd0/pid ] || ! kill -0 "$1" 2>/dev/null || [ "$(lab_since "$t" | cut -d. -f1)" -gt 120 ]; do
    sleep 0.5
  done
  lab_check "protect serves the disk at /dev/nbd0" test -e /sys/block/nbd0/pid || return 1
  lab_log "disk served and attached after $(lab_since "$t") s"
  hookdev=$(losetup -f --show -r "$6") || { lab_fail "losetup of the hook script failed"; return 1; }
  cat > "$7/$2.cfg" <<EOF
$(lab_domu_cfg "$2" "$3/24" "$4" "$5" | sed 's/^extra = "\(.*\)"/extra = "\1 xenlab.hook=\/dev\/xvdc"/')
disk = [ 'format=raw, vdev=xvdb, access=rw, backendtype=${8:-phy}, target=/dev/nbd0',
         'format=raw, vdev=xvdc, access=ro, backendtype=phy, target=$hookdev' ]
EOF
  # libxl gives a hotplug script 40 s (compiled in); under a slow emulation the two block
  # scripts of this domU (serialised by their lock) once took longer: then once more.
  local try
  for try in 1 2; do
    lab_step create 240 xl create "$7/$2.cfg" > "$7/xl-create.out" 2>&1 && { cat "$7/xl-create.out"; return 0; }
    cat "$7/xl-create.out"
    [ "$try" = 1 ] && grep -q "because of timeout" "$7/xl-create.out" || break
    lab_log "xl create: a hotplug script ran out of libxl's 40 s; once more"
    xl destroy "$2" > /dev/null 2>&1
  done
  lab_fail "xl create failed"; return 1
}

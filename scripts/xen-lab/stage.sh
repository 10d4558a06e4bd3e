# stage.sh: host-side pieces shared by run.sh and run-two.sh (sourced after lib.sh, not
# run; not part of the image cache key): the project packed into one tar for dom0 (only the
# runtime files, as `npm install` left them: bin/, dist/, package.json, the addon .node and
# the runtime node_modules/ — one file because many small files over 9p are slow under
# emulation; dom0's init unpacks it to /opt/remusdb), the scenario's env with its knobs, the
# prepare scripts, pruning old runs, the lab lock, and the QEMU command that boots Xen with dom0.

xl_stage_project() { # xl_stage_project PROJECT_DIR WORK_DIR OUT_TAR (WORK_DIR is removed)
  local src=$1 dst=$2 tar=$3 addon=native-xc/build/Release/remusdb_native.node d
  for d in bin dist package.json "$addon"; do
    [ -e "$src/$d" ] || xl_die "$src/$d is missing: build the project first (npm install)"
  done
  mkdir -p "$dst/native-xc/build/Release" "$dst/node_modules"
  cp -a "$src/bin" "$src/dist" "$src/package.json" "$dst/"
  cp -a "$src/$addon" "$dst/$addon"
  (cd "$src" && node -e '
    const fs = require("fs"), path = require("path"), seen = new Set();
    const visit = (dir) => {
      const deps = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8")).dependencies || {};
      for (const name of Object.keys(deps)) {
        if (name === "node-addon-api" || seen.has(name)) continue;
        seen.add(name);
        visit(path.join("node_modules", name));
      }
    };
    visit(".");
    console.log([...seen].join("\n"));') | while read -r m; do
      [ -n "$m" ] || continue
      mkdir -p "$dst/node_modules/$(dirname "$m")"
      cp -a "$src/node_modules/$m" "$dst/node_modules/$m"
    done
  [ "${PIPESTATUS[0]}" = 0 ] || xl_die "could not list the project's runtime dependencies"
  tar -cf "$tar" -C "$dst" . && rm -rf "$dst"
}

xl_knobs() { # xl_knobs: a scenario's knobs from XENLAB_VARS, one NAME=value a line, each checked
  local kv # e.g. XENLAB_VARS="PD_BACKEND=qdisk PROTECT_HB_MS=90000"
  for kv in ${XENLAB_VARS:-}; do
    [[ "$kv" =~ ^[A-Z][A-Z0-9_]*=[A-Za-z0-9_./:-]*$ ]] || xl_die "XENLAB_VARS: '$kv' is not NAME=value"
    printf '%s\n' "$kv"
  done
}

# Files a scenario needs built on this host (a guest disk, client programs, a guest kernel):
# its "# xenlab-prepare: NAME.sh" lines name scripts in scripts/xen-lab, each run with an
# output folder (a share's in/, /lab/in in dom0) and the knobs (XENLAB_VARS) in its environment,
# as the scenario gets them (run.sh; run-two.sh for TWO_GUEST=pg runs protect-pg's).
xl_prepare_list() { # xl_prepare_list FILE...: the prepare scripts the files name, each once
  sed -n 's/^# xenlab-prepare: //p' "$@" | tr -s ' \t' '\n\n' | awk 'NF && !seen[$0]++'
}
xl_prepare() { # xl_prepare WHO OUT_DIR NAME...: runs each prepare script NAME with OUT_DIR (dies on a failure)
  local who=$1 out=$2 prep knobs=()
  shift 2
  mapfile -t knobs < <(xl_knobs)
  for prep in "$@"; do
    [[ "$prep" =~ ^[a-z0-9-]+\.sh$ ]] && [ -x "$XENLAB_DIR/$prep" ] || xl_die "$who: no prepare script '$prep'"
    env "${knobs[@]}" "$XENLAB_DIR/$prep" "$out" || xl_die "$prep failed"
  done
}

xl_scenario_env() { # xl_scenario_env NAME TIMEOUT_S > env: what dom0's init sources, with the knobs
  printf 'XENLAB_SCENARIO=%q\nXENLAB_SCENARIO_TIMEOUT=%q\n' "$1" "$2"
  local kv knobs
  knobs=$(xl_knobs) || exit 1
  for kv in $knobs; do printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"; done
}

xl_prune_runs() { # keeps the newest XENLAB_KEEP_RUNS (10) run folders
  ls -1dt "$XENLAB_CACHE"/runs/*/ 2>/dev/null | tail -n +$((${XENLAB_KEEP_RUNS:-10} + 1)) | while read -r old; do rm -rf "${old%/}"; done
}

xl_lab_lock() { # one lab VM (or VM pair) at a time on this machine: holds fd 8 until it is closed
  exec 8> "$XENLAB_CACHE/qemu.lock"
  flock -n 8 || { xl_log "another lab VM is running; waiting for it (up to 3600 s)"; flock -w 3600 8 || xl_die "lab VM lock timeout"; }
}

# The machine: XENLAB_CPU (QEMU -cpu; Westmere: PV only; qemu64,+svm,+npt: SVM with nested
# paging, so Xen offers HVM/PVH with HAP — EPYC models crash dom0 under TCG) and XENLAB_HV
# (the hypervisor: "shadow", bookworm's build with shadow paging, which PV log-dirty needs;
# "stock", bookworm-security's build as Debian ships it, without shadow paging) and
# XENLAB_XEN_ARGS (more hypervisor options, comma-separated: hap_2mb=false,hap_1gb=false), and
# XENLAB_ACCEL (QEMU's accelerator: tcg, the default on these hosts without KVM; kvm on a host
# with /dev/kvm and nested virtualisation, with XENLAB_CPU=host: real AMD-V/VT-x for PVH/HVM).
xl_qemu_argv() { # xl_qemu_argv IMG SHARE PIDFILE [DOM0_EXTRA_ARGS]: sets QEMU_ARGV (Xen + dom0, no NIC)
  local hv xenargs=${XENLAB_XEN_ARGS:-}
  case "${XENLAB_HV:-shadow}" in
    shadow) hv=xen ;;
    stock) hv=xen-stock ;;
    *) xl_die "XENLAB_HV: '$XENLAB_HV' is not shadow or stock" ;;
  esac
  [[ "${XENLAB_CPU:-Westmere}" =~ ^[A-Za-z0-9_.,+-]+$ ]] || xl_die "XENLAB_CPU: '$XENLAB_CPU' is not a QEMU cpu model"
  [[ "${XENLAB_XEN_ARGS:-}" =~ ^[A-Za-z0-9_.,:=-]*$ ]] || xl_die "XENLAB_XEN_ARGS: '$XENLAB_XEN_ARGS' is not opt=value,…"
  local accel
  case "${XENLAB_ACCEL:-tcg}" in
    tcg) accel=tcg,thread=single ;;
    kvm) [ -w /dev/kvm ] || xl_die "XENLAB_ACCEL=kvm: no writable /dev/kvm on this host"; accel=kvm ;;
    *) xl_die "XENLAB_ACCEL: '$XENLAB_ACCEL' is not tcg or kvm" ;;
  esac
  QEMU_ARGV=(qemu-system-x86_64 -accel "$accel" -machine q35 -cpu "${XENLAB_CPU:-Westmere}" -smp "$SMP" -m "$MEM"
    -display none -no-reboot -nic none -pidfile "$3"
    -kernel "$1/boot/$hv"
    -append "dom0_mem=$DOM0_MEM,max:$DOM0_MEM pv-l1tf=false console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all console_timestamps=boot ${xenargs//,/ }"
    -initrd "$1/boot/vmlinuz root=/dev/vda rw console=hvc0 loglevel=4 init=/sbin/xenlab-init${4:+ $4},$1/boot/initrd.img"
    -drive "file=$1/dom0.img,if=virtio,format=raw,snapshot=on,cache=unsafe,file.locking=off"
    -virtfs "local,path=$2,mount_tag=lab,security_model=none,id=lab")
}

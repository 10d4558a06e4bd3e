#!/bin/sh
# detect.sh PART: prints 1 when the system headers that PART needs are installed, else 0.
# binding.gyp asks it at configure time; scripts/setup.sh installs the packages.
case "$1" in
  xen) for h in xenctrl.h xenguest.h xenstore.h libxl.h xenforeignmemory.h xenevtchn.h; do
         [ -f "/usr/include/$h" ] || { echo 0; exit 0; }; done; echo 1 ;;
  nfqueue) [ -f /usr/include/libnetfilter_queue/libnetfilter_queue.h ] && echo 1 || echo 0 ;;
  bpf) { [ -f /usr/include/bpf/libbpf.h ] && command -v clang > /dev/null; } && echo 1 || echo 0 ;;
  *) echo "detect.sh: unknown part '$1'" >&2; echo 0 ;;
esac

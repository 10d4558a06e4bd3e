#!/bin/sh
# setup.sh: installs the Debian packages remusdb builds and tests with. As root it runs
# apt-get; otherwise it prints what is missing and the command to install it.
#   build:   g++, make, python3 (node-gyp), liblz4-dev + libzstd-dev (codecs), pkg-config
#   parts:   libxen-dev (Xen bindings), libnetfilter-queue-dev (NFQUEUE output buffer),
#            libbpf-dev + clang (the in-kernel pgwire classifier, a tc BPF program)
#   tests:   iproute2, iptables, util-linux (netns, unshare), clang + libclang-rt-14-dev (fuzzer),
#            qemu-utils + libnbd-bin (nbdcopy, nbdinfo, nbdfuse) + e2fsprogs (NBD interoperability tests),
#            postgresql-15 + client (commit protection: bench net, test/65)
#   guest patches: kernel/MariaDB/PostgreSQL source builds, tcpdump (test/70)
#   lab helpers: socat + jq (test/76: dom0-lib.sh's lab_status and lab_field, as in the lab's dom0)
set -eu
PKGS="etcd-server etcd-client faketime g++ make python3 pkg-config liblz4-dev libzstd-dev libxen-dev libnetfilter-queue-dev libbpf-dev iproute2 iptables util-linux clang libclang-rt-14-dev qemu-utils libnbd-bin e2fsprogs postgresql-15 postgresql-client-15 bison flex bc libelf-dev libssl-dev dpkg-dev patch xz-utils cmake libncurses-dev libpcre2-dev libaio-dev zlib1g-dev tcpdump systemd socat jq"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then echo "setup: all packages present"; exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "setup: missing packages:$missing"
  echo "setup: install them with: sudo apt-get update && sudo apt-get install -y$missing"
  exit 1
fi
echo "setup: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing

// capabilities: what this host supports, one entry per capability with `available` and a
// `reason` a person can act on. `remusdb doctor` prints them; other commands call
// `requireCapability` before they depend on one. Later parts add their own checks here.
import * as fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import { loadAddon, type NativeAddon } from '../native';
import { DRIVERS } from '../hypervisor/registry';
import { checkIptablesTools } from '../net/iptables-rules';
import { KernelClassifier } from '../net/kernel-classifier';

export interface Capability {
  name: string;
  available: boolean;
  reason: string;
}

type Check = (addon: NativeAddon | null, addonError: string) => Capability;

const isRoot = (): boolean => process.getuid?.() === 0;

const checks: Check[] = [
  (addon, err) => ({
    name: 'addon.codec',
    available: !!addon?.parts.codec,
    reason: addon ? `page codec compiled; XOR+RLE compares with ${addon.codecSimd}` : err,
  }),
  (addon, err) => ({
    name: 'liblz4',
    available: !!addon,
    reason: addon ? `liblz4 ${addon.lz4Version} linked into the addon` : err,
  }),
  (addon, err) => ({
    name: 'addon.xen',
    available: !!addon?.parts.xen,
    reason: !addon
      ? err
      : addon.parts.xen
        ? 'Xen bindings compiled (libxen-dev found at build time)'
        : 'built without Xen bindings: install libxen-dev and run `npm install` again',
  }),
  (addon, err) => ({
    name: 'addon.nfqueue',
    available: !!addon?.parts.nfqueue,
    reason: !addon
      ? err
      : addon.parts.nfqueue
        ? 'NFQUEUE bindings compiled'
        : 'built without NFQUEUE bindings: install libnetfilter-queue-dev and run `npm install` again',
  }),
  (addon) => xenCheck(addon),
  (addon) => nfqueueCheck(addon),
  (addon) => pgwireKernelCheck(addon),
  () => schPlugCheck(),
  (addon, err) => {
    if (!addon) return { name: 'dirty-tracking', available: false, reason: err };
    const p = addon.dirtyProbe();
    return {
      name: 'dirty-tracking',
      available: p.ok,
      reason: p.ok
        ? `${p.message} (simulated domains use it)`
        : `${p.message}; simulated domains fall back to page hashing (slower)`,
    };
  },
];

function xenCheck(addon: NativeAddon | null): Capability {
  const name = 'xen';
  if (!fs.existsSync('/dev/xen/privcmd')) {
    return {
      name,
      available: false,
      reason: '/dev/xen/privcmd is absent: this host is not a Xen dom0 (use sim:<name> domains, or the Xen lab)',
    };
  }
  if (!addon?.xenProbe)
    return {
      name,
      available: false,
      reason: 'Xen is present but the addon has no Xen part (install libxen-dev, npm install)',
    };
  const p = addon.xenProbe();
  return { name, available: p.ok, reason: p.ok ? 'xc_interface_open works' : `xc_interface_open failed: ${p.message}` };
}

function nfqueueCheck(addon: NativeAddon | null): Capability {
  const name = 'nfqueue';
  if (!addon?.nfqueueProbe)
    return {
      name,
      available: false,
      reason: 'the addon has no NFQUEUE part (install libnetfilter-queue-dev, npm install)',
    };
  if (!isRoot()) return { name, available: false, reason: 'binding a netfilter queue needs root' };
  const p = addon.nfqueueProbe(65519);
  if (!p.ok) return { name, available: false, reason: p.message };
  try {
    checkIptablesTools(); // the rules that feed the queue
  } catch (e) {
    return { name, available: false, reason: (e as Error).message };
  }
  return { name, available: true, reason: 'a netfilter queue can be bound and iptables feeds it' };
}

/** `--pgwire-in-kernel`: the program loads, is JITed and attaches to a tc ingress hook (in a scratch netns). */
function pgwireKernelCheck(addon: NativeAddon | null): Capability {
  const name = 'pgwire-in-kernel';
  if (!addon?.parts.bpf)
    return { name, available: false, reason: 'the addon has no bpf part (install libbpf-dev and clang, npm install)' };
  if (!isRoot()) return { name, available: false, reason: 'loading a BPF program needs root' };
  const netns = `remusdb-doctor-${process.pid}`;
  const made = spawnSync('ip', ['netns', 'add', netns], { encoding: 'utf8', timeout: 10_000 });
  if (made.status !== 0)
    return { name, available: false, reason: `cannot make a scratch netns: ${made.stderr.trim()}` };
  try {
    KernelClassifier.load({ mode: 'pgwire', iface: 'lo', netnsPath: `/run/netns/${netns}`, epoch: 1 }).close();
  } catch (e) {
    return { name, available: false, reason: (e as Error).message.split('\n')[0] };
  } finally {
    spawnSync('ip', ['netns', 'del', netns], { timeout: 10_000 });
  }
  const jit = readSysctl('/proc/sys/net/core/bpf_jit_enable');
  return {
    name,
    available: true,
    reason: `the tc classifier loads and attaches (${jit === '0' ? 'interpreted: bpf_jit_enable is 0' : 'JITed'})`,
  };
}

function readSysctl(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch {
    return '';
  }
}

function schPlugCheck(): Capability {
  const name = 'sch_plug';
  if (!isRoot()) return { name, available: false, reason: 'testing for the plug qdisc needs root' };
  const r = spawnSync('unshare', ['-n', 'sh', '-c', 'ip link set lo up && tc qdisc add dev lo root plug limit 1000'], {
    encoding: 'utf8',
    timeout: 5000,
  });
  if (r.error) return { name, available: false, reason: `cannot run unshare/ip/tc: ${r.error.message}` };
  if (r.status === 0) return { name, available: true, reason: 'the plug qdisc can be installed' };
  const msg = (r.stderr || '').trim().split('\n').pop() ?? '';
  return {
    name,
    available: false,
    reason: `this kernel cannot install the plug qdisc (${msg || `exit ${r.status}`}); use the nfqueue output buffer`,
  };
}

/** HVM guests: named so that `doctor --json` answers for every Xen guest type. */
const HVM: Capability = {
  name: 'xen-hvm',
  available: false,
  reason:
    "an HVM guest's checkpoint needs its device model's state (QEMU, EMULATOR records), which remusdb " +
    'does not carry yet: protect PV or PVH guests',
};

export function probeCapabilities(): Capability[] {
  let addon: NativeAddon | null = null;
  let err = '';
  try {
    addon = loadAddon();
  } catch (e) {
    err = (e as Error).message;
  }
  const drivers = DRIVERS.map((d): Capability => ({ name: d.kind, ...d.probe() }));
  return [...checks.map((c) => c(addon, err)), ...drivers, HVM];
}

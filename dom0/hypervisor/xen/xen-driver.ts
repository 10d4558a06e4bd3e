// xen-driver: Xen PV and PVH domains as domain drivers. The domain runs under Xen; our engine drives
// libxenguest's Remus save loop (xen-domain.ts), its outputs are the packets its vifs receive
// in dom0 (held by a network buffer, sch_plug by default as `xl remus`), and its disk, when
// protect serves it (--disk-image), is an NBD export this process replicates (xen-disk.ts).
// On the backup, the replica feeds `xl migrate-receive -r -e` (xen-replica.ts), whatever the
// guest type (xl reads it from the configuration in the stream). PV and PVH differ only in
// what the hypervisor needs for log-dirty (shadow paging / HAP): one driver per type over
// one ops table. HVM guests are refused at open (their device model's state is not carried).
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { realClock } from '../../engine/clock';
import { ErrorCode, RemusError } from '../../errors';
import { assert, assertInt } from '../../assert';
import { loadAddon } from '../../native';
import { DEVICE_STATE_BYTES_MAX, XEN_DEVICE_STATE_BYTES_BASE, XEN_DEVICE_STATE_BYTES_PER_PAGE } from '../../limits';
import { protectLockPath } from '../../service/control';
import { HostLock } from '../../service/host-lock';
import type { DomainDriver, DriverReplica, OpenedDomain, OpenRequest, ReplicaRequest } from '../driver';
import { flushAfterCapture, nbdDiskBackend, openXenProtectDisk, type XenProtectDisk } from './xen-disk';
import { deviceFlusher } from './nbd-device';
import { configGuestType, xenAddon } from './xen-addon';
import { XenDomain, type XenDomainOptions } from './xen-domain';
import { XenReplica } from './xen-replica';
import { replicaDiskFile } from '../replica-disk-file';

/** protect's options for a Xen domain's disk, served over NBD by the protect process. */
export interface XenOpenOptions {
  /** The domU's raw disk image; null: the domain's disk is not replicated by remusdb. */
  diskImage: string | null;
  diskListen: { host: string; port: number };
  /** /dev/nbdN to attach the export to (nbd-client), or null. */
  diskDevice: string | null;
  /** With diskImage: how long to wait for the domain to be created. */
  waitDomainMs: number;
  domain?: Partial<XenDomainOptions>;
}

const NO_CONTINUATION = "libxc's save stream starts over with every session, so a reconnect copies all memory";

/** What differs between the Xen guest types this driver family protects: the ops table. */
interface XenGuestOps {
  kind: 'xen-pv' | 'xen-pvh';
  guestType: 'pv' | 'pvh';
  title: string;
  /** The hypervisor's paging mode log-dirty needs for this type (xl info's virt_caps). */
  needsCap: 'shadow' | 'hap';
  needsWhy: string;
}

function xenDriver(t: XenGuestOps): DomainDriver {
  const driver: DomainDriver = {
    kind: t.kind,
    wireKind: 'xen',
    title: t.title,
    features: {
      backupHost: true,
      blackhole: true,
      precopy: true,
      continuedSession: { reason: NO_CONTINUATION },
      disk: true,
      readTracking: { reason: "a Xen checkpoint's pages travel inside libxc's own records" },
      netBufferNfqueue: true,
      netBufferPlug: true,
      commitProtection: true,
      journal: true,
      metrics: true,
      reprotect: true,
      reuseDisk: true,
      checksumOnFailover: { reason: "the replica's memory goes to xl migrate-receive, which resumes it" },
    },
    defaults: {
      heartbeatTimeoutMs: (intervalMs) => Math.max(2 * intervalMs + 100, 3000),
      deviceStateBytesMax: (pageCount) =>
        Math.min(DEVICE_STATE_BYTES_MAX, XEN_DEVICE_STATE_BYTES_BASE + XEN_DEVICE_STATE_BYTES_PER_PAGE * pageCount),
      netBuffer: 'plug',
    },
    ownOptions: ['diskImage', 'diskListen', 'diskDevice', 'waitDomain'],
    probe: () => probeXen(t),
    open: (req) => openXen(req),
    replicaFor: (req) => xenReplicaFor(req),
    adopt: (replica, log) => adoptXen(replica, log),
  };
  return driver;
}

export const xenPvDriver = xenDriver({
  kind: 'xen-pv',
  guestType: 'pv',
  title: "Xen PV domain (libxenguest's Remus save loop)",
  needsCap: 'shadow',
  needsWhy: 'PV log-dirty needs shadow paging',
});

export const xenPvhDriver = xenDriver({
  kind: 'xen-pvh',
  guestType: 'pvh',
  title: 'Xen PVH domain (HVM container, no device model)',
  needsCap: 'hap',
  needsWhy: 'PVH log-dirty needs hardware-assisted paging (VT-x/EPT or SVM/NPT)',
});

/** The Xen drivers, by guest type. */
export function xenDriverOf(guestType: 'pv' | 'pvh'): DomainDriver {
  return guestType === 'pvh' ? xenPvhDriver : xenPvDriver;
}

/**
 * The driver of a Xen domain named on the command line: by its guest type when it runs
 * already; xen-pv when it does not exist yet (--disk-image waits for it), and open() then
 * takes the driver of the type it finds. PV and PVH have the same features.
 */
export function xenDriverForDomain(nameOrId: string): DomainDriver {
  try {
    const x = xenAddon();
    const info = x.xenDomainInfo(/^\d+$/.test(nameOrId) ? Number(nameOrId) : nameOrId);
    const t = configGuestType(x.xenDomainConfigJson(info.domid), info.hvm ? undefined : 'pv');
    return t === 'pvh' ? xenPvhDriver : xenPvDriver; // hvm: refused by open with the reason
  } catch {
    return xenPvDriver;
  }
}

function probeXen(t: XenGuestOps): { available: boolean; reason: string } {
  if (!fs.existsSync('/dev/xen/privcmd'))
    return { available: false, reason: '/dev/xen/privcmd is absent: not a Xen dom0' };
  try {
    const a = loadAddon();
    if (!a.parts.xen)
      return { available: false, reason: 'the addon was built without Xen (install libxen-dev, npm install)' };
  } catch (e) {
    return { available: false, reason: (e as Error).message };
  }
  const caps = hypervisorCaps();
  if (caps === null) return { available: true, reason: `Xen dom0 (could not run \`xl info\` to check: ${t.needsWhy})` };
  if (!caps.includes(t.needsCap)) {
    return { available: false, reason: `${t.needsWhy}; this hypervisor offers: ${caps.join(' ') || 'none'} (xl info)` };
  }
  return { available: true, reason: `Xen dom0, the hypervisor has ${t.needsCap} (${t.needsWhy})` };
}

/** xl info's virt_caps words (pv hvm hap shadow …), or null when xl cannot say. */
function hypervisorCaps(): string[] | null {
  const r = spawnSync('xl', ['info'], { encoding: 'utf8', timeout: 10_000 });
  if (r.status !== 0) return null;
  const line = /^virt_caps\s*:\s*(.*)$/m.exec(r.stdout);
  return line ? line[1].trim().split(/\s+/).filter(Boolean) : null;
}

/** The disk first (the user creates the domU once it is served), then the domain, then the lock. */
async function openXen(req: OpenRequest): Promise<OpenedDomain> {
  const o = req.xen ?? {
    diskImage: null,
    diskListen: { host: '127.0.0.1', port: 0 },
    diskDevice: null,
    waitDomainMs: 0,
  };
  const disk: XenProtectDisk | null = o.diskImage
    ? await openXenProtectDisk({
        domain: req.name,
        waitMs: o.waitDomainMs,
        image: o.diskImage,
        ...o.diskListen,
        device: o.diskDevice ?? undefined,
        clock: realClock,
        unackedBytesMax: req.diskBufferBytesMax,
        log: req.log,
      })
    : null;
  let xen: XenDomain | null = null;
  try {
    xen = XenDomain.open(req.name, { log: req.log, ...o.domain });
    const lock = HostLock.acquire(protectLockPath('xen', xen.name), `protection of ${xen.name}`);
    xen.adoptLeftSuspended(); // the lock is ours: no other protect's checkpoint suspended it
    return xenOpened(xen, disk, lock, req.log);
  } catch (e) {
    await xen?.close();
    await disk?.close();
    throw e;
  }
}

function xenOpened(
  xen: XenDomain,
  disk: XenProtectDisk | null,
  lock: HostLock,
  log: (l: string) => void,
): OpenedDomain {
  let closed = false;
  return {
    driver: xenDriverOf(xen.guestType),
    label: xen.name,
    name: xen.name,
    domid: xen.domid,
    crashedRunPid: lock.tookOverFrom,
    summary: `Xen PV, id ${xen.domid}, ${xen.pageCount} pages`,
    domain: disk?.flush ? flushAfterCapture(xen, disk.flush) : xen,
    outputs: null,
    disk: disk?.replicator ?? null,
    defaultInterfaces: () => xenVifs(xen.domid),
    status: () => ({
      guest: xen.describe(),
      disk: disk ? { sizeBytes: disk.replicator.sizeBytes, ...disk.replicator.stats() } : null,
    }),
    close: async () => {
      if (closed) return;
      closed = true;
      try {
        await xen.close();
        await disk?.close();
      } finally {
        lock.release();
        log(`released ${xen.name} (id ${xen.domid})`);
      }
    },
  };
}

/**
 * reprotect: the domain a replica resumed, protected from this backup process. Its disk is
 * the replica's, served here since the failover with its writes recorded (xen-replica.ts):
 * the process keeps serving it; closing the adopted domain ends only the protection.
 */
function adoptXen(replica: DriverReplica, log: (line: string) => void): OpenedDomain {
  assert(replica instanceof XenReplica, 'a Xen driver adopts what a Xen replica resumed');
  const resumed = replica.resumedDomain();
  if (!resumed) {
    throw new RemusError(ErrorCode.NO_DOMAIN, `the replica of ${replica.name} has not resumed: nothing to reprotect`);
  }
  const flusher = resumed.device ? qdiskFlusher(resumed.domid, resumed.device) : null;
  const disk: XenProtectDisk | null = resumed.disk
    ? { replicator: resumed.disk, flush: flusher ? () => flusher.flush() : null, close: async () => flusher?.close() }
    : null;
  let xen: XenDomain | null = null;
  try {
    xen = XenDomain.open(String(resumed.domid), { log });
    const lock = HostLock.acquire(protectLockPath('xen', xen.name), `protection of ${xen.name}`);
    log(`reprotect: ${xen.name} (id ${xen.domid}) adopted${resumed.device ? `, its disk ${resumed.device}` : ''}`);
    return xenOpened(xen, disk, lock, log);
  } catch (e) {
    void xen?.close();
    void disk?.close();
    throw e;
  }
}

/** A qdisk backend reads /dev/nbdN through dom0's page cache: flush it at each checkpoint (xen-disk.ts). */
function qdiskFlusher(domid: number, device: string): ReturnType<typeof deviceFlusher> | null {
  const nbd = nbdDiskBackend(xenAddon().xenDomainConfigJson(domid));
  return nbd?.device === device && nbd.backend === 'qdisk' ? deviceFlusher(device) : null;
}

/** The backup side: a replica that feeds `xl migrate-receive -r -e` (needs a Xen dom0). */
function xenReplicaFor(req: ReplicaRequest): XenReplica {
  const h = req.hello;
  if (h.pageSize !== 4096) throw new RemusError(ErrorCode.HANDSHAKE, `Xen domain ${h.domain}: page size ${h.pageSize}`);
  const { file: disk, reused } = replicaDiskFile(req);
  try {
    return new XenReplica(h.domain, h.pageCount, {
      log: req.log,
      disk,
      diskContinues: reused,
      diskBufferBytesMax: req.diskBufferBytesMax,
    });
  } catch (e) {
    disk?.close();
    throw e;
  }
}

/** The vifs of a Xen domain in dom0 (vif<domid>.<devid>), in device order. */
export function xenVifs(domid: number, sysClassNet = '/sys/class/net'): string[] {
  assertInt(domid, 1, 0x7fef, 'domid');
  const re = new RegExp(`^vif${domid}\\.(\\d+)$`);
  let names: string[];
  try {
    names = fs.readdirSync(sysClassNet);
  } catch {
    return [];
  }
  return names.filter((n) => re.test(n)).sort((a, b) => Number(re.exec(a)![1]) - Number(re.exec(b)![1]));
}

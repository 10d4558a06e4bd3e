// xen-disk: a Xen domU's replicated disk. The image is served by our NBD server
// (blktap/) and reaches Xen through the kernel NBD client: QEMU 7.2's qdisk backend
// (xen-block) opens its target only with the "file" or "host_device" driver (it stat()s
// the target), so a `target=nbd:HOST:PORT` disk cannot attach; `nbd-client` puts the export
// at /dev/nbdN and the domU's disk names that device (backendtype=phy, or qdisk, whose
// writes pass dom0's page cache and are flushed at each checkpoint). On the primary, the
// protect process serves the image with a DiskReplicator as the engine's DiskPort. On the
// backup, the replica's disk is served the same way at
// failover, attached to a free /dev/nbdM, and the domain configuration handed to
// `xl migrate-receive` names /dev/nbdM instead of the primary's device
// (docs/xen-adapter.md, "Disk").
import { ErrorCode, RemusError } from '../../errors';
import type { Capture, Clock, Domain } from '../../ports';
import { DEFAULT_EXPORT_NAME } from '../../../blktap/serve';
import { BlockFile } from '../../../blktap/block-file';
import { DiskReplicator } from '../../../blktap/replicator';
import { DrainingDiskPort, WorkerServedDisk } from './disk-worker';
import { xlSavefileHeader } from './xl-stream';
import { xenAddon, type XenAddon } from './xen-addon';
import { NBD_DEVICE, deviceFlusher, nbdAttach, nbdDetach } from './nbd-device';

/** xl savefile header: 32 magic, u32 byte order, u32 mandatory flags, u32 optional flags, u32 optional length. */
const XL_HEADER_BYTES = 48;
const XL_MAGIC_BYTES = 32;
/** Largest domain configuration we parse (libxl's JSON of a PV domain is a few KiB). */
export const XL_CONFIG_BYTES_MAX = 1 << 20;

/** The domain configuration (JSON) at the start of an xl stream preamble, and what follows it. */
export function splitXlPreamble(preamble: Buffer): { json: string; rest: Buffer } {
  const bad = (why: string): RemusError =>
    new RemusError(ErrorCode.XEN, `the stream preamble is not an xl savefile header: ${why}`);
  if (preamble.length < XL_HEADER_BYTES + 4) throw bad(`${preamble.length} octets`);
  if (!preamble.subarray(0, XL_MAGIC_BYTES).equals(xlSavefileHeader('').subarray(0, XL_MAGIC_BYTES)))
    throw bad('magic');
  const optBytes = preamble.readUInt32LE(44);
  const jsonBytes = preamble.readUInt32LE(48);
  if (
    optBytes > XL_CONFIG_BYTES_MAX ||
    jsonBytes + 4 !== optBytes ||
    XL_HEADER_BYTES + optBytes > preamble.length ||
    jsonBytes === 0
  ) {
    throw bad(`optional data of ${optBytes} octets, configuration of ${jsonBytes}`);
  }
  const json = preamble.subarray(XL_HEADER_BYTES + 4, XL_HEADER_BYTES + optBytes);
  if (json[json.length - 1] !== 0) throw bad('the configuration is not NUL-terminated');
  return {
    json: json.subarray(0, json.length - 1).toString('utf8'),
    rest: preamble.subarray(XL_HEADER_BYTES + optBytes),
  };
}

interface XlDisk {
  pdev_path?: unknown;
  vdev?: unknown;
}

/**
 * Points the domain's one NBD-backed disk (pdev_path /dev/nbdN) at device instead.
 * Exactly one such disk: that is the replicated one (other disks are left as they are).
 */
export function retargetNbdDisk(configJson: string, device: string): { json: string; vdev: string; from: string } {
  if (!NBD_DEVICE.test(device))
    throw new RemusError(ErrorCode.BAD_ARGUMENT, `${device} is not an NBD device (/dev/nbdN)`);
  let cfg: { disks?: unknown };
  try {
    cfg = JSON.parse(configJson) as { disks?: unknown };
  } catch {
    throw new RemusError(ErrorCode.XEN, 'the domain configuration in the stream is not JSON');
  }
  const disks = Array.isArray(cfg.disks) ? (cfg.disks as XlDisk[]) : [];
  const nbd = disks.filter((d) => typeof d?.pdev_path === 'string' && NBD_DEVICE.test(d.pdev_path));
  if (nbd.length !== 1) {
    throw new RemusError(
      ErrorCode.XEN,
      `the domain's configuration has ${nbd.length} disks on /dev/nbdN (of ${disks.length} disks); a replicated disk ` +
        `is exactly one (docs/xen-adapter.md, "Disk")`,
    );
  }
  const from = String(nbd[0].pdev_path);
  nbd[0].pdev_path = device;
  return { json: JSON.stringify(cfg), vdev: String(nbd[0].vdev ?? '?'), from };
}

/** The preamble with its configuration's NBD disk pointed at device. */
export function retargetPreamble(preamble: Buffer, device: string): { preamble: Buffer; vdev: string; from: string } {
  const { json, rest } = splitXlPreamble(preamble);
  const r = retargetNbdDisk(json, device);
  return { preamble: Buffer.concat([xlSavefileHeader(r.json), rest]), vdev: r.vdev, from: r.from };
}

/** The backend of the configuration's one /dev/nbdN disk ("qdisk", "phy", ...), or null. */
export function nbdDiskBackend(configJson: string): { device: string; backend: string } | null {
  let cfg: { disks?: unknown };
  try {
    cfg = JSON.parse(configJson) as { disks?: unknown };
  } catch {
    return null;
  }
  const disks = (Array.isArray(cfg.disks) ? cfg.disks : []) as Array<XlDisk & { backend?: unknown }>;
  const nbd = disks.filter((d) => typeof d?.pdev_path === 'string' && NBD_DEVICE.test(d.pdev_path));
  return nbd.length === 1 ? { device: String(nbd[0].pdev_path), backend: String(nbd[0].backend ?? 'unknown') } : null;
}

/**
 * qdisk opens /dev/nbdN through dom0's page cache (Debian's QEMU cannot do direct-io-safe):
 * a write QEMU completed to the guest may not have reached our NBD server yet. Flushing the
 * device after the capture (the domain suspended, before the disk barrier) sends those
 * writes to the server, so they are tagged with the checkpoint's epoch like the rest.
 */
export function flushAfterCapture(domain: Domain, flush: () => Promise<void>): Domain {
  return {
    kind: domain.kind,
    name: domain.name,
    pageCount: domain.pageCount,
    suspend: () => domain.suspend(),
    resume: () => domain.resume(),
    capture: async (full: boolean): Promise<Capture> => {
      const c = await domain.capture(full);
      await flush();
      return c;
    },
    describe: () => domain.describe(),
    fence: () => domain.fence(),
    get pausedMsLast() {
      return domain.pausedMsLast;
    }, // libxc's live rounds are not a pause
    get live() {
      return domain.live;
    },
  };
}

export interface PrimaryDiskOptions {
  image: string;
  host: string;
  port: number;
  /** Attach this /dev/nbdN to the export once it listens (else the user runs nbd-client). */
  device?: string;
  clock: Clock;
  unackedBytesMax: number;
  log: (line: string) => void;
}

/** The protected domain's disk on the primary: served with replication, optionally attached. */
export interface PrimaryDisk {
  readonly replicator: DrainingDiskPort;
  readonly port: number;
  readonly device: string | null;
  describe(): Record<string, unknown>;
  close(): Promise<void>;
}

export async function servePrimaryDisk(o: PrimaryDiskOptions): Promise<PrimaryDisk> {
  const source = BlockFile.open(o.image);
  // Read tracking is off: a Xen checkpoint's pages travel inside libxc's records.
  const replicator = new DiskReplicator(source, o.clock, {
    unackedBytesMax: o.unackedBytesMax,
    inSync: false,
    readTrackingBlocksMax: 0,
    backendMovesGenerations: false, // the NBD worker's writes reach the replicator after the fact
  });
  let served: WorkerServedDisk;
  try {
    served = await WorkerServedDisk.start({
      image: o.image,
      host: o.host,
      port: o.port,
      exportName: DEFAULT_EXPORT_NAME,
    });
  } catch (e) {
    source.close();
    throw e;
  }
  const close = async (): Promise<void> => {
    await served.close();
    source.close();
  };
  o.log(
    `disk: serving ${o.image} (${served.sizeBytes} bytes) over NBD on ${o.host}:${served.port} with replication ` +
      `(server thread)`,
  );
  if (o.device) {
    try {
      await nbdAttach(served.port, o.device, served.exportName);
    } catch (e) {
      await close();
      throw e;
    }
    o.log(
      `disk: ${o.device} is the export (give the domU: 'format=raw, vdev=xvdb, access=rw, backendtype=phy, ` +
        `target=${o.device}')`,
    );
  }
  return {
    replicator: new DrainingDiskPort(replicator, served),
    port: served.port,
    device: o.device ?? null,
    describe: () => ({
      image: o.image,
      listen: `${o.host}:${served.port}`,
      device: o.device ?? null,
      sizeBytes: served.sizeBytes,
    }),
    close: async () => {
      if (o.device) await nbdDetach(o.device);
      await close();
    },
  };
}

/**
 * Waits until the Xen domain exists and runs (bounded): with --disk-image the protect
 * process serves the disk first, then the user creates the domU, then protection starts.
 */
export async function waitForXenDomain(
  name: string,
  timeoutMs: number,
  log: (line: string) => void,
  addon: Pick<XenAddon, 'xenDomainInfo'> = xenAddon(),
): Promise<void> {
  const lookup = (): boolean => {
    try {
      const i = addon.xenDomainInfo(/^\d+$/.test(name) ? Number(name) : name);
      return !i.dying && !i.shutdown && !i.paused;
    } catch {
      return false;
    }
  };
  if (lookup()) return;
  log(`waiting up to ${Math.round(timeoutMs / 1000)} s for domain ${name} (create it now; its disk is served)`);
  const deadline = Date.now() + timeoutMs;
  while (!lookup()) {
    if (Date.now() > deadline)
      throw new RemusError(
        ErrorCode.NO_DOMAIN,
        `domain ${name} did not appear within ${Math.round(timeoutMs / 1000)} s`,
      );
    await new Promise((r) => setTimeout(r, 500));
  }
}

/** `remusdb protect --disk-image` on Xen: what the protect process hands the engine. */
export interface XenProtectDisk {
  readonly replicator: DrainingDiskPort;
  /** After each capture (qdisk only), else null. */
  readonly flush: (() => Promise<void>) | null;
  close(): Promise<void>;
}

/**
 * Serves (and attaches) the image, waits for the domain to run, and reads its configuration:
 * with a qdisk backend on the NBD device, each checkpoint flushes the device's page cache.
 */
export async function openXenProtectDisk(
  o: PrimaryDiskOptions & { domain: string; waitMs: number },
  addon: Pick<XenAddon, 'xenDomainInfo' | 'xenDomainConfigJson'> = xenAddon(),
): Promise<XenProtectDisk> {
  const disk = await servePrimaryDisk(o);
  try {
    await waitForXenDomain(o.domain, o.waitMs, o.log, addon);
    const info = addon.xenDomainInfo(/^\d+$/.test(o.domain) ? Number(o.domain) : o.domain);
    const nbd = nbdDiskBackend(addon.xenDomainConfigJson(info.domid));
    const flusher = nbd?.backend === 'qdisk' ? deviceFlusher(nbd.device) : null;
    o.log(
      `disk: the domain's NBD disk is ${
        nbd ? `${nbd.device} (${nbd.backend})` : 'not one /dev/nbdN device: the backup cannot re-point it'
      }${flusher ? ', its page cache flushed at each checkpoint' : ''}`,
    );
    return {
      replicator: disk.replicator,
      flush: flusher ? () => flusher.flush() : null,
      close: async () => {
        await flusher?.close();
        await disk.close();
      },
    };
  } catch (e) {
    await disk.close();
    throw e;
  }
}

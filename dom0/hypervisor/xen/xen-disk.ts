// xen-disk: a Xen domU's replicated disk. The image is served by our NBD server
// (dom0/disk) and reaches Xen through the kernel NBD client: QEMU 7.2's qdisk backend
// (xen-block) opens its target only with the "file" or "host_device" driver (it stat()s
// the target), so a `target=nbd:HOST:PORT` disk cannot attach; `nbd-client` puts the export
// at /dev/nbdN and the domU's disk names that device (backendtype=qdisk with direct-io-safe,
// or phy). On the primary, the protect process serves the image with a DiskReplicator as
// the engine's DiskPort. On the backup, the replica's disk is served the same way at
// failover, attached to a free /dev/nbdM, and the domain configuration handed to
// `xl migrate-receive` names /dev/nbdM instead of the primary's device
// (docs/xen-adapter.md, "Disk").
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ErrorCode, RemusError } from '../../errors';
import type { Clock } from '../../engine/ports';
import { serveReplicatedDisk, type ReplicatedDisk } from '../../disk/serve';
import type { DiskReplicator } from '../../disk/replicator';
import { xlSavefileHeader } from './xl-stream';
import { xenAddon, type XenAddon } from './xen-addon';

/** xl savefile header: 32 magic, u32 byte order, u32 mandatory flags, u32 optional flags, u32 optional length. */
const XL_HEADER_BYTES = 48;
const XL_MAGIC_BYTES = 32;
/** Largest domain configuration we parse (libxl's JSON of a PV domain is a few KiB). */
export const XL_CONFIG_BYTES_MAX = 1 << 20;
const NBD_DEVICE = /^\/dev\/nbd(\d+)$/;
const NBD_CLIENT_TIMEOUT_MS = 30_000;

/** The domain configuration (JSON) at the start of an xl stream preamble, and what follows it. */
export function splitXlPreamble(preamble: Buffer): { json: string; rest: Buffer } {
  const bad = (why: string): RemusError => new RemusError(ErrorCode.XEN, `the stream preamble is not an xl savefile header: ${why}`);
  if (preamble.length < XL_HEADER_BYTES + 4) throw bad(`${preamble.length} octets`);
  if (!preamble.subarray(0, XL_MAGIC_BYTES).equals(xlSavefileHeader('').subarray(0, XL_MAGIC_BYTES))) throw bad('magic');
  const optBytes = preamble.readUInt32LE(44);
  const jsonBytes = preamble.readUInt32LE(48);
  if (optBytes > XL_CONFIG_BYTES_MAX || jsonBytes + 4 !== optBytes || XL_HEADER_BYTES + optBytes > preamble.length || jsonBytes === 0) {
    throw bad(`optional data of ${optBytes} octets, configuration of ${jsonBytes}`);
  }
  const json = preamble.subarray(XL_HEADER_BYTES + 4, XL_HEADER_BYTES + optBytes);
  if (json[json.length - 1] !== 0) throw bad('the configuration is not NUL-terminated');
  return { json: json.subarray(0, json.length - 1).toString('utf8'), rest: preamble.subarray(XL_HEADER_BYTES + optBytes) };
}

interface XlDisk { pdev_path?: unknown; vdev?: unknown; }

/**
 * Points the domain's one NBD-backed disk (pdev_path /dev/nbdN) at device instead.
 * Exactly one such disk: that is the replicated one (other disks are left as they are).
 */
export function retargetNbdDisk(configJson: string, device: string): { json: string; vdev: string; from: string } {
  if (!NBD_DEVICE.test(device)) throw new RemusError(ErrorCode.BAD_ARGUMENT, `${device} is not an NBD device (/dev/nbdN)`);
  let cfg: { disks?: unknown };
  try { cfg = JSON.parse(configJson) as { disks?: unknown }; } catch {
    throw new RemusError(ErrorCode.XEN, 'the domain configuration in the stream is not JSON');
  }
  const disks = Array.isArray(cfg.disks) ? cfg.disks as XlDisk[] : [];
  const nbd = disks.filter((d) => typeof d?.pdev_path === 'string' && NBD_DEVICE.test(d.pdev_path));
  if (nbd.length !== 1) {
    throw new RemusError(ErrorCode.XEN, `the domain's configuration has ${nbd.length} disks on /dev/nbdN (of ${disks.length} disks); a replicated disk is exactly one (docs/xen-adapter.md, "Disk")`);
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

/** The first NBD device with no connection (no pid, size 0), skipping the ones in except. */
export function freeNbdDevice(sysBlock = '/sys/block', except: string[] = []): string {
  let names: string[];
  try { names = fs.readdirSync(sysBlock).filter((n) => /^nbd\d+$/.test(n)); } catch { names = []; }
  names.sort((a, b) => Number(a.slice(3)) - Number(b.slice(3)));
  for (const n of names) {
    const dev = `/dev/${n}`;
    if (except.includes(dev) || fs.existsSync(path.join(sysBlock, n, 'pid'))) continue;
    const size = Number(readText(path.join(sysBlock, n, 'size')) ?? '1');
    if (size === 0) return dev;
  }
  throw new RemusError(ErrorCode.IO, names.length ? `all ${names.length} NBD devices are in use (modprobe nbd nbds_max=N for more)` : 'no NBD devices: load the kernel module (modprobe nbd)');
}

function readText(p: string): string | null {
  try { return fs.readFileSync(p, 'utf8').trim(); } catch { return null; }
}

/** Runs a command to its end (bounded); rejects with its stderr on a failure. */
function run(argv: string[], timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr!.on('data', (d: Buffer) => { if (err.length < 4096) err += d.toString('utf8'); });
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('error', (e) => { clearTimeout(timer); reject(new RemusError(ErrorCode.IO, `${argv[0]}: ${e.message}`)); });
    p.on('exit', (code, sig) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new RemusError(ErrorCode.IO, `${argv.join(' ')} failed (${sig ?? `code ${code}`}): ${err.trim().split('\n').slice(-3).join(' | ')}`));
    });
  });
}

/** Connects the kernel NBD client: device shows our export at 127.0.0.1:port. */
export async function nbdAttach(port: number, device: string, exportName = 'remusdb'): Promise<void> {
  if (!NBD_DEVICE.test(device)) throw new RemusError(ErrorCode.BAD_ARGUMENT, `${device} is not an NBD device (/dev/nbdN)`);
  if (!fs.existsSync(device)) await run(['modprobe', 'nbd'], NBD_CLIENT_TIMEOUT_MS).catch(() => undefined);
  await run(['nbd-client', '127.0.0.1', String(port), device, '-N', exportName, '-b', '4096'], NBD_CLIENT_TIMEOUT_MS);
}

/** Disconnects device (best effort). */
export async function nbdDetach(device: string): Promise<void> {
  await run(['nbd-client', '-d', device], NBD_CLIENT_TIMEOUT_MS).catch(() => undefined);
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
  readonly replicator: DiskReplicator;
  readonly port: number;
  readonly device: string | null;
  describe(): Record<string, unknown>;
  close(): Promise<void>;
}

export async function servePrimaryDisk(o: PrimaryDiskOptions): Promise<PrimaryDisk> {
  const served: ReplicatedDisk = await serveReplicatedDisk({
    image: o.image, host: o.host, port: o.port, clock: o.clock, log: o.log,
    // Read tracking is off: a Xen checkpoint's pages travel inside libxc's records.
    replication: { unackedBytesMax: o.unackedBytesMax, inSync: false, readTrackingBlocksMax: 0 },
  });
  o.log(`disk: serving ${o.image} (${served.sizeBytes} bytes) over NBD on ${o.host}:${served.port} with replication`);
  if (o.device) {
    try { await nbdAttach(served.port, o.device, served.exportName); } catch (e) { await served.close(); throw e; }
    o.log(`disk: ${o.device} is the export (give the domU: 'format=raw, vdev=xvdb, access=rw, backendtype=qdisk, direct-io-safe, target=${o.device}')`);
  }
  return {
    replicator: served.replicator, port: served.port, device: o.device ?? null,
    describe: () => ({ image: o.image, listen: `${o.host}:${served.port}`, device: o.device ?? null, sizeBytes: served.sizeBytes }),
    close: async () => { if (o.device) await nbdDetach(o.device); await served.close(); },
  };
}

/**
 * Waits until the Xen domain exists and runs (bounded): with --disk-image the protect
 * process serves the disk first, then the user creates the domU, then protection starts.
 */
export async function waitForXenDomain(name: string, timeoutMs: number, log: (line: string) => void,
  addon: Pick<XenAddon, 'xenDomainInfo'> = xenAddon()): Promise<void> {
  const lookup = (): boolean => {
    try { const i = addon.xenDomainInfo(/^\d+$/.test(name) ? Number(name) : name); return !i.dying && !i.shutdown && !i.paused; } catch { return false; }
  };
  if (lookup()) return;
  log(`waiting up to ${Math.round(timeoutMs / 1000)} s for domain ${name} (create it now; its disk is served)`);
  const deadline = Date.now() + timeoutMs;
  while (!lookup()) {
    if (Date.now() > deadline) throw new RemusError(ErrorCode.NO_DOMAIN, `domain ${name} did not appear within ${Math.round(timeoutMs / 1000)} s`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

// xen-services: the `remusdb protect` process for a Xen domain, and the backup's replica
// factory for Xen primaries. XenProtectService runs the checkpoint engine (Primary) over a
// XenDomain (libxenguest's Remus save loop, dom0/hypervisor/xen/xen-domain.ts) against a
// backup reached over the replication channel, reconnecting with backoff, and answers
// `remusdb status` on its control socket. Network outputs: held per epoch by the caller's
// network buffer (dom0/net/domain-net.ts: plug or nfqueue on the domain's vifs, made once
// the domid is known), or pass-through (nothing held, as `xl remus -n`) without one. xenReplicaFor is what BackupService.replicaFor calls for a
// HELLO whose kind is xen.
import { ErrorCode, RemusError } from '../errors';
import { realClock } from '../engine/clock';
import type { HelloInfo } from '../engine/backup';
import { Primary, type PrimaryOptions } from '../engine/primary';
import type { DiskPort, OutputGate } from '../ports';
import { XenDomain, type XenDomainOptions } from '../hypervisor/xen/xen-domain';
import { XenReplica } from '../hypervisor/xen/xen-replica';
import type { Security } from '../protocol/channel';
import { Reconnector } from './reconnector';
import { NoGate } from '../net/net-device';
import { ControlServer, protectLockPath, socketPath } from './control';
import { HostLock } from './host-lock';
import { BlockFile } from '../../blktap/block-file';
import { flushAfterCapture } from '../hypervisor/xen/xen-disk';
import type { ExposureTracker } from '../net/failover-reset';
import { exportExposure } from '../net/exposure-relay';
import type { MetricsExporter, PrimarySample, PrimaryWatch } from './metrics';

/** An output gate and how to release it (a network buffer from dom0/net/net-device.ts). */
export interface XenNetBuffer { gate: OutputGate; close(): void; describe?(): Record<string, unknown>; exposure?: ExposureTracker[]; }

export interface XenProtectConfig {
  /** Domain name or id. */
  domain: string;
  backup: { host: string; port: number };
  security: Security;
  /** Engine options, given the domain's page count (the page cache is sized from it). */
  engine: (pageCount: number) => PrimaryOptions;
  /** Made once the domain is known (its name, for the packet rules); default: nothing held. */
  netBuffer?: (domainName: string, domid: number) => XenNetBuffer | null;
  xen?: Partial<XenDomainOptions>;
  /** The domain's replicated disk (served over NBD by this process, dom0/hypervisor/xen/xen-disk.ts): the engine's DiskPort. */
  disk?: (DiskPort & { stats(): unknown }) | null;
  /** Run after each capture, before the disk barrier (qdisk: flush /dev/nbdN's page cache to the server). */
  diskFlush?: (() => Promise<void>) | null;
  /** Where this primary's metrics are served (--metrics); stop() closes it. */
  metrics?: MetricsExporter | null;
  log: (line: string) => void;
}

export class XenProtectService {
  readonly domain: XenDomain;
  readonly primary: Primary;
  private readonly net: XenNetBuffer | null;
  private readonly control: ControlServer;
  private stopped = false;
  private readonly reconnector: Reconnector;
  private readonly events: Array<Record<string, unknown>> = [];
  private readonly metrics: PrimaryWatch | null;
  /** Times the backup was lost ('backup-lost' events), for status and metrics. */
  private backupLosses = 0;
  private endedWith: (why: string) => void = () => {};
  /** Resolves when protection ended by itself: the backup took over and fenced this copy. */
  readonly ended = new Promise<string>((resolve) => { this.endedWith = resolve; });

  /** One protect per domain per host (taken before anything is installed for the domain). */
  private readonly lock: HostLock;

  constructor(private readonly cfg: XenProtectConfig) {
    this.domain = XenDomain.open(cfg.domain, { log: cfg.log, ...cfg.xen });
    this.lock = HostLock.acquire(protectLockPath('xen', this.domain.name), `protection of ${this.domain.name}`);
    let net: XenNetBuffer | null = null;
    try {
      this.net = net = cfg.netBuffer?.(this.domain.name, this.domain.domid) ?? null;
      this.primary = new Primary(cfg.diskFlush ? flushAfterCapture(this.domain, cfg.diskFlush) : this.domain, this.net?.gate ?? new NoGate(), realClock, cfg.engine(this.domain.pageCount), {
        event: (name, detail) => this.onEvent(name, detail),
        paused: (ms, full) => this.metrics?.pause(ms, full),
        netExposure: (full) => (this.net?.exposure?.length ? exportExposure(this.net.exposure, full) : null),
      }, cfg.disk ?? null);
      for (const t of this.net?.exposure ?? []) t.onExposed = () => this.primary.flushExposure();
      this.reconnector = new Reconnector({ backup: cfg.backup, security: cfg.security, log: cfg.log,
        attached: () => this.primary.attached, attach: (link) => this.primary.attach(link) });
      this.control = new ControlServer(socketPath('primary', this.domain.name), (req) => {
        if (req.cmd === 'status') return this.status();
        throw new RemusError(ErrorCode.CONTROL, `unknown control command ${JSON.stringify(req.cmd)}`);
      });
      // Held outputs are the network buffer's (plug or nfqueue): no hold-time histogram here.
      this.metrics = cfg.metrics?.watchPrimary(this.domain.name, () => this.metricsSample()) ?? null;
    } catch (e) {
      net?.close(); // installed before what failed
      this.lock.release();
      throw e;
    }
  }

  start(): void {
    this.primary.start();
    this.reconnector.connect();
  }

  /** Ends protection (GOODBYE); the domain keeps running here. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    try {
      this.reconnector.stop();
      this.primary.stop();
      this.control.close();
    } finally {
      // Unprotected from here: the buffer goes before the save loop (the domain may be gone,
      // and closing the loop may wait for libxc), so its rules or qdiscs never outlive us.
      this.net?.close();
      if (this.net) this.cfg.log(`protection of ${this.domain.name} stopped: its network buffer is removed`);
      this.metrics?.detach();
      await this.cfg.metrics?.close();
    }
    try {
      await this.domain.close();
    } finally {
      this.lock.release();
    }
  }

  status(): Record<string, unknown> {
    const s = this.primary.stats();
    const xen = this.domain.describe();
    return {
      role: 'primary', domain: this.domain.name, kind: 'xen', ...s, guest: xen, interval_ms: this.primary.opts.intervalMs,
      compressor: this.primary.opts.compressor, net_buffer: this.net ? (this.net.describe?.() ?? true) : false,
      disk: this.cfg.disk ? this.cfg.disk.stats() : null, events: this.events.slice(-10),
      backupLosses: this.backupLosses,
    };
  }

  /** The figures of status() that the metrics show (dom0/service/metrics.ts). */
  private metricsSample(): PrimarySample {
    const d = (this.cfg.disk?.stats() ?? null) as { forwardedBytes?: unknown; resyncPendingBytes?: unknown } | null;
    const disk = d && typeof d.forwardedBytes === 'number' && typeof d.resyncPendingBytes === 'number'
      ? { forwardedBytes: d.forwardedBytes, resyncPendingBytes: d.resyncPendingBytes } : null;
    return { stats: this.primary.stats(), backupLosses: this.backupLosses, disk };
  }

  private onEvent(name: string, detail: Record<string, unknown>): void {
    this.events.push({ name, at: Date.now(), ...detail });
    if (this.events.length > 100) this.events.shift();
    const n = this.domain.name;
    if (name === 'protected') this.cfg.log(`protected: ${n} → ${String(detail.backup)} (full copy as epoch ${String(detail.epoch)})`);
    if (name === 'checkpoint-failed') this.cfg.log(`checkpoint ${String(detail.epoch)} of ${n} failed: ${String(detail.message)}`);
    if (name === 'protected') this.reconnector.established();
    if (name === 'backup-lost') {
      this.backupLosses++;
      this.reconnector.lost(`backup lost (${String(detail.reason)}); ${n} keeps running UNPROTECTED, reconnecting`);
    }
    if (name === 'fenced') {
      this.cfg.log(`the backup took over from epoch ${String(detail.epoch)}: ${n} is paused here (fenced)`);
      this.endedWith(`protection of ${n} ended: it runs on the backup now (run \`remusdb reprotect\` there to protect it again)`);
    }
  }
}

/**
 * The backup side: a replica that feeds `xl migrate-receive -r -e` (needs a Xen dom0).
 * diskFile: where its replica disk goes (chosen and locked by the backup service), served
 * over NBD at failover (xen-replica.ts); null when the domain has no disk.
 */
export function xenReplicaFor(h: HelloInfo, log: (line: string) => void, opts: { diskFile: string | null }): XenReplica {
  if (h.pageSize !== 4096) throw new RemusError(ErrorCode.HANDSHAKE, `Xen domain ${h.domain}: page size ${h.pageSize}`);
  const disk = opts.diskFile ? BlockFile.create(opts.diskFile, h.diskBytes) : null;
  try {
    return new XenReplica(h.domain, h.pageCount, { log, disk });
  } catch (e) {
    disk?.close();
    throw e;
  }
}

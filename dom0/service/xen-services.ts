// xen-services: the `remusdb protect` process for a Xen domain, and the backup's replica
// factory for Xen primaries. XenProtectService runs the checkpoint engine (Primary) over a
// XenDomain (libxenguest's Remus save loop, dom0/hypervisor/xen/xen-domain.ts) against a
// backup reached over the replication channel, reconnecting with backoff, and answers
// `remusdb status` on its control socket. Network outputs: pass-through (nothing held, as
// `xl remus -n`) unless the caller hands in a network buffer's gate (openNetBuffer, the
// `--net-buffer nfqueue` hook). xenReplicaFor is what BackupService.replicaFor calls for a
// HELLO whose kind is xen.
import { ErrorCode, RemusError } from '../errors';
import { realClock } from '../engine/clock';
import type { HelloInfo } from '../engine/backup';
import { Primary, type PrimaryOptions } from '../engine/primary';
import type { Link, OutputGate } from '../engine/ports';
import { XenDomain, type XenDomainOptions } from '../hypervisor/xen/xen-domain';
import { XenReplica } from '../hypervisor/xen/xen-replica';
import { connectLink, type Security } from '../protocol/channel';
import { ControlServer, socketPath } from './control';

/** An output gate and how to release it (a network buffer from dom0/net/net-device.ts). */
export interface XenNetBuffer { gate: OutputGate; close(): void; describe?(): Record<string, unknown>; }

export interface XenProtectConfig {
  /** Domain name or id. */
  domain: string;
  backup: { host: string; port: number };
  security: Security;
  /** Engine options, given the domain's page count (the page cache is sized from it). */
  engine: (pageCount: number) => PrimaryOptions;
  /** Made once the domain is known (its name, for the packet rules); default: nothing held. */
  netBuffer?: (domainName: string, domid: number) => XenNetBuffer;
  xen?: Partial<XenDomainOptions>;
  log: (line: string) => void;
}

/** Nothing held: every output leaves at once (no output commit yet). */
class PassThrough implements OutputGate {
  readonly held = 0;
  barrier(): void { /* nothing held */ }
  release(): void { /* nothing held */ }
  setPassThrough(): void { /* always */ }
  discard(): void { /* nothing held */ }
}

export class XenProtectService {
  readonly domain: XenDomain;
  readonly primary: Primary;
  private readonly net: XenNetBuffer;
  private readonly control: ControlServer;
  private stopped = false;
  private reconnectDelayMs = 100;
  private readonly events: Array<Record<string, unknown>> = [];

  constructor(private readonly cfg: XenProtectConfig) {
    this.domain = XenDomain.open(cfg.domain, { log: cfg.log, ...cfg.xen });
    this.net = cfg.netBuffer?.(this.domain.name, this.domain.domid) ?? { gate: new PassThrough(), close: () => {} };
    this.primary = new Primary(this.domain, this.net.gate, realClock, cfg.engine(this.domain.pageCount), {
      event: (name, detail) => this.onEvent(name, detail),
    });
    this.control = new ControlServer(socketPath('primary', this.domain.name), (req) => {
      if (req.cmd === 'status') return this.status();
      throw new RemusError(ErrorCode.CONTROL, `unknown control command ${JSON.stringify(req.cmd)}`);
    });
  }

  start(): void {
    this.primary.start();
    this.connect();
  }

  /** Ends protection (GOODBYE); the domain keeps running here. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.primary.stop();
    this.control.close();
    await this.domain.close();
    this.net.close();
  }

  status(): Record<string, unknown> {
    const s = this.primary.stats();
    const xen = this.domain.describe();
    return {
      role: 'primary', domain: this.domain.name, kind: 'xen', ...s, guest: xen, interval_ms: this.primary.opts.intervalMs,
      compressor: this.primary.opts.compressor, net_buffer: this.cfg.netBuffer ? (this.net.describe?.() ?? true) : false,
      events: this.events.slice(-10),
    };
  }

  private onEvent(name: string, detail: Record<string, unknown>): void {
    this.events.push({ name, at: Date.now(), ...detail });
    if (this.events.length > 100) this.events.shift();
    const n = this.domain.name;
    if (name === 'protected') this.cfg.log(`protected: ${n} → ${String(detail.backup)} (full copy as epoch ${String(detail.epoch)})`);
    if (name === 'checkpoint-failed') this.cfg.log(`checkpoint ${String(detail.epoch)} of ${n} failed: ${String(detail.message)}`);
    if (name === 'backup-lost') {
      this.cfg.log(`backup lost (${String(detail.reason)}); ${n} keeps running UNPROTECTED, reconnecting`);
      this.scheduleReconnect();
    }
    if (name === 'fenced') this.cfg.log(`the backup took over from epoch ${String(detail.epoch)}: ${n} is paused here (fenced)`);
  }

  private connect(): void {
    if (this.stopped || this.primary.attached) return;
    const b = this.cfg.backup;
    connectLink(b.host, b.port, this.cfg.security).then((link: Link) => {
      if (this.stopped) { link.close(); return; }
      this.reconnectDelayMs = 100;
      this.primary.attach(link);
    }, (e: Error) => {
      if ((e as RemusError).code === ErrorCode.AUTH) this.cfg.log(`backup ${b.host}:${b.port}: ${e.message}`);
      this.scheduleReconnect();
    });
  }

  private scheduleReconnect(): void {
    if (this.stopped) return;
    setTimeout(() => this.connect(), this.reconnectDelayMs).unref();
    this.reconnectDelayMs = Math.min(5000, this.reconnectDelayMs * 2);
  }
}

/** The backup side: a replica that feeds `xl migrate-receive -r -e` (needs a Xen dom0). */
export function xenReplicaFor(h: HelloInfo, log: (line: string) => void): XenReplica {
  if (h.pageSize !== 4096) throw new RemusError(ErrorCode.HANDSHAKE, `Xen domain ${h.domain}: page size ${h.pageSize}`);
  return new XenReplica(h.domain, h.pageCount, { log });
}

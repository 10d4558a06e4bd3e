// backup-service: the `remusdb backup` process. It listens for primaries on the replication
// channel, keeps each protected domain's replica (one primary at a time), fails over on
// silence or a broken channel (or on `remusdb failover`), and then runs the domain here.
import { ErrorCode, RemusError } from '../errors';
import { Backup, type HelloInfo } from '../engine/backup';
import { realClock } from '../engine/clock';
import { SimReplica } from '../hypervisor/sim/sim-replica';
import type { XenReplica } from '../hypervisor/xen/xen-replica';
import { xenReplicaFor } from './xen-services';
import { listenLinks, parseHostPort, readPskFile, type Listener, type Security } from '../protocol/channel';
import { ProtectService } from './protect-service';
import { ControlServer, runtimeDir as runDir, socketPath } from './control';
import { BlockFile } from '../disk/block-file';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BackupExposure } from '../net/exposure-relay';
import { announceFailover } from '../hypervisor/xen/failover-notice';

export interface BackupConfig {
  host: string;
  port: number;
  security: Security;
  pageCountMax: number;
  batchPagesMax: number;
  /** Where replica disks are kept (default: the run directory), and the write buffer bound. */
  diskDir?: string;
  diskBufferBytesMax?: number;
  /**
   * A disk image this host already holds for the domain — the old primary's, when this host
   * comes back as the backup (reprotection): only the blocks that differ are copied.
   */
  reuseDisk?: string;
  log: (line: string) => void;
}

export class BackupService {
  readonly backup: Backup;
  private listener: Listener | null = null;
  private control: ControlServer | null = null;
  private replica: SimReplica | null = null;
  private xenReplica: XenReplica | null = null;
  private promoted: ProtectService | null = null;
  private readonly events: Array<Record<string, unknown>> = [];
  private readonly exposure: BackupExposure;

  constructor(private readonly cfg: BackupConfig) {
    this.exposure = new BackupExposure(cfg.log);
    this.backup = new Backup(realClock, {
      pageCountMax: cfg.pageCountMax, batchPagesMax: cfg.batchPagesMax, diskBufferBytesMax: cfg.diskBufferBytesMax,
      replicaFor: (h) => this.replicaFor(h),
    }, { event: (name, detail) => this.onEvent(name, detail), netExposure: (_epoch, value) => this.exposure.onRecord(value) });
  }

  get port(): number { return this.listener?.port ?? this.cfg.port; }

  async start(): Promise<void> {
    this.listener = await listenLinks(this.cfg.host, this.cfg.port, this.cfg.security,
      (link) => this.backup.attach(link), (why) => this.cfg.log(why));
    this.control = new ControlServer(socketPath('backup', String(this.listener.port)), (req) => this.onControl(req));
  }

  async stop(): Promise<void> {
    await this.promoted?.stop();
    this.backup.close();
    this.listener?.close();
    this.control?.close();
    this.replica?.sink?.close();
    await this.replica?.domain?.destroy();
    this.xenReplica?.close();
    this.replica?.disk?.close();
  }

  status(): Record<string, unknown> {
    return {
      role: 'backup', listen: `${this.cfg.host}:${this.port}`, state: this.backup.state,
      domain: this.backup.domain ? (this.xenReplica ? this.backup.domain : `sim:${this.backup.domain}`) : null,
      xen: this.xenReplica?.stats ?? null, attached: this.backup.attached,
      committedEpoch: this.backup.committedEpoch, ...this.backup.counters,
      resumed: this.backup.resumedFrom, guest: this.replica?.domain?.describe() ?? null,
      outputs: this.replica?.sink?.stats ?? null, events: this.events.slice(-10),
      disk: this.replica?.disk ? { path: this.replica.disk.path, sizeBytes: this.replica.disk.sizeBytes, ...this.replica.replicator?.stats() } : null,
      reprotecting: this.promoted?.status() ?? null,
    };
  }

  private replicaFor(h: HelloInfo): SimReplica | XenReplica {
    if (h.kind === 'xen') return (this.xenReplica = xenReplicaFor(h, this.cfg.log, { diskDir: this.cfg.diskDir }));
    if (h.kind !== 'sim') throw new RemusError(ErrorCode.HANDSHAKE, `this backup runs simulated or Xen domains; ${h.domain} is a ${h.kind} domain`);
    let disk: BlockFile | null = null;
    if (h.diskBytes > 0 && this.cfg.reuseDisk) {
      disk = BlockFile.open(this.cfg.reuseDisk);
      if (disk.sizeBytes !== h.diskBytes) {
        disk.close();
        throw new RemusError(ErrorCode.HANDSHAKE, `--reuse-disk ${this.cfg.reuseDisk} holds ${disk.sizeBytes} bytes; ${h.domain}'s disk has ${h.diskBytes}`);
      }
      this.replica = new SimReplica(h.domain, h.pageCount, disk, true);
      return this.replica;
    }
    if (h.diskBytes > 0) {
      const dir = this.cfg.diskDir ?? runDir();
      fs.mkdirSync(dir, { recursive: true });
      disk = BlockFile.create(path.join(dir, `sim-${h.domain}.backup.disk`), h.diskBytes);
    }
    this.replica = new SimReplica(h.domain, h.pageCount, disk);
    return this.replica;
  }

  private onControl(req: Record<string, unknown>): Record<string, unknown> {
    if (req.cmd === 'status') return this.status();
    if (req.cmd === 'reprotect') return this.reprotect(req);
    if (req.cmd === 'failover') {
      if (req.domain && this.backup.domain && req.domain !== `sim:${this.backup.domain}` && req.domain !== this.backup.domain) {
        throw new RemusError(ErrorCode.NO_DOMAIN, `this backup holds ${this.backup.domain}, not ${String(req.domain)}`);
      }
      const r = this.backup.failover('manual failover (remusdb failover)');
      if (!r) throw new RemusError(ErrorCode.NO_DOMAIN, 'no committed checkpoint to resume from yet');
      return { ok: true, ...r };
    }
    throw new RemusError(ErrorCode.CONTROL, `unknown control command ${JSON.stringify(req.cmd)}`);
  }

  /**
   * `remusdb reprotect`: this host runs the domain since the failover; protect it now against
   * the new backup. The replicator has recorded every block written since the failover and
   * the blocks of the epochs discarded at failover: the session copies just those.
   */
  private reprotect(req: Record<string, unknown>): Record<string, unknown> {
    const r = this.replica;
    if (this.backup.state !== 'failed-over' || !r?.domain || !r.gate || !r.sink) {
      throw new RemusError(ErrorCode.NO_DOMAIN, 'this backup has not failed over: there is nothing to reprotect (the primary still runs the domain)');
    }
    if (this.promoted) return { ok: true, already: true, ...this.promoted.status() };
    const target = parseHostPort(String(req.backup ?? ''), 7400);
    const intervalMs = Number(req.intervalMs ?? 50);
    const security: Security = req.insecure === true ? { insecure: true } : { psk: readPskFile(String(req.pskFile ?? '')) };
    this.promoted = new ProtectService({
      name: r.name, backup: target, security,
      engine: {
        intervalMs, compressor: 'zstd', cachePages: Math.max(1, Math.floor(r.pageCount / 10)), maxInFlight: 2,
        heartbeatTimeoutMs: Number(req.heartbeatTimeoutMs ?? 2 * intervalMs + 100), batchPagesMax: 1024, deviceStateMax: 65536, verifyDisk: true,
        diskBufferBytesMax: this.cfg.diskBufferBytesMax,
      },
      memoryBytes: r.pageCount * 4096, workload: 'oltp', seed: 0, stepsPerSec: r.stepsPerSec, client: r.client,
      netBuffer: true, journal: null, diskBytes: r.disk?.sizeBytes ?? 0, diskBufferBytesMax: this.cfg.diskBufferBytesMax ?? 256 * 2 ** 20,
      readTracking: true, log: this.cfg.log,
    }, { domain: r.domain, gate: r.gate, sink: r.sink, disk: r.replicator, diskPath: r.disk?.path ?? null });
    this.promoted.start();
    this.cfg.log(`reprotecting ${r.name} → ${target.host}:${target.port}: ${r.replicator?.bitmap.bytes ?? 0} bytes of disk to copy`);
    return { ok: true, resyncBytes: r.replicator?.bitmap.bytes ?? 0, diskBytes: r.disk?.sizeBytes ?? 0 };
  }

  private onEvent(name: string, detail: Record<string, unknown>): void {
    this.events.push({ name, at: Date.now(), ...detail });
    if (this.events.length > 100) this.events.shift();
    if (name === 'session') this.exposure.onSession();
    if (name === 'failover') { // a resume that returned at once: the domain runs already
      this.exposure.onFailover(Number(detail.epoch));
      if (detail.resuming !== true) this.exposure.onResumed();
    }
    if (name === 'resumed') {
      this.exposure.onResumed();
      // A Xen guest learns it is the failed-over copy (its agent starts database recovery).
      if (typeof detail.domid === 'number') announceFailover(detail.domid, Number(detail.epoch), this.cfg.log);
    }
    if (name === 'session') this.cfg.log(`primary connected: ${String(detail.domain)} (${String(detail.pages)} pages)`);
    if (name === 'failover') this.cfg.log(`FAILOVER (${String(detail.reason)}): resumed ${String(this.backup.domain)} from epoch ${String(detail.epoch)}, seq ${String(detail.seq)}`);
    if (name === 'no-checkpoint') this.cfg.log(`primary gone (${String(detail.reason)}) before any checkpoint committed: nothing to resume`);
    if (name === 'protocol-error') this.cfg.log(`protocol error from the primary: ${String(detail.message)} (connection dropped; no failover)`);
    if (name === 'goodbye') this.cfg.log('primary ended protection (GOODBYE)');
  }
}

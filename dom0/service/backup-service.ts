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
import { BlockFile } from '../../blktap/block-file';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BackupExposure } from '../net/exposure-relay';
import { announceFailover } from '../hypervisor/xen/failover-notice';
import type { Replica } from '../ports';
import { HostLock } from './host-lock';
import { loopDelay } from './loop-delay';
import { ChangeLog } from './change-log';
import { assert } from '../assert';
import { checkSimGuestFitsHost } from '../hypervisor/sim/guest-size';
import type { BackupSample, MetricsExporter } from './metrics';
import { BATCH_PAGES_MAX_DEFAULT, DISK_BUFFER_BYTES_DEFAULT, SIM_DEVICE_STATE_BYTES_MAX } from '../limits';

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
  /** Simulated replicas: CRC32C the image at failover, before the guest runs (verification; slower failover). */
  checksumOnFailover?: boolean;
  /** Where this backup's metrics are served (--metrics), a reprotecting primary's too; stop() closes it. */
  metrics?: MetricsExporter | null;
  log: (line: string) => void;
}

export class BackupService {
  readonly backup: Backup;
  private listener: Listener | null = null;
  private control: ControlServer | null = null;
  private replica: SimReplica | null = null;
  private xenReplica: XenReplica | null = null;
  /** The lock on the replica disk this process made (no other backup truncates it). */
  private diskLock: HostLock | null = null;
  /** Refusals and dropped peers are logged once per change of reason, not per attempt. */
  private readonly peerLog: ChangeLog;
  private promoted: ProtectService | null = null;
  private readonly events: Array<Record<string, unknown>> = [];
  private readonly exposure: BackupExposure;
  /** Failovers of this process ('failover' events: the replica resumed), for status and metrics. */
  private failovers = 0;

  constructor(private readonly cfg: BackupConfig) {
    this.exposure = new BackupExposure(cfg.log);
    this.peerLog = new ChangeLog(cfg.log);
    this.backup = new Backup(realClock, {
      pageCountMax: cfg.pageCountMax, batchPagesMax: cfg.batchPagesMax, diskBufferBytesMax: cfg.diskBufferBytesMax,
      replicaFor: (h) => this.replicaFor(h), releaseReplica: (r) => this.releaseReplica(r),
    }, { event: (name, detail) => this.onEvent(name, detail), netExposure: (_epoch, value) => this.exposure.onRecord(value) });
    cfg.metrics?.watchBackup(() => this.metricsSample());
  }

  get port(): number { return this.listener?.port ?? this.cfg.port; }

  async start(): Promise<void> {
    loopDelay(); // starts measuring
    this.listener = await listenLinks(this.cfg.host, this.cfg.port, this.cfg.security,
      (link) => this.backup.attach(link), (why) => this.peerLog.say(why));
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
    this.replica?.diskFile?.close();
    this.diskLock?.release();
    await this.cfg.metrics?.close();
  }

  /** The domain as status names it: sim:<name> for a simulated one, or null before the first session. */
  private domainName(): string | null {
    return this.backup.domain ? (this.xenReplica ? this.backup.domain : `sim:${this.backup.domain}`) : null;
  }

  status(): Record<string, unknown> {
    return {
      role: 'backup', listen: `${this.cfg.host}:${this.port}`, state: this.backup.state, rss_bytes: process.memoryUsage.rss(), ...loopDelay(),
      domain: this.domainName(), failovers: this.failovers,
      xen: this.xenReplica?.stats ?? null, attached: this.backup.attached,
      committedEpoch: this.backup.committedEpoch, lastSessionStart: this.backup.lastSessionStart,
      ...this.backup.counters,
      resumed: this.backup.resumedFrom, guest: this.replica?.domain?.describe() ?? null,
      outputs: this.replica?.sink?.stats ?? null, events: this.events.slice(-10),
      disk: this.replica?.diskFile ? { path: this.replica.diskFile.path, sizeBytes: this.replica.diskFile.sizeBytes, ...this.replica.replicator?.stats() } : null,
      reprotecting: this.promoted?.status() ?? null,
    };
  }

  /** The figures of status() that the metrics show (dom0/service/metrics.ts). */
  private metricsSample(): BackupSample {
    const c = this.backup.counters;
    return {
      domain: this.domainName() ?? '', state: this.backup.state, committedEpoch: this.backup.committedEpoch,
      checkpoints: c.checkpoints, pages: c.pages, wireBytes: c.wireBytes, sessions: c.sessions,
      failovers: this.failovers, diskBytesApplied: c.diskBytesApplied,
    };
  }

  /**
   * The replica for an accepted HELLO (its fields already checked: the domain name is a
   * plain name, never a path). Its disk lives in the disk directory under a name made from
   * the kind and domain, opened without following links, and locked: a replica another
   * backup process holds is refused, never truncated.
   */
  private replicaFor(h: HelloInfo): SimReplica | XenReplica {
    if (h.kind === 'sim') checkSimGuestFits(h);
    const diskFile = h.diskBytes > 0 && !(h.kind === 'sim' && this.cfg.reuseDisk) ? this.replicaDiskFile(h) : null;
    try {
      if (h.kind === 'xen') return (this.xenReplica = xenReplicaFor(h, this.cfg.log, { diskFile }));
      return this.simReplicaFor(h, diskFile);
    } catch (e) {
      this.diskLock?.release();
      this.diskLock = null;
      throw e;
    }
  }

  /** Where a replica disk goes, locked for this process (ERR_LOCKED when another holds it). */
  private replicaDiskFile(h: HelloInfo): string {
    const dir = this.cfg.diskDir ?? runDir();
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const file = path.join(dir, `${h.kind}-${h.domain}.backup.disk`);
    assert(path.dirname(file) === path.normalize(dir) || path.dirname(file) === path.resolve(dir), `replica path ${file} is in ${dir}`);
    this.diskLock = HostLock.acquire(`${file}.lock`, `the replica disk of ${h.domain}`);
    return file;
  }

  /** The engine let go of a replica: free its memory, close its disk, drop its lock. */
  private releaseReplica(r: Replica): void {
    if (r === this.xenReplica) { this.xenReplica.close(); this.xenReplica = null; }
    if (r === this.replica) { this.replica.close(); this.replica = null; }
    this.diskLock?.release();
    this.diskLock = null;
  }

  private simReplicaFor(h: HelloInfo, diskFile: string | null): SimReplica {
    let disk: BlockFile | null = null;
    if (h.diskBytes > 0 && this.cfg.reuseDisk) {
      disk = BlockFile.open(this.cfg.reuseDisk);
      if (disk.sizeBytes !== h.diskBytes) {
        disk.close();
        throw new RemusError(ErrorCode.HANDSHAKE, `--reuse-disk ${this.cfg.reuseDisk} holds ${disk.sizeBytes} bytes; ${h.domain}'s disk has ${h.diskBytes}`);
      }
      this.replica = new SimReplica(h.domain, h.pageCount, disk, true, this.cfg.checksumOnFailover);
      return this.replica;
    }
    if (diskFile) disk = BlockFile.create(diskFile, h.diskBytes);
    try {
      this.replica = new SimReplica(h.domain, h.pageCount, disk, false, this.cfg.checksumOnFailover);
    } catch (e) {
      disk?.close();
      throw e;
    }
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
        heartbeatTimeoutMs: Number(req.heartbeatTimeoutMs ?? 2 * intervalMs + 100), batchPagesMax: BATCH_PAGES_MAX_DEFAULT, deviceStateMax: SIM_DEVICE_STATE_BYTES_MAX, verifyDisk: true,
        diskBufferBytesMax: this.cfg.diskBufferBytesMax,
      },
      memoryBytes: r.pageCount * 4096, workload: 'oltp', seed: 0, stepsPerSec: r.stepsPerSec, client: r.client,
      netBuffer: true, journal: null, diskBytes: r.disk?.sizeBytes ?? 0, diskBufferBytesMax: this.cfg.diskBufferBytesMax ?? DISK_BUFFER_BYTES_DEFAULT,
      readTracking: true, metrics: this.cfg.metrics ?? null, log: this.cfg.log,
    }, { domain: r.domain, gate: r.gate, sink: r.sink, disk: r.replicator, diskPath: r.diskFile?.path ?? null });
    this.promoted.start();
    this.cfg.log(`reprotecting ${r.name} → ${target.host}:${target.port}: ${r.replicator?.bitmap.bytes ?? 0} bytes of disk to copy`);
    return { ok: true, resyncBytes: r.replicator?.bitmap.bytes ?? 0, diskBytes: r.disk?.sizeBytes ?? 0 };
  }

  private onEvent(name: string, detail: Record<string, unknown>): void {
    this.events.push({ name, at: Date.now(), ...detail });
    if (this.events.length > 100) this.events.shift();
    if (name === 'session') this.exposure.onSession();
    if (name === 'failover') { // a resume that returned at once: the domain runs already
      this.failovers++;
      this.exposure.onFailover(Number(detail.epoch));
      if (detail.resuming !== true) this.exposure.onResumed();
    }
    if (name === 'resumed') {
      this.exposure.onResumed();
      // A Xen guest learns it is the failed-over copy (its agent starts database recovery).
      if (typeof detail.domid === 'number') announceFailover(detail.domid, Number(detail.epoch), this.cfg.log);
    }
    this.logEvent(name, detail);
  }

  private logEvent(name: string, detail: Record<string, unknown>): void {
    const log = this.cfg.log, d = (k: string): string => String(detail[k]);
    if (name === 'session') {
      this.peerLog.reset();
      const how = detail.kind === 'continued' ? `session ${d('reason')}` : `full copy (${d('reason')})`;
      log(`primary connected: ${d('domain')} (${d('pages')} pages): ${how}`);
    }
    if (name === 'session-replaced') {
      log(`the primary of ${d('domain')} reconnected on a new connection: the old one is dropped (no failover)`);
    }
    if (name === 'memory-verified') {
      log(`continued checkpoint ${d('epoch')}: memory digests equal the primary's (${d('regions')} regions)`);
    }
    if (name === 'failover') {
      const seq = detail.seq === undefined ? '' : `, seq ${d('seq')}`; // a Xen resume reports later ('resumed')
      log(`FAILOVER (${d('reason')}): resumed ${String(this.backup.domain)} from epoch ${d('epoch')}${seq}`);
    }
    if (name === 'resume-failed') log(`FAILOVER FAILED: the replica of epoch ${d('epoch')} did not resume: ${d('message')} (nothing runs here; waiting for a primary)`);
    if (name === 'no-checkpoint') log(`primary gone (${d('reason')}) before any checkpoint committed: nothing to resume`);
    if (name === 'protocol-error') this.peerLog.say(`refused or dropped a peer: ${d('message')} (no failover)`);
    if (name === 'internal-error') log(`BUG: ${d('message')} (the session was dropped; no failover; the backup goes on)`);
    if (name === 'peer-left') this.peerLog.say(`a peer left (${d('reason')}) outside a live session: no failover`);
    if (name === 'replica-replaced') log(`replacing the replica of ${d('from')} by one for ${d('to')} (no primary was attached)`);
    if (name === 'goodbye') log('primary ended protection (GOODBYE)');
  }
}

/** A simulated replica is RAM in this process: refuse at HELLO what this host or the arena cannot hold. */
function checkSimGuestFits(h: HelloInfo): void {
  checkSimGuestFitsHost(h.pageCount * 4096, `${h.domain}`, ErrorCode.HANDSHAKE);
}

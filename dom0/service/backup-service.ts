// backup-service: the `remusdb backup` process. It listens for primaries on the replication
// channel, keeps each protected domain's replica (one primary at a time), fails over on
// silence or a broken channel (or on `remusdb failover`), and then runs the domain here.
import { ErrorCode, RemusError } from '../errors';
import { Backup, type HelloInfo } from '../engine/backup';
import { realClock } from '../engine/clock';
import { driverForHello } from '../hypervisor/registry';
import type { DriverReplica, OpenedDomain } from '../hypervisor/driver';
import { listenLinks, parseHostPort, readPskFile, type Listener, type Security } from '../protocol/channel';
import { PARTITION_WARNING, ProtectService } from './protect-service';
import { etcdClaimer } from '../coordination/etcd-claimer';
import { ControlServer, runtimeDir as runDir, socketPath } from './control';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BackupExposure } from '../net/exposure-relay';
import type { Replica } from '../ports';
import { HostLock } from './host-lock';
import { domainLabel } from './kept-images';
import { loopDelay } from './loop-delay';
import { ChangeLog } from './change-log';
import { assert } from '../assert';
import { engineOptions } from './engine-options';
import { maxInFlightOf, netChoiceOf, netPlan, netPreflight, triggerOf, type NetChoice } from '../net/net-plan';
import { DEFAULT_REPLICATION_PORT, DISK_BUFFER_BYTES_DEFAULT, PAGE_BYTES } from '../limits';
import { DEFAULT_CACHE } from '../memory/cache-size';
import { requireFeature } from '../hypervisor/driver';
import type { BackupSample, MetricsExporter } from './metrics';

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
  /**
   * An agent's backup slot: the image of the domain this host already keeps (its old replica,
   * or the disk it ran the domain on), reused like reuseDisk when it exists; null: none.
   */
  reuseDiskFor?: (kind: string, domain: string) => string | null;
  /** Simulated replicas: CRC32C the image at failover, before the guest runs (verification; slower failover). */
  checksumOnFailover?: boolean;
  /** Where this backup's metrics are served (--metrics), a reprotecting primary's too; stop() closes it. */
  metrics?: MetricsExporter | null;
  /** stop() closes metrics (default true; false for an agent's slots, which share the agent's). */
  ownsMetrics?: boolean;
  /** --coordination: a takeover first claims the domain's key in etcd (null: the two-node rule). */
  coordination?: { endpoints: string[]; ttlSeconds: number } | null;
  log: (line: string) => void;
}

/** How a reprotection checkpoints: the interval (with intervalAuto: the longest), heartbeat, the disk's check. */
interface ReprotectChoices {
  intervalMs: number;
  intervalAuto?: boolean;
  heartbeatTimeoutMs?: number;
  diskScrub?: boolean;
}

export class BackupService {
  readonly backup: Backup;
  private listener: Listener | null = null;
  private control: ControlServer | null = null;
  /** The replica of the domain this backup holds (one at a time), made by its driver. */
  private replica: DriverReplica | null = null;
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
    this.backup = new Backup(
      realClock,
      {
        pageCountMax: cfg.pageCountMax,
        batchPagesMax: cfg.batchPagesMax,
        diskBufferBytesMax: cfg.diskBufferBytesMax,
        replicaFor: (h) => this.replicaFor(h),
        releaseReplica: (r) => this.releaseReplica(r),
        claimer: cfg.coordination
          ? etcdClaimer(cfg.coordination.endpoints, cfg.coordination.ttlSeconds, cfg.log)
          : undefined,
      },
      {
        event: (name, detail) => this.onEvent(name, detail),
        netExposure: (_epoch, value) => this.exposure.onRecord(value),
      },
    );
    cfg.metrics?.watchBackup(() => this.metricsSample());
  }

  get port(): number {
    return this.listener?.port ?? this.cfg.port;
  }

  async start(): Promise<void> {
    loopDelay(); // starts measuring
    if (!this.cfg.coordination) this.cfg.log(`WARNING: ${PARTITION_WARNING}`);
    this.listener = await listenLinks(
      this.cfg.host,
      this.cfg.port,
      this.cfg.security,
      (link) => this.backup.attach(link),
      (why) => this.peerLog.say(why),
    );
    this.control = new ControlServer(socketPath('backup', String(this.listener.port)), (req) => this.onControl(req));
  }

  async stop(): Promise<void> {
    await this.promoted?.stop();
    await this.backup.owned?.release();
    this.backup.close();
    this.listener?.close();
    this.control?.close();
    try {
      await this.replica?.stop();
    } finally {
      this.diskLock?.release();
    }
    if (this.cfg.ownsMetrics !== false) await this.cfg.metrics?.close();
  }

  /** The domain as status names it: sim:<name> for a simulated one, or null before the first session. */
  private domainName(): string | null {
    const d = this.backup.domain;
    return d === null ? null : domainLabel(this.replicaKind ?? '', d);
  }

  /** The HELLO kind of the replica held (or last held), for naming. */
  private replicaKind: string | null = null;

  status(): Record<string, unknown> {
    return {
      role: 'backup',
      listen: `${this.cfg.host}:${this.port}`,
      state: this.backup.state,
      rss_bytes: process.memoryUsage.rss(),
      ...loopDelay(),
      domain: this.domainName(),
      failovers: this.failovers,
      attached: this.backup.attached,
      committedEpoch: this.backup.committedEpoch,
      lastSessionStart: this.backup.lastSessionStart,
      ...this.backup.counters,
      resumed: this.backup.resumedFrom,
      xen: null,
      guest: null,
      outputs: null,
      disk: null,
      ...this.replica?.status(),
      events: this.events.slice(-10),
      reprotecting: this.promoted?.status() ?? null,
      coordination: this.cfg.coordination
        ? { mode: 'etcd', owner_key: this.backup.owned?.key ?? null }
        : { mode: 'none', warning: PARTITION_WARNING },
    };
  }

  /** The figures of status() that the metrics show (dom0/service/metrics.ts). */
  private metricsSample(): BackupSample {
    const c = this.backup.counters;
    return {
      domain: this.domainName() ?? '',
      state: this.backup.state,
      committedEpoch: this.backup.committedEpoch,
      checkpoints: c.checkpoints,
      pages: c.pages,
      wireBytes: c.wireBytes,
      sessions: c.sessions,
      failovers: this.failovers,
      diskBytesApplied: c.diskBytesApplied,
    };
  }

  /**
   * The replica for an accepted HELLO (its fields already checked: the domain name is a
   * plain name, never a path), made by the driver of its kind. Its disk lives in the disk
   * directory under a name made from the kind and domain, opened without following links,
   * and locked: a replica another backup process holds is refused, never truncated.
   */
  private replicaFor(h: HelloInfo): DriverReplica {
    const driver = driverForHello(h.kind);
    const reuse = this.cfg.reuseDisk ?? this.reusedImage(h);
    if (this.cfg.checksumOnFailover && driver.features.checksumOnFailover !== true) {
      this.peerLog.say(
        `--checksum-on-failover does not apply to ${driver.kind} replicas: ` +
          `${driver.features.checksumOnFailover.reason}`,
      );
    }
    const diskFile = h.diskBytes > 0 && !(reuse && driver.features.reuseDisk === true) ? this.replicaDiskFile(h) : null;
    try {
      this.replica = driver.replicaFor({
        hello: h,
        diskFile,
        reuseDisk: reuse,
        checksumOnFailover: this.cfg.checksumOnFailover === true,
        diskBufferBytesMax: this.cfg.diskBufferBytesMax ?? DISK_BUFFER_BYTES_DEFAULT,
        log: this.cfg.log,
      });
      this.replicaKind = h.kind;
      return this.replica;
    } catch (e) {
      this.diskLock?.release();
      this.diskLock = null;
      throw e;
    }
  }

  /** An agent slot's earlier copy of h's disk, locked for this process (null: none kept). */
  private reusedImage(h: HelloInfo): string | null {
    const file = h.diskBytes > 0 ? (this.cfg.reuseDiskFor?.(h.kind, h.domain) ?? null) : null;
    if (file === null) return null;
    this.diskLock = HostLock.acquire(`${file}.lock`, `the disk of ${h.domain}`);
    return file;
  }

  /** Where a replica disk goes, locked for this process (ERR_LOCKED when another holds it). */
  private replicaDiskFile(h: HelloInfo): string {
    const dir = this.cfg.diskDir ?? runDir();
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const file = path.join(dir, `${h.kind}-${h.domain}.backup.disk`);
    assert(
      path.dirname(file) === path.normalize(dir) || path.dirname(file) === path.resolve(dir),
      `replica path ${file} is in ${dir}`,
    );
    this.diskLock = HostLock.acquire(`${file}.lock`, `the replica disk of ${h.domain}`);
    return file;
  }

  /** The engine let go of a replica: free its memory, close its disk, drop its lock. */
  private releaseReplica(r: Replica): void {
    assert(r === this.replica, 'the engine releases the replica this service made');
    this.replica.close();
    this.replica = null;
    this.diskLock?.release();
    this.diskLock = null;
  }

  private onControl(req: Record<string, unknown>): Record<string, unknown> {
    if (req.cmd === 'status') return this.status();
    if (req.cmd === 'reprotect') return this.reprotect(req);
    if (req.cmd === 'failover') {
      if (
        req.domain &&
        this.backup.domain &&
        req.domain !== `sim:${this.backup.domain}` &&
        req.domain !== this.backup.domain
      ) {
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
    const security: Security =
      req.insecure === true ? { insecure: true } : { psk: readPskFile(String(req.pskFile ?? '')) };
    return this.reprotectTo(parseHostPort(String(req.backup ?? ''), DEFAULT_REPLICATION_PORT), security, {
      intervalMs: Number(req.intervalMs ?? 50),
      intervalAuto: req.intervalAuto === true,
      heartbeatTimeoutMs: req.heartbeatTimeoutMs === undefined ? undefined : Number(req.heartbeatTimeoutMs),
      diskScrub: req.diskScrub === true,
      net: netChoiceOf(req.net),
    });
  }

  /** The domain resumed here, protected again against target (`remusdb reprotect`, or an agent's choice). */
  reprotectTo(
    target: { host: string; port: number },
    security: Security,
    o: ReprotectChoices & { net?: NetChoice },
  ): Record<string, unknown> {
    const r = this.replica;
    if (this.backup.state !== 'failed-over' || !r || !this.replicaKind) {
      throw new RemusError(
        ErrorCode.NO_DOMAIN,
        'this backup has not failed over: there is nothing to reprotect (the primary still runs the domain)',
      );
    }
    if (this.promoted) return { ok: true, already: true, ...this.promoted.status() };
    const driver = driverForHello(this.replicaKind as HelloInfo['kind']);
    requireFeature(driver, 'reprotect');
    const choice = o.net ?? netChoiceOf(undefined);
    netPreflight(choice, driver);
    const opened = driver.adopt!(r, this.cfg.log);
    try {
      this.promoted = this.promote(opened, target, security, o, choice);
    } catch (e) {
      void opened.close();
      throw e;
    }
    this.promoted.start();
    const d = (opened.disk?.stats() ?? {}) as { resyncPendingBytes?: number };
    const sizeBytes = opened.disk?.sizeBytes ?? 0;
    this.cfg.log(
      `reprotecting ${r.name} → ${target.host}:${target.port}: ${d.resyncPendingBytes ?? 0} bytes of disk changed ` +
        'since the failover to copy (the whole disk if that backup keeps no copy of it)',
    );
    return { ok: true, resyncBytes: d.resyncPendingBytes ?? 0, diskBytes: sizeBytes };
  }

  /** The protect service of the adopted domain: its network buffer as chosen, the engine as protect's. */
  private promote(
    opened: OpenedDomain,
    target: { host: string; port: number },
    security: Security,
    o: ReprotectChoices,
    choice: NetChoice,
  ): ProtectService {
    const net = netPlan(choice, {
      driver: opened.driver,
      tag: opened.name,
      label: opened.label,
      domid: opened.domid,
      defaultInterfaces: () => opened.defaultInterfaces(),
    });
    const diskBufferBytesMax = this.cfg.diskBufferBytesMax ?? DISK_BUFFER_BYTES_DEFAULT;
    return new ProtectService({
      opened,
      backup: target,
      security,
      net,
      holdOutputs: true,
      journal: null,
      engine: engineOptions(opened.driver, this.replica!.pageCount, {
        intervalMs: o.intervalMs,
        intervalAuto: o.intervalAuto === true,
        compressor: 'zstd',
        cache: DEFAULT_CACHE,
        maxInFlight: maxInFlightOf(choice, net),
        heartbeatTimeoutMs: o.heartbeatTimeoutMs,
        diskBufferBytesMax,
        verifyDisk: true,
        diskScrub: o.diskScrub === true,
        trigger: triggerOf(choice, net), // with no network buffer the guest's own outputs signal
      }),
      metrics: this.cfg.metrics ?? null,
      ownsMetrics: false,
      ownership: this.backup.owned,
      log: this.cfg.log,
    });
  }

  /** Whether the domain resumed here is being protected again. */
  get reprotecting(): boolean {
    return this.promoted !== null;
  }

  /** A reprotection not yet protected goes on against another backup (an agent's new choice). */
  retarget(target: { host: string; port: number }): void {
    assert(this.promoted !== null, 'retarget a reprotection that runs');
    this.promoted.retarget(target);
  }

  /** What this service holds, for an agent's pool record: null before any primary came. */
  holding(): {
    domain: string;
    state: string;
    memoryBytes: number;
    diskBytes: number;
    /** Its reprotection has a session with its backup now (copying or protected). */
    connected: boolean;
  } | null {
    const name = this.domainName();
    if (name === null) return null;
    const pages = this.replica?.pageCount ?? 0;
    return {
      domain: name,
      state: this.backup.state,
      memoryBytes: pages * PAGE_BYTES,
      diskBytes: this.replica?.disk?.sizeBytes ?? 0,
      connected: this.promoted?.primary.attached === true,
    };
  }

  private onEvent(name: string, detail: Record<string, unknown>): void {
    this.events.push({ name, at: Date.now(), ...detail });
    if (this.events.length > 100) this.events.shift();
    if (name === 'session') this.exposure.onSession();
    if (name === 'failover') {
      // a resume that returned at once: the domain runs already
      this.failovers++;
      this.exposure.onFailover(Number(detail.epoch));
      if (detail.resuming !== true) this.exposure.onResumed();
    }
    if (name === 'resumed') {
      this.exposure.onResumed();
      this.replica?.afterResume?.(detail); // a Xen guest learns it is the failed-over copy
    }
    this.logEvent(name, detail);
  }

  private logEvent(name: string, detail: Record<string, unknown>): void {
    const log = this.cfg.log,
      d = (k: string): string => String(detail[k]);
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
    if (name === 'resume-failed')
      log(
        `FAILOVER FAILED: the replica of epoch ${d('epoch')} did not resume: ${d('message')} (nothing runs here; ` +
          `waiting for a primary)`,
      );
    if (name === 'no-checkpoint')
      log(`primary gone (${d('reason')}) before any checkpoint committed: nothing to resume`);
    if (name === 'protocol-error') this.peerLog.say(`refused or dropped a peer: ${d('message')} (no failover)`);
    if (name === 'internal-error')
      log(`BUG: ${d('message')} (the session was dropped; no failover; the backup goes on)`);
    if (name === 'peer-left') this.peerLog.say(`a peer left (${d('reason')}) outside a live session: no failover`);
    if (name === 'replica-replaced')
      log(`replacing the replica of ${d('from')} by one for ${d('to')} (no primary was attached)`);
    if (name === 'goodbye') log('primary ended protection (GOODBYE)');
    if (name === 'claiming')
      log(`primary lost (${d('reason')}): claiming ${d('domain')} in etcd before taking over (epoch ${d('epoch')})`);
    if (name === 'claim-cancelled') log(`takeover cancelled: ${d('reason')}`);
    if (name === 'claim-failed') log(`takeover given up: ${d('reason')} (the image is kept; waiting for a primary)`);
  }
}

// protect-service: the `remusdb protect` process. It runs the domain's checkpoint engine
// (Primary) against a backup reached over the replication channel, reconnecting with
// backoff when the backup is lost, answers `remusdb status` on its control socket and,
// on a terminal, shows live progress. A simulated domain lives inside this process; its
// outputs are held by the engine's gate, and with `net` so are the packets arriving on
// real interfaces (a service run next to the simulation, docs/netbuffer.md), in one step.
import * as fs from 'node:fs';
import { ErrorCode, RemusError } from '../errors';
import { realClock } from '../engine/clock';
import { OutputBuffer } from '../engine/output-buffer';
import { Primary, type PrimaryOptions } from '../engine/primary';
import type { Link } from '../ports';
import type { Workload } from '../hypervisor/sim/guest-program';
import { OutputSink } from '../hypervisor/sim/output-sink';
import { SimDomain, type SimOutput } from '../hypervisor/sim/sim-domain';
import { parseHostPort, type Security } from '../protocol/channel';
import { Reconnector } from './reconnector';
import { Rec, ackBody, heartbeatBody, jsonBody, parseCheckpointEnd } from '../protocol/records';
import { ControlServer, protectLockPath, runtimeDir as runDir, socketPath } from './control';
import { HostLock } from './host-lock';
import { checkSimGuestFitsHost } from '../hypervisor/sim/guest-size';
import { loopDelay } from './loop-delay';

import { BlockFile } from '../../blktap/block-file';
import { DiskReplicator } from '../../blktap/replicator';
import type { BlockGenerations } from '../../blktap/block-generations';
import type { JournalSink } from '../hypervisor/sim/disk-journal';
import { READ_TRACKING_BLOCKS_MAX } from '../hypervisor/sim/sim-replica';
import * as path from 'node:path';
import { type DomainNet, GateSet, openDomainNet, type DomainNetOptions } from '../net/domain-net';
import { exportExposure } from '../net/exposure-relay';
import type { MetricsExporter, PrimarySample, PrimaryWatch } from './metrics';

/** How often a running pre-copy's progress is logged. */
const PRECOPY_PROGRESS_MS = 5000;

export interface ProtectConfig {
  name: string;
  backup: { host: string; port: number } | 'blackhole';
  security: Security;
  engine: PrimaryOptions;
  memoryBytes: number;
  workload: Workload;
  tracePath?: string;
  seed: number;
  stepsPerSec: number;
  client: string | null;
  netBuffer: boolean;
  /** Real interfaces buffered with the domain's own outputs (--net-buffer with --vif). */
  net?: DomainNetOptions | null;
  journal: string | null;
  /** sim: size of the guest's disk (0: none); its image lives in the run directory. */
  diskBytes: number;
  /** What the backup may buffer of unacknowledged disk writes. */
  diskBufferBytesMax: number;
  /** Send pages that equal a block the guest read as references to that block. */
  readTracking: boolean;
  /**
   * Where this primary's metrics are served (--metrics). stop() closes it, except for an
   * adopted domain: then it is the exporter of the backup process that reprotects.
   */
  metrics?: MetricsExporter | null;
  log: (line: string) => void;
}

export class ProtectService {
  readonly domain: SimDomain;
  readonly primary: Primary;
  private readonly gate: OutputBuffer<SimOutput>;
  private readonly sink: OutputSink;
  private readonly control: ControlServer;
  private stopped = false;
  private readonly reconnector: Reconnector | null;
  private readonly events: Array<Record<string, unknown>> = [];
  readonly disk: DiskReplicator | null = null;
  private diskSource: BlockFile | null = null;
  readonly diskPath: string | null = null;
  private readonly net: DomainNet | null;
  private readonly metrics: PrimaryWatch | null = null;
  /** Times the backup was lost ('backup-lost' events), for status and metrics. */
  private backupLosses = 0;

  /** One protect per domain per host; none for an adopted domain (its backup process owns it). */
  private readonly lock: HostLock | null;

  /** adopted: a domain this process already runs (a backup that failed over, now reprotecting). */
  constructor(private readonly cfg: ProtectConfig, private readonly adopted: AdoptedDomain | null = null) {
    if (!adopted) checkSimGuestFitsHost(cfg.memoryBytes, `sim:${cfg.name}`); // before the lock and the disk
    this.lock = adopted ? null : HostLock.acquire(protectLockPath('sim', cfg.name), `protection of sim:${cfg.name}`);
    try {
      if (adopted) {
        this.sink = adopted.sink;
        this.gate = adopted.gate;
        this.disk = adopted.disk;
        this.diskPath = adopted.disk ? adopted.diskPath : null;
        this.domain = adopted.domain;
      } else {
        this.sink = new OutputSink(cfg.client ? parseHostPort(cfg.client, 0) : null);
        this.gate = new OutputBuffer<SimOutput>((o) => this.sink.deliver(o));
        if (cfg.diskBytes > 0 && (cfg.workload === 'oltp' || cfg.workload === 'scan')) {
          fs.mkdirSync(runDir(), { recursive: true });
          this.diskPath = path.join(runDir(), `sim-${cfg.name}.primary.disk`);
          this.diskSource = BlockFile.create(this.diskPath, cfg.diskBytes);
          this.disk = new DiskReplicator(this.diskSource, realClock, {
            unackedBytesMax: cfg.diskBufferBytesMax, inSync: false, readTrackingBlocksMax: cfg.readTracking ? READ_TRACKING_BLOCKS_MAX : 0,
          });
        }
        this.domain = SimDomain.boot(cfg.memoryBytes, cfg.workload, cfg.seed, {
          name: cfg.name, stepsPerSec: cfg.stepsPerSec, onOutput: (o) => this.gate.push(o),
          deviceInfo: cfg.client ? { client: cfg.client } : {},
          diskPath: this.diskPath ?? undefined, disk: this.disk ? diskSink(this.disk) : undefined,
        }, cfg.tracePath);
      }
      if (this.domain.dirtyMode !== 'uffd-wp') cfg.log(`warning: kernel dirty tracking unavailable (${this.domain.dirtyReason}); hashing pages instead (slower)`);
      this.net = cfg.net && !adopted ? this.openNet(cfg.net) : null;
      const gate = !cfg.netBuffer ? new PassThroughGate(this.gate) : this.net ? new GateSet([this.gate, this.net.gate]) : this.gate;
      this.primary = new Primary(this.domain, gate, realClock, cfg.engine, {
        checkpoint: (epoch, info) => this.journal({ epoch, ...info }),
        event: (name, detail) => this.onEvent(name, detail),
        paused: (ms, full) => this.metrics?.pause(ms, full),
        netExposure: (full) => (this.net?.exposure.length ? exportExposure(this.net.exposure, full) : null),
      }, this.disk);
      for (const t of this.net?.exposure ?? []) t.onExposed = () => this.primary.flushExposure();
      const b = cfg.backup;
      this.reconnector = b === 'blackhole' ? null : new Reconnector({ backup: b, security: cfg.security, log: cfg.log,
        attached: () => this.primary.attached, attach: (link) => this.primary.attach(link) });
      this.control = new ControlServer(socketPath('primary', cfg.name), (req) => this.onControl(req));
      if (cfg.metrics) {
        const watch = this.metrics = cfg.metrics.watchPrimary(`sim:${cfg.name}`, () => this.metricsSample());
        this.gate.onHoldMs = (ms) => watch.hold(ms);
      }
    } catch (e) {
      this.lock?.release();
      throw e;
    }
  }

  start(): void {
    loopDelay(); // starts measuring
    this.progressTimer = setInterval(() => this.showPrecopy(), PRECOPY_PROGRESS_MS).unref();
    this.primary.start();
    if (this.reconnector) this.reconnector.connect(); else this.primary.attach(new BlackholeLink());
  }

  /** A long first pre-copy round says where it is: sent, remaining, rate, time left. */
  private showPrecopy(): void {
    const pc = this.primary.stats().precopy;
    if (!pc || pc.elapsedMs < PRECOPY_PROGRESS_MS) return;
    const mib = (pages: number): string => ((pages * 4096) / 2 ** 20).toFixed(0);
    this.cfg.log(`pre-copy round ${pc.round}: ${mib(pc.sentPages)} MiB sent, ${mib(pc.roundRemainingPages)} MiB left in this round ` +
      `at ${pc.mbPerSec.toFixed(0)} MB/s (about ${(pc.etaMs / 1000).toFixed(0)} s)`);
  }

  private progressTimer: NodeJS.Timeout | null = null;

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.progressTimer) clearInterval(this.progressTimer);
    this.reconnector?.stop();
    this.primary.stop();
    this.control.close();
    this.sink.close();
    this.net?.close();
    this.metrics?.detach();
    this.gate.onHoldMs = null;
    if (this.adopted) return; // the domain (and the exporter) belong to the process that adopted it
    await this.cfg.metrics?.close();
    try {
      await this.domain.destroy();
      this.diskSource?.close();
    } finally {
      this.lock?.release();
    }
  }

  status(): Record<string, unknown> {
    return {
      role: 'primary', domain: `sim:${this.cfg.name}`, ...this.primary.stats(), rss_bytes: process.memoryUsage.rss(), ...loopDelay(),
      guest: this.domain.describe(),
      outputs: { ...this.gate.stats, holdMsP99: this.gate.holdMsP99, ...this.sink.stats }, interval_ms: this.cfg.engine.intervalMs,
      compressor: this.cfg.engine.compressor, net_buffer: this.cfg.netBuffer, net: this.net?.describe() ?? null, events: this.events.slice(-10),
      disk: this.disk ? { path: this.diskPath, sizeBytes: this.disk.sizeBytes, ...this.disk.stats() } : null,
      backupLosses: this.backupLosses,
    };
  }

  /** The figures of status() that the metrics show (dom0/service/metrics.ts). */
  private metricsSample(): PrimarySample {
    const d = this.disk?.stats();
    return { stats: this.primary.stats(), backupLosses: this.backupLosses,
      disk: d ? { forwardedBytes: d.forwardedBytes, resyncPendingBytes: d.resyncPendingBytes } : null };
  }

  /** The rules/qdiscs go in last: if they fail, the domain booted here is stopped again. */
  private openNet(o: DomainNetOptions): DomainNet {
    try {
      return openDomainNet(o);
    } catch (e) {
      if (!this.adopted) { void this.domain.destroy(); this.diskSource?.close(); }
      throw e;
    }
  }

  private onControl(req: Record<string, unknown>): Record<string, unknown> {
    if (req.cmd === 'status') return this.status();
    throw new RemusError(ErrorCode.CONTROL, `unknown control command ${JSON.stringify(req.cmd)}`);
  }

  private onEvent(name: string, detail: Record<string, unknown>): void {
    this.events.push({ name, at: Date.now(), ...detail });
    if (this.events.length > 100) this.events.shift();
    this.journal({ event: name, ...detail });
    if (name === 'disk-sync') this.cfg.log(`backup ${String(detail.backup)} answered: copying ${this.disk!.bitmap.bytes} bytes of disk it may lack, then checkpoints start`);
    if (name === 'protected') {
      const how = detail.continued ? 'continued' : 'full copy';
      this.cfg.log(`protected: ${this.cfg.name} → ${String(detail.backup)} (${how} as epoch ${detail.epoch})`);
    }
    if (name === 'session-start') {
      const how = detail.kind === 'continued' ? 'session continues' : 'session copies all memory';
      this.cfg.log(`${how}: ${String(detail.reason)}`);
    }
    if (name === 'continued') {
      this.cfg.log(`continued session verified at epoch ${String(detail.epoch)}: ${String(detail.pages)} pages ` +
        `written since the last acknowledged checkpoint, ${String(detail.bytes)} bytes sent`);
    }
    if (name === 'precopy') this.cfg.log(`pre-copy of ${this.cfg.name} to ${String(detail.backup)}: ${String(detail.pages)} pages, guest running unprotected until it ends`);
    if (name === 'precopy-round') this.cfg.log(precopyLine(detail));
    if (name === 'protected') this.reconnector?.established();
    if (name === 'backup-lost') {
      this.backupLosses++;
      this.reconnector?.lost(`backup lost (${String(detail.reason)}); ${this.cfg.name} keeps running UNPROTECTED, reconnecting`);
    }
    if (name === 'fenced') this.cfg.log(`the backup took over from epoch ${String(detail.epoch)}: ${this.cfg.name} is stopped here (fenced)`);
  }

  /** One JSON line per checkpoint and event; a write that fails is said once and the journal stops. */
  private journal(entry: Record<string, unknown>): void {
    if (!this.cfg.journal || this.journalFailed) return;
    try {
      fs.appendFileSync(this.cfg.journal, `${JSON.stringify({ t: Date.now(), ...entry })}\n`);
    } catch (e) {
      this.journalFailed = true;
      this.cfg.log(`warning: the journal ${this.cfg.journal} cannot be written (${(e as Error).message}); protection goes on without it`);
    }
  }

  private journalFailed = false;
}

/** What a reprotecting backup hands over: the domain it runs since the failover, and its parts. */
export interface AdoptedDomain {
  domain: SimDomain;
  gate: OutputBuffer<SimOutput>;
  sink: OutputSink;
  disk: DiskReplicator | null;
  diskPath: string | null;
}

function diskSink(r: DiskReplicator): JournalSink & { generations: BlockGenerations } {
  return {
    generations: r.generations,
    write: (off, data, durable) => r.onWrite(off, data, durable),
    read: (block, crc, gen) => r.onBlockRead(block, crc, gen),
  };
}

/** --no-net-buffer (with --unsafe): outputs are released at once, as with xl remus -n. */
class PassThroughGate {
  constructor(inner: OutputBuffer<SimOutput>) { inner.setPassThrough(true); }
  get held(): number { return 0; }
  barrier(): void { /* nothing held */ }
  release(): void { /* nothing held */ }
  setPassThrough(): void { /* always */ }
  discard(): void { /* nothing held */ }
}

/** --blackhole (xl remus -b): a backup that acknowledges every checkpoint and keeps nothing. */
class BlackholeLink implements Link {
  readonly remote = 'blackhole';
  readonly backlogBytes = 0;
  private cb: (type: number, body: Buffer) => void = () => {};
  private closed = false;
  // Like a live backup, it says it is alive even while a long full copy streams in.
  private readonly heartbeat = setInterval(() => { if (!this.closed) this.cb(Rec.HEARTBEAT, heartbeatBody(0, Date.now())); }, 10);
  send(type: number, body: Uint8Array): void {
    if (this.closed) return;
    const reply = (t: number, b: Buffer): void => { setImmediate(() => { if (!this.closed) this.cb(t, b); }); };
    if (type === Rec.HELLO) reply(Rec.HELLO_ACK, jsonBody({ accepted: true, backup: 'blackhole' }));
    if (type === Rec.CHECKPOINT_END) reply(Rec.ACK, ackBody(parseCheckpointEnd(Buffer.from(body)).epoch));
  }
  close(): void { this.closed = true; clearInterval(this.heartbeat); }
  onRecord(cb: (type: number, body: Buffer) => void): void { this.cb = cb; }
  onClose(): void { /* a blackhole never closes by itself */ }
}

/** One line per pre-copy round: what was sent, how fast, what the guest dirtied meanwhile. */
export function precopyLine(d: Record<string, unknown>): string {
  const n = (k: string): number => Number(d[k]);
  return `pre-copy round ${n('round')}: ${((n('sentPages') * 4096) / 2 ** 20).toFixed(0)} MiB sent in ${(n('elapsedMs') / 1000).toFixed(1)} s ` +
    `(${n('mbPerSec').toFixed(0)} MB/s), ${n('dirtyPagesLast')} pages dirtied meanwhile` +
    (d.final ? ': the first checkpoint copies them with the guest paused' : '');
}

// protect-service: the `remusdb protect` process, for every kind of domain. It runs the
// checkpoint engine (Primary) over a domain a driver opened (dom0/hypervisor/driver.ts)
// against a backup reached over the replication channel — or a blackhole — reconnecting
// with backoff when the backup is lost, answers `remusdb status` on its control socket (and
// `samples`: its recent pauses and output holds, timed, for `remusdb bench multi`) and
// logs progress. Outputs are held per epoch by the domain's own buffer (a simulated guest's)
// and by the network buffer on its interfaces (dom0/net/domain-net.ts), joined into one gate
// so the engine's barrier reaches both in the same step; -n holds nothing (xl remus -n).
// When the backup takes over, this copy is fenced and the service ends (`ended`).
import * as fs from 'node:fs';
import { ErrorCode, RemusError } from '../errors';
import { realClock } from '../engine/clock';
import { Primary, type PrimaryOptions } from '../engine/primary';
import { TimedWindow } from '../engine/stats';
import type { OutputGate, Ownership } from '../ports';
import { OwnedGate } from '../coordination/owned-gate';
import type { OpenedDomain } from '../hypervisor/driver';
import type { Security } from '../protocol/channel';
import { type DomainNet, GateSet, openDomainNet, type DomainNetOptions } from '../net/domain-net';
import { exportExposure } from '../net/exposure-relay';
import { NoGate } from '../net/net-device';
import { MAX_PAUSE_SHARE_DEFAULT, PAUSE_SHARE_WINDOW_MS } from '../limits';
import { BlackholeLink } from './blackhole-link';
import { ControlServer, socketPath } from './control';
import { loopDelay } from './loop-delay';
import type { MetricsExporter, PrimarySample, PrimaryWatch } from './metrics';
import { protectLogLine } from './protect-log';
import { Reconnector } from './reconnector';

/** How often a running pre-copy's progress is logged. */
const PRECOPY_PROGRESS_MS = 5000;
/** Said at start and in status when protect runs without --coordination. */
export const PARTITION_WARNING =
  'no --coordination: a partition between primary and backup is not covered (both copies may run: split brain)';
/** Engine events kept for `status`. */
const EVENTS_KEPT = 100;

export interface ProtectConfig {
  /** The domain, opened by its driver; the service owns it from construction on. */
  opened: OpenedDomain;
  backup: { host: string; port: number } | 'blackhole';
  security: Security;
  engine: PrimaryOptions;
  /** The network buffer to install on the domain's interfaces, or null. */
  net: DomainNetOptions | null;
  /** false (-n, with --unsafe): every output is released at once. */
  holdOutputs: boolean;
  /** Append one JSON line per checkpoint and event here. */
  journal: string | null;
  /** Where this primary's metrics are served (--metrics). */
  metrics: MetricsExporter | null;
  /** stop() closes the exporter (false when it belongs to a reprotecting backup process). */
  ownsMetrics: boolean;
  /**
   * The domain's ownership in etcd (--coordination), claimed before: outputs leave only while
   * it is provable (OwnedGate), its loss fences this copy, stop() releases it. Null: the
   * two-node rule (a partition can leave two copies running; said at start and in status).
   */
  ownership?: Ownership | null;
  log: (line: string) => void;
}

export class ProtectService {
  readonly primary: Primary;
  readonly opened: OpenedDomain;
  private readonly net: DomainNet | null;
  private readonly control: ControlServer;
  private readonly reconnector: Reconnector | null;
  private readonly metrics: PrimaryWatch | null;
  private readonly events: Array<Record<string, unknown>> = [];
  private progressTimer: NodeJS.Timeout | null = null;
  private stopped = false;
  private journalFailed = false;
  /** Times the backup was lost ('backup-lost' events), for status and metrics. */
  private backupLosses = 0;
  private endedWith: (why: string) => void = () => {};
  /** The engine's gate under ownership (--coordination), or null. */
  private readonly owned: OwnedGate | null = null;
  /** Checkpoint pauses (a session's full copy left out) and output holds, timed: `samples` on the control socket. */
  private readonly recent = { pauses: new TimedWindow(), holds: new TimedWindow() };
  /** Resolves when protection ended by itself: the backup took over and fenced this copy. */
  readonly ended = new Promise<string>((resolve) => {
    this.endedWith = resolve;
  });

  /** As the constructor; if it fails, what the driver opened is closed before the error goes on. */
  static async create(cfg: ProtectConfig): Promise<ProtectService> {
    try {
      return new ProtectService(cfg);
    } catch (e) {
      await cfg.opened.close();
      throw e;
    }
  }

  /** Opens the network buffer and the engine (closing the buffer again if the rest fails). */
  constructor(private readonly cfg: ProtectConfig) {
    this.opened = cfg.opened;
    const net = (this.net = cfg.net ? openDomainNet(cfg.net) : null); // last to go in, first to go out
    try {
      const own = cfg.ownership ?? null;
      this.owned = own ? new OwnedGate(this.engineGate(), own, realClock) : null;
      this.primary = new Primary(
        cfg.opened.domain,
        this.owned ?? this.engineGate(),
        realClock,
        cfg.engine,
        {
          checkpoint: (epoch, info) => this.journal({ epoch, ...info }),
          event: (name, detail) => this.onEvent(name, detail),
          paused: (ms, full) => {
            if (!full) this.recent.pauses.add(Date.now(), ms);
            this.metrics?.pause(ms, full);
          },
          netExposure: (full) => (net?.exposure.length ? exportExposure(net.exposure, full) : null),
        },
        cfg.opened.disk,
      );
      for (const t of net?.exposure ?? []) t.onExposed = () => this.primary.flushExposure();
      if (this.owned) this.owned.onProvable = (provable) => this.primary.reportOwnership(provable);
      own?.onChange((e) => {
        if (e.kind !== 'lost') return;
        cfg.log(`OWNERSHIP LOST (${e.reason}): ${cfg.opened.label} stops here; a backup may run it now`);
        this.primary.ownershipLost(e.reason);
      });
      const b = cfg.backup;
      this.reconnector =
        b === 'blackhole'
          ? null
          : new Reconnector({
              backup: b,
              security: cfg.security,
              log: cfg.log,
              attached: () => this.primary.attached,
              attach: (link) => this.primary.attach(link),
            });
      this.control = new ControlServer(socketPath('primary', cfg.opened.name), (req) => this.onControl(req));
      this.metrics = cfg.metrics?.watchPrimary(cfg.opened.label, () => this.metricsSample()) ?? null;
      // Hold times: a simulated guest's own outputs, and the network buffer's packets (nfqueue).
      const heardHold = (ms: number): void => {
        this.recent.holds.add(Date.now(), ms);
        this.metrics?.hold(ms);
      };
      if (cfg.opened.outputs) cfg.opened.outputs.onHoldMs = heardHold;
      if (net) net.onHoldMs = heardHold;
    } catch (e) {
      net?.close();
      throw e;
    }
  }

  /** The domain's own outputs and the network buffer as one gate; with -n nothing is held. */
  private engineGate(): OutputGate {
    const own = this.cfg.opened.outputs?.gate ?? null;
    if (!this.cfg.holdOutputs) {
      own?.setPassThrough(true);
      return new NoGate();
    }
    const gates = [own, this.net?.gate ?? null].filter((g): g is OutputGate => g !== null);
    if (gates.length === 0) return new NoGate();
    return gates.length === 1 ? gates[0] : new GateSet(gates);
  }

  /** The network buffer installed, as planned (null: none). */
  get netPlan(): DomainNetOptions | null {
    return this.cfg.net;
  }

  start(): void {
    loopDelay(); // starts measuring
    this.progressTimer = setInterval(() => this.showPrecopy(), PRECOPY_PROGRESS_MS).unref();
    const crashed = this.opened.crashedRunPid;
    if (crashed !== null && this.cfg.holdOutputs) {
      this.cfg.log(
        `the last protect of ${this.opened.label} (pid ${crashed}) ended without stopping while the domain lived on: ` +
          'its outputs are held until the backup answers (it may have taken over), for at most 3 heartbeat timeouts',
      );
    }
    this.primary.start({ holdOutputs: crashed !== null && this.cfg.holdOutputs });
    if (this.reconnector) this.reconnector.connect();
    else this.primary.attach(new BlackholeLink());
  }

  /** Reaches for another backup while no session runs (a pool agent's new choice); refused for a blackhole. */
  retarget(backup: { host: string; port: number }): void {
    if (!this.reconnector) throw new RemusError(ErrorCode.BAD_ARGUMENT, 'a blackhole protection has no backup to move');
    this.cfg.log(`${this.opened.label}: the backup is now ${backup.host}:${backup.port}`);
    this.reconnector.retarget(backup);
  }

  /** Ends protection (GOODBYE). The network buffer goes before the domain is released. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.progressTimer) clearInterval(this.progressTimer);
    try {
      this.reconnector?.stop();
      this.primary.stop();
      this.control.close();
    } finally {
      this.net?.close();
      if (this.net) this.cfg.log(`protection of ${this.opened.label} stopped: its network buffer is removed`);
      this.metrics?.detach();
      this.owned?.close();
      await this.cfg.ownership?.release();
      if (this.opened.outputs) this.opened.outputs.onHoldMs = null;
      if (this.net) this.net.onHoldMs = null;
      if (this.cfg.ownsMetrics) await this.cfg.metrics?.close();
    }
    await this.opened.close();
  }

  status(): Record<string, unknown> {
    const stats = this.primary.stats();
    return {
      role: 'primary',
      domain: this.opened.label,
      kind: this.opened.driver.kind,
      ...stats,
      backup_target: this.reconnector ? this.reconnector.target : 'blackhole',
      backup_connects: this.reconnector
        ? { ...this.reconnector.attempts, next_delay_ms: this.reconnector.nextDelayMs }
        : null,
      rss_bytes: process.memoryUsage.rss(),
      ...loopDelay(),
      interval_ms: stats.intervalMs,
      interval: this.cfg.engine.intervalAuto ? 'auto' : 'fixed',
      max_loss_window_ms: this.cfg.engine.intervalMs,
      max_pause_share: this.cfg.engine.maxPauseShare ?? MAX_PAUSE_SHARE_DEFAULT,
      pause_share_window_ms: this.cfg.engine.pauseShareWindowMs ?? PAUSE_SHARE_WINDOW_MS,
      compressor: this.cfg.engine.compressor,
      net_buffer: this.cfg.holdOutputs,
      net: this.net?.describe() ?? null,
      guest: null,
      outputs: null,
      disk: null,
      ...this.opened.status(),
      events: this.events.slice(-10),
      backupLosses: this.backupLosses,
      coordination: this.coordinationStatus(),
    };
  }

  /** Who may release outputs: the owner key and how long ownership is proven, or the two-node warning. */
  private coordinationStatus(): Record<string, unknown> {
    const own = this.cfg.ownership;
    if (!own) return { mode: 'none', warning: PARTITION_WARNING };
    const left = own.validUntilMs - realClock.now();
    return {
      mode: 'etcd',
      key: own.key,
      owned: left > 0,
      owned_for_ms: Math.max(0, Math.round(left)),
      outputs_waiting_for_ownership: this.owned?.waitingForOwnership ?? false,
    };
  }

  /** The figures of status() that the metrics show (dom0/service/metrics.ts). */
  private metricsSample(): PrimarySample {
    const d = (this.opened.disk?.stats() ?? null) as { forwardedBytes?: unknown; resyncPendingBytes?: unknown } | null;
    const disk =
      d && typeof d.forwardedBytes === 'number' && typeof d.resyncPendingBytes === 'number'
        ? { forwardedBytes: d.forwardedBytes, resyncPendingBytes: d.resyncPendingBytes }
        : null;
    const own = this.cfg.ownership;
    const validForMs = own ? Math.max(0, own.validUntilMs - realClock.now()) : 0;
    const ownership = own ? { provable: validForMs > 0, validForMs } : null;
    const connects = this.reconnector ? { ...this.reconnector.attempts } : null;
    return { stats: this.primary.stats(), backupLosses: this.backupLosses, disk, ownership, connects };
  }

  /** A long first pre-copy round says where it is: sent, remaining, rate, time left. */
  private showPrecopy(): void {
    const pc = this.primary.stats().precopy;
    if (!pc || pc.elapsedMs < PRECOPY_PROGRESS_MS) return;
    const mib = (pages: number): string => ((pages * 4096) / 2 ** 20).toFixed(0);
    this.cfg.log(
      `pre-copy round ${pc.round}: ${mib(pc.sentPages)} MiB sent, ${mib(pc.roundRemainingPages)} MiB left ` +
        `in this round at ${pc.mbPerSec.toFixed(0)} MB/s (about ${(pc.etaMs / 1000).toFixed(0)} s)`,
    );
  }

  private onControl(req: Record<string, unknown>): Record<string, unknown> {
    if (req.cmd === 'status') return this.status();
    if (req.cmd === 'samples') return this.samples(req);
    throw new RemusError(ErrorCode.CONTROL, `unknown control command ${JSON.stringify(req.cmd)}`);
  }

  /**
   * The pauses and output holds (ms) taken in [from, to), times in ms since the epoch (to: now
   * when left out). A benchmark reads its measured window in pieces: each piece is complete
   * unless the window kept (4096 samples each) was outrun.
   */
  private samples(req: Record<string, unknown>): Record<string, unknown> {
    const from = req.from,
      to = req.to ?? Number.POSITIVE_INFINITY;
    if (typeof from !== 'number' || !Number.isFinite(from) || typeof to !== 'number' || Number.isNaN(to)) {
      throw new RemusError(ErrorCode.CONTROL, 'samples: from (and to) are times in ms since the epoch');
    }
    return { pauses: this.recent.pauses.between(from, to), holds: this.recent.holds.between(from, to) };
  }

  private onEvent(name: string, detail: Record<string, unknown>): void {
    this.events.push({ name, at: Date.now(), ...detail });
    if (this.events.length > EVENTS_KEPT) this.events.shift();
    this.journal({ event: name, ...detail });
    const line = protectLogLine(this.opened.name, name, detail, this.opened.disk);
    if (line) this.cfg.log(line);
    if (name === 'protected') this.reconnector?.established();
    if (name === 'backup-lost') {
      this.backupLosses++;
      this.reconnector?.lost(
        `backup lost (${String(detail.reason)}); ${this.opened.name} keeps running UNPROTECTED, ` + 'reconnecting',
      );
    }
    if (name === 'fenced') {
      this.endedWith(
        `protection of ${this.opened.label} ended: it runs on the backup now (run \`remusdb reprotect\` ` +
          'there to protect it again)',
      );
    }
  }

  /** One JSON line per checkpoint and event; a write that fails is said once and the journal stops. */
  private journal(entry: Record<string, unknown>): void {
    if (!this.cfg.journal || this.journalFailed) return;
    try {
      fs.appendFileSync(this.cfg.journal, `${JSON.stringify({ t: Date.now(), ...entry })}\n`);
    } catch (e) {
      this.journalFailed = true;
      this.cfg.log(
        `warning: the journal ${this.cfg.journal} cannot be written (${(e as Error).message}); ` +
          'protection goes on without it',
      );
    }
  }
}

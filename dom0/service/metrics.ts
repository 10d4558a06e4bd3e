// metrics: the Prometheus exporter of a `protect` or `backup` process (`--metrics addr:port`).
//
// Why: `remusdb status` answers on a local socket, once, for a person. Operators also need
// the same figures over time and from another host, to graph them and to alert on them — a
// pause that creeps up, an acknowledgement that ages, a failover. Prometheus is what such
// monitoring speaks, so the process serves GET /metrics in its text format, through
// prom-client (the maintained Node.js client library; docs/operations.md, "Metrics").
//
// How: nearly every value is read when Prometheus scrapes, from the sources `status --json`
// reads (Primary.stats(), the disk replicator's stats, Backup.counters, the process's RSS
// and event-loop delay): the services register a sample function, one snapshot is taken per
// scrape, and prom-client's collect() callbacks turn it into series. The exporter keeps no
// copy of a counter that could drift from the engine's. Two distributions that `status` only
// summarises as p50/p99 of a window are histograms fed as they happen, from the engine's
// hooks: checkpoint pauses (PrimaryHooks.paused) and output hold times (OutputBuffer.onHoldMs).
// Every series has the labels domain (as `status` names it: sim:<name>, a Xen domain's name)
// and role (primary, backup). One process may hold both roles: a backup that failed over and
// reprotects runs a primary inside it (dom0/service/backup-service.ts); its series come with
// role="primary", the process-wide ones (RSS, loop delay) with the labels of the first source.
// An agent (several backup services in one process) shows the slots that hold a domain.
// The HTTP server is unref'd: it never keeps a process alive that has nothing else to run.
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { assert } from '../assert';
import { ErrorCode, RemusError } from '../errors';
import type { PrimaryStats } from '../engine/stats';
import { loopDelay } from './loop-delay';
import { PAGE_BYTES } from '../limits';

export const METRICS_PATH = '/metrics';
/** Checkpoint pauses: 1 ms to 1 s in steps of about 2 (seconds). */
export const PAUSE_BUCKETS_S = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1];
/** Output holds: at least an interval plus an acknowledgement, up to the hold after a loss (seconds). */
export const HOLD_BUCKETS_S = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10];
/** Scrapers served at once; more wait in the kernel's backlog. */
export const METRICS_CONNECTIONS_MAX = 16;
/** A scrape that has not sent its request after this long is dropped (ms). */
export const METRICS_REQUEST_TIMEOUT_MS = 10_000;

const LABELS = ['domain', 'role'] as const;
type Label = (typeof LABELS)[number];
type Role = 'primary' | 'backup';
type Labels = { domain: string; role: Role };

/** What a primary (protect) shows at one moment: its `status` figures. */
export interface PrimarySample {
  stats: PrimaryStats;
  /** The replicated disk, when the domain has one. */
  disk: { forwardedBytes: number; resyncPendingBytes: number } | null;
  /** Times the backup was lost (the engine's 'backup-lost' events). */
  backupLosses: number;
  /** Connections to the backup tried, and those that failed (reconnector.ts); null: none are made (--blackhole). */
  connects?: { started: number; failed: number } | null;
  /** --coordination: whether ownership is provable now, and for how long more (ms); null without it. */
  ownership?: { provable: boolean; validForMs: number } | null;
}

/** What a backup shows at one moment: its `status` figures. */
export interface BackupSample {
  /** The domain it holds a replica of ('' before the first session). */
  domain: string;
  state: string;
  committedEpoch: number | null;
  checkpoints: number;
  pages: number;
  wireBytes: number;
  sessions: number;
  failovers: number;
  diskBytesApplied: number;
}

/** A primary registered with the exporter: feeds its histograms; detach() removes its series. */
export interface PrimaryWatch {
  /** A checkpoint paused the guest ms milliseconds; full: the first of a session (a gauge, not the histogram). */
  pause(ms: number, full: boolean): void;
  /** A released epoch's oldest output waited ms milliseconds. */
  hold(ms: number): void;
  detach(): void;
}

interface Snapshot {
  primaries: Array<{ labels: Labels; s: PrimarySample }>;
  backups: Array<{ labels: Labels; s: BackupSample }>;
  process: Labels | null;
}

type Read<S> = () => Array<{ labels: Labels; s: S }>;

export class MetricsExporter {
  readonly registry = new Registry();
  private readonly primaries = new Map<() => PrimarySample, Labels>();
  private readonly backups = new Set<() => BackupSample>();
  /** Whose labels the process-wide series carry: the first source registered. */
  private owner: (() => Labels) | null = null;
  private snap: Snapshot | null = null;
  /** Scrapes run one after another: each reads its own snapshot. */
  private scraping: Promise<unknown> = Promise.resolve();
  private closing: Promise<void> | null = null;
  private readonly pauses: Histogram<Label>;
  private readonly holds: Histogram<Label>;

  private constructor(
    private readonly server: http.Server,
    readonly host: string,
    readonly port: number,
  ) {
    this.pauses = new Histogram({
      name: 'remusdb_checkpoint_pause_seconds',
      labelNames: LABELS,
      help: 'Time the guest was paused per checkpoint, the first of each session excluded',
      buckets: PAUSE_BUCKETS_S,
      registers: [this.registry],
    });
    this.holds = new Histogram({
      name: 'remusdb_output_hold_seconds',
      labelNames: LABELS,
      help: 'Per released epoch, how long its oldest output was held',
      buckets: HOLD_BUCKETS_S,
      registers: [this.registry],
    });
    this.registerState();
    this.registerPrimary();
    this.registerBackup();
    this.registerProcess();
    server.on('request', (req, res) => {
      void this.serve(req, res);
    });
  }

  /**
   * Serves /metrics on host:port (port 0: any free port, see .port). A port in use, an
   * address not on this host or one not permitted is ERR_LISTEN, with the system's error as
   * the cause.
   */
  static listen(host: string, port: number): Promise<MetricsExporter> {
    assert(Number.isInteger(port) && port >= 0 && port <= 65535, `metrics port ${port}`);
    const server = http.createServer();
    server.maxConnections = METRICS_CONNECTIONS_MAX;
    server.requestTimeout = METRICS_REQUEST_TIMEOUT_MS;
    return new Promise((resolve, reject) => {
      server.once('error', (e: NodeJS.ErrnoException) =>
        reject(
          new RemusError(
            ErrorCode.LISTEN,
            `cannot serve metrics on ${host}:${port}: ${listenProblem(e)}`,
            { host, port, errno: e.code },
            { cause: e },
          ),
        ),
      );
      server.listen(port, host, () => {
        server.unref();
        resolve(new MetricsExporter(server, host, (server.address() as AddressInfo).port));
      });
    });
  }

  /**
   * Shows a primary's figures from now on (labels domain, role="primary"). sample runs at
   * scrape time only; the watch's pause() and hold() run per checkpoint and cost a bucket
   * update each.
   */
  watchPrimary(domain: string, sample: () => PrimarySample): PrimaryWatch {
    const labels: Labels = { domain, role: 'primary' };
    this.primaries.set(sample, labels);
    this.owner ??= () => labels;
    return {
      pause: (ms, full) => {
        if (!full) this.pauses.observe(labels, ms / 1000);
      },
      hold: (ms) => this.holds.observe(labels, ms / 1000),
      detach: () => {
        this.primaries.delete(sample);
        this.pauses.remove(labels);
        this.holds.remove(labels);
      },
    };
  }

  /** Shows a backup's figures from now on (labels role="backup"). */
  watchBackup(sample: () => BackupSample): void {
    this.backups.add(sample);
    this.owner ??= () => ({ domain: sample().domain, role: 'backup' });
  }

  /** The text Prometheus scrapes: every source sampled once. */
  scrape(): Promise<string> {
    const text = this.scraping.then(async () => {
      this.snap = this.take();
      try {
        return await this.registry.metrics();
      } finally {
        this.snap = null;
      }
    });
    this.scraping = text.catch(() => undefined);
    return text;
  }

  /** Stops serving (idempotent); open scrapes are cut. */
  close(): Promise<void> {
    this.closing ??= new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
    return this.closing;
  }

  private async serve(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = (req.url ?? '').split('?')[0];
    if (url !== METRICS_PATH || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res
        .writeHead(url === METRICS_PATH ? 405 : 404, { 'content-type': 'text/plain' })
        .end(`remusdb serves Prometheus metrics at GET ${METRICS_PATH}\n`);
      return;
    }
    try {
      const body = await this.scrape();
      res.writeHead(200, { 'content-type': this.registry.contentType }).end(req.method === 'HEAD' ? undefined : body);
    } catch (e) {
      res.writeHead(500, { 'content-type': 'text/plain' }).end(`${(e as Error).message}\n`);
    }
  }

  private take(): Snapshot {
    const primaries = [...this.primaries].map(([f, labels]) => ({ labels, s: f() }));
    const all = [...this.backups].map((f) => {
      const s = f();
      return { labels: { domain: s.domain, role: 'backup' as const }, s };
    });
    // An agent's free slots hold no domain: their series would share one label set. A single backup shows its own.
    const backups = all.length > 1 ? all.filter((b) => b.s.domain !== '') : all;
    return { primaries, backups, process: this.owner?.() ?? null };
  }

  /** The snapshot of the scrape under way (one is taken for a registry read outside scrape()). */
  private current(): Snapshot {
    return this.snap ?? this.take();
  }

  // ---- the series -------------------------------------------------------------------------

  private registerPrimary(): void {
    const p: Read<PrimarySample> = () => this.current().primaries;
    const counter = (name: string, help: string, v: (s: PrimarySample) => number): void =>
      this.counter(name, help, p, v);
    const gauge = (name: string, help: string, v: (s: PrimarySample) => number | null): void =>
      this.gauge(name, help, p, v);
    counter(
      'remusdb_checkpoints_total',
      'Checkpoints taken (primary) or committed (backup)',
      (s) => s.stats.checkpoints,
    );
    gauge(
      'remusdb_first_checkpoint_pause_seconds',
      "Pause of the last session's first checkpoint (the stop-and-copy that ends the pre-copy)",
      (s) => (s.stats.fullPauseMs > 0 ? s.stats.fullPauseMs / 1000 : null),
    );
    counter(
      'remusdb_page_bytes_total',
      'Guest page bytes captured (primary) or received (backup), before encoding',
      (s) => s.stats.rawBytes,
    );
    counter(
      'remusdb_wire_bytes_total',
      'Bytes of page batches and disk references on the replication channel',
      (s) => s.stats.wireBytes,
    );
    gauge(
      'remusdb_outputs_held',
      'Outputs held until the checkpoint that precedes them is acknowledged',
      (s) => s.stats.outputsHeld,
    );
    gauge(
      'remusdb_last_ack_age_seconds',
      'Time since the backup last acknowledged a checkpoint (absent: never)',
      (s) => (s.stats.lastAckAgeMs >= 0 ? s.stats.lastAckAgeMs / 1000 : null),
    );
    gauge('remusdb_acked_epoch', 'Last checkpoint the backup acknowledged', (s) => s.stats.ackedEpoch);
    gauge(
      'remusdb_pause_share_ratio',
      "The guest's paused share of the last pause share window (protect --max-pause-share bounds it)",
      (s) => s.stats.pauseShare,
    );
    gauge(
      'remusdb_checkpoint_interval_seconds',
      'The interval the next checkpoint is timed by (protect --interval; with auto, its current choice)',
      (s) => s.stats.intervalMs / 1000,
    );
    counter(
      'remusdb_early_checkpoints_total',
      'Checkpoints a held output started before the interval (protect --trigger output)',
      (s) => s.stats.earlyCheckpoints,
    );
    counter(
      'remusdb_sessions_total',
      'Replication sessions (each starts with a full copy of the guest)',
      (s) => s.stats.sessions,
    );
    counter(
      'remusdb_backup_lost_total',
      'Times the backup was lost (closed, silent, or refused a record)',
      (s) => s.backupLosses,
    );
    counter(
      'remusdb_backup_connect_attempts_total',
      'Connections to the backup tried (the first, and each retry after a failure or a lost backup)',
      (s) => s.connects?.started ?? 0,
    );
    counter(
      'remusdb_backup_connect_failures_total',
      'Connections to the backup that failed before a link (unreachable, refused, TLS)',
      (s) => s.connects?.failed ?? 0,
    );
    counter(
      'remusdb_disk_forwarded_bytes_total',
      'Guest disk writes forwarded to the backup',
      (s) => s.disk?.forwardedBytes ?? 0,
    );
    gauge(
      'remusdb_disk_resync_pending_bytes',
      'Disk bytes the backup may lack, still to copy',
      (s) => s.disk?.resyncPendingBytes ?? null,
    );
    gauge(
      'remusdb_ownership_provable',
      'Whether this primary can prove it owns the domain in etcd (1/0; absent without --coordination)',
      (s) => (s.ownership ? Number(s.ownership.provable) : null),
    );
    gauge(
      'remusdb_ownership_valid_seconds',
      'How much longer ownership is proven without another renewal (absent without --coordination)',
      (s) => (s.ownership ? s.ownership.validForMs / 1000 : null),
    );
    this.registerPrecopy(gauge);
    this.stateGauge(p, (s) => s.stats.state);
  }

  /** The live pre-copy of a session's first checkpoint; absent when none runs. */
  private registerPrecopy(gauge: (name: string, help: string, v: (s: PrimarySample) => number | null) => void): void {
    gauge('remusdb_precopy_round', 'Pre-copy round under way', (s) => s.stats.precopy?.round ?? null);
    gauge('remusdb_precopy_sent_bytes', 'Bytes the pre-copy has sent (a page sent in two rounds counts twice)', (s) =>
      s.stats.precopy ? s.stats.precopy.sentPages * PAGE_BYTES : null,
    );
    gauge('remusdb_precopy_round_remaining_bytes', 'Bytes left to send in this pre-copy round', (s) =>
      s.stats.precopy ? s.stats.precopy.roundRemainingPages * PAGE_BYTES : null,
    );
    gauge('remusdb_precopy_rate_bytes_per_second', 'Pre-copy rate so far', (s) =>
      s.stats.precopy ? s.stats.precopy.mbPerSec * 1e6 : null,
    );
    gauge('remusdb_precopy_round_eta_seconds', 'Time left in this pre-copy round at the rate so far', (s) =>
      s.stats.precopy && s.stats.precopy.etaMs >= 0 ? s.stats.precopy.etaMs / 1000 : null,
    );
  }

  private registerBackup(): void {
    const b: Read<BackupSample> = () => this.current().backups;
    // The families the primary registered (same names, role="backup"), and the backup's own.
    this.extend('remusdb_checkpoints_total', b, (s) => s.checkpoints);
    this.extend('remusdb_page_bytes_total', b, (s) => s.pages * PAGE_BYTES);
    this.extend('remusdb_wire_bytes_total', b, (s) => s.wireBytes);
    this.extend('remusdb_sessions_total', b, (s) => s.sessions);
    this.counter(
      'remusdb_failovers_total',
      'Failovers: the replica resumed from its last committed checkpoint',
      b,
      (s) => s.failovers,
    );
    this.counter(
      'remusdb_disk_applied_bytes_total',
      'Disk writes applied to the replica disk',
      b,
      (s) => s.diskBytesApplied,
    );
    this.gauge(
      'remusdb_committed_epoch',
      'Last checkpoint committed to the replica (absent: none of this session)',
      b,
      (s) => s.committedEpoch,
    );
    this.stateGauge(b, (s) => s.state);
  }

  private registerProcess(): void {
    const me: Read<null> = () => {
      const l = this.current().process;
      return l ? [{ labels: l, s: null }] : [];
    };
    this.gauge('remusdb_process_resident_memory_bytes', 'Resident set size of this process', me, () =>
      process.memoryUsage.rss(),
    );
    this.gauge(
      'remusdb_event_loop_delay_max_seconds',
      'Longest the event loop was kept from running since start',
      me,
      () => loopDelay().loop_delay_ms_max / 1000,
    );
    this.gauge(
      'remusdb_event_loop_delay_p99_seconds',
      "99th percentile of the event loop's delay since start",
      me,
      () => loopDelay().loop_delay_ms_p99 / 1000,
    );
    this.gauge(
      'remusdb_event_loop_delay_own_max_seconds',
      'Longest the event loop was kept from running, without the time its thread waited for a CPU',
      me,
      () => loopDelay().loop_delay_ms_max_own / 1000,
    );
  }

  /** Readers of series families by name: a family two roles share has one reader per role. */
  private readonly readers = new Map<string, Array<(set: (l: Labels, v: number) => void) => void>>();

  private counter<S>(name: string, help: string, read: Read<S>, value: (s: S) => number): void {
    const readers = this.readersOf(name, read, value);
    const c: Counter<Label> = new Counter({
      name,
      help,
      labelNames: LABELS,
      registers: [this.registry],
      collect: () => {
        c.reset();
        for (const r of readers) r((l, v) => c.inc(l, v));
      },
    });
  }

  private gauge<S>(name: string, help: string, read: Read<S>, value: (s: S) => number | null): void {
    const readers = this.readersOf(name, read, value);
    const g: Gauge<Label> = new Gauge({
      name,
      help,
      labelNames: LABELS,
      registers: [this.registry],
      collect: () => {
        g.reset();
        for (const r of readers) r((l, v) => g.set(l, v));
      },
    });
  }

  /** The same family, read for another role's sources too. */
  private extend<S>(name: string, read: Read<S>, value: (s: S) => number | null): void {
    assert(this.readers.has(name), `metric family ${name} is registered before it is extended`);
    this.readers.get(name)!.push(reader(read, value));
  }

  private readersOf<S>(
    name: string,
    read: Read<S>,
    value: (s: S) => number | null,
  ): Array<(set: (l: Labels, v: number) => void) => void> {
    assert(!this.readers.has(name), `metric family ${name} registered twice`);
    const list = [reader(read, value)];
    this.readers.set(name, list);
    return list;
  }

  /** remusdb_state{state=...} 1: one series per source, for the state its engine is in now. */
  private registerState(): void {
    const g: Gauge<Label | 'state'> = new Gauge({
      name: 'remusdb_state',
      labelNames: [...LABELS, 'state'],
      help:
        "The engine's state, as in status (primary: connecting, syncing, precopy, protected, holding, " +
        'unprotected, fenced; backup: waiting, receiving, failed-over): 1 for the current one',
      registers: [this.registry],
      collect: () => {
        g.reset();
        for (const r of this.stateReaders) r((l) => g.set(l, 1));
      },
    });
  }

  private stateGauge<S>(read: Read<S>, state: (s: S) => string): void {
    this.stateReaders.push((set) => {
      for (const { labels, s } of read()) set({ ...labels, state: state(s) });
    });
  }

  private readonly stateReaders: Array<(set: (l: Labels & { state: string }) => void) => void> = [];
}

function reader<S>(read: Read<S>, value: (s: S) => number | null): (set: (l: Labels, v: number) => void) => void {
  return (set) => {
    for (const { labels, s } of read()) {
      const v = value(s);
      if (v !== null && Number.isFinite(v)) set(labels, v);
    }
  };
}

/** The reason a listen failed, in words an operator acts on. */
function listenProblem(e: NodeJS.ErrnoException): string {
  if (e.code === 'EADDRINUSE') return 'the port is in use (another process listens there)';
  if (e.code === 'EADDRNOTAVAIL') return "the address is not one of this host's";
  if (e.code === 'EACCES') return 'not permitted (a port under 1024 needs root)';
  return e.message;
}

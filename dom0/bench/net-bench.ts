// net-bench: `remusdb bench net` — PostgreSQL 15 throughput behind the guest network
// buffer, the experiment of RemusDB's Figure 5.13. Three network namespaces (guest ── vif
// ─ bridge in "dom0" ─ client, loopback-range addresses) are created and removed by the
// bench (root). PostgreSQL serves from the guest namespace, pgbench (TPC-B-like, -n) runs
// in the client namespace, and the guest's egress goes through the NFQUEUE gate, whose
// barriers and releases come from a real checkpoint engine (a Primary protecting a small
// simulated domain, an in-process Backup; net-engine.ts). Modes per checkpoint interval:
//   none       no buffering (measured once per round, the baseline)
//   remus      every packet waits for its checkpoint
//   cp_dscp    commit protection by DSCP marks (needs a patched PostgreSQL: --pg-bin)
//   cp_pgwire  commit protection by parsing the PostgreSQL protocol (no guest change)
//   pg_sync_rep  no buffering, and PostgreSQL's own synchronous replication to a streaming
//              standby in a fourth namespace: what a user would pick instead of remusdb
// Each point is the median of `runs` runs; rounds interleave modes to spread noise, each round
// rotated by one mode, and every point starts from vacuumed tables (resetPgbenchTables). --trigger
// output (the default, as protect's) also starts a checkpoint whenever the buffer holds a
// protected packet, within --max-pause-share; pause_share is the guest's paused time over
// each pgbench run (the engine's own pause measurements).
import type { Trigger } from '../engine/pacing';
import { ErrorCode, RemusError } from '../errors';
import * as path from 'node:path';
import { addTestbedHost, createTestbed, destroyTestbed, type Testbed } from '../net/netns-testbed';
import {
  type CommitProtection,
  type NetBuffer,
  openNetBuffer,
  PGWIRE_BATCH_MAX,
  PGWIRE_COPY_BYTES,
} from '../net/net-device';
import { setupNfqueue } from '../net/nfqueue-buffer';
import { loadAddon } from '../native';
import { EngineRig } from './net-engine';
import {
  findPostgres,
  initCluster,
  initPgbench,
  type PgbenchScript,
  type PgServer,
  pinGuestAndClient,
  resetPgbenchTables,
  runPgbench,
  setSynchronousStandby,
  startServer,
  startStandby,
} from './net-pg';
import { tpsPlot, writeFigure } from './net-svg';

export const NET_MODES = [
  'none',
  'remus',
  'cp_dscp',
  'cp_dscp_kernel',
  'cp_pgwire',
  'cp_pgwire_kernel',
  'pg_sync_rep',
] as const;
/** Modes without checkpoint-paced buffering: measured once per round (at the first interval). */
const UNBUFFERED: readonly NetMode[] = ['none', 'pg_sync_rep'];
/** Modes that need the patched PostgreSQL (it marks commit acknowledgements DSCP 59). */
const NEEDS_PATCHED: readonly NetMode[] = ['cp_dscp', 'cp_dscp_kernel'];
export type NetMode = (typeof NET_MODES)[number];
type PerMode<T> = Record<NetMode, T | null>;

export interface NetBenchOptions {
  seconds: number;
  runs: number;
  intervalsMs: number[];
  scale: number;
  clients: number;
  threads: number;
  script: PgbenchScript;
  /** Directory of a PostgreSQL 15 built with the commit protection patch (enables cp_dscp). */
  patchedBin?: string;
  svg?: string;
  /** Also measure DIAG_MODES at the first interval. */
  diagnostic?: boolean;
  /** dom0's own CPUs (engine, net buffer); PostgreSQL and pgbench get the others. */
  dom0Cpus?: number[];
  /** What starts a checkpoint besides the interval (protect --trigger). */
  trigger: Trigger;
  /** protect --max-pause-share. */
  maxPauseShare: number;
  /** protect --interval auto: each interval of intervalsMs is then the longest it may choose. */
  intervalAuto?: boolean;
  log: (line: string) => void;
}

export interface NetBenchResult {
  intervals_ms: number[];
  tps: PerMode<number[]>;
  /** pgbench's average latency (ms); and the median and 99th percentile of its per-transaction log. */
  latency_ms: PerMode<number[]>;
  latency_p50_ms: PerMode<number[]>;
  latency_p99_ms: PerMode<number[]>;
  /** Share of the guest's packets that waited for a checkpoint. */
  held_pct: PerMode<number[]>;
  /**
   * dom0 CPU per packet the guest sent while protected (µs): this process's user + system time
   * (engine, net buffer; pgbench and PostgreSQL run in other processes) plus, for the
   * *_kernel modes, the kernel's time in the BPF program (BPF_ENABLE_STATS), divided by the
   * guest's packets. null for the modes without a buffer.
   */
  dom0_cpu_us_per_packet: PerMode<number[]>;
  /**
   * The net buffer's own time per guest packet (µs): handing queued packets to the ledger and
   * its verdicts, plus for the *_kernel modes the BPF program's runs and reading its exposure
   * ring. The kernel's NFQUEUE work (copying each packet to this process) is not counted, so
   * the userspace modes' figure is a floor.
   */
  net_buffer_us_per_packet: PerMode<number[]>;
  /** The guest's paused share of each run's time (0..1): what the checkpoints cost it. */
  pause_share: PerMode<number[]>;
  /** The interval the timer was at when each run ended (ms): with interval_auto, what it chose. */
  interval_chosen_ms: PerMode<number[]>;
  interval_auto: boolean;
  runs: number;
  seconds: number;
  scale: number;
  clients: number;
  threads: number;
  script: PgbenchScript;
  pg_version: string;
  notes: string[];
  /** --diagnostic: TPS per DIAG_MODES at intervals_ms[0] (medians). */
  diagnostic?: Record<string, number>;
}

const PREFIX = 'rdbnb';
const QUEUE = 70;
const SUBNET = '127.60.0.0/24';

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
};

/** Why the benchmark cannot run here (null: it can). */
export function whyNoNetBench(): string | null {
  if (process.getuid?.() !== 0) return 'needs root (network namespaces, iptables, NFQUEUE)';
  try {
    if (!loadAddon().parts.nfqueue) return 'addon built without libnetfilter-queue-dev';
  } catch (e) {
    return (e as Error).message;
  }
  const pg = findPostgres();
  return typeof pg === 'string' ? pg : null;
}

interface Point {
  tps: number;
  latencyMs: number;
  latencyP50Ms: number;
  latencyP99Ms: number;
  heldPct: number;
  cpuUsPerPacket: number;
  netUsPerPacket: number;
  /** netUsPerPacket's parts (µs per packet): the program's runs, the exposure ring's reading, the queue's batches. */
  netParts: { bpf: number; ring: number; queue: number; bpfRunsPerPacket: number };
  pauseShare: number;
  /** The timer's interval at the end of the run (ms; with --interval-auto its choice). */
  intervalMs: number;
  /** Checkpoints per second, and their mean pause (ms): what the pause share is made of. */
  perSec: number;
  pauseMs: number;
}

/**
 * Diagnostics (--diagnostic): the queue's own cost, every packet released at once, with the
 * 128-byte copy of remus/dscp and the whole-segment copy of pgwire (same interval).
 */
export const DIAG_MODES = ['nfq_release_128', 'nfq_release_64k'] as const;
type DiagMode = (typeof DIAG_MODES)[number];

function openGate(bed: Testbed, mode: NetMode | DiagMode): NetBuffer {
  const base = { domain: 'netbench', match: { physdevIn: bed.vif }, netns: bed.dom0, queueNum: QUEUE } as const;
  if (mode === 'nfq_release_128' || mode === 'nfq_release_64k') {
    const dev = setupNfqueue({
      ...base,
      classify: () => 'release',
      copyBytes: mode === 'nfq_release_128' ? 128 : PGWIRE_COPY_BYTES,
      batchMax: mode === 'nfq_release_128' ? 1024 : PGWIRE_BATCH_MAX,
    });
    return {
      gate: dev.gate,
      nfqueue: dev.gate,
      pgwire: null,
      kernel: null,
      exposure: null,
      describe: () => ({}),
      close: () => dev.teardown(),
    };
  }
  return openNetBuffer({
    ...base,
    driver: mode === 'none' || mode === 'pg_sync_rep' ? 'none' : 'nfqueue',
    commitProtection: mode === 'none' || mode === 'pg_sync_rep' ? 'off' : PROTECTION[mode],
    dscpInKernel: mode === 'cp_dscp_kernel',
    pgwireInKernel: mode === 'cp_pgwire_kernel',
    kernelRunStats: mode === 'cp_pgwire_kernel' || mode === 'cp_dscp_kernel',
  });
}

const PROTECTION: Record<Exclude<NetMode, 'none' | 'pg_sync_rep'>, CommitProtection> = {
  remus: 'off',
  cp_dscp: 'dscp',
  cp_dscp_kernel: 'dscp',
  cp_pgwire: 'pgwire',
  cp_pgwire_kernel: 'pgwire',
};

async function measure(
  bed: Testbed,
  rig: EngineRig,
  pgbench: string,
  mode: NetMode | DiagMode,
  intervalMs: number,
  o: NetBenchOptions,
): Promise<Point> {
  const nb = openGate(bed, mode);
  try {
    const engine = await rig.protect(nb.gate, intervalMs, {
      trigger: o.trigger,
      maxPauseShare: o.maxPauseShare,
      intervalAuto: o.intervalAuto,
    });
    try {
      await withTimeout(engine.protectedAt, 60_000, 'the first checkpoint was not acknowledged');
      const net0 = sampleNet(nb);
      const paused0 = engine.pausedMs(),
        taken0 = engine.checkpoints(),
        t0 = performance.now();
      const r = await runPgbench(pgbench, bed.client, bed.guestIp4, {
        clients: o.clients,
        threads: o.threads,
        seconds: o.seconds,
        script: o.script,
      });
      const net1 = sampleNet(nb);
      const seen = net1.packets - net0.packets,
        held = net1.held - net0.held;
      const cpuUs = net1.cpuUs - net0.cpuUs + (net1.bpfNs - net0.bpfNs) / 1000;
      const ms = performance.now() - t0,
        paused = engine.pausedMs() - paused0,
        taken = engine.checkpoints() - taken0;
      const heldPct = seen ? (100 * held) / seen : 0;
      const perSec = (1000 * taken) / ms,
        pauseMs = taken ? paused / taken : 0;
      const intervalMs = Number(engine.stats().intervalMs);
      const cpuUsPerPacket = seen ? cpuUs / seen : 0;
      const netUsPerPacket = seen ? (net1.netNs - net0.netNs) / 1000 / seen : 0;
      const per = (a: number, b: number): number => (seen ? (b - a) / 1000 / seen : 0);
      const netParts = {
        bpf: per(net0.bpfNs, net1.bpfNs),
        ring: per(net0.drainNs, net1.drainNs),
        queue: per(net0.ingestNs, net1.ingestNs),
        bpfRunsPerPacket: seen ? (net1.bpfRuns - net0.bpfRuns) / seen : 0,
      };
      return {
        tps: r.tps,
        latencyMs: r.latencyMs,
        latencyP50Ms: r.latencyP50Ms,
        latencyP99Ms: r.latencyP99Ms,
        heldPct,
        cpuUsPerPacket,
        netUsPerPacket,
        netParts,
        pauseShare: paused / ms,
        intervalMs,
        perSec,
        pauseMs,
      };
    } finally {
      engine.stop();
    }
  } finally {
    nb.gate.setPassThrough(true); // let what is still held go before the queue closes
    nb.close();
  }
}

/**
 * Runs measure with a streaming standby of the guest's server (pg_sync_rep): made fresh by
 * pg_basebackup in a fourth namespace, on dom0's CPUs when the bench pins them (it stands for
 * another host), synchronous while measure runs; removed after, so no other mode pays for it.
 */
async function withStandby(
  bed: Testbed,
  pg: { bin: string; pgbench: string },
  o: NetBenchOptions,
  measure: () => Promise<void>,
): Promise<void> {
  const host = addTestbedHostOnce(bed);
  const psql = path.join(path.dirname(pg.pgbench), 'psql');
  const standby = startStandby(pg.bin, host.ns, host.ip4, bed.guestIp4, o.dom0Cpus?.join(',') ?? null);
  try {
    await setSynchronousStandby(psql, bed.client, bed.guestIp4, true);
    await measure();
  } finally {
    await setSynchronousStandby(psql, bed.client, bed.guestIp4, false).catch(() => {});
    standby.stop();
  }
}

const standbyHosts = new WeakMap<Testbed, { ns: string; ip4: string }>();
function addTestbedHostOnce(bed: Testbed): { ns: string; ip4: string } {
  let h = standbyHosts.get(bed);
  if (!h) standbyHosts.set(bed, (h = addTestbedHost(bed)));
  return h;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    t = setTimeout(() => reject(new RemusError(ErrorCode.PEER_GONE, what)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(t));
}

/**
 * The guest's IP packets so far while protected, how many waited (the kernel's counts when it
 * classified), this process's CPU time and the BPF program's run time.
 */
function sampleNet(nb: NetBuffer): NetSample {
  const cpu = process.cpuUsage();
  const cpuUs = cpu.user + cpu.system;
  const ingestNs = nb.nfqueue?.ingestNs ?? 0;
  if (nb.kernel) {
    const k = nb.kernel.stats();
    const run = nb.kernel.runStats();
    const drainNs = nb.kernel.drainNs;
    const netNs = run.runTimeNs + drainNs + ingestNs;
    const packets = k.packets - k.notIp;
    const held = k.held + k.otherHeld;
    return { packets, held, cpuUs, bpfNs: run.runTimeNs, bpfRuns: run.runCount, drainNs, ingestNs, netNs };
  }
  const l = nb.nfqueue?.ledger.stats;
  const packets = l ? l.received - l.passedThrough : 0;
  const held = l ? packets - l.releasedAtOnce - l.droppedOverLimit : 0;
  return { packets, held, cpuUs, bpfNs: 0, bpfRuns: 0, drainNs: 0, ingestNs, netNs: ingestNs };
}

/**
 * Counters of the buffer. netNs: the time its own work took — the ledger's batches (rules,
 * verdicts), and for a kernel classifier its program's runs and the exposure ring's reading;
 * the kernel's queueing and copying to this process are not in it (so the userspace path's
 * figure is a floor).
 */
interface NetSample {
  packets: number;
  held: number;
  cpuUs: number;
  bpfNs: number;
  /** The program's runs (each packet it saw, any interface it is attached to). */
  bpfRuns: number;
  /** Reading the kernel classifier's exposure ring, and the queue's batches (this thread's CPU, ns). */
  drainNs: number;
  ingestNs: number;
  netNs: number;
}

export async function benchNet(o: NetBenchOptions): Promise<NetBenchResult> {
  const why = whyNoNetBench();
  if (why) throw new RemusError(ErrorCode.BAD_ARGUMENT, `bench net cannot run here: ${why}`);
  const stock = findPostgres() as { bin: string; pgbench: string };
  const patched = o.patchedBin ? findPostgres(o.patchedBin) : null;
  if (typeof patched === 'string') throw new RemusError(ErrorCode.BAD_ARGUMENT, `--pg-bin: ${patched}`);
  const bpf = loadAddon().parts.bpf === true;
  const modes = NET_MODES.filter((m) => (!NEEDS_PATCHED.includes(m) || patched) && (m !== 'cp_pgwire_kernel' || bpf));
  const samples = new Map<string, Point[]>();
  const notes: string[] = [
    `trigger ${o.trigger}, max pause share ${o.maxPauseShare}` +
      (o.intervalAuto ? ', interval auto (each interval listed is its loss window)' : ''),
  ];
  if (!patched)
    notes.push(
      'cp_dscp, cp_dscp_kernel: no patched PostgreSQL given (--pg-bin or REMUSDB_PG_PATCHED_BIN): not measured',
    );
  if (!bpf) notes.push('cp_pgwire_kernel: the addon was built without libbpf-dev and clang: not measured');
  if (o.dom0Cpus) pinGuestAndClient(o.dom0Cpus);
  if (o.dom0Cpus)
    notes.push(`dom0 (engine, net buffer) on CPU ${o.dom0Cpus.join(',')}; PostgreSQL and pgbench on the others`);
  const bed = createTestbed(PREFIX);
  let server: PgServer | null = null;
  let rig: EngineRig | null = null;
  try {
    initCluster(stock.bin, SUBNET);
    server = startServer(stock.bin, bed.guest, bed.guestIp4);
    o.log(`bench net: pgbench -i -s ${o.scale} ...`);
    initPgbench(stock.pgbench, bed.client, bed.guestIp4, o.scale);
    const engines = (rig = new EngineRig(16 * 2 ** 20, 200));
    const point = async (mode: NetMode | DiagMode, intervalMs: number, round: number): Promise<void> => {
      let p: Point;
      resetPgbenchTables(stock.bin, bed.client, bed.guestIp4);
      try {
        p = await measure(bed, engines, stock.pgbench, mode, intervalMs, o);
      } catch (e) {
        o.log(`round ${round} ${mode} ${intervalMs} ms failed (${(e as Error).message}); once more`);
        notes.push(`${mode} ${intervalMs} ms round ${round}: retried after: ${(e as Error).message}`);
        p = await measure(bed, engines, stock.pgbench, mode, intervalMs, o);
      }
      const key = `${mode}/${intervalMs}`;
      samples.set(key, [...(samples.get(key) ?? []), p]);
      o.log(
        `round ${round}/${o.runs}  ${mode.padEnd(16)} ${String(intervalMs).padStart(4)} ` +
          `ms  ${p.tps.toFixed(1).padStart(8)} tps  ` +
          `${p.latencyMs.toFixed(2).padStart(8)} ms ` +
          `(p50 ${p.latencyP50Ms.toFixed(2)}, p99 ${p.latencyP99Ms.toFixed(2)})  ` +
          `held ${p.heldPct.toFixed(1)}% of packets  ` +
          `paused ${(100 * p.pauseShare).toFixed(1)}% ` +
          `(${p.perSec.toFixed(0)} checkpoints/s of ${p.pauseMs.toFixed(2)} ms)` +
          (p.netUsPerPacket > 0
            ? `  net buffer µs/packet ${p.netUsPerPacket.toFixed(2)} (bpf ${p.netParts.bpf.toFixed(2)}, ` +
              `ring ${p.netParts.ring.toFixed(2)}, queue ${p.netParts.queue.toFixed(2)}` +
              (p.netParts.bpfRunsPerPacket ? `; ${p.netParts.bpfRunsPerPacket.toFixed(2)} runs/packet)` : ')')
            : '') +
          (o.intervalAuto ? `, interval auto at ${p.intervalMs} ms` : ''),
      );
    };
    let serverBin = stock.bin;
    for (let round = 1; round <= o.runs; round++) {
      for (const mode of roundOrder(modes, round)) {
        const bin = NEEDS_PATCHED.includes(mode) ? patched!.bin : stock.bin;
        if (bin !== serverBin) {
          server.stop();
          server = startServer(bin, bed.guest, bed.guestIp4);
          serverBin = bin;
        }
        if (mode === 'pg_sync_rep') {
          await withStandby(bed, stock, o, () => point(mode, o.intervalsMs[0], round));
          continue;
        }
        for (const intervalMs of UNBUFFERED.includes(mode) ? [o.intervalsMs[0]] : o.intervalsMs)
          await point(mode, intervalMs, round);
      }
      for (const mode of o.diagnostic ? DIAG_MODES : []) await point(mode, o.intervalsMs[0], round);
    }
  } finally {
    server?.stop();
    for (const i of rig?.incidents ?? []) notes.push(`engine incident: ${i}`);
    await rig?.close();
    destroyTestbed(PREFIX);
  }
  return summarize(samples, modes, o, notes);
}

/**
 * The modes in the order round `round` (from 1) measures them: rotated by one per round, so
 * that no series always runs first or last (a drift across a round then spreads over all).
 */
export function roundOrder<T>(modes: readonly T[], round: number): T[] {
  const k = (round - 1) % Math.max(1, modes.length);
  return [...modes.slice(k), ...modes.slice(0, k)];
}

function summarize(
  samples: Map<string, Point[]>,
  modes: NetMode[],
  o: NetBenchOptions,
  notes: string[],
): NetBenchResult {
  const pick = (f: (p: Point) => number): PerMode<number[]> => {
    const out = {} as PerMode<number[]>;
    for (const mode of NET_MODES) {
      if (!modes.includes(mode)) {
        out[mode] = null;
        continue;
      }
      out[mode] = o.intervalsMs.map((ms) =>
        median((samples.get(`${mode}/${UNBUFFERED.includes(mode) ? o.intervalsMs[0] : ms}`) ?? []).map(f)),
      );
    }
    return out;
  };
  const r: NetBenchResult = {
    intervals_ms: o.intervalsMs,
    tps: pick((p) => p.tps),
    latency_ms: pick((p) => p.latencyMs),
    latency_p50_ms: pick((p) => p.latencyP50Ms),
    latency_p99_ms: pick((p) => p.latencyP99Ms),
    held_pct: pick((p) => p.heldPct),
    dom0_cpu_us_per_packet: pick((p) => p.cpuUsPerPacket),
    net_buffer_us_per_packet: pick((p) => p.netUsPerPacket),
    pause_share: pick((p) => p.pauseShare),
    interval_chosen_ms: pick((p) => p.intervalMs),
    interval_auto: o.intervalAuto === true,
    runs: o.runs,
    seconds: o.seconds,
    scale: o.scale,
    clients: o.clients,
    threads: o.threads,
    script: o.script,
    pg_version: '15',
    notes,
  };
  if (o.diagnostic) {
    r.diagnostic = Object.fromEntries(
      DIAG_MODES.map((m) => [m, median((samples.get(`${m}/${o.intervalsMs[0]}`) ?? []).map((p) => p.tps))]),
    );
  }
  if (o.svg) writeFigure(o.svg, netBenchSvg(r), r);
  return r;
}

export function netBenchSvg(r: NetBenchResult): string {
  const colors: Record<NetMode, string> = {
    none: '#333333',
    remus: '#d62728',
    cp_dscp: '#1f77b4',
    cp_dscp_kernel: '#9467bd',
    cp_pgwire: '#2ca02c',
    cp_pgwire_kernel: '#17becf',
    pg_sync_rep: '#ff7f0e',
  };
  const names: Record<NetMode, string> = {
    none: 'no buffering',
    remus: 'Remus (hold all)',
    cp_dscp: 'CP (DSCP)',
    cp_dscp_kernel: 'CP (DSCP, in kernel)',
    cp_pgwire: 'CP (pgwire)',
    cp_pgwire_kernel: 'CP (pgwire, in kernel)',
    pg_sync_rep: 'PostgreSQL sync. replication',
  };
  const series = NET_MODES.filter((m) => r.tps[m]).map((m) => ({
    name: names[m],
    values: r.tps[m]!,
    color: colors[m],
    dashed: UNBUFFERED.includes(m),
  }));
  return tpsPlot(
    `PostgreSQL ${r.pg_version}, pgbench ${r.script} -c ${r.clients} -s ${r.scale}, ` +
      `${r.seconds} s × ${r.runs} (median)`,
    r.intervals_ms,
    series,
  );
}

export function formatNetBench(r: NetBenchResult): string {
  const lines = [
    `pgbench ${r.script}, scale ${r.scale}, -c ${r.clients} -j ${r.threads}, ${r.seconds} s per run, median ` +
      `of ${r.runs}`,
    `${'mode'.padEnd(16)} ${r.intervals_ms.map((ms) => `${ms} ms`.padStart(22)).join('')}`,
  ];
  for (const mode of NET_MODES) {
    const tps = r.tps[mode];
    if (!tps) {
      lines.push(`${mode.padEnd(16)} (not measured)`);
      continue;
    }
    const cells = tps.map((t, i) => {
      const ratio = r.tps.none ? t / r.tps.none[i] : NaN;
      return `${t.toFixed(0)} tps ${r.latency_ms[mode]![i].toFixed(1)} ms ${(ratio * 100).toFixed(0)}%`.padStart(22);
    });
    lines.push(`${mode.padEnd(16)} ${cells.join('')}`);
  }
  lines.push('(tps, mean latency, tps as % of no buffering)');
  const held = NET_MODES.filter((m) => r.held_pct[m] && m !== 'none').map(
    (m) => `${m} ${r.held_pct[m]!.map((h) => h.toFixed(1)).join('/')}%`,
  );
  const paused = NET_MODES.filter((m) => r.pause_share[m]).map(
    (m) => `${m} ${r.pause_share[m]!.map((x) => (100 * x).toFixed(1)).join('/')}%`,
  );
  const cpu = NET_MODES.filter((m) => r.dom0_cpu_us_per_packet[m] && !UNBUFFERED.includes(m)).map(
    (m) => `${m} ${r.dom0_cpu_us_per_packet[m]!.map((x) => x.toFixed(1)).join('/')}`,
  );
  lines.push(`packets held: ${held.join(', ')}`, `guest paused: ${paused.join(', ')}`);
  const net = NET_MODES.filter((m) => r.net_buffer_us_per_packet[m] && !UNBUFFERED.includes(m)).map(
    (m) => `${m} ${r.net_buffer_us_per_packet[m]!.map((x) => x.toFixed(2)).join('/')}`,
  );
  lines.push(`dom0 CPU per guest packet (us): ${cpu.join(', ')}`);
  lines.push(`net buffer's own time per guest packet (us): ${net.join(', ')}`);
  if (r.interval_auto) {
    const chosen = NET_MODES.filter((m) => r.interval_chosen_ms[m] && m !== 'none' && m !== 'pg_sync_rep').map(
      (m) => `${m} ${r.interval_chosen_ms[m]!.join('/')} ms`,
    );
    lines.push(`interval auto chose: ${chosen.join(', ')}`);
  }
  lines.push(...r.notes);
  if (r.diagnostic)
    lines.push(
      `queue cost (everything released at once, ${r.intervals_ms[0]} ms): ` +
        Object.entries(r.diagnostic)
          .map(([k, v]) => `${k} ${v.toFixed(0)} tps`)
          .join(', '),
    );
  return lines.join('\n');
}

// multi-bench: `remusdb bench multi` — several protected domains on one dom0 sharing one
// backup host. Why: one dom0 protects many guests, and what one guest gets — its pauses, how
// long its outputs are held, how well its checkpoints compress — must not depend much on how
// many others are protected beside it (issue 15: each within 10% of running alone).
// How: real processes on this host, as in production: per domain a `remusdb protect sim:mK`
// (oltp) and its own `remusdb backup` (one backup process holds one replica; all of them
// stand for the shared backup host, here localhost), each process with its own run
// directory. Each run measures two series, interleaved so that a drift of the host's load
// falls on both: `alone` (one domain) then `shared` (N at once). A series starts its
// processes, waits until every domain is protected, lets them run a warm-up, then measures a
// window: pauses and output holds are the samples timed inside it (the primary's `samples`
// control command, read in pieces), the compression ratio, checkpoint rate, guest
// transactions and wire rate are differences of the cumulative counters of `status` at its
// start and end. A domain whose session changed during the window fails the run. Reported,
// per figure: the median over runs of the value alone, of each shared domain's and of the
// worst domain's, and of the worst's ratio to alone in the same run; the verdict compares
// that ratio with the tolerance in the direction that is worse (a time longer, a ratio or
// rate lower). Also the CPU the bench's processes and the whole host used, and the load
// average before and after: on a small host the shared series competes for cores.
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { assert } from '../assert';
import { ErrorCode, RemusError } from '../errors';
import type { Trigger } from '../engine/pacing';
import { controlRequest } from '../service/control';
import { freePort } from '../util/free-port';
import { remusdbRunner } from '../util/remusdb-process';

/** Issue 15: a shared domain's figures within 10% of the same domain alone. */
export const MULTI_TOLERANCE = 0.1;
/** How often the measured window's samples are fetched (each primary keeps 4096 of each kind). */
const SAMPLES_POLL_MS = 2000;
/** Clock ticks per second of /proc's CPU times (USER_HZ: 100 on Linux). */
const USER_HZ = 100;

/** One domain's figures over one measured window. */
export interface DomainSample {
  pause_ms_p50: number;
  pause_ms_p99: number;
  hold_ms_p50: number;
  hold_ms_p99: number;
  /** Page bytes captured per byte of page batches sent, in the window. */
  ratio: number;
  checkpoints_per_s: number;
  guest_tx_per_s: number;
  wire_mb_per_s: number;
}
export type Metric = keyof DomainSample;
export type Better = 'lower' | 'higher' | null;

/** The figures, which way is better (null: neither, no verdict) and which are the targets. */
export const METRICS: ReadonlyArray<{ key: Metric; label: string; better: Better; target: boolean; digits: number }> = [
  { key: 'pause_ms_p50', label: 'pause p50 ms', better: 'lower', target: true, digits: 2 },
  { key: 'pause_ms_p99', label: 'pause p99 ms', better: 'lower', target: true, digits: 2 },
  { key: 'hold_ms_p50', label: 'hold p50 ms', better: 'lower', target: true, digits: 1 },
  { key: 'hold_ms_p99', label: 'hold p99 ms', better: 'lower', target: true, digits: 1 },
  { key: 'ratio', label: 'compression', better: 'higher', target: true, digits: 2 },
  { key: 'checkpoints_per_s', label: 'checkpoints/s', better: 'higher', target: false, digits: 1 },
  { key: 'guest_tx_per_s', label: 'guest tx/s', better: 'higher', target: false, digits: 0 },
  { key: 'wire_mb_per_s', label: 'wire MB/s', better: null, target: false, digits: 2 },
];

/** CPU busy over a window, in cores: the bench's processes, and the whole host (NaN: /proc unreadable). */
export interface CpuUse {
  ours: number;
  host: number;
}

/** One series of one run: its domains' samples (one alone) and the CPU it used. */
export interface SeriesSample {
  domains: DomainSample[];
  cpu_cores: CpuUse;
}

export interface RunSample {
  alone: SeriesSample;
  shared: SeriesSample;
}

export interface MultiSummary {
  alone: Record<Metric, number>;
  shared: Record<Metric, { domains: number[]; worst: number }>;
  /** Shared over alone of the same run, median over runs: per domain, and the worst domain's. */
  ratio: Record<Metric, { domains: number[]; worst: number }>;
  verdict: Record<Metric, string>;
  /** Every target figure within the tolerance for the worst domain. */
  target_met: boolean;
  cpu_cores: { alone: CpuUse; shared: CpuUse };
}

// ---- the pure parts: figures of a window, medians, verdicts --------------------------------

/** The q-quantile as the engine's windows take it (the sample at floor(q·n) of the sorted ones); NaN if none. */
export function quantile(xs: readonly number[], q: number): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
}

/** The median (the mean of the middle two for an even count); NaN if none or if any is NaN. */
export function median(xs: readonly number[]): number {
  if (xs.length === 0 || xs.some(Number.isNaN)) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b),
    h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}

/** The worst of several domains' values: the largest where lower is better, the smallest where higher is. */
export function worst(xs: readonly number[], better: Better): number {
  return better === 'higher' ? Math.min(...xs) : Math.max(...xs);
}

/** 'within 10%' when shared/alone is no worse than the tolerance in the direction that matters. */
export function verdict(ratio: number, better: Better, tolerance = MULTI_TOLERANCE): string {
  if (better === null) return '-';
  if (!Number.isFinite(ratio)) return 'no data';
  const ok = better === 'lower' ? ratio <= 1 + tolerance : ratio >= 1 - tolerance;
  return `${ok ? 'within' : 'not within'} ${Math.round(tolerance * 100)}%`;
}

/** What a window is measured from: `status` at its start and end, and the samples timed inside it. */
export interface WindowInput {
  seconds: number;
  start: Record<string, unknown>;
  end: Record<string, unknown>;
  pauses: readonly number[];
  holds: readonly number[];
}

/** One domain's figures over a window; the counters of `status` are cumulative, so their differences count. */
export function windowSample(w: WindowInput): DomainSample {
  const d = (get: (s: Record<string, unknown>) => unknown): number => Number(get(w.end)) - Number(get(w.start));
  const steps = (s: Record<string, unknown>): unknown => (s.guest as { steps?: unknown } | null)?.steps;
  const wire = d((s) => s.wireBytes);
  return {
    pause_ms_p50: quantile(w.pauses, 0.5),
    pause_ms_p99: quantile(w.pauses, 0.99),
    hold_ms_p50: quantile(w.holds, 0.5),
    hold_ms_p99: quantile(w.holds, 0.99),
    ratio: wire > 0 ? d((s) => s.rawBytes) / wire : Number.NaN,
    checkpoints_per_s: d((s) => s.checkpoints) / w.seconds,
    guest_tx_per_s: d(steps) / w.seconds,
    wire_mb_per_s: wire / 1e6 / w.seconds,
  };
}

/** One figure over the runs: medians alone, per shared domain, of the worst, and of the ratios to alone. */
function summarizeMetric(runs: readonly RunSample[], key: Metric, better: Better) {
  const alone = runs.map((r) => r.alone.domains[0][key]);
  const shared = runs.map((r) => r.shared.domains.map((d) => d[key]));
  const n = shared[0].length;
  assert(
    shared.every((xs) => xs.length === n),
    'bench multi: every run has the same number of shared domains',
  );
  const each = Array.from({ length: n }, (_, i) => i);
  return {
    alone: median(alone),
    shared: {
      domains: each.map((i) => median(shared.map((xs) => xs[i]))),
      worst: median(shared.map((xs) => worst(xs, better))),
    },
    ratio: {
      domains: each.map((i) => median(shared.map((xs, r) => xs[i] / alone[r]))),
      worst: median(shared.map((xs, r) => worst(xs, better) / alone[r])),
    },
  };
}

/** The report of several runs: medians over runs, the worst domain against alone, a verdict per figure. */
export function summarize(runs: readonly RunSample[], tolerance = MULTI_TOLERANCE): MultiSummary {
  assert(runs.length > 0, 'bench multi: at least one run to summarize');
  const out = { alone: {}, shared: {}, ratio: {}, verdict: {} } as Omit<MultiSummary, 'target_met' | 'cpu_cores'>;
  for (const m of METRICS) {
    const s = summarizeMetric(runs, m.key, m.better);
    out.alone[m.key] = s.alone;
    out.shared[m.key] = s.shared;
    out.ratio[m.key] = s.ratio;
    out.verdict[m.key] = verdict(s.ratio.worst, m.better, tolerance);
  }
  const cpu = (series: 'alone' | 'shared'): CpuUse => ({
    ours: median(runs.map((r) => r[series].cpu_cores.ours)),
    host: median(runs.map((r) => r[series].cpu_cores.host)),
  });
  return {
    ...out,
    target_met: METRICS.every((m) => !m.target || out.verdict[m.key].startsWith('within')),
    cpu_cores: { alone: cpu('alone'), shared: cpu('shared') },
  };
}

// ---- the processes ------------------------------------------------------------------------

export interface MultiOptions {
  domains: number;
  memoryBytes: number;
  /** Guest transactions per second of each domain (protect's --rate). */
  rate: number;
  seconds: number;
  runs: number;
  intervalMs: number;
  /** What starts a checkpoint besides the interval (protect's --trigger). */
  trigger: Trigger;
  /** Silence that means the peer is gone: generous, so that a busy host's scheduling is not taken for a loss. */
  heartbeatTimeoutMs: number;
  warmupMs: number;
  log: (line: string) => void;
}

export interface MultiResult extends MultiSummary {
  bench: 'multi';
  date: string;
  domains: number;
  memory_bytes: number;
  rate: number;
  seconds: number;
  warmup_s: number;
  runs: number;
  interval_ms: number;
  trigger: Trigger;
  heartbeat_timeout_ms: number;
  tolerance: number;
  cpus: number;
  load_before: number[] | null;
  load_after: number[] | null;
  samples: RunSample[];
}

/** One protected domain of a series: its primary, its backup, where their logs and sockets are. */
interface Pair {
  name: string;
  primary: ChildProcess;
  backup: ChildProcess;
  primarySock: string;
  dir: string;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The 1, 5 and 15 minute load averages, or null where /proc/loadavg cannot be read. */
export function loadAverage(): number[] | null {
  try {
    return fs.readFileSync('/proc/loadavg', 'utf8').trim().split(/\s+/).slice(0, 3).map(Number);
  } catch {
    return null;
  }
}

/** Starts a backup and its primary for sim:<name>, each with its own run directory under dir. */
async function startPair(dir: string, name: string, o: MultiOptions, kids: ChildProcess[]): Promise<Pair> {
  const port = await freePort();
  const runner = (role: string) =>
    remusdbRunner(dir, { ...process.env, REMUSDB_RUN_DIR: path.join(dir, `${role}-${name}`) }, kids);
  const backup = runner('backup')(['backup', '--insecure', '--listen', `127.0.0.1:${port}`], `backup-${name}.log`);
  const backupSock = path.join(dir, `backup-${name}`, `backup-${port}.sock`);
  for (const end = Date.now() + 30_000; !fs.existsSync(backupSock); await sleep(50)) {
    if (backup.exitCode !== null || Date.now() > end) throw exited(dir, `backup-${name}.log`, 'backup');
  }
  const args = ['protect', `sim:${name}`, `127.0.0.1:${port}`, '--insecure', '--workload', 'oltp'];
  args.push('--memory', String(o.memoryBytes), '--rate', String(o.rate));
  args.push('--interval', String(o.intervalMs), '--trigger', o.trigger);
  args.push('--heartbeat-timeout', String(o.heartbeatTimeoutMs));
  const primary = runner('primary')(args, `primary-${name}.log`);
  const primarySock = path.join(dir, `primary-${name}`, `primary-${name}.sock`);
  return { name, primary, backup, primarySock, dir };
}

/** A process that ended (or never came up) before it should, with the last line of its log. */
function exited(dir: string, log: string, what: string): RemusError {
  let last = '';
  try {
    last = fs.readFileSync(path.join(dir, log), 'utf8').trim().split('\n').pop() ?? '';
  } catch {
    /* no log yet */
  }
  return new RemusError(ErrorCode.PEER_GONE, `bench multi: the ${what} ended early (${log}): ${last || 'no output'}`);
}

/** Waits until every primary is protected with a checkpoint acknowledged; the pre-copies run at once. */
async function waitProtected(pairs: Pair[], o: MultiOptions): Promise<void> {
  const end = Date.now() + 120_000 + (pairs.length * o.memoryBytes) / (4 * 2 ** 20);
  for (;;) {
    for (const p of pairs) {
      if (p.backup.exitCode !== null) throw exited(p.dir, `backup-${p.name}.log`, `backup of sim:${p.name}`);
      if (p.primary.exitCode !== null) throw exited(p.dir, `primary-${p.name}.log`, `primary of sim:${p.name}`);
    }
    const st = await Promise.all(pairs.map((p) => controlRequest(p.primarySock, { cmd: 'status' }).catch(() => null)));
    if (st.every((s) => s?.state === 'protected' && Number(s.ackedEpoch) >= 1)) return;
    if (Date.now() > end) {
      throw new RemusError(ErrorCode.PEER_GONE, 'bench multi: not every domain was protected in time', {
        states: st.map((s) => s?.state ?? 'no answer'),
      });
    }
    await sleep(250);
  }
}

/** Stops the primaries first (GOODBYE: no failover), then the backups; what does not end is killed. */
async function stopPairs(pairs: Pair[], kids: ChildProcess[]): Promise<void> {
  const stop = async (cs: ChildProcess[]): Promise<void> => {
    for (const c of cs) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
    for (const end = Date.now() + 5000; Date.now() < end; await sleep(50)) {
      if (cs.every((c) => c.exitCode !== null || c.signalCode !== null)) return;
    }
  };
  await stop(pairs.map((p) => p.primary));
  await stop(kids);
  for (const c of kids) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
}

/** CPU seconds so far of these processes (utime + stime of /proc/<pid>/stat; NaN if unreadable). */
function processCpuSeconds(pids: number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // fields from the third (state) on
      ticks += Number(f[11]) + Number(f[12]);
    } catch {
      return Number.NaN;
    }
  }
  return ticks / USER_HZ;
}

/** CPU seconds the whole host was busy so far (every CPU, /proc/stat: all but idle and iowait). */
function hostBusySeconds(): number {
  try {
    const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
    return (total - f[3] - f[4]) / USER_HZ;
  } catch {
    return Number.NaN;
  }
}

type Piece = { values: number[]; complete: boolean };

/** The pauses and holds of every primary timed in [from, to). */
async function fetchPieces(pairs: Pair[], from: number, to: number): Promise<Array<{ pauses: Piece; holds: Piece }>> {
  return Promise.all(
    pairs.map(async (p) => {
      const r = await controlRequest(p.primarySock, { cmd: 'samples', from, to });
      if (r.error)
        throw new RemusError(ErrorCode.CONTROL, `bench multi: samples of sim:${p.name}: ${JSON.stringify(r.error)}`);
      return r as unknown as { pauses: Piece; holds: Piece };
    }),
  );
}

/** The measured window: counters at its start and end, the samples timed inside it, read in pieces. */
async function measureWindow(pairs: Pair[], pids: number[], seconds: number): Promise<SeriesSample> {
  const status = () => Promise.all(pairs.map((p) => controlRequest(p.primarySock, { cmd: 'status' })));
  const t0 = Date.now(),
    cpu0 = processCpuSeconds(pids),
    host0 = hostBusySeconds();
  const start = await status();
  const got = pairs.map(() => ({ pauses: [] as number[], holds: [] as number[] }));
  const t1 = t0 + seconds * 1000;
  for (let from = t0; from < t1; ) {
    const to = Math.min(t1, from + SAMPLES_POLL_MS);
    for (let wait = to - Date.now(); wait > 0; wait = to - Date.now()) await sleep(wait); // at or past to
    const pieces = await fetchPieces(pairs, from, to);
    pieces.forEach((pc, i) => {
      if (!pc.pauses.complete || !pc.holds.complete) {
        throw new RemusError(ErrorCode.CONTROL, `bench multi: sim:${pairs[i].name} outran its kept samples`);
      }
      got[i].pauses.push(...pc.pauses.values);
      got[i].holds.push(...pc.holds.values);
    });
    from = to;
  }
  const elapsed = (Date.now() - t0) / 1000;
  const end = await status();
  const cpu_cores = { ours: (processCpuSeconds(pids) - cpu0) / elapsed, host: (hostBusySeconds() - host0) / elapsed };
  pairs.forEach((p, i) => sameSession(p.name, start[i], end[i]));
  const domains = pairs.map((_, i) => windowSample({ seconds: elapsed, start: start[i], end: end[i], ...got[i] }));
  return { domains, cpu_cores };
}

/** A window's figures mean one session: the backup was not lost (nor reached again) meanwhile. */
function sameSession(name: string, a: Record<string, unknown>, b: Record<string, unknown>): void {
  if (b.state === 'protected' && a.sessions === b.sessions && a.backupLosses === b.backupLosses) return;
  throw new RemusError(ErrorCode.PEER_GONE, `bench multi: sim:${name} lost its backup during the measured window`, {
    state: b.state,
    sessions: [a.sessions, b.sessions],
  });
}

/** One series: n domains started at once, protected, warmed up, measured, stopped. */
async function runSeries(n: number, o: MultiOptions): Promise<SeriesSample> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'remusdb-multi-'));
  const kids: ChildProcess[] = [];
  const pairs: Pair[] = [];
  try {
    for (let i = 1; i <= n; i++) pairs.push(await startPair(dir, `m${i}`, o, kids));
    await waitProtected(pairs, o);
    await sleep(o.warmupMs);
    return await measureWindow(
      pairs,
      kids.map((k) => k.pid ?? -1),
      o.seconds,
    );
  } finally {
    await stopPairs(pairs, kids);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** The benchmark: per run, alone then shared; the load average before and after. */
export async function benchMulti(o: MultiOptions): Promise<MultiResult> {
  const load_before = loadAverage();
  const samples: RunSample[] = [];
  for (let r = 1; r <= o.runs; r++) {
    o.log(`bench multi: run ${r}/${o.runs}: 1 domain alone`);
    const alone = await runSeries(1, o);
    o.log(`bench multi: run ${r}/${o.runs}: ${o.domains} domains at once`);
    const shared = await runSeries(o.domains, o);
    samples.push({ alone, shared });
  }
  return {
    bench: 'multi',
    date: new Date().toISOString(),
    domains: o.domains,
    memory_bytes: o.memoryBytes,
    rate: o.rate,
    seconds: o.seconds,
    warmup_s: o.warmupMs / 1000,
    runs: o.runs,
    interval_ms: o.intervalMs,
    trigger: o.trigger,
    heartbeat_timeout_ms: o.heartbeatTimeoutMs,
    tolerance: MULTI_TOLERANCE,
    cpus: os.cpus().length,
    load_before,
    load_after: loadAverage(),
    ...summarize(samples),
    samples,
  };
}

// ---- the report ---------------------------------------------------------------------------

/** The plain text report: one line per figure, alone against every shared domain and the worst. */
export function formatMultiBench(r: MultiResult): string {
  const f = (x: number, d: number): string => (Number.isFinite(x) ? x.toFixed(d) : '-');
  const load = (l: number[] | null): string => (l ? l.map((x) => x.toFixed(2)).join(' ') : '-');
  const cpu = (c: CpuUse): string => `ours ${f(c.ours, 2)}, host ${f(c.host, 2)}`;
  const names = Array.from({ length: r.domains }, (_, i) => `m${i + 1}`);
  const head = ['figure'.padEnd(14), 'alone'.padStart(8), ...names.map((n) => n.padStart(8))];
  const lines = METRICS.map((m) =>
    [
      m.label.padEnd(14),
      f(r.alone[m.key], m.digits).padStart(8),
      ...r.shared[m.key].domains.map((x) => f(x, m.digits).padStart(8)),
      f(r.shared[m.key].worst, m.digits).padStart(8),
      f(r.ratio[m.key].worst, 3).padStart(12),
      `  ${r.verdict[m.key]}${m.target ? '' : ' (context)'}`,
    ].join(' '),
  );
  return [
    `bench multi: ${r.domains} sim domains of ${r.memory_bytes / 2 ** 20} MiB (oltp, ${r.rate} tx/s), ` +
      'each protected to its own ' +
      `backup process on this host, ${r.interval_ms} ms interval, trigger ${r.trigger}`,
    `${r.seconds} s measured after a ${r.warmup_s} s warm-up; ${r.runs} run(s), alone then shared; medians over runs`,
    `host: ${r.cpus} CPUs; load average 1/5/15 min before ${load(r.load_before)}, after ${load(r.load_after)}`,
    `CPU cores busy: alone ${cpu(r.cpu_cores.alone)}; shared ${cpu(r.cpu_cores.shared)}`,
    '',
    [...head, 'worst'.padStart(8), 'worst/alone'.padStart(12), '  verdict'].join(' '),
    ...lines,
    '',
    `target (pause, hold and compression of every domain within ${Math.round(r.tolerance * 100)}% of alone): ` +
      `${r.target_met ? 'met' : 'NOT met'}`,
  ].join('\n');
}

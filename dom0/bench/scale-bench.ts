// scale-bench: `remusdb bench scale` — what protecting a guest costs as it grows. Per size, a
// `remusdb backup` and a `remusdb protect sim:scale` run as separate processes over the real
// (TLS) channel on this host, the guest running oltp at 2000 tx/s with 50 ms checkpoints:
// the initial sync (live pre-copy, then the first stop-and-copy), the sessions it took, the
// steady pauses, the longest any output was held, and each process's memory beyond the guest.
// Then the link is cut for 2 s (a relay in this process resets the primary's connection and
// leaves the backup's open; the heartbeat timeout is 8 s so the backup outlasts it) and the
// reconnection measured: the octets of the continued session's first checkpoint against the
// pages written since the last acknowledgement (docs/protocol.md "Reconnect"). Last, the
// failover: SIGKILL of the primary to the backup's guest running.
// A size the simulated domain cannot hold is a row that says so (its limit, its message).
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { controlRequest } from '../service/control';
import { freePort } from '../util/free-port';
import { remusdbRunner } from '../util/remusdb-process';
import { newPsk } from '../protocol/channel';
import { CuttableProxy } from '../util/cuttable-proxy';
import { textWidth } from './net-svg';

/** The link cut measured per size, and the heartbeat timeout that lets the backup outlast it. */
const CUT_MS = 2000;
const HEARTBEAT_TIMEOUT_MS = 8000;

export const SCALE_SIZES_DEFAULT = [256 * 2 ** 20, 2 ** 30, 2 * 2 ** 30, 4 * 2 ** 30, 8 * 2 ** 30];

export interface ScaleRow {
  guest_bytes: number;
  /** Set when the size could not be protected (refused, or the first checkpoint never came). */
  error: string | null;
  initial_sync_s: number;
  initial_sync_mb_per_s: number;
  /** The disk copy that opens the session (part of initial_sync_s), and its MB/s of disk copied. */
  disk_sync_s: number;
  disk_sync_mb_per_s: number;
  final_pause_ms: number;
  /** Pages the final stop-and-copy copied, and its parts (ms; engine/stats.ts FullPauseParts). */
  final_pause_pages: number;
  final_pause_parts: { suspend: number; capture: number; disk: number; resume: number } | null;
  /**
   * The target's bound: 2 × a memcpy of final_pause_pages (timed in this process right after
   * the sync, median of 5, warm buffers) + 1 ms.
   */
  final_pause_bound_ms: number;
  sessions: number;
  pause_ms_p50: number;
  pause_ms_p99: number;
  output_hold_ms_max: number;
  output_hold_ms_p99: number;
  loop_delay_ms_max_primary: number;
  loop_delay_ms_max_backup: number;
  /** The same without the time the main thread waited for a CPU (loop-delay.ts): our own work's share. */
  loop_delay_ms_max_own_primary: number;
  loop_delay_ms_max_own_backup: number;
  primary_rss_over_guest_bytes: number;
  backup_rss_over_guest_bytes: number;
  /**
   * After a 2 s cut: 'continued' or 'full: <reason>'; the continued checkpoint's octets; pages written since the last
   * ack × 4096.
   */
  reconnect: string;
  reconnect_bytes: number;
  reconnect_dirty_bytes: number;
  /**
   * Read once the continued session is verified (the columns before are read before the cut):
   * from the link's return to that ack (outputs flow protected again), and from the session's
   * 'protected' event to it (the continued checkpoint's pause, stream and commit: its outputs'
   * hold). An output held across the cut waits for the cut too: the run's hold max says nothing here.
   */
  after_cut_reprotected_ms: number;
  after_cut_first_hold_ms: number;
  /** The run's worst own loop stalls, the cut and the reconnect included. */
  after_cut_loop_delay_ms_max_own_primary: number;
  after_cut_loop_delay_ms_max_own_backup: number;
  /** SIGKILL of the primary to the backup's 'failover' event (its guest runs). */
  failover_ms: number;
}

export interface ScaleOptions {
  sizes: number[];
  seconds: number;
  intervalMs: number;
  rate: number;
  /** The guest's disk (`protect --disk`); undefined: the sim's default. */
  diskBytes?: number;
  /** false: `protect --no-verify-disk`. */
  verifyDisk?: boolean;
  /** `protect --disk-scrub`: the disks checked in the background instead. */
  diskScrub?: boolean;
  /** Keep each size's run directory (the processes' logs) and say where. */
  keepLogs?: boolean;
  log: (l: string) => void;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export async function benchScale(o: ScaleOptions): Promise<ScaleRow[]> {
  const rows: ScaleRow[] = [];
  for (const bytes of o.sizes) {
    o.log(`bench scale: ${bytes / 2 ** 20} MiB`);
    rows.push(await oneSize(bytes, o));
  }
  return rows;
}

/** One guest size: backup and protect as processes; figures from their status sockets. */
async function oneSize(bytes: number, o: ScaleOptions): Promise<ScaleRow> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'remusdb-scale-'));
  const env = { ...process.env, REMUSDB_RUN_DIR: dir };
  const psk = path.join(dir, 'key.psk');
  fs.writeFileSync(psk, `${newPsk()}\n`, { mode: 0o600 });
  const port = await freePort();
  const kids: ChildProcess[] = [];
  const run = remusdbRunner(dir, env, kids);
  const row = emptyRow(bytes);
  const proxy = new CuttableProxy(port);
  try {
    run(['backup', '--listen', `127.0.0.1:${port}`, '--psk-file', psk], 'backup.log');
    await proxy.listen();
    const primary = run(
      [
        'protect',
        'sim:scale',
        `127.0.0.1:${proxy.port}`,
        '--psk-file',
        psk,
        '-i',
        String(o.intervalMs),
        '--memory',
        String(bytes),
        ...(o.diskBytes === undefined ? [] : ['--disk', String(o.diskBytes)]),
        ...(o.verifyDisk === false ? ['--no-verify-disk'] : []),
        ...(o.diskScrub === true ? ['--disk-scrub'] : []),
        '--rate',
        String(o.rate),
        '--heartbeat-timeout',
        String(HEARTBEAT_TIMEOUT_MS),
      ],
      'primary.log',
    );
    const st = (role: string): Promise<Record<string, unknown>> =>
      controlRequest(path.join(dir, role === 'primary' ? 'primary-scale.sock' : `backup-${port}.sock`), {
        cmd: 'status',
      });
    const deadline = Date.now() + 60_000 + ((bytes + (o.diskBytes ?? 0)) / (16 * 2 ** 20)) * 1000;
    let p: Record<string, unknown> = {};
    while (Number(p.ackedEpoch ?? 0) < 1) {
      if (primary.exitCode !== null) throw new Error(lastLine(path.join(dir, 'primary.log')));
      if (Date.now() > deadline) throw new Error('the first checkpoint was not acknowledged in time');
      await sleep(250);
      p = await st('primary').catch(() => ({}));
    }
    await sleep(o.seconds * 1000);
    p = await st('primary');
    const b = await st('backup');
    fill(row, p, b);
    const linkBackAt = await measureReconnect(row, proxy, () => st('primary'));
    if (row.reconnect === 'continued') fillAfterCut(row, linkBackAt, await st('primary'), await st('backup'));
    const killedAt = Date.now();
    primary.kill('SIGKILL');
    row.failover_ms = await failoverMs(() => st('backup'), killedAt);
  } catch (e) {
    row.error = (e as Error).message;
  } finally {
    proxy.close();
    for (const k of kids) k.kill('SIGTERM');
    await sleep(500);
    for (const k of kids) if (k.exitCode === null) k.kill('SIGKILL');
    if (o.keepLogs) o.log(`bench scale: ${bytes / 2 ** 20} MiB: logs kept in ${dir}`);
    else fs.rmSync(dir, { recursive: true, force: true });
  }
  return row;
}

/**
 * Cuts the link for CUT_MS and waits for the second session's first checkpoint to be
 * acknowledged; returns when the link came back (wall clock).
 */
async function measureReconnect(
  row: ScaleRow,
  proxy: CuttableProxy,
  status: () => Promise<Record<string, unknown>>,
): Promise<number> {
  await proxy.cut(CUT_MS);
  const linkBackAt = Date.now();
  const deadline = Date.now() + 60_000 + (row.guest_bytes / (16 * 2 ** 20)) * 1000;
  for (;;) {
    const p = await status().catch(() => ({}) as Record<string, unknown>);
    const s = p.lastSessionStart as
      | { kind: string; reason: string; verified?: boolean; pages?: number; bytes?: number }
      | null
      | undefined;
    if (Number(p.sessions) >= 2 && s?.kind === 'full') {
      row.reconnect = `full: ${s.reason}`;
      return linkBackAt;
    }
    if (Number(p.sessions) >= 2 && s?.verified) {
      row.reconnect = 'continued';
      row.reconnect_bytes = Number(s.bytes);
      row.reconnect_dirty_bytes = Number(s.pages) * 4096;
      return linkBackAt;
    }
    if (Date.now() > deadline) {
      row.reconnect = 'no second session acknowledged in time';
      return linkBackAt;
    }
    await sleep(100);
  }
}

function fill(row: ScaleRow, p: Record<string, unknown>, b: Record<string, unknown>): void {
  const n = (x: unknown): number => Number(x ?? NaN);
  const outputs = (p.outputs ?? {}) as Record<string, unknown>;
  row.initial_sync_s = n(p.initialSyncMs) / 1000;
  row.initial_sync_mb_per_s = row.guest_bytes / 1e6 / row.initial_sync_s;
  const disk = (p.disk ?? {}) as Record<string, unknown>;
  row.disk_sync_s = n(p.diskSyncMs) / 1000;
  row.disk_sync_mb_per_s = n(disk.resyncCopiedBytes) / 1e6 / row.disk_sync_s;
  row.final_pause_ms = n(p.fullPauseMs);
  const fp = p.fullPause as { pages: number; suspendMs: number; captureMs: number; diskMs: number; resumeMs: number };
  if (fp) {
    row.final_pause_pages = fp.pages;
    row.final_pause_parts = { suspend: fp.suspendMs, capture: fp.captureMs, disk: fp.diskMs, resume: fp.resumeMs };
    row.final_pause_bound_ms = 2 * memcpyMs(fp.pages * 4096) + 1;
  }
  row.sessions = n(p.sessions);
  row.pause_ms_p50 = n(p.pauseMsP50);
  row.pause_ms_p99 = n(p.pauseMsP99);
  row.output_hold_ms_max = n(outputs.holdMsMax);
  row.output_hold_ms_p99 = n(outputs.holdMsP99);
  row.loop_delay_ms_max_primary = n(p.loop_delay_ms_max);
  row.loop_delay_ms_max_backup = n(b.loop_delay_ms_max);
  row.loop_delay_ms_max_own_primary = n(p.loop_delay_ms_max_own);
  row.loop_delay_ms_max_own_backup = n(b.loop_delay_ms_max_own);
  row.primary_rss_over_guest_bytes = n(p.rss_bytes) - row.guest_bytes;
  row.backup_rss_over_guest_bytes = n(b.rss_bytes) - row.guest_bytes;
}

function fillAfterCut(row: ScaleRow, linkBackAt: number, p: Record<string, unknown>, b: Record<string, unknown>): void {
  const events = (p.events ?? []) as Array<{ name: string; at: number }>;
  const at = (name: string): number => [...events].reverse().find((e) => e.name === name)?.at ?? NaN;
  row.after_cut_reprotected_ms = at('continued') - linkBackAt;
  row.after_cut_first_hold_ms = at('continued') - at('protected');
  row.after_cut_loop_delay_ms_max_own_primary = Number(p.loop_delay_ms_max_own ?? NaN);
  row.after_cut_loop_delay_ms_max_own_backup = Number(b.loop_delay_ms_max_own ?? NaN);
}

/** A memcpy of `bytes` here and now (ms): the median of 5, source and target touched first. */
export function memcpyMs(bytes: number): number {
  const src = Buffer.alloc(Math.max(4096, bytes), 1);
  const dst = Buffer.alloc(src.length, 0);
  const runs: number[] = [];
  for (let i = 0; i < 5; i++) {
    const t = performance.now();
    src.copy(dst);
    runs.push(performance.now() - t);
  }
  return runs.sort((a, b) => a - b)[2];
}

/** Milliseconds from killedAt to the backup's failover event (wall clock on both sides). */
async function failoverMs(status: () => Promise<Record<string, unknown>>, killedAt: number): Promise<number> {
  for (const end = killedAt + 30_000; Date.now() < end; await sleep(50)) {
    const b = await status().catch(() => ({}) as Record<string, unknown>);
    const ev = ((b.events ?? []) as Array<Record<string, unknown>>).find((e) => e.name === 'failover');
    if (b.state === 'failed-over' && ev) return Number(ev.at) - killedAt;
  }
  throw new Error("the backup did not fail over within 30 s of the primary's SIGKILL");
}

function emptyRow(bytes: number): ScaleRow {
  return {
    guest_bytes: bytes,
    error: null,
    initial_sync_s: NaN,
    initial_sync_mb_per_s: NaN,
    disk_sync_s: NaN,
    disk_sync_mb_per_s: NaN,
    final_pause_ms: NaN,
    final_pause_pages: NaN,
    final_pause_parts: null,
    final_pause_bound_ms: NaN,
    sessions: NaN,
    pause_ms_p50: NaN,
    pause_ms_p99: NaN,
    output_hold_ms_max: NaN,
    output_hold_ms_p99: NaN,
    loop_delay_ms_max_primary: NaN,
    loop_delay_ms_max_backup: NaN,
    loop_delay_ms_max_own_primary: NaN,
    loop_delay_ms_max_own_backup: NaN,
    primary_rss_over_guest_bytes: NaN,
    backup_rss_over_guest_bytes: NaN,
    reconnect: '-',
    reconnect_bytes: NaN,
    reconnect_dirty_bytes: NaN,
    after_cut_reprotected_ms: NaN,
    after_cut_first_hold_ms: NaN,
    after_cut_loop_delay_ms_max_own_primary: NaN,
    after_cut_loop_delay_ms_max_own_backup: NaN,
    failover_ms: NaN,
  };
}

function lastLine(file: string): string {
  const lines = fs.readFileSync(file, 'utf8').trim().split('\n');
  return lines[lines.length - 1]?.replace(/^\S+ /, '') || 'protect exited';
}

/** "P/B (own P/own B)": the loop's worst delay, and that without waiting for a CPU. */
function loopColumn(r: ScaleRow): string {
  const f = (x: number): string => (Number.isFinite(x) ? x.toFixed(0) : '-');
  const own = `${f(r.loop_delay_ms_max_own_primary)}/${f(r.loop_delay_ms_max_own_backup)}`;
  return `${f(r.loop_delay_ms_max_primary)}/${f(r.loop_delay_ms_max_backup)} (${own})`;
}

export function formatScaleBench(rows: ScaleRow[], o: ScaleOptions): string {
  const f = (x: number, d = 0): string => (Number.isFinite(x) ? x.toFixed(d) : '-');
  const mib = (x: number): string => f(x / 2 ** 20);
  const head =
    `guest sizes, oltp at ${o.rate} tx/s, checkpoints every ${o.intervalMs} ms, ${o.seconds} s steady` +
    `${o.diskBytes === undefined ? '' : `, disk ${o.diskBytes / 2 ** 20} MiB`}` +
    `${o.verifyDisk === false ? ', --no-verify-disk' : ''}${o.diskScrub === true ? ', --disk-scrub' : ''}\n` +
    'guest    sync s  MB/s  final/bound ms  sessions  pause p50/p99 ms  hold max/p99 ms  loop max P/B (own) ms' +
    '  RSS-guest P/B MiB' +
    `  after a ${CUT_MS / 1000} s cut: sent/dirty MiB, protected again/first hold ms, loop own P/B ms  failover ms`;
  return [
    head,
    ...rows.map((r) =>
      r.error
        ? `${mib(r.guest_bytes).padStart(5)} MiB  ${r.error}`
        : `${mib(r.guest_bytes).padStart(5)} ` +
          `MiB ${f(r.initial_sync_s, 1).padStart(6)} ${f(r.initial_sync_mb_per_s).padStart(5)} ` +
          `${`${f(r.final_pause_ms, 1)}/${f(r.final_pause_bound_ms, 1)}`.padStart(11)} ${f(r.sessions).padStart(7)} ` +
          `${`${f(r.pause_ms_p50, 1)}/${f(r.pause_ms_p99, 1)}`.padStart(17)} ` +
          `${`${f(r.output_hold_ms_max)}/${f(r.output_hold_ms_p99)}`.padStart(16)} ` +
          `${loopColumn(r).padStart(21)} ` +
          `${`${mib(r.primary_rss_over_guest_bytes)}/${mib(r.backup_rss_over_guest_bytes)}`.padStart(18)}  ` +
          (r.reconnect === 'continued'
            ? `continued ${f(r.reconnect_bytes / 2 ** 20, 1)}/${f(r.reconnect_dirty_bytes / 2 ** 20, 1)}, ` +
              `${f(r.after_cut_reprotected_ms)}/${f(r.after_cut_first_hold_ms)}, ` +
              `${f(r.after_cut_loop_delay_ms_max_own_primary)}/${f(r.after_cut_loop_delay_ms_max_own_backup)}`
            : r.reconnect) +
          `  ${f(r.failover_ms).padStart(5)}` +
          (o.diskBytes === undefined ? '' : `  disk copy ${f(r.disk_sync_s, 1)} s ${f(r.disk_sync_mb_per_s)} MB/s`),
    ),
  ].join('\n');
}

/** Initial sync seconds and final pause per size, as bars (plain SVG). */
export function scaleSvg(rows: ScaleRow[]): string {
  const W = 640,
    H = 360,
    L = 60,
    T = 40,
    B = 50,
    plotH = H - T - B,
    slot = (W - L - 20) / Math.max(1, rows.length);
  const max = Math.max(1, ...rows.map((r) => (Number.isFinite(r.initial_sync_s) ? r.initial_sync_s : 0)));
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="20" text-anchor="middle" font-size="14">initial sync (s) and final pause (ms) by ` +
      `guest size</text>`,
    `<line x1="${L}" y1="${T + plotH}" x2="${W - 20}" y2="${T + plotH}" stroke="black"/>`,
  ];
  rows.forEach((r, i) => {
    const x = L + i * slot + slot * 0.2,
      w = slot * 0.6;
    const h = Number.isFinite(r.initial_sync_s) ? (r.initial_sync_s / max) * plotH : 0;
    out.push(
      `<rect x="${x.toFixed(1)}" y="${(T + plotH - h).toFixed(1)}" width="${w.toFixed(1)}" height="${h.toFixed(1)}" ` +
        `fill="#4477aa"/>`,
    );
    const label = r.error ? 'refused' : `${r.initial_sync_s.toFixed(1)} s / ${r.final_pause_ms.toFixed(1)} ms`;
    // A label wider than its slot (many sizes) gets a smaller font rather than overlapping.
    const lw = textWidth(label, 12),
      size = lw <= slot - 4 ? '' : ` font-size="${Math.max(7, Math.floor((12 * (slot - 4)) / lw))}"`;
    out.push(
      `<text x="${(x + w / 2).toFixed(1)}" y="${(T + plotH - h - 6).toFixed(1)}" ` +
        `text-anchor="middle"${size}>${label}</text>`,
    );
    out.push(
      `<text x="${(x + w / 2).toFixed(1)}" y="${T + plotH + 18}" ` +
        `text-anchor="middle">${r.guest_bytes / 2 ** 20} MiB</text>`,
    );
  });
  out.push('</svg>');
  return out.join('\n');
}

// engine-bench: `remusdb bench engine` — checkpoint pause of the simulated domain at several
// dirty rates (50 ms epochs, full encode path, local blackhole backup), against memcpy of the
// same number of scattered dirty pages measured in the same run (target: pause ≤ 2 × memcpy
// + 1 ms), and failover time of real processes after SIGKILL (connection closes) and after
// SIGSTOP (silence: the heartbeat timeout decides), against 3 × interval + 100 ms.
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { protectSimInProcess } from './bench-protect';
import { Prng } from '../util/prng';

export interface PauseRow {
  rate_tx_s: number;
  epochs: number;
  dirty_pages_p50: number;
  dirty_mb_s: number;
  pause_ms_p50: number;
  pause_ms_p99: number;
  memcpy_ms: number;
  target_ms: number;
  pause_vs_target: number;
}
export interface FailoverRow {
  signal: string;
  runs: number;
  failover_ms_median: number;
  target_ms: number;
  verified: boolean;
}
export interface EngineBenchResult {
  interval_ms: number;
  memory_mib: number;
  pause: PauseRow[];
  failover: FailoverRow[];
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? 0;
};

/** Time to copy `pages` scattered 4 KiB pages out of a large region (what capture does). */
function memcpyMs(src: Buffer, pages: number, runs = 9): number {
  const rng = new Prng(3);
  const total = src.length / 4096;
  const idx = Array.from({ length: pages }, () => rng.below(total));
  const dst = Buffer.allocUnsafe(pages * 4096);
  const times: number[] = [];
  for (let r = 0; r < runs; r++) {
    const t = process.hrtime.bigint();
    for (let i = 0; i < pages; i++) src.copy(dst, i * 4096, idx[i] * 4096, idx[i] * 4096 + 4096);
    times.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  return median(times);
}

async function pauseAt(
  rate: number,
  intervalMs: number,
  memoryBytes: number,
  seconds: number,
  src: Buffer,
): Promise<PauseRow> {
  const svc = await protectSimInProcess({
    name: `bench-${rate}`,
    backup: 'blackhole',
    intervalMs,
    readTracking: false,
    guest: { memoryBytes, workload: 'oltp', seed: 1, stepsPerSec: rate, diskBytes: 0 },
  });
  const dirty: number[] = [];
  let lastEpoch = 0;
  const end = Date.now() + seconds * 1000;
  while (Date.now() < end) {
    await sleep(intervalMs);
    const s = svc.status();
    if (Number(s.epoch) > lastEpoch + 0 && Number(s.epoch) > 2) dirty.push(Number(s.dirtyPagesLast));
    lastEpoch = Number(s.epoch);
  }
  const s = svc.status();
  await svc.stop();
  const d50 = median(dirty);
  const copy = memcpyMs(src, Math.max(1, d50));
  const target = 2 * copy + 1;
  const p50 = Number(s.pauseMsP50);
  return {
    rate_tx_s: rate,
    epochs: Number(s.epoch),
    dirty_pages_p50: d50,
    dirty_mb_s: (d50 * 4096) / 1e6 / (intervalMs / 1000),
    pause_ms_p50: p50,
    pause_ms_p99: Number(s.pauseMsP99),
    memcpy_ms: copy,
    target_ms: target,
    pause_vs_target: p50 / target,
  };
}

function failover(signal: 'SIGKILL' | 'SIGSTOP', runs: number, intervalMs: number): FailoverRow {
  const bin = path.join(__dirname, '..', '..', '..', 'bin', 'remusdb');
  const times: number[] = [];
  let verified = true;
  for (let i = 0; i < runs; i++) {
    const r = spawnSync(
      process.execPath,
      [bin, 'demo', '--seconds', '2', '--memory', '64MiB', '-i', String(intervalMs), '--kill-signal', signal, '--json'],
      { encoding: 'utf8', timeout: 120000 },
    );
    const last = (r.stdout || '').trim().split('\n').pop() ?? '';
    try {
      const j = JSON.parse(last);
      times.push(Number(j.failover_ms));
      verified = verified && j.state_verified === true && j.outputs_ahead_of_checkpoint === 0;
    } catch {
      verified = false;
    }
  }
  return { signal, runs, failover_ms_median: median(times), target_ms: 3 * intervalMs + 100, verified };
}

export async function benchEngine(o: { seconds: number; runs: number }): Promise<EngineBenchResult> {
  const intervalMs = 50,
    memoryBytes = 256 * 2 ** 20;
  const src = Buffer.alloc(memoryBytes, 1);
  const pause: PauseRow[] = [];
  for (const rate of [500, 2000, 8000, 32000]) pause.push(await pauseAt(rate, intervalMs, memoryBytes, o.seconds, src));
  return {
    interval_ms: intervalMs,
    memory_mib: memoryBytes >> 20,
    pause,
    failover: [failover('SIGKILL', o.runs, intervalMs), failover('SIGSTOP', o.runs, intervalMs)],
  };
}

export function formatEngineBench(r: EngineBenchResult): string {
  const lines = [
    `checkpoint pause, sim domain ${r.memory_mib} MiB oltp, ${r.interval_ms} ms epochs (target: p50 ≤ 2 × memcpy ` +
      `of ` +
      `the dirty pages + 1 ms)`,
    'tx/s     epochs  dirty p50  dirty MB/s  pause p50  pause p99  memcpy   target   p50/target',
  ];
  for (const p of r.pause) {
    lines.push(
      `${String(p.rate_tx_s).padEnd(8)} ${String(p.epochs).padStart(6)} ${String(p.dirty_pages_p50).padStart(10)} ` +
        `${p.dirty_mb_s.toFixed(1).padStart(11)} ${p.pause_ms_p50.toFixed(2).padStart(10)} ` +
        `${p.pause_ms_p99.toFixed(2).padStart(10)} ${p.memcpy_ms.toFixed(3).padStart(7)} ` +
        `${p.target_ms.toFixed(2).padStart(8)} ${p.pause_vs_target.toFixed(2).padStart(12)}`,
    );
  }
  lines.push(
    '',
    `failover (real processes, 64 MiB guest; target ≤ 3 × interval + 100 ms = ${r.failover[0]?.target_ms} ms)`,
  );
  for (const f of r.failover)
    lines.push(
      `${f.signal.padEnd(8)} median ${f.failover_ms_median} ms over ${f.runs} runs ` +
        `(${(f.failover_ms_median / f.target_ms).toFixed(2)} of target), state verified: ${f.verified ? 'yes' : 'NO'}`,
    );
  return lines.join('\n');
}

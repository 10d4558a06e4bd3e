// loop-delay: how long this process's event loop was kept from running timers and I/O.
// Liveness (heartbeats, the silence checks of both sides) rests on a responsive loop: a
// stall longer than the heartbeat timeout makes the peer think we are gone. `status`
// reports the worst and the 99th percentile since start, in milliseconds.
//
// A stall has two causes that call for different cures: our own work holding the loop (chunk
// it, move it off the main thread) and the machine giving the thread no CPU (a dom0 with too
// few cores for what runs there). A tick every STALL_TICK_MS reads how long the main thread
// waited on a run queue meanwhile (/proc/thread-self/schedstat, field 2, ns: the kernel's
// schedstats); `loop_delay_ms_max_own` is the worst lateness with that wait taken out. It is
// NaN where the kernel does not keep the figure.
//
// To find where a stall comes from, REMUSDB_STALL_LOG_MS=N logs every stall of N ms or more
// to stderr with its end on the monotonic clock in µs (the clock of a V8 CPU profile's
// samples: `--cpu-prof` through REMUSDB_CHILD_NODE_ARGS), so that the samples of its window
// name what ran (docs/scale.md), and how much of it the thread waited for a CPU.
import * as fs from 'node:fs';
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';

let histogram: IntervalHistogram | null = null;
/** The worst lateness of a tick minus the run-queue wait within it (ms); NaN without schedstats. */
let ownMaxMs = Number.NaN;

/** The tick's period (ms): a stall is its lateness beyond that. */
const STALL_TICK_MS = 10;

export interface LoopDelay {
  loop_delay_ms_max: number;
  loop_delay_ms_p99: number;
  loop_delay_ms_max_own: number;
}

export function loopDelay(): LoopDelay {
  if (!histogram) {
    histogram = monitorEventLoopDelay({ resolution: 10 });
    histogram.enable();
    tick(Number(process.env.REMUSDB_STALL_LOG_MS ?? 0));
  }
  return {
    loop_delay_ms_max: histogram.max / 1e6,
    loop_delay_ms_p99: histogram.percentile(99) / 1e6,
    loop_delay_ms_max_own: ownMaxMs,
  };
}

/** Nanoseconds the calling thread spent runnable but not running, since it started; null if unknown. */
export function runQueueWaitNs(): number | null {
  try {
    const wait = Number(fs.readFileSync('/proc/thread-self/schedstat', 'latin1').split(' ')[1]);
    return Number.isFinite(wait) ? wait : null;
  } catch {
    return null;
  }
}

function tick(logThresholdMs: number): void {
  let last = process.hrtime.bigint();
  let lastWait = runQueueWaitNs();
  if (lastWait !== null) ownMaxMs = 0;
  setInterval(() => {
    const now = process.hrtime.bigint();
    const wait = lastWait === null ? null : runQueueWaitNs();
    const lateMs = Number(now - last) / 1e6 - STALL_TICK_MS;
    const waitedMs = wait === null || lastWait === null ? Number.NaN : (wait - lastWait) / 1e6;
    last = now;
    lastWait = wait;
    if (!Number.isNaN(waitedMs)) ownMaxMs = Math.max(ownMaxMs, lateMs - waitedMs);
    if (logThresholdMs > 0 && lateMs >= logThresholdMs) {
      const waited = Number.isNaN(waitedMs) ? '' : `, ${waitedMs.toFixed(1)} ms of it waiting for a CPU`;
      process.stderr.write(`stall ${lateMs.toFixed(1)} ms ending at ${now / 1000n} µs${waited}\n`);
    }
  }, STALL_TICK_MS).unref();
}

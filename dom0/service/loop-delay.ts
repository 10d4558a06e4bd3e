// loop-delay: how long this process's event loop was kept from running timers and I/O.
// Liveness (heartbeats, the silence checks of both sides) rests on a responsive loop: a
// stall longer than the heartbeat timeout makes the peer think we are gone. `status`
// reports the worst and the 99th percentile since start, in milliseconds.
//
// To find where a stall comes from, REMUSDB_STALL_LOG_MS=N logs every stall of N ms or more
// to stderr with its end on the monotonic clock in µs (the clock of a V8 CPU profile's
// samples: `--cpu-prof` through REMUSDB_CHILD_NODE_ARGS), so that the samples of its window
// name what ran (docs/scale.md).
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';

let histogram: IntervalHistogram | null = null;

/** The timer's period when stalls are logged (ms): a stall is its lateness beyond that. */
const STALL_LOG_TICK_MS = 5;

export function loopDelay(): { loop_delay_ms_max: number; loop_delay_ms_p99: number } {
  if (!histogram) {
    histogram = monitorEventLoopDelay({ resolution: 10 });
    histogram.enable();
    logStalls(Number(process.env.REMUSDB_STALL_LOG_MS ?? 0));
  }
  return { loop_delay_ms_max: histogram.max / 1e6, loop_delay_ms_p99: histogram.percentile(99) / 1e6 };
}

function logStalls(thresholdMs: number): void {
  if (!(thresholdMs > 0)) return;
  let last = process.hrtime.bigint();
  setInterval(() => {
    const now = process.hrtime.bigint();
    const lateMs = Number(now - last) / 1e6 - STALL_LOG_TICK_MS;
    last = now;
    if (lateMs >= thresholdMs) process.stderr.write(`stall ${lateMs.toFixed(1)} ms ending at ${now / 1000n} µs\n`);
  }, STALL_LOG_TICK_MS).unref();
}

// loop-delay: how long this process's event loop was kept from running timers and I/O.
// Liveness (heartbeats, the silence checks of both sides) rests on a responsive loop: a
// stall longer than the heartbeat timeout makes the peer think we are gone. `status`
// reports the worst and the 99th percentile since start, in milliseconds.
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';

let histogram: IntervalHistogram | null = null;

export function loopDelay(): { loop_delay_ms_max: number; loop_delay_ms_p99: number } {
  if (!histogram) {
    histogram = monitorEventLoopDelay({ resolution: 10 });
    histogram.enable();
  }
  return { loop_delay_ms_max: histogram.max / 1e6, loop_delay_ms_p99: histogram.percentile(99) / 1e6 };
}

// clock: the real Clock — monotonic milliseconds, Node timers, setImmediate for deferred
// stages. The fault simulator has its own virtual-time Clock.
import { performance } from 'node:perf_hooks';
import type { Clock } from '../ports';

export const realClock: Clock = {
  now: () => performance.now(),
  setTimer: (ms, fn) => setTimeout(fn, Math.max(0, ms)),
  clearTimer: (h) => clearTimeout(h as NodeJS.Timeout),
  defer: (fn) => {
    setImmediate(fn);
  },
};

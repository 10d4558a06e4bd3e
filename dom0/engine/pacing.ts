// pacing: when the primary takes its next checkpoint, and the bound that keeps that from
// stalling the guest. Why: a protected output (a commit acknowledgement) waits for the
// acknowledgement of its epoch's checkpoint; paced by a timer alone it waits half an interval
// on average before its checkpoint even starts. With trigger 'output' the engine takes a
// checkpoint as soon as a protected output is held (group commit: every output that arrives
// meanwhile rides the same checkpoint), and the interval is only the longest wait.
// How the bound works: every pause the engine measures is recorded as the span
// [end − ms, end]; the paused share is the paused time inside the last windowMs over windowMs.
// An early (output-triggered) checkpoint may start only when a pause of the predicted length,
// added now, keeps that share at or under maxShare; otherwise it is deferred to the first
// moment old pauses have slid out far enough (or left to the timer, which always fires).
// The prediction is the longest of the last PAUSE_PREDICT_SAMPLES incremental pauses.
// Spans never overlap (the guest is not paused twice at once: a span that would reach into
// the previous one is clipped), so the paused time after a moment is a suffix sum and the
// earliest start is found in one pass over the window's pauses.
import { assert } from '../assert';
import { MAX_PAUSE_SHARE_DEFAULT, PAUSE_PREDICT_SAMPLES, PAUSE_SHARE_WINDOW_MS } from '../limits';

/** What starts a checkpoint before its interval has passed. */
export const TRIGGERS = ['timer', 'output'] as const;
export type Trigger = (typeof TRIGGERS)[number];

/** Why a checkpoint started: its interval passed (or it was due and waited), or outputs waited. */
export type PaceCause = 'timer' | 'output';

interface Pause {
  endMs: number;
  ms: number;
}

/** The guest's paused share of time over a sliding window, and when another pause fits under a bound. */
export class PauseShare {
  /** Pauses that may still overlap a window ending now or later, by rising end. */
  private readonly pauses: Pause[] = [];
  /** The last incremental pauses (full copies excluded), for the prediction. */
  private readonly recent: number[] = [];
  /** The sum of the kept spans' ms: at least the paused time of any window ending now or later. */
  private keptMs = 0;

  constructor(
    readonly maxShare = MAX_PAUSE_SHARE_DEFAULT,
    readonly windowMs = PAUSE_SHARE_WINDOW_MS,
  ) {
    assert(maxShare > 0 && maxShare <= 1, `max pause share ${maxShare} outside (0, 1]`);
    assert(Number.isSafeInteger(windowMs) && windowMs >= 1, `pause share window ${windowMs} ms`);
  }

  /** The guest was paused ms milliseconds, ending at endMs (a session's full copy: full). */
  add(endMs: number, ms: number, full: boolean): void {
    assert(ms >= 0 && Number.isFinite(endMs), `pause of ${ms} ms ending at ${endMs}`);
    const last = this.pauses.at(-1);
    assert(!last || endMs >= last.endMs, `pause ending at ${endMs} before the last one (${last?.endMs})`);
    const kept = last ? Math.min(ms, endMs - last.endMs) : ms;
    this.pauses.push({ endMs, ms: kept });
    this.keptMs += kept;
    while (this.pauses.length && this.pauses[0].endMs <= endMs - this.windowMs) this.keptMs -= this.pauses.shift()!.ms;
    if (full) return;
    this.recent.push(ms);
    if (this.recent.length > PAUSE_PREDICT_SAMPLES) this.recent.shift();
  }

  /** Paused milliseconds inside [fromMs, toMs]. */
  pausedIn(fromMs: number, toMs: number): number {
    let sum = 0;
    for (const p of this.pauses) sum += Math.max(0, Math.min(toMs, p.endMs) - Math.max(fromMs, p.endMs - p.ms));
    return sum;
  }

  /** An upper bound of share(t) for any t from the last pause's end on, in O(1). */
  get shareBound(): number {
    return this.keptMs / this.windowMs;
  }

  /** The paused share of the window ending at nowMs, in [0, 1]. */
  share(nowMs: number): number {
    return Math.min(1, this.pausedIn(nowMs - this.windowMs, nowMs) / this.windowMs);
  }

  /** How long the next incremental pause is expected to last: the longest of the recent ones. */
  predictMs(): number {
    return this.recent.length ? Math.max(...this.recent) : 0;
  }

  /**
   * The earliest moment ≥ nowMs at which a pause of predictMs() keeps the share of the window
   * ending with it at or under the bound; Infinity when a single such pause is over it.
   * Candidates are now and the moments each recorded pause leaves the window for good.
   */
  earliestStart(nowMs: number): number {
    const p = this.predictMs(),
      budget = this.maxShare * this.windowMs;
    if (p > budget) return Infinity;
    // Every recorded pause ended by now, so a window ending at t + p (t ≥ now) holds what lies after its start.
    if (this.pausedIn(nowMs + p - this.windowMs, Infinity) + p <= budget) return nowMs;
    let after = this.pauses.reduce((sum, x) => sum + x.ms, 0); // paused after the candidate's window start
    for (const x of this.pauses) {
      after -= x.ms; // the window starts where x ends: x and all before it are out (spans are disjoint)
      const t = x.endMs + this.windowMs - p;
      if (t > nowMs && after + p <= budget) return t;
    }
    return Infinity; // unreachable: once every recorded pause has left, p alone fits
  }
}

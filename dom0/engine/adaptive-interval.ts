// adaptive-interval: the checkpoint interval chosen from what checkpoints cost (`--interval auto`).
// Why: the interval trades three things. A short one makes a held output wait less (half an
// interval on average with the timer alone) and a failover discard less of the guest's
// unacknowledged run; a long one pauses the guest a smaller share of its time, because every
// pause has a fixed part (suspend, barriers, resume) besides the part that grows with the pages
// dirtied since the last checkpoint. The right interval moves with the workload: an idle guest
// can be checkpointed every few ms for almost nothing, a write-heavy one cannot.
// How: each incremental checkpoint gives (pause ms, pages captured, ms since the previous
// checkpoint). From the last INTERVAL_AUTO_SAMPLES: pause = fixedMs + perPageMs × pages (least
// squares; with too little spread in pages, the fixed part is the shortest pause), and the dirty
// rate = pages / elapsed. At interval I the share is (fixedMs + perPageMs × rate × I) / I; the
// shortest I with share ≤ maxShare is fixedMs / (maxShare − perPageMs × rate), clamped to
// [minMs, maxMs] (maxMs is the operator's loss window: `--max-loss-window`); maxMs when the
// per-page part alone is over the share. The interval moves at most INTERVAL_AUTO_STEP per
// checkpoint (pages dirtied grow less than linearly with the interval, so the model is only
// trusted near where it was measured; small steps let the next samples correct it), and never
// shortens while the samples' measured paused share is over the bound.
import { assert } from '../assert';
import { INTERVAL_AUTO_SAMPLES, INTERVAL_AUTO_STEP } from '../limits';

export interface IntervalModel {
  /** The interval the next checkpoint is timed by (ms), in [minMs, maxMs]. */
  intervalMs: number;
  minMs: number;
  maxMs: number;
  maxShare: number;
  /** The fitted fixed part of a pause (ms) and its part per captured page (ms). */
  fixedMs: number;
  perPageMs: number;
  /** Pages dirtied per ms of guest run, over the samples. */
  dirtyPagesPerMs: number;
  /** The paused share the model predicts at intervalMs. */
  predictedShare: number;
  samples: number;
}

interface Sample {
  pauseMs: number;
  pages: number;
  elapsedMs: number;
}

export class AdaptiveInterval {
  /** The last INTERVAL_AUTO_SAMPLES incremental checkpoints, oldest first. */
  private readonly samples: Sample[] = [];
  /** In [minMs, maxMs] always. */
  private current: number;
  private fixedMs = 0;
  private perPageMs = 0;
  private rate = 0;
  /** The samples' own paused share: their pauses over their run time. */
  private measured = 0;

  constructor(
    readonly minMs: number,
    readonly maxMs: number,
    readonly maxShare: number,
    startMs = maxMs,
  ) {
    assert(Number.isFinite(minMs) && minMs >= 1 && maxMs >= minMs, `interval bounds [${minMs}, ${maxMs}] ms`);
    assert(maxShare > 0 && maxShare <= 1, `max pause share ${maxShare} outside (0, 1]`);
    this.current = Math.min(maxMs, Math.max(minMs, startMs));
  }

  get intervalMs(): number {
    return this.current;
  }

  /** An incremental checkpoint paused the guest pauseMs for pages captured over elapsedMs of its run. */
  observe(pauseMs: number, pages: number, elapsedMs: number): void {
    assert(pauseMs >= 0 && pages >= 0 && elapsedMs >= 0, `sample ${pauseMs} ms, ${pages} pages, ${elapsedMs} ms`);
    this.samples.push({ pauseMs, pages, elapsedMs });
    if (this.samples.length > INTERVAL_AUTO_SAMPLES) this.samples.shift();
    this.fit();
    // Never shorter while the samples' own paused share is over the bound: near the floor the
    // fitted fixed part can sit below the mean pause and make short intervals look cheaper.
    const ideal = this.measured > this.maxShare ? Math.max(this.current, this.idealMs()) : this.idealMs();
    const stepped = Math.min(this.current * INTERVAL_AUTO_STEP, Math.max(this.current / INTERVAL_AUTO_STEP, ideal));
    this.current = Math.min(this.maxMs, Math.max(this.minMs, stepped));
    assert(this.current >= this.minMs && this.current <= this.maxMs, `interval ${this.current} ms out of bounds`);
  }

  /** The shortest interval whose predicted paused share is within the bound (before clamping). */
  private idealMs(): number {
    const room = this.maxShare - this.perPageMs * this.rate;
    if (room <= 0) return Infinity;
    return this.fixedMs / room;
  }

  private fit(): void {
    const n = this.samples.length;
    let sp = 0,
      sq = 0,
      se = 0,
      spp = 0,
      spq = 0,
      minPause = Infinity;
    for (const s of this.samples) {
      sp += s.pages;
      sq += s.pauseMs;
      se += s.elapsedMs;
      spp += s.pages * s.pages;
      spq += s.pages * s.pauseMs;
      minPause = Math.min(minPause, s.pauseMs);
    }
    this.rate = se > 0 ? sp / se : 0;
    this.measured = se > 0 ? sq / se : 0;
    const meanP = sp / n,
      meanQ = sq / n,
      varP = spp / n - meanP * meanP;
    // Least squares where the pages spread enough (a tenth of their mean) to tell the parts apart.
    if (n >= 4 && varP > (0.1 * meanP) ** 2) {
      const slope = (spq / n - meanP * meanQ) / varP;
      const intercept = meanQ - slope * meanP;
      if (slope >= 0 && intercept >= 0) {
        this.perPageMs = slope;
        this.fixedMs = intercept;
        return;
      }
    }
    this.fixedMs = minPause;
    this.perPageMs = meanP > 0 ? Math.max(0, meanQ - minPause) / meanP : 0;
  }

  model(): IntervalModel {
    const i = this.current;
    return {
      intervalMs: i,
      minMs: this.minMs,
      maxMs: this.maxMs,
      maxShare: this.maxShare,
      fixedMs: this.fixedMs,
      perPageMs: this.perPageMs,
      dirtyPagesPerMs: this.rate,
      predictedShare: this.samples.length ? (this.fixedMs + this.perPageMs * this.rate * i) / i : 0,
      samples: this.samples.length,
    };
  }
}

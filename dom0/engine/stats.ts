// stats: bounded sample windows for the figures `remusdb status` shows (pause p50/p99,
// ack latency) and running totals. Windows keep the last N samples only; a TimedWindow also
// keeps when each was taken, for a benchmark that measures a window of its own.
export class Window {
  private readonly xs: number[] = [];
  constructor(private readonly size = 1024) {}
  add(x: number): void {
    this.xs.push(x);
    if (this.xs.length > this.size) this.xs.shift();
  }
  get count(): number {
    return this.xs.length;
  }
  quantile(q: number): number {
    if (!this.xs.length) return 0;
    const s = [...this.xs].sort((a, b) => a - b);
    return s[Math.min(s.length - 1, Math.floor(q * s.length))];
  }
}

/**
 * The last `size` samples with the wall-clock time (ms since the epoch) each was taken at: a
 * benchmark reads the ones of its measured window, in pieces (`remusdb bench multi`).
 */
export class TimedWindow {
  private readonly at: Float64Array;
  private readonly xs: Float64Array;
  private next = 0;
  private kept = 0;
  /** When the newest sample pushed out was taken (-Infinity: none yet). */
  private droppedAt = Number.NEGATIVE_INFINITY;
  constructor(readonly size = 4096) {
    this.at = new Float64Array(size);
    this.xs = new Float64Array(size);
  }
  add(at: number, x: number): void {
    if (this.kept === this.size) this.droppedAt = this.at[this.next];
    else this.kept++;
    this.at[this.next] = at;
    this.xs[this.next] = x;
    this.next = (this.next + 1) % this.size;
  }
  /** The samples taken in [from, to), oldest first; complete is false when some of them were pushed out already. */
  between(from: number, to: number): { at: number[]; values: number[]; complete: boolean } {
    const out = { at: [] as number[], values: [] as number[], complete: this.droppedAt < from };
    for (let i = 0; i < this.kept; i++) {
      const j = (this.next - this.kept + i + this.size) % this.size;
      if (this.at[j] < from || this.at[j] >= to) continue;
      out.at.push(this.at[j]);
      out.values.push(this.xs[j]);
    }
    return out;
  }
}

export interface PrimaryStats {
  state: 'connecting' | 'syncing' | 'precopy' | 'protected' | 'holding' | 'unprotected' | 'fenced' | 'stopped';
  epoch: number;
  ackedEpoch: number;
  checkpoints: number;
  dirtyPages: number;
  dirtyPagesLast: number;
  rawBytes: number;
  wireBytes: number;
  /** Page bytes captured per byte of page batches sent (compression ratio). */
  ratio: number;
  pauseMsP50: number;
  pauseMsP99: number;
  /** Pause of the last full-copy checkpoint (the first of a session), kept out of p50/p99. */
  fullPauseMs: number;
  /** That pause in parts (ms) and the pages it copied; null before the first full checkpoint. */
  fullPause: FullPauseParts | null;
  copyMsP50: number;
  ackMsP50: number;
  outputsHeld: number;
  lastAckAgeMs: number;
  sessions: number;
  /** Pages sent as disk references (read tracking). */
  diskRefPages: number;
  /** Last checkpoint at which the backup confirmed its disk equals ours (0: never). */
  diskVerifiedEpoch: number;
  backup: string | null;
  /** From the session's handshake to its first acknowledged checkpoint (0: not yet). */
  initialSyncMs: number;
  /** The session's disk copy, from the handshake to DISK_SYNC_END sent (ms; 0: none, or not done yet). */
  diskSyncMs: number;
  /** The live pre-copy under way (round, pages sent, MB/s), or null. */
  precopy: import('./precopy').PrecopyProgress | null;
  /** The primary's lineage id (what a continued session names, docs/protocol.md "Reconnect"). */
  lineage: string;
  /** How the last session began: continued (and what it cost) or full (and why). */
  lastSessionStart: import('./continuation').SessionStart | null;
  /** What starts a checkpoint before its interval (engine/pacing.ts). */
  trigger: import('./pacing').Trigger;
  /** The guest's paused share of the pause share window ending now, in [0, 1]. */
  pauseShare: number;
  /** The interval the next checkpoint is timed by (ms): the option's, or `--interval auto`'s choice. */
  intervalMs: number;
  /** With `--interval auto`: the cost model it chose by (engine/adaptive-interval.ts); else null. */
  intervalModel: import('./adaptive-interval').IntervalModel | null;
  /** Checkpoints started by a held output (trigger 'output'). */
  earlyCheckpoints: number;
  /** Checkpoints that started later than waiting outputs asked, because of the pause share bound. */
  checkpointsHeldBack: number;
  /** The guest's paused time in checkpoints that completed, full copies included (ms). */
  pausedMsTotal: number;
}

/**
 * Where a session's first checkpoint's pause went: stopping the vCPUs, the capture (for a
 * pre-copied session: the pages the last round left plus those written since, read once),
 * the disk's checksum as of the checkpoint, and resuming. pages: what the capture copied.
 */
export interface FullPauseParts {
  pages: number;
  suspendMs: number;
  captureMs: number;
  diskMs: number;
  resumeMs: number;
  /** Pause buffers allocated fresh so far (engine/resident-buffer.ts: the prepared one was short). */
  freshTakes: number;
}

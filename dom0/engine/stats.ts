// stats: bounded sample windows for the figures `remusdb status` shows (pause p50/p99,
// ack latency) and running totals. Windows keep the last N samples only.
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
  /** Checkpoints started by a held output (trigger 'output'). */
  earlyCheckpoints: number;
  /** Checkpoints that started later than waiting outputs asked, because of the pause share bound. */
  checkpointsHeldBack: number;
  /** The guest's paused time in checkpoints that completed, full copies included (ms). */
  pausedMsTotal: number;
}

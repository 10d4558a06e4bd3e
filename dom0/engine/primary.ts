// primary: the checkpoint loop of the protected host. Each epoch, in one function that reads
// in order: suspend → network barrier → capture dirty pages + device state → disk barrier →
// resume; then, while the guest runs, the captured checkpoint is encoded (page cache, codecs)
// and streamed, and the backup's ACK releases that epoch's outputs. At most maxInFlight
// checkpoints are taken but unacknowledged; past that the next suspend waits. Losing the
// backup leaves the guest running unprotected (outputs pass through) until a new backup
// session starts: with a full copy, or — when the backup kept the image this primary's
// checkpoints built (same lineage, docs/protocol.md "Reconnect") — with one checkpoint of the
// pages written since the backup's last acknowledgement, verified by region digests
// (engine/continuation.ts). TAKEOVER from the backup fences this copy.
// Pacing (engine/pacing.ts): the timer takes a checkpoint every interval; with trigger
// 'output' a protected output held in the open epoch also starts one at once (on the next
// turn, so a batch of outputs shares it) whenever none is being taken and fewer than
// maxInFlight are unacknowledged — unless that pause would take the guest's paused share over
// maxPauseShare, when it waits until it fits or for the timer.
import { randomBytes } from 'node:crypto';
import { assert } from '../assert';
import { ErrorCode, RemusError } from '../errors';
import type { Compressor } from '../memory/encodings';
import { PageEncoder } from '../memory/page-codec';
import {
  DISK_BUFFER_BYTES_DEFAULT,
  GUEST_STARVED_PAUSE_SHARE,
  INTERVAL_AUTO_MS_MIN,
  MAX_PAUSE_SHARE_DEFAULT,
  PAGE_BYTES,
} from '../limits';
import {
  PROTOCOL_VERSION,
  Rec,
  checkpointBegin,
  parseHeartbeat,
  checkpointEnd,
  heartbeatBody,
  jsonBody,
  parseAck,
  parseJson,
  parseTakeover,
  protocolError,
  withEpoch,
  diskRefsBody,
  diskScrubBody,
  diskVerifyBody,
  memoryVerifyBody,
  type DiskRefEntry,
} from '../protocol/records';
import type { Capture, Clock, DiskChecksum, DiskPort, Domain, Link, OutputGate, ScrubPick } from '../ports';
import { Window, type FullPauseParts, type PrimaryStats } from './stats';
import { capturedPages } from './captured-pages';
import {
  PAUSE_BUFFER_STEP_BYTES,
  ResidentBuffer,
  continuedPauseBufferPages,
  pauseBufferPages,
} from './resident-buffer';
import {
  LIVE_COLLECT_PAGES_PER_TURN,
  PRECOPY_BACKLOG_BYTES_MAX,
  PRECOPY_BATCH_PAGES_MAX,
  Precopy,
  collectRange,
  withPagesRead,
} from './precopy';
import { DIGEST_REGION_PAGES, PageCrcTable, UnackedPages, type SessionStart } from './continuation';
import { type PaceCause, PauseShare, type Trigger } from './pacing';
import { AdaptiveInterval } from './adaptive-interval';
import { backupDiskOf, type ContinueFrom } from './hello';

export type Phase =
  | 'suspend'
  | 'net-barrier'
  | 'capture'
  | 'disk-barrier'
  | 'resume'
  | 'stream-begin'
  | 'stream-batch'
  | 'stream-end'
  | 'ack'
  | 'release'
  | 'precopy-batch';

export interface PrimaryOptions {
  /** The interval between checkpoints (ms); with intervalAuto the longest one (the loss window). */
  intervalMs: number;
  /**
   * Choose the interval from what checkpoints cost (engine/adaptive-interval.ts): the shortest in
   * [INTERVAL_AUTO_MS_MIN, intervalMs] that keeps the guest paused at most maxPauseShare.
   */
  intervalAuto?: boolean;
  compressor: Compressor;
  cachePages: number;
  maxInFlight: number;
  heartbeatTimeoutMs: number;
  batchPagesMax: number;
  deviceStateMax: number;
  /**
   * After losing the backup, how long outputs stay held before the primary runs unprotected.
   * A backup that took over fences us within this window (TAKEOVER on reconnection), so
   * nothing it does not have reaches a client. Default 3 × heartbeatTimeoutMs.
   */
  holdOnLossMs?: number;
  /**
   * After each disk copy, checksum the whole disk at the session's first checkpoint (while
   * suspended: costs pause time in proportion to the disk) and have the backup compare.
   */
  verifyDisk?: boolean;
  /**
   * Check the disks equal in the background instead (blktap/disk-scrub.ts): every checkpoint
   * carries a few ranges' CRCs (DISK_SCRUB), no pause and no held ACK; a pass's last
   * checkpoint, acknowledged, verifies the disk. verifyDisk's first-checkpoint check is skipped.
   */
  diskScrub?: boolean;
  /** What the backup may buffer of unacknowledged disk writes (sent in HELLO). */
  diskBufferBytesMax?: number;
  /**
   * Silence tolerated before the session's first ACK (default COPY_SILENCE_MS): nothing is
   * protected yet, so a loss only restarts the copy, while a busy host (a multi-GiB copy)
   * can keep either side from answering for longer than the heartbeat timeout.
   */
  copySilenceMs?: number;
  /** Pre-copy a session's first checkpoint live when the domain can (default true). */
  precopy?: boolean;
  /** Pre-copy rounds stop once at most this many pages remain (default PRECOPY_REMAINING_PAGES_MIN). */
  precopyRemainingPagesMin?: number;
  /**
   * Pages whose dirty state one turn collects while the guest runs: a pre-copy round's end, a
   * continued session's start (default LIVE_COLLECT_PAGES_PER_TURN).
   */
  liveCollectPagesPerTurn?: number;
  /** The pre-copy waits while more than this is queued on the channel (default PRECOPY_BACKLOG_BYTES_MAX). */
  precopyBacklogBytesMax?: number;
  /**
   * Continue the backup's image after a loss when it kept ours (default true; needs a domain
   * whose memory can be read while suspended, Domain.live). False: every session is FULL.
   */
  continueSessions?: boolean;
  /** Pages per region of a continued session's memory digest (default DIGEST_REGION_PAGES). */
  digestRegionPages?: number;
  /**
   * What starts a checkpoint before the interval has passed (default 'timer': nothing).
   * 'output': a protected output held in the open epoch (needs a gate with watchHeld).
   */
  trigger?: Trigger;
  /** Output-triggered checkpoints keep the guest's paused share at most this (default MAX_PAUSE_SHARE_DEFAULT). */
  maxPauseShare?: number;
  /** The sliding window that share is measured over, ms (default PAUSE_SHARE_WINDOW_MS). */
  pauseShareWindowMs?: number;
}

/** Silence either side tolerates while a session has committed nothing yet (its first copy). */
export const COPY_SILENCE_MS = 10_000;

/** What a step returns after it has reported its own failure: runInOrder stops there. */
export const STEP_FAILED = Symbol('step failed');
const NO_PFNS = new Uint32Array(0);

/**
 * Runs steps in order. A step that returns a promise is awaited before the next; synchronous
 * steps run in the caller's turn (and their exceptions reach the caller: the fault
 * simulator's crashes unwind that way); a step that returns STEP_FAILED ends the run.
 */
export function runInOrder(steps: Array<() => unknown>, done: () => void, fail: (e: unknown) => void): void {
  const from = (i: number): void => {
    for (; i < steps.length; i++) {
      const r = steps[i]();
      if (r === STEP_FAILED) return;
      if (r instanceof Promise) {
        r.then(() => {
          try {
            from(i + 1);
          } catch (e) {
            fail(e);
          }
        }, fail);
        return;
      }
    }
    done();
  };
  from(0);
}

export interface PrimaryHooks {
  /** Called at every phase; the fault simulator crashes the primary from here. */
  phase?(phase: Phase, epoch: number): void;
  /** A checkpoint was captured (guest state summary at its boundary). */
  checkpoint?(epoch: number, info: Record<string, unknown>): void;
  /**
   * The guest was paused ms milliseconds for a checkpoint now counted in stats().checkpoints
   * (full: the first of a session, which stats() keeps out of the pause percentiles).
   */
  paused?(ms: number, full: boolean): void;
  /** Life events: protected, backup-lost (with reason), fenced. */
  event?(name: string, detail: Record<string, unknown>): void;
  /**
   * A checkpoint starts (before its suspend): why, and the pause the pacing predicted for it
   * (what an early one was admitted under the pause share bound with).
   */
  paced?(epoch: number, cause: PaceCause, predictedPauseMs: number): void;
  /**
   * Commit protection: what clients saw unprotected, per flow, since the last call (all
   * flows when full: a new backup knows nothing yet). Sent as NET_EXPOSURE every
   * EXPOSURE_TICK_MS while protected and with each FULL checkpoint, so the backup (on
   * another host) knows what to reset at failover, also when the primary dies mid-epoch.
   */
  netExposure?(full: boolean): Record<string, unknown> | null;
}

/** How often what clients saw unprotected is shipped to the backup (only when it changed). */
export const EXPOSURE_TICK_MS = 10;

/**
 * A captured checkpoint waiting to be streamed. begun: its CHECKPOINT_BEGIN already went out
 * (a pre-copied first checkpoint: sentPages starts with the pages the rounds sent).
 */
interface Pending {
  epoch: number;
  full: boolean;
  cap: Capture;
  next: number;
  sentPages: number;
  diskCrc: DiskChecksum | null;
  /** The scrub's ranges this checkpoint carries (--disk-scrub). */
  scrub: ScrubPick | null;
  begun: boolean;
  /** A continued session's first checkpoint: the region digests of memory at it (MEMORY_VERIFY). */
  memDigests: Uint32Array | null;
  /** Octets sent on the channel when it began (what a continued checkpoint cost). */
  sentMark: number;
}

export class Primary {
  private link: Link | null = null;
  private session: 'none' | 'hello' | 'syncing' | 'precopy' | 'active' = 'none';
  /** The live pre-copy of this session's first checkpoint, until that checkpoint is captured. */
  private precopy: Precopy | null = null;
  /** When the session's handshake was answered, and how long until its first ACK (0: not yet). */
  private sessionStartedAt = 0;
  private initialSyncMs = 0;
  private diskSyncMs = 0;
  private checkpointing = false;
  /** The checkpoint whose ACK also confirms the backup's disk checksum. */
  private verifyEpoch = 0;
  private state: PrimaryStats['state'] = 'connecting';
  private epoch = 0;
  private acked = 0;
  private sentEpoch = 0;
  private needFull = true;
  private queue: Pending[] = [];
  private streaming = false;
  private waitingForAck = false;
  private tickTimer: unknown = null;
  /** When tickTimer fires (Infinity: not armed). */
  private tickAt = Infinity;
  /** An output-triggered checkpoint armed for the next turn, or for when the pause share allows. */
  private earlyTimer: unknown = null;
  /** A protected output was held since the last network barrier (trigger 'output'). */
  private outputWaiting = false;
  /** Since when outputs wait that the pause share bound kept from starting a checkpoint (null: none). */
  private heldBackAt: number | null = null;
  /** True from a 'guest-starved' event until the paused share fell below half its bound again. */
  private starvedSaid = false;
  /** When the last full copy's pause ended (monotonic ms); -Infinity before the first. */
  private fullPauseEndMs = Number.NEGATIVE_INFINITY;
  private readonly pauses: PauseShare;
  /** With intervalAuto: picks the interval from the pauses it is told of; null: opts.intervalMs. */
  private readonly adaptive: AdaptiveInterval | null;
  /** When the last checkpoint suspended the guest (the start of the span the next one captures). */
  private lastSuspendAt = 0;
  private hbTimer: unknown = null;
  private exposureTimer: unknown = null;
  private holdTimer: unknown = null;
  private lastHeard = 0;
  /** The channel's drained octets at the last heartbeat check (bytes leaving the queue are life). */
  private lastDrainedBytes = 0;
  private lastSent = 0;
  private lastAckAt = 0;
  private readonly sentAt = new Map<number, number>();
  private readonly encoder: PageEncoder;
  private readonly pause = new Window();
  private readonly copy = new Window();
  private readonly ackLatency = new Window();
  private fullPauseMs = 0;
  private fullPause: FullPauseParts | null = null;
  /** Where a session's first pause reads the pages it adds to the capture (engine/resident-buffer.ts). */
  private readonly pauseBuffer = new ResidentBuffer();
  private totals = {
    checkpoints: 0,
    dirtyPages: 0,
    dirtyPagesLast: 0,
    rawBytes: 0,
    wireBytes: 0,
    sessions: 0,
    diskRefPages: 0,
    diskVerifiedEpoch: 0,
    earlyCheckpoints: 0,
    checkpointsHeldBack: 0,
    pausedMsTotal: 0,
  };
  /** Counts ended sessions: a checkpoint that outlives its session is not sent in the next one. */
  private sessionGen = 0;
  /** Every record octet sent (headers included). */
  private sentOctets = 0;

  // ---- continuation (docs/protocol.md "Reconnect") ---------------------------------------
  /** This primary's lineage: the history of its dirty tracking, for the life of this object. */
  readonly lineage = `l-${randomBytes(12).toString('hex')}`;
  /** Last epoch the backup acknowledged whose image a new session may continue (null: it must copy all). */
  private backupAcked: number | null = null;
  /** Pages of captured, unacknowledged checkpoints; null when this primary cannot continue. */
  private readonly unacked: UnackedPages | null;
  /** Per-page CRC32C of memory at the last capture (the continued checkpoint's digests). */
  private readonly pageCrcs: PageCrcTable | null;
  /** What this session's HELLO offered to continue from (null: it asked for a full copy). */
  private offered: ContinueFrom | null = null;
  /** The next checkpoint is a continued session's first. */
  private continuing = false;
  /** A continued session's collect of the cut's writes: the next pfn to walk; null when none is due. */
  private cutCollect: { at: number; into: Uint32Array | null } | null = null;
  /** Why the next session must copy all (a digest mismatch), until an ACK makes an image continuable again. */
  private fullReason: string | null = null;
  private lastSessionStart: SessionStart | null = null;

  constructor(
    private readonly domain: Domain,
    private readonly gate: OutputGate,
    private readonly clock: Clock,
    readonly opts: PrimaryOptions,
    private readonly hooks: PrimaryHooks = {},
    private readonly disk: DiskPort | null = null,
  ) {
    assert(opts.intervalMs >= 1 && opts.maxInFlight >= 1 && opts.heartbeatTimeoutMs > 0, 'primary options');
    if (opts.trigger === 'output' && !gate.watchHeld) {
      throw new RemusError(
        ErrorCode.BAD_ARGUMENT,
        "trigger 'output' needs an output buffer that tells when an output is held (nfqueue, a simulated " +
          "guest's own); this one cannot: use trigger 'timer'",
      );
    }
    this.pauses = new PauseShare(opts.maxPauseShare, opts.pauseShareWindowMs);
    this.adaptive = opts.intervalAuto
      ? new AdaptiveInterval(
          Math.min(INTERVAL_AUTO_MS_MIN, opts.intervalMs),
          opts.intervalMs,
          opts.maxPauseShare ?? MAX_PAUSE_SHARE_DEFAULT,
        )
      : null;
    this.encoder = new PageEncoder({
      cachePages: opts.cachePages,
      compressor: opts.compressor,
      batchPagesMax: opts.batchPagesMax,
    });
    const continues = opts.continueSessions !== false && !!domain.live;
    this.unacked = continues ? new UnackedPages(domain.pageCount, opts.maxInFlight + 2) : null;
    this.pageCrcs = continues ? new PageCrcTable(domain.pageCount) : null;
  }

  /**
   * Starts the epoch clock and heartbeats; the guest runs unprotected until a backup attaches.
   * holdOutputs: a previous protect of this domain died while the domain ran on (its lock was
   * left), so the backup may have taken over: outputs are held as after losing the backup
   * (holdOnLossMs), until the backup answers HELLO (it did not take over: they pass) or TAKEOVER
   * (this copy is fenced; they are dropped).
   */
  start(o: { holdOutputs?: boolean } = {}): void {
    assert(this.state === 'connecting', `start in state ${this.state}`);
    if (o.holdOutputs) this.holdOutputs('held-after-crash', 'a previous protect of this domain ended without stopping');
    else this.gate.setPassThrough(true);
    if (this.opts.trigger === 'output') this.gate.watchHeld!(() => this.onOutputHeld());
    this.scheduleTick(this.intervalMs());
    this.hbTimer = this.clock.setTimer(this.hbIntervalMs(), () => this.heartbeat());
    if (this.hooks.netExposure) this.exposureTimer = this.clock.setTimer(EXPOSURE_TICK_MS, () => this.sendExposure());
  }

  private sendExposure(): void {
    this.exposureTimer = this.clock.setTimer(EXPOSURE_TICK_MS, () => this.sendExposure());
    this.flushExposure();
  }

  /**
   * Ships what clients saw unprotected since the last time (commit protection's failover
   * resets); the net buffer calls it before the verdicts that release such packets, so the
   * record is on the channel first (a crash of this process still delivers it).
   */
  flushExposure(): void {
    if (!this.hooks.netExposure || !this.link || this.session !== 'active' || this.state !== 'protected') return;
    const x = this.hooks.netExposure!(false);
    if (x) this.send(Rec.NET_EXPOSURE, withEpoch(this.epoch, jsonBody(x)));
  }

  /** A new authenticated channel to a backup: handshake, then a full checkpoint. */
  attach(link: Link): void {
    assert(this.link === null, 'attach while a backup is attached');
    if (this.state === 'fenced' || this.state === 'stopped') {
      link.close();
      return;
    }
    this.link = link;
    this.session = 'hello';
    this.lastHeard = this.clock.now();
    link.onRecord((type, body) => this.guard(link, () => this.onRecord(type, body)));
    link.onClose((err) => {
      if (this.link !== link) return;
      if (err instanceof RemusError && err.code === ErrorCode.PROTOCOL)
        return this.guard(link, () => {
          throw err;
        });
      this.lose(
        err
          ? err.message
          : this.session === 'hello'
            ? 'the backup closed the connection before answering HELLO ' +
              '(it refused us, or one side uses TLS --psk-file and the other --insecure)'
            : 'backup closed the connection',
      );
    });
    const acked = this.unacked ? this.backupAcked : null;
    this.offered = acked !== null ? { ackedEpoch: acked, lastEpoch: this.epoch } : null;
    this.send(
      Rec.HELLO,
      jsonBody(
        {
          kind: this.domain.kind,
          domain: this.domain.name,
          pageCount: this.domain.pageCount,
          pageSize: PAGE_BYTES,
          compressor: this.opts.compressor,
          intervalMs: this.opts.intervalMs,
          heartbeatTimeoutMs: this.opts.heartbeatTimeoutMs,
          deviceStateMax: this.opts.deviceStateMax,
          diskBytes: this.disk?.sizeBytes ?? 0,
          diskBufferBytesMax: this.opts.diskBufferBytesMax ?? DISK_BUFFER_BYTES_DEFAULT,
          sessionId: `${this.domain.name}-${this.clock.now()}-${this.totals.sessions}`,
          ...(this.unacked ? { lineage: this.lineage, ...this.offered } : {}),
        },
        PROTOCOL_VERSION,
      ),
    );
    this.checkInvariants();
  }

  /** Ends protection on purpose (GOODBYE: the backup does not fail over). Idempotent. */
  stop(): void {
    if (this.state === 'stopped') return;
    if (this.link && this.session === 'active') this.send(Rec.GOODBYE, new Uint8Array(0));
    this.dropLink();
    this.state = 'stopped';
    if (this.opts.trigger === 'output') this.gate.watchHeld!(null);
    this.clearTimers();
    this.encoder.close();
    this.precopyEncoder?.close();
    this.checkInvariants();
  }

  get attached(): boolean {
    return this.link !== null;
  }

  stats(): PrimaryStats {
    return {
      state: this.state,
      epoch: this.epoch,
      ackedEpoch: this.acked,
      ...this.totals,
      pauseMsP50: this.pause.quantile(0.5),
      pauseMsP99: this.pause.quantile(0.99),
      fullPauseMs: this.fullPauseMs,
      fullPause: this.fullPause ? { ...this.fullPause } : null,
      copyMsP50: this.copy.quantile(0.5),
      ackMsP50: this.ackLatency.quantile(0.5),
      outputsHeld: this.gate.held,
      lastAckAgeMs: this.lastAckAt ? this.clock.now() - this.lastAckAt : -1,
      ratio: this.totals.wireBytes ? this.totals.rawBytes / this.totals.wireBytes : 0,
      backup: this.link?.remote ?? null,
      initialSyncMs: this.initialSyncMs,
      diskSyncMs: this.diskSyncMs,
      precopy: this.precopy?.progress(this.clock.now()) ?? null,
      lineage: this.lineage,
      lastSessionStart: this.lastSessionStart ? { ...this.lastSessionStart } : null,
      trigger: this.opts.trigger ?? 'timer',
      pauseShare: this.pauses.share(this.clock.now()),
      intervalMs: this.intervalMs(),
      intervalModel: this.adaptive?.model() ?? null,
    };
  }

  // ---- the checkpoint ----------------------------------------------------------------

  /**
   * Warns (once, until it recovers) when checkpoints leave the guest a sliver of the time. A
   * window that still holds a full copy's pause is not judged: that pause is the copy's, and
   * no interval would shorten it (the lab's first checkpoint pauses 3 s, before any other).
   */
  private sayIfStarved(): void {
    if (!this.starvedSaid && this.pauses.shareBound < GUEST_STARVED_PAUSE_SHARE) return; // most checkpoints: no scan
    const now = this.clock.now();
    if (now - this.pauses.windowMs < this.fullPauseEndMs) return;
    const share = this.pauses.share(now);
    if (!this.starvedSaid && share >= GUEST_STARVED_PAUSE_SHARE) {
      this.starvedSaid = true;
      const pauseMs = this.pause.quantile(0.5);
      this.hooks.event?.('guest-starved', { share, pauseMs, intervalMs: this.intervalMs(), auto: !!this.adaptive });
    } else if (this.starvedSaid && share < GUEST_STARVED_PAUSE_SHARE / 2) this.starvedSaid = false;
  }

  /** The interval the next checkpoint is timed by: the option's, or the adaptive choice. */
  private intervalMs(): number {
    return this.adaptive ? Math.round(this.adaptive.intervalMs) : this.opts.intervalMs;
  }

  private tick(): void {
    this.tickTimer = null;
    this.tickAt = Infinity;
    if (this.checkpointing) return; // a slow (asynchronous) checkpoint reschedules when it ends
    if (this.state !== 'protected') {
      this.scheduleTick(this.intervalMs());
      return;
    }
    if (this.epoch - this.acked >= this.opts.maxInFlight) {
      this.waitingForAck = true;
      return;
    }
    this.startCheckpoint('timer');
  }

  /** One checkpoint now; the timer restarts from its start, and waiting outputs may start the next. */
  private startCheckpoint(cause: PaceCause): void {
    this.clearEarly();
    if (this.tickTimer !== null) this.clock.clearTimer(this.tickTimer);
    this.tickTimer = null;
    this.tickAt = Infinity;
    if (this.heldBackAt !== null) this.totals.checkpointsHeldBack++;
    this.heldBackAt = null;
    if (cause === 'output') this.totals.earlyCheckpoints++;
    this.hooks.paced?.(this.epoch + 1, cause, this.pauses.predictMs());
    const started = this.clock.now();
    this.takeCheckpoint(() => {
      this.scheduleTick(Math.max(1, this.intervalMs() - (this.clock.now() - started)));
      this.armEarly();
      this.sayIfStarved();
      this.checkInvariants();
    });
  }

  // ---- output-triggered checkpoints (engine/pacing.ts) ------------------------------------

  /** The gate held a protected output in the open epoch. */
  private onOutputHeld(): void {
    this.outputWaiting = true;
    this.armEarly();
  }

  /** A checkpoint may start early: outputs wait, none is being taken, the pipeline has room. */
  private mayStartEarly(): boolean {
    return (
      this.opts.trigger === 'output' &&
      this.outputWaiting &&
      !this.checkpointing &&
      this.state === 'protected' &&
      this.epoch - this.acked < this.opts.maxInFlight
    );
  }

  /**
   * Arms the early checkpoint: on the next turn (outputs of this turn share it), or when the
   * pause share bound allows; not at all when the timer comes first (it carries the outputs).
   * Called again when a checkpoint ends and when an ack frees the pipeline.
   */
  private armEarly(): void {
    if (this.earlyTimer !== null || !this.mayStartEarly()) return;
    const now = this.clock.now(),
      at = this.pauses.earliestStart(now);
    if (at > now) this.heldBackAt ??= now;
    if (at >= this.tickAt) return;
    this.earlyTimer = this.clock.setTimer(at - now, () => this.early());
  }

  private early(): void {
    this.earlyTimer = null;
    if (!this.mayStartEarly()) return;
    if (this.pauses.earliestStart(this.clock.now()) > this.clock.now()) return this.armEarly(); // a pause since
    this.startCheckpoint('output');
  }

  private clearEarly(): void {
    if (this.earlyTimer !== null) this.clock.clearTimer(this.earlyTimer);
    this.earlyTimer = null;
  }

  /**
   * Suspend → network barrier → capture → disk barrier → resume. Reads in order; with a
   * synchronous domain the whole pause happens in this call.
   */
  private takeCheckpoint(then: () => void): void {
    const epoch = this.epoch + 1,
      full = this.needFull;
    const cont = !full && this.continuing; // a continued session's first: also every page since the last ack
    // A first checkpoint whose pages went in live rounds (engine/precopy.ts): copy only what remains.
    const pc = full || cont ? this.precopy : null;
    const gen = this.sessionGen;
    const t0 = this.clock.now();
    let t1 = 0,
      t2 = 0,
      t3 = 0,
      cap: Capture | null = null,
      info: Record<string, unknown> = {},
      diskCrc: DiskChecksum | null = null,
      scrub: ScrubPick | null = null;
    this.checkpointing = true;
    let suspended = false,
      barrierPlaced = false;
    const fail = (e: unknown): void => {
      this.checkpointing = false;
      // A failed checkpoint's pause is the guest's paused time too (kept out of the prediction).
      if (barrierPlaced) this.pauses.add(this.clock.now(), this.clock.now() - t0, true);
      // Outputs are labelled with this epoch once its barrier is placed: the number is spent
      // (they go with a later ack, or pass through when unprotected), and the next barrier
      // must be epoch + 1. A guest this checkpoint suspended is resumed (best effort).
      if (barrierPlaced) this.epoch = Math.max(this.epoch, epoch);
      // memory as captured, whatever became of it
      if (cap) this.pageCrcs?.update(cap.pfns, cap.count, capturedPages(cap, 0, cap.count));
      if (suspended) this.resumeAfterFailure();
      this.hooks.event?.('checkpoint-failed', { epoch, message: (e as Error).message });
      // The backup keeps its image for our reconnection only if we can go on: a domain that is
      // gone (destroyed, crashed) is the backup's to resume, so the connection just closes.
      const domainGone = e instanceof RemusError && e.code === ErrorCode.NO_DOMAIN;
      if (this.link) this.lose(`checkpoint ${epoch} failed: ${(e as Error).message}`, !domainGone);
      then();
    };
    // A domain call that throws synchronously (the sim vCPU did not stop: ERR_VCPU) fails
    // this checkpoint like a rejection would, instead of unwinding into the timer.
    const call = <T>(fn: () => T): T | typeof STEP_FAILED => {
      try {
        return fn();
      } catch (e) {
        fail(e);
        return STEP_FAILED;
      }
    };
    // Captured pages are listed as unacknowledged at once: a checkpoint that fails after its
    // capture took them from dirty tracking, and the next continued session must carry them.
    const took = (c: Capture): void => {
      cap = pc ? pc.finalCapture(c, this.pauseBuffer) : cont ? this.withUnacked(c) : c;
      if (!full) this.listUnacked(epoch, cap, cont);
    };
    runInOrder(
      [
        () => {
          this.hooks.phase?.('suspend', epoch);
          return call(() => this.domain.suspend());
        },
        () => {
          suspended = true;
          // A session's first checkpoint: outputs flowed until the guest stopped (they precede the
          // state it captures; Xen's libxc runs its live rounds before this suspend completes).
          if ((full || cont) && this.link && this.session === 'active') this.gate.setPassThrough(false);
          this.hooks.phase?.('net-barrier', epoch);
          this.gate.barrier(epoch);
          this.outputWaiting = false; // what was held so far is this epoch's (the barrier drained the queue)
          barrierPlaced = true;
          this.hooks.phase?.('capture', epoch);
          t1 = this.clock.now();
          const r = call(() => this.domain.capture(full && !pc));
          if (r === STEP_FAILED) return r;
          if (!(r instanceof Promise)) {
            took(r);
            return undefined;
          }
          return r.then(took);
        },
        () => {
          t2 = this.clock.now();
          this.copy.add(t2 - t1);
          info = this.domain.describe();
          if (this.opts.diskScrub) scrub = this.disk?.scrubPick?.() ?? null; // the disk as of this checkpoint
          if ((!full && !cont) || !this.checksDiskAtFirst || !this.disk?.checksum) return undefined;
          // Once per session: the disk as of this checkpoint, compared by the backup at its commit.
          const crc = this.disk.checksum();
          if (!(crc instanceof Promise)) {
            diskCrc = crc;
            return undefined;
          }
          return crc.then((c) => {
            diskCrc = c;
          });
        },
        () => {
          t3 = this.clock.now();
          this.hooks.phase?.('disk-barrier', epoch);
          this.disk?.barrier(epoch);
          this.hooks.phase?.('resume', epoch);
          suspended = false;
          return call(() => this.domain.resume());
        },
      ],
      () => {
        this.checkpointing = false;
        const pausedMs = this.domain.pausedMsLast ?? this.clock.now() - t0;
        if (full) {
          this.fullPauseMs = pausedMs;
          const t4 = this.clock.now();
          this.fullPauseEndMs = t4;
          const parts = { suspendMs: t1 - t0, captureMs: t2 - t1, diskMs: t3 - t2, resumeMs: t4 - t3 };
          this.fullPause = { pages: cap!.count, ...parts, freshTakes: this.pauseBuffer.freshTakes };
        } else this.pause.add(pausedMs);
        // The adaptive interval learns from checkpoints that hold one span's writes (a continued
        // session's first carries every page since the last ack; a full copy, all of them).
        if (!full && !cont && cap) this.adaptive?.observe(pausedMs, cap.count, t0 - this.lastSuspendAt);
        this.lastSuspendAt = t0;
        this.pauses.add(this.clock.now(), pausedMs, full);
        this.totals.pausedMsTotal += pausedMs;
        this.captured(epoch, gen, full, cont, cap!, info, { sum: diskCrc, scrub }, pc, pausedMs);
        then();
      },
      fail,
    );
  }

  private resumeAfterFailure(): void {
    try {
      const r = this.domain.resume();
      if (r instanceof Promise) r.catch((e: Error) => this.hooks.event?.('resume-failed', { message: e.message }));
    } catch (e) {
      this.hooks.event?.('resume-failed', { message: (e as Error).message });
    }
  }

  private captured(
    epoch: number,
    gen: number,
    full: boolean,
    cont: boolean,
    cap: Capture,
    info: Record<string, unknown>,
    disk: { sum: DiskChecksum | null; scrub: ScrubPick | null },
    pc: Precopy | null,
    pausedMs: number,
  ): void {
    // The table follows every capture in order, sent or not: its digests are memory's at the last one.
    this.pageCrcs?.update(cap.pfns, cap.count, capturedPages(cap, 0, cap.count));
    if (gen !== this.sessionGen || (!full && (this.needFull || (this.continuing && !cont)))) {
      // The session ended while this checkpoint ran (or a new one began: an asynchronous
      // domain): nobody will acknowledge this epoch; its outputs go with a later ack, and its
      // pages are listed as unacknowledged (a continued checkpoint carries them).
      this.epoch = this.acked = this.sentEpoch = epoch;
      return;
    }
    this.epoch = epoch;
    this.needFull = false;
    let memDigests: Uint32Array | null = null;
    if (cont) {
      this.continuing = false;
      memDigests = this.pageCrcs!.digests(this.opts.digestRegionPages ?? DIGEST_REGION_PAGES);
      // Every page written since the last ack: those it carries and those its live rounds sent.
      const pages = this.unacked?.pageEntries ?? cap.count;
      if (this.lastSessionStart) Object.assign(this.lastSessionStart, { epoch, pages });
    }
    this.totals.checkpoints++;
    this.totals.dirtyPages += cap.count;
    this.totals.dirtyPagesLast = cap.count;
    this.hooks.paused?.(pausedMs, full);
    this.hooks.checkpoint?.(epoch, info);
    const begun = pc !== null && pc === this.precopy;
    if (begun) this.precopy = null;
    const sentPages = begun ? pc.sentPages : 0;
    const { sum: diskCrc, scrub } = disk;
    const sentMark = begun ? this.precopyStartOctets : 0; // a begun checkpoint's bytes count from its BEGIN
    this.queue.push({ epoch, full, cap, next: 0, sentPages, diskCrc, scrub, begun, memDigests, sentMark });
    this.clock.defer(() => this.pump());
  }

  /** Asynchronous stage: encode and stream queued checkpoints, one batch per turn. */
  private pump(): void {
    if (this.streaming || this.queue.length === 0 || this.session !== 'active') return;
    this.streaming = true;
    const p = this.queue[0];
    this.hooks.phase?.('stream-begin', p.epoch);
    if (!p.begun) p.sentMark = this.sentOctets;
    if (!p.begun) this.send(Rec.CHECKPOINT_BEGIN, checkpointBegin(p.epoch, p.full));
    const regionPages = this.opts.digestRegionPages ?? DIGEST_REGION_PAGES;
    if (p.memDigests) this.send(Rec.MEMORY_VERIFY, memoryVerifyBody(p.epoch, regionPages, p.memDigests));
    if (p.diskCrc !== null) {
      this.send(Rec.DISK_VERIFY, diskVerifyBody(p.epoch, p.diskCrc));
      this.verifyEpoch = p.epoch;
    }
    if (p.scrub !== null) {
      this.send(Rec.DISK_SCRUB, diskScrubBody(p.epoch, p.scrub));
      if (p.scrub.passEnd) this.verifyEpoch = p.epoch;
    }
    const gen = this.sessionGen;
    this.clock.defer(() => this.streamBatch(p, gen));
  }

  /** gen: the session the stream began in; a later session's stream is not this chain's to end. */
  private streamBatch(p: Pending, gen: number): void {
    if (gen !== this.sessionGen) return; // dropLink already ended it (streaming = false)
    if (this.queue[0] !== p || this.session !== 'active') {
      this.streaming = false;
      return;
    }
    const n = Math.min(this.opts.batchPagesMax, p.cap.count - p.next);
    if (n > 0) {
      this.hooks.phase?.('stream-batch', p.epoch);
      const { pfns, pages, refs } = this.splitByReference(p, n);
      if (refs.length > 0) {
        this.send(Rec.DISK_REFS, diskRefsBody(p.epoch, refs));
        for (const r of refs) this.encoder.forget(r.pfn);
        this.totals.diskRefPages += refs.length;
      }
      if (pfns.length > 0) {
        const { container } = this.encoder.encode(pages, pfns);
        this.send(Rec.PAGE_BATCH, withEpoch(p.epoch, container));
      }
      this.totals.rawBytes += n * PAGE_BYTES;
      p.next += n;
      p.sentPages += n;
      this.clock.defer(() => this.streamBatch(p, gen));
      return;
    }
    const exposure = p.full ? (this.hooks.netExposure?.(true) ?? null) : null;
    if (exposure) this.send(Rec.NET_EXPOSURE, withEpoch(p.epoch, jsonBody(exposure)));
    this.send(Rec.DEVICE_STATE, withEpoch(p.epoch, p.cap.deviceState));
    this.hooks.phase?.('stream-end', p.epoch);
    this.send(Rec.CHECKPOINT_END, checkpointEnd(p.epoch, p.sentPages));
    if (p.memDigests && this.lastSessionStart) this.lastSessionStart.bytes = this.sentOctets - p.sentMark;
    this.sentAt.set(p.epoch, this.clock.now());
    this.sentEpoch = p.epoch;
    this.queue.shift();
    this.streaming = false;
    this.checkInvariants();
    this.clock.defer(() => this.pump());
  }

  /**
   * Read tracking: the pages of this batch that a disk block holds exactly go as references;
   * the rest are encoded. Without references the capture's memory is used as it is.
   */
  private splitByReference(p: Pending, n: number): { pfns: BigUint64Array; pages: Uint8Array; refs: DiskRefEntry[] } {
    const refs: DiskRefEntry[] = [];
    const kept: number[] = [];
    const found = this.disk?.references?.(capturedPages(p.cap, p.next, n), p.epoch) ?? null;
    for (let i = p.next; i < p.next + n; i++) {
      const ref = found?.[i - p.next] ?? null;
      if (ref) refs.push({ pfn: p.cap.pfns[i], ...ref });
      else kept.push(i);
    }
    if (refs.length === 0) {
      const pfns = new BigUint64Array(n);
      for (let i = 0; i < n; i++) pfns[i] = BigInt(p.cap.pfns[p.next + i]);
      return { pfns, pages: capturedPages(p.cap, p.next, n), refs };
    }
    const pfns = new BigUint64Array(kept.length),
      pages = new Uint8Array(kept.length * PAGE_BYTES);
    kept.forEach((i, k) => {
      pfns[k] = BigInt(p.cap.pfns[i]);
      pages.set(capturedPages(p.cap, i, 1), k * PAGE_BYTES);
    });
    return { pfns, pages, refs };
  }

  // ---- records from the backup ---------------------------------------------------------

  private onRecord(type: number, body: Buffer): void {
    this.lastHeard = this.clock.now();
    switch (type) {
      case Rec.HELLO_ACK:
        return this.onHelloAck(body);
      case Rec.ACK:
        return this.onAck(parseAck(body));
      case Rec.HEARTBEAT:
        parseHeartbeat(body);
        return;
      case Rec.TAKEOVER:
        return this.onTakeover(parseTakeover(body));
      case Rec.ERROR: {
        const { value } = parseJson(type, body, false);
        if (value.code === ErrorCode.MEMORY_DIVERGED) {
          // Its image is not ours: the next session copies all, and says why.
          this.backupAcked = null;
          this.unacked?.clear();
          const why = String(value.message).slice(0, 512);
          this.fullReason = `the backup's memory differed from ours after the continued checkpoint: ${why}`;
        }
        return this.lose(`backup reported ${String(value.code)}: ${String(value.message)}`);
      }
      default:
        throw protocolError(`unexpected record type ${type} at the primary`);
    }
  }

  private onHelloAck(body: Buffer): void {
    if (this.session !== 'hello') throw protocolError('HELLO_ACK outside the handshake');
    const { value } = parseJson(Rec.HELLO_ACK, body, false);
    if (value.accepted !== true) throw new RemusError(ErrorCode.HANDSHAKE, `backup refused: ${String(value.reason)}`);
    if (this.holdTimer !== null) {
      this.clock.clearTimer(this.holdTimer);
      this.holdTimer = null;
    }
    const start = (this.lastSessionStart = this.sessionStart(value));
    this.continuing = start.kind === 'continued';
    this.needFull = !this.continuing;
    this.pauseBuffer.release();
    // beginCheckpoints first collects the cut's writes (a range per turn); then the continued
    // checkpoint sends every unacknowledged page in live rounds, or, without them, reads them all
    // in its pause into a buffer written before it.
    this.cutCollect = this.continuing && this.domain.live ? { at: 0, into: null } : null;
    if (this.needFull) {
      this.backupAcked = null;
      this.unacked?.clear();
    } // the backup's image is overwritten
    this.hooks.event?.('session-start', { ...start });
    if (!this.ownershipProvable) this.sendOwnership();
    this.acked = this.epoch;
    this.sentEpoch = this.epoch;
    this.encoder.reset(); // a continued checkpoint too refers to no cached page: the backup's image may be ahead
    this.totals.sessions++;
    this.sessionStartedAt = this.clock.now();
    this.initialSyncMs = 0;
    this.diskSyncMs = 0;
    // The backup answered HELLO, so it did not take over, and until this session commits it has
    // nothing of ours to resume: outputs may flow — what a full copy's primary held, at once (a
    // Xen domain's first checkpoint, libxc's live rounds, can take minutes); any session's while
    // the backup's disk catches up, and checkpoints start when it has.
    if (this.needFull) this.gate.setPassThrough(true);
    if (!this.disk) return this.beginCheckpoints();
    this.session = 'syncing';
    this.state = 'syncing';
    this.gate.setPassThrough(true);
    const backupDisk = backupDiskOf(value, this.disk.sizeBytes);
    const differingBytes = backupDisk.continues ? backupDisk.differing.reduce((n, r) => n + r.lengthBytes, 0) : 0;
    this.hooks.event?.('disk-sync', { backup: this.link?.remote, wholeDisk: !backupDisk.continues, differingBytes });
    const link = this.link!;
    this.disk.connect(
      {
        send: (t, b) => this.send(t, b),
        get backlogBytes() {
          return link.backlogBytes;
        },
      },
      this.epoch + 1,
      backupDisk,
      () => {
        if (this.link !== link) return;
        this.diskSyncMs = Math.max(1, this.clock.now() - this.sessionStartedAt);
        if (this.opts.diskScrub) this.disk?.scrubStart?.();
        this.beginCheckpoints();
      },
      (reason) => {
        if (this.link === link) this.lose(reason, true);
      },
    );
    if (this.checksDiskAtFirst) this.disk.prepareChecksum?.();
  }

  /**
   * How this session begins: continued when our HELLO offered it and the backup kept an image
   * of our lineage at an epoch between our last acknowledged one and our last one; full
   * otherwise, with the reason (ours, or the backup's).
   */
  private sessionStart(ack: Record<string, unknown>): SessionStart {
    const offered = this.offered;
    if (!offered) {
      const cannot = this.domain.live ? 'continuing sessions is off' : "this domain's memory is read only by captures";
      const reason = !this.unacked
        ? cannot
        : (this.fullReason ??
          'the backup acknowledged no checkpoint of this primary yet (or not since its last full copy)');
      return { kind: 'full', reason };
    }
    if (ack.continues !== true) {
      const why = String(ack.reason ?? 'no reason given').slice(0, 512);
      return { kind: 'full', reason: `the backup cannot continue: ${why}` };
    }
    const kept = ack.epoch,
      { ackedEpoch, lastEpoch } = offered;
    if (typeof kept !== 'number' || !Number.isSafeInteger(kept) || kept < ackedEpoch || kept > lastEpoch) {
      throw protocolError(`HELLO_ACK continues from epoch ${String(kept)}, not one in ${ackedEpoch}..${lastEpoch}`);
    }
    return {
      kind: 'continued',
      reason: `the backup keeps checkpoint ${kept} of this primary (acknowledged: ${ackedEpoch})`,
      keptEpoch: kept,
      ackedEpoch,
      verified: false,
    };
  }

  /**
   * What the guest wrote while no session ran (a cut: seconds of writes), taken from dirty
   * tracking while it runs, one range of pages per turn (a whole walk is O(guest)), and listed
   * for the continued checkpoint, which reads those pages in its pause into the buffer
   * prepared for them. Left to the pause's own capture, they went to fresh memory and were
   * copied twice: 120–600 ms of pause after a 2 s cut (docs/scale.md).
   */
  private collectCutSome(live: NonNullable<Domain['live']>, c: NonNullable<Primary['cutCollect']>): void {
    c.into ??= new Uint32Array(live.pageCount);
    const r = collectRange(live, c.into, c.at, this.opts.liveCollectPagesPerTurn ?? LIVE_COLLECT_PAGES_PER_TURN);
    // Into unacked at once, range by range: a range is re-armed as it is collected, so its pages
    // must outlive this session if it is lost before the walk ends.
    this.unacked!.addCollected(c.into, r.count);
    c.at = r.end;
    if (c.at < live.pageCount) return;
    this.cutCollect = null;
    // Without live rounds the pause reads them all, into a buffer written before it.
    if (this.opts.precopy === false)
      this.pauseBuffer.reserve(continuedPauseBufferPages(this.unacked!.pageEntries) * PAGE_BYTES);
  }

  /** One turn of a continued checkpoint's preparation (the cut's collect, then its buffer); true once done. */
  private continuedReady(): boolean {
    const cut = this.cutCollect;
    if (!cut) return this.pauseBuffer.prepareSome(PAUSE_BUFFER_STEP_BYTES);
    this.collectCutSome(this.domain.live!, cut);
    return false;
  }

  /**
   * Lists the pages of checkpoint epoch as unacknowledged. A continued session's first stands
   * for every listed page (the older lists go): those it carries, and those its live rounds
   * sent before its pause, which the backup has only once this checkpoint is acknowledged.
   */
  private listUnacked(epoch: number, cap: Capture, cont: boolean): void {
    const u = this.unacked;
    if (!u) return;
    if (!cont) return u.add(epoch, cap.pfns, cap.count);
    const sentLive = u.missingFrom(cap.pfns, cap.count); // empty when its pause read them all
    const all = new Uint32Array(cap.count + sentLive.length);
    all.set(cap.pfns.subarray(0, cap.count));
    all.set(sentLive, cap.count);
    u.add(epoch, all, all.length, true);
    assert(u.epochs === 1 && u.pageEntries === all.length, 'a continued checkpoint lists every unacknowledged page');
  }

  /**
   * A continued session's first checkpoint without live rounds: the capture (pages written
   * since the last one) plus every page of an unacknowledged checkpoint, read now with the
   * guest suspended.
   */
  private withUnacked(cap: Capture): Capture {
    const extra = this.unacked!.missingFrom(cap.pfns, cap.count);
    return withPagesRead(cap, extra, this.domain.live!, this.pauseBuffer);
  }

  private beginCheckpoints(): void {
    const live = this.opts.precopy !== false ? this.domain.live : undefined;
    if (this.needFull && live) return this.startPrecopy(live, null);
    // A continued session sends the cut's writes in live rounds too, once it has collected them.
    if (this.continuing && live && !this.cutCollect)
      return this.startPrecopy(live, this.unacked!.missingFrom(NO_PFNS, 0));
    if (this.continuing && !this.continuedReady()) {
      const gen = this.sessionGen;
      this.clock.defer(() => {
        if (this.sessionGen === gen && this.continuing && this.link) this.beginCheckpoints();
      });
      return;
    }
    this.session = 'active';
    this.state = 'protected'; // outputs pass until the first checkpoint's barrier (takeCheckpoint)
    this.hooks.event?.('protected', { backup: this.link?.remote, epoch: this.epoch + 1, continued: this.continuing });
    if (this.tickTimer === null) this.scheduleTick(0);
    this.checkInvariants();
  }

  // ---- live pre-copy of the first checkpoint (engine/precopy.ts) ----------------------------

  /**
   * The first checkpoint opens now and fills while the guest runs unprotected (outputs flow):
   * a FULL one from every page (round0 null), or a continued one from the pages written since
   * the backup's last acknowledgement (round0: the unacknowledged pages, the cut's collected).
   * A continued session's rounds list what they collect as unacknowledged at once: the backup
   * decodes them in place, so a next session must send them again if this one is lost.
   */
  private startPrecopy(live: NonNullable<Domain['live']>, round0: Uint32Array | null): void {
    this.session = 'precopy';
    this.state = 'precopy';
    this.gate.setPassThrough(true);
    const batchPages = Math.min(this.opts.batchPagesMax, PRECOPY_BATCH_PAGES_MAX);
    const unacked = this.unacked;
    this.precopy = new Precopy(
      live,
      batchPages,
      this.clock.now(),
      { remainingPagesMin: this.opts.precopyRemainingPagesMin, collectPagesPerTurn: this.opts.liveCollectPagesPerTurn },
      round0 ? { round0, onCollect: (pfns, count) => unacked!.addCollected(pfns, count) } : {},
    );
    this.precopyMark = this.link!.queuedBytes ?? 0;
    this.precopyStartOctets = this.sentOctets;
    this.send(Rec.CHECKPOINT_BEGIN, checkpointBegin(this.epoch + 1, round0 === null));
    const pages = round0 ? round0.length : live.pageCount;
    this.hooks.event?.('precopy', { backup: this.link?.remote, pages, continued: round0 !== null });
    const link = this.link!;
    this.clock.defer(() => this.precopyStep(link));
  }

  /** One batch, or one range of a round's collect, per turn; waits while the backlog is high; then the final pause. */
  private precopyStep(link: Link): void {
    const pc = this.precopy;
    if (this.link !== link || this.session !== 'precopy' || !pc) return;
    if (!this.precopyMayQueue(link)) {
      this.clock.setTimer(1, () => this.precopyStep(link));
      return;
    }
    this.hooks.phase?.('precopy-batch', this.epoch + 1);
    const b = pc.nextBatch();
    if (b) {
      const { container } = this.bulkEncoder().encode(b.pages, BigUint64Array.from(b.pfns, BigInt));
      this.send(Rec.PAGE_BATCH, withEpoch(this.epoch + 1, container));
      this.pageCrcs?.update(b.pfns, b.pfns.length, b.pages);
      this.precopyMark = link.queuedBytes ?? 0;
      this.totals.rawBytes += b.pfns.length * PAGE_BYTES;
    } else if (pc.collectSome()) {
      const again = pc.endRound();
      // The round that just ended (endRound has moved to the next one when it goes on).
      this.hooks.event?.('precopy-round', {
        ...pc.progress(this.clock.now()),
        round: again ? pc.round - 1 : pc.round,
        final: !again,
      });
      if (this.precopy !== pc || this.link !== link) return; // the session ended meanwhile (a hook, a send)
      if (!again) {
        this.pauseBuffer.prepare(pauseBufferPages(pc.pending.length) * PAGE_BYTES);
        return this.catchUpDisk(() => {
          if (this.precopy === pc && this.link === link && this.session === 'precopy') this.finishPrecopy(pc);
        });
      }
    }
    this.clock.defer(() => this.precopyStep(link));
  }

  /**
   * The pre-copy's encoder: per-page LZ4 without a cache (no zstd stage), about twice the
   * speed of the zstd batches on guest memory (730 against 380 MB/s, one core) for a lower
   * ratio (2.9 against 5.0): a bulk copy is bound by CPU, not by the link. The checkpoints'
   * encoder keeps its cache for the steady state. Plain Remus (-u) sends raw here too.
   */
  private bulkEncoder(): PageEncoder {
    if (this.opts.compressor === 'none') return this.encoder;
    this.precopyEncoder ??= new PageEncoder({
      cachePages: 0,
      compressor: 'lz4',
      batchPagesMax: this.opts.batchPagesMax,
    });
    return this.precopyEncoder;
  }

  private precopyEncoder: PageEncoder | null = null;
  /** sentOctets when the pre-copy began: its checkpoint's bytes count from there (status). */
  private precopyStartOctets = 0;
  /** Where the last pre-copy batch ends in the channel's queue (Link.queuedBytes then). */
  private precopyMark = 0;

  /**
   * Pacing: another batch may be queued while the backlog is under the bound, or — when other
   * traffic (disk writes, heartbeats) keeps it above — once the queue has drained to within
   * the bound of our last batch's end: the pre-copy never starves, and its own bytes queued
   * stay under the bound.
   */
  private precopyMayQueue(link: Link): boolean {
    const max = this.opts.precopyBacklogBytesMax ?? PRECOPY_BACKLOG_BYTES_MAX;
    if (link.backlogBytes <= max) return true;
    return link.drainedBytes !== undefined && link.drainedBytes + max >= this.precopyMark;
  }

  /**
   * Before the first checkpoint of a session that verifies its disk: the ranges the read-ahead
   * has not read since they were written are read now, while the guest runs, so that its pause
   * reads only what is written from here on (blktap/range-crcs.ts, catchUp). A failed read is
   * left to the checksum, which reads it again.
   */
  private catchUpDisk(then: () => void): void {
    const disk = this.disk;
    if (!disk?.catchUpChecksum || !this.checksDiskAtFirst) return then();
    const read = disk.catchUpChecksum();
    if (!(read instanceof Promise)) return then();
    read.then(then, then);
  }

  /** A session's first checkpoint checks the whole disk (--verify-disk, unless --disk-scrub checks it in ranges). */
  private get checksDiskAtFirst(): boolean {
    return this.opts.verifyDisk === true && !this.opts.diskScrub;
  }

  /** What remains is small: protection starts with the stop-and-copy that completes checkpoint 1. */
  private finishPrecopy(pc: Precopy): void {
    assert(this.precopy === pc && this.session === 'precopy', "the pre-copy that finishes is the session's");
    this.session = 'active';
    this.state = 'protected'; // outputs pass until the first checkpoint's barrier (takeCheckpoint)
    const continued = this.continuing;
    this.hooks.event?.('protected', {
      backup: this.link?.remote,
      epoch: this.epoch + 1,
      precopied: pc.sentPages,
      continued,
    });
    this.scheduleTick(0);
    this.checkInvariants();
  }

  private onAck(epoch: number): void {
    if (this.session !== 'active') throw protocolError('ACK outside a session');
    if (epoch !== this.acked + 1 || epoch > this.sentEpoch) {
      throw protocolError(`ACK ${epoch} out of order (acked ${this.acked}, sent ${this.sentEpoch})`);
    }
    this.hooks.phase?.('ack', epoch);
    this.acked = epoch;
    this.lastAckAt = this.clock.now();
    if (this.unacked) {
      this.backupAcked = epoch;
      this.unacked.acked(epoch);
      this.fullReason = null;
    }
    const st = this.lastSessionStart;
    if (st?.kind === 'continued' && st.epoch === epoch) {
      st.verified = true;
      this.hooks.event?.('continued', { ...st });
    }
    if (this.initialSyncMs === 0) this.initialSyncMs = Math.max(1, this.lastAckAt - this.sessionStartedAt);
    const sent = this.sentAt.get(epoch);
    if (sent !== undefined) {
      this.ackLatency.add(this.lastAckAt - sent);
      this.sentAt.delete(epoch);
    }
    this.hooks.phase?.('release', epoch);
    this.gate.release(epoch);
    this.disk?.acked(epoch);
    if (epoch === this.verifyEpoch) {
      this.totals.diskVerifiedEpoch = epoch;
      this.hooks.event?.('disk-verified', { epoch });
    }
    if (this.waitingForAck) {
      this.waitingForAck = false;
      this.scheduleTick(0);
    }
    this.armEarly();
  }

  /**
   * Coordination: whether this primary can prove it owns the domain now. When it cannot (it
   * reaches no etcd quorum), the backup is told (OWNERSHIP) and claims the key: if the lease
   * really ends, the backup takes over and fences this copy with TAKEOVER; if it is renewed,
   * the claim never wins and is cancelled when this primary says so. Repeated with every
   * heartbeat and at each new session while unprovable.
   */
  reportOwnership(provable: boolean): void {
    this.ownershipProvable = provable;
    this.sendOwnership();
  }

  private ownershipProvable = true;

  private sendOwnership(): void {
    if (!this.link || this.session === 'hello') return;
    this.send(Rec.OWNERSHIP, jsonBody({ provable: this.ownershipProvable }));
  }

  /**
   * The coordination service says this host no longer owns the domain (its lease ended): a
   * backup may run it now, so this copy stops for good, as on TAKEOVER. Idempotent.
   */
  ownershipLost(reason: string): void {
    if (this.state === 'fenced' || this.state === 'stopped') return;
    this.hooks.event?.('ownership-lost', { reason, epoch: this.epoch });
    this.onTakeover(this.acked);
  }

  private onTakeover(epoch: number): void {
    this.hooks.event?.('fenced', { epoch });
    this.state = 'fenced';
    this.domain.fence();
    this.gate.discard();
    this.dropLink();
    this.clearTimers();
    this.checkInvariants();
  }

  // ---- liveness --------------------------------------------------------------------------

  /** The heartbeat timeout once the session is protected and acknowledged; more during its first copy. */
  private silenceLimitMs(): number {
    const t = this.opts.heartbeatTimeoutMs;
    return this.session === 'active' && this.initialSyncMs > 0
      ? t
      : Math.max(t, this.opts.copySilenceMs ?? COPY_SILENCE_MS);
  }

  private hbIntervalMs(): number {
    return Math.max(5, Math.floor(this.opts.heartbeatTimeoutMs / 4));
  }

  private heartbeat(): void {
    this.hbTimer = this.clock.setTimer(this.hbIntervalMs(), () => this.heartbeat());
    if (!this.link) return;
    const now = this.clock.now();
    // Bytes the backup reads are life too: a backlog that drains means it is reading (TCP acks),
    // even while our own timers and its heartbeats queue behind a large copy.
    const drained = this.link.drainedBytes ?? -this.link.backlogBytes;
    if (drained > this.lastDrainedBytes) this.lastHeard = now;
    this.lastDrainedBytes = drained;
    const limitMs = this.silenceLimitMs();
    if (now - this.lastHeard > limitMs) {
      // Our own event loop may have stalled (a long full-copy pause) with the backup's
      // records unread: look again after pending input was read (a timer runs after the poll).
      const link = this.link;
      this.clock.setTimer(1, () => {
        const silent = this.clock.now() - this.lastHeard;
        if (this.link === link && silent > limitMs) this.lose(`backup silent for ${silent.toFixed(0)} ms`, true);
      });
      return;
    }
    if (this.session !== 'none' && this.session !== 'hello' && now - this.lastSent >= this.hbIntervalMs()) {
      this.send(Rec.HEARTBEAT, heartbeatBody(this.acked, now));
    }
    if (!this.ownershipProvable) this.sendOwnership(); // each beat: until the backup can act on it
  }

  /**
   * The backup is gone. The guest keeps running; outputs stay held for holdOnLossMs (a
   * backup that took over fences us meanwhile, see PrimaryOptions.holdOnLossMs), then the
   * primary runs unprotected and releases them. A new session re-protects: continued when the
   * backup kept our image, else with a full copy. tell: the channel may still work, so the
   * backup hears that we live (ERROR) before the close.
   */
  private lose(reason: string, tell = false): void {
    if (!this.link) return;
    // We live and reconnect: said before the close (when the channel still carries it), the
    // backup drops the session without failing over and keeps its image for a continued one.
    if (tell) {
      const l = this.link;
      const said = jsonBody({ code: ErrorCode.SESSION_ENDED, message: `${reason}; the primary reconnects` });
      try {
        l.send(Rec.ERROR, said);
      } catch {
        /* closing anyway */
      }
    }
    this.dropLink();
    if (this.state === 'fenced' || this.state === 'stopped') return;
    this.waitingForAck = false;
    if (this.tickTimer === null) this.scheduleTick(this.intervalMs());
    this.holdOutputs('backup-lost', reason);
  }

  /** Outputs held for holdOnLossMs (a backup that took over fences us meanwhile), then released. */
  private holdOutputs(event: 'backup-lost' | 'held-after-crash', reason: string): void {
    assert(this.link === null, 'outputs are held for a backup that may have taken over: no session');
    this.state = 'holding';
    if (this.holdTimer !== null) this.clock.clearTimer(this.holdTimer);
    this.holdTimer = this.clock.setTimer(this.opts.holdOnLossMs ?? 3 * this.opts.heartbeatTimeoutMs, () => {
      this.holdTimer = null;
      if (this.state !== 'holding') return;
      this.state = 'unprotected';
      this.gate.setPassThrough(true);
      this.acked = this.epoch;
      this.hooks.event?.('unprotected', { epoch: this.epoch });
      this.runGuestUnprotected();
      this.checkInvariants();
    });
    this.hooks.event?.(event, { reason, epoch: this.epoch });
    this.checkInvariants();
  }

  /** A guest left suspended by a crashed protect runs again with its outputs (Domain.runUnprotected). */
  private runGuestUnprotected(): void {
    assert(this.state === 'unprotected' && this.link === null, 'the guest runs on only once unprotected');
    try {
      this.domain.runUnprotected?.();
    } catch (e) {
      this.hooks.event?.('resume-failed', { message: (e as Error).message });
    }
  }

  private dropLink(): void {
    const l = this.link;
    this.link = null;
    this.sessionGen++;
    if (this.session !== 'none') this.disk?.disconnect();
    this.session = 'none';
    this.precopy = null;
    this.pauseBuffer.release();
    this.queue = [];
    this.streaming = false;
    this.sentAt.clear();
    l?.close();
  }

  private guard(link: Link, f: () => void): void {
    if (this.link !== link) return;
    try {
      f();
    } catch (e) {
      if (!(e instanceof RemusError)) throw e;
      try {
        link.send(Rec.ERROR, jsonBody({ code: e.code, message: e.message }));
      } catch {
        /* closing anyway */
      }
      this.lose(e.message);
    }
    this.checkInvariants();
  }

  /**
   * What holds whenever a handler returns (a record, a timer, a checkpoint's end): epochs in
   * order and at most maxInFlight unacknowledged, the session and the state in step, and the
   * queue of checkpoints to stream inside the session that captured them.
   */
  private checkInvariants(): void {
    const { acked, sentEpoch, epoch } = this;
    assert(acked <= epoch && sentEpoch <= epoch, `epochs: acked ${acked}, sent ${sentEpoch}, epoch ${epoch}`);
    assert(
      epoch - acked <= this.opts.maxInFlight,
      `${epoch - acked} checkpoints in flight (max ${this.opts.maxInFlight})`,
    );
    const streaming = this.session === 'syncing' || this.session === 'precopy' || this.session === 'active';
    assert(!streaming || acked <= sentEpoch, `acked ${acked} past sent ${sentEpoch} in a session`);
    this.checkSessionState();
    this.checkQueue();
  }

  /** A link iff a session; syncing, precopy and active sessions iff the matching state. */
  private checkSessionState(): void {
    const { session, state } = this;
    assert((this.link === null) === (session === 'none'), `session ${session} with link ${this.link !== null}`);
    assert((session === 'syncing') === (state === 'syncing'), `session ${session} in state ${state}`);
    assert((session === 'precopy') === (state === 'precopy'), `session ${session} in state ${state}`);
    assert((session === 'active') === (state === 'protected'), `session ${session} in state ${state}`);
    assert(
      session === 'precopy' ? this.precopy !== null : this.precopy === null || session === 'active',
      `session ${session} with pre-copy ${this.precopy !== null}`,
    );
  }

  /** Queued checkpoints: only in an active session, epochs rising past the last sent one. */
  private checkQueue(): void {
    const q = this.queue;
    assert(q.length === 0 || this.session === 'active', `${q.length} checkpoints queued in session ${this.session}`);
    assert(!this.streaming || q.length > 0, 'streaming an empty queue');
    let last = this.sentEpoch;
    for (const p of q) {
      assert(
        p.epoch > last && p.epoch <= this.epoch,
        `queued checkpoint ${p.epoch} after ${last} (epoch ${this.epoch})`,
      );
      last = p.epoch;
    }
  }

  private send(type: number, body: Uint8Array): void {
    if (!this.link) return;
    this.lastSent = this.clock.now();
    this.sentOctets += body.length + 16;
    if (type === Rec.PAGE_BATCH || type === Rec.DISK_REFS) this.totals.wireBytes += body.length + 16;
    this.link.send(type, body);
  }

  private scheduleTick(ms: number): void {
    if (this.tickTimer !== null) this.clock.clearTimer(this.tickTimer);
    this.tickTimer = null;
    // A checkpoint that ends after stop() or a fence must not re-arm the clock (it would keep the process alive).
    this.tickAt = Infinity;
    if (this.state === 'stopped' || this.state === 'fenced') return;
    this.tickTimer = this.clock.setTimer(ms, () => this.tick());
    this.tickAt = this.clock.now() + ms;
  }

  private clearTimers(): void {
    if (this.tickTimer !== null) this.clock.clearTimer(this.tickTimer);
    if (this.hbTimer !== null) this.clock.clearTimer(this.hbTimer);
    if (this.holdTimer !== null) this.clock.clearTimer(this.holdTimer);
    if (this.exposureTimer !== null) this.clock.clearTimer(this.exposureTimer);
    this.tickTimer = this.hbTimer = this.holdTimer = this.exposureTimer = null;
    this.tickAt = Infinity;
    this.clearEarly();
  }
}

// ports: the interfaces the checkpoint engine talks to. Adapters implement them for the
// built-in simulated domain, for Xen (later), and for the seeded fault simulator's test
// doubles. The engine never touches sockets, threads, timers or disk files directly.
import type { DiskWrite } from './protocol/records';

/** Time and scheduling. Real: timers and setImmediate; simulator: virtual time. */
export interface Clock {
  now(): number;
  setTimer(ms: number, fn: () => void): unknown;
  clearTimer(handle: unknown): void;
  /** Runs fn soon, after the current work: the asynchronous stages of a checkpoint. */
  defer(fn: () => void): void;
}

/** One checkpoint's memory and device state, copied while the domain was suspended. */
export interface Capture {
  pfns: Uint32Array;
  count: number;
  /**
   * count × 4096 octets, page i for pfns[i]; or, for a full capture of every page (pfns[i]
   * = i), the guest's memory in segments, so a capture is never one buffer past what a
   * JavaScript buffer or a small dom0 can hold (Xen: a PVH guest's pfns reach 4 GiB).
   */
  pages: Uint8Array | import('./memory/guest-memory').GuestMemory;
  deviceState: Uint8Array;
}

/** A result now (sim) or later (Xen: libxenguest's save loop runs on its own thread). */
export type MaybePromise<T> = T | Promise<T>;

/**
 * A domain the primary protects. suspend, capture and resume may complete later: the engine
 * then awaits each before the next phase, keeping the order. A synchronous domain keeps the
 * whole pause in one turn of the event loop (the simulator relies on that).
 */
export interface Domain {
  readonly kind: 'sim' | 'xen';
  readonly name: string;
  readonly pageCount: number;
  /** Stops the vCPUs at a safe point; completes when they are stopped. */
  suspend(): MaybePromise<void>;
  resume(): MaybePromise<void>;
  /** Pages written since the last capture (every page when full; each pfn once), and the device state. */
  capture(full: boolean): MaybePromise<Capture>;
  /** Summary of guest state for logs and checks (sim: steps, seq, hash). */
  describe(): Record<string, unknown>;
  /** Fencing: the backup took over; stop this copy for good. */
  fence(): void;
  /**
   * The primary runs unprotected: no backup answered while outputs were held. A guest that a
   * protect which crashed mid-checkpoint left suspended runs again (it waited only because a
   * backup might have taken over; with no backup heard, the held outputs go out too). Absent,
   * or nothing left suspended: nothing to do.
   */
  runUnprotected?(): void;
  /**
   * How long the guest was really stopped in the last checkpoint, when the domain knows better
   * than the span of suspend() to resume(): libxc runs a save's live pre-copy rounds inside
   * suspend() (Xen), and the guest runs all that time. Absent: the engine measures the span.
   */
  readonly pausedMsLast?: number;
  /**
   * Reads while the guest runs, and a re-arming dirty collect: the engine then pre-copies a
   * session's first checkpoint live (engine/precopy.ts). Absent: it is copied suspended.
   */
  readonly live?: import('./engine/precopy').LiveMemory | null;
}

/** A channel as the disk replicator sees it: records, and how much is still unsent. */
export interface DiskLink {
  /** body is encoded (copied) before send returns: the caller may reuse it. */
  send(type: number, body: Uint8Array): void;
  readonly backlogBytes: number;
}

/**
 * The primary's half of the replicated disk (blktap/replicator.ts). Writes the guest
 * completes are forwarded tagged with the epoch they belong to; the engine moves the tag at
 * the disk barrier and tells the port about acks and lost sessions.
 */
export interface DiskPort {
  readonly sizeBytes: number;
  /** Completed writes from now on belong to epoch + 1. Domain suspended, after the capture. */
  barrier(epoch: number): void;
  /** The backup committed epoch: its writes no longer need copying again if the session ends. */
  acked(epoch: number): void;
  /**
   * A session begins. The port first copies what the backup may lack (resync; everything
   * when the backup's disk does not continue an earlier session), then calls ready(); writes
   * go out tagged from nextEpoch on. overflow() reports that unacknowledged writes passed the
   * port's bound (the engine drops the session; the next one resyncs).
   */
  connect(
    link: DiskLink,
    nextEpoch: number,
    backup: BackupDisk,
    ready: () => void,
    overflow: (reason: string) => void,
  ): void;
  /** The session ended: writes of unacknowledged epochs, and all later ones, need a resync. */
  disconnect(): void;
  /**
   * Read tracking, per 4 KiB page of pages: a block holding exactly that page's content as the
   * backup will have it at checkpoint epoch, or null; null alone when no page of the batch can
   * match. Only exact matches (blktap/read-tracker.ts).
   */
  references?(pages: Uint8Array, epoch: number): Array<{ offsetBytes: number; crc32c: number } | null> | null;
  /** CRC32C of the whole disk and its ranges' (called with the domain suspended, before the disk barrier). */
  checksum?(): MaybePromise<DiskChecksum>;
  /** The session will want checksum() at its first checkpoint: read ahead while the guest runs. */
  prepareChecksum?(): void;
  /** That checkpoint comes next: read what is not current now, while the guest runs (ranges read). */
  catchUpChecksum?(): MaybePromise<number>;
  /**
   * The scrub (--disk-scrub): scrubStart() as a session's checkpoints begin; scrubPick() with
   * the domain suspended, before the disk barrier, at each checkpoint: ranges to send with it,
   * or null. A disconnect ends the pass.
   */
  scrubStart?(): void;
  scrubPick?(): ScrubPick | null;
}

/** A byte range of a disk. */
export interface DiskRange {
  offsetBytes: number;
  lengthBytes: number;
}

/**
 * What the backup's disk holds as a session begins (its HELLO_ACK): nothing to build on (the
 * whole disk is copied), or the disk of an earlier session, in which the ranges a disk check
 * found different are copied too, with the resync bitmap's blocks.
 */
export type BackupDisk = { continues: false } | { continues: true; differing: readonly DiskRange[] };

/** A range of the disk and its CRC32C at a checkpoint (DISK_SCRUB). */
export interface ScrubRange {
  offsetBytes: number;
  lengthBytes: number;
  crc32c: number;
}

/** The ranges a checkpoint carries for the scrub (blktap/disk-scrub.ts); passEnd: they complete a pass. */
export interface ScrubPick {
  ranges: ScrubRange[];
  passEnd: boolean;
  /** The pass's range width: each range starts at a multiple of it and is that long but the disk's last. */
  rangeBytes: number;
}

/** A whole-disk CRC32C with the per-range CRCs it combines (blktap/range-crcs.ts). */
export interface DiskChecksum {
  crc32c: number;
  rangeBytes: number;
  rangeCrcs: Uint32Array;
}

/**
 * The backup's copy of a domain's disk, as the backup engine uses it (blktap/replica-disk.ts
 * makes one of a disk file). Writes the primary forwards are held per epoch, within a byte
 * bound, and reach the disk only when their checkpoint commits — so the disk, like the memory
 * image, always equals the primary's at a checkpoint boundary (docs/disk.md).
 */
export interface ReplicaDisk {
  readonly sizeBytes: number;
  /**
   * The resync copy that opens a session (DISK_SYNC): straight to the disk. data is handed over
   * (it may be written later, off the event loop): the caller must not change it afterwards.
   */
  write(offsetBytes: number, data: Uint8Array): void;
  /**
   * The resync copy's ZEROES range: reads as zeros afterwards. Only pieces not already zero are
   * written, so a fresh sparse image stays sparse; an image of an earlier session is overwritten.
   */
  zeroSync(offsetBytes: number, lengthBytes: number): void;
  /** Reads the disk as it is (disk references resolve against it at commit); nothing may be pending. */
  read(offsetBytes: number, into: Uint8Array): void;
  /** Durable now (at failover, before the domain resumes here); nothing may be pending. */
  flush(): void;
  /**
   * Writes (resync, committed epochs) queued but not on the disk yet: a file is written on
   * libuv's pool, in order (blktap/disk-io-queue.ts); a disk in memory has none.
   */
  readonly pendingBytes: number;
  /**
   * false when nothing is pending (done is not called); else true, and done runs once every
   * write queued so far is on the disk — or with the I/O error that stopped them (ERR_IO).
   */
  afterWrites(done: (e: Error | null) => void): boolean;
  /**
   * The replica is let go with nothing of its session committed: queued writes not started are
   * dropped (the primary copies them again); done runs once none is under way (at once when idle).
   */
  abandonWrites(done: () => void): void;
  /**
   * Flow control: false when at most bytes are pending; else true, and done runs once they are.
   * One watch: a new one replaces the last, which then never runs.
   */
  whenPendingAtMost(bytes: number, done: () => void): boolean;
  /** Durable soon, without blocking (the failover flush makes it certain). */
  flushSoon(): void;
  /** A session begins: what is held is dropped (the primary resyncs it); from now on at most bytesMax is held. */
  holdFrom(bytesMax: number): void;
  /**
   * Holds one write until its epoch commits. Throws a protocol error for an epoch at or before
   * committed or before the last held one, ERR_DISK_BUFFER_FULL past the bound.
   */
  hold(w: DiskWrite, committed: number | null): void;
  /**
   * Applies the held writes of epochs ≤ epoch, in arrival order (flushing soon when one asked for
   * it), on this thread: nothing may be pending (the caller waited for afterWrites).
   */
  commit(epoch: number): { writes: number; bytes: number };
  /**
   * Applies one write now, after the held writes of its epoch and before (flushing soon when it
   * asks for durability); like the resync's, these may be queued for the disk (pendingBytes).
   */
  apply(w: DiskWrite): void;
  /** Drops everything held (failover, release): the ranges of the writes dropped. */
  discard(): DiskRange[];
  /**
   * CRC32C of the whole disk (the caller keeps it still): only what changed since it was last
   * known is read, off the event loop for a file; a disk in memory answers at once.
   */
  checksum(): MaybePromise<number>;
  /**
   * After checksum(), where this disk differs from the primary's table of range CRCs: byte
   * runs to copy again, or null when the tables cannot be compared (then the whole disk is).
   */
  differingRanges(theirs: { rangeBytes: number; rangeCrcs: Uint32Array }): DiskRange[] | null;
  /** The CRC32C of each range as the disk holds it now, read from the disk (a scrub's check; no pending write). */
  readCrcs(ranges: readonly DiskRange[]): MaybePromise<number[]>;
  /**
   * readCrcs begun early (at DISK_SCRUB): valid at the commit if nothing changed those ranges
   * since. Null: read them then.
   */
  readCrcsAhead?(ranges: readonly DiskRange[]): CrcsReadAhead | null;
}

/** A scrub's read of the backup's ranges, begun before the commit that compares them. */
export interface CrcsReadAhead {
  /** False once anything changed those ranges since the read began: the commit reads again. */
  stillValid(): boolean;
  crcs: MaybePromise<number[]>;
}

/** Where a backup keeps the replica and how it resumes it. */
export interface Replica {
  readonly pageCount: number;
  /** The backup's copy of the domain's disk, when the domain has one. */
  readonly disk?: ReplicaDisk | null;
  /** The committed memory image (decode base), in segments (any guest size). */
  readonly image: import('./memory/guest-memory').GuestMemory;
  /** Installs device state at commit. The checkpoint's pages were already written into image. */
  commitDeviceState(state: Uint8Array): void;
  /**
   * The engine is about to write these pages of the image (the next commit's). A replica that
   * still reads earlier committed checkpoints from the image (Xen: written out to xl a
   * record at a time) keeps their old contents first.
   */
  beforeImageWrite?(pfns: Iterable<number>): void;
  /**
   * Starts the domain from the committed image and device state (failover). lostDiskRanges:
   * the writes the backup held for unfinished epochs and discarded — the old primary's disk
   * has them, so reprotection copies those blocks back (SecondSite's rule).
   */
  resume(lost: { lostDiskRanges: DiskRange[] }): MaybePromise<Record<string, unknown>>;
  /** The backup's disk was the primary's own before (remusdb backup --reuse-disk): it continues. */
  readonly diskContinues?: boolean;
}

/** Outputs of the domain (network packets, disk completions), held per epoch. */
export interface OutputGate {
  /** Outputs produced from now on belong to epoch + 1. Called with the domain suspended. */
  barrier(epoch: number): void;
  /** The backup acknowledged epoch: release its outputs (and all earlier ones). */
  release(epoch: number): void;
  /** Unprotected: outputs pass straight through (and everything held is released). */
  setPassThrough(on: boolean): void;
  /** Fenced: drop everything held (it was speculative and a backup runs the domain now). */
  discard(): void;
  readonly held: number;
  /**
   * Output-triggered checkpoints (engine/pacing.ts): from now on call onHeld, in the turn it
   * happens or the next, whenever a protected output is held in the open epoch (never for one
   * that passes at once or through); null stops it. Absent: this gate cannot tell (sch_plug
   * holds packets in the kernel unseen) and the engine refuses trigger 'output' with it.
   */
  watchHeld?(onHeld: (() => void) | null): void;
}

/** A connected, authenticated replication channel carrying whole records. */
export interface Link {
  /** body is encoded (copied) before send returns: the caller may reuse it. */
  send(type: number, body: Uint8Array): void;
  /** Octets queued but not yet written to the connection. */
  readonly backlogBytes: number;
  /**
   * Octets queued since the link opened, and how many of them have left the queue (written
   * to the connection). A bulk sender paces itself by its own position in the queue; both
   * grow only. Absent: the sender paces by backlogBytes alone.
   */
  readonly queuedBytes?: number;
  readonly drainedBytes?: number;
  /** Ends the connection (idempotent). */
  close(): void;
  onRecord(cb: (type: number, body: Buffer) => void): void;
  /**
   * true: stop reading the connection (records already read are still delivered); false: read
   * again. The receiver's flow control (a backup whose disk is behind). Absent: always reads.
   */
  holdReading?(held: boolean): void;
  /** Called once when the channel ends; error when it broke. */
  onClose(cb: (error: Error | null) => void): void;
  readonly remote: string;
  /** The TLS cipher suite the connection runs (absent: plain TCP, or a link of the tests). */
  readonly cipher?: string;
}

/** What the owner of a domain hears from the coordination service (dom0/coordination). */
export type OwnershipEvent = { kind: 'renewed' } | { kind: 'lost'; reason: string };

/**
 * A domain's ownership, held in a coordination service (etcd): only the owner may release the
 * domain's outputs or resume it. validAt is provable in this host's monotonic time
 * (performance.now()); after 'lost' it is false for good and the owner fences itself.
 */
export interface Ownership {
  /** The owner key, e.g. /remusdb/v1/domains/<name>/owner. */
  readonly key: string;
  validAt(nowMs: number): boolean;
  /** Monotonic ms until which ownership is provable (−Infinity: not at all). */
  readonly validUntilMs: number;
  onChange(cb: (e: OwnershipEvent) => void): void;
  /** Ends ownership now (a planned stop): the lease is revoked, a successor need not wait for its TTL. Idempotent. */
  release(): Promise<void>;
}

/**
 * The backup's side of ownership: a takeover first claims the domain's key, which etcd gives
 * only once the old owner's lease ended. claim calls done(ownership) when won, or done(null,
 * why) when it gives up; the returned function cancels a claim in progress (the primary came
 * back). done is never called after cancel.
 */
export interface OwnershipClaimer {
  claim(domain: string, done: (won: Ownership | null, why: string) => void): () => void;
}

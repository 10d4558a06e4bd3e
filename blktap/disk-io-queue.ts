// disk-io-queue: the backup's writes to its copy of the disk, off the event loop. A write of
// the resync copy or of a committed epoch used to be a pwrite(2) on the main thread; while two
// processes wrote GiBs of images, writeback throttling held such a call 1.3–1.8 s, and the
// backup's heartbeats and ACKs waited with it (docs/scale.md). Here each write goes to
// libuv's thread pool, several at once (DISK_IO_IN_FLIGHT_MAX) but in the order given where
// order matters: a write starts only when none under way overlaps it, so a later write to
// the same blocks lands after an earlier one; a zero range runs alone. A read or checksum
// that waits for afterWrites() sees them all. A write not yet started that a later one to
// the same range replaces is dropped. What is queued is bounded by its caller (the backup
// stops reading the link past DISK_IO_QUEUE_BYTES_HIGH); the queue itself only counts it.
//
// A target without writeAsync (a disk in memory: tests, the simulator's default) is written
// at once, as before: nothing is ever pending. After a failed write the queue is broken: what
// was queued behind it is dropped (the disk no longer equals any checkpoint), afterWrites
// reports the error, and enqueueing throws it (ERR_IO).
import { assert } from '../dom0/assert';
import { ErrorCode, RemusError } from '../dom0/errors';
import { isZero } from './disk-source';
import type { DiskTarget } from './epoch-buffer';

/**
 * A target that can write on a thread pool (BlockFile), or on a simulated clock (tests).
 * readAsync, where present, reads on the pool too (a sparse zero range checks what is there).
 */
export interface AsyncDiskTarget extends DiskTarget {
  writeAsync(offsetBytes: number, data: Uint8Array, done: (e: Error | null) => void): void;
  readAsync?(offsetBytes: number, into: Uint8Array): Promise<void>;
}

export function canWriteAsync(t: DiskTarget): t is AsyncDiskTarget {
  return typeof (t as Partial<AsyncDiskTarget>).writeAsync === 'function';
}

/** data; or zeroBytes of zeros, written only where the disk is not zero yet when sparse. */
type Op = { offsetBytes: number; data: Uint8Array } | { offsetBytes: number; zeroBytes: number; sparse: boolean };

/** Zeros written (or checked) per step: a ZEROES record or a zero range of the resync may be GiBs. */
export const ZERO_PIECE_BYTES = 1024 * 1024;
const ZERO_PIECE = new Uint8Array(ZERO_PIECE_BYTES);
/**
 * Writes under way at once. One at a time, the queue moved one write per turn of the backup's
 * event loop (a pool round trip each): with the loop busy applying a copy, the guest's writes
 * of a pre-copy piled up and the first commit waited 0.6–0.8 s for them (docs/scale.md).
 */
export const DISK_IO_IN_FLIGHT_MAX = 32;

export class DiskIoQueue {
  /**
   * ops[head..) are not done (done ones before `started` are null); ops[head..started) are
   * under way or done, ops[started..) not started. Order holds where it matters: an op starts
   * only when nothing under way overlaps it (so every earlier op on its blocks has landed), and
   * a zero range runs alone.
   */
  private ops: Array<Op | null> = [];
  private head = 0;
  private started = 0;
  /** Ops under way (at most DISK_IO_IN_FLIGHT_MAX), with their ranges; a zero range alone. */
  private readonly underWay = new Map<number, { offsetBytes: number; endBytes: number }>();
  /** The last write not yet started to each exact range (`offset:length`): a later one to it absorbs it. */
  private readonly waiting = new Map<string, number>();
  /** The zero range under way (its index) and the piece being written or checked. */
  private zeroUnderWay: { index: number; pieceBytes: number } | null = null;
  /** Bytes queued or under way, not yet on the target. */
  private pending = 0;
  private waiters: Array<(e: Error | null) => void> = [];
  private failed: Error | null = null;
  /** The sparse zero range's read buffer, made at its first use. */
  private checkBuf: Uint8Array | null = null;
  readonly counters = {
    writes: 0,
    bytes: 0,
    zeroPiecesSkipped: 0,
    waits: 0,
    abandonedBytes: 0,
    inFlightMax: 0,
    /** Writes never started because a later one to the same range replaced them. */
    absorbed: 0,
  };

  constructor(private readonly target: DiskTarget) {}

  get pendingBytes(): number {
    return this.pending;
  }
  get isAsync(): boolean {
    return canWriteAsync(this.target);
  }

  /**
   * data must stay unchanged until it is written (the caller hands over a copy it owns). A write
   * not yet started to the same range is dropped: this one lands after everything queued
   * before it, so nothing of the dropped one would be left (a database rewrites its hot blocks).
   */
  write(offsetBytes: number, data: Uint8Array): void {
    if (!canWriteAsync(this.target)) return this.target.write(offsetBytes, data);
    const key = `${offsetBytes}:${data.length}`;
    const before = this.waiting.get(key);
    if (before !== undefined && before >= this.started) {
      const op = this.ops[before] as Extract<Op, { data: Uint8Array }>;
      this.ops[before] = null;
      this.pending -= op.data.length;
      this.counters.absorbed++;
    }
    this.waiting.set(key, this.ops.length);
    this.push({ offsetBytes, data }, data.length);
  }

  /** Zeros over the range; sparse: only pieces not zero already are written (a thin image stays thin). */
  zero(offsetBytes: number, lengthBytes: number, sparse = false): void {
    if (!canWriteAsync(this.target)) return this.zeroNow(offsetBytes, lengthBytes, sparse);
    this.push({ offsetBytes, zeroBytes: lengthBytes, sparse }, lengthBytes);
  }

  /**
   * false when every write queued so far is on the target (done is not called); else true,
   * and done runs once they are, or with the error that broke the queue.
   */
  afterWrites(done: (e: Error | null) => void): boolean {
    if (this.failed) {
      done(this.failed);
      return true;
    }
    if (this.pending === 0) return false;
    this.counters.waits++;
    this.waiters.push(done);
    return true;
  }

  /**
   * The writes' owner lets go (a session that committed nothing: the primary copies again what
   * it sent): writes not started are dropped; done runs once none is under way — at once when
   * idle — so the file may then be closed, or written by someone else, safely.
   */
  abandon(done: () => void): void {
    let kept = 0;
    for (const i of this.underWay.keys()) {
      const op = this.ops[i]!;
      if ('data' in op) kept += op.data.length;
    }
    const z = this.zeroUnderWay;
    if (z) {
      const op = this.ops[z.index] as Extract<Op, { zeroBytes: number }>;
      this.ops[z.index] = { ...op, zeroBytes: z.pieceBytes }; // ends with the piece under way
      kept += z.pieceBytes;
    }
    this.counters.abandonedBytes += this.pending - kept;
    this.ops.length = this.started;
    this.waiting.clear();
    this.pending = kept;
    this.checkLowWater();
    if (!this.afterWrites(() => done())) done();
  }

  private checkLowWater(): void {
    const low = this.lowWater;
    if (!low || this.pending > low.bytes) return;
    this.lowWater = null;
    low.done();
  }

  /**
   * done runs once the pending bytes are at most lowBytes (at once, returning false, when they
   * are already) — a flow control's low-water mark. One watch: a new one replaces the last
   * (whose owner, a session replaced by a reconnect, is gone), which then never runs.
   */
  whenAtMost(lowBytes: number, done: () => void): boolean {
    this.lowWater = null;
    if (this.failed || this.pending <= lowBytes) return false;
    this.lowWater = { bytes: lowBytes, done };
    return true;
  }
  private lowWater: { bytes: number; done: () => void } | null = null;

  private push(op: Op, bytes: number): void {
    if (this.failed) throw this.failed;
    this.ops.push(op);
    this.pending += bytes;
    this.next();
  }

  /**
   * Starts what may start: writes in order while fewer than DISK_IO_IN_FLIGHT_MAX are under
   * way and none of those overlaps the next (a pool runs them in any order); a zero range
   * once nothing else is under way, alone. When nothing is left, tells the waiters.
   */
  private next(): void {
    while (this.started < this.ops.length && this.zeroUnderWay === null) {
      const i = this.started,
        op = this.ops[i];
      if (op === null) {
        this.started++; // absorbed by a later write
        continue;
      }
      if (!('data' in op)) {
        if (this.underWay.size > 0) break;
        this.started++;
        this.startZero(i);
        break;
      }
      const range = { offsetBytes: op.offsetBytes, endBytes: op.offsetBytes + op.data.length };
      if (this.underWay.size >= DISK_IO_IN_FLIGHT_MAX || this.overlapsUnderWay(range)) break;
      this.started++;
      const key = `${op.offsetBytes}:${op.data.length}`;
      if (this.waiting.get(key) === i) this.waiting.delete(key);
      this.underWay.set(i, range);
      this.counters.inFlightMax = Math.max(this.counters.inFlightMax, this.underWay.size);
      (this.target as AsyncDiskTarget).writeAsync(op.offsetBytes, op.data, (e) => this.landed(i, e, op.data.length));
    }
    while (this.head < this.started && this.ops[this.head] === null) this.head++;
    if (this.head === this.ops.length && this.underWay.size === 0 && this.zeroUnderWay === null) this.drained();
  }

  private overlapsUnderWay(r: { offsetBytes: number; endBytes: number }): boolean {
    for (const u of this.underWay.values()) if (r.offsetBytes < u.endBytes && u.offsetBytes < r.endBytes) return true;
    return false;
  }

  /** Op i (a write, or a zero range's last piece) landed, or failed: the queue moves on. */
  private landed(i: number, e: Error | null, bytes: number): void {
    this.underWay.delete(i);
    if (this.failed) return; // a write that was under way when another failed: the queue is gone
    if (e) return this.fail(e);
    this.pending -= bytes;
    this.counters.bytes += bytes;
    this.counters.writes++;
    this.ops[i] = null;
    while (this.head < this.started && this.ops[this.head] === null) this.head++;
    this.checkLowWater(); // may queue more (and start it)
    this.next();
  }

  /** Zero range i, a piece at a time (each written, or checked and skipped when sparse). */
  private startZero(i: number): void {
    const op = this.ops[i] as Extract<Op, { zeroBytes: number }>;
    const piece = ZERO_PIECE.subarray(0, Math.min(ZERO_PIECE_BYTES, op.zeroBytes));
    this.zeroUnderWay = { index: i, pieceBytes: piece.length };
    const after = (e: Error | null): void => {
      this.zeroUnderWay = null;
      if (this.failed) return;
      if (e) return this.fail(e);
      const cur = this.ops[i] as Extract<Op, { zeroBytes: number }>; // abandon() may have cut it to this piece
      if (cur.zeroBytes === piece.length) return this.landed(i, null, piece.length);
      this.pending -= piece.length;
      this.counters.bytes += piece.length;
      this.ops[i] = { ...cur, offsetBytes: cur.offsetBytes + piece.length, zeroBytes: cur.zeroBytes - piece.length };
      this.checkLowWater();
      this.startZero(i);
    };
    const t = this.target as AsyncDiskTarget;
    if (!op.sparse) return t.writeAsync(op.offsetBytes, piece, after);
    const zeroOrWrite = (view: Uint8Array): void => {
      if (!isZero(view)) return t.writeAsync(op.offsetBytes, piece, after);
      this.counters.zeroPiecesSkipped++;
      after(null);
    };
    const view = (this.checkBuf ??= new Uint8Array(ZERO_PIECE_BYTES)).subarray(0, piece.length);
    // A target without readAsync is read here: the simulator's virtual clock runs no promise continuation.
    if (!t.readAsync) {
      t.read(op.offsetBytes, view);
      return zeroOrWrite(view);
    }
    t.readAsync(op.offsetBytes, view).then(
      () => zeroOrWrite(view),
      (e: Error) => after(e),
    );
  }

  private drained(): void {
    this.ops = [];
    this.head = this.started = 0;
    this.waiting.clear();
    assert(this.pending === 0, `${this.pending} bytes pending with no write queued`);
    const w = this.waiters;
    this.waiters = [];
    for (const done of w) done(null);
  }

  private zeroNow(offsetBytes: number, lengthBytes: number, sparse: boolean): void {
    if (!sparse) return this.target.zero(offsetBytes, lengthBytes);
    const buf = (this.checkBuf ??= new Uint8Array(ZERO_PIECE_BYTES));
    for (let done = 0; done < lengthBytes; done += buf.length) {
      const view = buf.subarray(0, Math.min(buf.length, lengthBytes - done));
      this.target.read(offsetBytes + done, view);
      if (isZero(view)) this.counters.zeroPiecesSkipped++;
      else this.target.zero(offsetBytes + done, view.length);
    }
  }

  private fail(e: Error): void {
    this.failed =
      e instanceof RemusError ? e : new RemusError(ErrorCode.IO, `backup disk write: ${e.message}`, {}, { cause: e });
    this.ops = [];
    this.head = this.started = 0;
    this.waiting.clear();
    this.underWay.clear();
    this.zeroUnderWay = null;
    this.pending = 0;
    const w = this.waiters;
    this.waiters = [];
    for (const done of w) done(this.failed);
    const low = this.lowWater;
    this.lowWater = null;
    low?.done();
  }
}

// disk-io-queue: the backup's writes to its copy of the disk, off the event loop. A write of
// the resync copy or of a committed epoch used to be a pwrite(2) on the main thread; while two
// processes wrote GiBs of images, writeback throttling held such a call 1.3–1.8 s, and the
// backup's heartbeats and ACKs waited with it (docs/scale.md). Here each write goes to
// libuv's thread pool, one at a time and in the order given: a later write to the same
// blocks lands after an earlier one, and a read or checksum that waits for afterWrites()
// sees them all. What is queued is bounded by its caller (the backup stops reading the link
// past DISK_IO_QUEUE_BYTES_HIGH); the queue itself only counts it.
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

export class DiskIoQueue {
  /** Ops from head on are to do (ops[head] may be under way); those before it are done (null). */
  private ops: Array<Op | null> = [];
  private head = 0;
  private running = false;
  /** Bytes queued or under way, not yet on the target. */
  private pending = 0;
  private waiters: Array<(e: Error | null) => void> = [];
  private failed: Error | null = null;
  /** The sparse zero range's read buffer, made at its first use. */
  private checkBuf: Uint8Array | null = null;
  readonly counters = { writes: 0, bytes: 0, zeroPiecesSkipped: 0, waits: 0, abandonedBytes: 0 };

  constructor(private readonly target: DiskTarget) {}

  get pendingBytes(): number {
    return this.pending;
  }
  get isAsync(): boolean {
    return canWriteAsync(this.target);
  }

  /** data must stay unchanged until it is written (the caller hands over a copy it owns). */
  write(offsetBytes: number, data: Uint8Array): void {
    if (!canWriteAsync(this.target)) return this.target.write(offsetBytes, data);
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
    if (this.running) {
      const op = this.ops[this.head]!;
      if ('data' in op) kept = op.data.length;
      else this.ops[this.head] = { ...op, zeroBytes: (kept = Math.min(ZERO_PIECE_BYTES, op.zeroBytes)) };
    }
    this.counters.abandonedBytes += this.pending - kept;
    this.ops.length = this.running ? this.head + 1 : this.head;
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
    if (!this.running) this.next();
  }

  /** Starts the write (or piece) at head; when none is left, tells the waiters. */
  private next(): void {
    if (this.head === this.ops.length) return this.drained();
    const op = this.ops[this.head]!;
    this.running = true;
    const after = (e: Error | null, bytes: number): void => {
      if (e) {
        this.running = false;
        return this.fail(e);
      }
      this.pending -= bytes;
      this.counters.bytes += bytes;
      const cur = this.ops[this.head]!; // abandon() may have cut a zero range to this piece
      if ('data' in cur || cur.zeroBytes === bytes) {
        this.ops[this.head++] = null;
        this.counters.writes++;
      } else {
        this.ops[this.head] = { ...cur, offsetBytes: cur.offsetBytes + bytes, zeroBytes: cur.zeroBytes - bytes };
      }
      this.running = false;
      this.checkLowWater(); // may queue more (and start it)
      if (!this.running) this.next();
    };
    const t = this.target as AsyncDiskTarget;
    if ('data' in op) return t.writeAsync(op.offsetBytes, op.data, (e) => after(e, op.data.length));
    const piece = ZERO_PIECE.subarray(0, Math.min(ZERO_PIECE_BYTES, op.zeroBytes));
    if (!op.sparse) return t.writeAsync(op.offsetBytes, piece, (e) => after(e, piece.length));
    const zeroOrWrite = (view: Uint8Array): void => {
      if (!isZero(view)) return t.writeAsync(op.offsetBytes, piece, (e) => after(e, piece.length));
      this.counters.zeroPiecesSkipped++;
      after(null, piece.length);
    };
    const view = (this.checkBuf ??= new Uint8Array(ZERO_PIECE_BYTES)).subarray(0, piece.length);
    // A target without readAsync is read here: the simulator's virtual clock runs no promise continuation.
    if (!t.readAsync) {
      t.read(op.offsetBytes, view);
      return zeroOrWrite(view);
    }
    t.readAsync(op.offsetBytes, view).then(
      () => zeroOrWrite(view),
      (e: Error) => after(e, 0),
    );
  }

  private drained(): void {
    this.ops = [];
    this.head = 0;
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
    this.head = 0;
    this.pending = 0;
    const w = this.waiters;
    this.waiters = [];
    for (const done of w) done(this.failed);
    const low = this.lowWater;
    this.lowWater = null;
    low?.done();
  }
}

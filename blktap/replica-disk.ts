// replica-disk: the backup engine's ReplicaDisk port (dom0/ports.ts) made of a disk file
// (BlockFile, or a test's disk in memory) and an EpochBuffer that holds the forwarded writes
// until their checkpoint commits. Whoever makes a replica makes its disk here and hands it
// over; the engine sees only the port, never the file or the buffer. Every change to the disk
// passes here, so its per-range CRC table (replica-range-crcs.ts) knows what changed, and the
// checksum at a verified commit reads only that. The resync copy's writes (GiBs) reach a file
// through a DiskIoQueue (libuv's pool, in order); a commit's are written at once, after the
// caller waited for afterWrites — as must anyone who reads or checksums the disk.
import type { CrcsReadAhead, DiskRange, MaybePromise, ReplicaDisk } from '../dom0/ports';
import type { DiskWrite } from '../dom0/protocol/records';
import { assert } from '../dom0/assert';
import { loadAddon } from '../dom0/native';
import { DiskIoQueue } from './disk-io-queue';
import { ReplicaRangeCrcs } from './replica-range-crcs';
import { type DiskTarget, EpochBuffer, applyWrite } from './epoch-buffer';

export class EpochHeldDisk<Target extends DiskTarget = DiskTarget> implements ReplicaDisk {
  /** Bound 0 until a session sets one (holdFrom): nothing is held outside a session. */
  private held = new EpochBuffer(0);

  /** CRC32C per 1 MiB range, known where nothing changed since it was computed. */
  readonly rangeCrcs: ReplicaRangeCrcs;
  /**
   * The target as committed writes reach it (each change makes its ranges unknown): at once
   * (commit), or queued behind the resync's writes (apply, before a session's first commit).
   */
  private readonly tracked: DiskTarget;
  private readonly trackedQueued: DiskTarget;
  /** The resync's writes (and apply's), in order: at once for a disk in memory, on libuv's pool for a file. */
  readonly io: DiskIoQueue;

  /** rangeCrcBytes: the CRC table's range (replica-range-crcs.ts); a test's small disk uses less. */
  constructor(
    readonly target: Target,
    rangeCrcBytes?: number,
  ) {
    const crcs = (this.rangeCrcs = new ReplicaRangeCrcs(target.sizeBytes, rangeCrcBytes));
    const io = (this.io = new DiskIoQueue(target));
    this.tracked = {
      sizeBytes: target.sizeBytes,
      write: (off, data) => {
        crcs.changed(off, data.length);
        target.write(off, data);
      },
      zero: (off, len) => {
        crcs.changed(off, len);
        target.zero(off, len);
      },
      read: (off, into) => this.read(off, into),
      flush: () => this.flush(),
      flushSoon: () => this.flushSoon(),
    };
    this.trackedQueued = {
      ...this.tracked,
      write: (off, data) => {
        crcs.changed(off, data.length);
        io.write(off, data); // apply()'s own copy
      },
      zero: (off, len) => {
        crcs.changed(off, len);
        io.zero(off, len);
      },
    };
  }

  get sizeBytes(): number {
    return this.target.sizeBytes;
  }
  /** data becomes the queue's until written: the caller's own copy (a record's body), never changed after. */
  write(offsetBytes: number, data: Uint8Array): void {
    this.io.write(offsetBytes, data);
    this.rangeCrcs.synced(offsetBytes, data.length, data);
  }
  read(offsetBytes: number, into: Uint8Array): void {
    this.assertWritten('read');
    this.target.read(offsetBytes, into);
  }
  zeroSync(offsetBytes: number, lengthBytes: number): void {
    this.io.zero(offsetBytes, lengthBytes, true);
    this.rangeCrcs.synced(offsetBytes, lengthBytes, null);
  }
  flush(): void {
    this.assertWritten('flush');
    this.target.flush();
  }
  /** An fdatasync on the pool once what is queued is written (the failover's flush makes it certain). */
  flushSoon(): void {
    const start = (): void => (this.target.flushSoon ?? this.target.flush).call(this.target);
    if (this.flushAfterWrites) return; // one waits already: it covers these writes too
    this.flushAfterWrites = true;
    const waits = this.io.afterWrites((e) => {
      this.flushAfterWrites = false;
      if (!e) start();
    });
    if (waits) return;
    this.flushAfterWrites = false;
    start();
  }
  /** flushSoon waits for the queued writes (once however often it is asked). */
  private flushAfterWrites = false;
  get pendingBytes(): number {
    return this.io.pendingBytes;
  }
  afterWrites(done: (e: Error | null) => void): boolean {
    return this.io.afterWrites(done);
  }
  whenPendingAtMost(bytes: number, done: () => void): boolean {
    return this.io.whenAtMost(bytes, done);
  }
  abandonWrites(done: () => void): void {
    this.io.abandon(done);
  }

  holdFrom(bytesMax: number): void {
    if (this.held.bytesMax !== bytesMax) this.held = new EpochBuffer(bytesMax);
    this.held.discard();
  }

  hold(w: DiskWrite, committed: number | null): void {
    this.held.add(w, committed);
  }

  /** Writes the epochs' held writes on this thread: the caller waited for afterWrites (no pending write). */
  commit(epoch: number): { writes: number; bytes: number } {
    this.assertWritten('commit');
    const { writes, bytes } = this.held.commit(epoch, this.tracked);
    return { writes, bytes };
  }

  apply(w: DiskWrite): void {
    this.held.commit(w.epoch, this.trackedQueued); // any held before it first, in order
    const own = this.io.isAsync && w.data ? { ...w, data: Buffer.from(w.data) } : w; // the record's bytes are not ours
    if (applyWrite(own, this.trackedQueued)) this.flushSoon();
  }

  discard(): DiskRange[] {
    return this.held.discard();
  }

  /** The whole disk's CRC32C (the caller keeps it still): only ranges changed since they were known are read. */
  checksum(): MaybePromise<number> {
    this.assertWritten('checksum');
    return this.rangeCrcs.checksum(this.target);
  }

  /**
   * readCrcs started now, before the commit that checks them (the scrub's ranges arrive with
   * the checkpoint's first records): valid at that commit if nothing changed those ranges
   * meanwhile. Null while resync writes are still queued (a read could pass one).
   */
  readCrcsAhead(ranges: readonly DiskRange[]): CrcsReadAhead | null {
    if (this.io.pendingBytes > 0) return null;
    const stampOf = (): number => ranges.reduce((n, r) => n + this.rangeCrcs.stamp(r.offsetBytes, r.lengthBytes), 0);
    const before = stampOf();
    const crcs = this.readCrcs(ranges);
    if (crcs instanceof Promise) crcs.catch(() => undefined); // the commit's read reports it
    return { stillValid: () => stampOf() === before, crcs };
  }

  /** Reads each range from the disk (not the CRC table: a scrub checks what the disk holds). */
  readCrcs(ranges: readonly DiskRange[]): MaybePromise<number[]> {
    this.assertWritten('readCrcs');
    const target = this.target as DiskTarget & { readAsync?(off: number, into: Uint8Array): Promise<void> };
    const crc32c = loadAddon().crc32c;
    if (!target.readAsync) {
      return ranges.map((r) => {
        const buf = new Uint8Array(r.lengthBytes);
        target.read(r.offsetBytes, buf);
        return crc32c(buf);
      });
    }
    return (async () => {
      const out: number[] = [];
      for (const r of ranges) {
        const buf = new Uint8Array(r.lengthBytes);
        await target.readAsync!(r.offsetBytes, buf);
        out.push(crc32c(buf));
      }
      return out;
    })();
  }

  differingRanges(theirs: { rangeBytes: number; rangeCrcs: Uint32Array }): DiskRange[] | null {
    return this.rangeCrcs.differingRanges(theirs);
  }

  /** The same on this thread (the failover's check of a simulated replica, before its guest runs). */
  checksumNow(): number {
    this.assertWritten('checksumNow');
    return this.rangeCrcs.checksumNow(this.target);
  }

  private assertWritten(what: string): void {
    assert(this.io.pendingBytes === 0, `${what} of the backup's disk with ${this.io.pendingBytes} bytes still queued`);
  }
}

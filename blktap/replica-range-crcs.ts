// replica-range-crcs: the backup's whole-disk CRC32C (the check of DISK_VERIFY at a commit)
// without reading its whole copy while the session waits: outputs are held until that commit
// is acknowledged, and reading 1–4 GiB took 1.1–3.6 s (docs/scale.md). Every change to the
// backup's disk goes through EpochHeldDisk, so the disk knows what changed, per range (64 KiB
// to 1 MiB by the disk's size, range-crcs.ts):
// a range the resync copy wrote whole (or as zeros) gets its CRC from the record itself, with
// no read; any other change (a committed write, a partial resync chunk) makes its range
// unknown. At the checksum only the unknown ranges are read; the ranges' CRCs combine in
// order (crc-combine.ts). After a full copy the check reads what was written since, not the
// disk. Test 51.10 fails when a committed write does not make its range unknown.
import { assert } from '../dom0/assert';
import type { DiskRange, MaybePromise } from '../dom0/ports';
import { loadAddon } from '../dom0/native';
import { combineRangeCrcs } from './crc-combine';
import type { DiskTarget } from './epoch-buffer';
import { rangeCrcBytesFor } from './range-crcs';
import { DISK_BLOCK_BYTES } from '../dom0/limits';

/** A target that can read on libuv's pool (BlockFile): the checksum's reads leave the loop free. */
type ReadableTarget = DiskTarget & { readAsync?(offsetBytes: number, into: Uint8Array): Promise<void> };

export class ReplicaRangeCrcs {
  readonly ranges: number;
  /** crcs[r] is range r's CRC32C while known[r] is 1. */
  private readonly crcs: Uint32Array;
  private readonly known: Uint8Array;
  /** Changes to range r so far (a read taken before them is stale: stamp()). */
  private readonly writes: Uint32Array;
  /** CRC32C of a whole range of zeros. */
  private readonly zeroRangeCrc: number;
  /** Ranges whose CRC came from a resync record, and ranges read by checksum(). */
  readonly counters = { rangesFromRecords: 0, rangesRead: 0 };

  /** rangeBytes: as the primary's (rangeCrcBytesFor the disk's size), or what a test picks. */
  constructor(
    readonly sizeBytes: number,
    readonly rangeBytes = rangeCrcBytesFor(sizeBytes),
  ) {
    assert(sizeBytes > 0 && rangeBytes > 0 && rangeBytes % DISK_BLOCK_BYTES === 0, 'ranges of whole blocks');
    this.ranges = Math.ceil(sizeBytes / rangeBytes);
    this.crcs = new Uint32Array(this.ranges);
    this.known = new Uint8Array(this.ranges);
    this.zeroRangeCrc = loadAddon().crc32c(new Uint8Array(rangeBytes));
    this.writes = new Uint32Array(this.ranges);
  }

  /** The changes so far to the ranges [offsetBytes, +lengthBytes) touches: equal later means none since. */
  stamp(offsetBytes: number, lengthBytes: number): number {
    let n = 0;
    this.forEachRange(offsetBytes, lengthBytes, (r) => {
      n += this.writes[r];
    });
    return n;
  }

  /** The resync copy wrote [offsetBytes, +lengthBytes): data, or zeros (null). Whole ranges learn their CRC. */
  synced(offsetBytes: number, lengthBytes: number, data: Uint8Array | null): void {
    assert(data === null || data.length === lengthBytes, 'synced data is the range');
    this.forEachRange(offsetBytes, lengthBytes, (r, start, len) => {
      this.writes[r]++;
      const whole = start >= offsetBytes && start + len <= offsetBytes + lengthBytes;
      if (!whole) {
        this.known[r] = 0;
        return;
      }
      const at = start - offsetBytes;
      this.crcs[r] = data
        ? loadAddon().crc32c(data.subarray(at, at + len))
        : len === this.rangeBytes
          ? this.zeroRangeCrc
          : loadAddon().crc32c(new Uint8Array(len));
      this.known[r] = 1;
      this.counters.rangesFromRecords++;
    });
  }

  /** Any other change to [offsetBytes, +lengthBytes): its ranges are read at the next checksum. */
  changed(offsetBytes: number, lengthBytes: number): void {
    this.forEachRange(offsetBytes, lengthBytes, (r) => {
      this.known[r] = 0;
      this.writes[r]++;
    });
  }

  /**
   * The whole disk's CRC32C now (the caller keeps the disk still): unknown ranges are read and
   * become known — on libuv's pool where the target can (a file), else at once (a disk in
   * memory: tests and the simulator, whose virtual clock runs no promise continuations).
   */
  checksum(target: ReadableTarget): MaybePromise<number> {
    if (!target.readAsync) return this.checksumNow(target);
    const unknown = this.unknownRanges(target);
    const buf = new Uint8Array(this.rangeBytes);
    return (async () => {
      for (const r of unknown) {
        const piece = buf.subarray(0, this.lengthOf(r));
        await target.readAsync!(r * this.rangeBytes, piece);
        this.learn(r, piece);
      }
      return this.combined();
    })();
  }

  /**
   * The same, reading on this thread: where nothing else may run meanwhile (a failover's check
   * before the guest resumes), and the unknown ranges are the few changed since the last one.
   */
  checksumNow(target: DiskTarget): number {
    const buf = new Uint8Array(this.rangeBytes);
    for (const r of this.unknownRanges(target)) {
      const piece = buf.subarray(0, this.lengthOf(r));
      target.read(r * this.rangeBytes, piece);
      this.learn(r, piece);
    }
    return this.combined();
  }

  /**
   * Where this disk differs from the primary's, by the primary's table of range CRCs (its
   * DISK_VERIFY), as byte runs (adjacent ranges merged): what a disk copy must cover to make the
   * two equal (the range CRCs' own odds of missing a difference, 2^-32 per range, as the whole
   * check's). Null where the tables cannot be compared: theirs not in whole multiples of our
   * ranges, of another disk size, or a range of ours unknown (right after checksum(), none is).
   */
  differingRanges(theirs: { rangeBytes: number; rangeCrcs: Uint32Array }): DiskRange[] | null {
    const per = theirs.rangeBytes / this.rangeBytes;
    if (!Number.isInteger(per) || theirs.rangeCrcs.length !== Math.ceil(this.sizeBytes / theirs.rangeBytes))
      return null;
    if (this.known.includes(0)) return null;
    const runs: DiskRange[] = [];
    for (let t = 0; t < theirs.rangeCrcs.length; t++) {
      const start = t * theirs.rangeBytes,
        len = Math.min(theirs.rangeBytes, this.sizeBytes - start);
      const ours = combineRangeCrcs(this.crcs.subarray(t * per, (t + 1) * per), this.rangeBytes, len);
      if (ours === theirs.rangeCrcs[t]) continue;
      const last = runs.at(-1);
      if (last && last.offsetBytes + last.lengthBytes === start) last.lengthBytes += len;
      else runs.push({ offsetBytes: start, lengthBytes: len });
    }
    return runs;
  }

  /** The ranges to read (and count as read) at a checksum. */
  private unknownRanges(target: DiskTarget): number[] {
    assert(target.sizeBytes === this.sizeBytes, 'the table is of this disk');
    const unknown: number[] = [];
    for (let r = 0; r < this.ranges; r++) if (!this.known[r]) unknown.push(r);
    this.counters.rangesRead += unknown.length;
    return unknown;
  }

  private learn(r: number, piece: Uint8Array): void {
    this.crcs[r] = loadAddon().crc32c(piece);
    this.known[r] = 1;
  }

  private combined(): number {
    return combineRangeCrcs(this.crcs, this.rangeBytes, this.sizeBytes);
  }

  private lengthOf(r: number): number {
    return Math.min(this.rangeBytes, this.sizeBytes - r * this.rangeBytes);
  }

  /** f(range, its start, its length) for every range that [offsetBytes, +lengthBytes) touches. */
  private forEachRange(offsetBytes: number, lengthBytes: number, f: (r: number, start: number, len: number) => void) {
    if (lengthBytes <= 0) return;
    assert(offsetBytes >= 0 && offsetBytes + lengthBytes <= this.sizeBytes, 'a change inside the disk');
    const last = Math.floor((offsetBytes + lengthBytes - 1) / this.rangeBytes);
    for (let r = Math.floor(offsetBytes / this.rangeBytes); r <= last; r++) f(r, r * this.rangeBytes, this.lengthOf(r));
  }
}

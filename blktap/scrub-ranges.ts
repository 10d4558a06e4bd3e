// scrub-ranges: the scrub's ranges over the disk's CRC table. The table's ranges follow the
// disk's size (64 KiB up to 16 GiB, range-crcs.ts) so that a checksum reads little again;
// the scrub keeps 1 MiB ranges whatever the table's, so that its pace per checkpoint (at most
// DISK_SCRUB_RANGES_MAX ranges) and its read-ahead stay as they were. A scrub range is `per`
// table ranges: current when all of them are, its CRC theirs combined (crc-combine.ts), read
// by reading those that are not current, one after the other.
import { assert } from '../dom0/assert';
import type { MaybePromise } from '../dom0/ports';
import { combineRangeCrcs } from './crc-combine';
import { RANGE_CRC_BYTES, type RangeCrcs } from './range-crcs';

export class ScrubRanges {
  readonly rangeBytes: number;
  readonly ranges: number;
  /** Table ranges per scrub range (1 when the table's are 1 MiB already). */
  private readonly per: number;
  private readonly crcs: Uint32Array;

  /** rangeBytes: the scrub's ranges, a whole number of the table's (RANGE_CRC_BYTES unless a test says). */
  constructor(
    private readonly table: RangeCrcs,
    rangeBytes = RANGE_CRC_BYTES,
  ) {
    this.per = Math.max(1, rangeBytes / table.rangeBytes);
    assert(Number.isInteger(this.per), "a scrub range is a whole number of the table's ranges");
    this.rangeBytes = table.rangeBytes * this.per;
    this.ranges = Math.ceil(table.ranges / this.per);
    this.crcs = new Uint32Array(this.per);
  }

  lengthOf(r: number): number {
    let n = 0;
    for (let m = this.first(r); m < this.end(r); m++) n += this.table.lengthOf(m);
    return n;
  }

  isCurrent(r: number): boolean {
    for (let m = this.first(r); m < this.end(r); m++) if (!this.table.isCurrent(m)) return false;
    return true;
  }

  /** The range's CRC32C (meaningful while isCurrent(r)). */
  crcOf(r: number): number {
    if (this.per === 1) return this.table.crcOf(r);
    const first = this.first(r),
      n = this.end(r) - first;
    for (let i = 0; i < n; i++) this.crcs[i] = this.table.crcOf(first + i);
    return combineRangeCrcs(this.crcs.subarray(0, n), this.table.rangeBytes, this.lengthOf(r));
  }

  /** Reads the table ranges of r that are not current (buf: a scrub range's bytes); whether r is current after. */
  readRange(r: number, buf: Uint8Array): MaybePromise<boolean> {
    assert(buf.length >= this.table.rangeBytes, 'a buffer for a table range');
    const piece = buf.subarray(0, this.table.rangeBytes);
    const from = (m: number): MaybePromise<boolean> => {
      for (; m < this.end(r); m++) {
        if (this.table.isCurrent(m)) continue;
        const got = this.table.readRange(m, piece);
        if (got instanceof Promise) return got.then(() => from(m + 1));
      }
      return this.isCurrent(r);
    };
    return from(this.first(r));
  }

  private first(r: number): number {
    return r * this.per;
  }

  private end(r: number): number {
    return Math.min((r + 1) * this.per, this.table.ranges);
  }
}

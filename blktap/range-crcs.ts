// range-crcs: the primary's whole-disk CRC32C (DISK_VERIFY) without reading the whole disk
// while the guest is suspended. That read cost ~1.3 s of pause per GiB (docs/scale.md, "Disks
// of real size"). From a session's start until its first checkpoint, while the guest runs, the
// disk is read in ranges (64 KiB to 1 MiB: rangeCrcBytesFor), again and again, and each range
// keeps its CRC with the sum of its blocks' write generations (block-generations.ts). A writer
// bumps a block's generation before it touches the disk and again after, so a range whose sum
// is unchanged and whose blocks are all even has not been written since it was read — not even
// by a write still in flight. At the checkpoint only the ranges written since are read; the
// whole-disk CRC is the ranges' CRCs combined in order (crc-combine.ts). Test 51.9 fails when
// the generation check is skipped (a range written after its read keeps its old CRC); end to
// end, a wrong CRC is the backup's ERR_DISK_DIVERGED (tests 44, 52 verify the disks equal
// through it).
import { assert } from '../dom0/assert';
import type { Clock, DiskChecksum, MaybePromise } from '../dom0/ports';
import { loadAddon } from '../dom0/native';
import { DISK_BLOCK_BYTES, DISK_VERIFY_RANGES_MAX } from '../dom0/limits';
import type { BlockGenerations } from './block-generations';
import { coarsenRangeCrcs, combineRangeCrcs } from './crc-combine';
import type { DiskSource } from './disk-source';

/** The largest range (a resync run covers whole ranges: its reads give them their CRCs). */
export const RANGE_CRC_BYTES = 1024 * 1024;
/** The smallest: the per-range work (a read, a CRC, a generation sum) stays well above its cost. */
export const RANGE_CRC_BYTES_MIN = 64 * 1024;
/** Ranges a disk is cut into, at most, before its ranges grow past RANGE_CRC_BYTES_MIN (a 3 MiB table). */
export const RANGE_CRC_COUNT_TARGET = 2 ** 18;

/**
 * The range of a disk's CRC table: as small as the table's bound allows, so that what a
 * checksum reads again for a write since the read-ahead (a whole range per written range,
 * with the guest suspended on the primary, outputs held on the backup) is 64 KiB, not 1 MiB:
 * 64 KiB up to 16 GiB, 256 KiB at 64 GiB, 1 MiB from 256 GiB. Both sides size theirs so, and
 * a whole resync run (1 MiB) still covers whole ranges.
 */
export function rangeCrcBytesFor(diskBytes: number): number {
  let bytes = RANGE_CRC_BYTES_MIN;
  while (bytes < RANGE_CRC_BYTES && Math.ceil(diskBytes / bytes) > RANGE_CRC_COUNT_TARGET) bytes *= 2;
  return bytes;
}
/** Ranges found current that one fill turn passes over (a generation sum each: 256 loads). */
const FILL_SKIP_PER_TURN = 64;
/** Reads of written ranges the checksum keeps in flight on libuv's pool (8 MiB of buffers). */
const CHECKSUM_READS_IN_FLIGHT = 8;
/** The rest between two passes over a disk whose ranges are all current (ms). */
const FILL_REST_MS = 20;

export class RangeCrcs {
  readonly ranges: number;
  /** crcs[r] is range r's CRC32C while sums[r] equals its blocks' generation sum (NaN: none). */
  private readonly crcs: Uint32Array;
  private readonly sums: Float64Array;
  private cursor = 0;
  /**
   * The fill loop that may run: fill() starts run fillRun + 1, stop() ends the current one. A
   * loop whose run is not fillRun ends at its next step; each has its own buffer, since a read
   * of the one before may still be in flight.
   */
  private fillRun = 0;
  private filling = false;
  /**
   * Ranges read by fill(), by checksum() because they were written since (or never read), by
   * catchUp(), and ranges whose CRC came from another reader's bytes (the resync copy: tookRead).
   */
  readonly counters = { rangesFilled: 0, rangesReadAtChecksum: 0, rangesReadAtCatchUp: 0, rangesTakenFromCopy: 0 };
  private readonly blocksPerRange: number;

  /** rangeBytes: as the disk's size says (rangeCrcBytesFor), or what a test picks. */
  constructor(
    private readonly source: DiskSource,
    private readonly gens: BlockGenerations,
    private readonly clock: Pick<Clock, 'defer' | 'setTimer'>,
    readonly rangeBytes = rangeCrcBytesFor(source.sizeBytes),
  ) {
    assert(source.sizeBytes % DISK_BLOCK_BYTES === 0, 'a disk of whole blocks');
    assert(rangeBytes > 0 && rangeBytes % DISK_BLOCK_BYTES === 0, 'ranges of whole blocks');
    this.blocksPerRange = rangeBytes / DISK_BLOCK_BYTES;
    this.ranges = Math.ceil(source.sizeBytes / rangeBytes);
    this.crcs = new Uint32Array(this.ranges);
    this.sums = new Float64Array(this.ranges).fill(Number.NaN);
  }

  /**
   * Until stop() (the checkpoint has come), keeps every range current: reads the ones that are
   * not, one at a time — on libuv's pool where the source can, else one per turn — and rests
   * FILL_REST_MS after each pass, so that the checkpoint finds only what was written since the
   * last visit. A read that fails ends it (the checksum reads what is missing).
   */
  fill(): void {
    if (this.filling) return;
    this.filling = true;
    const run = ++this.fillRun;
    const end = (): void => {
      if (run === this.fillRun) this.filling = false;
    };
    this.fillPasses(run).then(end, end);
  }

  private async fillPasses(run: number): Promise<void> {
    const buf = new Uint8Array(this.rangeBytes);
    let visited = 0;
    while (run === this.fillRun && this.filling) {
      // Current ranges cost a generation sum each: pass over at most FILL_SKIP_PER_TURN per turn.
      for (let skipped = 0; visited < this.ranges && skipped < FILL_SKIP_PER_TURN; skipped++, visited++) {
        if (!this.isCurrent(this.cursor)) break;
        this.cursor = (this.cursor + 1) % this.ranges;
      }
      if (visited < this.ranges && !this.isCurrent(this.cursor)) {
        // A range with a write in flight is left for a later pass (or the checksum).
        const clean = !Number.isNaN(this.genSum(this.cursor));
        if (clean && (await this.read(this.cursor, buf))) this.counters.rangesFilled++;
        this.cursor = (this.cursor + 1) % this.ranges;
        visited++;
      }
      const rest = visited >= this.ranges ? FILL_REST_MS : 0;
      if (rest > 0) visited = 0;
      await new Promise<void>((resolve) => this.clock.setTimer(rest, resolve));
    }
  }

  /** Ends a pass (the checkpoint it prepared has come). */
  stop(): void {
    this.filling = false;
    this.fillRun++;
  }

  /**
   * CRC32C of the whole disk now (the caller keeps it still): the ranges written since they
   * were read (or never read) are read again (readAll); the others come from the table.
   */
  checksum(): MaybePromise<DiskChecksum> {
    this.stop();
    const stale = this.staleRanges(false);
    this.counters.rangesReadAtChecksum += stale.length;
    const done = this.readAll(stale);
    return done ? done.then(() => this.combined()) : this.combined();
  }

  /**
   * Right before the checkpoint that will call checksum(), while the guest still runs: reads
   * at once every range that is not current (but those with a write in flight), as checksum()
   * would, so that the pause reads only what is written from now on. The read-ahead's passes
   * rest between ranges and fall behind a guest that writes its disk fast: the pause read
   * 15–24 ms of ranges in some 2 GiB runs of `bench scale` (docs/scale.md). Ranges read.
   */
  catchUp(): MaybePromise<number> {
    const stale = this.staleRanges(true);
    this.counters.rangesReadAtCatchUp += stale.length;
    const done = this.readAll(stale);
    return done ? done.then(() => stale.length) : stale.length;
  }

  /** Ranges not current; when skipBusy, without those a write is in flight in (a read would not make them current). */
  private staleRanges(skipBusy: boolean): number[] {
    const stale: number[] = [];
    for (let r = 0; r < this.ranges; r++) {
      const sum = this.genSum(r); // one pass over the range's generations: isCurrent's test, and busy's
      if (this.sums[r] === sum || (skipBusy && Number.isNaN(sum))) continue;
      stale.push(r);
    }
    return stale;
  }

  /**
   * Reads ranges: CHECKSUM_READS_IN_FLIGHT at a time on libuv's pool where the source can (a
   * promise); a source without readAsync is in memory (tests, the simulator, whose virtual
   * clock runs no promise continuations between its events) and is read at once (null).
   */
  private readAll(ranges: number[]): Promise<void> | null {
    if (!this.source.readAsync) {
      const buf = new Uint8Array(this.rangeBytes);
      for (const r of ranges) this.readNow(r, buf);
      return null;
    }
    let next = 0;
    const reader = async (): Promise<void> => {
      const buf = new Uint8Array(this.rangeBytes);
      while (next < ranges.length) await this.read(ranges[next++], buf);
    };
    const readers = Math.min(CHECKSUM_READS_IN_FLIGHT, ranges.length);
    return Promise.all(Array.from({ length: readers }, reader)).then(() => undefined);
  }

  /** The whole disk's CRC32C from the table (the ranges' CRCs combined in order), and the table. */
  private combined(): DiskChecksum {
    const size = this.source.sizeBytes;
    const crc32c = combineRangeCrcs(this.crcs, this.rangeBytes, size);
    let factor = 1;
    while (Math.ceil(this.ranges / factor) > DISK_VERIFY_RANGES_MAX) factor *= 2;
    const rangeCrcs =
      factor === 1 ? Uint32Array.from(this.crcs) : coarsenRangeCrcs(this.crcs, this.rangeBytes, size, factor);
    return { crc32c, rangeBytes: this.rangeBytes * factor, rangeCrcs };
  }

  /**
   * Someone else is about to read [offsetBytes, +lengthBytes) (the resync copy): if it covers
   * whole ranges, their generation sums now, for tookRead after the read; else null (the fill
   * reads those ranges itself).
   */
  beforeRead(offsetBytes: number, lengthBytes: number): { first: number; sums: number[] } | null {
    const end = offsetBytes + lengthBytes;
    if (offsetBytes % this.rangeBytes !== 0 || (end % this.rangeBytes !== 0 && end !== this.source.sizeBytes)) {
      return null;
    }
    const first = offsetBytes / this.rangeBytes;
    const sums: number[] = [];
    for (let r = first; r * this.rangeBytes < end; r++) sums.push(this.genSum(r));
    return { first, sums };
  }

  /** The read that beforeRead announced is done (data: its bytes): its ranges are current unless written meanwhile. */
  tookRead(before: { first: number; sums: number[] }, data: Uint8Array): void {
    before.sums.forEach((sum, i) => {
      const r = before.first + i;
      const at = i * this.rangeBytes;
      if (this.took(r, sum, data.subarray(at, at + this.lengthOf(r)))) this.counters.rangesTakenFromCopy++;
    });
  }

  /** Range r's CRC32C as last read (meaningful while isCurrent(r)). */
  crcOf(r: number): number {
    return this.crcs[r];
  }

  /**
   * Reads range r if no write is in flight there (a scrub's read-ahead): on libuv's pool where
   * the source can, else at once; whether the range is current after.
   */
  readRange(r: number, buf: Uint8Array): MaybePromise<boolean> {
    if (Number.isNaN(this.genSum(r))) return false;
    return this.source.readAsync ? this.read(r, buf) : this.readNow(r, buf);
  }

  lengthOf(r: number): number {
    return Math.min(this.rangeBytes, this.source.sizeBytes - r * this.rangeBytes);
  }

  /** The sum of range r's block generations, or NaN while a write is in flight there (odd). */
  private genSum(r: number): number {
    const first = r * this.blocksPerRange;
    const end = Math.min(first + this.blocksPerRange, this.gens.blocks);
    const g = this.gens.gens;
    let sum = 0;
    for (let b = first; b < end; b++) {
      const v = g[b];
      if (v & 1) return Number.NaN;
      sum += v;
    }
    return sum;
  }

  /** Whether range r's CRC is of the disk as it is now: no write began there since it was read. */
  isCurrent(r: number): boolean {
    return this.sums[r] === this.genSum(r); // NaN never equals
  }

  /**
   * Reads range r into buf and takes its CRC; the range counts as current only if no write was
   * in flight there or began during the read. Returns whether it does.
   */
  private async read(r: number, buf: Uint8Array): Promise<boolean> {
    if (!this.source.readAsync) return this.readNow(r, buf);
    const before = this.genSum(r);
    const piece = buf.subarray(0, this.lengthOf(r));
    await this.source.readAsync(r * this.rangeBytes, piece);
    return this.took(r, before, piece);
  }

  /** read() of a source without readAsync (in memory). */
  private readNow(r: number, buf: Uint8Array): boolean {
    const before = this.genSum(r);
    const piece = buf.subarray(0, this.lengthOf(r));
    this.source.read(r * this.rangeBytes, piece);
    return this.took(r, before, piece);
  }

  private took(r: number, before: number, piece: Uint8Array): boolean {
    this.crcs[r] = loadAddon().crc32c(piece);
    this.sums[r] = !Number.isNaN(before) && this.genSum(r) === before ? before : Number.NaN;
    return !Number.isNaN(this.sums[r]);
  }
}

// disk-scrub: the primary's half of verifying the disks equal without a pause (docs/disk.md,
// "Scrub"). The whole-disk check of DISK_VERIFY suspends the guest while it reads what was
// written since its read-ahead, and the backup holds that checkpoint's ACK while it reads its
// own copy: seconds for a disk of a few GiB. The scrub instead sends, with every checkpoint,
// the CRC32Cs of a few 1 MiB ranges as they are at that checkpoint (DISK_SCRUB); the backup
// reads the same ranges of its copy at that commit and compares. A pass ends when every range
// went once; its checkpoint's ACK means the disks were equal, range by range, as of the
// checkpoint each range went with.
//
// Why a range's CRC is the disk's at checkpoint E: the ranges are read while the guest runs
// (RangeCrcs, with the blocks' write generations); pick() runs with the domain suspended,
// before the disk barrier, and takes only ranges no write touched since their read — a write
// bumps its blocks' generation before it touches the disk, so one still in flight or begun
// after the read makes the range not current. Those wait for a later checkpoint.
//
// Reads stay ahead of the pass by at most SCRUB_READ_AHEAD_RANGES (not the whole disk again
// and again): a database's disk of 100 GiB costs one read of each range per pass.
import { assert } from '../dom0/assert';
import type { Clock, ScrubPick } from '../dom0/ports';
import { DISK_SCRUB_BYTES_PER_S_DEFAULT, DISK_SCRUB_RANGES_MAX, SCRUB_READ_AHEAD_RANGES } from '../dom0/limits';
import type { RangeCrcs } from './range-crcs';
import { ScrubRanges } from './scrub-ranges';

/** Rest of the read-ahead when nothing ahead needs a read (ms). */
const SCRUB_REST_MS = 10;

export class DiskScrub {
  /** sent[r] is 1 once range r went with a checkpoint of this pass; sentCount of them. */
  private readonly sent: Uint8Array;
  private sentCount = 0;
  /** The first range of the pass order that has not gone yet (ranges before it all have). */
  private cursor = 0;
  /** The read-ahead loop that may run (start() begins run + 1; stop() ends it). */
  private run = 0;
  /** Between start() and stop(): a session's checkpoints carry ranges. */
  private running = false;
  /** Passes whose every range went; ranges read ahead; picks that skipped a range written since. */
  readonly counters = { passes: 0, rangesRead: 0, rangesSent: 0, skippedWritten: 0 };

  /** Bytes the scrub may send (and the backup read) now: refilled at bytesPerSecond, at most a pick's. */
  private budgetBytes = 0;
  private budgetAtMs = 0;

  /** The disk's CRC table seen in 1 MiB ranges (scrub-ranges.ts). */
  private readonly table: ScrubRanges;

  /** rangeBytes: the scrub's ranges (scrub-ranges.ts): 1 MiB, or what a test picks. */
  constructor(
    crcs: RangeCrcs,
    private readonly clock: Pick<Clock, 'setTimer' | 'now'>,
    private readonly bytesPerSecond = DISK_SCRUB_BYTES_PER_S_DEFAULT,
    rangeBytes?: number,
  ) {
    assert(bytesPerSecond > 0, 'a scrub that moves');
    this.table = new ScrubRanges(crcs, rangeBytes);
    this.sent = new Uint8Array(this.table.ranges);
  }

  /** A session's checkpoints begin: a new pass from the disk's start, reading ahead. */
  start(): void {
    this.sent.fill(0);
    this.sentCount = 0;
    this.cursor = 0;
    this.running = true;
    this.budgetBytes = this.table.rangeBytes; // the first checkpoint carries one range
    this.budgetAtMs = this.clock.now();
    this.step(++this.run, new Uint8Array(this.table.rangeBytes));
  }

  /** The session ended: its pass is void (the next session starts another). */
  stop(): void {
    this.running = false;
    this.run++;
  }

  /**
   * With the domain suspended, before the disk barrier: up to max ranges not yet sent in
   * this pass whose CRC is of the disk as it is now, in pass order from the cursor; passEnd
   * when they complete the pass (the next pick starts another).
   */
  pick(max = DISK_SCRUB_RANGES_MAX): ScrubPick | null {
    if (!this.running) return null;
    assert(max > 0 && max <= DISK_SCRUB_RANGES_MAX, 'scrub ranges per checkpoint');
    const now = this.clock.now(),
      cap = max * this.table.rangeBytes;
    this.budgetBytes = Math.min(cap, this.budgetBytes + ((now - this.budgetAtMs) * this.bytesPerSecond) / 1000);
    this.budgetAtMs = now;
    max = Math.min(max, Math.floor(this.budgetBytes / this.table.rangeBytes));
    if (max === 0) return null;
    const ranges: ScrubPick['ranges'] = [];
    // Bounded work while suspended: the cursor's window of read-ahead ranges, not the disk.
    const end = Math.min(this.table.ranges, this.cursor + SCRUB_READ_AHEAD_RANGES);
    for (let r = this.cursor; r < end && ranges.length < max; r++) {
      if (this.sent[r]) continue;
      if (!this.table.isCurrent(r)) {
        this.counters.skippedWritten++;
        continue;
      }
      this.sent[r] = 1;
      this.sentCount++;
      ranges.push({
        offsetBytes: r * this.table.rangeBytes,
        lengthBytes: this.table.lengthOf(r),
        crc32c: this.table.crcOf(r),
      });
    }
    while (this.cursor < this.table.ranges && this.sent[this.cursor]) this.cursor++;
    this.counters.rangesSent += ranges.length;
    this.budgetBytes -= ranges.length * this.table.rangeBytes;
    const passEnd = this.sentCount === this.table.ranges;
    assert(!passEnd || this.cursor === this.table.ranges, 'a pass ends with every range sent');
    if (passEnd) {
      this.counters.passes++;
      this.sent.fill(0);
      this.sentCount = 0;
      this.cursor = 0;
    }
    return ranges.length > 0 ? { ranges, passEnd, rangeBytes: this.table.rangeBytes } : null;
  }

  /**
   * Keeps the next ranges of the pass read (current), at most SCRUB_READ_AHEAD_RANGES ahead,
   * one read at a time; a disk in memory is read at once (the simulator's clock runs no
   * promise continuations between its events). A range with a write in flight, or nothing
   * to read, rests SCRUB_REST_MS.
   */
  private step(run: number, buf: Uint8Array): void {
    if (run !== this.run) return;
    const next = (read: boolean): void => {
      if (read) this.counters.rangesRead++;
      if (run === this.run) this.clock.setTimer(read ? 0 : SCRUB_REST_MS, () => this.step(run, buf));
    };
    const r = this.nextToRead();
    if (r === null) return next(false);
    const got = this.table.readRange(r, buf);
    if (typeof got === 'boolean') next(got);
    else got.then(next, () => next(false));
  }

  /** The first range of the read-ahead window that is neither sent nor current. */
  private nextToRead(): number | null {
    const end = Math.min(this.table.ranges, this.cursor + SCRUB_READ_AHEAD_RANGES);
    for (let r = this.cursor; r < end; r++) if (!this.sent[r] && !this.table.isCurrent(r)) return r;
    return null;
  }
}

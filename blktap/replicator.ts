// replicator: the primary's half of the replicated disk (docs/disk.md). The guest's disk
// writes are applied locally by the backend (the NBD server, or the simulated vCPU), then
// reach this tap before their completion is returned to the guest. Here each one is
// forwarded to the backup tagged with its epoch — the checkpoint it belongs to — and
// remembered until that epoch is acknowledged. The engine's disk barrier (after the memory
// capture, before resume) moves the tag, so a write whose completion the guest could have
// seen in checkpoint N is tagged ≤ N and nothing completed after resume is tagged N.
// Without a backup, written blocks go to the resync bitmap; a new session first copies the
// bitmap's blocks (initial sync and reprotection are the same path), then checkpoints start;
// a run that reads as zeros goes as its range alone (DISK_SYNC ZEROES): a thin disk costs the
// wire what it holds, not its size. The writes of a session's first checkpoint go AT_ONCE
// (applied by the backup as they arrive, remembered here as blocks), so no preparation before
// the first commit, however long, fills the backup's buffer.
import { assert } from '../dom0/assert';
import type { BackupDisk, Clock, DiskChecksum, DiskLink, DiskPort, MaybePromise, ScrubPick } from '../dom0/ports';
import {
  DISK_RECORD_DATA_MAX,
  DW_AT_ONCE,
  DW_FLUSH,
  DW_FUA,
  DW_ZEROES,
  Rec,
  diskSyncHeadInto,
  diskSyncEndBody,
  diskSyncZeroesBody,
  diskWriteBody,
} from '../dom0/protocol/records';
import { BlockGenerations } from './block-generations';
import type { DiskTap } from './disk-tap';
import { type DiskRef, ReadTracker } from './read-tracker';
import { ResyncBitmap } from './resync-bitmap';
import { type DiskSource, isZero } from './disk-source';
import { RangeCrcs } from './range-crcs';
import { DiskScrub } from './disk-scrub';
import { DISK_BLOCK_BYTES } from '../dom0/limits';

/**
 * The resync copy waits while more than this is queued on the channel (bytes). When the socket
 * drains, Node hands everything queued to TLS in one call: 8 MiB kept the primary's event loop
 * 46–68 ms in that call and the framing before it on the 2-core test VM (a stall log matched to
 * a CPU profile, docs/scale.md); the pre-copy's bound is 4 MiB for the same reason.
 */
export const DISK_SYNC_BACKLOG_BYTES_MAX = 4 * 1024 * 1024;
export interface ReplicatorOptions {
  /** Unacknowledged forwarded bytes allowed before the session is dropped (the backup's bound). */
  unackedBytesMax: number;
  /** The backup already holds this disk as it is now (skip the initial full copy). */
  inSync: boolean;
  /** Largest resync record, and how much may wait unsent on the channel before the copy pauses. */
  syncChunkBytes?: number;
  backlogBytesMax?: number;
  /** Read tracking: how many read blocks to remember (0: off). */
  readTrackingBlocksMax?: number;
  /**
   * false: the backend writes on another thread without moving the write generations (Xen's
   * NBD worker posts its writes after the fact); the replicator moves them when it hears of
   * a write, so a range's CRC read before it turns stale. The domain is suspended and the
   * feed drained before a checksum, so none is missed then. Default true (the backend moves
   * them around each write: the in-process NBD server, the simulated vCPU).
   */
  backendMovesGenerations?: boolean;
  /** The scrub's pace (disk-scrub.ts): DISK_SCRUB_BYTES_PER_S_DEFAULT unless a test says otherwise. */
  scrubBytesPerSecond?: number;
  /** The checksum's ranges (DISK_VERIFY's table) and the scrub's: by the disk's size, unless a test picks. */
  rangeCrcBytes?: number;
}

interface Unacked {
  epoch: number;
  offsetBytes: number;
  lengthBytes: number;
  costBytes: number;
}

export interface ReplicatorStats {
  forwardedWrites: number;
  forwardedBytes: number;
  unackedBytes: number;
  resyncPendingBytes: number;
  /** Octets the resyncs had to copy when their sessions connected (summed over sessions). */
  resyncPlannedBytes: number;
  /** Octets the resync covered, and of those the ones sent as zero ranges (no data on the wire). */
  resyncCopiedBytes: number;
  resyncZeroBytes: number;
  syncing: boolean;
  readTracking: import('./read-tracker').ReadTrackerStats | null;
  /** The checksum's read-ahead: ranges read while the guest ran, and at the checkpoint (written since). */
  checksumRanges: { rangesFilled: number; rangesReadAtChecksum: number; rangesTakenFromCopy: number; ranges: number };
  /** The scrub: passes completed, ranges read ahead, sent, and skipped at a pick (written since read). */
  scrub: DiskScrub['counters'];
}

export class DiskReplicator implements DiskPort, DiskTap {
  readonly bitmap: ResyncBitmap;
  /** Write generations of every block: the backend bumps them around its writes. */
  readonly generations: BlockGenerations;
  readonly tracker: ReadTracker | null;
  /** Per-range CRC32Cs with their write generations: the whole-disk checksum without a whole read. */
  private readonly rangeCrcs: RangeCrcs;
  /** The background check (--disk-scrub): a few ranges' CRCs with each checkpoint. */
  private readonly scrub: DiskScrub;
  private link: DiskLink | null = null;
  private tag = 1;
  private unacked: Unacked[] = [];
  private unackedTotal = 0;
  private overflow: ((reason: string) => void) | null = null;
  /** The disk copy under way; fillAfter: the checksum's read-ahead starts when it ends (prepareChecksum). */
  private sync: { ready: () => void; cursor: number; copied: number; timer: unknown; fillAfter: boolean } | null = null;
  /** Runs copied in this session: until its first ack they may not have arrived. */
  private copiedRuns: Array<[number, number]> = [];
  /**
   * The session's first checkpoint's writes: the backup applies them as they arrive (AT_ONCE;
   * nothing committed is at stake before that checkpoint commits), so they stay off the unacked
   * bound however long the disk copy, a pre-copy or a continued session's preparation lasts;
   * only their blocks are remembered. Invariant: direct !== null ⇔ a session is connected and its
   * first checkpoint is not acknowledged; its blocks are marked again if the session ends before.
   */
  private direct: { epoch: number; written: ResyncBitmap | null } | null = null;
  private readonly counters = {
    forwardedWrites: 0,
    forwardedBytes: 0,
    resyncPlannedBytes: 0,
    resyncCopiedBytes: 0,
    resyncZeroBytes: 0,
  };
  private readonly chunkBytes: number;
  /** The resync copy's DISK_SYNC body (16 + chunkBytes), reused: made at its first use. */
  private syncBody: Buffer | null = null;
  private readonly backlogMax: number;

  constructor(
    private readonly source: DiskSource,
    private readonly clock: Clock,
    readonly opts: ReplicatorOptions,
  ) {
    assert(source.sizeBytes > 0 && source.sizeBytes % 512 === 0 && opts.unackedBytesMax > 0, 'replicator options');
    this.bitmap = new ResyncBitmap(source.sizeBytes);
    this.generations = new BlockGenerations(source.sizeBytes);
    this.rangeCrcs = new RangeCrcs(source, this.generations, clock, opts.rangeCrcBytes);
    this.scrub = new DiskScrub(this.rangeCrcs, clock, opts.scrubBytesPerSecond, opts.rangeCrcBytes);
    const trackMax = opts.readTrackingBlocksMax ?? 0;
    this.tracker = trackMax > 0 ? new ReadTracker(source, this.generations, trackMax) : null;
    if (!opts.inSync) this.bitmap.markAll();
    this.chunkBytes = Math.min(opts.syncChunkBytes ?? 1024 * 1024, DISK_RECORD_DATA_MAX);
    assert(this.chunkBytes % DISK_BLOCK_BYTES === 0, 'sync chunk is whole blocks');
    this.backlogMax = opts.backlogBytesMax ?? DISK_SYNC_BACKLOG_BYTES_MAX;
  }

  get sizeBytes(): number {
    return this.source.sizeBytes;
  }
  get unackedBytes(): number {
    return this.unackedTotal;
  }

  stats(): ReplicatorStats {
    return {
      ...this.counters,
      unackedBytes: this.unackedTotal,
      resyncPendingBytes: this.bitmap.bytes,
      syncing: this.sync !== null,
      readTracking: this.tracker?.stats() ?? null,
      checksumRanges: { ...this.rangeCrcs.counters, ranges: this.rangeCrcs.ranges },
      scrub: { ...this.scrub.counters },
    };
  }

  // ---- DiskPort (the engine) ---------------------------------------------------------------

  barrier(epoch: number): void {
    assert(epoch + 1 >= this.tag, 'disk barrier goes backwards');
    const d = this.direct;
    assert(!d || this.tag !== d.epoch || epoch === d.epoch, 'the first barrier of a session closes its AT_ONCE epoch');
    this.tag = epoch + 1;
  }

  acked(epoch: number): void {
    this.copiedRuns = []; // an ack follows every record sent before it: the copy arrived
    if (this.direct && this.direct.epoch <= epoch) this.direct = null;
    let n = 0;
    while (n < this.unacked.length && this.unacked[n].epoch <= epoch) this.unackedTotal -= this.unacked[n++].costBytes;
    if (n > 0) this.unacked = this.unacked.slice(n);
  }

  connect(
    link: DiskLink,
    nextEpoch: number,
    backup: BackupDisk,
    ready: () => void,
    overflow: (reason: string) => void,
  ) {
    assert(this.link === null, 'disk session already connected');
    if (!backup.continues) this.bitmap.markAll();
    else for (const r of backup.differing) this.bitmap.markRange(r.offsetBytes, r.lengthBytes);
    this.counters.resyncPlannedBytes += this.bitmap.bytes;
    this.link = link;
    this.tag = nextEpoch;
    // The backup applies the first checkpoint's writes as they come, in order with the copy
    // (nothing of the session is committed): a copy of many GiB would otherwise hold them all.
    this.direct = { epoch: nextEpoch, written: null };
    this.overflow = overflow;
    this.sync = { ready, cursor: 0, copied: 0, timer: null, fillAfter: false };
    this.copySome();
  }

  disconnect(): void {
    for (const u of this.unacked) this.bitmap.markRange(u.offsetBytes, u.lengthBytes);
    const written = this.direct?.written;
    for (
      let run = written?.nextRun(0, 1 << 16);
      written && run;
      run = written.nextRun(run.first + run.count, 1 << 16)
    ) {
      this.bitmap.markRange(run.first * DISK_BLOCK_BYTES, run.count * DISK_BLOCK_BYTES);
    }
    this.direct = null;
    this.scrub.stop();
    this.rangeCrcs.stop(); // a read-ahead for a checkpoint that will not come
    for (const [off, len] of this.copiedRuns) this.bitmap.markRange(off, len);
    this.copiedRuns = [];
    this.unacked = [];
    this.unackedTotal = 0;
    if (this.sync?.timer) this.clock.clearTimer(this.sync.timer);
    this.sync = null;
    this.link = null;
    this.overflow = null;
  }

  /** A session's checkpoints begin: a scrub pass starts (disk-scrub.ts). */
  scrubStart(): void {
    this.scrub.start();
  }

  /** The ranges this checkpoint carries for the scrub (domain suspended, before the barrier). */
  scrubPick(): ScrubPick | null {
    return this.scrub.pick();
  }

  /**
   * Starts reading the disk in ranges while the guest runs, for this session's checksum
   * (range-crcs.ts). During the disk copy the fill waits for its end: the copy's own reads
   * give the ranges it covers their CRCs, and the fill then reads only the others and what the
   * guest wrote since (one read of the disk, not two).
   */
  prepareChecksum(): void {
    if (this.sync) this.sync.fillAfter = true;
    else this.rangeCrcs.fill();
  }

  /** Right before the checkpoint that takes checksum(), while the guest runs (range-crcs.ts); not during the copy. */
  catchUpChecksum(): MaybePromise<number> {
    return this.sync ? 0 : this.rangeCrcs.catchUp();
  }

  /** CRC32C of the whole disk (the caller keeps it still): only ranges written since they were read are read. */
  checksum(): MaybePromise<DiskChecksum> {
    return this.rangeCrcs.checksum();
  }

  // ---- DiskTap (the backend, after the local operation, before the guest's completion) ----

  onWrite(offsetBytes: number, data: Buffer | Uint8Array, fua: boolean): void {
    for (let done = 0; done < data.length; done += DISK_RECORD_DATA_MAX) {
      const piece = data.subarray(done, Math.min(data.length, done + DISK_RECORD_DATA_MAX));
      const last = done + piece.length === data.length;
      this.forward(offsetBytes + done, piece.length, last && fua ? DW_FUA : 0, piece);
    }
  }

  /** gensBefore: the blocks' generations before the read (the NBD server takes them). */
  onRead(offsetBytes: number, _lengthBytes: number, data: Buffer, gensBefore?: number[]): void {
    if (this.tracker && gensBefore) this.tracker.onRangeRead(offsetBytes, data, gensBefore, this.tag);
  }

  /** A whole-block read by the simulated vCPU, its generation stable across the read. */
  onBlockRead(block: number, crc: number, gen: number): void {
    this.tracker?.onBlockRead(block, crc, gen, this.tag);
  }

  /** DiskPort: for each page of checkpoint epoch, the disk reference read tracking finds (null: none in the batch). */
  references(pages: Uint8Array, epoch: number): Array<DiskRef | null> | null {
    return this.tracker?.matchPages(pages, epoch) ?? null;
  }

  onFlush(): void {
    this.forward(0, 0, DW_FLUSH, null);
  }

  onTrim(offsetBytes: number, lengthBytes: number, fua: boolean): void {
    this.zeroes(offsetBytes, lengthBytes, fua);
  }

  onWriteZeroes(offsetBytes: number, lengthBytes: number, fua: boolean): void {
    this.zeroes(offsetBytes, lengthBytes, fua);
  }

  // ---- internals ---------------------------------------------------------------------------

  private zeroes(offsetBytes: number, lengthBytes: number, fua: boolean): void {
    for (let done = 0; done < lengthBytes; done += DISK_RECORD_DATA_MAX) {
      const n = Math.min(DISK_RECORD_DATA_MAX, lengthBytes - done);
      this.forward(offsetBytes + done, n, DW_ZEROES | (done + n === lengthBytes && fua ? DW_FUA : 0), null);
    }
  }

  private forward(offsetBytes: number, lengthBytes: number, flags: number, data: Uint8Array | null): void {
    this.tracker?.invalidate(offsetBytes, lengthBytes);
    if (this.opts.backendMovesGenerations === false) {
      this.generations.beginWrite(offsetBytes, lengthBytes);
      this.generations.endWrite(offsetBytes, lengthBytes);
    }
    if (!this.link) {
      this.bitmap.markRange(offsetBytes, lengthBytes);
      return;
    }
    const atOnce = this.direct?.epoch === this.tag;
    const body = diskWriteBody(this.tag, offsetBytes, lengthBytes, flags | (atOnce ? DW_AT_ONCE : 0), data);
    this.link.send(Rec.DISK_WRITE, body);
    this.counters.forwardedWrites++;
    this.counters.forwardedBytes += lengthBytes;
    if (atOnce) {
      (this.direct!.written ??= new ResyncBitmap(this.source.sizeBytes)).markRange(offsetBytes, lengthBytes);
      return;
    }
    const cost = (data?.length ?? 0) + 64;
    this.unacked.push({ epoch: this.tag, offsetBytes, lengthBytes, costBytes: cost });
    this.unackedTotal += cost;
    if (this.unackedTotal > this.opts.unackedBytesMax) {
      const report = this.overflow;
      report?.(
        `${this.unackedTotal} bytes of disk writes are unacknowledged, more than the ${this.opts.unackedBytesMax} ` +
          `the backup buffers`,
      );
    }
  }

  /** One step of the resync copy; reschedules itself until the bitmap is empty. */
  private copySome(): void {
    const s = this.sync,
      link = this.link;
    if (!s || !link) return;
    s.timer = null;
    if (link.backlogBytes > this.backlogMax) {
      s.timer = this.clock.setTimer(2, () => this.copySome());
      return;
    }
    for (let budget = 4; budget > 0; budget--) {
      const run = this.bitmap.nextRun(s.cursor, this.chunkBytes / DISK_BLOCK_BYTES);
      if (!run) {
        link.send(Rec.DISK_SYNC_END, diskSyncEndBody(s.copied));
        this.sync = null;
        if (s.fillAfter) this.rangeCrcs.fill();
        s.ready();
        return;
      }
      const off = run.first * DISK_BLOCK_BYTES,
        len = Math.min(run.count * DISK_BLOCK_BYTES, this.sizeBytes - off);
      // Read straight into the record's body (send encodes it before returning: the buffer is
      // reused); a range of zeros (most of a thin disk) goes as its range alone.
      const body = (this.syncBody ??= Buffer.allocUnsafe(16 + this.chunkBytes)).subarray(0, 16 + len);
      const data = body.subarray(16);
      const crcs = this.rangeCrcs.beforeRead(off, len);
      this.source.read(off, data);
      if (crcs) this.rangeCrcs.tookRead(crcs, data); // the checksum's read-ahead need not read it again
      for (let b = run.first; b < run.first + run.count; b++) this.bitmap.clear(b);
      const zeroes = isZero(data);
      link.send(Rec.DISK_SYNC, zeroes ? diskSyncZeroesBody(off, len) : diskSyncHeadInto(body, off));
      if (zeroes) this.counters.resyncZeroBytes += len;
      this.copiedRuns.push([off, len]);
      s.cursor = run.first + run.count;
      s.copied += len;
      this.counters.resyncCopiedBytes += len;
    }
    this.clock.defer(() => this.copySome());
  }
}

// replica-disk: the backup engine's ReplicaDisk port (dom0/ports.ts) made of a disk file
// (BlockFile, or a test's disk in memory) and an EpochBuffer that holds the forwarded writes
// until their checkpoint commits. Whoever makes a replica makes its disk here and hands it
// over; the engine sees only the port, never the file or the buffer. Every change to the disk
// passes here, so its per-range CRC table (replica-range-crcs.ts) knows what changed, and the
// checksum at a verified commit reads only that.
import type { DiskRange, MaybePromise, ReplicaDisk } from '../dom0/ports';
import type { DiskWrite } from '../dom0/protocol/records';
import { isZero } from './disk-source';
import { ReplicaRangeCrcs } from './replica-range-crcs';
import { type DiskTarget, EpochBuffer, applyWrite } from './epoch-buffer';

/** What zeroSync reads at a time to find the pieces of a zero range that are not zero yet. */
const ZERO_SYNC_PIECE_BYTES = 1024 * 1024;

export class EpochHeldDisk<Target extends DiskTarget = DiskTarget> implements ReplicaDisk {
  /** Bound 0 until a session sets one (holdFrom): nothing is held outside a session. */
  private held = new EpochBuffer(0);

  /** CRC32C per 1 MiB range, known where nothing changed since it was computed. */
  readonly rangeCrcs: ReplicaRangeCrcs;
  /** The target as committed writes reach it: each change makes its ranges unknown. */
  private readonly tracked: DiskTarget;
  /** zeroSync's read buffer, made at its first use. */
  private zeroSyncBuf: Uint8Array | null = null;

  /** rangeCrcBytes: the CRC table's range (replica-range-crcs.ts); a test's small disk uses less. */
  constructor(
    readonly target: Target,
    rangeCrcBytes?: number,
  ) {
    const crcs = (this.rangeCrcs = new ReplicaRangeCrcs(target.sizeBytes, rangeCrcBytes));
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
      read: (off, into) => target.read(off, into),
      flush: () => target.flush(),
      flushSoon: () => (target.flushSoon ?? target.flush).call(target),
    };
  }

  get sizeBytes(): number {
    return this.target.sizeBytes;
  }
  write(offsetBytes: number, data: Uint8Array): void {
    this.target.write(offsetBytes, data);
    this.rangeCrcs.synced(offsetBytes, data.length, data);
  }
  read(offsetBytes: number, into: Uint8Array): void {
    this.target.read(offsetBytes, into);
  }
  zeroSync(offsetBytes: number, lengthBytes: number): void {
    // One buffer for every zero range of a copy (a thin disk's copy is mostly zero ranges).
    const piece = (this.zeroSyncBuf ??= new Uint8Array(ZERO_SYNC_PIECE_BYTES));
    for (let done = 0; done < lengthBytes; done += piece.length) {
      const n = Math.min(piece.length, lengthBytes - done);
      const view = piece.subarray(0, n);
      this.target.read(offsetBytes + done, view);
      if (!isZero(view)) this.target.zero(offsetBytes + done, n);
    }
    this.rangeCrcs.synced(offsetBytes, lengthBytes, null);
  }
  flush(): void {
    this.target.flush();
  }
  flushSoon(): void {
    (this.target.flushSoon ?? this.target.flush).call(this.target);
  }

  holdFrom(bytesMax: number): void {
    if (this.held.bytesMax !== bytesMax) this.held = new EpochBuffer(bytesMax);
    this.held.discard();
  }

  hold(w: DiskWrite, committed: number | null): void {
    this.held.add(w, committed);
  }

  commit(epoch: number): { writes: number; bytes: number } {
    const { writes, bytes } = this.held.commit(epoch, this.tracked);
    return { writes, bytes };
  }

  apply(w: DiskWrite): void {
    if (applyWrite(w, this.tracked)) this.flushSoon();
  }

  discard(): DiskRange[] {
    return this.held.discard();
  }

  /** The whole disk's CRC32C (the caller keeps it still): only ranges changed since they were known are read. */
  checksum(): MaybePromise<number> {
    return this.rangeCrcs.checksum(this.target);
  }

  /** The same on this thread (the failover's check of a simulated replica, before its guest runs). */
  checksumNow(): number {
    return this.rangeCrcs.checksumNow(this.target);
  }
}

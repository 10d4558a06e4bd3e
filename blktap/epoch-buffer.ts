// epoch-buffer: the backup's hold on disk writes. The primary forwards each write tagged with
// the epoch (checkpoint) it belongs to; the backup keeps them here, in arrival order, and
// applies those of epochs ≤ N only when checkpoint N commits — so its disk, like its memory,
// always equals the primary's at a checkpoint boundary. A failover discards what is held
// (partial epochs the primary never finished). Memory is bounded by bytesMax: a primary
// that outruns it is told so by a protocol error and must resynchronise (docs/disk.md).
// FLUSH/FUA: a commit that holds one starts an fdatasync without waiting for it; a failover
// waits for one before the domain resumes, so what the guest saw durable is durable here.
import { ErrorCode, RemusError } from '../dom0/errors';
import { DW_FLUSH, DW_FUA, DW_ZEROES, type DiskWrite, protocolError } from '../dom0/protocol/records';

/** Where committed writes go: the backup's copy of the disk. */
export interface DiskTarget {
  readonly sizeBytes: number;
  write(offsetBytes: number, data: Uint8Array): void;
  zero(offsetBytes: number, lengthBytes: number): void;
  read(offsetBytes: number, into: Uint8Array): void;
  /** Durable now (at failover, before the domain resumes here). */
  flush(): void;
  /** Durable soon, without blocking (at commit: the failover flush makes it certain). */
  flushSoon?(): void;
}

export interface CommitResult {
  writes: number;
  bytes: number;
  flushed: boolean;
}

/** Per held write: the bytes it costs (data, or a fixed amount for data-less records). */
const RECORD_COST_BYTES = 64;

export class EpochBuffer {
  private held: DiskWrite[] = [];
  private heldBytes = 0;
  private lastEpoch = 0;

  constructor(readonly bytesMax: number) {}

  get bytes(): number {
    return this.heldBytes;
  }
  get writes(): number {
    return this.held.length;
  }

  /** Holds one write; epochs never go backwards and are later than the last committed one. */
  add(w: DiskWrite, committed: number | null): void {
    if (committed !== null && w.epoch <= committed)
      throw protocolError(`DISK_WRITE for epoch ${w.epoch}, which is already committed (${committed})`);
    if (w.epoch < this.lastEpoch)
      throw protocolError(`DISK_WRITE for epoch ${w.epoch} after one for epoch ${this.lastEpoch}`);
    const cost = (w.data?.length ?? 0) + RECORD_COST_BYTES;
    if (this.heldBytes + cost > this.bytesMax) {
      throw new RemusError(
        ErrorCode.DISK_BUFFER_FULL,
        `the backup holds ${this.heldBytes} bytes of unacknowledged disk writes; ${cost} more would pass its limit ` +
          `of ${this.bytesMax} (raise --disk-buffer on the backup)`,
      );
    }
    this.lastEpoch = w.epoch;
    this.held.push({ ...w, data: w.data ? Buffer.from(w.data) : null });
    this.heldBytes += cost;
  }

  /** Applies every held write of epochs ≤ epoch, in arrival order; flushes when one asked for durability. */
  commit(epoch: number, target: DiskTarget): CommitResult {
    let n = 0,
      bytes = 0,
      durable = false;
    while (n < this.held.length && this.held[n].epoch <= epoch) {
      const w = this.held[n++];
      if (applyWrite(w, target)) durable = true;
      bytes += w.lengthBytes;
      this.heldBytes -= (w.data?.length ?? 0) + RECORD_COST_BYTES;
    }
    this.held = this.held.slice(n);
    if (durable) (target.flushSoon ?? target.flush).call(target);
    return { writes: n, bytes, flushed: durable };
  }

  /** Forgets everything held (failover, or a new session). Returns the ranges dropped. */
  discard(): Array<{ offsetBytes: number; lengthBytes: number }> {
    const dropped = this.held
      .filter((w) => w.lengthBytes > 0)
      .map((w) => ({ offsetBytes: w.offsetBytes, lengthBytes: w.lengthBytes }));
    this.held = [];
    this.heldBytes = 0;
    this.lastEpoch = 0;
    return dropped;
  }
}

/** Applies one write to the disk; true when it asked for durability (FLUSH or FUA). */
export function applyWrite(w: DiskWrite, target: DiskTarget): boolean {
  if (w.flags & DW_FLUSH) return true;
  if (w.flags & DW_ZEROES) target.zero(w.offsetBytes, w.lengthBytes);
  else target.write(w.offsetBytes, w.data!);
  return (w.flags & DW_FUA) !== 0;
}

// replica-disk: the backup engine's ReplicaDisk port (dom0/ports.ts) made of a disk file
// (BlockFile, or a test's disk in memory) and an EpochBuffer that holds the forwarded writes
// until their checkpoint commits. Whoever makes a replica makes its disk here and hands it
// over; the engine sees only the port, never the file or the buffer.
import type { Clock, DiskRange, ReplicaDisk } from '../dom0/ports';
import type { DiskWrite } from '../dom0/protocol/records';
import { diskChecksumAsync } from './disk-source';
import { type DiskTarget, EpochBuffer, applyWrite } from './epoch-buffer';

export class EpochHeldDisk<Target extends DiskTarget = DiskTarget> implements ReplicaDisk {
  /** Bound 0 until a session sets one (holdFrom): nothing is held outside a session. */
  private held = new EpochBuffer(0);

  constructor(readonly target: Target) {}

  get sizeBytes(): number {
    return this.target.sizeBytes;
  }
  write(offsetBytes: number, data: Uint8Array): void {
    this.target.write(offsetBytes, data);
  }
  read(offsetBytes: number, into: Uint8Array): void {
    this.target.read(offsetBytes, into);
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
    const { writes, bytes } = this.held.commit(epoch, this.target);
    return { writes, bytes };
  }

  apply(w: DiskWrite): void {
    if (applyWrite(w, this.target)) this.flushSoon();
  }

  discard(): DiskRange[] {
    return this.held.discard();
  }

  checksum(clock: Pick<Clock, 'defer'>): Promise<number> {
    return diskChecksumAsync(this.target, clock);
  }
}

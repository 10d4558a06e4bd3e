// block-generations: one counter per 4 KiB block that makes read tracking exact. A writer
// bumps its blocks' counters before it touches the disk (odd: a write is in flight) and
// again after the write was handed to the replicator (even). A read is trustworthy only if
// the counter was even and unchanged across it; a disk reference is sent only if the counter
// still holds that value when the page is matched — no write has begun since the read.
// The counters live in shared memory so the simulated vCPU (a worker thread) bumps them too.
import { assert } from '../dom0/assert';
import { DISK_BLOCK_BYTES } from '../dom0/limits';

export class BlockGenerations {
  readonly gens: Uint32Array;
  readonly blocks: number;

  constructor(diskBytes: number, sab?: SharedArrayBuffer) {
    this.blocks = Math.ceil(diskBytes / DISK_BLOCK_BYTES);
    this.gens = new Uint32Array(sab ?? new SharedArrayBuffer(this.blocks * 4));
    assert(this.gens.length === this.blocks, 'generation array size');
  }

  get buffer(): SharedArrayBuffer {
    return this.gens.buffer as SharedArrayBuffer;
  }

  get(block: number): number {
    return Atomics.load(this.gens, block);
  }

  /** Before the local write (the counters become odd). */
  beginWrite(offsetBytes: number, lengthBytes: number): void {
    this.bump(offsetBytes, lengthBytes);
  }

  /** After the write was forwarded (even again). */
  endWrite(offsetBytes: number, lengthBytes: number): void {
    this.bump(offsetBytes, lengthBytes);
  }

  private bump(offsetBytes: number, lengthBytes: number): void {
    if (lengthBytes === 0) return;
    const last = Math.floor((offsetBytes + lengthBytes - 1) / DISK_BLOCK_BYTES);
    for (let b = Math.floor(offsetBytes / DISK_BLOCK_BYTES); b <= last; b++) Atomics.add(this.gens, b, 1);
  }
}

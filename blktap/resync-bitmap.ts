// resync-bitmap: which 4 KiB blocks of a disk the backup may not hold. Everything is set
// when protection starts on a disk the backup has never seen; a write while no backup is
// attached, and every write of an epoch the backup never acknowledged, sets its blocks.
// A new session copies exactly the set blocks (coalesced into runs) before its first
// checkpoint — the same path serves initial sync and reprotection (SecondSite's rule).
import { assert } from '../dom0/assert';
import { DISK_BLOCK_BYTES } from '../dom0/limits';

export class ResyncBitmap {
  private readonly words: Uint32Array;
  readonly blocks: number;
  private setCount = 0;

  constructor(readonly diskBytes: number) {
    this.blocks = Math.ceil(diskBytes / DISK_BLOCK_BYTES);
    this.words = new Uint32Array(Math.ceil(this.blocks / 32));
  }

  get count(): number {
    return this.setCount;
  }
  /** Bytes a resync would copy now (the last block may be short). */
  get bytes(): number {
    if (this.setCount === 0) return 0;
    const tail = this.diskBytes % DISK_BLOCK_BYTES;
    return this.setCount * DISK_BLOCK_BYTES - (tail && this.has(this.blocks - 1) ? DISK_BLOCK_BYTES - tail : 0);
  }

  has(block: number): boolean {
    return (this.words[block >>> 5] & (1 << (block & 31))) !== 0;
  }

  /** Marks every block overlapping [offsetBytes, offsetBytes + lengthBytes). */
  markRange(offsetBytes: number, lengthBytes: number): void {
    if (lengthBytes === 0) return;
    assert(offsetBytes >= 0 && offsetBytes + lengthBytes <= this.diskBytes, 'bitmap range');
    const first = Math.floor(offsetBytes / DISK_BLOCK_BYTES),
      last = Math.floor((offsetBytes + lengthBytes - 1) / DISK_BLOCK_BYTES);
    for (let b = first; b <= last; b++) this.set(b);
  }

  markAll(): void {
    for (let b = 0; b < this.blocks; b++) this.set(b);
  }

  clear(block: number): void {
    if (!this.has(block)) return;
    this.words[block >>> 5] &= ~(1 << (block & 31));
    this.setCount--;
  }

  /** The next run of set blocks at or after `from`, at most maxBlocks long; null when none. */
  nextRun(from: number, maxBlocks: number): { first: number; count: number } | null {
    let b = from;
    while (b < this.blocks) {
      if (this.words[b >>> 5] === 0) {
        b = (b | 31) + 1;
        continue;
      }
      if (this.has(b)) break;
      b++;
    }
    if (b >= this.blocks) return null;
    let n = 1;
    while (n < maxBlocks && b + n < this.blocks && this.has(b + n)) n++;
    return { first: b, count: n };
  }

  private set(block: number): void {
    if (this.has(block)) return;
    this.words[block >>> 5] |= 1 << (block & 31);
    this.setCount++;
  }
}

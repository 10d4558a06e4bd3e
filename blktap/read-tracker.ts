// read-tracker: RemusDB's read tracking, content-verified (docs/disk.md "Read tracking").
// Blocks the guest read are remembered as content CRC → block, with the block's write
// generation and the epoch the read completed in. When the memory encoder meets a dirty page
// of checkpoint N whose CRC names a tracked block, the page is sent as a disk reference only
// if: the read completed in an epoch ≤ N, no write to the block has begun since (same
// generation), and the page equals the block on our disk byte for byte (read back, with the
// generation checked again after). Then the backup's block at checkpoint N is that content:
// every write before the read is in an epoch ≤ N, none came after. The backup rebuilds the
// page from its disk at commit and checks the CRC. Copies of blocks the guest made itself
// match too: the lookup is by content, not by where the read landed.
import { assert } from '../dom0/assert';
import { loadAddon } from '../dom0/native';
import type { BlockGenerations } from './block-generations';
import type { DiskSource } from './disk-source';
import { DISK_BLOCK_BYTES } from '../dom0/limits';

interface Tracked {
  crc: number;
  gen: number;
  epoch: number;
}

export interface DiskRef {
  offsetBytes: number;
  crc32c: number;
}

export interface ReadTrackerStats {
  tracked: number;
  reads: number;
  lookups: number;
  refs: number;
  stale: number;
  mismatched: number;
}

export class ReadTracker {
  /** block → what was read there (insertion order = age, for the bound). */
  private readonly byBlock = new Map<number, Tracked>();
  /** content CRC → the latest block read with it. */
  private readonly byCrc = new Map<number, number>();
  private readonly scratch = new Uint8Array(DISK_BLOCK_BYTES);
  private crcs = new Uint32Array(64);
  private readonly counters = { reads: 0, lookups: 0, refs: 0, stale: 0, mismatched: 0 };

  constructor(
    private readonly source: DiskSource,
    private readonly gens: BlockGenerations,
    readonly blocksMax: number,
  ) {
    assert(blocksMax >= 1 && gens.blocks * DISK_BLOCK_BYTES >= source.sizeBytes, 'read tracker options');
  }

  stats(): ReadTrackerStats {
    return { tracked: this.byBlock.size, ...this.counters };
  }

  /** A read of block completed in epoch with content crc, the generation stable and even across it. */
  onBlockRead(block: number, crc: number, gen: number, epoch: number): void {
    if ((gen & 1) !== 0 || block >= this.gens.blocks || (block + 1) * DISK_BLOCK_BYTES > this.source.sizeBytes) return;
    this.counters.reads++;
    this.forget(block);
    this.byBlock.set(block, { crc, gen, epoch });
    this.byCrc.set(crc, block);
    if (this.byBlock.size > this.blocksMax) this.forget(this.byBlock.keys().next().value as number);
  }

  /** Reads through the NBD server: every whole aligned block of the range (one CRC call). */
  onRangeRead(offsetBytes: number, data: Uint8Array, gensBefore: number[], epoch: number): void {
    const first = Math.ceil(offsetBytes / DISK_BLOCK_BYTES);
    const end = Math.floor((offsetBytes + data.length) / DISK_BLOCK_BYTES); // blocks first..end-1 are whole
    if (end <= first) return;
    const at0 = first * DISK_BLOCK_BYTES - offsetBytes;
    const crcs = this.pageCrcs(data.subarray(at0, at0 + (end - first) * DISK_BLOCK_BYTES));
    for (let b = first; b < end; b++) {
      const g = gensBefore[b - Math.floor(offsetBytes / DISK_BLOCK_BYTES)];
      if (g === undefined || this.gens.get(b) !== g) continue; // a write began meanwhile
      this.onBlockRead(b, crcs[b - first], g, epoch);
    }
  }

  /**
   * The disk reference for each 4 KiB page of pages (checkpoint epoch), or null; null for the whole batch when nothing
   * is tracked.
   */
  matchPages(pages: Uint8Array, epoch: number): Array<DiskRef | null> | null {
    assert(pages.length % DISK_BLOCK_BYTES === 0, 'matchPages: whole pages');
    const n = pages.length / DISK_BLOCK_BYTES;
    this.counters.lookups += n;
    if (this.byCrc.size === 0) return null; // no checksum, no array
    const crcs = this.pageCrcs(pages);
    const refs = new Array<DiskRef | null>(n);
    for (let i = 0; i < n; i++)
      refs[i] = this.matchOne(pages.subarray(i * DISK_BLOCK_BYTES, (i + 1) * DISK_BLOCK_BYTES), crcs[i], epoch);
    return refs;
  }

  /** The disk reference for one page, or null. */
  match(page: Uint8Array, epoch: number): DiskRef | null {
    return this.matchPages(page, epoch)?.[0] ?? null;
  }

  /** CRC32C of every page, in one addon call (the array is reused: read before the next call). */
  private pageCrcs(pages: Uint8Array): Uint32Array {
    const n = pages.length / DISK_BLOCK_BYTES;
    if (this.crcs.length < n) this.crcs = new Uint32Array(Math.max(n, 2 * this.crcs.length));
    const out = this.crcs.subarray(0, n);
    loadAddon().crc32cPages(pages, out);
    return out;
  }

  private matchOne(page: Uint8Array, crc: number, epoch: number): DiskRef | null {
    const block = this.byCrc.get(crc);
    if (block === undefined) return null;
    const t = this.byBlock.get(block);
    if (!t || t.crc !== crc || t.epoch > epoch) return null;
    if (this.gens.get(block) !== t.gen) {
      this.counters.stale++;
      this.forget(block);
      return null;
    }
    this.source.read(block * DISK_BLOCK_BYTES, this.scratch);
    if (this.gens.get(block) !== t.gen) {
      this.counters.stale++;
      this.forget(block);
      return null;
    }
    if (Buffer.compare(this.scratch, page) !== 0) {
      this.counters.mismatched++;
      return null;
    }
    this.counters.refs++;
    return { offsetBytes: block * DISK_BLOCK_BYTES, crc32c: crc };
  }

  /** A write begins on the range: what was read there is no longer what the disk holds. */
  invalidate(offsetBytes: number, lengthBytes: number): void {
    if (lengthBytes === 0 || this.byBlock.size === 0) return;
    const last = Math.floor((offsetBytes + lengthBytes - 1) / DISK_BLOCK_BYTES);
    for (let b = Math.floor(offsetBytes / DISK_BLOCK_BYTES); b <= last; b++) this.forget(b);
  }

  private forget(block: number): void {
    const t = this.byBlock.get(block);
    if (!t) return;
    this.byBlock.delete(block);
    if (this.byCrc.get(t.crc) === block) this.byCrc.delete(t.crc);
  }
}

// staging: the backup's copy of one checkpoint in progress. Decoded pages wait here, in
// chunks of one batch each, until CHECKPOINT_END; then they are copied into the replica's
// image at once (and the device state after them). Each pfn may appear once per checkpoint.
// Memory is bounded by the guest's size (a checkpoint holds each page at most once); chunks
// are reused across checkpoints.
import type { PageDecoder } from '../memory/page-codec';
import { PAGE_BYTES, PAGE_RECORD_HEADER_BYTES } from '../limits';
import { protocolError, type DiskRefEntry } from '../protocol/records';
import type { ReplicaDisk } from '../ports';
import { ErrorCode, RemusError } from '../errors';
import { loadAddon } from '../native';
import type { GuestMemory } from '../memory/guest-memory';
import { assert } from '../assert';
import type { ImageCrcs } from './image-crcs';

interface Chunk {
  pages: Uint8Array;
  pfns: BigUint64Array;
  count: number;
}

/** The touched list's first capacity (pfns); it doubles from there, up to the guest's page count. */
const TOUCHED_PFNS_INITIAL = 4096;

export class Staging {
  /** seen[pfn] is 1 exactly when pfn is among touched[0, touchedCount). */
  private readonly seen: Uint8Array;
  /**
   * The distinct pfns of this checkpoint, in arrival order: a typed array that doubles. A
   * JavaScript array of a full copy's 2 M entries (8 GiB) held the backup's loop 50–100 ms as
   * it grew (docs/scale.md); doubling a typed array is one memcpy.
   */
  private touched = new Uint32Array(TOUCHED_PFNS_INITIAL);
  private touchedCount = 0;
  private chunks: Chunk[] = [];
  private free: Chunk[] = [];
  count = 0;
  /** Pages of this checkpoint sent as disk references, resolved at commit. */
  refs: DiskRefEntry[] = [];

  constructor(
    readonly pageCount: number,
    private readonly decoder: PageDecoder,
    private readonly batchPagesMax: number,
  ) {
    this.seen = new Uint8Array(pageCount);
  }

  /** Decodes one container against image into staging (image untouched). */
  add(container: Uint8Array, image: GuestMemory): number {
    const records = this.decoder.unpack(container);
    const chunk = this.free.pop() ?? {
      pages: new Uint8Array(this.batchPagesMax * PAGE_BYTES),
      pfns: new BigUint64Array(this.batchPagesMax),
      count: 0,
    };
    chunk.count = this.decoder.decodeStaged(records, image, chunk.pages, chunk.pfns);
    for (let i = 0; i < chunk.count; i++) {
      const pfn = Number(chunk.pfns[i]);
      if (this.seen[pfn]) {
        this.free.push(chunk);
        throw protocolError(`pfn ${pfn} appears twice in one checkpoint`);
      }
      this.touch(pfn);
    }
    this.chunks.push(chunk);
    this.count += chunk.count;
    return chunk.count;
  }

  /**
   * A checkpoint decoded in place (a FULL one, a continued session's first: nothing committed
   * is at stake) may carry a pfn more than once (a pre-copy resends what the guest wrote; the
   * later record wins): this counts the distinct pfns (a FULL one must reach the guest's page
   * count by CHECKPOINT_END) and returns the batch's pfns, in order (valid until the next call).
   * records: one unpacked batch that decoded without error (well-formed).
   */
  markRecords(records: Uint8Array): Uint32Array {
    const view = new DataView(records.buffer, records.byteOffset, records.byteLength);
    let n = 0;
    for (
      let at = 0;
      at + PAGE_RECORD_HEADER_BYTES <= records.length;
      at += PAGE_RECORD_HEADER_BYTES + view.getUint16(at + 10, true)
    ) {
      const pfn = Number(view.getBigUint64(at, true));
      if (pfn >= this.pageCount) throw protocolError(`pfn ${pfn} is past the guest's ${this.pageCount} pages`);
      this.mark(pfn);
      if (n === this.batchPfns.length) this.batchPfns = grow(this.batchPfns, 2 * n);
      this.batchPfns[n++] = pfn;
    }
    return this.batchPfns.subarray(0, n);
  }

  /** markRecords' answer, reused. */
  private batchPfns: Uint32Array<ArrayBuffer> = new Uint32Array(256);

  /** The pfns of this checkpoint so far (pages and references), each once; valid until applyTo/clear. */
  get pfns(): Uint32Array {
    return this.touched.subarray(0, this.touchedCount);
  }

  /** Distinct pfns of this checkpoint so far (pages and references). */
  get distinctPages(): number {
    return this.touchedCount;
  }

  /**
   * Stages disk references: each pfn once per incremental checkpoint, like pages; in a FULL
   * one a reference may follow a page record of the same pfn (resolved and applied last).
   */
  addRefs(refs: readonly DiskRefEntry[], full: boolean): number {
    for (const r of refs) {
      if (this.seen[r.pfn] && !full) throw protocolError(`pfn ${r.pfn} appears twice in one checkpoint`);
      this.mark(r.pfn);
      this.refs.push(r);
    }
    return refs.length;
  }

  private mark(pfn: number): void {
    if (!this.seen[pfn]) this.touch(pfn);
  }

  /** Adds a pfn not yet seen to the list. */
  private touch(pfn: number): void {
    if (this.touchedCount === this.touched.length) {
      assert(this.touchedCount < this.pageCount, 'each pfn is touched at most once a checkpoint');
      this.touched = grow(this.touched, Math.min(this.pageCount, this.touched.length * 2));
    }
    this.seen[pfn] = 1;
    this.touched[this.touchedCount++] = pfn;
  }

  /**
   * Reads every referenced block from the backup's disk (already at this checkpoint) and
   * checks its CRC: all or nothing, before memory is touched.
   */
  resolveRefs(disk: Pick<ReplicaDisk, 'read'>): Uint8Array {
    const pages = new Uint8Array(this.refs.length * PAGE_BYTES);
    this.refs.forEach((r, i) => {
      const page = pages.subarray(i * PAGE_BYTES, (i + 1) * PAGE_BYTES);
      disk.read(r.offsetBytes, page);
      const crc = loadAddon().crc32c(page);
      if (crc !== r.crc32c) {
        throw new RemusError(
          ErrorCode.DISK_REF_MISMATCH,
          `page ${r.pfn} was sent as disk block ${r.offsetBytes / PAGE_BYTES}, but that block here has ` +
            `CRC32C ${crc.toString(16)}, not ${r.crc32c.toString(16)}: the backup's disk differs from the primary's ` +
            `(the next session copies it again)`,
        );
      }
    });
    return pages;
  }

  /** Copies every staged page into image (the commit), and their CRCs into crcs. */
  applyTo(image: GuestMemory, crcs: ImageCrcs): void {
    for (const c of this.chunks) {
      for (let i = 0; i < c.count; i++)
        image.setPage(Number(c.pfns[i]), c.pages.subarray(i * PAGE_BYTES, (i + 1) * PAGE_BYTES));
      crcs.update(c.pfns, c.count, c.pages);
    }
    this.clear();
  }

  /** Forgets the checkpoint (discard at failover, or after apply). */
  clear(): void {
    this.refs = [];
    // A full checkpoint touched every page: one memset, where a pass over its million entries
    // held the backup's loop ~90 ms at its first commit (4 GiB, docs/scale.md).
    if (this.touchedCount > this.seen.length >>> 6) {
      this.seen.fill(0);
      if (this.touched.length > TOUCHED_PFNS_INITIAL) this.touched = new Uint32Array(TOUCHED_PFNS_INITIAL); // not kept
    } else for (let i = 0; i < this.touchedCount; i++) this.seen[this.touched[i]] = 0;
    this.touchedCount = 0;
    this.free.push(...this.chunks.splice(0).slice(0, 8 - this.free.length));
    this.count = 0;
  }
}

/** A copy of a in a longer array of `length` (one memcpy). */
function grow(a: Uint32Array, length: number): Uint32Array<ArrayBuffer> {
  const b = new Uint32Array(length);
  b.set(a);
  return b;
}

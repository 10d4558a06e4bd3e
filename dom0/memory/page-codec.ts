// page-codec: the memory path's batch API. PageEncoder (primary) owns a domain's page cache
// and encodes a whole batch of dirty pages in one native call; PageDecoder (backup) applies
// records to its own full copy of guest memory. `impl: 'ref'` runs the TypeScript reference
// instead (tests compare the two byte for byte).
import { assert, assertInt } from '../assert';
import { loadAddon, type SlotStore } from '../native';
import { decodeBatchRef, encodeBatchRef, RefSlotStore } from './codec-ref';
import { ENCODING_COUNT, RECORD_SIZE_MAX } from './encodings';
import { PAGE_SIZE, PageCache } from './page-cache';

export type CodecImpl = 'native' | 'ref';

export interface EncoderOptions {
  /** Cache capacity in pages; 0 disables the cache (every page is a miss). */
  cachePages: number;
  /** false = plain Remus: every page is sent RAW and no cache is kept. */
  compress: boolean;
  impl?: CodecImpl;
  /** Largest batch encode() accepts, in pages (bounds the output buffer). */
  batchPagesMax?: number;
}

export interface EncodedBatch {
  /** The page records; valid until the next encode() call. */
  records: Uint8Array;
  /** Encoding chosen per page, in batch order; valid until the next encode() call. */
  kinds: Uint8Array;
}

export class PageEncoder {
  readonly cache: PageCache | null;
  readonly compress: boolean;
  readonly impl: CodecImpl;
  readonly batchPagesMax: number;
  /** Pages sent per encoding (index = encoding number). */
  readonly encodingCounts = new Array<number>(ENCODING_COUNT).fill(0);
  private store: SlotStore | RefSlotStore | null;
  private readonly out: Uint8Array;
  private readonly kinds: Uint8Array;
  private readonly slots: Int32Array;
  private readonly hits: Uint8Array;

  constructor(opts: EncoderOptions) {
    this.compress = opts.compress;
    this.impl = opts.impl ?? 'native';
    this.batchPagesMax = opts.batchPagesMax ?? 4096;
    assertInt(this.batchPagesMax, 1, 1 << 20, 'batchPagesMax');
    assertInt(opts.cachePages, 0, 2 ** 30, 'cachePages');
    const cachePages = opts.compress ? opts.cachePages : 0;
    this.cache = cachePages > 0 ? new PageCache(cachePages) : null;
    this.store = null;
    if (this.cache) {
      this.store = this.impl === 'native' ? new (loadAddon().SlotStore)(cachePages)
        : new RefSlotStore(cachePages);
    }
    this.out = new Uint8Array(this.batchPagesMax * RECORD_SIZE_MAX);
    this.kinds = new Uint8Array(this.batchPagesMax);
    this.slots = new Int32Array(this.batchPagesMax);
    this.hits = new Uint8Array(this.batchPagesMax);
  }

  /** Bytes of page data the cache can hold (its memory bound). */
  get cacheBytes(): number { return this.cache ? this.cache.capacityPages * PAGE_SIZE : 0; }

  /** Encodes pages (count × 4096 bytes) with their pfns, unique within the checkpoint. */
  encode(pages: Uint8Array, pfns: BigUint64Array): EncodedBatch {
    const n = pfns.length;
    assert(n <= this.batchPagesMax, `batch of ${n} pages exceeds batchPagesMax`);
    assert(pages.length === n * PAGE_SIZE, 'encode: pages must hold one page per pfn');
    const slots = this.slots.subarray(0, n), hits = this.hits.subarray(0, n);
    const kinds = this.kinds.subarray(0, n);
    if (this.cache) this.cache.assignBatch(pfns, slots, hits);
    const withCache = this.cache !== null;
    let bytes: number;
    if (this.impl === 'native') {
      bytes = loadAddon().encodeBatch(this.store as SlotStore | null, pages, pfns,
        withCache ? slots : null, withCache ? hits : null, this.compress, this.out, kinds);
    } else {
      const addon = loadAddon();
      bytes = encodeBatchRef(this.store as RefSlotStore | null, pages, pfns,
        withCache ? slots : null, withCache ? hits : null, this.compress, this.out, kinds,
        (p) => addon.lz4Compress(p));
    }
    for (let i = 0; i < n; i++) this.encodingCounts[kinds[i]]++;
    return { records: this.out.subarray(0, bytes), kinds };
  }

  /** The stream restarted: the backup rebuilds from a full copy, so forget all bases. */
  reset(): void { this.cache?.clear(); }

  close(): void {
    this.store?.close();
    this.store = null;
  }
}

/** Backup side: applies page records to a full image of guest memory. */
export class PageDecoder {
  constructor(readonly impl: CodecImpl = 'native') {}

  /** Decodes records in place into image; returns the number of records. */
  applyInPlace(records: Uint8Array, image: Uint8Array): number {
    return this.impl === 'native' ? loadAddon().decodeBatch(records, image)
      : decodeBatchRef(records, image);
  }

  /** Decodes records against image into staged pages (image untouched). */
  decodeStaged(records: Uint8Array, image: Uint8Array, staged: Uint8Array,
    stagedPfns: BigUint64Array): number {
    return this.impl === 'native' ? loadAddon().decodeBatch(records, image, staged, stagedPfns)
      : decodeBatchRef(records, image, staged, stagedPfns);
  }
}

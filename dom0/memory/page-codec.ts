// page-codec: the memory path's batch API. PageEncoder (primary) owns a domain's page cache,
// encodes a whole batch of dirty pages into page records in one native call (stage 1) and
// packs the batch into its wire container, zstd-compressed by default (stage 2).
// PageDecoder (backup) unpacks containers and applies records to its own full copy of
// guest memory. `impl: 'ref'` runs the TypeScript reference for stage 1 (tests compare the
// two byte for byte); stage 2 is libzstd's either way.
import { assert, assertInt } from '../assert';
import { loadAddon, type SlotStore } from '../native';
import { decodeBatchRef, encodeBatchRef, RefSlotStore } from './codec-ref';
import { ENCODING_COUNT, Policy, ZSTD_LEVEL, policyOf, type Compressor, type PolicyValue } from './encodings';
import { PageCache } from './page-cache';
import { GuestMemory } from './guest-memory';
import { BATCH_PAGES_MAX_DEFAULT, PAGE_BYTES, PAGE_RECORD_BYTES_MAX } from '../limits';

export type CodecImpl = 'native' | 'ref';

export interface EncoderOptions {
  /** Cache capacity in pages; 0 disables the cache (every page is a miss). */
  cachePages: number;
  /** zstd (default): records packed with zstd; lz4: LZ4 per page; none: plain Remus, RAW. */
  compressor: Compressor;
  impl?: CodecImpl;
  /** Largest batch encode() accepts, in pages (bounds every buffer). */
  batchPagesMax?: number;
}

export interface EncodedBatch {
  /** The page records (stage 1); valid until the next encode() call. */
  records: Uint8Array;
  /** Encoding chosen per page, in batch order; valid until the next encode() call. */
  kinds: Uint8Array;
  /** The container the wire carries (stage 2); valid until the next encode() call. */
  container: Uint8Array;
}

export class PageEncoder {
  readonly cache: PageCache | null;
  readonly compressor: Compressor;
  readonly policy: PolicyValue;
  readonly impl: CodecImpl;
  readonly batchPagesMax: number;
  /** Pages sent per encoding (index = encoding number). */
  readonly encodingCounts = new Array<number>(ENCODING_COUNT).fill(0);
  private store: SlotStore | RefSlotStore | null;
  private readonly out: Uint8Array;
  private readonly packed: Uint8Array;
  private readonly kinds: Uint8Array;
  private readonly slots: Int32Array;
  private readonly hits: Uint8Array;

  constructor(opts: EncoderOptions) {
    this.compressor = opts.compressor;
    this.policy = policyOf(opts.compressor);
    this.impl = opts.impl ?? 'native';
    this.batchPagesMax = opts.batchPagesMax ?? BATCH_PAGES_MAX_DEFAULT;
    assertInt(this.batchPagesMax, 1, 1 << 16, 'batchPagesMax');
    assertInt(opts.cachePages, 0, 2 ** 30, 'cachePages');
    const cachePages = this.policy === Policy.RAW ? 0 : opts.cachePages;
    this.cache = cachePages > 0 ? new PageCache(cachePages) : null;
    this.store = null;
    const addon = loadAddon();
    if (this.cache) {
      this.store = this.impl === 'native' ? new addon.SlotStore(cachePages) : new RefSlotStore(cachePages);
    }
    this.out = new Uint8Array(this.batchPagesMax * PAGE_RECORD_BYTES_MAX);
    this.packed = new Uint8Array(addon.packBound(this.out.length));
    this.kinds = new Uint8Array(this.batchPagesMax);
    this.slots = new Int32Array(this.batchPagesMax);
    this.hits = new Uint8Array(this.batchPagesMax);
  }

  /** Bytes of page data the cache can hold (its memory bound). */
  get cacheBytes(): number {
    return this.cache ? this.cache.capacityPages * PAGE_BYTES : 0;
  }

  /** Encodes pages (count × 4096 bytes) with their pfns, unique within the checkpoint. */
  encode(pages: Uint8Array, pfns: BigUint64Array): EncodedBatch {
    const n = pfns.length;
    assert(n <= this.batchPagesMax, `batch of ${n} pages exceeds batchPagesMax`);
    assert(pages.length === n * PAGE_BYTES, 'encode: pages must hold one page per pfn');
    const slots = this.slots.subarray(0, n),
      hits = this.hits.subarray(0, n);
    const kinds = this.kinds.subarray(0, n);
    if (this.cache) this.cache.assignBatch(pfns, slots, hits);
    const withCache = this.cache !== null;
    const addon = loadAddon();
    const bytes =
      this.impl === 'native'
        ? addon.encodeBatch(
            this.store as SlotStore | null,
            pages,
            pfns,
            withCache ? slots : null,
            withCache ? hits : null,
            this.policy,
            this.out,
            kinds,
          )
        : encodeBatchRef(
            this.store as RefSlotStore | null,
            pages,
            pfns,
            withCache ? slots : null,
            withCache ? hits : null,
            this.policy,
            this.out,
            kinds,
            (p) => addon.lz4Compress(p),
          );
    for (let i = 0; i < n; i++) this.encodingCounts[kinds[i]]++;
    const records = this.out.subarray(0, bytes);
    const level = this.compressor === 'zstd' ? ZSTD_LEVEL : 0;
    const packedBytes = addon.packBatch(records, level, this.packed);
    return { records, kinds, container: this.packed.subarray(0, packedBytes) };
  }

  /** The backup got pfn some other way (a disk reference): it is no delta base any more. */
  forget(pfn: number): void {
    this.cache?.forget(pfn);
  }

  /** The stream restarted: the backup rebuilds from a full copy, so forget all bases. */
  reset(): void {
    this.cache?.clear();
  }

  close(): void {
    this.store?.close();
    this.store = null;
  }
}

/** Backup side: unpacks containers and applies page records to a full image of guest memory. */
export class PageDecoder {
  private readonly records: Uint8Array;

  constructor(
    readonly impl: CodecImpl = 'native',
    readonly batchPagesMax = BATCH_PAGES_MAX_DEFAULT,
  ) {
    this.records = new Uint8Array(batchPagesMax * PAGE_RECORD_BYTES_MAX);
  }

  /** The records of a container; valid until the next unpack(). Throws ERR_BAD_PAGE_BATCH. */
  unpack(container: Uint8Array): Uint8Array {
    return this.records.subarray(0, loadAddon().unpackBatch(container, this.records));
  }

  /** Decodes records in place into image; returns the number of records. */
  applyInPlace(records: Uint8Array, image: Uint8Array | GuestMemory): number {
    return this.impl === 'native'
      ? loadAddon().decodeBatch(records, nativeImage(image))
      : decodeBatchRef(records, image);
  }

  /** Decodes records against image into staged pages (image untouched). */
  decodeStaged(
    records: Uint8Array,
    image: Uint8Array | GuestMemory,
    staged: Uint8Array,
    stagedPfns: BigUint64Array,
  ): number {
    return this.impl === 'native'
      ? loadAddon().decodeBatch(records, nativeImage(image), staged, stagedPfns)
      : decodeBatchRef(records, image, staged, stagedPfns);
  }
}

/** The decode base as the addon takes it: one buffer, or the segments of a large guest. */
function nativeImage(image: Uint8Array | GuestMemory): Uint8Array | readonly Uint8Array[] {
  return image instanceof GuestMemory ? image.segments : image;
}

// guest-memory: a guest's memory as JavaScript sees it — pages in segments of 1 GiB. One
// JavaScript buffer holds at most 2^32 bytes on Node.js 20 (buffer.constants.MAX_LENGTH),
// and database guests have 4–64 GiB, so nothing that walks guest memory may assume one
// Uint8Array: it asks for a page (`page(pfn)`, a 4 KiB view) or hands `segments` to the
// addon, whose decoder takes the same segment list (native-xc/src/page_codec.h, DecodeTarget).
// The memory behind the segments is the caller's: a simulated domain's arena (windows of
// it, `Arena.view`), plain JavaScript buffers (a Xen replica, a replay), or one buffer cut up.
import { assert } from '../assert';
import { ErrorCode, RemusError } from '../errors';
import { loadAddon, type NativeArena } from '../native';
import { PAGE_BYTES } from '../limits';

/** Pages per segment: 1 GiB. Every segment but the last holds exactly this many. */
export const SEGMENT_PAGES = 2 ** 18;
export const SEGMENT_BYTES = SEGMENT_PAGES * PAGE_BYTES;
/** Largest guest memory in pages: 64 GiB (the arena's mapping limit, and 64 segments). */
export const GUEST_PAGES_MAX = 2 ** 24;

export class GuestMemory {
  /**
   * Invariant: segments[i] holds exactly segmentPages pages for i < last; the last holds
   * 1..segmentPages. segmentPages is SEGMENT_PAGES but for tests that cut small guests finely
   * (the seeded simulator: pages that straddle no boundary, decodes that span several).
   */
  readonly segments: readonly Uint8Array[];
  readonly pageCount: number;

  private constructor(
    segments: Uint8Array[],
    readonly segmentPages = SEGMENT_PAGES,
  ) {
    const segmentBytes = segmentPages * PAGE_BYTES;
    assert(segments.length >= 1 && segmentPages >= 1, 'guest memory has at least one segment');
    segments.forEach((s, i) => {
      const last = i === segments.length - 1;
      assert(
        last ? s.length > 0 && s.length <= segmentBytes && s.length % PAGE_BYTES === 0 : s.length === segmentBytes,
        'guest memory segment length',
      );
    });
    this.segments = segments;
    this.pageCount = segments.reduce((n, s) => n + s.length / PAGE_BYTES, 0);
  }

  get byteLength(): number {
    return this.pageCount * PAGE_BYTES;
  }

  /** Memory of `pages` pages in fresh JavaScript buffers (zeroed). ERR_OUT_OF_MEMORY when refused. */
  static allocate(pages: number, segmentPages = SEGMENT_PAGES): GuestMemory {
    checkPages(pages);
    const segs: Uint8Array[] = [];
    try {
      for (let p = 0; p < pages; p += segmentPages)
        segs.push(new Uint8Array(Math.min(segmentPages, pages - p) * PAGE_BYTES));
    } catch (e) {
      throw new RemusError(
        ErrorCode.OUT_OF_MEMORY,
        `cannot allocate ${pages} pages of guest memory`,
        { pages },
        { cause: e },
      );
    }
    return new GuestMemory(segs, segmentPages);
  }

  /** memory itself, or views of one buffer (callers that take either). */
  static of(memory: GuestMemory | Uint8Array): GuestMemory {
    return memory instanceof GuestMemory ? memory : GuestMemory.over(memory);
  }

  /** Views of one buffer (up to 2^32 bytes; shares its memory). */
  static over(bytes: Uint8Array, segmentPages = SEGMENT_PAGES): GuestMemory {
    assert(bytes.length > 0 && bytes.length % PAGE_BYTES === 0, 'guest memory is whole pages');
    const segs: Uint8Array[] = [],
      step = segmentPages * PAGE_BYTES;
    for (let o = 0; o < bytes.length; o += step) segs.push(bytes.subarray(o, Math.min(bytes.length, o + step)));
    return new GuestMemory(segs, segmentPages);
  }

  /** Windows of a native arena (shares its memory; valid while the arena is). */
  static ofArena(arena: NativeArena): GuestMemory {
    const pages = arena.pageCount,
      segs: Uint8Array[] = [];
    for (let p = 0; p < pages; p += SEGMENT_PAGES)
      segs.push(new Uint8Array(arena.view(p, Math.min(SEGMENT_PAGES, pages - p))));
    return new GuestMemory(segs);
  }

  /** The 4 KiB of page pfn (a view: writes go to guest memory). */
  page(pfn: number): Uint8Array {
    assert(Number.isInteger(pfn) && pfn >= 0 && pfn < this.pageCount, 'pfn inside guest memory');
    const seg = this.segments[Math.floor(pfn / this.segmentPages)],
      at = (pfn % this.segmentPages) * PAGE_BYTES;
    return seg.subarray(at, at + PAGE_BYTES);
  }

  /**
   * Pages first..first+count-1 as one buffer: a view when they lie in one segment, else a
   * copy (a batch that crosses a segment boundary).
   */
  range(first: number, count: number): Uint8Array {
    assert(Number.isInteger(count) && count >= 1 && first + count <= this.pageCount, 'range inside guest memory');
    const seg = Math.floor(first / this.segmentPages);
    if (Math.floor((first + count - 1) / this.segmentPages) === seg) {
      const at = (first % this.segmentPages) * PAGE_BYTES;
      return this.segments[seg].subarray(at, at + count * PAGE_BYTES);
    }
    const out = new Uint8Array(count * PAGE_BYTES);
    for (let i = 0; i < count; i++) out.set(this.page(first + i), i * PAGE_BYTES);
    return out;
  }

  setPage(pfn: number, src: Uint8Array): void {
    assert(src.length === PAGE_BYTES, 'one page');
    this.page(pfn).set(src);
  }

  /** out[i] = CRC32C of page first + i: one native call per run of pages within a segment. */
  pageCrcs(first: number, out: Uint32Array): void {
    assert(Number.isInteger(first) && first >= 0 && first + out.length <= this.pageCount, 'pages inside guest memory');
    const addon = loadAddon();
    for (let p = first, end = first + out.length; p < end; ) {
      const at = p % this.segmentPages,
        run = Math.min(end - p, this.segmentPages - at);
      const seg = this.segments[Math.floor(p / this.segmentPages)];
      addon.crc32cPages(
        seg.subarray(at * PAGE_BYTES, (at + run) * PAGE_BYTES),
        out.subarray(p - first, p - first + run),
      );
      p += run;
    }
  }

  /** CRC32C of all of memory, in page order (equal to the CRC of one buffer holding it). */
  crc32c(): number {
    const addon = loadAddon();
    return this.segments.reduce((crc, s) => addon.crc32c(s, crc), 0);
  }

  /** Whether both hold the same bytes (whatever their segments). */
  equals(other: GuestMemory): boolean {
    if (other.pageCount !== this.pageCount) return false;
    const bytes = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.length);
    if (other.segmentPages === this.segmentPages)
      return this.segments.every((s, i) => bytes(s).equals(bytes(other.segments[i])));
    for (let p = 0; p < this.pageCount; p++) if (Buffer.compare(this.page(p), other.page(p)) !== 0) return false;
    return true;
  }

  /** A copy in fresh JavaScript buffers, cut the same way. */
  clone(): GuestMemory {
    return new GuestMemory(
      this.segments.map((s) => Uint8Array.from(s)),
      this.segmentPages,
    );
  }
}

function checkPages(pages: number): void {
  if (!Number.isSafeInteger(pages) || pages < 1 || pages > GUEST_PAGES_MAX) {
    throw new RemusError(
      ErrorCode.BAD_ARGUMENT,
      `${String(pages)} pages is not a guest memory size (1..${GUEST_PAGES_MAX})`,
    );
  }
}

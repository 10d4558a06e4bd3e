// libxc-stream: reads and writes libxenguest's migration stream v2 (Xen's
// docs/specs/libxc-migration-stream): the image and domain headers, then records of
// {u32 type, u32 body_length, body, zero padding to 8 octets}, little-endian on x86. The Xen
// adapter cuts the stream into checkpoints (everything up to and including a CHECKPOINT
// record), takes the page contents out of PAGE_DATA records (they travel through our page
// codecs) and keeps the rest as a "skeleton"; the backup rebuilds the exact bytes from the
// skeleton and its memory image. Records we do not know stay opaque (copied as they are).
import { ErrorCode, RemusError } from '../../errors';
import { PAGE_BYTES } from '../../limits';

export const IMAGE_HEADER_BYTES = 24;
export const DOMAIN_HEADER_BYTES = 16;
export const REC_HEADER_BYTES = 8;
export const REC = {
  END: 0,
  PAGE_DATA: 1,
  X86_PV_INFO: 2,
  X86_PV_P2M_FRAMES: 3,
  SHARED_INFO: 7,
  CHECKPOINT: 0x0e,
} as const;
/** libxc batches at most 1024 pages per PAGE_DATA record; a little slack above that. */
export const PAGES_PER_RECORD_MAX = 4096;
export const RECORD_BODY_BYTES_MAX = 8 + PAGES_PER_RECORD_MAX * (8 + PAGE_BYTES);
const IMAGE_MARKER = 0xffffffffffffffffn,
  IMAGE_ID = 0x58454e46; // "XENF"

/** XEN_DOMCTL_PFINFO_* types (bits 63..60 of a PAGE_DATA pfn word) that carry no page data. */
const TYPE_BROKEN = 0xd,
  TYPE_XALLOC = 0xe,
  TYPE_XTAB = 0xf;
export function typeHasData(type: number): boolean {
  return type !== TYPE_BROKEN && type !== TYPE_XALLOC && type !== TYPE_XTAB;
}

export function malformed(what: string): RemusError {
  return new RemusError(ErrorCode.XEN, `malformed libxc migration stream: ${what}`);
}

const padded = (n: number): number => (n + 7) & ~7;

/** Checks the image header (big-endian, version ≥ 2, little-endian records) and domain header. */
export function checkHeaders(b: Uint8Array): {
  version: number;
  domainType: number;
  pageShift: number;
  xenMajor: number;
  xenMinor: number;
} {
  if (b.length < IMAGE_HEADER_BYTES + DOMAIN_HEADER_BYTES)
    throw malformed(`headers need ${IMAGE_HEADER_BYTES + DOMAIN_HEADER_BYTES} octets, got ${b.length}`);
  const v = new DataView(b.buffer, b.byteOffset, b.length);
  if (v.getBigUint64(0) !== IMAGE_MARKER || v.getUint32(8) !== IMAGE_ID)
    throw malformed('no image header (marker/"XENF" id missing)');
  const version = v.getUint32(12),
    options = v.getUint16(16);
  if (version < 2 || version > 3) throw malformed(`image version ${version} (this reader knows 2 and 3)`);
  if (options & 1) throw malformed('big-endian records are not supported');
  const pageShift = v.getUint16(IMAGE_HEADER_BYTES + 4, true);
  if (pageShift !== 12) throw malformed(`page shift ${pageShift} (only 4 KiB pages)`);
  return {
    version,
    domainType: v.getUint32(IMAGE_HEADER_BYTES, true),
    pageShift,
    xenMajor: v.getUint32(IMAGE_HEADER_BYTES + 8, true),
    xenMinor: v.getUint32(IMAGE_HEADER_BYTES + 12, true),
  };
}

/** One record: its type, and its whole bytes (header, body, padding) as read. */
export interface RawRecord {
  type: number;
  bodyLength: number;
  bytes: Buffer;
}

/**
 * Cuts a byte stream (arriving in chunks of any size) into the headers, then records.
 * Holds at most one record plus one chunk.
 */
export class RecordSplitter {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private headerDone: boolean;

  constructor(
    private readonly onHeaders: (h: Buffer) => void,
    private readonly onRecord: (r: RawRecord) => void,
    expectHeaders = true,
  ) {
    this.headerDone = !expectHeaders;
  }

  get pendingBytes(): number {
    return this.buffered;
  }

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    for (;;) {
      if (!this.headerDone) {
        if (this.buffered < IMAGE_HEADER_BYTES + DOMAIN_HEADER_BYTES) return;
        const h = this.take(IMAGE_HEADER_BYTES + DOMAIN_HEADER_BYTES);
        checkHeaders(h);
        this.headerDone = true;
        this.onHeaders(h);
        continue;
      }
      if (this.buffered < REC_HEADER_BYTES) return;
      const head = this.peek(REC_HEADER_BYTES);
      const type = head.readUInt32LE(0),
        bodyLength = head.readUInt32LE(4);
      if (bodyLength > RECORD_BODY_BYTES_MAX)
        throw malformed(`record type ${type} claims ${bodyLength} octets (limit ${RECORD_BODY_BYTES_MAX})`);
      const total = REC_HEADER_BYTES + padded(bodyLength);
      if (this.buffered < total) return;
      this.onRecord({ type, bodyLength, bytes: this.take(total) });
    }
  }

  /** The stream ended: anything buffered is a truncated record. */
  end(): void {
    if (this.buffered > 0) throw malformed(`stream ends inside a record (${this.buffered} octets left over)`);
  }

  private peek(n: number): Buffer {
    if (this.chunks[0].length < n) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0].subarray(0, n);
  }

  private take(n: number): Buffer {
    let out: Buffer;
    if (this.chunks[0].length >= n) {
      out = this.chunks[0].subarray(0, n);
    } else {
      out = Buffer.allocUnsafe(n);
      let at = 0;
      while (at < n) {
        const c = this.chunks[0],
          k = Math.min(c.length, n - at);
        c.copy(out, at, 0, k);
        at += k;
        if (k < c.length) {
          this.chunks[0] = c.subarray(k);
          break;
        }
        this.chunks.shift();
      }
      this.buffered -= n;
      return out;
    }
    if (this.chunks[0].length === n) this.chunks.shift();
    else this.chunks[0] = this.chunks[0].subarray(n);
    this.buffered -= n;
    return out;
  }
}

/** A PAGE_DATA record's pfn words: pfns, types, and where each page's data starts (-1: none). */
export interface PageData {
  count: number;
  pfns: Float64Array;
  types: Uint8Array;
  dataOffsets: Int32Array;
  dataPages: number;
}

/** Parses a PAGE_DATA record (whole bytes or stripped: then the page data is absent). */
export function parsePageData(rec: Buffer, stripped: boolean): PageData {
  if (rec.length < REC_HEADER_BYTES + 8) throw malformed('PAGE_DATA record shorter than its count field');
  const bodyLength = rec.readUInt32LE(4),
    count = rec.readUInt32LE(8);
  if (count < 1 || count > PAGES_PER_RECORD_MAX)
    throw malformed(`PAGE_DATA with ${count} pfns (1..${PAGES_PER_RECORD_MAX})`);
  const wordsEnd = REC_HEADER_BYTES + 8 + 8 * count;
  if (rec.length < wordsEnd) throw malformed(`PAGE_DATA with ${count} pfns is cut short`);
  const pfns = new Float64Array(count),
    types = new Uint8Array(count),
    dataOffsets = new Int32Array(count);
  let dataPages = 0;
  for (let i = 0; i < count; i++) {
    const lo = rec.readUInt32LE(REC_HEADER_BYTES + 8 + 8 * i),
      hi = rec.readUInt32LE(REC_HEADER_BYTES + 12 + 8 * i);
    types[i] = hi >>> 28;
    if (hi & 0x0ff00000) throw malformed(`PAGE_DATA pfn word ${i} sets reserved bits`);
    pfns[i] = (hi & 0xfffff) * 2 ** 32 + lo;
    if (typeHasData(types[i])) dataOffsets[i] = wordsEnd + PAGE_BYTES * dataPages++;
    else dataOffsets[i] = -1;
  }
  if (bodyLength !== 8 + 8 * count + PAGE_BYTES * dataPages) {
    throw malformed(
      `PAGE_DATA body is ${bodyLength} octets; ${count} pfns with ${dataPages} data pages ` +
        `need ${8 + 8 * count + PAGE_BYTES * dataPages}`,
    );
  }
  if (rec.length !== (stripped ? wordsEnd : REC_HEADER_BYTES + bodyLength))
    throw malformed(
      `PAGE_DATA record is ${rec.length} octets, expected ${stripped ? wordsEnd : REC_HEADER_BYTES + bodyLength}`,
    );
  return { count, pfns, types, dataOffsets, dataPages };
}

/** A PAGE_DATA record made of some entries of another (same words, page data appended by the writer). */
export function pageDataHeader(src: Buffer, keep: number[], dataPages: number): Buffer {
  const out = Buffer.alloc(REC_HEADER_BYTES + 8 + 8 * keep.length);
  out.writeUInt32LE(REC.PAGE_DATA, 0);
  out.writeUInt32LE(8 + 8 * keep.length + PAGE_BYTES * dataPages, 4);
  out.writeUInt32LE(keep.length, 8);
  keep.forEach((i, k) =>
    src.copy(out, REC_HEADER_BYTES + 8 + 8 * k, REC_HEADER_BYTES + 8 + 8 * i, REC_HEADER_BYTES + 16 + 8 * i),
  );
  return out;
}

/** Walks the records of a buffer (whole or stripped); PAGE_DATA records in it are stripped when `stripped`. */
export function* records(b: Buffer, stripped: boolean): Generator<Buffer> {
  let at = 0;
  while (at < b.length) {
    if (b.length - at < REC_HEADER_BYTES) throw malformed(`${b.length - at} octets after the last record`);
    const type = b.readUInt32LE(at),
      bodyLength = b.readUInt32LE(at + 4);
    if (bodyLength > RECORD_BODY_BYTES_MAX) throw malformed(`record type ${type} claims ${bodyLength} octets`);
    let len = REC_HEADER_BYTES + padded(bodyLength);
    if (stripped && type === REC.PAGE_DATA) {
      if (b.length - at < REC_HEADER_BYTES + 8) throw malformed('stripped PAGE_DATA cut short');
      len = REC_HEADER_BYTES + 8 + 8 * b.readUInt32LE(at + 8);
    }
    if (at + len > b.length)
      throw malformed(`record type ${type} at offset ${at} is cut short (${len} octets, ${b.length - at} left)`);
    yield b.subarray(at, at + len);
    at += len;
  }
}

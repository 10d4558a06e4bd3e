// codec-ref: the reference implementation of docs/memory-encoding.md in TypeScript. It is
// written for clarity, page by page, and must produce the same bytes as the native batch
// encoder (tests assert it). The LZ4 candidate itself comes from liblz4 through the addon
// (the block bytes are liblz4's to define); selection, framing, XOR+RLE and all decoding,
// LZ4 blocks included, are independent TypeScript.
import { GuestMemory } from './guest-memory';
import { ErrorCode, RemusError } from '../errors';
import { assert } from '../assert';
import {
  ENCODING_NAMES,
  Encoding,
  Policy,
  TRY_LZ4_AFTER_XOR_RLE,
  TRY_XOR_LZ4_ABOVE,
  type PolicyValue,
} from './encodings';
import { lz4DecodeBlock } from './lz4-block';
import { PAGE_BYTES, PAGE_RECORD_BYTES_MAX, PAGE_RECORD_HEADER_BYTES } from '../limits';

const PAYLOAD_MAX = PAGE_BYTES - 1;
const MIN_ZERO_GAP = 3;

export type Lz4Compress = (page: Uint8Array) => Uint8Array | null;

/** Page bytes of a cache, in plain memory (the native codec uses SlotStore). */
export class RefSlotStore {
  readonly bytes: Uint8Array;
  constructor(readonly slotCount: number) {
    this.bytes = new Uint8Array(slotCount * PAGE_BYTES);
  }
  slot(i: number): Uint8Array {
    return this.bytes.subarray(i * PAGE_BYTES, (i + 1) * PAGE_BYTES);
  }
  read(i: number, dst: Uint8Array): void {
    dst.set(this.slot(i));
  }
  close(): void {
    /* plain memory */
  }
}

const varintSize = (v: number): number => (v < 0x80 ? 1 : 2);

function putVarint(out: Uint8Array, o: number, v: number): number {
  if (v < 0x80) {
    out[o] = v;
    return 1;
  }
  out[o] = 0x80 | (v & 0x7f);
  out[o + 1] = v >>> 7;
  return 2;
}

/** Canonical XOR+RLE of page^base, or null when longer than cap. */
export function xorRleEncode(page: Uint8Array, base: Uint8Array, cap: number): Uint8Array | null {
  const out = new Uint8Array(cap + 4);
  let o = 0,
    pos = 0,
    i = 0;
  for (;;) {
    while (i < PAGE_BYTES && page[i] === base[i]) i++;
    if (i >= PAGE_BYTES) return out.slice(0, o);
    let j = i + 1,
      zeros = 0,
      end = -1;
    for (; j < PAGE_BYTES; j++) {
      if (page[j] !== base[j]) {
        zeros = 0;
        continue;
      }
      if (++zeros === MIN_ZERO_GAP) {
        end = j + 1 - MIN_ZERO_GAP;
        break;
      }
    }
    if (end < 0) end = PAGE_BYTES - zeros;
    const lit = end - i,
      gap = i - pos;
    if (o + varintSize(gap) + varintSize(lit) + lit > cap) return null;
    o += putVarint(out, o, gap);
    o += putVarint(out, o, lit);
    for (let k = 0; k < lit; k++) out[o + k] = page[i + k] ^ base[i + k];
    o += lit;
    pos = i = end;
  }
}

const isZero = (p: Uint8Array): boolean => p.every((b) => b === 0);
const equal = (a: Uint8Array, b: Uint8Array): boolean => Buffer.compare(a, b) === 0;

/** Chooses the encoding of one page (policy v1); returns [encoding, payload]. */
export function choosePageEncoding(
  page: Uint8Array,
  base: Uint8Array | null,
  policy: PolicyValue,
  lz4: Lz4Compress,
): [number, Uint8Array] {
  if (policy === Policy.RAW) return [Encoding.RAW, page];
  if (isZero(page)) return [Encoding.ZERO, new Uint8Array(0)];
  if (base && equal(page, base)) return [Encoding.UNCHANGED, new Uint8Array(0)];
  let best: [number, Uint8Array] | null = null;
  const consider = (enc: number, p: Uint8Array | null): void => {
    if (p && p.length <= PAYLOAD_MAX && (!best || p.length < best[1].length)) best = [enc, p];
  };
  if (base) consider(Encoding.XOR_RLE, xorRleEncode(page, base, PAYLOAD_MAX));
  const len = (): number => (best ? best[1].length : 0);
  if (policy !== Policy.PAGE_LZ4) return best ?? [Encoding.RAW, page];
  if (!base || !best || len() > TRY_LZ4_AFTER_XOR_RLE) consider(Encoding.LZ4, lz4(page));
  if (base && (!best || len() > TRY_XOR_LZ4_ABOVE)) {
    const delta = new Uint8Array(PAGE_BYTES);
    for (let k = 0; k < PAGE_BYTES; k++) delta[k] = page[k] ^ base[k];
    consider(Encoding.XOR_LZ4, lz4(delta));
  }
  return best ?? [Encoding.RAW, page];
}

function putHeader(out: Uint8Array, o: number, pfn: bigint, enc: number, length: number): void {
  const dv = new DataView(out.buffer, out.byteOffset + o, PAGE_RECORD_HEADER_BYTES);
  dv.setBigUint64(0, pfn, true);
  dv.setUint8(8, enc);
  dv.setUint8(9, 0);
  dv.setUint16(10, length, true);
}

/** Same contract as the addon's encodeBatch. */
export function encodeBatchRef(
  store: RefSlotStore | null,
  pages: Uint8Array,
  pfns: BigUint64Array,
  slots: Int32Array | null,
  hits: Uint8Array | null,
  policy: PolicyValue,
  out: Uint8Array,
  kinds: Uint8Array,
  lz4: Lz4Compress,
): number {
  assert(pages.length === pfns.length * PAGE_BYTES, 'encodeBatchRef: pages/pfns');
  assert(out.length >= pfns.length * PAGE_RECORD_BYTES_MAX, 'encodeBatchRef: out too small');
  let o = 0;
  for (let i = 0; i < pfns.length; i++) {
    const page = pages.subarray(i * PAGE_BYTES, (i + 1) * PAGE_BYTES);
    const slot = store && slots ? store.slot(slots[i]) : null;
    const base = slot && hits?.[i] ? slot : null;
    const [enc, payload] = choosePageEncoding(page, base, policy, lz4);
    putHeader(out, o, pfns[i], enc, payload.length);
    out.set(payload, o + PAGE_RECORD_HEADER_BYTES);
    o += PAGE_RECORD_HEADER_BYTES + payload.length;
    kinds[i] = enc;
    if (slot) slot.set(page);
  }
  return o;
}

function fault(n: number, offset: number, pfn: bigint, enc: number, what: string): RemusError {
  const name = ENCODING_NAMES[enc] ?? 'UNKNOWN';
  return new RemusError(
    ErrorCode.BAD_PAGE_RECORD,
    `malformed page record #${n} (pfn 0x${pfn.toString(16)}, encoding ${name}) at batch offset ${offset}: ${what}`,
  );
}

function lengthProblem(enc: number, len: number): string | null {
  switch (enc) {
    case Encoding.RAW:
      return len === PAGE_BYTES ? null : 'RAW payload is not one page long';
    case Encoding.ZERO:
    case Encoding.UNCHANGED:
      return len === 0 ? null : 'ZERO/UNCHANGED record carries a payload';
    case Encoding.XOR_RLE:
      return len >= 2 && len < PAGE_BYTES ? null : 'XOR_RLE payload length out of range';
    case Encoding.LZ4:
    case Encoding.XOR_LZ4:
      return len >= 1 && len < PAGE_BYTES ? null : 'LZ4 payload length out of range';
    case Encoding.DISK_REF:
      return 'DISK_REF records need read tracking, which this stream did not negotiate';
    default:
      return 'unknown page encoding';
  }
}

/** XOR+RLE payload applied to a copy of base; returns the page or a reason. */
function xorRleDecode(p: Uint8Array, base: Uint8Array): Uint8Array | string {
  const page = Uint8Array.from(base);
  let i = 0,
    pos = 0;
  const varint = (): number | string => {
    if (i >= p.length) return 'XOR_RLE token cut by the end of the payload';
    const b0 = p[i++];
    if (!(b0 & 0x80)) return b0;
    if (i >= p.length) return 'XOR_RLE varint cut by the end of the payload';
    const b1 = p[i++];
    if (b1 & 0x80) return 'XOR_RLE varint longer than 2 octets';
    if (b1 === 0) return 'XOR_RLE varint not in shortest form';
    return (b0 & 0x7f) | (b1 << 7);
  };
  while (i < p.length) {
    const zeros = varint();
    if (typeof zeros === 'string') return zeros;
    const lit = varint();
    if (typeof lit === 'string') return lit;
    if (lit === 0) return 'XOR_RLE literal of length 0';
    if (pos + zeros + lit > PAGE_BYTES) return 'XOR_RLE run passes the end of the page';
    if (lit > p.length - i) return 'XOR_RLE literal cut by the end of the payload';
    pos += zeros;
    for (let k = 0; k < lit; k++) page[pos + k] ^= p[i + k];
    pos += lit;
    i += lit;
  }
  return page;
}

function lz4Page(p: Uint8Array): Uint8Array | string {
  const page = new Uint8Array(PAGE_BYTES);
  const n = lz4DecodeBlock(p, page);
  if (typeof n === 'string') return n;
  return n === PAGE_BYTES ? page : 'LZ4 block does not decode to exactly one page';
}

function decodePayload(enc: number, p: Uint8Array, base: Uint8Array): Uint8Array | string {
  switch (enc) {
    case Encoding.RAW:
      return p;
    case Encoding.ZERO:
      return new Uint8Array(PAGE_BYTES);
    case Encoding.UNCHANGED:
      return base;
    case Encoding.XOR_RLE:
      return xorRleDecode(p, base);
    case Encoding.LZ4:
      return lz4Page(p);
    default: {
      const d = lz4Page(p);
      if (typeof d === 'string') return d;
      for (let k = 0; k < PAGE_BYTES; k++) d[k] ^= base[k];
      return d;
    }
  }
}

/** Same contract as the addon's decodeBatch; throws RemusError BAD_PAGE_RECORD. */
export function decodeBatchRef(
  records: Uint8Array,
  memory: Uint8Array | GuestMemory,
  staged?: Uint8Array,
  stagedPfns?: BigUint64Array,
): number {
  const image = GuestMemory.of(memory);
  const pageCount = BigInt(image.pageCount);
  let off = 0,
    n = 0;
  while (off < records.length) {
    if (records.length - off < PAGE_RECORD_HEADER_BYTES) {
      throw fault(n, off, 0n, -1, 'record header cut by the end of the batch');
    }
    const dv = new DataView(records.buffer, records.byteOffset + off, PAGE_RECORD_HEADER_BYTES);
    const pfn = dv.getBigUint64(0, true),
      enc = dv.getUint8(8),
      len = dv.getUint16(10, true);
    const problem =
      dv.getUint8(9) !== 0
        ? 'reserved octet is not zero'
        : (lengthProblem(enc, len) ??
          (len > records.length - off - PAGE_RECORD_HEADER_BYTES
            ? 'payload runs past the end of the batch'
            : pfn >= pageCount
              ? 'pfn is beyond the end of guest memory'
              : staged && stagedPfns && n >= stagedPfns.length
                ? 'more records than the staging area holds'
                : null));
    if (problem) throw fault(n, off, pfn, enc, problem);
    const base = image.page(Number(pfn));
    const payload = records.subarray(off + PAGE_RECORD_HEADER_BYTES, off + PAGE_RECORD_HEADER_BYTES + len);
    const page = decodePayload(enc, payload, base);
    if (typeof page === 'string') throw fault(n, off, pfn, enc, page);
    if (staged && stagedPfns) {
      staged.set(page, n * PAGE_BYTES);
      stagedPfns[n] = pfn;
    } else {
      base.set(page);
    }
    off += PAGE_RECORD_HEADER_BYTES + len;
    n++;
  }
  return n;
}

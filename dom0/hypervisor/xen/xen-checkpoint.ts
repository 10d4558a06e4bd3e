// xen-checkpoint: one Remus checkpoint of a Xen domain, both ways. On the primary,
// CheckpointCollector takes libxc's records as they arrive and, at its CHECKPOINT record,
// yields the engine's Capture (each pfn's last page content) and the skeleton: every record
// of the checkpoint in stream order with the PAGE_DATA page contents cut out, prefixed by the
// stream's preamble (xl/libxl headers, libxc headers) in a session's first checkpoint. A
// pfn sent twice in one checkpoint (the live pre-copy rounds of the first) keeps only its
// last entry, so the rebuilt stream carries each page once, with its final type and content.
// On the backup, planCheckpoint turns a skeleton and the committed memory image back into
// the libxc bytes, a record at a time (the backup writes them out without a second copy of
// the guest and without stalling its event loop). Skeleton format (little-endian): "XSK1",
// u32 flags (1: preamble present, 2: body deflated), u32 body length before deflate,
// body = [u32 preamble length, preamble] then the stripped records.
import * as zlib from 'node:zlib';
import { ErrorCode, RemusError } from '../../errors';
import type { Capture } from '../../ports';
import { GuestMemory } from '../../memory/guest-memory';
import {
  REC,
  REC_HEADER_BYTES,
  type RawRecord,
  malformed,
  pageDataHeader,
  parsePageData,
  records,
} from './libxc-stream';
import { PAGE_BYTES } from '../../limits';

const SKELETON_MAGIC = 0x314b5358; // "XSK1"
const FLAG_PREAMBLE = 1,
  FLAG_DEFLATED = 2;
const DEFLATE_FROM_BYTES = 1024;
/** A skeleton is headers and pfn words: 8 octets per page at most, plus records. */
export const SKELETON_BYTES_MAX = 64 * 2 ** 20;

interface Kept {
  rec: Buffer;
  seqs: Float64Array | null;
}

export interface CollectedCheckpoint {
  capture: Capture;
  /** Octets libxc wrote for this checkpoint (its raw stream size, headers included). */
  rawBytes: number;
  pageEntries: number;
}

/**
 * Collects one checkpoint at a time from libxc's records. full: the first checkpoint of a
 * save (every page libxc has goes into guest memory in segments, zero where libxc sends
 * nothing — a PVH guest's pfns reach 4 GiB around a few hundred MiB of RAM, and untouched
 * zero pages are never resident; the capture lists every pfn).
 */
export class CheckpointCollector {
  private kept: Kept[] = [];
  private preamble: Buffer | null = null;
  private full: GuestMemory | null = null;
  /** Full checkpoint: 1 where this save wrote page data into full (the rest is still zero). */
  private written: Uint8Array | null = null;
  private delta = new Map<number, Buffer>();
  private readonly lastSeq: Float64Array;
  private seq = 0;
  private rawBytes = 0;
  private entries = 0;

  constructor(readonly pageCount: number) {
    this.lastSeq = new Float64Array(pageCount);
  }

  /** A new save starts: its first checkpoint is full and carries the preamble. */
  startSave(preamble: Buffer): void {
    this.reset();
    this.preamble = preamble;
    this.rawBytes = preamble.length;
    this.full = GuestMemory.allocate(this.pageCount);
    this.written = new Uint8Array(this.pageCount);
  }

  /** Adds a record; returns the finished checkpoint at its CHECKPOINT record, else null. */
  add(r: RawRecord): CollectedCheckpoint | null {
    this.rawBytes += r.bytes.length;
    if (r.type === REC.END) throw malformed('END record in a checkpointed stream before the save was ended');
    if (r.type !== REC.PAGE_DATA) {
      this.kept.push({ rec: Buffer.from(r.bytes), seqs: null });
      return r.type === REC.CHECKPOINT ? this.finish() : null;
    }
    const p = parsePageData(r.bytes, false);
    const seqs = new Float64Array(p.count);
    for (let i = 0; i < p.count; i++) {
      const pfn = p.pfns[i];
      if (pfn >= this.pageCount)
        throw new RemusError(
          ErrorCode.XEN,
          `libxc sent pfn ${pfn}, beyond the ${this.pageCount} pages announced for the domain`,
        );
      seqs[i] = this.lastSeq[pfn] = ++this.seq;
      const off = p.dataOffsets[i];
      if (this.full) {
        if (off >= 0) this.full.setPage(pfn, r.bytes.subarray(off, off + PAGE_BYTES));
        else if (this.written![pfn]) this.full.page(pfn).fill(0); // a hole stays untouched (never resident)
        this.written![pfn] = off >= 0 ? 1 : 0;
      } else if (off >= 0) {
        this.delta.set(pfn, r.bytes.subarray(off, off + PAGE_BYTES));
      } else {
        this.delta.delete(pfn);
      }
    }
    this.entries += p.count;
    this.kept.push({ rec: Buffer.from(r.bytes.subarray(0, REC_HEADER_BYTES + 8 + 8 * p.count)), seqs });
    return null;
  }

  private finish(): CollectedCheckpoint {
    const body: Buffer[] = [];
    if (this.preamble) {
      const n = Buffer.alloc(4);
      n.writeUInt32LE(this.preamble.length, 0);
      body.push(n, this.preamble);
    }
    for (const k of this.kept) {
      if (!k.seqs) {
        body.push(k.rec);
        continue;
      }
      const keep: number[] = [];
      let dataPages = 0;
      const p = parsePageData(k.rec, true);
      for (let i = 0; i < p.count; i++) {
        if (this.lastSeq[p.pfns[i]] !== k.seqs[i]) continue; // sent again later in this checkpoint
        keep.push(i);
        if (p.dataOffsets[i] >= 0) dataPages++;
      }
      if (keep.length === p.count) body.push(k.rec);
      else if (keep.length > 0) body.push(pageDataHeader(k.rec, keep, dataPages));
    }
    const capture = this.full
      ? fullCapture(this.full, this.pageCount, encodeSkeleton(body, this.preamble !== null))
      : deltaCapture(this.delta, encodeSkeleton(body, false));
    const done = { capture, rawBytes: this.rawBytes, pageEntries: this.entries };
    this.reset();
    return done;
  }

  private reset(): void {
    this.kept = [];
    this.preamble = null;
    this.full = null;
    this.written = null;
    this.delta = new Map();
    this.rawBytes = 0;
    this.entries = 0;
  }
}

function fullCapture(mem: GuestMemory, pageCount: number, deviceState: Uint8Array): Capture {
  const pfns = new Uint32Array(pageCount);
  for (let i = 0; i < pageCount; i++) pfns[i] = i;
  return { pfns, count: pageCount, pages: mem, deviceState };
}

function deltaCapture(delta: Map<number, Buffer>, deviceState: Uint8Array): Capture {
  const pfns = Uint32Array.from(delta.keys()).sort();
  const pages = new Uint8Array(pfns.length * PAGE_BYTES);
  pfns.forEach((pfn, i) => pages.set(delta.get(pfn)!, i * PAGE_BYTES));
  return { pfns, count: pfns.length, pages, deviceState };
}

function encodeSkeleton(body: Buffer[], hasPreamble: boolean): Uint8Array {
  const raw = Buffer.concat(body);
  const deflate = raw.length >= DEFLATE_FROM_BYTES;
  const payload = deflate ? zlib.deflateRawSync(raw, { level: 1 }) : raw;
  const head = Buffer.alloc(12);
  head.writeUInt32LE(SKELETON_MAGIC, 0);
  head.writeUInt32LE((hasPreamble ? FLAG_PREAMBLE : 0) | (deflate ? FLAG_DEFLATED : 0), 4);
  head.writeUInt32LE(raw.length, 8);
  return Buffer.concat([head, payload]);
}

function badSkeleton(what: string): RemusError {
  return new RemusError(ErrorCode.XEN, `malformed Xen checkpoint skeleton: ${what}`);
}

/** Splits a skeleton into its preamble (first checkpoint of a save) and stripped records. */
export function decodeSkeleton(s: Uint8Array): { preamble: Buffer | null; records: Buffer } {
  const b = Buffer.from(s.buffer, s.byteOffset, s.length);
  if (b.length < 12 || b.readUInt32LE(0) !== SKELETON_MAGIC) throw badSkeleton('no XSK1 header');
  const flags = b.readUInt32LE(4),
    rawLength = b.readUInt32LE(8);
  if (flags & ~(FLAG_PREAMBLE | FLAG_DEFLATED)) throw badSkeleton(`unknown flags ${flags}`);
  if (rawLength > SKELETON_BYTES_MAX) throw badSkeleton(`${rawLength} octets (limit ${SKELETON_BYTES_MAX})`);
  let raw: Buffer;
  try {
    raw = flags & FLAG_DEFLATED ? zlib.inflateRawSync(b.subarray(12), { maxOutputLength: rawLength }) : b.subarray(12);
  } catch (e) {
    throw badSkeleton(`does not inflate (${(e as Error).message})`);
  }
  if (raw.length !== rawLength) throw badSkeleton(`body is ${raw.length} octets, header says ${rawLength}`);
  if (!(flags & FLAG_PREAMBLE)) return { preamble: null, records: raw };
  if (raw.length < 4 || raw.readUInt32LE(0) > raw.length - 4) throw badSkeleton('preamble length out of range');
  const n = raw.readUInt32LE(0);
  return { preamble: raw.subarray(4, 4 + n), records: raw.subarray(4 + n) };
}

/** A checkpoint checked against the image, ready to be written out record by record. */
export interface CheckpointPlan {
  preamble: Buffer | null;
  /** Octets parts() yields. */
  bytes: number;
  endsWithCheckpoint: boolean;
  /**
   * The libxc records in order, PAGE_DATA filled as each is yielded (one record, at most
   * libxc's batch of pages, at a time) from the image — or from the copy preserve() kept of
   * a page the image has changed since: a PV page table must reach libxc with the content
   * (and type) of its own checkpoint.
   */
  parts(): Generator<Buffer>;
  /** The image is about to change these pages: keep the ones this plan has yet to write. */
  preserve(pfns: Iterable<number>): void;
}

/** Checks a skeleton against the image (every pfn inside it) and sizes its records; copies no page. */
export function planCheckpoint(skeleton: Uint8Array, memory: Uint8Array | GuestMemory): CheckpointPlan {
  const { preamble, records: recs } = decodeSkeleton(skeleton);
  const image = GuestMemory.of(memory);
  const list: Array<{ r: Buffer; p: ReturnType<typeof parsePageData> | null }> = [];
  let bytes = 0,
    last = -1,
    dataPages = 0;
  for (const r of records(recs, true)) {
    last = r.readUInt32LE(0);
    const p = last === REC.PAGE_DATA ? parsePageData(r, true) : null;
    for (let i = 0; p && i < p.count; i++) {
      if (p.dataOffsets[i] >= 0 && p.pfns[i] >= image.pageCount)
        throw badSkeleton(`pfn ${p.pfns[i]} beyond the image's ${image.pageCount} pages`);
    }
    list.push({ r, p });
    dataPages += p?.dataPages ?? 0;
    bytes += r.length + (p ? p.dataPages * PAGE_BYTES : 0);
  }
  const unwritten = pfnSet(dataPages, image.pageCount); // pages parts() has yet to write
  const kept = new Map<number, Buffer>(); // their old contents, where the image changed since
  for (const { p } of list) for (let i = 0; p && i < p.count; i++) if (p.dataOffsets[i] >= 0) unwritten.add(p.pfns[i]);
  function* parts(): Generator<Buffer> {
    for (const { r, p } of list) {
      if (!p) {
        yield r;
        continue;
      }
      const out = Buffer.allocUnsafe(r.length + p.dataPages * PAGE_BYTES);
      r.copy(out, 0);
      for (let i = 0; i < p.count; i++) {
        if (p.dataOffsets[i] < 0) continue;
        out.set(kept.get(p.pfns[i]) ?? image.page(p.pfns[i]), p.dataOffsets[i]);
        unwritten.delete(p.pfns[i]);
        kept.delete(p.pfns[i]);
      }
      yield out;
    }
  }
  const preserve = (pfns: Iterable<number>): void => {
    for (const pfn of pfns) if (unwritten.has(pfn) && !kept.has(pfn)) kept.set(pfn, Buffer.from(image.page(pfn)));
  };
  return { preamble, bytes, endsWithCheckpoint: last === REC.CHECKPOINT, parts, preserve };
}

/** A set of pfns: a Set for a few, a byte per page of the guest for many (a first checkpoint). */
function pfnSet(
  expected: number,
  pageCount: number,
): { add(p: number): void; has(p: number): boolean; delete(p: number): void } {
  if (expected <= 65536) return new Set<number>();
  const bits = new Uint8Array(pageCount);
  return {
    add: (p) => {
      bits[p] = 1;
    },
    has: (p) => bits[p] === 1,
    delete: (p) => {
      bits[p] = 0;
    },
  };
}

/** The exact libxc bytes of a checkpoint, from its skeleton and the memory image, all at once (tests). */
export function rebuildCheckpoint(
  skeleton: Uint8Array,
  memory: Uint8Array | GuestMemory,
): { preamble: Buffer | null; parts: Buffer[]; bytes: number; endsWithCheckpoint: boolean } {
  const plan = planCheckpoint(skeleton, memory);
  return {
    preamble: plan.preamble,
    parts: [...plan.parts()],
    bytes: plan.bytes,
    endsWithCheckpoint: plan.endsWithCheckpoint,
  };
}

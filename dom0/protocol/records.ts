// records: the replication protocol's record types and their fixed body layouts
// (docs/protocol.md). Encoders assert their inputs (programmer errors); decoders treat the
// body as hostile and throw ERR_PROTOCOL naming the record and what is wrong.
import { ErrorCode, RemusError } from '../errors';
import { assert } from '../assert';
import type { DiskChecksum, ScrubPick, ScrubRange } from '../ports';
import { DISK_SCRUB_RANGE_BYTES_MAX, DISK_SCRUB_RANGES_MAX, DISK_VERIFY_RANGES_MAX } from '../limits';

export const PROTOCOL_VERSION = 1;
export const RECORD_HEADER = 16;
export const RECORD_BODY_MAX = 16 * 1024 * 1024;
export const FLAG_OPTIONAL = 1;

export const Rec = {
  HELLO: 1,
  HELLO_ACK: 2,
  CHECKPOINT_BEGIN: 3,
  PAGE_BATCH: 4,
  DEVICE_STATE: 5,
  CHECKPOINT_END: 6,
  ACK: 7,
  HEARTBEAT: 8,
  TAKEOVER: 9,
  GOODBYE: 10,
  ERROR: 11,
  DISK_WRITE: 12,
  DISK_SYNC: 13,
  DISK_SYNC_END: 14,
  DISK_REFS: 15,
  DISK_VERIFY: 16,
  NET_EXPOSURE: 17,
  MEMORY_VERIFY: 18,
  /** P→B, optional: whether the primary can prove it owns the domain (--coordination). */
  OWNERSHIP: 19,
  /** P→B: CRC32Cs of a few disk ranges at this checkpoint (the scrub, --disk-scrub). */
  DISK_SCRUB: 20,
} as const;
export type RecType = (typeof Rec)[keyof typeof Rec];
export const REC_NAMES: Record<number, string> = Object.fromEntries(Object.entries(Rec).map(([k, v]) => [v, k]));

export interface RawRecord {
  type: number;
  flags: number;
  body: Buffer;
}

export function protocolError(message: string): RemusError {
  return new RemusError(ErrorCode.PROTOCOL, message);
}

export const CKPT_FULL = 1;

export function epochBody(epoch: number, extra = 0): Buffer {
  assert(Number.isSafeInteger(epoch) && epoch >= 0, 'epoch');
  const b = Buffer.alloc(8 + extra);
  b.writeBigUInt64LE(BigInt(epoch), 0);
  return b;
}

function readEpoch(type: number, body: Buffer, min: number, exact?: number): number {
  if (body.length < min || (exact !== undefined && body.length !== exact)) {
    throw protocolError(`${REC_NAMES[type]} body of ${body.length} octets is malformed`);
  }
  const e = body.readBigUInt64LE(0);
  if (e > BigInt(Number.MAX_SAFE_INTEGER)) throw protocolError(`${REC_NAMES[type]} epoch ${e} is out of range`);
  return Number(e);
}

export const checkpointBegin = (epoch: number, full: boolean): Buffer => {
  const b = epochBody(epoch, 8);
  b.writeUInt32LE(full ? CKPT_FULL : 0, 8);
  return b;
};
export function parseCheckpointBegin(body: Buffer): { epoch: number; full: boolean } {
  const epoch = readEpoch(Rec.CHECKPOINT_BEGIN, body, 16, 16);
  const flags = body.readUInt32LE(8);
  if ((flags & ~CKPT_FULL) !== 0 || body.readUInt32LE(12) !== 0)
    throw protocolError('CHECKPOINT_BEGIN has unknown flags');
  return { epoch, full: (flags & CKPT_FULL) !== 0 };
}

export const checkpointEnd = (epoch: number, pages: number): Buffer => {
  const b = epochBody(epoch, 8);
  b.writeUInt32LE(pages, 8);
  return b;
};
export function parseCheckpointEnd(body: Buffer): { epoch: number; pages: number } {
  const epoch = readEpoch(Rec.CHECKPOINT_END, body, 16, 16);
  if (body.readUInt32LE(12) !== 0) throw protocolError('CHECKPOINT_END reserved field is not 0');
  return { epoch, pages: body.readUInt32LE(8) };
}

export const withEpoch = (epoch: number, payload: Uint8Array): Buffer => {
  const b = epochBody(epoch, payload.length);
  b.set(payload, 8);
  return b;
};
export function parseWithEpoch(type: number, body: Buffer): { epoch: number; payload: Buffer } {
  return { epoch: readEpoch(type, body, 8), payload: body.subarray(8) };
}

export const ackBody = (epoch: number): Buffer => epochBody(epoch);
export const parseAck = (body: Buffer): number => readEpoch(Rec.ACK, body, 8, 8);
export const parseTakeover = (body: Buffer): number => readEpoch(Rec.TAKEOVER, body, 8, 8);

export const heartbeatBody = (epoch: number, nowMs: number): Buffer => {
  const b = epochBody(epoch, 8);
  b.writeBigUInt64LE(BigInt(Math.max(0, Math.floor(nowMs))), 8);
  return b;
};
export const parseHeartbeat = (body: Buffer): number => readEpoch(Rec.HEARTBEAT, body, 16, 16);

export function jsonBody(obj: unknown, version?: number): Buffer {
  const json = Buffer.from(JSON.stringify(obj), 'utf8');
  if (version === undefined) return json;
  const b = Buffer.alloc(4 + json.length);
  b.writeUInt32LE(version, 0);
  json.copy(b, 4);
  return b;
}

export function parseJson(
  type: number,
  body: Buffer,
  versioned: boolean,
): { version: number; value: Record<string, unknown> } {
  let version = 0,
    json = body;
  if (versioned) {
    if (body.length < 4) throw protocolError(`${REC_NAMES[type]} is too short`);
    version = body.readUInt32LE(0);
    json = body.subarray(4);
  }
  let value: unknown;
  try {
    value = JSON.parse(json.toString('utf8'));
  } catch {
    throw protocolError(`${REC_NAMES[type]} does not carry valid JSON`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw protocolError(`${REC_NAMES[type]} JSON is not an object`);
  }
  return { version, value: value as Record<string, unknown> };
}

// ---- disk records (docs/protocol.md "Disk") ---------------------------------------------

export const SECTOR = 512;
/**
 * DISK_WRITE flags: FUA (durable at commit), ZEROES (no data: the range reads as zeros), FLUSH (length 0),
 * AT_ONCE (a write of the session's first checkpoint, before its commit: applied as it arrives, not held).
 */
export const DW_FUA = 1,
  DW_ZEROES = 2,
  DW_FLUSH = 4,
  DW_AT_ONCE = 8;
const DW_KNOWN = DW_FUA | DW_ZEROES | DW_FLUSH | DW_AT_ONCE;
/** Largest data carried by one disk record; longer writes are split. */
export const DISK_RECORD_DATA_MAX = 4 * 1024 * 1024;

export interface DiskWrite {
  epoch: number;
  offsetBytes: number;
  lengthBytes: number;
  flags: number;
  data: Buffer | null;
}

export function diskWriteBody(
  epoch: number,
  offsetBytes: number,
  lengthBytes: number,
  flags: number,
  data: Uint8Array | null,
): Buffer {
  assert(offsetBytes % SECTOR === 0 && lengthBytes % SECTOR === 0 && (flags & ~DW_KNOWN) === 0, 'disk write alignment');
  const carries = (flags & (DW_ZEROES | DW_FLUSH)) === 0;
  assert(
    carries ? data !== null && data.length === lengthBytes && lengthBytes <= DISK_RECORD_DATA_MAX : data === null,
    'disk write data',
  );
  assert((flags & DW_FLUSH) === 0 || lengthBytes === 0, 'flush has no range');
  const b = Buffer.alloc(24 + (carries ? lengthBytes : 0));
  b.writeBigUInt64LE(BigInt(epoch), 0);
  b.writeBigUInt64LE(BigInt(offsetBytes), 8);
  b.writeUInt32LE(lengthBytes, 16);
  b.writeUInt32LE(flags, 20);
  if (carries) b.set(data!, 24);
  return b;
}

export function parseDiskWrite(body: Buffer, diskBytes: number): DiskWrite {
  const epoch = readEpoch(Rec.DISK_WRITE, body, 24);
  const off = body.readBigUInt64LE(8),
    len = body.readUInt32LE(16),
    flags = body.readUInt32LE(20);
  if ((flags & ~DW_KNOWN) !== 0) throw protocolError(`DISK_WRITE has unknown flags ${flags}`);
  const carries = (flags & (DW_ZEROES | DW_FLUSH)) === 0;
  if (flags & DW_FLUSH && len !== 0) throw protocolError('DISK_WRITE FLUSH carries a range');
  checkRange('DISK_WRITE', off, len, diskBytes);
  if (body.length !== 24 + (carries ? len : 0))
    throw protocolError(`DISK_WRITE of ${len} octets has a body of ${body.length}`);
  return { epoch, offsetBytes: Number(off), lengthBytes: len, flags, data: carries ? body.subarray(24) : null };
}

/** DISK_SYNC flags: ZEROES (no data: the range reads as zeros; the value DISK_WRITE uses). */
export const DS_ZEROES = DW_ZEROES;

export function diskSyncBody(offsetBytes: number, data: Uint8Array): Buffer {
  const body = Buffer.allocUnsafe(16 + data.length);
  body.set(data, 16);
  return diskSyncHeadInto(body, offsetBytes);
}

/**
 * Makes body a DISK_SYNC of the data already at its octet 16 on (the resync copy reads the disk
 * straight there, into a buffer it reuses: no second buffer, no copy): writes the head.
 */
export function diskSyncHeadInto(body: Buffer, offsetBytes: number): Buffer {
  assert(body.length > 16, 'disk sync chunk has data');
  return writeDiskSyncHead(body, offsetBytes, body.length - 16, 0);
}

/** A resync range that reads as zeros on the primary: 16 octets instead of its length. */
export function diskSyncZeroesBody(offsetBytes: number, lengthBytes: number): Buffer {
  return diskSyncHead(offsetBytes, lengthBytes, DS_ZEROES, 0);
}

/** The 16-octet head; the dataBytes after it are uninitialized: the caller fills them. */
function diskSyncHead(offsetBytes: number, lengthBytes: number, flags: number, dataBytes: number): Buffer {
  return writeDiskSyncHead(Buffer.allocUnsafe(16 + dataBytes), offsetBytes, lengthBytes, flags);
}

/** Writes the 16-octet head at the start of b. */
function writeDiskSyncHead(b: Buffer, offsetBytes: number, lengthBytes: number, flags: number): Buffer {
  assert(
    offsetBytes % SECTOR === 0 && lengthBytes % SECTOR === 0 && lengthBytes > 0 && lengthBytes <= DISK_RECORD_DATA_MAX,
    'disk sync chunk',
  );
  b.writeBigUInt64LE(BigInt(offsetBytes), 0);
  b.writeUInt32LE(lengthBytes, 8);
  b.writeUInt32LE(flags, 12);
  return b;
}

/** A DISK_SYNC: data null for a ZEROES range. */
export function parseDiskSync(
  body: Buffer,
  diskBytes: number,
): { offsetBytes: number; lengthBytes: number; data: Buffer | null } {
  if (body.length < 16) throw protocolError('DISK_SYNC is too short');
  const off = body.readBigUInt64LE(0),
    len = body.readUInt32LE(8),
    flags = body.readUInt32LE(12);
  if ((flags & ~DS_ZEROES) !== 0) throw protocolError(`DISK_SYNC has unknown flags ${flags}`);
  if (len === 0) throw protocolError('DISK_SYNC covers no octets');
  checkRange('DISK_SYNC', off, len, diskBytes);
  const zeroes = (flags & DS_ZEROES) !== 0;
  if (body.length !== 16 + (zeroes ? 0 : len))
    throw protocolError(`DISK_SYNC of ${len} octets${zeroes ? ' (zeroes)' : ''} has a body of ${body.length}`);
  return { offsetBytes: Number(off), lengthBytes: len, data: zeroes ? null : body.subarray(16) };
}

export const diskSyncEndBody = (bytes: number): Buffer => epochBody(bytes);
export const parseDiskSyncEnd = (body: Buffer): number => readEpoch(Rec.DISK_SYNC_END, body, 8, 8);

function checkRange(name: string, off: bigint, len: number, diskBytes: number): void {
  if (off % BigInt(SECTOR) !== 0n || len % SECTOR !== 0) throw protocolError(`${name} range is not sector-aligned`);
  if (len > DISK_RECORD_DATA_MAX) throw protocolError(`${name} of ${len} octets exceeds ${DISK_RECORD_DATA_MAX}`);
  if (off + BigInt(len) > BigInt(diskBytes))
    throw protocolError(`${name} at ${off}+${len} is past the end of the ${diskBytes}-octet disk`);
}

/** One page of a checkpoint sent as the disk block that holds the same content (read tracking). */
export interface DiskRefEntry {
  pfn: number;
  offsetBytes: number;
  crc32c: number;
}
const REF_BYTES = 24;
export const DISK_REFS_MAX = 4096;

export function diskRefsBody(epoch: number, refs: readonly DiskRefEntry[]): Buffer {
  assert(refs.length > 0 && refs.length <= DISK_REFS_MAX, 'disk refs count');
  const b = Buffer.alloc(16 + refs.length * REF_BYTES);
  b.writeBigUInt64LE(BigInt(epoch), 0);
  b.writeUInt32LE(refs.length, 8);
  refs.forEach((r, i) => {
    assert(r.offsetBytes % 4096 === 0, 'disk ref is block-aligned');
    const at = 16 + i * REF_BYTES;
    b.writeBigUInt64LE(BigInt(r.pfn), at);
    b.writeBigUInt64LE(BigInt(r.offsetBytes), at + 8);
    b.writeUInt32LE(r.crc32c >>> 0, at + 16);
  });
  return b;
}

export function parseDiskRefs(
  body: Buffer,
  pageCount: number,
  diskBytes: number,
): { epoch: number; refs: DiskRefEntry[] } {
  const epoch = readEpoch(Rec.DISK_REFS, body, 16);
  const n = body.readUInt32LE(8);
  if (body.readUInt32LE(12) !== 0) throw protocolError('DISK_REFS reserved field is not 0');
  if (n === 0 || n > DISK_REFS_MAX || body.length !== 16 + n * REF_BYTES)
    throw protocolError(`DISK_REFS of ${n} entries has a body of ${body.length} octets`);
  const refs: DiskRefEntry[] = [];
  for (let i = 0; i < n; i++) {
    const at = 16 + i * REF_BYTES;
    const pfn = body.readBigUInt64LE(at),
      off = body.readBigUInt64LE(at + 8);
    if (pfn >= BigInt(pageCount)) throw protocolError(`DISK_REFS pfn ${pfn} is outside the guest's ${pageCount} pages`);
    if (off % 4096n !== 0n || off + 4096n > BigInt(diskBytes))
      throw protocolError(`DISK_REFS block at ${off} is not a whole 4 KiB block of the ${diskBytes}-octet disk`);
    if (body.readUInt32LE(at + 20) !== 0) throw protocolError('DISK_REFS entry reserved field is not 0');
    refs.push({ pfn: Number(pfn), offsetBytes: Number(off), crc32c: body.readUInt32LE(at + 16) });
  }
  return { epoch, refs };
}

/** DISK_VERIFY's fixed part: u64 epoch | u32 CRC32C | u32 0 | u32 range octets | u32 ranges. */
const DISK_VERIFY_HEADER_BYTES = 24;

/**
 * DISK_VERIFY: the CRC32C of the primary's whole disk at checkpoint epoch (sent after its END),
 * then its per-range CRC32Cs, so that a backup whose disk differs copies again only the ranges
 * that do: u64 epoch | u32 crc32c | u32 0 | u32 rangeBytes | u32 ranges | ranges × u32 crc32c.
 */
export function diskVerifyBody(epoch: number, sum: DiskChecksum): Buffer {
  const b = Buffer.alloc(DISK_VERIFY_HEADER_BYTES + 4 * sum.rangeCrcs.length);
  b.writeBigUInt64LE(BigInt(epoch), 0);
  b.writeUInt32LE(sum.crc32c >>> 0, 8);
  b.writeUInt32LE(sum.rangeBytes, 16);
  b.writeUInt32LE(sum.rangeCrcs.length, 20);
  for (let r = 0; r < sum.rangeCrcs.length; r++) b.writeUInt32LE(sum.rangeCrcs[r], DISK_VERIFY_HEADER_BYTES + 4 * r);
  return b;
}

/** Checks the table against the session's disk: whole blocks per range, as many ranges as cover it. */
export function parseDiskVerify(body: Buffer, diskBytes: number): { epoch: number } & DiskChecksum {
  const epoch = readEpoch(Rec.DISK_VERIFY, body, DISK_VERIFY_HEADER_BYTES);
  if (body.readUInt32LE(12) !== 0) throw protocolError('DISK_VERIFY reserved field is not 0');
  const rangeBytes = body.readUInt32LE(16),
    ranges = body.readUInt32LE(20);
  const fits = ranges <= DISK_VERIFY_RANGES_MAX && ranges === Math.ceil(diskBytes / rangeBytes);
  if (rangeBytes === 0 || rangeBytes % 4096 !== 0 || diskBytes === 0 || !fits)
    throw protocolError(
      `DISK_VERIFY's ${ranges} ranges of ${rangeBytes} octets do not cover a ${diskBytes}-octet disk`,
    );
  if (body.length !== DISK_VERIFY_HEADER_BYTES + 4 * ranges)
    throw protocolError(`DISK_VERIFY body of ${body.length} octets is not its ${ranges} ranges`);
  const rangeCrcs = new Uint32Array(ranges);
  for (let r = 0; r < ranges; r++) rangeCrcs[r] = body.readUInt32LE(DISK_VERIFY_HEADER_BYTES + 4 * r);
  return { epoch, crc32c: body.readUInt32LE(8), rangeBytes, rangeCrcs };
}

/** DISK_SCRUB flags: the ranges complete a pass over the whole disk. */
export const SCRUB_PASS_END = 1;
const DISK_SCRUB_HEADER_BYTES = 24;
const DISK_SCRUB_ENTRY_BYTES = 16;

/**
 * DISK_SCRUB: u64 epoch | u32 ranges n (1–8) | u32 flags (bit 0 PASS_END) | u32 range octets R |
 * u32 0, then n × {u64 offset (a multiple of R), u32 length (R, or what is left at the disk's
 * end), u32 CRC32C of those octets at checkpoint epoch}.
 */
export function diskScrubBody(epoch: number, pick: ScrubPick): Buffer {
  const b = Buffer.alloc(DISK_SCRUB_HEADER_BYTES + DISK_SCRUB_ENTRY_BYTES * pick.ranges.length);
  b.writeBigUInt64LE(BigInt(epoch), 0);
  b.writeUInt32LE(pick.ranges.length, 8);
  b.writeUInt32LE(pick.passEnd ? SCRUB_PASS_END : 0, 12);
  b.writeUInt32LE(pick.rangeBytes, 16);
  pick.ranges.forEach((r, i) => {
    const at = DISK_SCRUB_HEADER_BYTES + DISK_SCRUB_ENTRY_BYTES * i;
    b.writeBigUInt64LE(BigInt(r.offsetBytes), at);
    b.writeUInt32LE(r.lengthBytes, at + 8);
    b.writeUInt32LE(r.crc32c >>> 0, at + 12);
  });
  return b;
}

/** Ranges of whole 4 KiB blocks, R long (at most DISK_SCRUB_RANGE_BYTES_MAX), at multiples of R inside the disk. */
export function parseDiskScrub(body: Buffer, diskBytes: number): { epoch: number } & ScrubPick {
  const epoch = readEpoch(Rec.DISK_SCRUB, body, DISK_SCRUB_HEADER_BYTES);
  const n = body.readUInt32LE(8),
    flags = body.readUInt32LE(12),
    rangeBytes = body.readUInt32LE(16);
  if (n < 1 || n > DISK_SCRUB_RANGES_MAX || body.length !== DISK_SCRUB_HEADER_BYTES + DISK_SCRUB_ENTRY_BYTES * n)
    throw protocolError(`DISK_SCRUB of ${body.length} octets does not hold 1–${DISK_SCRUB_RANGES_MAX} ranges`);
  if ((flags & ~SCRUB_PASS_END) !== 0 || body.readUInt32LE(20) !== 0)
    throw protocolError(`DISK_SCRUB flags ${flags} or its reserved field are not known`);
  if (rangeBytes === 0 || rangeBytes % 4096 !== 0 || rangeBytes > DISK_SCRUB_RANGE_BYTES_MAX)
    throw protocolError(`DISK_SCRUB ranges of ${rangeBytes} octets are not whole blocks`);
  const ranges: ScrubRange[] = [];
  for (let i = 0; i < n; i++) {
    const at = DISK_SCRUB_HEADER_BYTES + DISK_SCRUB_ENTRY_BYTES * i;
    const raw = body.readBigUInt64LE(at),
      len = body.readUInt32LE(at + 8);
    const off = raw < BigInt(diskBytes) ? Number(raw) : -1;
    if (off < 0 || off % rangeBytes !== 0 || len !== Math.min(rangeBytes, diskBytes - off))
      throw protocolError(`DISK_SCRUB range at ${raw} of ${len} octets is not one of the disk's`);
    ranges.push({ offsetBytes: off, lengthBytes: len, crc32c: body.readUInt32LE(at + 12) });
  }
  return { epoch, ranges, passEnd: (flags & SCRUB_PASS_END) !== 0, rangeBytes };
}

// ---- reconnect without a full copy (docs/protocol.md "Reconnect") -----------------------------

/** Most regions a MEMORY_VERIFY carries (a 64 GiB guest in 64 MiB regions has 1024). */
export const MEMORY_VERIFY_REGIONS_MAX = 1 << 20;

/**
 * MEMORY_VERIFY: u64 epoch | u32 pages per region | u32 regions | regions × u32 digest. A
 * region's digest is the CRC32C of the per-page CRC32Cs (u32 little-endian) of its pages.
 */
export function memoryVerifyBody(epoch: number, regionPages: number, digests: Uint32Array): Buffer {
  assert(regionPages >= 1 && digests.length >= 1 && digests.length <= MEMORY_VERIFY_REGIONS_MAX, 'memory regions');
  const b = epochBody(epoch, 8 + digests.length * 4);
  b.writeUInt32LE(regionPages, 8);
  b.writeUInt32LE(digests.length, 12);
  digests.forEach((d, i) => b.writeUInt32LE(d >>> 0, 16 + i * 4));
  return b;
}

export function parseMemoryVerify(
  body: Buffer,
  pageCount: number,
): { epoch: number; regionPages: number; digests: Uint32Array } {
  const epoch = readEpoch(Rec.MEMORY_VERIFY, body, 16);
  const regionPages = body.readUInt32LE(8),
    n = body.readUInt32LE(12);
  const fits = regionPages > 0 && n <= MEMORY_VERIFY_REGIONS_MAX && n === Math.ceil(pageCount / regionPages);
  if (!fits || body.length !== 16 + n * 4) {
    throw protocolError(
      `MEMORY_VERIFY of ${n} regions of ${regionPages} pages (body ${body.length} octets) ` +
        `does not cover the guest's ${pageCount} pages`,
    );
  }
  const digests = new Uint32Array(n);
  for (let i = 0; i < n; i++) digests[i] = body.readUInt32LE(16 + i * 4);
  return { epoch, regionPages, digests };
}

// nbd-wire: constants and byte layouts of the NBD protocol subset remusdb serves
// (docs/nbd.md). Pure encoders/decoders, no I/O, so the server stays small and testable.

export const NBD_MAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT"
export const OPT_REPLY_MAGIC = 0x0003e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;

export const HS_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const HS_FLAG_NO_ZEROES = 1 << 1;
export const CLIENT_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const CLIENT_FLAG_NO_ZEROES = 1 << 1;

export const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, STARTTLS: 5, INFO: 6, GO: 7 } as const;
export const REP = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_UNKNOWN: 0x80000006,
} as const;
export const INFO = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

export const TX_FLAG = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  CAN_MULTI_CONN: 1 << 8,
} as const;

export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, WRITE_ZEROES: 6 } as const;
export const CMD_FLAG = { FUA: 1 << 0, NO_HOLE: 1 << 1 } as const;

/** Error values of simple replies (the spec's fixed errno subset). */
export const NBD_ERR = { EPERM: 1, EIO: 5, ENOMEM: 12, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ESHUTDOWN: 108 } as const;

export const REQUEST_HEADER_BYTES = 28;
export const OPTION_HEADER_BYTES = 16;
export const MIN_BLOCK_BYTES = 1;
export const PREFERRED_BLOCK_BYTES = 4096;
export const MAX_BLOCK_BYTES = 32 * 1024 * 1024;

export function transmissionFlags(readOnly: boolean): number {
  const f =
    TX_FLAG.HAS_FLAGS |
    TX_FLAG.SEND_FLUSH |
    TX_FLAG.SEND_FUA |
    TX_FLAG.SEND_TRIM |
    TX_FLAG.SEND_WRITE_ZEROES |
    TX_FLAG.CAN_MULTI_CONN;
  return readOnly ? f | TX_FLAG.READ_ONLY : f;
}

export function serverGreeting(): Buffer {
  const b = Buffer.alloc(18);
  b.writeBigUInt64BE(NBD_MAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(HS_FLAG_FIXED_NEWSTYLE | HS_FLAG_NO_ZEROES, 16);
  return b;
}

export function optionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(20 + data.length);
  b.writeBigUInt64BE(OPT_REPLY_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, 20);
  return b;
}

export function serverEntry(name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(4 + n.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  return b;
}

export function infoExport(sizeBytes: number, flags: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(INFO.EXPORT, 0);
  b.writeBigUInt64BE(BigInt(sizeBytes), 2);
  b.writeUInt16BE(flags, 10);
  return b;
}

export function infoName(name: string): Buffer {
  return Buffer.concat([Buffer.from([0, INFO.NAME]), Buffer.from(name, 'utf8')]);
}

/** NBD_INFO_BLOCK_SIZE: the export's minimum block (1 unless it must be sector-aligned), 4096, 32 MiB. */
export function infoBlockSize(minBlockBytes = MIN_BLOCK_BYTES): Buffer {
  const b = Buffer.alloc(14);
  b.writeUInt16BE(INFO.BLOCK_SIZE, 0);
  b.writeUInt32BE(minBlockBytes, 2);
  b.writeUInt32BE(PREFERRED_BLOCK_BYTES, 6);
  b.writeUInt32BE(MAX_BLOCK_BYTES, 10);
  return b;
}

/** Reply to NBD_OPT_EXPORT_NAME: size, flags, and 124 zeros unless NO_ZEROES was agreed. */
export function exportNameReply(sizeBytes: number, flags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(noZeroes ? 10 : 134);
  b.writeBigUInt64BE(BigInt(sizeBytes), 0);
  b.writeUInt16BE(flags, 8);
  return b;
}

export interface InfoRequest {
  name: string;
  infos: number[];
}

/** Parses NBD_OPT_INFO / NBD_OPT_GO data; null when the lengths do not add up. */
export function parseInfoRequest(data: Buffer): InfoRequest | null {
  if (data.length < 6) return null;
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 6) return null;
  const name = data.subarray(4, 4 + nameLen).toString('utf8');
  const n = data.readUInt16BE(4 + nameLen);
  if (data.length !== 6 + nameLen + 2 * n) return null;
  const infos: number[] = [];
  for (let i = 0; i < n; i++) infos.push(data.readUInt16BE(6 + nameLen + 2 * i));
  return { name, infos };
}

export interface Request {
  flags: number;
  type: number;
  cookie: bigint;
  offset: number;
  length: number;
}

/**
 * Decodes a 28-byte request header; null when the magic is wrong. Offsets beyond 2^53 become
 * Infinity, so every range check fails for them (and offset + length never wraps as in u64).
 */
export function parseRequest(h: Buffer): Request | null {
  if (h.readUInt32BE(0) !== REQUEST_MAGIC) return null;
  const off = h.readBigUInt64BE(16);
  return {
    flags: h.readUInt16BE(4),
    type: h.readUInt16BE(6),
    cookie: h.readBigUInt64BE(8),
    offset: off > BigInt(Number.MAX_SAFE_INTEGER) ? Infinity : Number(off),
    length: h.readUInt32BE(24),
  };
}

export function simpleReply(error: number, cookie: bigint): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  b.writeBigUInt64BE(cookie, 8);
  return b;
}

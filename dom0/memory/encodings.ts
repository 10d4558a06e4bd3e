// encodings: the page record constants of docs/memory-encoding.md, shared by the native
// and reference codecs and by everything that reports per-encoding statistics. The record's
// header and largest size are in limits.ts, checked against the addon's.
export const TRY_LZ4_AFTER_XOR_RLE = 256;
export const TRY_XOR_LZ4_ABOVE = 1024;

export const Encoding = {
  RAW: 0,
  ZERO: 1,
  UNCHANGED: 2,
  XOR_RLE: 3,
  LZ4: 4,
  XOR_LZ4: 5,
  DISK_REF: 6,
} as const;

/** Encoder policies (docs/memory-encoding.md, "Encoder policy v1"). */
export const Policy = { RAW: 0, PAGE_LZ4: 1, BATCH: 2 } as const;
export type PolicyValue = (typeof Policy)[keyof typeof Policy];

/** How pages are compressed: zstd over the whole batch, LZ4 per page, or not at all. */
export type Compressor = 'zstd' | 'lz4' | 'none';
export const COMPRESSORS: readonly Compressor[] = ['zstd', 'lz4', 'none'];
export const ZSTD_LEVEL = 1;
export const BATCH_HEADER_SIZE = 8;

export function policyOf(c: Compressor): PolicyValue {
  return c === 'zstd' ? Policy.BATCH : c === 'lz4' ? Policy.PAGE_LZ4 : Policy.RAW;
}

export const ENCODING_NAMES = ['RAW', 'ZERO', 'UNCHANGED', 'XOR_RLE', 'LZ4', 'XOR_LZ4', 'DISK_REF'];
export const ENCODING_COUNT = ENCODING_NAMES.length;

/**
 * Octets the replication protocol spends to carry one batch of page records (its record
 * header: type, length, CRC32C; docs/protocol.md). Benchmarks count it so that sent bytes
 * are what the wire carries.
 */
export const BATCH_FRAME_BYTES = 16;

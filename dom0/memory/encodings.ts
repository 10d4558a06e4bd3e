// encodings: the page record constants of docs/memory-encoding.md, shared by the native
// and reference codecs and by everything that reports per-encoding statistics.
export const RECORD_HEADER_SIZE = 12;
export const RECORD_SIZE_MAX = RECORD_HEADER_SIZE + 4096;
export const TRY_LZ4_AFTER_XOR_RLE = 256;
export const TRY_XOR_LZ4_ABOVE = 1024;

export const Encoding = {
  RAW: 0, ZERO: 1, UNCHANGED: 2, XOR_RLE: 3, LZ4: 4, XOR_LZ4: 5, DISK_REF: 6,
} as const;

export const ENCODING_NAMES = ['RAW', 'ZERO', 'UNCHANGED', 'XOR_RLE', 'LZ4', 'XOR_LZ4', 'DISK_REF'];
export const ENCODING_COUNT = ENCODING_NAMES.length;

/**
 * Octets the replication protocol spends to carry one batch of page records (its record
 * header: type, length, CRC32C; docs/protocol.md). Benchmarks count it so that sent bytes
 * are what the wire carries.
 */
export const BATCH_FRAME_BYTES = 16;

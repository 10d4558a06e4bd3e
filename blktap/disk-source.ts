// disk-source: a disk as something to read — what the replicator copies a resync from and
// the read tracker checks content against (the primary's own disk), and whole-disk CRC32C
// (the sim replica's at failover; tests), whether a range is zeros. On its own so that
// replicator and read tracker, which both read a disk, do not import each other.
import { loadAddon } from '../dom0/native';

/** A disk to read from: the primary's own, or the backup's copy. */
export interface DiskSource {
  readonly sizeBytes: number;
  read(offsetBytes: number, into: Uint8Array): void;
  /**
   * The same read on libuv's thread pool, where the source is a file: a disk that blocks
   * (writeback throttling held read(2) 1.5–1.8 s while GiBs of images were written) then
   * does not hold the event loop, and heartbeats go on. Absent: diskChecksumAsync reads in turns.
   */
  readAsync?(offsetBytes: number, into: Uint8Array): Promise<void>;
}

const ZEROS = new Uint8Array(4 * 1024 * 1024);

/** Whether every octet of data is 0 (memcmp against zeros, ≤ 4 MiB at a time). */
export function isZero(data: Uint8Array): boolean {
  for (let off = 0; off < data.length; off += ZEROS.length) {
    const n = Math.min(ZEROS.length, data.length - off);
    if (Buffer.compare(data.subarray(off, off + n), ZEROS.subarray(0, n)) !== 0) return false;
  }
  return true;
}

/** CRC32C of a whole disk, read in 1 MiB pieces (verification after a resync). */
export function diskChecksum(source: DiskSource): number {
  const buf = new Uint8Array(1024 * 1024);
  let crc = 0;
  for (let off = 0; off < source.sizeBytes; off += buf.length) {
    const piece = buf.subarray(0, Math.min(buf.length, source.sizeBytes - off));
    source.read(off, piece);
    crc = loadAddon().crc32c(piece, crc);
  }
  return crc;
}

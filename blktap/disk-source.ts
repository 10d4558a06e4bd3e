// disk-source: a disk as something to read — what the replicator copies a resync from and
// the read tracker checks content against (the primary's own disk), and whole-disk CRC32C
// (the backup's check at DISK_VERIFY, the sim replica's at failover). On its own so that
// replicator and read tracker, which both read a disk, do not import each other.
import type { Clock } from '../dom0/ports';
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

/** What diskChecksumAsync reads per call of readAsync. */
const CHECKSUM_ASYNC_PIECE_BYTES = 4 * 1024 * 1024;

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

/** Pieces of 1 MiB read per event-loop turn by diskChecksumAsync (a source without readAsync). */
const CHECKSUM_TURN_PIECES = 2;

/**
 * diskChecksum without holding the event loop: 2 MiB per turn, so heartbeats go on (8 MiB
 * turns took 100–160 ms on a 2-core host busy with a guest and its backup).
 */
export function diskChecksumAsync(source: DiskSource, clock: Pick<Clock, 'defer'>): Promise<number> {
  if (source.readAsync) return checksumOffLoop(source);
  const buf = new Uint8Array(1024 * 1024);
  return new Promise((resolve, reject) => {
    let crc = 0,
      off = 0;
    const step = (): void => {
      try {
        for (let n = 0; n < CHECKSUM_TURN_PIECES && off < source.sizeBytes; n++, off += buf.length) {
          const piece = buf.subarray(0, Math.min(buf.length, source.sizeBytes - off));
          source.read(off, piece);
          crc = loadAddon().crc32c(piece, crc);
        }
      } catch (e) {
        reject(e);
        return;
      }
      if (off >= source.sizeBytes) resolve(crc);
      else clock.defer(step);
    };
    step();
  });
}

/** diskChecksumAsync for a source with readAsync: a piece at a time on libuv's pool. */
async function checksumOffLoop(source: DiskSource): Promise<number> {
  const buf = new Uint8Array(CHECKSUM_ASYNC_PIECE_BYTES);
  let crc = 0;
  for (let off = 0; off < source.sizeBytes; off += buf.length) {
    const piece = buf.subarray(0, Math.min(buf.length, source.sizeBytes - off));
    await source.readAsync!(off, piece);
    crc = loadAddon().crc32c(piece, crc);
  }
  return crc;
}

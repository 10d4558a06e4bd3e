// disk-tap: the hooks the NBD server calls around each request, so that replication
// (write forwarding tagged with the epoch), read tracking (block → content hash) and
// reprotection (blocks written since failover) plug in without touching the server.
// Order (docs/nbd.md "Hooks"): the local operation first (including fdatasync for FUA or
// FLUSH), then the hook, then the reply to the client. A hook that throws or rejects makes
// the request fail with EIO. Hooks may be async; the server awaits them before replying,
// and requests of one connection may run concurrently (up to the server's in-flight limit).

export interface DiskTap {
  /** After `data` was written at `offsetBytes` (and fdatasync'ed when `fua`), before the reply. */
  onWrite(offsetBytes: number, data: Buffer, fua: boolean): void | Promise<void>;
  /**
   * After `lengthBytes` were read at `offsetBytes` into `data`, before the reply. Do not keep
   * `data` without copying. gensBefore: the blocks' write generations taken before the read,
   * when the server keeps generations (read tracking).
   */
  onRead(offsetBytes: number, lengthBytes: number, data: Buffer, gensBefore?: number[]): void | Promise<void>;
  /** After the local fdatasync of a FLUSH, before its reply. */
  onFlush(): void | Promise<void>;
  /** After a TRIM zeroed the range locally: for replication, a write of zeros. */
  onTrim(offsetBytes: number, lengthBytes: number, fua: boolean): void | Promise<void>;
  /** After a WRITE_ZEROES zeroed the range locally: for replication, a write of zeros. */
  onWriteZeroes(offsetBytes: number, lengthBytes: number, fua: boolean): void | Promise<void>;
}

/** The tap of a standalone server: does nothing. */
export const NO_OP_TAP: DiskTap = {
  onWrite: () => undefined,
  onRead: () => undefined,
  onFlush: () => undefined,
  onTrim: () => undefined,
  onWriteZeroes: () => undefined,
};

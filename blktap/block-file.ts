// block-file: a disk image opened for synchronous positioned I/O. The backup applies a
// committed epoch's writes through it and the simulated domain's vCPU does its disk I/O
// through it; both need whole-range reads and writes that either finish or throw ERR_IO.
import * as fs from 'node:fs';
import { assert } from '../dom0/assert';
import { ErrorCode, RemusError } from '../dom0/errors';

const ZERO_CHUNK = Buffer.alloc(1024 * 1024);

/** Renames an old image aside (instant) and unlinks it on libuv's thread pool (freeing its blocks). */
function discardAside(path: string): void {
  const aside = `${path}.discard-${process.pid}-${Date.now()}`;
  fs.renameSync(path, aside);
  fs.unlink(aside, () => {}); // best effort: a leftover only costs space, and its name says what it is
}

export class BlockFile {
  private fd: number;
  private flushing = false;
  readonly sizeBytes: number;

  private constructor(
    readonly path: string,
    fd: number,
    sizeBytes: number,
  ) {
    this.fd = fd;
    this.sizeBytes = sizeBytes;
  }

  /** Opens an existing image read-write. */
  static open(path: string): BlockFile {
    let fd: number;
    try {
      fd = fs.openSync(path, 'r+');
    } catch (e) {
      throw new RemusError(ErrorCode.IO, `cannot open disk image ${path}: ${(e as Error).message}`, {}, { cause: e });
    }
    return new BlockFile(path, fd, fs.fstatSync(fd).size);
  }

  /**
   * Creates (or replaces) an image of sizeBytes, sparse. A symbolic link at path is refused
   * (O_NOFOLLOW), and so is anything that is not a regular file: the name may come from a peer.
   * An old image with blocks is renamed aside and unlinked off the event loop: freeing a
   * large file's blocks in ftruncate or unlink takes seconds (1 GiB: 1.5 s on an ext4 mounted
   * with `discard`), and a backup that stalls that long loses its session.
   */
  static create(path: string, sizeBytes: number): BlockFile {
    assert(Number.isSafeInteger(sizeBytes) && sizeBytes > 0 && sizeBytes % 512 === 0, 'image size');
    const { O_RDWR, O_CREAT, O_NOFOLLOW } = fs.constants;
    let fd = -1;
    try {
      fd = fs.openSync(path, O_RDWR | O_CREAT | O_NOFOLLOW, 0o600);
      const st = fs.fstatSync(fd);
      if (!st.isFile()) throw new Error('not a regular file');
      if (st.blocks > 0) {
        fs.closeSync(fd);
        fd = -1;
        discardAside(path);
        fd = fs.openSync(path, O_RDWR | O_CREAT | fs.constants.O_EXCL | O_NOFOLLOW, 0o600);
      }
      fs.ftruncateSync(fd, 0);
      fs.ftruncateSync(fd, sizeBytes);
    } catch (e) {
      if (fd >= 0) fs.closeSync(fd);
      throw new RemusError(ErrorCode.IO, `cannot create disk image ${path}: ${(e as Error).message}`, {}, { cause: e });
    }
    return new BlockFile(path, fd, sizeBytes);
  }

  read(offsetBytes: number, into: Uint8Array): void {
    this.check(offsetBytes, into.length);
    let done = 0;
    while (done < into.length) {
      const n = this.io(() => fs.readSync(this.fd, into, done, into.length - done, offsetBytes + done));
      if (n === 0) {
        into.fill(0, done);
        return;
      }
      done += n;
    }
  }

  /** read() on libuv's thread pool (DiskSource.readAsync); ERR_IO on failure, zeros past the end. */
  readAsync(offsetBytes: number, into: Uint8Array): Promise<void> {
    this.check(offsetBytes, into.length);
    const fd = this.fd;
    return new Promise((resolve, reject) => {
      const more = (done: number): void => {
        if (done >= into.length) return resolve();
        fs.read(fd, into, done, into.length - done, offsetBytes + done, (e, n) => {
          if (e) return reject(new RemusError(ErrorCode.IO, `disk image ${this.path}: ${e.message}`, {}, { cause: e }));
          if (n === 0) {
            into.fill(0, done);
            return resolve();
          }
          more(done + n);
        });
      };
      more(0);
    });
  }

  write(offsetBytes: number, data: Uint8Array): void {
    this.check(offsetBytes, data.length);
    let done = 0;
    while (done < data.length)
      done += this.io(() => fs.writeSync(this.fd, data, done, data.length - done, offsetBytes + done));
  }

  /** write() on libuv's thread pool (the backup's DiskIoQueue): done(ERR_IO) on failure. */
  writeAsync(offsetBytes: number, data: Uint8Array, done: (e: Error | null) => void): void {
    this.check(offsetBytes, data.length);
    const more = (written: number): void => {
      if (written >= data.length) return done(null);
      fs.write(this.fd, data, written, data.length - written, offsetBytes + written, (e, n) => {
        if (e) return done(new RemusError(ErrorCode.IO, `disk image ${this.path}: ${e.message}`, {}, { cause: e }));
        more(written + n);
      });
    };
    more(0);
  }

  zero(offsetBytes: number, lengthBytes: number): void {
    this.check(offsetBytes, lengthBytes);
    for (let done = 0; done < lengthBytes; done += ZERO_CHUNK.length) {
      this.write(offsetBytes + done, ZERO_CHUNK.subarray(0, Math.min(ZERO_CHUNK.length, lengthBytes - done)));
    }
  }

  flush(): void {
    this.io(() => {
      fs.fdatasyncSync(this.fd);
      return 0;
    });
  }

  /**
   * Starts an fdatasync on the thread pool; a failure is reported to onError (and the next flush() throws it again).
   */
  flushSoon(onError: (e: Error) => void = () => {}): void {
    if (this.fd < 0 || this.flushing) return;
    this.flushing = true;
    fs.fdatasync(this.fd, (e) => {
      this.flushing = false;
      if (e) onError(new RemusError(ErrorCode.IO, `disk image ${this.path}: ${e.message}`, {}, { cause: e }));
    });
  }

  /** Idempotent. */
  close(): void {
    if (this.fd < 0) return;
    fs.closeSync(this.fd);
    this.fd = -1;
  }

  private check(offsetBytes: number, lengthBytes: number): void {
    assert(this.fd >= 0, 'block file is closed');
    assert(
      Number.isSafeInteger(offsetBytes) && offsetBytes >= 0 && offsetBytes + lengthBytes <= this.sizeBytes,
      'disk range',
    );
  }

  private io(f: () => number): number {
    try {
      return f();
    } catch (e) {
      throw new RemusError(ErrorCode.IO, `disk image ${this.path}: ${(e as Error).message}`, {}, { cause: e });
    }
  }
}

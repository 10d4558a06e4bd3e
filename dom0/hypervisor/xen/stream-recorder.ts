// stream-recorder: writes a small, still well-formed piece of a real libxc stream for test
// fixtures (test/fixtures/xen-*): the headers, the first checkpoint without its PAGE_DATA
// records (a whole memory image is too big to commit), then the next checkpoints whole, up
// to a count. Lab use only (XenDomainOptions.recordPath).
import * as fs from 'node:fs';
import { REC, type RawRecord } from './libxc-stream';

export class StreamRecorder {
  private fd: number | null;
  private checkpoint = 0;

  constructor(
    path: string,
    private readonly checkpointsMax: number,
  ) {
    this.fd = fs.openSync(path, 'w', 0o644);
  }

  headers(h: Buffer): void {
    this.write(h);
  }

  record(r: RawRecord): void {
    if (this.fd === null) return;
    if (this.checkpoint > 0 || r.type !== REC.PAGE_DATA) this.write(r.bytes);
    if (r.type !== REC.CHECKPOINT) return;
    if (++this.checkpoint >= this.checkpointsMax) {
      fs.closeSync(this.fd);
      this.fd = null;
    }
  }

  private write(b: Buffer): void {
    if (this.fd !== null) fs.writeSync(this.fd, b);
  }
}

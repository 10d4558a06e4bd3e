// rdtrace: reader and writer of RDTRACE1 dirty-page traces (format in
// docs/rdtrace.md), plain or gzip. The reader streams (traces run to gigabytes), checks
// every header, length, pfn and epoch count, and fails with RemusError ERR_BAD_TRACE naming
// the byte offset; the writer is what `remusdb trace synth` and `remusdb record` use.
import * as fs from 'node:fs';
import * as zlib from 'node:zlib';
import { ErrorCode, RemusError } from '../errors';
import { assert } from '../assert';

export const MAGIC = 'RDTRACE1';
export const HEADER_SIZE = 24;
export const REC_PAGE = 1,
  REC_EPOCH_END = 2,
  REC_DISK_READ = 3,
  REC_DISK_WRITE = 4;
const RECORD_HEADER = 8;
const PAGE_SIZE_MAX = 1 << 16;

export interface TraceHeader {
  pageSize: number;
  totalPages: number;
}

export type TraceRecord =
  | { type: typeof REC_PAGE; pfn: number; data: Uint8Array }
  | { type: typeof REC_EPOCH_END; timestampUs: bigint; epoch: number; pagesInEpoch: number }
  | { type: typeof REC_DISK_READ; pfn: number; sector: bigint; sectorCount: number }
  | { type: typeof REC_DISK_WRITE; sector: bigint; sectorCount: number };

function bad(path: string, offset: number, what: string): RemusError {
  return new RemusError(ErrorCode.BAD_TRACE, `${path}: ${what} (at byte ${offset} of the trace)`, { path, offset });
}

/** Pulls exact byte counts from a stream of chunks. */
class ByteSource {
  private chunks: Buffer[] = [];
  private have = 0;
  offset = 0;
  private readonly it: AsyncIterator<Buffer>;
  private done = false;
  constructor(stream: NodeJS.ReadableStream) {
    this.it = (stream as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  }
  /** n bytes, or null at a clean end of stream; throws 'short' if it ends inside them. */
  async take(n: number): Promise<Buffer | null> {
    while (this.have < n && !this.done) {
      const r = await this.it.next();
      if (r.done) this.done = true;
      else {
        this.chunks.push(r.value);
        this.have += r.value.length;
      }
    }
    if (this.have === 0 && this.done) return null;
    if (this.have < n) throw new Error('short');
    const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length ? [rest] : [];
    this.have = rest.length;
    this.offset += n;
    return out;
  }
}

export class TraceReader {
  private constructor(
    readonly path: string,
    readonly header: TraceHeader,
    private readonly src: ByteSource,
  ) {}

  static async open(path: string): Promise<TraceReader> {
    let fd: number;
    try {
      fd = fs.openSync(path, 'r');
    } catch (e) {
      throw new RemusError(ErrorCode.IO, `cannot open trace ${path}: ${(e as Error).message}`, {}, { cause: e });
    }
    const magic = Buffer.alloc(2);
    fs.readSync(fd, magic, 0, 2, 0);
    const file = fs.createReadStream('', { fd, highWaterMark: 1 << 20 });
    const gz = magic[0] === 0x1f && magic[1] === 0x8b;
    const stream = gz ? file.pipe(zlib.createGunzip({ chunkSize: 1 << 20 })) : file;
    if (gz) file.on('error', (e) => stream.destroy(e));
    const src = new ByteSource(stream);
    let h: Buffer | null;
    try {
      h = await src.take(HEADER_SIZE);
    } catch (e) {
      throw readFailure(path, src, e);
    }
    if (!h || h.subarray(0, 8).toString('latin1') !== MAGIC) {
      throw bad(path, 0, 'not an RDTRACE1 trace: the magic is not "RDTRACE1"');
    }
    const pageSize = h.readUInt32LE(8),
      reserved = h.readUInt32LE(12);
    const totalPages = h.readBigUInt64LE(16);
    if (pageSize < 512 || pageSize > PAGE_SIZE_MAX || (pageSize & (pageSize - 1)) !== 0) {
      throw bad(path, 8, `page size ${pageSize} is not a power of two in [512, 65536]`);
    }
    if (reserved !== 0) throw bad(path, 12, 'reserved header field is not 0');
    if (totalPages === 0n || totalPages > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw bad(path, 16, `total_pages ${totalPages} is out of range`);
    }
    return new TraceReader(path, { pageSize, totalPages: Number(totalPages) }, src);
  }

  /** Records in file order; a PAGE's data is only valid until the next record. */
  async *records(): AsyncGenerator<TraceRecord> {
    const { path, src } = this;
    let epoch = 0,
      pagesInEpoch = 0;
    for (;;) {
      const at = src.offset;
      let h: Buffer | null;
      try {
        h = await src.take(RECORD_HEADER);
      } catch (e) {
        throw readFailure(path, src, e);
      }
      if (h === null) break;
      const type = h[0],
        len = h.readUInt32LE(4);
      if (h[1] !== 0 || h[2] !== 0 || h[3] !== 0) throw bad(path, at, 'record padding is not zero');
      const want = this.payloadLength(type, at);
      if (len !== want) throw bad(path, at, `record type ${type} has length ${len}, expected ${want}`);
      let p: Buffer | null;
      try {
        p = await src.take(len);
      } catch (e) {
        throw readFailure(path, src, e);
      }
      if (p === null) throw bad(path, at, 'trace ends inside a record');
      const rec = this.parse(type, p, at);
      if (rec.type === REC_PAGE) pagesInEpoch++;
      if (rec.type === REC_EPOCH_END) {
        if (rec.epoch !== epoch) throw bad(path, at, `epoch ${rec.epoch} follows epoch ${epoch - 1}`);
        if (rec.pagesInEpoch !== pagesInEpoch) {
          throw bad(path, at, `epoch ${epoch} says ${rec.pagesInEpoch} pages but carries ${pagesInEpoch}`);
        }
        epoch++;
        pagesInEpoch = 0;
      }
      yield rec;
    }
    if (pagesInEpoch !== 0) {
      throw bad(path, src.offset, `trace is truncated: ${pagesInEpoch} pages after the last EPOCH_END`);
    }
  }

  private payloadLength(type: number, at: number): number {
    switch (type) {
      case REC_PAGE:
        return 8 + this.header.pageSize;
      case REC_EPOCH_END:
        return 16;
      case REC_DISK_READ:
        return 20;
      case REC_DISK_WRITE:
        return 12;
      default:
        throw bad(this.path, at, `unknown record type ${type}`);
    }
  }

  private parse(type: number, p: Buffer, at: number): TraceRecord {
    const pfnAt = (o: number): number => {
      const pfn = p.readBigUInt64LE(o);
      if (pfn >= BigInt(this.header.totalPages)) {
        throw bad(this.path, at, `pfn ${pfn} is out of range (total_pages ${this.header.totalPages})`);
      }
      return Number(pfn);
    };
    switch (type) {
      case REC_PAGE:
        return { type, pfn: pfnAt(0), data: p.subarray(8) };
      case REC_EPOCH_END:
        return { type, timestampUs: p.readBigUInt64LE(0), epoch: p.readUInt32LE(8), pagesInEpoch: p.readUInt32LE(12) };
      case REC_DISK_READ:
        return { type, pfn: pfnAt(0), sector: p.readBigUInt64LE(8), sectorCount: p.readUInt32LE(16) };
      default:
        return { type: REC_DISK_WRITE, sector: p.readBigUInt64LE(0), sectorCount: p.readUInt32LE(8) };
    }
  }
}

function readFailure(path: string, src: ByteSource, e: unknown): RemusError {
  if ((e as Error).message === 'short') return bad(path, src.offset, 'trace ends inside a record');
  return new RemusError(
    ErrorCode.BAD_TRACE,
    `${path}: cannot read the trace: ${(e as Error).message}`,
    {},
    { cause: e },
  );
}

/** Writes RDTRACE1, gzip when the path ends in .gz (one gzip member per megabyte). */
export class TraceWriter {
  private readonly fd: number;
  private readonly gz: boolean;
  private buf = Buffer.alloc(1 << 20);
  private used = 0;
  private pagesInEpoch = 0;
  private epoch = 0;
  private closed = false;

  constructor(
    readonly path: string,
    readonly header: TraceHeader,
  ) {
    const ps = header.pageSize;
    assert(ps >= 512 && ps <= PAGE_SIZE_MAX && (ps & (ps - 1)) === 0, 'trace page size');
    this.gz = path.endsWith('.gz');
    try {
      this.fd = fs.openSync(path, 'w');
    } catch (e) {
      throw new RemusError(ErrorCode.IO, `cannot create ${path}: ${(e as Error).message}`, {}, { cause: e });
    }
    const h = this.reserve(HEADER_SIZE);
    h.write(MAGIC, 0, 'latin1');
    h.writeUInt32LE(header.pageSize, 8);
    h.writeUInt32LE(0, 12);
    h.writeBigUInt64LE(BigInt(header.totalPages), 16);
  }

  page(pfn: number, data: Uint8Array): void {
    assert(pfn >= 0 && pfn < this.header.totalPages, `trace pfn ${pfn} out of range`);
    assert(data.length === this.header.pageSize, 'trace page data must be one page');
    const r = this.record(REC_PAGE, 8 + data.length);
    r.writeBigUInt64LE(BigInt(pfn), 0);
    r.set(data, 8);
    this.pagesInEpoch++;
  }

  diskRead(pfn: number, sector: bigint, sectorCount: number): void {
    const r = this.record(REC_DISK_READ, 20);
    r.writeBigUInt64LE(BigInt(pfn), 0);
    r.writeBigUInt64LE(sector, 8);
    r.writeUInt32LE(sectorCount, 16);
  }

  diskWrite(sector: bigint, sectorCount: number): void {
    const r = this.record(REC_DISK_WRITE, 12);
    r.writeBigUInt64LE(sector, 0);
    r.writeUInt32LE(sectorCount, 8);
  }

  endEpoch(timestampUs: bigint): void {
    const r = this.record(REC_EPOCH_END, 16);
    r.writeBigUInt64LE(timestampUs, 0);
    r.writeUInt32LE(this.epoch++, 8);
    r.writeUInt32LE(this.pagesInEpoch, 12);
    this.pagesInEpoch = 0;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    assert(this.pagesInEpoch === 0, 'TraceWriter closed inside an epoch');
    try {
      this.flush();
    } finally {
      fs.closeSync(this.fd);
    }
  }

  private record(type: number, len: number): Buffer {
    const r = this.reserve(RECORD_HEADER + len);
    r.writeUInt32LE(type, 0); // type then three zero octets
    r.writeUInt32LE(len, 4);
    return r.subarray(RECORD_HEADER);
  }

  private reserve(n: number): Buffer {
    assert(!this.closed, 'TraceWriter used after close');
    if (this.used + n > this.buf.length) this.flush();
    const r = this.buf.subarray(this.used, this.used + n);
    this.used += n;
    return r;
  }

  private flush(): void {
    if (this.used === 0) return;
    const raw = this.buf.subarray(0, this.used);
    const data = this.gz ? zlib.gzipSync(raw, { level: 1 }) : raw;
    this.used = 0;
    try {
      for (let at = 0; at < data.length; ) at += fs.writeSync(this.fd, data, at);
    } catch (e) {
      // A full disk (ENOSPC) or a quota is the operator's to fix: a typed error naming the file.
      const code = (e as NodeJS.ErrnoException).code;
      throw new RemusError(
        ErrorCode.IO,
        `cannot write the trace ${this.path}: ${(e as Error).message}`,
        { code },
        {
          cause: e,
        },
      );
    }
  }
}

// nbd-server: a TCP NBD server (fixed newstyle, simple replies; docs/nbd.md) serving one raw
// image file. Requests of a connection run concurrently and are answered in completion order;
// a write is acknowledged only once it is in the file, FUA/FLUSH only after fdatasync, so a
// vanishing client loses nothing it was told was done. Every request passes through a DiskTap
// (disk-tap.ts) for replication hooks; an export with a tap takes whole 512-byte sectors only
// (TAPPED_MIN_BLOCK_BYTES), as replication does. All a client can make the server hold —
// connections, handshake time, options, requests and bytes in flight, read-ahead, log lines —
// is bounded by NBD_LIMITS (docs/nbd.md "Limits"). A client that breaks the protocol or a
// limit loses its connection (ERR_NBD_CLIENT); a bug met on one connection drops that one
// (ERR_INTERNAL); the server and the image go on.
import * as fs from 'node:fs';
import * as net from 'node:net';
import { assert, assertInt } from '../dom0/assert';
import { ErrorCode, RemusError } from '../dom0/errors';
import { type DiskTap, NO_OP_TAP } from './disk-tap';
import type { BlockGenerations } from './block-generations';
import { SocketReader } from './socket-reader';
import * as W from './nbd-wire';

const MiB = 1024 * 1024;

/** Everything a client can make the server hold, in one place (docs/nbd.md "Limits"). */
export interface NbdLimits {
  /** Connections at once; when full, a newcomer replaces the oldest one still haggling, else it is refused. */
  connectionsMax: number;
  /** From accept to the start of transmission (greeting, client flags, every option). */
  handshakeTimeoutMs: number;
  /** Options a connection may send before transmission. */
  optionsMax: number;
  /** Data bytes of one option. */
  optionBytesMax: number;
  /** Requests of a connection admitted and not answered yet (reply not yet handed to the kernel). */
  requestsInFlightMax: number;
  /** Bytes those requests hold (write payloads, read data until sent); one request is always admitted. */
  requestBytesInFlightMax: number;
  /** Bytes a connection's socket is read ahead of the request being parsed. */
  receiveBufferBytesMax: number;
  /** How long a closing connection may take to flush its replies before it is destroyed. */
  closeGraceMs: number;
  /** TCP keepalive: idle time before the first probe, so a vanished peer frees its connection. */
  keepAliveIdleMs: number;
  /** Log lines per second; the rest are counted and the count is added to the next line. */
  logLinesPerSecondMax: number;
}

export const NBD_LIMITS: Readonly<NbdLimits> = Object.freeze({
  connectionsMax: 16,
  handshakeTimeoutMs: 10_000,
  optionsMax: 32,
  optionBytesMax: 8192,
  requestsInFlightMax: 16,
  requestBytesInFlightMax: 32 * MiB,
  receiveBufferBytesMax: 1 * MiB,
  closeGraceMs: 1000,
  keepAliveIdleMs: 60_000,
  logLinesPerSecondMax: 20,
});

export interface NbdServerOptions {
  imagePath: string;
  /** Name of the one export; "" is always accepted as an alias. */
  exportName: string;
  readOnly: boolean;
  tap?: DiskTap;
  /** Write generations to keep (read tracking): bumped around each write, sampled before reads. */
  generations?: BlockGenerations;
  /**
   * Minimum block size advertised (NBD_INFO_BLOCK_SIZE) and enforced: ranges not multiples of
   * it get EINVAL. Default TAPPED_MIN_BLOCK_BYTES when a tap is given, else 1.
   */
  minBlockBytes?: number;
  /** Overrides of NBD_LIMITS. */
  limits?: Partial<NbdLimits>;
  log?: (message: string) => void;
}

/** What the server holds right now, summed over connections. */
export interface NbdStats {
  connections: number;
  handshaking: number;
  requestsInFlight: number;
  requestBytesInFlight: number;
}

/**
 * Minimum block of an export with a DiskTap: replication forwards whole 512-byte sectors
 * (records.ts, docs/protocol.md), so an unaligned write could reach the file but never the backup.
 */
export const TAPPED_MIN_BLOCK_BYTES = 512;

interface ServerConfig {
  exportName: string;
  readOnly: boolean;
  minBlockBytes: number;
  tap: DiskTap;
  generations?: BlockGenerations;
  limits: Readonly<NbdLimits>;
}

/** The answer to a request: an NBD error (0 = ok) and the data of a successful READ. */
interface Outcome {
  error: number;
  data: Buffer | null;
}

const ZERO_CHUNK_BYTES = 1024 * 1024;
const ZEROS = Buffer.alloc(ZERO_CHUNK_BYTES);

/** The error that ends a misbehaving client's connection without a reply. */
function clientError(message: string): RemusError {
  return new RemusError(ErrorCode.NBD_CLIENT, message);
}

export class NbdServer {
  private readonly server = net.createServer({ allowHalfOpen: true }, (s) => this.accept(s));
  private readonly connections = new Set<NbdConnection>(); // insertion order: oldest first
  private readonly logLimiter: LogLimiter;
  private closing = false;

  private constructor(
    readonly config: ServerConfig,
    readonly file: fs.promises.FileHandle,
    readonly sizeBytes: number,
    log: (m: string) => void,
  ) {
    this.logLimiter = new LogLimiter(log, config.limits.logLinesPerSecondMax);
  }

  static async open(o: NbdServerOptions): Promise<NbdServer> {
    assert(Buffer.byteLength(o.exportName, 'utf8') <= 4096, 'export name longer than 4096 bytes');
    const minBlockBytes = o.minBlockBytes ?? (o.tap ? TAPPED_MIN_BLOCK_BYTES : W.MIN_BLOCK_BYTES);
    assertInt(minBlockBytes, 1, 4096, 'minBlockBytes');
    assert((minBlockBytes & (minBlockBytes - 1)) === 0, 'minBlockBytes must be a power of 2');
    const limits = resolveLimits(o.limits);
    const { fh, sizeBytes } = await openImage(o.imagePath, o.readOnly);
    const config = {
      exportName: o.exportName,
      readOnly: o.readOnly,
      minBlockBytes,
      tap: o.tap ?? NO_OP_TAP,
      generations: o.generations,
      limits,
    };
    return new NbdServer(config, fh, sizeBytes, o.log ?? (() => undefined));
  }

  get limits(): Readonly<NbdLimits> {
    return this.config.limits;
  }

  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', (e) =>
        reject(
          new RemusError(ErrorCode.IO, `NBD server cannot listen on ${host}:${port}: ${e.message}`, {}, { cause: e }),
        ),
      );
      this.server.listen(port, host, () => resolve((this.server.address() as net.AddressInfo).port));
    });
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  stats(): NbdStats {
    const s: NbdStats = {
      connections: this.connections.size,
      handshaking: 0,
      requestsInFlight: 0,
      requestBytesInFlight: 0,
    };
    for (const c of this.connections) {
      if (c.handshaking) s.handshaking++;
      s.requestsInFlight += c.requestsInFlight;
      s.requestBytesInFlight += c.requestBytesInFlight;
    }
    return s;
  }

  accepts(name: string): boolean {
    return name === '' || name === this.config.exportName;
  }

  /** Logs through the rate limit (logLinesPerSecondMax): a flood of bad clients cannot flood the log. */
  log(message: string): void {
    this.logLimiter.line(message);
  }

  /** Stops accepting, lets in-flight requests finish, closes every connection, then the file. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    const stopped = new Promise<void>((r) => this.server.close(() => r()));
    await Promise.all([...this.connections].map((c) => c.shutdown()));
    await stopped;
    await this.file.close();
  }

  private accept(socket: net.Socket): void {
    socket.on('error', () => undefined);
    const full = this.connections.size >= this.limits.connectionsMax;
    if (this.closing || (full && !this.evictOldestHandshake())) {
      const why = this.closing
        ? 'closing'
        : `${this.limits.connectionsMax} connections (connectionsMax), none haggling`;
      this.log(`NBD: refusing ${socket.remoteAddress}:${socket.remotePort}: ${why}`);
      socket.destroy();
      return;
    }
    const c = new NbdConnection(this, socket);
    this.connections.add(c);
    void c.run().finally(() => this.connections.delete(c));
  }

  /** Makes room by dropping the connection that has been haggling longest; false if none is. */
  private evictOldestHandshake(): boolean {
    for (const c of this.connections) {
      if (!c.handshaking) continue;
      this.connections.delete(c);
      c.evict(`replaced by a new connection: ${this.limits.connectionsMax} connections (connectionsMax)`);
      return true;
    }
    return false;
  }
}

class NbdConnection {
  /** True until transmission starts (or the connection ends). */
  handshaking = true;
  /** Admitted requests whose reply has not been handed to the kernel yet, and their bytes. */
  requestsInFlight = 0;
  requestBytesInFlight = 0;
  private readonly reader: SocketReader;
  private readonly who: string;
  private readonly limits: Readonly<NbdLimits>;
  private readonly executing = new Set<Promise<void>>();
  private wake: (() => void) | null = null;
  private stopping = false;
  private finished: Promise<void> = Promise.resolve();

  constructor(
    private readonly srv: NbdServer,
    private readonly socket: net.Socket,
  ) {
    this.who = `${socket.remoteAddress}:${socket.remotePort}`;
    this.limits = srv.limits;
    this.reader = new SocketReader(socket, this.limits.receiveBufferBytesMax);
    socket.setNoDelay(true);
    socket.setKeepAlive(true, this.limits.keepAliveIdleMs);
    socket.on('close', () => this.notify());
  }

  run(): Promise<void> {
    this.finished = this.serve();
    return this.finished;
  }

  /** Server shutdown: read no more requests, finish those in flight, close. */
  async shutdown(): Promise<void> {
    this.stopping = true;
    await Promise.allSettled([...this.executing]);
    await this.endGracefully();
    await this.finished;
  }

  /** Drops the connection at once (it was still haggling; nothing is in flight). */
  evict(why: string): void {
    this.srv.log(`NBD ${this.who}: disconnecting: ${why}`);
    this.socket.destroy();
  }

  private async serve(): Promise<void> {
    let hard = false;
    try {
      const agreed = await this.handshake();
      this.handshaking = false;
      if (agreed) await this.transmit();
    } catch (e) {
      hard = this.mustDrop(e);
    } finally {
      this.handshaking = false;
      await Promise.allSettled([...this.executing]);
      if (hard) this.socket.destroy();
      else await this.endGracefully();
    }
  }

  /** Logs why the connection ends; true when it must be dropped rather than closed gracefully. */
  private mustDrop(e: unknown): boolean {
    if (e instanceof RemusError && e.code === ErrorCode.PEER_GONE) return false; // EOF: flush replies, close
    const err =
      e instanceof RemusError
        ? e
        : new RemusError(ErrorCode.INTERNAL, `internal error: ${(e as Error)?.stack ?? String(e)}`, {}, { cause: e });
    this.srv.log(`NBD ${this.who}: disconnecting (${err.code}): ${err.message}`);
    return true;
  }

  /** Sends what is queued (replies of finished requests), then closes; destroys after closeGraceMs. */
  private endGracefully(): Promise<void> {
    if (this.socket.destroyed) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.socket.destroy(), this.limits.closeGraceMs);
      this.socket.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      this.socket.end();
    });
  }

  // ---- handshake -------------------------------------------------------------------

  /** Fixed newstyle haggling; true when transmission starts, false on ABORT. */
  private async handshake(): Promise<boolean> {
    const ms = this.limits.handshakeTimeoutMs;
    const timer = setTimeout(() => this.evict(`handshake not done within ${ms} ms (handshakeTimeoutMs)`), ms);
    try {
      this.socket.write(W.serverGreeting());
      const noZeroes = this.clientFlags((await this.reader.read(4)).readUInt32BE(0));
      for (let i = 0; i < this.limits.optionsMax; i++) {
        const done = await this.option(noZeroes);
        if (done !== null) return done;
      }
      throw clientError(`more than ${this.limits.optionsMax} options (optionsMax)`);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Checks the client flags (unknown bits end the connection, as the spec requires); NO_ZEROES. */
  private clientFlags(flags: number): boolean {
    if ((flags & ~(W.CLIENT_FLAG_FIXED_NEWSTYLE | W.CLIENT_FLAG_NO_ZEROES)) !== 0) {
      throw clientError(`unknown client flags 0x${flags.toString(16)}`);
    }
    return (flags & W.CLIENT_FLAG_NO_ZEROES) !== 0;
  }

  /** Handles one option: true = go to transmission, false = aborted, null = keep haggling. */
  private async option(noZeroes: boolean): Promise<boolean | null> {
    const h = await this.reader.read(W.OPTION_HEADER_BYTES);
    if (h.readBigUInt64BE(0) !== W.IHAVEOPT) throw clientError('bad option magic');
    const opt = h.readUInt32BE(8);
    const len = h.readUInt32BE(12);
    if (len > this.limits.optionBytesMax) {
      throw clientError(`option ${opt} carries ${len} bytes (optionBytesMax ${this.limits.optionBytesMax})`);
    }
    const data = len > 0 ? await this.reader.read(len) : Buffer.alloc(0);
    const reply = (type: number, d?: Buffer): void => {
      this.socket.write(W.optionReply(opt, type, d));
    };
    switch (opt) {
      case W.OPT.EXPORT_NAME:
        return this.exportName(data.toString('utf8'), noZeroes);
      case W.OPT.ABORT:
        reply(W.REP.ACK);
        this.socket.end();
        return false;
      case W.OPT.LIST:
        if (len !== 0) {
          reply(W.REP.ERR_INVALID);
          return null;
        }
        reply(W.REP.SERVER, W.serverEntry(this.srv.config.exportName));
        reply(W.REP.ACK);
        return null;
      case W.OPT.INFO:
        this.info(data, reply);
        return null;
      case W.OPT.GO:
        return this.info(data, reply) ? true : null;
      default:
        reply(W.REP.ERR_UNSUP);
        return null;
    }
  }

  /** NBD_OPT_EXPORT_NAME: cannot carry an error, so an unknown name ends the connection. */
  private exportName(name: string, noZeroes: boolean): true {
    if (!this.srv.accepts(name)) throw clientError(`unknown export ${JSON.stringify(name.slice(0, 64))}`);
    this.socket.write(W.exportNameReply(this.srv.sizeBytes, W.transmissionFlags(this.srv.config.readOnly), noZeroes));
    return true;
  }

  /** NBD_OPT_INFO / NBD_OPT_GO: the INFO replies and the ACK; false after an error reply. */
  private info(data: Buffer, reply: (type: number, d?: Buffer) => void): boolean {
    const req = W.parseInfoRequest(data);
    if (!req) {
      reply(W.REP.ERR_INVALID);
      return false;
    }
    if (!this.srv.accepts(req.name)) {
      reply(W.REP.ERR_UNKNOWN);
      return false;
    }
    reply(W.REP.INFO, W.infoExport(this.srv.sizeBytes, W.transmissionFlags(this.srv.config.readOnly)));
    if (req.infos.includes(W.INFO.NAME)) reply(W.REP.INFO, W.infoName(this.srv.config.exportName));
    if (req.infos.includes(W.INFO.BLOCK_SIZE)) reply(W.REP.INFO, W.infoBlockSize(this.srv.config.minBlockBytes));
    reply(W.REP.ACK);
    return true;
  }

  // ---- transmission ----------------------------------------------------------------

  private async transmit(): Promise<void> {
    while (!this.stopping) {
      const req = W.parseRequest(await this.reader.read(W.REQUEST_HEADER_BYTES));
      if (!req) throw clientError('bad request magic');
      if (req.type === W.CMD.DISC) return;
      if (req.type === W.CMD.WRITE && req.length > W.MAX_BLOCK_BYTES) {
        throw clientError(`write of ${req.length} bytes exceeds ${W.MAX_BLOCK_BYTES} (MAX_BLOCK_BYTES)`);
      }
      const error = this.validate(req);
      const costBytes = req.type === W.CMD.WRITE || (req.type === W.CMD.READ && error === 0) ? req.length : 0;
      await this.admit(costBytes);
      const payload = req.type === W.CMD.WRITE ? await this.reader.read(req.length) : null;
      this.start(req, error, payload, costBytes);
    }
  }

  /**
   * Waits until the request fits requestsInFlightMax and requestBytesInFlightMax (or nothing is
   * in flight), then counts it. A request leaves the count when its reply is in the kernel, so
   * a client that does not read its replies stops being read: TCP pushes back, memory does not grow.
   */
  private async admit(costBytes: number): Promise<void> {
    while (
      this.requestsInFlight > 0 &&
      (this.requestsInFlight >= this.limits.requestsInFlightMax ||
        this.requestBytesInFlight + costBytes > this.limits.requestBytesInFlightMax)
    ) {
      if (this.socket.destroyed) throw new RemusError(ErrorCode.PEER_GONE, `NBD client ${this.who}: connection closed`);
      await new Promise<void>((r) => {
        this.wake = r;
      });
    }
    this.requestsInFlight++;
    this.requestBytesInFlight += costBytes;
  }

  private release(costBytes: number): void {
    this.requestsInFlight--;
    this.requestBytesInFlight -= costBytes;
    this.notify();
  }

  private notify(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  private start(req: W.Request, error: number, payload: Buffer | null, costBytes: number): void {
    const p: Promise<void> = this.execute(req, error, payload)
      .then((r) => this.send(req.cookie, r.error, r.data, () => this.release(costBytes)))
      .catch((e: unknown) => {
        this.mustDrop(e);
        this.socket.destroy();
      })
      .finally(() => {
        this.executing.delete(p);
      });
    this.executing.add(p);
  }

  /** Queues a simple reply; `sent` runs once it is in the kernel (or can never be sent). */
  private send(cookie: bigint, error: number, data: Buffer | null, sent: () => void): void {
    if (this.socket.destroyed || this.socket.writableEnded) {
      sent();
      return;
    }
    const h = W.simpleReply(error, cookie);
    if (data && error === 0 && data.length > 0) {
      this.socket.cork();
      this.socket.write(h);
      this.socket.write(data, () => sent());
      this.socket.uncork();
    } else {
      this.socket.write(h, () => sent());
    }
  }

  private async execute(req: W.Request, error: number, payload: Buffer | null): Promise<Outcome> {
    if (error !== 0) return { error, data: null };
    try {
      return { error: 0, data: await this.perform(req, payload) };
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      const what = `command ${req.type} at ${req.offset}+${req.length}`;
      this.srv.log(`NBD ${this.who}: ${what} failed: ${(e as Error).message}`);
      const full = code === 'ENOSPC' || code === 'EDQUOT' || code === 'EFBIG';
      return { error: full ? W.NBD_ERR.ENOSPC : W.NBD_ERR.EIO, data: null };
    }
  }

  /** Does a validated request against the file and the tap; the data of a READ. */
  private async perform(req: W.Request, payload: Buffer | null): Promise<Buffer | null> {
    const fua = (req.flags & W.CMD_FLAG.FUA) !== 0;
    const fh = this.srv.file;
    const { tap, generations: gens } = this.srv.config;
    switch (req.type) {
      case W.CMD.READ: {
        const data = Buffer.allocUnsafe(req.length);
        const before = gens ? sampleGenerations(gens, req.offset, req.length) : undefined;
        await readFully(fh, data, req.offset);
        await tap.onRead(req.offset, req.length, data, before);
        return data;
      }
      case W.CMD.WRITE:
        gens?.beginWrite(req.offset, req.length);
        try {
          await writeFully(fh, payload!, req.offset);
          if (fua) await fh.datasync();
          await tap.onWrite(req.offset, payload!, fua);
        } finally {
          gens?.endWrite(req.offset, req.length);
        }
        return null;
      case W.CMD.FLUSH:
        await fh.datasync();
        await tap.onFlush();
        return null;
      default:
        await this.zero(req, fua);
        return null;
    }
  }

  /** TRIM and WRITE_ZEROES: zeros over the range (a trimmed range reads back as zeros). */
  private async zero(req: W.Request, fua: boolean): Promise<void> {
    const { tap, generations: gens } = this.srv.config;
    gens?.beginWrite(req.offset, req.length);
    try {
      await zeroRange(this.srv.file, req.offset, req.length);
      if (fua) await this.srv.file.datasync();
      if (req.type === W.CMD.TRIM) await tap.onTrim(req.offset, req.length, fua);
      else await tap.onWriteZeroes(req.offset, req.length, fua);
    } finally {
      gens?.endWrite(req.offset, req.length);
    }
  }

  /**
   * The NBD error for a request refused before touching the file, or 0. Checked in this order:
   * command type, flags, read-only export, READ length, alignment, range (docs/nbd.md "Errors").
   */
  private validate(req: W.Request): number {
    const t = req.type;
    const isWrite = t === W.CMD.WRITE || t === W.CMD.TRIM || t === W.CMD.WRITE_ZEROES;
    if (!isWrite && t !== W.CMD.READ && t !== W.CMD.FLUSH) return W.NBD_ERR.EINVAL;
    const allowed = W.CMD_FLAG.FUA | (t === W.CMD.WRITE_ZEROES ? W.CMD_FLAG.NO_HOLE : 0);
    if ((req.flags & ~allowed) !== 0) return W.NBD_ERR.EINVAL;
    if (isWrite && this.srv.config.readOnly) return W.NBD_ERR.EPERM;
    if (t === W.CMD.FLUSH) return 0;
    if (t === W.CMD.READ && req.length > W.MAX_BLOCK_BYTES) return W.NBD_ERR.EINVAL;
    const b = this.srv.config.minBlockBytes;
    const aligned = req.length % b === 0 && (!Number.isFinite(req.offset) || req.offset % b === 0);
    if (!aligned) return W.NBD_ERR.EINVAL; // an offset ≥ 2^53 fails the range check
    if (req.offset + req.length <= this.srv.sizeBytes) return 0;
    return t === W.CMD.WRITE || t === W.CMD.WRITE_ZEROES ? W.NBD_ERR.ENOSPC : W.NBD_ERR.EINVAL;
  }
}

interface OpenImage {
  fh: fs.promises.FileHandle;
  sizeBytes: number;
}

async function openImage(imagePath: string, readOnly: boolean): Promise<OpenImage> {
  let fh: fs.promises.FileHandle;
  try {
    fh = await fs.promises.open(imagePath, readOnly ? 'r' : 'r+');
  } catch (e) {
    throw new RemusError(
      ErrorCode.IO,
      `cannot open disk image ${imagePath}: ${(e as Error).message}`,
      {},
      { cause: e },
    );
  }
  const st = await fh.stat();
  if (!st.isFile() || st.size === 0) {
    await fh.close();
    throw new RemusError(ErrorCode.BAD_ARGUMENT, `${imagePath} is not a non-empty regular file`);
  }
  return { fh, sizeBytes: st.size };
}

function resolveLimits(overrides: Partial<NbdLimits> = {}): Readonly<NbdLimits> {
  const l: NbdLimits = { ...NBD_LIMITS, ...overrides };
  for (const [k, v] of Object.entries(l)) assertInt(v, 1, Number.MAX_SAFE_INTEGER, `NBD limit ${k}`);
  assert(l.optionBytesMax >= 4 + 4096 + 2, 'optionBytesMax must hold a GO for a 4096-byte name');
  return Object.freeze(l);
}

/** At most `perSecond` lines a second; the lines dropped are counted and the count added to the next one. */
class LogLimiter {
  private windowStartMs = 0;
  private linesInWindow = 0;
  private dropped = 0;

  constructor(
    private readonly sink: (m: string) => void,
    private readonly perSecond: number,
  ) {}

  line(message: string): void {
    const now = Date.now();
    if (now - this.windowStartMs >= 1000) {
      this.windowStartMs = now;
      this.linesInWindow = 0;
    }
    if (this.linesInWindow >= this.perSecond) {
      this.dropped++;
      return;
    }
    this.linesInWindow++;
    const note = this.dropped > 0 ? ` (${this.dropped} earlier lines dropped: logLinesPerSecondMax)` : '';
    this.dropped = 0;
    this.sink(message + note);
  }
}

/** Generations of the blocks a read covers, before it (read-tracker.ts checks them after). */
function sampleGenerations(gens: BlockGenerations, offsetBytes: number, lengthBytes: number): number[] {
  const out: number[] = [];
  const last = Math.floor((offsetBytes + lengthBytes - 1) / 4096);
  for (let b = Math.floor(offsetBytes / 4096); b <= last; b++) out.push(gens.get(b));
  return out;
}

/**
 * Requests up to this size use synchronous pread/pwrite on the event loop: measured with
 * qemu-img bench (4 KiB, depth 1) the thread-pool round trip costs about half the request
 * time, while a page-cache hit takes microseconds. Larger requests go to the thread pool so
 * a slow disk cannot stall other connections for long.
 */
const SYNC_IO_MAX_BYTES = 64 * 1024;

async function readFully(fh: fs.promises.FileHandle, buf: Buffer, offset: number): Promise<void> {
  let done = 0;
  if (buf.length <= SYNC_IO_MAX_BYTES) {
    while (done < buf.length) {
      const n = fs.readSync(fh.fd, buf, done, buf.length - done, offset + done);
      if (n === 0) {
        buf.fill(0, done);
        return;
      }
      done += n;
    }
    return;
  }
  while (done < buf.length) {
    const { bytesRead } = await fh.read(buf, done, buf.length - done, offset + done);
    if (bytesRead === 0) {
      buf.fill(0, done);
      return;
    } // file shrank under us: zeros past its end
    done += bytesRead;
  }
}

async function writeFully(fh: fs.promises.FileHandle, buf: Buffer, offset: number): Promise<void> {
  let done = 0;
  if (buf.length <= SYNC_IO_MAX_BYTES) {
    while (done < buf.length) done += fs.writeSync(fh.fd, buf, done, buf.length - done, offset + done);
    return;
  }
  while (done < buf.length) {
    const { bytesWritten } = await fh.write(buf, done, buf.length - done, offset + done);
    done += bytesWritten;
  }
}

async function zeroRange(fh: fs.promises.FileHandle, offset: number, length: number): Promise<void> {
  for (let done = 0; done < length; done += ZERO_CHUNK_BYTES) {
    await writeFully(fh, ZEROS.subarray(0, Math.min(ZERO_CHUNK_BYTES, length - done)), offset + done);
  }
}

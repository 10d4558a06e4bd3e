// 54 hostile nbd: an adversary campaign against our NBD server, kept in the suite. Written from
// docs/nbd.md (the NBD protocol's rules we serve) with raw sockets, its cases come from tables:
// client flags, option headers and floods, INFO/GO/EXPORT_NAME, concurrent handshake floods,
// every command × every flag bit, offsets and lengths at and past the bounds (u64 wrap
// included), truncated requests, bad magic, deep pipelines, idle sessions, clients that never
// read, a replicated export (512-byte blocks; the backup's copy rebuilt from the forwarded
// records), and every limit of NBD_LIMITS timed on an in-process server. The main targets are
// `remusdb disk serve` processes (one writable, one --read-only). After every case: the server
// is alive, a fresh genuine client reads known bytes and round-trips a write, the image file
// equals the model (bytes change only where a legitimate write of the case put them), and each
// reply the protocol requires carried the documented error. The case count is printed and
// asserted (54.16).
import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { tmpDir, ROOT } from './support/helpers';
import * as W from '../blktap/nbd-wire';
import { NBD_LIMITS, type NbdLimits, NbdServer } from '../blktap/nbd-server';
import { type ReplicatedDisk, serveReplicatedDisk } from '../blktap/serve';
import { realClock } from '../dom0/engine/clock';
import { DW_FLUSH, DW_ZEROES, Rec, parseDiskWrite } from '../dom0/protocol/records';

const MiB = 1024 * 1024;
const MAX = W.MAX_BLOCK_BYTES;
const SIZE = 4 * MiB + 1000; // not a multiple of 512: the tail is a bound too
const SCRATCH = 3 * MiB; // where the genuine client writes
const { READ, WRITE, DISC, FLUSH, TRIM, WRITE_ZEROES } = W.CMD;
const { EPERM, EINVAL, ENOSPC } = W.NBD_ERR;
const FUA = W.CMD_FLAG.FUA;
const NO_HOLE = W.CMD_FLAG.NO_HOLE;
const FIXED_NO_ZEROES = W.CLIENT_FLAG_FIXED_NEWSTYLE | W.CLIENT_FLAG_NO_ZEROES;
const U64 = 1n << 64n;

const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---- a raw peer -------------------------------------------------------------------------

/** A raw TCP peer with exact-length reads (with timeouts) and close detection. */
class Peer {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: (() => void) | null = null;
  ended = false;
  readonly closed: Promise<void>;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.buffered += d.length;
      this.wake();
    });
    socket.on('error', () => undefined);
    this.closed = new Promise((r) =>
      socket.once('close', () => {
        this.ended = true;
        this.wake();
        r();
      }),
    );
  }

  static dial(port: number): Promise<Peer> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.off('error', reject);
        s.setNoDelay(true);
        resolve(new Peer(s));
      });
      s.once('error', reject);
    });
  }

  get available(): number {
    return this.buffered;
  }

  async read(n: number, ms = 5000): Promise<Buffer> {
    const until = Date.now() + ms;
    while (this.buffered < n) {
      if (this.ended) throw new Error(`connection closed with ${this.buffered} of ${n} bytes`);
      const left = until - Date.now();
      if (left <= 0) throw new Error(`no ${n} bytes within ${ms} ms (have ${this.buffered})`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiter = () => {
          clearTimeout(t);
          r();
        };
      });
    }
    return this.take(n);
  }

  send(b: Buffer): void {
    if (!this.socket.destroyed && this.socket.writable) this.socket.write(b);
  }

  /** Stop reading: the kernel buffers fill and the server sees a client that never reads. */
  stall(): void {
    this.socket.pause();
  }

  async expectClose(ms = 3000, why = ''): Promise<void> {
    const shut = await Promise.race([this.closed.then(() => true), delay(ms).then(() => false)]);
    assert.ok(shut, `the server kept the connection open for ${ms} ms ${why}`);
  }

  kill(): void {
    this.socket.destroy();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  private take(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, n - filled);
      c.copy(out, filled, 0, k);
      filled += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    this.buffered -= n;
    return out;
  }
}

// ---- wire builders (from docs/nbd.md byte layouts) ------------------------------------

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}
function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}

function optHeader(opt: number, len: number, magic = W.IHAVEOPT): Buffer {
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(magic, 0);
  h.writeUInt32BE(opt >>> 0, 8);
  h.writeUInt32BE(len >>> 0, 12);
  return h;
}

function option(opt: number, data: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([optHeader(opt, data.length), data]);
}

function infoData(name: string | Buffer, infos: number[] = []): Buffer {
  const n = typeof name === 'string' ? Buffer.from(name, 'utf8') : name;
  return Buffer.concat([u32(n.length), n, u16(infos.length), ...infos.map(u16)]);
}

function request(
  type: number,
  flags: number,
  cookie: bigint,
  offset: bigint,
  length: number,
  magic = W.REQUEST_MAGIC,
): Buffer {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(magic >>> 0, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(cookie, 8);
  h.writeBigUInt64BE(offset % U64, 16);
  h.writeUInt32BE(length >>> 0, 24);
  return h;
}

async function greet(p: Peer): Promise<void> {
  const g = await p.read(18);
  assert.equal(g.readBigUInt64BE(0), W.NBD_MAGIC);
  assert.equal(g.readBigUInt64BE(8), W.IHAVEOPT);
  assert.equal(g.readUInt16BE(16), W.HS_FLAG_FIXED_NEWSTYLE | W.HS_FLAG_NO_ZEROES);
}

interface OptReply {
  opt: number;
  type: number;
  data: Buffer;
}

async function optReply(p: Peer): Promise<OptReply> {
  const h = await p.read(20);
  assert.equal(h.readBigUInt64BE(0), W.OPT_REPLY_MAGIC, 'option reply magic');
  return { opt: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await p.read(h.readUInt32BE(16)) };
}

/** NBD_OPT_GO on `name` after greeting/flags were done: the INFO replies, then the ACK. */
async function goReplies(p: Peer, name: string | Buffer = '', infos: number[] = []): Promise<OptReply[]> {
  p.send(option(W.OPT.GO, infoData(name, infos)));
  const out: OptReply[] = [];
  for (;;) {
    const r = await optReply(p);
    out.push(r);
    if (r.type !== W.REP.INFO) return out;
  }
}

/** A genuine handshake: greeting, fixed newstyle + NO_ZEROES, GO on "". Returns the size. */
async function handshake(p: Peer): Promise<number> {
  await greet(p);
  p.send(u32(FIXED_NO_ZEROES));
  const rs = await goReplies(p);
  assert.equal(rs[rs.length - 1]!.type, W.REP.ACK, 'GO acknowledged');
  const exp = rs.find((r) => r.type === W.REP.INFO && r.data.readUInt16BE(0) === W.INFO.EXPORT)!;
  return Number(exp.data.readBigUInt64BE(2));
}

async function reply(p: Peer, ms = 5000): Promise<{ error: number; cookie: bigint }> {
  const r = await p.read(16, ms);
  assert.equal(r.readUInt32BE(0), W.SIMPLE_REPLY_MAGIC, 'simple reply magic');
  return { error: r.readUInt32BE(4), cookie: r.readBigUInt64BE(8) };
}

// ---- the server process and the target it serves ----------------------------------------

class ServerProc implements Served {
  exitCode: number | null = null;
  exitedAt = 0;
  logLines = 0;
  readonly tail: string[] = [];
  readonly exited: Promise<number | null>;

  private constructor(
    readonly child: ChildProcess,
    readonly port: number,
  ) {
    this.exited = new Promise((r) =>
      child.once('exit', (c) => {
        this.exitCode = c ?? -1;
        this.exitedAt = Date.now();
        r(c);
      }),
    );
    child.stderr!.on('data', (d: Buffer) => this.log(d.toString()));
  }

  static async start(image: string, extra: string[] = []): Promise<ServerProc> {
    const port = await freePort();
    const args = [path.join(ROOT, 'bin', 'remusdb'), 'disk', 'serve', image, '--listen', `127.0.0.1:${port}`, ...extra];
    const s = new ServerProc(spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] }), port);
    const until = Date.now() + 15000;
    while (!s.tail.some((l) => /serving/.test(l)) && s.exitCode === null && Date.now() < until) await delay(20);
    assert.ok(s.alive() && s.tail.some((l) => /serving/.test(l)), `server did not start: ${s.tail.join('\n')}`);
    return s;
  }

  alive(): boolean {
    return this.exitCode === null;
  }

  diag(): string {
    return `exit code ${this.exitCode}; last log lines:\n${this.tail.join('\n')}`;
  }

  rssBytes(): number {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${this.child.pid}/status`, 'utf8'));
    return Number(m![1]) * 1024;
  }

  /** SIGTERM; resolves with the exit code and how long the drain took. */
  async stop(): Promise<{ code: number | null; ms: number }> {
    const t0 = Date.now();
    if (this.alive()) this.child.kill('SIGTERM');
    const code = await Promise.race([this.exited, delay(10000).then(() => 'timeout' as const)]);
    if (code === 'timeout') {
      this.child.kill('SIGKILL');
      return { code: null, ms: Date.now() - t0 };
    }
    return { code, ms: this.exitedAt - t0 };
  }

  private log(s: string): void {
    for (const line of s.split('\n').filter((l) => l.length > 0)) {
      this.logLines++;
      this.tail.push(line);
      if (this.tail.length > 40) this.tail.shift();
    }
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
    s.on('error', reject);
  });
}

/** A server under attack: a `remusdb disk serve` process or an NbdServer in this process. */
interface Served {
  readonly port: number;
  alive(): boolean;
  diag(): string;
}

interface Target {
  name: string;
  server: Served;
  image: string;
  /** What the image file must hold. */
  model: Buffer;
  ro: boolean;
  /** The export's minimum block (512 for a replicated disk: replication forwards whole sectors). */
  blockBytes: number;
  /** A replicated disk: the backup's copy rebuilt from the forwarded records, and their errors. */
  replica?: Replicated;
}

let casesRun = 0;
let genuineChecks = 0;

/** The invariants after a case: alive, a genuine client works, the file equals the model. */
async function invariants(t: Target, what: string): Promise<void> {
  assert.ok(t.server.alive(), `${what}: the server is gone:\n${t.server.diag()}`);
  await genuineClient(t, what);
  const file = fs.readFileSync(t.image);
  assert.equal(file.length, t.model.length, `${what}: the image size changed`);
  sameBytes(file, t.model, `${what}: image`);
  if (t.replica) {
    assert.deepEqual(t.replica.errors, [], `${what}: the backup refused forwarded records`);
    sameBytes(t.replica.backup, file, `${what}: the backup's copy`);
  }
}

function sameBytes(got: Buffer, want: Buffer, what: string): void {
  if (got.equals(want)) return;
  let i = 0;
  while (got[i] === want[i]) i++;
  assert.fail(`${what}: byte ${i} is 0x${got[i]?.toString(16)}, expected 0x${want[i]?.toString(16)}`);
}

const alignDown = (n: number, b: number): number => n - (n % b);

async function genuineClient(t: Target, what: string): Promise<void> {
  const n = genuineChecks++;
  const p = await Peer.dial(t.server.port).catch((e: Error) => assert.fail(`${what}: genuine connect: ${e.message}`));
  try {
    const [size, b] = [t.model.length, t.blockBytes];
    assert.equal(await handshake(p), size, `${what}: size`);
    const off = alignDown((n * 65536 * 7) % (size - 65536), b);
    await readBack(p, t, off, 65536, 1n);
    const tail = alignDown(size - 1000, b);
    await readBack(p, t, tail, alignDown(size - tail, b), 2n);
    const woff = SCRATCH + (n % 64) * 4096 + alignDown(n % 7, b);
    const data = crypto.randomBytes(4096);
    p.send(Buffer.concat([request(WRITE, 0, 3n, BigInt(woff), 4096), data]));
    const w = await reply(p);
    assert.deepEqual(w, { error: t.ro ? EPERM : 0, cookie: 3n }, `${what}: genuine write`);
    if (!t.ro) data.copy(t.model, woff);
    await readBack(p, t, woff, 4096, 4n);
    p.send(request(DISC, 0, 5n, 0n, 0));
    await p.expectClose(3000, `${what}: after DISC`);
  } catch (e) {
    throw new Error(`${what}: genuine client failed: ${(e as Error).message}`);
  } finally {
    p.kill();
  }
}

async function readBack(p: Peer, t: Target, off: number, len: number, cookie: bigint): Promise<void> {
  p.send(request(READ, 0, cookie, BigInt(off), len));
  const r = await reply(p);
  assert.deepEqual(r, { error: 0, cookie });
  const data = await p.read(len);
  assert.ok(data.equals(t.model.subarray(off, off + len)), `read ${off}+${len} returned other bytes`);
}

/** One adversary case: run it, then the invariants; counts it. */
async function kase(t: Target, what: string, body: () => Promise<void>): Promise<void> {
  casesRun++;
  try {
    await body();
  } catch (e) {
    throw new Error(`${t.name} ${what}: ${(e as Error).message}`);
  }
  await invariants(t, `${t.name} ${what}`);
}

/** A connection that has completed the handshake (GO on ""). */
async function session(t: Target): Promise<Peer> {
  const p = await Peer.dial(t.server.port);
  await handshake(p);
  return p;
}

/** After an error reply the connection must still serve: a read of 512 bytes, then DISC. */
async function stillServes(p: Peer, t: Target): Promise<void> {
  await readBack(p, t, 512, 512, 99n);
  p.send(request(DISC, 0, 100n, 0n, 0));
  await p.expectClose(3000, 'after DISC');
}

/** Legitimately rewrites the whole image with fresh random bytes (and the model with it). */
async function refill(t: Target): Promise<void> {
  if (t.ro) return;
  const p = await session(t);
  const size = t.model.length;
  const fresh = crypto.randomBytes(size);
  for (let off = 0, c = 1n; off < size; off += MiB, c++) {
    const len = Math.min(MiB, size - off);
    p.send(Buffer.concat([request(WRITE, 0, c, BigInt(off), len), fresh.subarray(off, off + len)]));
    assert.equal((await reply(p)).error, 0);
  }
  fresh.copy(t.model);
  p.send(request(DISC, 0, 0n, 0n, 0));
  await p.expectClose();
}

// ---- the documented answer of a request (docs/nbd.md "Errors") ----

type Outcome = { close: true } | { error: number };

const KNOWN = new Set<number>([READ, WRITE, FLUSH, TRIM, WRITE_ZEROES]);

function expected(type: number, flags: number, off: bigint, len: number, t: Target): Outcome {
  if (type === DISC) return { close: true };
  if (type === WRITE && len > MAX) return { close: true };
  if (!KNOWN.has(type)) return { error: EINVAL };
  const allowed = FUA | (type === WRITE_ZEROES ? NO_HOLE : 0);
  if ((flags & ~allowed) !== 0) return { error: EINVAL };
  const writes = type === WRITE || type === TRIM || type === WRITE_ZEROES;
  if (writes && t.ro) return { error: EPERM };
  if (type === FLUSH) return { error: 0 };
  if (type === READ && len > MAX) return { error: EINVAL };
  const b = BigInt(t.blockBytes);
  if (len % t.blockBytes !== 0 || (off < 1n << 53n && off % b !== 0n)) return { error: EINVAL };
  if (off + BigInt(len) <= BigInt(t.model.length)) return { error: 0 };
  return { error: type === WRITE || type === WRITE_ZEROES ? ENOSPC : EINVAL };
}

/** One request on a fresh session, checked against `expected`; the model follows a success. */
async function commandCase(t: Target, type: number, flags: number, off: bigint, len: number): Promise<void> {
  const p = await session(t);
  try {
    const exp = expected(type, flags, off, len, t);
    const payload = type === WRITE && len <= MAX ? payloadOf(len) : null;
    p.send(request(type, flags, 77n, off, len));
    if (payload) p.send(payload);
    if ('close' in exp) {
      await p.expectClose(3000, '(the request ends the connection)');
      return;
    }
    const r = await reply(p, 10000);
    assert.deepEqual(r, { error: exp.error, cookie: 77n }, 'reply');
    if (r.error === 0) await applySuccess(p, t, type, Number(off), len, payload);
    await stillServes(p, t);
  } finally {
    p.kill();
  }
}

function payloadOf(len: number): Buffer {
  return len <= 64 * 1024 ? crypto.randomBytes(len) : Buffer.alloc(len, 0x5a + (len % 7));
}

async function applySuccess(p: Peer, t: Target, type: number, off: number, len: number, payload: Buffer | null) {
  if (type === READ) {
    const data = await p.read(len);
    assert.ok(data.equals(t.model.subarray(off, off + len)), 'READ data equals the image');
  } else if (type === WRITE) {
    payload!.copy(t.model, off);
  } else if (type === TRIM || type === WRITE_ZEROES) {
    t.model.fill(0, off, off + len);
  }
}

// ---- tables --------------------------------------------------------------------------

const TYPES = [READ, WRITE, DISC, FLUSH, TRIM, 5, WRITE_ZEROES, 7, 8, 9, 12, 0x7fff, 0xffff];
const FLAG_VARIANTS = [0, ...Array.from({ length: 16 }, (_, b) => 1 << b), FUA | NO_HOLE, 0xffff];

/** Offsets and lengths at and past the end of a `size`-byte export, u64 wrap included. */
function bounds(size: number): Array<[bigint, number]> {
  const S = BigInt(size);
  return [
    [0n, 0],
    [S, 0],
    [S + 1n, 0],
    [S - 1n, 1],
    [S, 1],
    [S - 4096n, 4096],
    [S - 4095n, 4096],
    [S - 512n, 512],
    [0n, size],
    [0n, size + 1],
    [S + 4096n, 512],
    [1n << 63n, 512],
    [U64 - 512n, 512],
    [U64 - 1n, 1],
    [U64 - 1n, 2],
    [U64 - 4096n, 8192],
    [U64 - S, size],
    [U64 - 1n, 0xffffffff],
    [S - 1n, 0xffffffff],
    [1n << 53n, 512],
    [(1n << 53n) - 1n, 1],
    [0n, MAX],
    [0n, MAX + 1],
    [0n, 0xffffffff],
    [1n, 511],
    [4097n, 3],
    [S - 3n, 3],
  ];
}
const BOUNDS = bounds(SIZE);
const BOUND_TYPES = [READ, WRITE, TRIM, WRITE_ZEROES, FLUSH, 5, 7];

/** n READ headers of `len` bytes at offset 0, cookies 0..n-1, in one buffer. */
function manyReads(n: number, len: number): Buffer {
  const one = request(READ, 0, 0n, 0n, len);
  const b = Buffer.alloc(28 * n);
  for (let i = 0; i < n; i++) {
    one.copy(b, 28 * i);
    b.writeBigUInt64BE(BigInt(i), 28 * i + 8);
  }
  return b;
}

function hex(n: number | bigint): string {
  return `0x${n.toString(16)}`;
}
function mib(n: number): string {
  return `${(n / MiB).toFixed(0)} MiB`;
}

function commandName(type: number, flags: number, off: bigint, len: number): string {
  return `cmd ${type} flags ${hex(flags)} at ${hex(off)}+${hex(len)}`;
}

describe('54 hostile NBD clients against `remusdb disk serve`', function () {
  this.timeout(120000);
  const dir = tmpDir('nbd-hostile');
  let rwProc: ServerProc;
  let roProc: ServerProc;
  let rw: Target;
  let ro: Target;
  const started = Date.now();

  before(async () => {
    const rwImage = path.join(dir, 'rw.img');
    const roImage = path.join(dir, 'ro.img');
    const seed = crypto.randomBytes(SIZE);
    fs.writeFileSync(rwImage, seed);
    fs.writeFileSync(roImage, crypto.randomBytes(SIZE));
    rwProc = await ServerProc.start(rwImage);
    roProc = await ServerProc.start(roImage, ['--read-only']);
    rw = { name: 'rw', server: rwProc, image: rwImage, model: Buffer.from(seed), ro: false, blockBytes: 1 };
    ro = { name: 'ro', server: roProc, image: roImage, model: fs.readFileSync(roImage), ro: true, blockBytes: 1 };
  });

  after(async () => {
    for (const proc of [rwProc, roProc]) if (proc) await proc.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('54.1 client flags: every bit alone, none, both known, all; partial flags then disconnect', async () => {
    for (let bit = 0; bit < 32; bit++) {
      await kase(rw, `client flag bit ${bit}`, () => clientFlagsCase(rw, (1 << bit) >>> 0));
    }
    for (const f of [0, 3, 0xffffffff]) await kase(rw, `client flags ${hex(f)}`, () => clientFlagsCase(rw, f));
    for (const k of [0, 1, 2, 3]) {
      for (const how of ['end', 'destroy'] as const) {
        await kase(rw, `${k} bytes of client flags then ${how}`, async () => {
          const p = await Peer.dial(rw.server.port);
          await greet(p);
          p.send(Buffer.alloc(k));
          if (how === 'end') {
            p.socket.end();
            await p.expectClose();
          } else p.kill();
        });
      }
    }
  });

  it('54.2 option headers: bad magic, truncated headers, truncated data, oversize lengths', async () => {
    const magics = [0n, W.NBD_MAGIC, W.OPT_REPLY_MAGIC, W.IHAVEOPT ^ 1n, U64 - 1n, BigInt(W.REQUEST_MAGIC) << 32n];
    for (const m of magics) {
      await kase(rw, `option magic ${hex(m)}`, async () => {
        const p = await flagged(rw);
        p.send(Buffer.concat([optHeader(W.OPT.LIST, 0, m)]));
        await p.expectClose(3000, 'after a bad option magic');
      });
    }
    for (const k of [1, 4, 8, 9, 12, 15]) {
      await kase(rw, `option header cut at ${k} bytes`, async () => {
        const p = await flagged(rw);
        p.send(optHeader(W.OPT.GO, 6).subarray(0, k));
        p.socket.end();
        await p.expectClose();
      });
    }
    for (const [declared, sent] of [
      [1, 0],
      [100, 0],
      [100, 99],
      [8192, 0],
      [8192, 8191],
      [6, 5],
    ]) {
      await kase(rw, `option data ${sent} of ${declared} bytes then EOF`, async () => {
        const p = await flagged(rw);
        p.send(Buffer.concat([optHeader(W.OPT.GO, declared!), Buffer.alloc(sent!)]));
        p.socket.end();
        await p.expectClose();
      });
    }
    for (const opt of [W.OPT.GO, W.OPT.EXPORT_NAME, 0x1234]) {
      for (const len of [8193, 65536, MiB, 0x7fffffff, 0x80000000, 0xffffffff]) {
        await kase(rw, `option ${opt} declaring ${len} bytes`, async () => {
          const p = await flagged(rw);
          p.send(optHeader(opt, len));
          await p.expectClose(3000, 'after an oversize option length');
        });
      }
    }
  });

  it('54.3 options: unknown numbers, exact 8 KiB data, LIST, ABORT, STRUCTURED_REPLY then simple replies', async () => {
    const unknown = [0, 4, 5, 8, 9, 10, 11, 12, 13, 14, 0x100, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];
    for (const opt of unknown) {
      for (const len of [0, 16]) {
        await kase(rw, `unknown option ${hex(opt)} with ${len} bytes`, async () => {
          const p = await flagged(rw);
          p.send(option(opt, Buffer.alloc(len, 1)));
          assert.deepEqual(await optReply(p), { opt, type: W.REP.ERR_UNSUP, data: Buffer.alloc(0) });
          await goThenServe(p, rw);
        });
      }
    }
    const exact: Array<[string, number, Buffer, number]> = [
      ['unknown', 99, Buffer.alloc(8192), W.REP.ERR_UNSUP],
      ['GO with an 8186-byte name', W.OPT.GO, infoData('y'.repeat(8186)), W.REP.ERR_UNKNOWN],
      ['LIST', W.OPT.LIST, Buffer.alloc(8192), W.REP.ERR_INVALID],
      ['LIST with 1 byte', W.OPT.LIST, Buffer.alloc(1), W.REP.ERR_INVALID],
    ];
    for (const [what, opt, data, type] of exact) {
      await kase(rw, `option ${what} (${data.length} bytes)`, async () => {
        const p = await flagged(rw);
        p.send(option(opt, data));
        assert.equal((await optReply(p)).type, type);
        await goThenServe(p, rw);
      });
    }
    await kase(rw, 'LIST', async () => {
      const p = await flagged(rw);
      p.send(option(W.OPT.LIST));
      const s = await optReply(p);
      assert.equal(s.type, W.REP.SERVER);
      assert.equal(s.data.subarray(4).toString(), 'remusdb');
      assert.equal((await optReply(p)).type, W.REP.ACK);
      await goThenServe(p, rw);
    });
    for (const len of [0, 100]) {
      await kase(rw, `ABORT with ${len} bytes`, async () => {
        const p = await flagged(rw);
        p.send(option(W.OPT.ABORT, Buffer.alloc(len)));
        assert.equal((await optReply(p)).type, W.REP.ACK);
        await p.expectClose(3000, 'after ABORT');
      });
    }
    for (const opt of [8, 11]) {
      await kase(rw, `option ${opt} (structured replies / extended headers) refused, simple replies`, async () => {
        const p = await flagged(rw);
        p.send(option(opt));
        assert.equal((await optReply(p)).type, W.REP.ERR_UNSUP);
        await goThenServe(p, rw);
      });
    }
  });

  it('54.4 INFO/GO: unknown names, malformed data, every info request; EXPORT_NAME known and unknown', async () => {
    const names: Array<string | Buffer> = [
      'nope',
      'remusdb\0',
      'REMUSDB',
      ' remusdb',
      'remusdb ',
      'remusdb/x',
      'x'.repeat(4096),
      'x'.repeat(8000),
      Buffer.from([0xff, 0xfe, 0xfd]),
      Buffer.from('72656d75736462c3', 'hex'),
    ];
    for (const opt of [W.OPT.INFO, W.OPT.GO]) {
      for (const name of names) {
        await kase(rw, `option ${opt} on export ${JSON.stringify(name.toString().slice(0, 16))}…`, async () => {
          const p = await flagged(rw);
          p.send(option(opt, infoData(name)));
          assert.equal((await optReply(p)).type, W.REP.ERR_UNKNOWN);
          await goThenServe(p, rw);
        });
      }
    }
    const malformed: Array<[string, Buffer]> = [
      ['empty', Buffer.alloc(0)],
      ['5 bytes', Buffer.alloc(5)],
      ['name length 2^32-1', Buffer.concat([u32(0xffffffff), u16(0)])],
      ['name longer than the data', Buffer.concat([u32(10), Buffer.alloc(8), u16(0)])],
      ['one info promised, none sent', Buffer.concat([u32(0), u16(1)])],
      ['a trailing byte', Buffer.concat([u32(0), u16(0), Buffer.alloc(1)])],
      ['65535 infos promised', Buffer.concat([u32(0), u16(0xffff)])],
    ];
    for (const opt of [W.OPT.INFO, W.OPT.GO]) {
      for (const [what, data] of malformed) {
        await kase(rw, `option ${opt} data ${what}`, async () => {
          const p = await flagged(rw);
          p.send(option(opt, data));
          assert.equal((await optReply(p)).type, W.REP.ERR_INVALID);
          await goThenServe(p, rw);
        });
      }
    }
    const infoSets = [
      [],
      [W.INFO.NAME],
      [W.INFO.BLOCK_SIZE],
      [W.INFO.DESCRIPTION],
      [0xffff],
      [W.INFO.EXPORT],
      Array.from({ length: 2000 }, () => W.INFO.NAME),
      [W.INFO.NAME, W.INFO.BLOCK_SIZE, W.INFO.NAME],
    ];
    for (const infos of infoSets) {
      await kase(rw, `GO with ${infos.length} info requests ${infos.slice(0, 3).join(',')}`, async () => {
        const p = await flagged(rw);
        checkInfos(await goReplies(p, 'remusdb', infos), infos, rw);
        await stillServes(p, rw);
      });
      await kase(ro, `INFO with ${infos.length} info requests ${infos.slice(0, 3).join(',')}`, async () => {
        const p = await flagged(ro);
        p.send(option(W.OPT.INFO, infoData('', infos)));
        const rs: OptReply[] = [];
        do rs.push(await optReply(p));
        while (rs[rs.length - 1]!.type === W.REP.INFO);
        checkInfos(rs, infos, ro);
        await goThenServe(p, ro);
      });
    }
    for (const name of ['nope', 'x'.repeat(8192), '\u00ff', 'remusdb\0']) {
      await kase(rw, `EXPORT_NAME ${JSON.stringify(name.slice(0, 12))}`, async () => {
        const p = await flagged(rw);
        p.send(option(W.OPT.EXPORT_NAME, Buffer.from(name)));
        await p.expectClose(3000, 'after EXPORT_NAME of an unknown export');
      });
    }
  });

  it('54.5 option floods: thousands pipelined (LIST, unknown, GO unknown, 8 KiB), one at a time', async () => {
    const floods: Array<[string, Buffer]> = [
      ['LIST', option(W.OPT.LIST)],
      ['unknown', option(0x4242)],
      ['GO unknown', option(W.OPT.GO, infoData('nope'))],
      ['8 KiB unknown', option(0x4242, Buffer.alloc(8192))],
    ];
    for (const [what, one] of floods) {
      await kase(rw, `5000 × ${what} pipelined`, async () => {
        const p = await flagged(rw);
        p.send(Buffer.concat(Array.from({ length: what.startsWith('8') ? 500 : 5000 }, () => one)));
        await p.expectClose(5000, 'after an option flood');
        assert.ok(p.available <= 64 * 1024, `the server answered ${p.available} bytes of options`);
      });
    }
    await kase(rw, 'options one at a time until the server stops answering', async () => {
      const p = await flagged(rw);
      let answered = 0;
      for (let i = 0; i < 1000 && !p.ended; i++) {
        p.send(option(0x4242));
        try {
          await optReply(p);
          answered++;
        } catch {
          break;
        }
      }
      await p.expectClose();
      assert.ok(answered >= 8 && answered < 1000, `answered ${answered} options`);
    });
  });

  it('54.6 handshake floods: concurrent silent, partial, garbage connections; a genuine client meanwhile', async () => {
    const kinds: Array<[string, (p: Peer) => void]> = [
      ['silent', () => undefined],
      ['mid-handshake', (p) => p.send(Buffer.concat([u32(FIXED_NO_ZEROES), optHeader(W.OPT.GO, 100).subarray(0, 9)]))],
      ['garbage', (p) => p.send(crypto.randomBytes(64))],
      [
        'never reading',
        (p) => {
          p.stall();
          p.send(Buffer.concat([u32(FIXED_NO_ZEROES), option(W.OPT.LIST)]));
        },
      ],
    ];
    for (const [what, act] of kinds) {
      await kase(rw, `64 concurrent ${what} connections`, async () => {
        const flood = await Promise.all(Array.from({ length: 64 }, () => Peer.dial(rw.server.port)));
        try {
          flood.forEach(act);
          await delay(100);
          await genuineClient(rw, `during a flood of ${what} connections`);
        } finally {
          flood.forEach((p) => p.kill());
          await delay(50);
        }
      });
    }
    await kase(rw, '500 connections opened at once: the log is rate-limited', async () => {
      const [lines0, t0] = [rwProc.logLines, Date.now()];
      const flood = await Promise.all(Array.from({ length: 500 }, () => Peer.dial(rw.server.port).catch(() => null)));
      flood.forEach((p) => p?.send(Buffer.alloc(4, 0xff)));
      await delay(200);
      flood.forEach((p) => p?.kill());
      const seconds = Math.ceil((Date.now() - t0) / 1000) + 1;
      const logged = rwProc.logLines - lines0;
      assert.ok(logged <= NBD_LIMITS.logLinesPerSecondMax * seconds, `${logged} log lines in ${seconds} s`);
    });
  });

  it('54.7 every command type × every flag bit on a writable and a read-only export', async () => {
    await refill(rw);
    let i = 0;
    for (const type of TYPES) {
      for (const flags of FLAG_VARIANTS) {
        const flushLike = type === FLUSH || type === DISC;
        const off = flushLike ? 0n : BigInt(65536 + (i++ % 200) * 4099);
        const len = flushLike ? 0 : 4096;
        await kase(rw, commandName(type, flags, off, len), () => commandCase(rw, type, flags, off, len));
      }
    }
    for (const type of [READ, WRITE, FLUSH, TRIM, WRITE_ZEROES]) {
      for (const flags of FLAG_VARIANTS) {
        const off = type === FLUSH ? 0n : BigInt(8192 + (i++ % 200) * 4099);
        const len = type === FLUSH ? 0 : 4096;
        await kase(ro, commandName(type, flags, off, len), () => commandCase(ro, type, flags, off, len));
      }
    }
    await kase(rw, 'FLUSH with non-zero (reserved) offset and length', () => commandCase(rw, FLUSH, 0, 4096n, 512));
  });

  it('54.8 offsets and lengths at and past the end, zero, past the maximum, unaligned, u64 wrap', async () => {
    await refill(rw);
    for (const type of BOUND_TYPES) {
      for (const [off, len] of BOUNDS) {
        await kase(rw, commandName(type, 0, off, len), () => commandCase(rw, type, 0, off, len));
      }
    }
    for (const type of [READ, WRITE, TRIM, WRITE_ZEROES]) {
      for (const [off, len] of BOUNDS) {
        await kase(ro, commandName(type, 0, off, len), () => commandCase(ro, type, 0, off, len));
      }
    }
  });

  it('54.9 truncated requests: writes shorter than declared and cut headers, then EOF or reset', async () => {
    await refill(rw);
    for (const len of [1, 512, 4096, 65536, 65537, MiB, 4 * MiB, MAX]) {
      for (const sent of [...new Set([0, 1, len - 1])].filter((k) => k < len)) {
        for (const how of ['end', 'destroy'] as const) {
          await kase(rw, `write of ${len} with ${sent} bytes sent, then ${how}`, async () => {
            const p = await session(rw);
            p.send(Buffer.concat([request(WRITE, 0, 1n, 4096n, len), Buffer.alloc(sent, 0xee)]));
            await delay(5);
            if (how === 'end') {
              p.socket.end();
              await p.expectClose();
            } else p.kill();
          });
        }
      }
    }
    for (const k of [1, 4, 8, 16, 24, 27]) {
      for (const how of ['end', 'destroy'] as const) {
        await kase(rw, `request header cut at ${k} bytes, then ${how}`, async () => {
          const p = await session(rw);
          p.send(request(WRITE, 0, 1n, 0n, 512).subarray(0, k));
          if (how === 'end') {
            p.socket.end();
            await p.expectClose();
          } else p.kill();
        });
      }
    }
  });

  it('54.10 bad request magic ends the connection; requests before it are carried out', async () => {
    const magics = [
      0,
      0x13956025,
      W.SIMPLE_REPLY_MAGIC,
      0x668e33ef,
      0x49484156,
      0xffffffff,
      W.REQUEST_MAGIC - 1,
      W.REQUEST_MAGIC + 1,
    ];
    for (const m of magics) {
      await kase(rw, `request magic ${hex(m)}`, async () => {
        const p = await session(rw);
        p.send(request(READ, 0, 1n, 0n, 512, m));
        await p.expectClose(3000, 'after a bad request magic');
      });
    }
    for (const len of [4096, 256 * 1024]) {
      await kase(rw, `a ${len}-byte write, then a bad magic`, async () => {
        const p = await session(rw);
        const data = crypto.randomBytes(len);
        p.send(Buffer.concat([request(WRITE, 0, 1n, 1000n, len), data, request(READ, 0, 2n, 0n, 512, 0xdeadbeef)]));
        await p.expectClose(3000, 'after a bad request magic');
        data.copy(rw.model, 1000);
      });
    }
    await kase(rw, 'GO, then garbage instead of requests', async () => {
      const p = await session(rw);
      p.send(crypto.randomBytes(4096));
      await p.expectClose();
    });
  });

  it('54.11 many outstanding requests: deep pipelines, one cookie, many connections, DISC + half-close', async () => {
    await kase(rw, '2000 pipelined 4 KiB reads', () => pipelinedReads(rw, 1, 2000));
    await kase(rw, '8 connections × 400 pipelined reads', () => pipelinedReads(rw, 8, 400));
    await kase(rw, '500 pipelined writes (some FUA)', async () => {
      const p = await session(rw);
      const datas = Array.from({ length: 500 }, () => crypto.randomBytes(4096));
      const fua = (i: number): number => (i % 5 === 0 ? FUA : 0);
      p.send(Buffer.concat(datas.flatMap((d, i) => [request(WRITE, fua(i), BigInt(i), BigInt(i * 8192), 4096), d])));
      const seen = new Set<bigint>();
      for (let i = 0; i < 500; i++) {
        const r = await reply(p);
        assert.equal(r.error, 0);
        seen.add(r.cookie);
      }
      assert.equal(seen.size, 500, 'one reply per cookie');
      datas.forEach((d, i) => d.copy(rw.model, i * 8192));
      await stillServes(p, rw);
    });
    await kase(rw, '3000 pipelined invalid requests (bad flags, unknown type), then read all', async () => {
      const p = await session(rw);
      const bad = (i: number): Buffer => request(i % 2 ? 42 : READ, i % 2 ? 0 : 0x8000, BigInt(i), 0n, 512);
      p.send(Buffer.concat(Array.from({ length: 3000 }, (_, i) => bad(i))));
      for (let i = 0; i < 3000; i++) assert.equal((await reply(p)).error, EINVAL);
      await stillServes(p, rw);
    });
    await kase(rw, '300 pipelined FLUSHes', async () => {
      const p = await session(rw);
      p.send(Buffer.concat(Array.from({ length: 300 }, (_, i) => request(FLUSH, 0, BigInt(i), 0n, 0))));
      for (let i = 0; i < 300; i++) assert.equal((await reply(p)).error, 0);
      await stillServes(p, rw);
    });
    await kase(rw, '100 requests with one cookie', async () => {
      const p = await session(rw);
      p.send(Buffer.concat(Array.from({ length: 100 }, () => request(READ, 0, 5n, 0n, 512))));
      for (let i = 0; i < 100; i++) {
        assert.deepEqual(await reply(p), { error: 0, cookie: 5n });
        await p.read(512);
      }
      await stillServes(p, rw);
    });
    await kase(rw, '300 pipelined same-bytes writes and reads, then vanish unread', async () => {
      const p = await session(rw);
      const reqs: Buffer[] = [];
      for (let i = 0; i < 300; i++) {
        const off = (i * 12289) % (SIZE - 65536);
        if (i % 2) reqs.push(request(READ, 0, BigInt(i), BigInt(off), 65536));
        else reqs.push(request(WRITE, 0, BigInt(i), BigInt(off), 65536), rw.model.subarray(off, off + 65536));
      }
      p.send(Buffer.concat(reqs));
      await delay(20);
      p.kill();
      await delay(100);
    });
    // Disjoint ranges: requests in flight together run concurrently (large ones in the thread
    // pool), so overlapping writes may land in either order (NBD allows it); overlapping ones
    // here made the file disagree with an in-order model when the machine was loaded.
    await kase(
      rw,
      '8 × 512 KiB writes, DISC, half-close: every reply arrives, every write is in the file',
      async () => {
        const p = await session(rw);
        const len = MiB / 2;
        const datas = Array.from({ length: 8 }, (_, i) => Buffer.alloc(len, 0x30 + i));
        const write = (d: Buffer, i: number): Buffer[] => [
          request(WRITE, i === 7 ? FUA : 0, BigInt(i), BigInt(i * len), len),
          d,
        ];
        p.send(Buffer.concat([...datas.flatMap(write), request(DISC, 0, 99n, 0n, 0)]));
        p.socket.end();
        datas.forEach((d, i) => d.copy(rw.model, i * len)); // carried out whether or not replies arrive
        const cookies: bigint[] = [];
        for (let i = 0; i < 8; i++) {
          const r = await reply(p);
          assert.equal(r.error, 0);
          cookies.push(r.cookie);
        }
        assert.deepEqual(cookies.sort(), [0n, 1n, 2n, 3n, 4n, 5n, 6n, 7n]);
        await p.expectClose();
      },
    );
  });

  it('54.12 idle sessions and clients that never read', async () => {
    await kase(rw, '8 idle sessions held while a genuine client works', async () => {
      const idle = await Promise.all(Array.from({ length: 8 }, () => session(rw)));
      await delay(50);
      await genuineClient(rw, 'beside idle sessions');
      idle.forEach((p) => p.kill());
    });
    await kase(rw, '4 clients that read nothing while asking for 4 MiB reads: memory stays bounded', async () => {
      const before = rwProc.rssBytes();
      const ps = await Promise.all(Array.from({ length: 4 }, () => session(rw)));
      let peak = before;
      try {
        for (const p of ps) {
          p.stall();
          p.send(manyReads(100000, 4 * MiB));
        }
        for (let i = 0; i < 60; i++) {
          await delay(25);
          peak = Math.max(peak, rwProc.rssBytes());
        }
      } finally {
        ps.forEach((p) => p.kill());
      }
      // 4 × what a connection may hold, plus room for garbage not yet collected and the heap
      const bound = 4 * (NBD_LIMITS.requestBytesInFlightMax + NBD_LIMITS.receiveBufferBytesMax) + 128 * MiB;
      console.log(`      RSS ${mib(before)} -> peak ${mib(peak)} (bound: growth <= ${mib(bound)})`);
      assert.ok(peak - before <= bound, `4 non-reading clients grew the server by ${mib(peak - before)}`);
    });
    await kase(rw, 'a client that reads nothing while asking for 1000 × 4 MiB', async () => {
      const p = await session(rw);
      p.stall();
      p.send(Buffer.concat(Array.from({ length: 1000 }, (_, i) => request(READ, 0, BigInt(i), 0n, 4 * MiB))));
      await delay(300);
      await genuineClient(rw, 'beside a client that never reads');
      p.kill();
    });
  });

  it("54.13 a replicated export: 512-byte blocks enforced, the backup's copy never diverges", async () => {
    const image = path.join(dir, 'replicated.img');
    const seed = crypto.randomBytes(4 * MiB); // a replicated disk is whole sectors
    fs.writeFileSync(image, seed);
    const replica = await Replicated.start(image);
    const t: Target = {
      name: 'replicated',
      server: replica,
      image,
      model: Buffer.from(seed),
      ro: false,
      blockBytes: 512,
      replica,
    };
    try {
      await kase(t, 'GO with NBD_INFO_BLOCK_SIZE advertises a 512-byte minimum block', async () => {
        const p = await flagged(t);
        checkInfos(await goReplies(p, '', [W.INFO.BLOCK_SIZE]), [W.INFO.BLOCK_SIZE], t);
        await stillServes(p, t);
      });
      for (const type of [READ, WRITE, TRIM, WRITE_ZEROES]) {
        for (const off of [0, 1, 511, 512, 513, 4095, 4096]) {
          for (const len of [0, 1, 511, 512, 513, 1024, 4096]) {
            const at = BigInt(8192 + off);
            await kase(t, commandName(type, FUA, at, len), () => commandCase(t, type, FUA, at, len));
          }
        }
        for (const [off, len] of bounds(4 * MiB)) {
          await kase(t, commandName(type, 0, off, len), () => commandCase(t, type, 0, off, len));
        }
      }
      assert.ok(replica.forwarded > 100, `${replica.forwarded} records forwarded`);
    } finally {
      await replica.close();
    }
  });

  it('54.14 the limits, timed on an in-process server with small values', async () => {
    const image = path.join(dir, 'ip.img');
    const seed = crypto.randomBytes(SIZE);
    fs.writeFileSync(image, seed);
    const srv = await InProcess.start(image, SMALL);
    const ip: Target = { name: 'in-process', server: srv, image, model: Buffer.from(seed), ro: false, blockBytes: 1 };
    try {
      for (const [what, body] of limitCases(srv, ip)) await kase(ip, what, body);
    } finally {
      await srv.close();
    }
    await kase(rw, 'close() with stalled, silent, idle and half-sent clients returns within closeGraceMs', () =>
      closeCase(dir),
    );
  });

  it('54.15 SIGTERM with hostile connections open: the process drains and exits 0 promptly', async () => {
    casesRun++;
    const idle = await Promise.all(Array.from({ length: 3 }, () => session(rw)));
    const silent = await Promise.all(Array.from({ length: 3 }, () => Peer.dial(rw.server.port)));
    const stalled = await session(rw);
    stalled.stall();
    stalled.send(Buffer.concat(Array.from({ length: 64 }, (_, i) => request(READ, 0, BigInt(i), 0n, 4 * MiB))));
    const halfSent = await session(rw);
    halfSent.send(request(WRITE, 0, 1n, 0n, MiB));
    await delay(200);
    const { code, ms } = await rwProc.stop();
    for (const p of [...idle, ...silent, stalled, halfSent]) p.kill();
    assert.equal(code, 0, rwProc.diag());
    assert.ok(ms <= NBD_LIMITS.closeGraceMs + 2000, `SIGTERM took ${ms} ms`);
  });

  it('54.16 the campaign size', () => {
    console.log(
      `      ${casesRun} adversary cases, ${genuineChecks} genuine-client checks, ` +
        `${rwProc.logLines} server log lines, ${((Date.now() - started) / 1000).toFixed(1)} s`,
    );
    assert.ok(casesRun >= 300, `${casesRun} cases`);
  });
});

/** Connected, greeted, fixed newstyle + NO_ZEROES sent: ready for options. */
async function flagged(t: Target): Promise<Peer> {
  const p = await Peer.dial(t.server.port);
  await greet(p);
  p.send(u32(FIXED_NO_ZEROES));
  return p;
}

/** After haggling trouble: GO on "" must still work and the export serve. */
async function goThenServe(p: Peer, t: Target): Promise<void> {
  const rs = await goReplies(p);
  assert.equal(rs[rs.length - 1]!.type, W.REP.ACK, 'GO after refused options');
  await stillServes(p, t);
  p.kill();
}

async function clientFlagsCase(t: Target, flags: number): Promise<void> {
  const p = await Peer.dial(t.server.port);
  try {
    await greet(p);
    p.send(u32(flags));
    if ((flags & ~FIXED_NO_ZEROES) !== 0) {
      await p.expectClose(3000, `after client flags ${hex(flags)}`);
      return;
    }
    p.send(option(W.OPT.EXPORT_NAME, Buffer.from('remusdb')));
    const noZeroes = (flags & W.CLIENT_FLAG_NO_ZEROES) !== 0;
    const r = await p.read(noZeroes ? 10 : 134);
    assert.equal(Number(r.readBigUInt64BE(0)), t.model.length);
    assert.equal(r.readUInt16BE(8), W.transmissionFlags(t.ro));
    if (!noZeroes)
      assert.ok(
        r.subarray(10).every((b) => b === 0),
        '124 zero bytes',
      );
    await delay(20);
    assert.equal(p.available, 0, 'nothing after the EXPORT_NAME reply');
    await stillServes(p, t);
  } finally {
    p.kill();
  }
}

function checkInfos(rs: OptReply[], infos: number[], t: Target): void {
  assert.equal(rs[rs.length - 1]!.type, W.REP.ACK);
  const byType = new Map(rs.filter((r) => r.type === W.REP.INFO).map((r) => [r.data.readUInt16BE(0), r.data]));
  const exp = byType.get(W.INFO.EXPORT)!;
  assert.equal(exp.length, 12);
  assert.equal(Number(exp.readBigUInt64BE(2)), t.model.length);
  assert.equal(exp.readUInt16BE(10), W.transmissionFlags(t.ro));
  assert.equal(byType.get(W.INFO.NAME)?.subarray(2).toString() ?? null, infos.includes(W.INFO.NAME) ? 'remusdb' : null);
  const bs = byType.get(W.INFO.BLOCK_SIZE);
  if (infos.includes(W.INFO.BLOCK_SIZE)) {
    assert.deepEqual([bs!.readUInt32BE(2), bs!.readUInt32BE(6), bs!.readUInt32BE(10)], [t.blockBytes, 4096, MAX]);
  } else {
    assert.equal(bs, undefined);
  }
  assert.ok(rs.length <= 4, `${rs.length} replies to one GO/INFO`);
}

async function pipelinedReads(t: Target, conns: number, each: number): Promise<void> {
  await Promise.all(
    Array.from({ length: conns }, async (_, c) => {
      const p = await session(t);
      const offs = Array.from({ length: each }, (_, i) => ((c * each + i) * 40961) % (t.model.length - 4096));
      p.send(Buffer.concat(offs.map((off, i) => request(READ, 0, BigInt(i), BigInt(off), 4096))));
      for (let i = 0; i < each; i++) {
        const r = await reply(p);
        assert.equal(r.error, 0);
        const off = offs[Number(r.cookie)]!;
        assert.ok((await p.read(4096)).equals(t.model.subarray(off, off + 4096)), `read ${r.cookie}`);
      }
      await stillServes(p, t);
    }),
  );
}

// ---- the limits, on an in-process server --------------------------------------------------

const SMALL: Partial<NbdLimits> = {
  connectionsMax: 6,
  handshakeTimeoutMs: 400,
  optionsMax: 8,
  requestsInFlightMax: 4,
  requestBytesInFlightMax: 256 * 1024,
  receiveBufferBytesMax: 64 * 1024,
  closeGraceMs: 300,
  logLinesPerSecondMax: 5,
};
const lim = { ...NBD_LIMITS, ...SMALL };

/** An NbdServer in this process (the cases that time limits use small ones). */
class InProcess implements Served {
  logLines = 0;
  readonly tail: string[] = [];
  private open = true;

  private constructor(
    readonly srv: NbdServer,
    readonly port: number,
  ) {}

  static async start(image: string, limits: Partial<NbdLimits>): Promise<InProcess> {
    const holder: { ip?: InProcess } = {};
    const srv = await NbdServer.open({
      imagePath: image,
      exportName: 'remusdb',
      readOnly: false,
      limits,
      log: (m) => holder.ip?.log(m),
    });
    holder.ip = new InProcess(srv, await srv.listen('127.0.0.1', 0));
    return holder.ip;
  }

  alive(): boolean {
    return this.open;
  }

  diag(): string {
    return this.tail.join('\n');
  }

  async close(): Promise<number> {
    const t0 = Date.now();
    await this.srv.close();
    this.open = false;
    return Date.now() - t0;
  }

  private log(m: string): void {
    this.logLines++;
    this.tail.push(m);
    if (this.tail.length > 20) this.tail.shift();
  }
}

function limitCases(srv: InProcess, ip: Target): Array<[string, () => Promise<void>]> {
  return [
    ['a silent connection is dropped at handshakeTimeoutMs', () => silentDropped(srv)],
    ['a byte every 50 ms (slowloris) is dropped at handshakeTimeoutMs', () => slowlorisDropped(srv)],
    [
      'a handshake done in time is not cut later by the timer',
      async () => {
        const p = await session(ip);
        await delay(lim.handshakeTimeoutMs * 2);
        await stillServes(p, ip);
      },
    ],
    ['connectionsMax idle sessions: a newcomer is refused at once; the sessions all serve', () => tableFull(ip)],
    ['a full table of haggling connections gives way to a newcomer; sessions are never evicted', () => evictions(ip)],
    [
      'optionsMax options are answered, then the connection is dropped',
      async () => {
        const p = await flagged(ip);
        let answered = 0;
        for (let i = 0; i < 100; i++) {
          p.send(option(0x4242));
          try {
            await optReply(p);
            answered++;
          } catch {
            break;
          }
        }
        await p.expectClose();
        assert.equal(answered, lim.optionsMax);
      },
    ],
    [
      'a client that does not read: requests and bytes in flight stay bounded; resumed, every reply arrives',
      () => stalledReader(srv, ip),
    ],
    [
      '300 garbage connections: at most logLinesPerSecondMax log lines a second',
      async () => {
        const [lines0, t0] = [srv.logLines, Date.now()];
        for (let i = 0; i < 6; i++) {
          const burst = await Promise.all(Array.from({ length: 50 }, () => Peer.dial(ip.server.port)));
          burst.forEach((p) => p.send(Buffer.alloc(8, 0xff)));
          await Promise.all(burst.map((p) => p.expectClose()));
        }
        const seconds = Math.ceil((Date.now() - t0) / 1000) + 1;
        assert.ok(srv.logLines - lines0 <= lim.logLinesPerSecondMax * seconds, `${srv.logLines - lines0} lines`);
        await delay(1000);
        const last = await Peer.dial(ip.server.port);
        last.send(Buffer.alloc(8, 0xff));
        await last.expectClose();
        assert.match(srv.tail[srv.tail.length - 1]!, /\d+ earlier lines dropped: logLinesPerSecondMax/);
      },
    ],
  ];
}

async function silentDropped(srv: InProcess): Promise<void> {
  const t0 = Date.now();
  const p = await Peer.dial(srv.port);
  await p.expectClose(lim.handshakeTimeoutMs + 2000, 'past handshakeTimeoutMs');
  const ms = Date.now() - t0;
  assert.ok(ms >= lim.handshakeTimeoutMs * 0.8, `dropped after ${ms} ms`);
  assert.match(srv.tail.join('\n'), /handshakeTimeoutMs/);
}

async function slowlorisDropped(srv: InProcess): Promise<void> {
  const p = await Peer.dial(srv.port);
  const bytes = Buffer.concat([u32(FIXED_NO_ZEROES), option(W.OPT.GO, infoData(''))]);
  let sent = 0;
  const timer = setInterval(() => {
    if (sent < bytes.length) p.send(bytes.subarray(sent, ++sent));
  }, 50);
  try {
    await p.expectClose(lim.handshakeTimeoutMs + 2000, 'for a slowloris');
  } finally {
    clearInterval(timer);
  }
  assert.ok(sent < bytes.length, 'dropped before the handshake could finish');
}

async function tableFull(ip: Target): Promise<void> {
  const sessions = await Promise.all(Array.from({ length: lim.connectionsMax }, () => session(ip)));
  try {
    const extra = await Peer.dial(ip.server.port);
    await extra.expectClose(1000, 'past connectionsMax');
    assert.equal(extra.available, 0, 'a refused connection gets no greeting');
    for (const [i, p] of sessions.entries()) await readBack(p, ip, i * 4096, 4096, BigInt(i));
    await stillServes(sessions[0]!, ip);
    await delay(20);
    await genuineClient(ip, 'in the slot a session freed');
  } finally {
    sessions.forEach((p) => p.kill());
    await delay(20);
  }
}

async function evictions(ip: Target): Promise<void> {
  const sessions = await Promise.all(Array.from({ length: 2 }, () => session(ip)));
  const silent: Peer[] = [];
  try {
    for (let i = 2; i < lim.connectionsMax; i++) {
      silent.push(await Peer.dial(ip.server.port));
      await delay(5);
    }
    await genuineClient(ip, 'with the table full of haggling connections');
    await delay(20);
    assert.ok(silent[0]!.ended, 'the oldest haggling connection made room');
    assert.ok(!silent[silent.length - 1]!.ended, 'only as many as needed were dropped');
    for (const [i, p] of sessions.entries()) await readBack(p, ip, i * 4096, 4096, BigInt(i));
  } finally {
    [...sessions, ...silent].forEach((p) => p.kill());
    await delay(20);
  }
}

async function stalledReader(srv: InProcess, ip: Target): Promise<void> {
  const p = await session(ip);
  p.stall();
  const offs = Array.from({ length: 400 }, (_, i) => (i * 65537) % (SIZE - 65536));
  p.send(Buffer.concat(offs.map((off, i) => request(READ, 0, BigInt(i), BigInt(off), 65536))));
  let [requests, bytes] = [0, 0];
  for (let i = 0; i < 25; i++) {
    await delay(20);
    const s = srv.srv.stats();
    [requests, bytes] = [Math.max(requests, s.requestsInFlight), Math.max(bytes, s.requestBytesInFlight)];
  }
  assert.ok(requests > 0 && requests <= lim.requestsInFlightMax, `${requests} requests in flight`);
  assert.ok(bytes <= lim.requestBytesInFlightMax, `${bytes} bytes in flight`);
  p.socket.resume();
  for (let i = 0; i < offs.length; i++) {
    const r = await reply(p);
    assert.equal(r.error, 0);
    const off = offs[Number(r.cookie)]!;
    assert.ok((await p.read(65536)).equals(ip.model.subarray(off, off + 65536)), `read ${r.cookie}`);
  }
  await stillServes(p, ip);
}

/** A second in-process server closed under hostile clients; the case's target stays `rw`. */
async function closeCase(dir: string): Promise<void> {
  const image = path.join(dir, 'close.img');
  fs.writeFileSync(image, Buffer.alloc(SIZE, 0x42));
  const srv = await InProcess.start(image, SMALL);
  const t: Target = { name: 'closing', server: srv, image, model: Buffer.alloc(SIZE, 0x42), ro: false, blockBytes: 1 };
  const peers: Peer[] = [];
  try {
    peers.push(await session(t), await Peer.dial(srv.port), await session(t), await session(t));
    peers[2]!.stall();
    peers[2]!.send(Buffer.concat(Array.from({ length: 64 }, (_, i) => request(READ, 0, BigInt(i), 0n, 4 * MiB))));
    peers[3]!.send(Buffer.concat([request(WRITE, 0, 1n, 0n, MiB), Buffer.alloc(1000)]));
    await delay(100);
    const ms = await srv.close();
    assert.ok(ms <= lim.closeGraceMs + 1000, `close() took ${ms} ms`);
    peers[2]!.socket.resume(); // a paused socket cannot see its close
    await Promise.all(peers.map((p) => p.expectClose(1000, 'after close()')));
    assert.ok(fs.readFileSync(image).equals(t.model), 'the half-sent write left the image alone');
  } finally {
    peers.forEach((p) => p.kill());
  }
}

// ---- a replicated export ----------------------------------------------------------------

/** serveReplicatedDisk with a link that applies each forwarded DISK_WRITE to a backup copy. */
class Replicated implements Served {
  forwarded = 0;
  readonly errors: string[] = [];
  private open = true;

  private constructor(
    readonly disk: ReplicatedDisk,
    readonly backup: Buffer,
  ) {}

  get port(): number {
    return this.disk.port;
  }

  static async start(image: string): Promise<Replicated> {
    const disk = await serveReplicatedDisk({
      image,
      host: '127.0.0.1',
      port: 0,
      clock: realClock,
      replication: { unackedBytesMax: 2 ** 40, inSync: true, readTrackingBlocksMax: 1024 },
    });
    const r = new Replicated(disk, fs.readFileSync(image));
    const link = { backlogBytes: 0, send: (type: number, body: Uint8Array) => r.apply(type, Buffer.from(body)) };
    await new Promise<void>((ready) =>
      disk.replicator.connect(link, 1, { continues: true, differing: [] }, ready, () => undefined),
    );
    return r;
  }

  alive(): boolean {
    return this.open;
  }

  diag(): string {
    return this.errors.join('\n');
  }

  async close(): Promise<void> {
    await this.disk.close();
    this.open = false;
  }

  /** What the backup does with a record (parseDiskWrite checks it as the backup would). */
  private apply(type: number, body: Buffer): void {
    if (type !== Rec.DISK_WRITE) return;
    try {
      const w = parseDiskWrite(body, this.backup.length);
      this.forwarded++;
      if (w.flags & DW_FLUSH) return;
      if (w.flags & DW_ZEROES) this.backup.fill(0, w.offsetBytes, w.offsetBytes + w.lengthBytes);
      else w.data!.copy(this.backup, w.offsetBytes);
    } catch (e) {
      this.errors.push((e as Error).message);
    }
  }
}

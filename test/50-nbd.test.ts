// 50 nbd: our NBD server (blktap/) against real clients — nbdinfo, qemu-io, qemu-img,
// nbdcopy, nbdfuse + loop + ext4 — and a raw-socket client for malformed requests.
// Clients run as child processes with async spawn (the server lives in this process).
import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { tmpDir } from './support/helpers';
import { serveDisk, type ServedDisk } from '../blktap/serve';
import type { DiskTap } from '../blktap/disk-tap';
import { SocketReader } from '../blktap/socket-reader';
import * as W from '../blktap/nbd-wire';

interface Run {
  status: number;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], timeoutMs = 60000): Promise<Run> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    p.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const t = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('error', (e) => {
      clearTimeout(t);
      resolve({ status: -1, stdout, stderr: stderr + e.message });
    });
    p.on('close', (code) => {
      clearTimeout(t);
      resolve({ status: code ?? -1, stdout, stderr });
    });
  });
}

function have(cmd: string): boolean {
  return (process.env.PATH ?? '').split(':').some((d) => fs.existsSync(path.join(d, cmd)));
}

function sha256(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

const MiB = 1024 * 1024;

/** A raw NBD client: fixed newstyle + NO_ZEROES, NBD_OPT_GO on export "", then raw requests. */
class RawClient {
  readonly socket: net.Socket;
  readonly reader: SocketReader;
  closed: Promise<void>;
  private constructor(s: net.Socket) {
    this.socket = s;
    this.reader = new SocketReader(s, 64 * MiB);
    this.closed = new Promise((r) => s.on('close', () => r()));
  }

  static async connect(port: number): Promise<RawClient> {
    const s = await new Promise<net.Socket>((resolve, reject) => {
      const c = net.connect(port, '127.0.0.1', () => resolve(c));
      c.on('error', reject);
    });
    const c = new RawClient(s);
    const g = await c.reader.read(18);
    assert.equal(g.readBigUInt64BE(0), W.NBD_MAGIC);
    assert.equal(g.readUInt16BE(16), 3);
    return c;
  }

  async go(): Promise<number> {
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(W.CLIENT_FLAG_FIXED_NEWSTYLE | W.CLIENT_FLAG_NO_ZEROES);
    this.socket.write(flags);
    const data = Buffer.alloc(6); // name "" and no info requests
    this.socket.write(this.option(W.OPT.GO, data));
    let size = -1;
    for (;;) {
      const h = await this.reader.read(20);
      const type = h.readUInt32BE(12);
      const body = await this.reader.read(h.readUInt32BE(16));
      if (type === W.REP.INFO && body.readUInt16BE(0) === W.INFO.EXPORT) size = Number(body.readBigUInt64BE(2));
      if (type === W.REP.ACK) return size;
      assert.ok(type < 0x80000000, `GO failed with reply type ${type}`);
    }
  }

  option(opt: number, data: Buffer): Buffer {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(W.IHAVEOPT, 0);
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(data.length, 12);
    return Buffer.concat([h, data]);
  }

  request(type: number, offset: bigint, length: number, cookie: bigint, flags = 0, payload?: Buffer): void {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(W.REQUEST_MAGIC, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(cookie, 8);
    h.writeBigUInt64BE(offset, 16);
    h.writeUInt32BE(length, 24);
    this.socket.write(payload ? Buffer.concat([h, payload]) : h);
  }

  async reply(dataBytes = 0): Promise<{ error: number; cookie: bigint; data: Buffer | null }> {
    const r = await this.reader.read(16);
    assert.equal(r.readUInt32BE(0), W.SIMPLE_REPLY_MAGIC);
    const error = r.readUInt32BE(4);
    const data = error === 0 && dataBytes > 0 ? await this.reader.read(dataBytes) : null;
    return { error, cookie: r.readBigUInt64BE(8), data };
  }
}

class CountingTap implements DiskTap {
  writes: Array<{ offsetBytes: number; lengthBytes: number; fua: boolean }> = [];
  reads = 0;
  flushes = 0;
  trims: Array<[number, number]> = [];
  zeroes: Array<[number, number]> = [];
  onWrite(offsetBytes: number, data: Buffer, fua: boolean): void {
    this.writes.push({ offsetBytes, lengthBytes: data.length, fua });
  }
  onRead(): void {
    this.reads++;
  }
  onFlush(): void {
    this.flushes++;
  }
  onTrim(o: number, l: number): void {
    this.trims.push([o, l]);
  }
  onWriteZeroes(o: number, l: number): void {
    this.zeroes.push([o, l]);
  }
}

describe('50 nbd server with real clients', function () {
  this.timeout(120000);
  const dir = tmpDir('nbd');
  const image = path.join(dir, 'disk.img');
  const IMAGE_BYTES = 32 * MiB;
  const tap = new CountingTap();
  let srv: ServedDisk;
  let uri: string;

  before(async function () {
    if (!have('qemu-io') || !have('nbdinfo')) {
      this.skip(); // clients come from Debian packages qemu-utils and libnbd-bin
    }
    const seed = crypto.randomBytes(IMAGE_BYTES);
    fs.writeFileSync(image, seed);
    srv = await serveDisk({ image, host: '127.0.0.1', port: 0, exportName: 'remusdb', tap });
    uri = `nbd://127.0.0.1:${srv.port}/remusdb`;
  });
  after(async () => {
    if (srv) await srv.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('50.1 nbdinfo: size, export name, flags; "" is an alias; NBD_OPT_LIST names the export', async () => {
    const r = await run('nbdinfo', ['--json', uri]);
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout) as { exports: Array<Record<string, unknown>> };
    const e = j.exports[0]!;
    assert.equal(e['export-name'], 'remusdb');
    assert.equal(e['export-size'], IMAGE_BYTES);
    for (const k of ['can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_multi_conn']) assert.equal(e[k], true, k);
    assert.equal(e.is_read_only, false);
    assert.equal(e.block_size_maximum, 32 * MiB);
    const d = await run('nbdinfo', ['--size', `nbd://127.0.0.1:${srv.port}`]);
    assert.equal(d.stdout.trim(), String(IMAGE_BYTES), d.stderr);
    const l = await run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${srv.port}`]);
    assert.equal(l.status, 0, l.stderr);
    assert.deepEqual(
      (JSON.parse(l.stdout) as { exports: Array<{ 'export-name': string }> }).exports.map((x) => x['export-name']),
      ['remusdb'],
    );
    const bad = await run('nbdinfo', [`nbd://127.0.0.1:${srv.port}/nope`]);
    assert.notEqual(bad.status, 0, 'an unknown export name is refused');
  });

  it('50.2 qemu-io writes patterns at several offsets and reads them back; the file holds them', async () => {
    const cases: Array<[number, number, number]> = [
      [0, 64 * 1024, 0xab],
      [256 * 1024 + 512, 3000, 0x5c],
      [IMAGE_BYTES - 8192, 8192, 0x71],
      [5 * MiB + 7, 1, 0x01],
    ];
    const args = ['-f', 'raw', uri];
    for (const [off, len, pat] of cases)
      args.push(
        '-c',
        `write -P 0x${pat.toString(16)} ${off} ${len}`,
        '-c',
        `read -P 0x${pat.toString(16)} ${off} ${len}`,
      );
    const r = await run('qemu-io', args);
    assert.equal(r.status, 0, r.stderr);
    assert.doesNotMatch(r.stdout + r.stderr, /fail|Pattern verification/i, r.stdout);
    const fd = fs.openSync(image, 'r');
    for (const [off, len, pat] of cases) {
      const b = Buffer.alloc(len);
      fs.readSync(fd, b, 0, len, off);
      assert.ok(
        b.every((x) => x === pat),
        `file bytes at ${off}+${len} are 0x${pat.toString(16)}`,
      );
    }
    fs.closeSync(fd);
  });

  it('50.3 qemu-img convert and nbdcopy copy the whole image byte for byte (both ways)', async () => {
    const out = path.join(dir, 'copy.img');
    const c = await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, out]);
    assert.equal(c.status, 0, c.stderr);
    assert.equal(sha256(out), sha256(image));
    if (!have('nbdcopy')) return;
    const src = path.join(dir, 'src.img');
    fs.writeFileSync(src, crypto.randomBytes(IMAGE_BYTES));
    const n = await run('nbdcopy', [src, uri]);
    assert.equal(n.status, 0, n.stderr);
    assert.equal(sha256(image), sha256(src));
    const back = path.join(dir, 'back.img');
    const m = await run('nbdcopy', [uri, back]);
    assert.equal(m.status, 0, m.stderr);
    assert.equal(sha256(back), sha256(src));
  });

  it('50.4 flush and FUA reach the server (and its tap) and succeed', async () => {
    const before = { flushes: tap.flushes, fua: tap.writes.filter((w) => w.fua).length };
    const r = await run('qemu-io', [
      '-f',
      'raw',
      uri,
      '-c',
      'write -f -P 0x42 8192 4096',
      '-c',
      'flush',
      '-c',
      'read -P 0x42 8192 4096',
    ]);
    assert.equal(r.status, 0, r.stderr);
    assert.doesNotMatch(r.stdout + r.stderr, /fail/i);
    assert.ok(tap.flushes > before.flushes, 'onFlush was called');
    const fuaWrites = tap.writes.filter((w) => w.fua);
    assert.ok(
      fuaWrites.length > before.fua && fuaWrites.some((w) => w.offsetBytes === 8192 && w.lengthBytes === 4096),
      'FUA write seen with fua=true',
    );
  });

  it('50.5 trim and write-zeroes read back as zeros (and reach the tap as zero writes)', async () => {
    const r = await run('qemu-io', [
      '-f',
      'raw',
      uri,
      '-c',
      'write -P 0xee 1M 256k',
      '-c',
      'discard 1M 128k',
      '-c',
      'write -z 1152k 128k',
      '-c',
      'read -P 0 1M 256k',
      '-c',
      'write -P 0xdd 2M 64k',
      '-c',
      'write -z -u 2M 64k',
      '-c',
      'read -P 0 2M 64k',
    ]);
    assert.equal(r.status, 0, r.stderr);
    assert.doesNotMatch(r.stdout + r.stderr, /fail|verification/i, r.stdout);
    assert.ok(
      tap.trims.some(([o, l]) => o === MiB && l === 128 * 1024),
      `trim seen: ${JSON.stringify(tap.trims)}`,
    );
    assert.ok(
      tap.zeroes.some(([o]) => o === 1152 * 1024),
      `write-zeroes seen: ${JSON.stringify(tap.zeroes)}`,
    );
    const b = Buffer.alloc(256 * 1024);
    const fd = fs.openSync(image, 'r');
    fs.readSync(fd, b, 0, b.length, MiB);
    fs.closeSync(fd);
    assert.ok(
      b.every((x) => x === 0),
      'file range is zero',
    );
  });

  it(
    '50.6 out-of-range, oversized, unknown command and bad flags get errors; ' + 'the connection stays usable',
    async () => {
      const q = await run('qemu-io', [
        '-f',
        'raw',
        uri,
        '-c',
        `read ${IMAGE_BYTES} 512`,
        '-c',
        'write -P 0x33 0 512',
        '-c',
        'read -P 0x33 0 512',
      ]);
      assert.match(q.stdout + q.stderr, /read failed/);
      assert.match(q.stdout, /read 512\/512 bytes at offset 0/);
      const c = await RawClient.connect(srv.port);
      assert.equal(await c.go(), IMAGE_BYTES);
      c.request(W.CMD.READ, BigInt(IMAGE_BYTES - 512), 1024, 1n);
      assert.deepEqual(await c.reply(), { error: W.NBD_ERR.EINVAL, cookie: 1n, data: null });
      c.request(W.CMD.WRITE, BigInt(IMAGE_BYTES), 512, 2n, 0, Buffer.alloc(512, 7));
      assert.equal((await c.reply()).error, W.NBD_ERR.ENOSPC);
      c.request(W.CMD.READ, 0n, 32 * MiB + 1, 3n);
      assert.equal((await c.reply()).error, W.NBD_ERR.EINVAL);
      c.request(99, 0n, 0, 4n);
      assert.equal((await c.reply()).error, W.NBD_ERR.EINVAL);
      c.request(W.CMD.READ, 0n, 512, 5n, 1 << 3); // REQ_ONE: not applicable
      assert.equal((await c.reply()).error, W.NBD_ERR.EINVAL);
      c.request(W.CMD.READ, 0xffffffffffffff00n, 512, 6n);
      assert.equal((await c.reply()).error, W.NBD_ERR.EINVAL);
      c.request(W.CMD.READ, 0n, 512, 7n);
      const ok = await c.reply(512);
      assert.equal(ok.error, 0);
      assert.equal(ok.cookie, 7n);
      assert.ok(ok.data!.every((x) => x === 0x33));
      c.request(W.CMD.DISC, 0n, 0, 8n);
      await c.closed;
      assert.equal(c.socket.destroyed, true);
      assert.equal(fs.statSync(image).size, IMAGE_BYTES, 'the out-of-range write did not grow the file');
    },
  );

  it(
    '50.7 bad request magic, garbage handshake and oversized writes disconnect cleanly; ' + 'the server stays up',
    async () => {
      const c = await RawClient.connect(srv.port);
      await c.go();
      c.socket.write(Buffer.from('this is not an NBD request at all!!'));
      await c.closed;
      const g = await RawClient.connect(srv.port);
      g.socket.write(Buffer.alloc(64, 0xff)); // unknown client flags
      await g.closed;
      const o = await RawClient.connect(srv.port);
      await o.go();
      o.request(W.CMD.WRITE, 0n, 64 * MiB, 9n); // payload larger than we buffer
      await o.closed;
      const r = await run('nbdinfo', ['--size', uri]);
      assert.equal(r.stdout.trim(), String(IMAGE_BYTES), r.stderr);
    },
  );

  it(
    '50.8 an acknowledged write survives its client vanishing; a client killed mid-transfer does ' +
      'not disturb another',
    async () => {
      const c = await RawClient.connect(srv.port);
      await c.go();
      c.request(W.CMD.WRITE, 3n * BigInt(MiB), 4096, 1n, 0, Buffer.alloc(4096, 0x9a));
      assert.equal((await c.reply()).error, 0);
      c.request(W.CMD.READ, 0n, 8 * MiB, 2n); // then vanish with a read in flight
      c.socket.destroy();
      const b = Buffer.alloc(4096);
      const fd = fs.openSync(image, 'r');
      fs.readSync(fd, b, 0, 4096, 3 * MiB);
      fs.closeSync(fd);
      assert.ok(
        b.every((x) => x === 0x9a),
        'acknowledged write is in the file',
      );

      const victim: ChildProcess = spawn(
        'qemu-img',
        ['convert', '-f', 'raw', '-O', 'raw', uri, path.join(dir, 'victim.img')],
        { stdio: 'ignore' },
      );
      await new Promise((r) => setTimeout(r, 150));
      const other = run('qemu-io', ['-f', 'raw', uri, '-c', 'write -P 0x77 6M 1M', '-c', 'read -P 0x77 6M 1M']);
      victim.kill('SIGKILL');
      const r = await other;
      assert.equal(r.status, 0, r.stderr);
      assert.doesNotMatch(r.stdout + r.stderr, /fail|verification/i);
      const again = await run('qemu-io', ['-f', 'raw', uri, '-c', 'read -P 0x77 6M 1M']);
      assert.equal(again.status, 0, again.stderr);
      assert.doesNotMatch(again.stdout, /fail|verification/i);
    },
  );

  it('50.9 nbdfuse + loop device + ext4: mkfs, mount, write files, unmount, read them back', async function () {
    const reason = fuseLoopUnavailable();
    if (reason) {
      console.log(`      skipped: ${reason}`);
      this.skip();
    }
    // The server runs in a child process here: file I/O on the mounted ext4 goes through
    // loop → FUSE → nbdfuse → NBD, so a synchronous call in this process would wait on a
    // server sharing its event loop (a deadlock no real deployment has).
    const fuseImage = path.join(dir, 'fuse-disk.img');
    fs.writeFileSync(fuseImage, Buffer.alloc(0));
    fs.truncateSync(fuseImage, 64 * MiB);
    const child = await startServerProcess(fuseImage);
    const mnt = path.join(dir, 'fuse');
    const fsmnt = path.join(dir, 'ext4');
    fs.mkdirSync(mnt);
    fs.mkdirSync(fsmnt);
    const fuse = spawn('nbdfuse', [mnt, `nbd://127.0.0.1:${child.port}/remusdb`], { stdio: 'ignore' });
    let loop = '';
    let mounted = false;
    try {
      const file = path.join(mnt, 'nbd');
      const until = Date.now() + 10000;
      while (!fs.existsSync(file) && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
      if (!fs.existsSync(file)) {
        console.log('      skipped: nbdfuse did not expose its file');
        this.skip();
      }
      const l = await run('losetup', ['-f', '--show', file]);
      if (l.status !== 0) {
        console.log(`      skipped: losetup on a FUSE file failed: ${l.stderr.trim()}`);
        this.skip();
      }
      loop = l.stdout.trim();
      const mk = await run('mkfs.ext4', ['-q', '-F', loop]);
      assert.equal(mk.status, 0, mk.stderr);
      const m = await run('mount', [loop, fsmnt]);
      if (m.status !== 0) {
        console.log(`      skipped: mount refused: ${m.stderr.trim()}`);
        this.skip();
      }
      mounted = true;
      const payload = crypto.randomBytes(3 * MiB);
      fs.writeFileSync(path.join(fsmnt, 'a.bin'), payload);
      fs.writeFileSync(path.join(fsmnt, 'hello.txt'), 'remusdb\n');
      assert.equal((await run('umount', [fsmnt])).status, 0);
      mounted = false;
      assert.equal((await run('losetup', ['-d', loop])).status, 0);
      loop = '';
      // Read the filesystem back from the image file itself: every byte went through our server.
      const fsck = await run('fsck.ext4', ['-n', '-f', fuseImage]);
      assert.equal(fsck.status, 0, fsck.stdout + fsck.stderr);
      const cat = await run('debugfs', ['-R', 'cat /hello.txt', fuseImage]);
      assert.equal(cat.stdout, 'remusdb\n', cat.stderr);
      const dump = path.join(dir, 'a.out');
      const d = await run('debugfs', ['-R', `dump /a.bin ${dump}`, fuseImage]);
      assert.equal(d.status, 0, d.stderr);
      assert.deepEqual(fs.readFileSync(dump), payload);
    } finally {
      if (mounted) await run('umount', [fsmnt]);
      if (loop) await run('losetup', ['-d', loop]);
      const u = await run('umount', [mnt]);
      if (u.status !== 0) await run('umount', ['-l', mnt]);
      fuse.kill('SIGTERM');
      await child.stop();
    }
  });

  it('50.10 DISC right after pipelined writes: every write is answered and in the file before the close', async () => {
    const c = await RawClient.connect(srv.port);
    await c.go();
    for (let i = 0; i < 8; i++)
      c.request(
        W.CMD.WRITE,
        BigInt(10 * MiB + i * 65536),
        65536,
        BigInt(100 + i),
        i === 7 ? W.CMD_FLAG.FUA : 0,
        Buffer.alloc(65536, 0x40 + i),
      );
    c.request(W.CMD.DISC, 0n, 0, 200n);
    const cookies: bigint[] = [];
    for (let i = 0; i < 8; i++) {
      const r = await c.reply();
      assert.equal(r.error, 0);
      cookies.push(r.cookie);
    }
    assert.deepEqual(
      cookies.sort((a, b) => (a < b ? -1 : 1)),
      [100n, 101n, 102n, 103n, 104n, 105n, 106n, 107n],
    );
    await c.closed;
    const fd = fs.openSync(image, 'r');
    for (let i = 0; i < 8; i++) {
      const b = Buffer.alloc(65536);
      fs.readSync(fd, b, 0, b.length, 10 * MiB + i * 65536);
      assert.ok(
        b.every((x) => x === 0x40 + i),
        `write ${i} is in the file`,
      );
    }
    fs.closeSync(fd);
  });

  it('50.11 `disk serve` command (registerDisk): serves, answers nbdinfo, exits 0 on SIGTERM', async () => {
    const port = await freePort();
    const img = path.join(dir, 'cli.img');
    fs.writeFileSync(img, Buffer.alloc(MiB));
    const cliJs = path.join(__dirname, '..', 'dom0', 'cli', 'disk.js');
    const code =
      `const { Command } = require('commander'); const p = new Command('remusdb').exitOverride();
      require(${JSON.stringify(cliJs)}).registerDisk(p);
      p.parseAsync(['node', 'remusdb', 'disk', 'serve', ${JSON.stringify(img)}, '--listen', '127.0.0.1:${port}', ` +
      `'--export', 'vm1'])`;
    const child = spawn(process.execPath, ['-e', code], {
      cwd: path.join(__dirname, '..', '..'),
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
    const until = Date.now() + 10000;
    while (!/serving/.test(stderr) && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    assert.match(stderr, /serving .* as NBD export "vm1" on 127\.0\.0\.1:\d+/);
    const r = await run('nbdinfo', ['--size', `nbd://127.0.0.1:${port}/vm1`]);
    assert.equal(r.stdout.trim(), String(MiB), r.stderr);
    child.kill('SIGTERM');
    assert.equal(await exited, 0, stderr);
    assert.match(stderr, /NBD server closed/);
  });

  it('50.12 read-only export refuses writes with EPERM and advertises READ_ONLY', async () => {
    const ro = await serveDisk({ image, host: '127.0.0.1', port: 0, readOnly: true });
    try {
      const info = await run('nbdinfo', ['--json', `nbd://127.0.0.1:${ro.port}`]);
      assert.equal(
        (JSON.parse(info.stdout) as { exports: Array<Record<string, unknown>> }).exports[0]!.is_read_only,
        true,
      );
      const c = await RawClient.connect(ro.port);
      await c.go();
      c.request(W.CMD.WRITE, 0n, 512, 1n, 0, Buffer.alloc(512));
      assert.equal((await c.reply()).error, W.NBD_ERR.EPERM);
      c.request(W.CMD.TRIM, 0n, 512, 2n);
      assert.equal((await c.reply()).error, W.NBD_ERR.EPERM);
      c.socket.destroy();
    } finally {
      await ro.close();
    }
  });
});

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

/** `serveDisk` in a child node process; resolves once it listens. */
function startServerProcess(image: string): Promise<{ port: number; stop: () => Promise<void> }> {
  const serveJs = path.join(__dirname, '..', 'blktap', 'serve.js');
  const code =
    `require(${JSON.stringify(serveJs)}).serveDisk({ image: ${JSON.stringify(image)}, host: '127.0.0.1', ` +
    `port: 0 })
    .then((d) => { console.log(String(d.port)); process.on('SIGTERM', () => d.close().then(() => process.exit(0))); })`;
  const p = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'pipe'] });
  p.stderr.on('data', (d: Buffer) => process.stderr.write(d));
  return new Promise((resolve, reject) => {
    p.stdout.once('data', (d: Buffer) =>
      resolve({
        port: Number(d.toString().trim()),
        stop: () =>
          new Promise((r) => {
            if (p.exitCode !== null) {
              r();
              return;
            }
            p.once('exit', () => r());
            p.kill('SIGTERM');
          }),
      }),
    );
    p.once('exit', (c) => reject(new Error(`server process exited with ${c}`)));
  });
}

function fuseLoopUnavailable(): string | null {
  if (process.getuid?.() !== 0) return 'needs root (losetup, mount)';
  if (!fs.existsSync('/dev/fuse')) return 'no /dev/fuse';
  if (!fs.existsSync('/dev/loop-control')) return 'no loop devices';
  if (!have('nbdfuse')) return 'nbdfuse not installed (Debian package libnbd-bin)';
  if (!have('mkfs.ext4') || !have('losetup') || !have('debugfs'))
    return 'mkfs.ext4 / losetup / debugfs missing (e2fsprogs, util-linux)';
  return null;
}

// 45 guest size limits: a simulated guest's memory is one native arena of up to 64 GiB
// (SIM_GUEST_BYTES_MAX), seen from JavaScript in 1 GiB windows (GuestMemory) because Node.js
// 20 caps each buffer at 2^32 bytes. Every size either works or is refused with a typed
// error naming the limit: past 64 GiB, past the host's RAM, the arena's whole-`buffer` past
// 2^32 bytes (it used to abort the process with a double free). A 5 GiB guest works end to
// end: pfns above 2^20, offsets above 2^32, in the vCPU, the decoder, the replica, protect
// and a backup's HELLO. Oversized cases run in child processes, so a regression to an
// abort fails a test instead of killing mocha. Mappings are lazy: idle guests touch little.
import { strict as assert } from 'node:assert';
import { spawn, spawnSync } from 'node:child_process';
import * as os from 'node:os';
import * as path from 'node:path';
import { ErrorCode, RemusError } from '../dom0/errors';
import { loadAddon } from '../dom0/native';
import { MALLOC_MMAP_THRESHOLD_BYTES, MALLOC_TRIM_THRESHOLD_BYTES } from '../dom0/limits';
import { GUEST_PAGES_MAX, GuestMemory, SEGMENT_PAGES } from '../dom0/memory/guest-memory';
import { PageDecoder, PageEncoder } from '../dom0/memory/page-codec';
import { SimDomain, type SimOutput } from '../dom0/hypervisor/sim/sim-domain';
import { SimReplica } from '../dom0/hypervisor/sim/sim-replica';
import {
  SIM_GUEST_BYTES_MAX,
  SIM_GUEST_PAGES_MAX,
  checkSimGuestBytes,
  checkSimGuestFitsHost,
  simGuestBytesProblem,
} from '../dom0/hypervisor/sim/guest-size';
import { C_STATE, STOP } from '../dom0/hypervisor/sim/vcpu-control';
import type { Link } from '../dom0/ports';
import { connectLink } from '../dom0/protocol/channel';
import { PROTOCOL_VERSION, RECORD_BODY_MAX, REC_NAMES, Rec, jsonBody } from '../dom0/protocol/records';
import { ROOT, freePort, randomPages, sleep, until } from './support/helpers';

const PAGE = 4096;
const LIMIT = 2 ** 36;
const OVER = LIMIT + PAGE; // the first size past the limit
const BUFFER_MAX = 2 ** 32; // Node.js 20's longest buffer, and the arena's longest window
const FIVE_GIB = 5 * 2 ** 30;

/** What a child reports of one attempt: ok, or the error it threw. */
interface Outcome {
  bytes: number;
  ok?: boolean;
  name?: string;
  code?: string;
  message?: string;
}

interface Exit {
  status: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

/** Runs a node script in a child (from dist/test); an abort shows as signal SIGABRT. */
function runNode(script: string, timeoutMs = 60000): Exit {
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: timeoutMs, cwd: __dirname });
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

function runRemusdb(args: string[], timeoutMs = 60000): Exit {
  const bin = path.join(ROOT, 'bin', 'remusdb');
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: timeoutMs });
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

function assertNamesLimit(message: string): void {
  assert.match(message, /68719476736 bytes/, `the message names the limit: ${message}`);
  assert.match(message, /SIM_GUEST_BYTES_MAX/, message);
}

/** A size under the limit that this host's RAM cannot hold, or null when RAM ≥ 64 GiB. */
function pastRam(): number | null {
  const bytes = (Math.floor(os.totalmem() / 2 ** 30) + 1) * 2 ** 30;
  return bytes <= LIMIT ? bytes : null;
}

describe('45 guest size limits', () => {
  it('45.1 the limit is 2^36 bytes, in bytes and pages, and agrees with GuestMemory and the addon', () => {
    assert.equal(SIM_GUEST_BYTES_MAX, LIMIT);
    assert.equal(SIM_GUEST_PAGES_MAX, LIMIT / PAGE);
    assert.equal(GUEST_PAGES_MAX, SIM_GUEST_PAGES_MAX);
    assert.equal(loadAddon().arenaBufferBytesMax, BUFFER_MAX);
    assert.ok(SEGMENT_PAGES * PAGE <= BUFFER_MAX, 'a segment is one buffer');
    assert.ok(
      GUEST_PAGES_MAX / SEGMENT_PAGES <= loadAddon().codecConstants.imageSegmentsMax,
      'the decoder takes every segment',
    );
    assert.equal(simGuestBytesProblem(LIMIT), null);
    assert.equal(simGuestBytesProblem(FIVE_GIB), null);
    assertNamesLimit(simGuestBytesProblem(OVER) ?? '');
    assert.match(simGuestBytesProblem(LIMIT + 1) ?? '', /multiple of 4096/);
    assert.throws(
      () => checkSimGuestBytes(2 ** 40, 'sim:x', ErrorCode.HANDSHAKE),
      (e: unknown) =>
        e instanceof RemusError &&
        e.code === ErrorCode.HANDSHAKE &&
        /^sim:x: 1099511627776 bytes \(1024 GiB\)/.test(e.message),
    );
    const ram = pastRam();
    if (ram !== null) {
      assert.throws(
        () => checkSimGuestFitsHost(ram, 'sim:x'),
        (e: unknown) =>
          e instanceof RemusError &&
          e.code === ErrorCode.BAD_ARGUMENT &&
          /more than this host's .* of RAM/.test(e.message),
      );
    }
  });

  it(
    '45.2 the arena whole buffer past 2^32 bytes, ' + 'and a window past it, throw ERR_OUT_OF_MEMORY (no double free)',
    () => {
      // Before the fix: "free(): double free detected in tcache 2", SIGABRT, in Arena::Buffer.
      const r = runNode(
        `
      const { loadAddon } = require('../dom0/native');
      const out = [];
      for (const bytes of [${BUFFER_MAX + PAGE}, ${FIVE_GIB}]) {
        const a = new (loadAddon().Arena)(bytes);
        for (let i = 0; i < 3; i++) {
          try { a.buffer; out.push({ bytes, ok: true }); }
          catch (e) { out.push({ bytes, name: e.constructor.name, code: e.code, message: e.message }); }
        }
        try { a.view(0, ${BUFFER_MAX / PAGE + 1}); out.push({ bytes: ${BUFFER_MAX + PAGE}, ok: true }); }
        catch (e) { out.push({ bytes: ${BUFFER_MAX + PAGE}, name: e.constructor.name, code: e.code, message: ` +
          `e.message }); }
        a.close();
      }
      console.log(JSON.stringify(out));`,
      );
      assert.equal(r.signal, null, `the child was killed by ${r.signal}: ${r.stderr}`);
      assert.equal(r.status, 0, r.stderr);
      const out = JSON.parse(r.stdout) as Outcome[];
      assert.equal(out.length, 8);
      for (const o of out) {
        assert.equal(o.ok, undefined, `a ${o.bytes}-byte buffer was created`);
        assert.equal(o.name, 'RemusError');
        assert.equal(o.code, ErrorCode.OUT_OF_MEMORY);
        assert.match(
          o.message ?? '',
          new RegExp(`^${o.bytes} bytes of guest memory cannot be one ArrayBuffer: .*4294967296 bytes`),
        );
      }
    },
  );

  it('45.3 a 5 GiB arena is seen through 1 GiB windows: bytes past 2^32 are where copyPages finds them', () => {
    const a = new (loadAddon().Arena)(FIVE_GIB);
    try {
      const mem = GuestMemory.ofArena(a);
      assert.equal(mem.pageCount, FIVE_GIB / PAGE);
      assert.equal(mem.segments.length, 5);
      const high = FIVE_GIB / PAGE - 1,
        aliased = high % 2 ** 20; // same pfn modulo 2^20: a 32-bit offset bug
      mem.page(0)[0] = 0x45;
      mem.page(high)[PAGE - 1] = 0x54;
      assert.equal(mem.page(aliased)[PAGE - 1], 0, 'a write past 2^32 did not land 2^32 lower');
      const dst = new Uint8Array(2 * PAGE);
      a.copyPages(Uint32Array.of(high, 0), 2, dst);
      assert.equal(dst[PAGE - 1], 0x54);
      assert.equal(dst[PAGE], 0x45);
      assert.throws(() => a.view(FIVE_GIB / PAGE - 1, 2), /inside the arena/);
    } finally {
      a.close();
    }
  });

  it('45.4 SimDomain.boot refuses a guest past the limit, or past the host RAM, with ERR_BAD_ARGUMENT', () => {
    const ram = pastRam();
    const sizes = [OVER, 80 * 2 ** 30, ...(ram === null ? [] : [ram])];
    const r = runNode(`
      const { SimDomain } = require('../dom0/hypervisor/sim/sim-domain');
      const out = [];
      for (const bytes of ${JSON.stringify(sizes)}) {
        try { SimDomain.boot(bytes, 'idle', 1, { name: 't45big', stepsPerSec: 0 }); out.push({ bytes, ok: true }); }
        catch (e) { out.push({ bytes, name: e.constructor.name, code: e.code, message: e.message }); }
      }
      console.log(JSON.stringify(out));
      process.exit(0);`);
    assert.equal(r.signal, null, `the child was killed by ${r.signal}: ${r.stderr}`);
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as Outcome[];
    assert.deepEqual(
      out.map((o) => o.bytes),
      sizes,
    );
    for (const o of out) {
      assert.equal(o.ok, undefined, `a ${o.bytes}-byte guest booted`);
      assert.equal(o.name, 'RemusError');
      assert.equal(o.code, ErrorCode.BAD_ARGUMENT);
      assert.match(o.message ?? '', /^sim:t45big: /);
      if (o.bytes > LIMIT) assertNamesLimit(o.message ?? '');
      else assert.match(o.message ?? '', /more than this host's/);
    }
  });

  it('45.5 a SimReplica past the limit is refused with ERR_HANDSHAKE; the disk it was handed is closed', () => {
    const r = runNode(`
      const { SimReplica } = require('../dom0/hypervisor/sim/sim-replica');
      let closed = 0, res;
      try { new SimReplica('t45big', ${OVER / PAGE}, { close: () => { closed++; } }); res = { ok: true }; }
      catch (e) { res = { name: e.constructor.name, code: e.code, message: e.message }; }
      console.log(JSON.stringify({ ...res, closed }));`);
    assert.equal(r.signal, null, `the child was killed by ${r.signal}: ${r.stderr}`);
    assert.equal(r.status, 0, r.stderr);
    const o = JSON.parse(r.stdout) as Outcome & { closed: number };
    assert.equal(o.ok, undefined, 'the replica was created');
    assert.equal(o.name, 'RemusError');
    assert.equal(o.code, ErrorCode.HANDSHAKE);
    assertNamesLimit(o.message ?? '');
    assert.equal(o.closed, 1, 'the disk was closed once');
  });

  it(
    '45.6 a 5 GiB guest runs, suspends and stops; ' + 'a 5 GiB replica decodes pages past 2^32 where they belong',
    async () => {
      const outputs: SimOutput[] = [];
      const onOutput = (o: SimOutput): void => {
        outputs.push(o);
      };
      const d = SimDomain.boot(FIVE_GIB, 'idle', 3, { name: 't45max', stepsPerSec: 500, onOutput });
      try {
        assert.equal(d.pageCount, FIVE_GIB / PAGE);
        assert.equal(d.mem.pageCount, FIVE_GIB / PAGE);
        await until(async () => outputs.length >= 5, 10000, 'outputs of the 5 GiB guest');
        await d.suspend();
        const cap = d.capture(false);
        assert.ok(cap.count >= 1 && cap.count < 16, `a few dirty pages (page 0: the header), got ${cap.count}`);
        assert.throws(
          () => d.capture(true),
          (e: unknown) => e instanceof RemusError && /copied live/.test(e.message),
        );
        d.resume();
        assert.equal(d.workerError, null);
      } finally {
        await d.destroy();
      }
      const r = new SimReplica('t45max', FIVE_GIB / PAGE);
      try {
        assert.equal(r.image.pageCount, FIVE_GIB / PAGE);
        const pfns = [FIVE_GIB / PAGE - 1, 2 ** 20 + 7, 1_200_000, 1];
        const pages = randomPages(pfns.length, 45);
        const enc = new PageEncoder({ compressor: 'lz4', cachePages: 0 });
        const { records } = enc.encode(pages, BigUint64Array.from(pfns.map(BigInt)));
        assert.equal(new PageDecoder('native').applyInPlace(records, r.image), pfns.length);
        pfns.forEach((p, i) =>
          assert.ok(
            Buffer.from(r.image.page(p)).equals(Buffer.from(pages.subarray(i * PAGE, (i + 1) * PAGE))),
            `page ${p}`,
          ),
        );
        assert.ok(
          r.image.page((FIVE_GIB / PAGE - 1) % 2 ** 20).every((b) => b === 0),
          'nothing landed 2^32 lower',
        );
      } finally {
        r.close();
      }
    },
  );

  it('45.7 destroy() does not wait for a vCPU that already exited; a destroyed guest stays down', async () => {
    const d = SimDomain.boot(1 << 20, 'idle', 4, { name: 't45gone', stepsPerSec: 100 });
    const w = (d as unknown as { worker: { once(ev: 'exit', f: () => void): void } }).worker;
    const exited = new Promise<void>((resolve) => w.once('exit', () => resolve()));
    const control = (d as unknown as { shared: { control: Int32Array } }).shared.control;
    Atomics.store(control, C_STATE, STOP); // the vCPU leaves behind the domain's back
    Atomics.notify(control, C_STATE);
    await exited;
    await sleep(10); // its 'exit' has been emitted before destroy() is called
    const result = await Promise.race([d.destroy().then(() => 'destroyed'), sleep(3000).then(() => 'hung')]);
    assert.equal(result, 'destroyed', 'destroy() waited for an exit that had already happened');
    d.resume(); // no-op
    assert.throws(
      () => d.suspend(),
      (e: unknown) => e instanceof RemusError && e.code === ErrorCode.VCPU,
    );
  });

  it('45.9 range(): a view inside one segment, a copy with the same bytes across segments', () => {
    const m = GuestMemory.allocate(10, 4); // segments of 4, 4 and 2 pages
    for (let pfn = 0; pfn < 10; pfn++) m.page(pfn).fill(pfn + 1);
    const inside = m.range(4, 3);
    assert.deepEqual(Array.from(inside.subarray(0, 1)), [5]);
    inside[0] = 99;
    assert.equal(m.page(4)[0], 99, 'inside one segment: a view of guest memory');
    const across = m.range(2, 5);
    assert.equal(across.length, 5 * 4096);
    assert.deepEqual(
      [0, 1, 2, 3, 4].map((i) => across[i * 4096]),
      [3, 4, 99, 6, 7],
    );
    across[0] = 0;
    assert.equal(m.page(2)[0], 3, 'across segments: a copy');
    assert.throws(() => m.range(8, 3), /range inside guest memory/);
  });

  it('45.10 protect and backup keep large transient buffers in the heap (malloc tuning), within the limits', () => {
    assert.ok(MALLOC_MMAP_THRESHOLD_BYTES > RECORD_BODY_MAX, 'the largest record is a heap allocation');
    assert.equal(loadAddon().keepLargeBuffersResident(MALLOC_MMAP_THRESHOLD_BYTES, MALLOC_TRIM_THRESHOLD_BYTES), true);
    assert.equal(loadAddon().keepLargeBuffersResident(-1, MALLOC_TRIM_THRESHOLD_BYTES), false, 'a bad size is refused');
    assert.throws(() => (loadAddon().keepLargeBuffersResident as (...a: unknown[]) => boolean)('32M'), TypeError);
  });

  it('45.8 protect: past the limit or the RAM exits 2 with ERR_BAD_ARGUMENT; 5G runs and stops', function () {
    this.timeout(120000);
    const name = `t45p${process.pid}`;
    const ram = pastRam();
    for (const size of [String(OVER), '65G', ...(ram === null ? [] : [String(ram)])]) {
      const r = runRemusdb([
        'protect',
        `sim:${name}`,
        '--blackhole',
        '--memory',
        size,
        '--disk',
        '0',
        '--seconds',
        '1',
      ]);
      assert.equal(r.signal, null, `protect --memory ${size} was killed by ${r.signal}: ${r.stderr}`);
      assert.equal(r.status, 2, `protect --memory ${size}: ${r.stderr}`);
      assert.match(r.stderr, /\[ERR_BAD_ARGUMENT\]/);
      assert.match(r.stderr, Number(size) > LIMIT || size === '65G' ? /--memory/ : /more than this host's/);
    }
    const ok = runRemusdb([
      'protect',
      `sim:${name}`,
      '--blackhole',
      '--memory',
      '5G',
      '--workload',
      'idle',
      '--disk',
      '0',
      '--seconds',
      '1',
    ]);
    assert.equal(ok.signal, null, `protect --memory 5G was killed by ${ok.signal}: ${ok.stderr}`);
    assert.equal(ok.status, 0, ok.stderr);
    assert.doesNotMatch(ok.stderr, /\[ERR_/);
  });

  it(
    '45.9 backup: a HELLO past the limit is answered with ERR_HANDSHAKE, a 5 GiB one with HELLO_ACK; ' +
      'the backup runs on',
    async function () {
      this.timeout(60000);
      const port = await freePort();
      const args = [path.join(ROOT, 'bin', 'remusdb'), 'backup', '--listen', `127.0.0.1:${port}`, '--insecure'];
      const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (c: Buffer) => {
        stderr += c.toString();
      });
      const ended = new Promise<{ code: number | null; signal: string | null }>((resolve) => {
        child.once('exit', (code, signal) => resolve({ code, signal }));
      });
      try {
        await until(async () => /backup listening/.test(stderr), 15000, 'the backup to listen');
        for (const bytes of [OVER, 2 ** 40, FIVE_GIB]) {
          const link: Link = await connectLink('127.0.0.1', port, { insecure: true });
          const got = new Promise<{ type: string; body: string }>((resolve) => {
            link.onRecord((t: number, b: Buffer) => resolve({ type: REC_NAMES[t], body: b.toString('utf8') }));
            link.onClose(() => resolve({ type: 'closed', body: '' }));
          });
          link.send(
            Rec.HELLO,
            jsonBody(
              {
                kind: 'sim',
                domain: 't45big',
                pageCount: bytes / PAGE,
                pageSize: PAGE,
                compressor: 'zstd',
                intervalMs: 50,
                heartbeatTimeoutMs: 1000,
                deviceStateMax: 65536,
                diskBytes: 0,
                diskBufferBytesMax: 2 ** 20,
                sessionId: `t45-${bytes}`,
              },
              PROTOCOL_VERSION,
            ),
          );
          const answer = await Promise.race([got, sleep(10000).then(() => ({ type: 'silence', body: '' }))]);
          link.close();
          if (bytes === FIVE_GIB) {
            assert.equal(answer.type, 'HELLO_ACK', `the backup answered ${answer.type}; its log: ${stderr}`);
            continue;
          }
          assert.equal(answer.type, 'ERROR', `the backup answered ${answer.type}; its log: ${stderr}`);
          const err = JSON.parse(answer.body.slice(answer.body.indexOf('{'))) as { code: string; message: string };
          assert.equal(err.code, ErrorCode.HANDSHAKE);
          assert.match(err.message, /^HELLO pageCount \d+ is not an integer in \[1, 16777216\]/); // the 64 GiB limit
          await sleep(200);
          assert.equal(child.exitCode, null, `the backup exited: ${stderr}`);
          assert.equal(child.signalCode, null, `the backup was killed: ${stderr}`);
        }
      } finally {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      }
      const end = await Promise.race([ended, sleep(15000).then(() => null)]);
      assert.ok(end, 'the backup did not stop on SIGTERM');
      assert.deepEqual(end, { code: 0, signal: null }, stderr);
    },
  );
});

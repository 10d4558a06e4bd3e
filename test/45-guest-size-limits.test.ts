// 45 guest size limits: a simulated guest's memory is one native arena seen through one
// ArrayBuffer, which Node.js 20 caps at 2^32 bytes. Every size either works or is refused
// with a typed error naming the limit (SIM_GUEST_BYTES_MAX): the arena's `buffer` past the
// cap (it used to abort the process with a double free), SimDomain.boot, SimReplica (a
// backup's HELLO), and the protect and backup commands. Sizes up to the limit work. The
// oversized cases run in child processes, so a regression to an abort fails a test instead
// of killing mocha. Mappings are lazy: nothing here touches more than a few pages, except
// protect at 4096M (a child, blackhole, idle guest, about a second).
import { strict as assert } from 'node:assert';
import { spawn, spawnSync } from 'node:child_process';
import { constants as bufferConstants } from 'node:buffer';
import * as path from 'node:path';
import { ErrorCode, RemusError } from '../dom0/errors';
import { loadAddon } from '../dom0/native';
import { SimDomain, type SimOutput } from '../dom0/hypervisor/sim/sim-domain';
import { SimReplica } from '../dom0/hypervisor/sim/sim-replica';
import {
  SIM_GUEST_BYTES_MAX, SIM_GUEST_PAGES_MAX, checkSimGuestBytes, simGuestBytesProblem,
} from '../dom0/hypervisor/sim/guest-size';
import { C_STATE, STOP } from '../dom0/hypervisor/sim/vcpu-control';
import type { Link } from '../dom0/engine/ports';
import { connectLink } from '../dom0/protocol/channel';
import { PROTOCOL_VERSION, REC_NAMES, Rec, jsonBody } from '../dom0/protocol/records';
import { ROOT, freePort, sleep, until } from './support/helpers';

const PAGE = 4096;
const LIMIT = 2 ** 32;
const OVER = LIMIT + PAGE; // the first size past the limit

/** What a child reports of one attempt: ok, or the error it threw. */
interface Outcome { bytes: number; ok?: boolean; name?: string; code?: string; message?: string; }

interface Exit { status: number | null; signal: string | null; stdout: string; stderr: string; }

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
  assert.match(message, /4294967296 bytes/, `the message names the limit: ${message}`);
  assert.match(message, /SIM_GUEST_BYTES_MAX/, message);
}

describe('45 guest size limits', () => {
  it('45.1 the limit is 2^32 bytes here, exported in bytes and pages, and agrees with the addon', () => {
    assert.equal(SIM_GUEST_BYTES_MAX, Math.min(LIMIT, bufferConstants.MAX_LENGTH));
    assert.equal(SIM_GUEST_BYTES_MAX, LIMIT, 'Node.js 20 on 64 bits: buffer.constants.MAX_LENGTH is 2^32');
    assert.equal(SIM_GUEST_PAGES_MAX, LIMIT / PAGE);
    assert.equal(loadAddon().arenaBufferBytesMax, SIM_GUEST_BYTES_MAX);
    assert.equal(simGuestBytesProblem(LIMIT), null);
    assert.equal(simGuestBytesProblem(LIMIT - PAGE), null);
    assertNamesLimit(simGuestBytesProblem(OVER) ?? '');
    assert.match(simGuestBytesProblem(LIMIT + 1) ?? '', /multiple of 4096/);
    assert.throws(() => checkSimGuestBytes(5 * 2 ** 30, 'sim:x', ErrorCode.HANDSHAKE), (e: unknown) =>
      e instanceof RemusError && e.code === ErrorCode.HANDSHAKE && /^sim:x: 5368709120 bytes \(5 GiB\)/.test(e.message),
    );
  });

  it('45.2 the arena buffer of a region past 2^32 bytes throws RemusError ERR_OUT_OF_MEMORY (no double free)', () => {
    // Before the fix: "free(): double free detected in tcache 2", SIGABRT, in Arena::Buffer.
    const r = runNode(`
      const { loadAddon } = require('../dom0/native');
      const out = [];
      for (const bytes of [${OVER}, 5 * 2 ** 30]) {
        const a = new (loadAddon().Arena)(bytes);
        for (let i = 0; i < 3; i++) {
          try { a.buffer; out.push({ bytes, ok: true }); }
          catch (e) { out.push({ bytes, name: e.constructor.name, code: e.code, message: e.message }); }
        }
        a.close();
      }
      console.log(JSON.stringify(out));`);
    assert.equal(r.signal, null, `the child was killed by ${r.signal}: ${r.stderr}`);
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as Outcome[];
    assert.equal(out.length, 6);
    for (const o of out) {
      assert.equal(o.ok, undefined, `a ${o.bytes}-byte buffer was created`);
      assert.equal(o.name, 'RemusError');
      assert.equal(o.code, ErrorCode.OUT_OF_MEMORY);
      const want = new RegExp(`^${o.bytes} bytes of guest memory cannot be one ArrayBuffer: .*4294967296 bytes`);
      assert.match(o.message ?? '', want);
    }
  });

  it('45.3 an arena of exactly 2^32 bytes gives a whole view: its first and last byte, its last page', () => {
    const a = new (loadAddon().Arena)(LIMIT);
    try {
      const mem = new Uint8Array(a.buffer);
      assert.equal(mem.length, LIMIT);
      assert.equal(a.pageCount, LIMIT / PAGE);
      mem[0] = 0x45; mem[LIMIT - 1] = 0x54;
      assert.equal(mem[LIMIT - 1], 0x54);
      const dst = new Uint8Array(2 * PAGE);
      a.copyPages(Uint32Array.of(LIMIT / PAGE - 1, 0), 2, dst);
      assert.equal(dst[PAGE - 1], 0x54);
      assert.equal(dst[PAGE], 0x45);
    } finally { a.close(); }
  });

  it('45.4 SimDomain.boot refuses a guest past the limit with ERR_BAD_ARGUMENT naming it', () => {
    const sizes = [OVER, 4100 * 2 ** 20, 64 * 2 ** 30];
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
    assert.deepEqual(out.map((o) => o.bytes), sizes);
    for (const o of out) {
      assert.equal(o.ok, undefined, `a ${o.bytes}-byte guest booted`);
      assert.equal(o.name, 'RemusError');
      assert.equal(o.code, ErrorCode.BAD_ARGUMENT);
      assert.match(o.message ?? '', new RegExp(`^sim:t45big: ${o.bytes} bytes`));
      assertNamesLimit(o.message ?? '');
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

  it('45.6 a guest and a replica of exactly 2^32 bytes work: the vCPU runs, suspends and stops', async () => {
    const outputs: SimOutput[] = [];
    const onOutput = (o: SimOutput): void => { outputs.push(o); };
    const d = SimDomain.boot(LIMIT, 'idle', 3, { name: 't45max', stepsPerSec: 500, onOutput });
    try {
      assert.equal(d.pageCount, LIMIT / PAGE);
      assert.equal(d.mem.length, LIMIT);
      await until(async () => outputs.length >= 5, 10000, 'outputs of the 4 GiB guest');
      d.suspend();
      const cap = d.capture(false);
      assert.ok(cap.count >= 1 && cap.count < 16, `a few dirty pages (page 0: the header), got ${cap.count}`);
      d.resume();
      assert.equal(d.workerError, null);
    } finally { await d.destroy(); }
    const r = new SimReplica('t45max', LIMIT / PAGE);
    assert.equal(r.image.length, LIMIT);
    (r as { close?: () => void }).close?.();
  });

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
    assert.throws(() => d.suspend(), (e: unknown) => e instanceof RemusError && e.code === ErrorCode.VCPU);
  });

  it('45.8 protect: sizes past the limit exit 2 with ERR_BAD_ARGUMENT naming it; 4096M runs and stops', function () {
    this.timeout(120000);
    const name = `t45p${process.pid}`;
    for (const size of [String(OVER), '4100M', '5G']) {
      const r = runRemusdb(['protect', `sim:${name}`, '--blackhole', '--memory', size, '--disk', '0',
        '--seconds', '1']);
      assert.equal(r.signal, null, `protect --memory ${size} was killed by ${r.signal}: ${r.stderr}`);
      assert.equal(r.status, 2, `protect --memory ${size}: ${r.stderr}`);
      assert.match(r.stderr, /\[ERR_BAD_ARGUMENT\]/);
      assertNamesLimit(r.stderr);
    }
    const ok = runRemusdb(['protect', `sim:${name}`, '--blackhole', '--memory', '4096M', '--workload', 'idle',
      '--disk', '0', '--seconds', '1']);
    assert.equal(ok.signal, null, `protect --memory 4096M was killed by ${ok.signal}: ${ok.stderr}`);
    assert.equal(ok.status, 0, ok.stderr);
    assert.doesNotMatch(ok.stderr, /\[ERR_/);
  });

  it('45.9 backup: a HELLO past the limit is answered with ERR_HANDSHAKE and the backup runs on', async function () {
    this.timeout(60000);
    const port = await freePort();
    const args = [path.join(ROOT, 'bin', 'remusdb'), 'backup', '--listen', `127.0.0.1:${port}`, '--insecure'];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
    const ended = new Promise<{ code: number | null; signal: string | null }>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
    });
    try {
      await until(async () => /backup listening/.test(stderr), 15000, 'the backup to listen');
      for (const bytes of [OVER, 5 * 2 ** 30]) {
        const link: Link = await connectLink('127.0.0.1', port, { insecure: true });
        const got = new Promise<{ type: string; body: string }>((resolve) => {
          link.onRecord((t: number, b: Buffer) => resolve({ type: REC_NAMES[t], body: b.toString('utf8') }));
          link.onClose(() => resolve({ type: 'closed', body: '' }));
        });
        link.send(Rec.HELLO, jsonBody({
          kind: 'sim', domain: 't45big', pageCount: bytes / PAGE, pageSize: PAGE, compressor: 'zstd',
          intervalMs: 50, heartbeatTimeoutMs: 1000, deviceStateMax: 65536, diskBytes: 0, diskBufferBytesMax: 2 ** 20,
          sessionId: `t45-${bytes}`,
        }, PROTOCOL_VERSION));
        const answer = await Promise.race([got, sleep(10000).then(() => ({ type: 'silence', body: '' }))]);
        link.close();
        assert.equal(answer.type, 'ERROR', `the backup answered ${answer.type}; its log: ${stderr}`);
        const err = JSON.parse(answer.body.slice(answer.body.indexOf('{'))) as { code: string; message: string };
        assert.equal(err.code, ErrorCode.HANDSHAKE);
        assertNamesLimit(err.message);
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
  });
});

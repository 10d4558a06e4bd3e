// 43 simulated domain: the real adapter — guest memory in a native arena, the vCPU in a
// worker thread, the kernel's dirty tracking. Suspend really stops the guest; every page
// whose content changed since the last capture is in the dirty set; outputs are in order.
import { strict as assert } from 'node:assert';
import { PerformanceObserver } from 'node:perf_hooks';
import { SimDomain, type SimOutput } from '../dom0/hypervisor/sim/sim-domain';
import { GuestProgram } from '../dom0/hypervisor/sim/guest-program';
import { loadAddon } from '../dom0/native';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { synthTrace } from '../dom0/trace/synth';
import { TraceReader } from '../dom0/trace/rdtrace';
import { replayGuest } from '../dom0/hypervisor/sim/guest-program';
import { GuestMemory } from '../dom0/memory/guest-memory';
import { flat, until } from './support/helpers';
import { capturedPages } from '../dom0/engine/captured-pages';

const PAGE = 4096;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** An arena of `pages` pages, its dirty tracking armed; out: a collect's list. */
function armedArena(pages: number) {
  const arena = new (loadAddon().Arena)(pages * PAGE);
  arena.startDirtyTracking();
  const out = new Uint32Array(pages);
  arena.collectDirty(out);
  return { arena, out, mem: new Uint8Array(arena.buffer) };
}

describe('43 simulated domain', () => {
  let d: SimDomain;
  const outputs: SimOutput[] = [];
  before(() => {
    d = SimDomain.boot(16 * 2 ** 20, 'oltp', 9, { name: 't43', stepsPerSec: 20000, onOutput: (o) => outputs.push(o) });
  });
  after(async () => {
    await d.destroy();
    await d.destroy();
  });

  it('43.1 uses the kernel dirty tracking here (uffd-wp), or says why not', () => {
    assert.ok(['uffd-wp', 'hash'].includes(d.dirtyMode));
    if (loadAddon().dirtyProbe().ok) assert.equal(d.dirtyMode, 'uffd-wp');
    else assert.ok(d.dirtyReason.length > 0);
  });

  it('43.1b collectDirty walks a pfn range on request; a range outside the arena is refused', () => {
    const { arena, out, mem } = armedArena(64);
    try {
      for (const p of [3, 20, 40]) mem[p * 4096] = 1;
      assert.equal(arena.collectDirty(out, 10, 30), 1, 'only the write inside [10, 30)');
      assert.equal(out[0], 20);
      assert.deepEqual(Array.from(out.subarray(0, arena.collectDirty(out))), [3, 40], 'the others are still marked');
      for (const [f, e] of [
        [-1, 10],
        [10, 5],
        [0, 65],
        [1.5, 10],
      ])
        assert.throws(() => arena.collectDirty(out, f, e), RangeError, `[${f}, ${e})`);
      assert.throws(() => (arena.collectDirty as (...a: unknown[]) => number)(out, 0), TypeError, 'two of three');
    } finally {
      arena.close();
    }
  });

  it('43.1c a deferred collect re-arms later: a write before the re-arm is reported if it changed the page', () => {
    const { arena, out, mem } = armedArena(64);
    try {
      const list = (n: number): number[] => Array.from(out.subarray(0, n));
      for (const p of [3, 4, 20, 40]) mem[p * 4096] = 1;
      assert.deepEqual(list(arena.collectDirtyDeferred(out)), [3, 4, 20, 40]);
      assert.deepEqual(list(arena.collectDirtyDeferred(out)), [3, 4, 20, 40], 'left writable: reported again');
      // What the checkpoint captured of them; then, "after the resume", writes before the re-arm.
      const pfns = new Uint32Array([3, 4, 20, 40]);
      const pages = new Uint8Array(4 * 4096);
      arena.copyPages(pfns, 4, pages);
      mem[3 * 4096 + 7] = 9; // changed: the backup lacks it
      mem[20 * 4096] = 1; // written, bytes as captured
      mem[50 * 4096] = 2; // not in the capture, written before the re-arm: marked by the kernel
      assert.equal(arena.rearmDeferred(pfns, 4, pages), 4);
      mem[40 * 4096 + 1] = 5; // after the re-arm: marked by the kernel
      assert.deepEqual(list(arena.collectDirty(out)), [3, 40, 50]);
      assert.equal(arena.collectDirty(out), 0, 'all armed again');
      for (const p of [5, 6]) mem[p * 4096] = 1;
      assert.equal(arena.collectDirtyDeferred(out), 2);
      assert.equal(arena.rearmDeferred(), 2, 'no capture given');
      assert.deepEqual(list(arena.collectDirty(out)), [5, 6], 'without a capture every re-armed page is reported');
      mem[7 * 4096] = 1;
      assert.equal(arena.collectDirtyDeferred(out), 1);
      assert.equal(arena.collectDirty(out, 0, 8), 1, 'a re-arming collect over it reports it again');
      assert.equal(arena.rearmDeferred(), 0, 'and leaves nothing to re-arm');
      assert.throws(() => arena.collectDirtyDeferred(out, 10, 5), RangeError, 'a range backwards');
      const deferred = arena.collectDirtyDeferred as (...a: unknown[]) => number;
      assert.throws(() => deferred(out, 0), TypeError, 'two of three');
      assert.throws(() => deferred(new Uint8Array(64)), TypeError, 'not a Uint32Array');
      assert.throws(() => arena.rearmDeferred(new Uint32Array([4, 3]), 2, new Uint8Array(8192)), RangeError);
      assert.throws(() => arena.rearmDeferred(pfns, 5, pages), RangeError);
      const rearm = arena.rearmDeferred as (...a: unknown[]) => number;
      assert.throws(() => rearm(pfns, 4), TypeError, 'a capture without its pages');
    } finally {
      arena.close();
    }
  });

  it("43.1d an arena's views are not V8's memory to collect; close() gives the memory back at once", async () => {
    // Views of 16 GiB (never touched: nothing resident) made V8 run ~8 full collections for
    // "external memory pressure" (a quarter of a second on a loop); now none is due to them.
    const majors: number[] = [];
    const obs = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) if ((e as { detail?: { kind?: number } }).detail?.kind === 4) majors.push(1);
    });
    obs.observe({ entryTypes: ['gc'] });
    const big = new (loadAddon().Arena)(16 * 2 ** 30);
    try {
      assert.equal(GuestMemory.ofArena(big).pageCount, big.pageCount);
      await new Promise((r) => setTimeout(r, 50)); // gc entries arrive asynchronously
      assert.ok(majors.length <= 1, `${majors.length} full collections while views of 16 GiB were made`);
    } finally {
      obs.disconnect();
      big.close();
    }
    const arena = new (loadAddon().Arena)(64 * 2 ** 20);
    const mem = new Uint8Array(arena.buffer);
    mem.fill(7);
    const rss = process.memoryUsage().rss;
    arena.close();
    const freed = rss - process.memoryUsage().rss;
    assert.ok(freed >= 48 * 2 ** 20, `close() freed ${freed} bytes of 64 MiB while a view lives`);
    assert.equal(mem[12345], 0, 'a view that outlives close() reads zeros');
  });

  it('43.2 a suspended guest does not change its memory', async () => {
    await sleep(50);
    await d.suspend();
    const a = d.mem.crc32c();
    await sleep(60);
    assert.equal(d.mem.crc32c(), a);
    d.resume();
    await sleep(30);
    await d.suspend();
    assert.notEqual(d.mem.crc32c(), a, 'it runs again after resume');
    d.resume();
  });

  it('43.3 every changed page is in the dirty set, epoch after epoch', async () => {
    await d.suspend();
    d.capture(true);
    let shadow = flat(d.mem);
    d.resume();
    for (let epoch = 0; epoch < 8; epoch++) {
      await sleep(20);
      await d.suspend();
      const cap = d.capture(false);
      const dirty = new Set(cap.pfns.subarray(0, cap.count));
      let changed = 0;
      for (let p = 0; p < d.pageCount; p++) {
        const o = p * PAGE;
        if (Buffer.compare(d.mem.page(p), shadow.subarray(o, o + PAGE)) !== 0) {
          changed++;
          assert.ok(dirty.has(p), `page ${p} changed but was not reported dirty (epoch ${epoch})`);
        }
      }
      assert.ok(changed > 0, 'the guest did write');
      assert.ok(cap.count <= changed * 2 + 8, `dirty set stays close to the changed set (${cap.count} vs ${changed})`);
      for (let i = 0; i < cap.count; i++) {
        const p = cap.pfns[i];
        assert.ok(
          Buffer.from(capturedPages(cap, i, 1)).equals(Buffer.from(d.mem.page(p))),
          'captured copy equals memory',
        );
      }
      shadow = flat(d.mem);
      d.resume();
    }
  });

  it('43.4 outputs arrive in order without gaps, and memory holds the last sequence number', async () => {
    await sleep(30);
    await d.suspend();
    const seqs = outputs.map((o) => o.seq);
    assert.ok(seqs.length > 100);
    for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1] + 1);
    assert.equal(GuestProgram.attach(flat(d.mem)).header.seq, seqs[seqs.length - 1]);
    d.resume();
  });

  it('43.5 fence() stops the guest for good', async () => {
    d.fence();
    await sleep(20); // a vCPU that had no core within the brief wait stops when it runs
    const a = d.mem.crc32c();
    d.resume();
    await sleep(40);
    assert.equal(d.mem.crc32c(), a);
  });

  it('43.6 a suspend that must wait does so off the event loop; a fenced guest stays stopped', async () => {
    const slow = SimDomain.boot(16 * 2 ** 20, 'oltp', 10, {
      name: 't43slow',
      stepsPerSec: 20000,
      suspendSyncWaitMs: 0,
      suspendTimeoutMs: 1000,
    });
    try {
      const booted = slow.mem.crc32c();
      await until(async () => slow.mem.crc32c() !== booted, 10000, 'the vCPU thread running');
      // With no time to wait on the event loop, suspend() returns a promise — unless the vCPU had
      // stopped already at the first look (it checks between steps): then try again.
      let pending = slow.suspend();
      for (let i = 0; i < 20 && !(pending instanceof Promise); i++) {
        slow.resume();
        await sleep(5);
        pending = slow.suspend();
      }
      assert.ok(pending instanceof Promise, 'suspend() waited off the event loop');
      let ticks = 0;
      const timer = setInterval(() => ticks++, 0);
      await pending;
      await sleep(5);
      clearInterval(timer);
      assert.ok(ticks > 0, 'timers ran while the suspend waited');
      const a = slow.mem.crc32c();
      await sleep(40);
      assert.equal(slow.mem.crc32c(), a, 'stopped once the promise resolved');
      slow.resume();
      await sleep(20);
      slow.fence();
      await sleep(20);
      const b = slow.mem.crc32c();
      await sleep(40);
      assert.equal(slow.mem.crc32c(), b, 'the fenced guest stays stopped');
    } finally {
      await slow.destroy();
    }
  });
});

describe('43b trace workload', () => {
  it('43b.1 replays a trace epoch by epoch, resumes at the same record, and replays exactly', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'remusdb-tw-'));
    const file = path.join(dir, 't.rdt');
    synthTrace({ out: file, pages: 512, epochs: 30, seed: 8 });
    const mem = new Uint8Array(513 * PAGE);
    const g = GuestProgram.boot(mem, 'trace', 1, file);
    for (let i = 0; i < 12; i++) g.step(() => {});
    const resumed = GuestProgram.attach(mem); // as a backup would, from memory alone
    for (let i = 0; i < 30; i++) resumed.step(() => {});
    const truth = new Uint8Array(512 * PAGE);
    for await (const r of (await TraceReader.open(file)).records()) if (r.type === 1) truth.set(r.data, r.pfn * PAGE);
    assert.ok(Buffer.from(mem.subarray(PAGE)).equals(Buffer.from(truth)), 'memory = the trace after its last epoch');
    assert.ok(replayGuest(513, 'trace', 1, 42, file).equals(GuestMemory.over(mem)));
    fs.writeFileSync(path.join(dir, 'z.rdt'), Buffer.from([0x1f, 0x8b, 0, 0]));
    assert.throws(() => GuestProgram.boot(new Uint8Array(513 * PAGE), 'trace', 1, path.join(dir, 'z.rdt')), /gzip/);
    assert.throws(() => GuestProgram.boot(new Uint8Array(200 * PAGE), 'trace', 1, file), /needs 513 pages/);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

// 49 record: `remusdb record` off Xen — the command's argument checks and its no-Xen error,
// and the recording loop (dom0/hypervisor/xen/xen-record.ts) against a fake Xen whose guest
// writes pages between and during bitmap reads: the trace is valid RDTRACE1 that bench trace
// verifies, its image equals the guest's memory for every page not written since the last
// read, log-dirty is switched off on every path, and the bounds stop it cleanly.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { benchTrace } from '../dom0/bench/trace-bench';
import { ErrorCode, RemusError } from '../dom0/errors';
import type { XenDomainInfo, XenLogdirtyAddon } from '../dom0/hypervisor/xen/xen-addon';
import { bitmapPfns, epochBytes, recordDomain, type RecordOptions } from '../dom0/hypervisor/xen/xen-record';
import { HEADER_SIZE, REC_EPOCH_END, REC_PAGE, TraceReader } from '../dom0/trace/rdtrace';
import { loadAddon } from '../dom0/native';
import { Prng } from '../dom0/util/prng';
import { runCli, tmpDir } from './support/helpers';
import { HostLock } from '../dom0/service/host-lock';

const PAGE = 4096;

/** A guest of `pages` pages whose "vCPU" writes a few pages at each bitmap read and map. */
class FakeXen implements XenLogdirtyAddon {
  readonly mem: Buffer;
  readonly dirty: Uint8Array;
  logdirty = false;
  disables = 0;
  releases = 0;
  peeks = 0;
  enableErrno = 0;
  failPeekAt = -1;
  private readonly prng: Prng;
  constructor(
    readonly pages: number,
    readonly holes: Set<number> = new Set(),
    seed = 7,
  ) {
    this.mem = Buffer.alloc(pages * PAGE);
    this.dirty = new Uint8Array(pages);
    this.prng = new Prng(seed);
    for (let p = 0; p < pages; p++) this.mem.writeUInt32LE((p * 2654435761) >>> 0, p * PAGE);
  }
  private write(n: number): void {
    for (let i = 0; i < n; i++) {
      const p = this.prng.u32() % this.pages;
      if (this.holes.has(p)) continue;
      this.mem.writeUInt32LE(this.prng.u32(), p * PAGE + (this.prng.u32() % (PAGE / 4)) * 4);
      if (this.logdirty) this.dirty[p] = 1;
    }
  }
  xenDomainInfo(d: string | number): XenDomainInfo {
    if (d !== 'vm' && d !== 5) throw new RemusError(ErrorCode.NO_DOMAIN, `no domain ${d}`);
    return {
      domid: 5,
      dying: false,
      shutdown: false,
      shutdownReason: 0,
      paused: false,
      hvm: false,
      maxMemKb: this.pages * 4,
      pages: this.pages,
      vcpus: 1,
      maxGpfn: this.pages - 1,
    };
  }
  xenLogdirtyEnable(): void {
    const errno = this.enableErrno || (this.logdirty ? 22 : 0);
    if (errno)
      throw new RemusError(ErrorCode.XEN, `xc_logdirty_control failed: (errno ${errno})`, {
        errno,
        fn: 'xc_logdirty_control',
      });
    this.logdirty = true;
  }
  xenLogdirtyDisable(): void {
    this.logdirty = false;
    this.disables++;
  }
  xenLogdirtyPeekClean(domid: number, bitmap: Buffer, clean = true): number {
    assert.equal(domid, 5);
    if (clean) {
      assert.ok(this.logdirty, 'clean with log-dirty on');
      if (this.peeks++ === this.failPeekAt) throw new RemusError(ErrorCode.XEN, 'domain destroyed', { errno: 3 });
      this.write(5);
    }
    bitmap.fill(0);
    let n = 0;
    for (let p = 0; p < this.pages; p++) {
      if (this.dirty[p]) {
        bitmap[p >> 3] |= 1 << (p & 7);
        n++;
      }
    }
    if (clean) this.dirty.fill(0);
    return n;
  }
  xenMapRead(domid: number, pfns: Uint32Array | BigUint64Array, out: Buffer, errs: Int32Array): number {
    assert.equal(domid, 5);
    let read = 0;
    pfns.forEach((pfn: number | bigint, i: number) => {
      const p = Number(pfn);
      if (this.holes.has(p)) {
        errs[i] = 2;
        out.fill(0, i * PAGE, (i + 1) * PAGE);
        return;
      }
      errs[i] = 0;
      this.mem.copy(out, i * PAGE, p * PAGE, (p + 1) * PAGE);
      read++;
    });
    this.write(2); // the guest runs while we copy: these land in the next epoch
    return read;
  }
  xenMapRelease(): void {
    this.releases++;
  }
}

async function traceImage(file: string): Promise<{ image: Buffer; epochs: number; pages: number[] }> {
  const r = await TraceReader.open(file);
  const image = Buffer.alloc(r.header.totalPages * PAGE);
  const pages: number[] = [];
  let n = 0;
  for await (const rec of r.records()) {
    if (rec.type === REC_PAGE) {
      image.set(rec.data, rec.pfn * PAGE);
      n++;
    }
    if (rec.type === REC_EPOCH_END) {
      pages.push(n);
      n = 0;
    }
  }
  return { image, epochs: pages.length, pages };
}

describe('49 record', () => {
  const dir = tmpDir('record');
  after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const opts = (xen: FakeXen, out: string, extra: Partial<RecordOptions> = {}): RecordOptions => ({
    domain: 'vm',
    out: path.join(dir, out),
    intervalMs: 10,
    seconds: 0.3,
    bytesMax: 2 ** 30,
    addon: xen,
    ...extra,
  });

  it('49.1 off Xen: ERR_NO_XEN (exit 1) saying what record needs and what to use instead', function () {
    if (fs.existsSync('/dev/xen/privcmd')) this.skip();
    const r = runCli(['record', 'db1', '--out', path.join(dir, 'x.rdt')]);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /no Xen \(\/dev\/xen\/privcmd is absent\).*trace synth.*\[ERR_NO_XEN\]/);
    assert.ok(!fs.existsSync(path.join(dir, 'x.rdt')), 'no trace file is created');
  });

  it('49.2 bad arguments exit 2 naming the option; a simulated domain is refused', () => {
    const out = path.join(dir, 'y.rdt');
    const cases: Array<[string[], RegExp]> = [
      [['record', 'db1', '--out', out, '--interval', '5'], /--interval "5": expected an integer from 10/],
      [['record', 'db1', '--out', out, '--seconds', '0'], /--seconds "0"/],
      [['record', 'db1', '--out', out, '--max-bytes', '12 bytes'], /--max-bytes "12 bytes": expected a size/],
      [['record', 'db1'], /required option '--out <file>'/],
      [['record', 'sim:db', '--out', out], /record traces Xen domains.*trace synth.*\[ERR_BAD_ARGUMENT\]/],
    ];
    for (const [args, re] of cases) {
      const r = runCli(args);
      assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, re);
    }
  });

  it('49.3 bitmapPfns lists set bits in order and ignores bits past the guest', () => {
    const bm = Buffer.alloc(16);
    for (const p of [0, 7, 8, 63, 64, 99, 127]) bm[p >> 3] |= 1 << (p & 7);
    const out = new Uint32Array(128);
    const n = bitmapPfns(bm, 100, out);
    assert.deepEqual([...out.subarray(0, n)], [0, 7, 8, 63, 64, 99]);
  });

  it(
    '49.4 records a trace that bench trace verifies; ' + 'its image is the guest for every page not written since',
    async () => {
      const xen = new FakeXen(256, new Set([3, 200]));
      const r = await recordDomain(opts(xen, 'a.rdt'));
      assert.equal(xen.logdirty, false, 'log-dirty switched off');
      assert.equal(xen.disables, 1);
      assert.equal(xen.releases, 1);
      assert.equal(r.stoppedBy, 'time');
      assert.equal(r.firstEpochPages, 254, 'every readable page in epoch 0');
      assert.ok(r.pagesUnreadable >= 2);
      assert.ok(r.epochs >= 3, `epochs ${r.epochs}`);
      const t = await traceImage(path.join(dir, 'a.rdt'));
      assert.equal(t.epochs, r.epochs);
      assert.equal(t.pages[0], 254);
      assert.equal(
        t.pages.reduce((a, b) => a + b, 0),
        r.pages,
      );
      assert.equal(r.traceBytes, HEADER_SIZE + t.pages.reduce((a, n) => a + epochBytes(n), 0));
      assert.equal(r.fileBytes, r.traceBytes);
      let checked = 0;
      for (let p = 0; p < 256; p++) {
        if (xen.dirty[p] || xen.holes.has(p)) continue; // written after the last read
        assert.ok(
          t.image.subarray(p * PAGE, (p + 1) * PAGE).equals(xen.mem.subarray(p * PAGE, (p + 1) * PAGE)),
          `page ${p}`,
        );
        checked++;
      }
      assert.ok(checked > 200);
      const b = await benchTrace(path.join(dir, 'a.rdt'), { cache: '10%', compressor: 'zstd' });
      assert.equal(b.verified, true);
      assert.equal(b.epochs, r.epochs);
    },
  );

  it('49.5 log-dirty already on: refused with "already on", and not switched off under the other user', async () => {
    const xen = new FakeXen(64);
    xen.logdirty = true;
    await assert.rejects(
      recordDomain(opts(xen, 'b.rdt')),
      (e: RemusError) => e.code === ErrorCode.XEN && /already on.*another tool/.test(e.message),
    );
    assert.equal(xen.logdirty, true);
    assert.equal(xen.disables, 0);
    xen.dirty[9] = 1; // the other user's pending bits: refused before asking Xen to enable
    await assert.rejects(
      recordDomain(opts(xen, 'b.rdt')),
      (e: RemusError) => /already on.*1 dirty pages are pending/.test(e.message) && e.details.pending === 1,
    );
    assert.equal(xen.dirty[9], 1, "the other user's bitmap is left as it was");
    assert.equal(xen.disables, 0);
    const noShadow = new FakeXen(64);
    noShadow.enableErrno = 95;
    await assert.rejects(recordDomain(opts(noShadow, 'c.rdt')), /cannot track its dirty pages.*shadow paging/);
  });

  it('49.5b a second recorder of the same domain is refused by its host lock, whatever the bitmap shows', async () => {
    const lockFile = path.join(dir, 'protect-xen-vm.lock');
    const names: string[] = [];
    const lockDomain = (name: string): HostLock => {
      names.push(name);
      return HostLock.acquire(lockFile, `dirty tracking of ${name} (remusdb record or protect)`);
    };
    const xen = Object.assign(new FakeXen(64), { xenDomainConfigJson: () => '{"c_info":{"name":"vm"}}' });
    const first = recordDomain(opts(xen, 'l1.rdt', { lockDomain, seconds: 0.5 }));
    await new Promise((r) => setTimeout(r, 100)); // the first is in its epochs: it just cleared the bitmap
    fs.writeFileSync(lockFile, '1\n'); // as if another live process held it (init is alive: not stale)
    await assert.rejects(
      recordDomain(opts(xen, 'l2.rdt', { lockDomain })),
      (e: RemusError) => e.code === ErrorCode.LOCKED && /dirty tracking of vm .*held by process 1/.test(e.message),
    );
    assert.equal(xen.logdirty, true, 'the first recorder kept log-dirty on');
    fs.writeFileSync(lockFile, `${process.pid}\n`);
    const r = await first;
    assert.equal(r.stoppedBy, 'time');
    assert.deepEqual(names, ['vm', 'vm'], 'locked by the name libxl knows');
    assert.ok(!fs.existsSync(lockFile), 'released at the end');
  });

  it('49.6 an error mid-recording (the domain gone, a full disk): typed, log-dirty off, the trace readable up to it', async () => {
    const xen = new FakeXen(128);
    xen.failPeekAt = 4;
    await assert.rejects(recordDomain(opts(xen, 'd.rdt', { seconds: 5 })), /domain destroyed/);
    assert.equal(xen.logdirty, false);
    assert.equal(xen.releases, 1);
    const t = await traceImage(path.join(dir, 'd.rdt'));
    assert.equal(t.epochs, 4, 'epoch 0 and three incremental ones');
    // A full disk (the lab's dom0 /tmp filled up once): a typed error naming the trace, log-dirty off.
    const full = new FakeXen(512);
    await assert.rejects(
      recordDomain({ ...opts(full, 'x'), out: '/dev/full', seconds: 5 }),
      (e: RemusError) =>
        e.code === ErrorCode.IO && e.details.code === 'ENOSPC' && /cannot write the trace \/dev\/full/.test(e.message),
    );
    assert.equal(full.logdirty, false);
    assert.equal(full.releases, 1);
  });

  it(
    '49.7 bounds: --max-bytes stops before the epoch that would pass it; ' + 'too small for epoch 0 is refused first',
    async () => {
      const xen = new FakeXen(128);
      const bytesMax = HEADER_SIZE + epochBytes(128) + 2 * epochBytes(8);
      const r = await recordDomain(opts(xen, 'e.rdt', { bytesMax, seconds: 5 }));
      assert.equal(r.stoppedBy, 'bytes');
      assert.ok(r.traceBytes <= bytesMax && fs.statSync(path.join(dir, 'e.rdt')).size === r.traceBytes);
      assert.equal(xen.logdirty, false);
      const small = new FakeXen(128);
      await assert.rejects(recordDomain(opts(small, 'f.rdt', { bytesMax: 4096 })), /cannot hold the first epoch/);
      assert.equal(small.logdirty, false, 'never switched on');
    },
  );

  it(
    '49.8 the native bindings off Xen: ERR_XEN with the failing function and errno; bad arguments are ' +
      'programmer errors',
    function () {
      const addon = loadAddon() as unknown as Partial<XenLogdirtyAddon> & { parts: { xen: boolean } };
      if (!addon.parts.xen || fs.existsSync('/dev/xen/privcmd')) this.skip();
      const a = addon as XenLogdirtyAddon;
      assert.throws(
        () => a.xenLogdirtyEnable(5),
        (e: RemusError) =>
          e.code === ErrorCode.XEN &&
          e.details.fn === 'xc_interface_open' &&
          typeof e.details.errno === 'number' &&
          /errno \d+/.test(e.message),
      );
      assert.throws(
        () => a.xenLogdirtyPeekClean(5, Buffer.alloc(16)),
        (e: RemusError) => e.code === ErrorCode.XEN,
      );
      assert.throws(() => a.xenLogdirtyEnable(0), TypeError);
      assert.throws(() => a.xenLogdirtyPeekClean(5, Buffer.alloc(12)), RangeError);
      assert.throws(() => a.xenLogdirtyPeekClean(5, Buffer.alloc(16), 1 as unknown as boolean), TypeError);
      assert.throws(
        () => a.xenMapRead(5, new Uint32Array(1025), Buffer.alloc(1025 * PAGE), new Int32Array(1025)),
        RangeError,
      );
      assert.throws(() => a.xenMapRead(5, new Uint32Array(2), Buffer.alloc(PAGE), new Int32Array(2)), RangeError);
      assert.throws(
        () => a.xenMapRead(5, new Uint16Array(2) as unknown as Uint32Array, Buffer.alloc(2 * PAGE), new Int32Array(2)),
        TypeError,
      );
      a.xenMapRelease();
    },
  );

  it('49.9 an abort (SIGINT in the CLI) ends the recording cleanly', async () => {
    const xen = new FakeXen(64);
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 60);
    const r = await recordDomain(opts(xen, 'g.rdt', { seconds: 60, signal: ac.signal }));
    assert.equal(r.stoppedBy, 'signal');
    assert.equal(xen.logdirty, false);
    assert.equal((await traceImage(path.join(dir, 'g.rdt'))).epochs, r.epochs);
  });
});

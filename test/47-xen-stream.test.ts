// 47 xen stream: libxc migration stream v2 reading (headers, records, padding, PAGE_DATA),
// checkpoint capture + skeleton on the primary and byte-exact rebuild on the backup (with a
// recorded real stream from the lab when present), the replica feeding a receiver, and the
// Xen domain's callback state machine against a scripted save loop.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { ErrorCode, RemusError } from '../dom0/errors';
import { loadAddon } from '../dom0/native';
import {
  IMAGE_HEADER_BYTES,
  DOMAIN_HEADER_BYTES,
  REC,
  RecordSplitter,
  parsePageData,
  type RawRecord,
} from '../dom0/hypervisor/xen/libxc-stream';
import {
  CheckpointCollector,
  rebuildCheckpoint,
  type CollectedCheckpoint,
} from '../dom0/hypervisor/xen/xen-checkpoint';
import { XenReplica } from '../dom0/hypervisor/xen/xen-replica';
import { XenDomain } from '../dom0/hypervisor/xen/xen-domain';
import type { XenAddon, XenDomainInfo } from '../dom0/hypervisor/xen/xen-addon';
import { RECEIVER_BANNER } from '../dom0/hypervisor/xen/xl-stream';
import { xenRecord as record } from './support/xen-records';
import { PAGE_BYTES } from '../dom0/limits';
import { capturedPages } from '../dom0/engine/captured-pages';

// ---- a synthetic libxc stream ------------------------------------------------------------

function headers(): Buffer {
  const b = Buffer.alloc(IMAGE_HEADER_BYTES + DOMAIN_HEADER_BYTES);
  b.writeBigUInt64BE(0xffffffffffffffffn, 0);
  b.writeUInt32BE(0x58454e46, 8);
  b.writeUInt32BE(3, 12);
  b.writeUInt32LE(1, 24); // x86 PV
  b.writeUInt16LE(12, 28); // page shift
  b.writeUInt32LE(4, 32);
  b.writeUInt32LE(17, 36);
  return b;
}

const XTAB = 0xf,
  L1TAB = 0x1;
/** A page whose content says which pfn and round it is. */
function page(pfn: number, round: number): Buffer {
  const p = Buffer.alloc(PAGE_BYTES, (pfn * 7 + round) & 0xff);
  p.writeUInt32LE(pfn % 2 ** 32, 0);
  p.writeUInt32LE(round, 4);
  return p;
}

function pageData(entries: Array<{ pfn: number; type?: number; round?: number }>): Buffer {
  const words = Buffer.alloc(8 + 8 * entries.length);
  words.writeUInt32LE(entries.length, 0);
  const pages: Buffer[] = [];
  entries.forEach((e, i) => {
    words.writeUInt32LE(e.pfn >>> 0, 8 + 8 * i);
    words.writeUInt32LE((((e.type ?? 0) << 28) | Math.floor(e.pfn / 2 ** 32)) >>> 0, 12 + 8 * i);
    if ((e.type ?? 0) !== XTAB) pages.push(page(e.pfn, e.round ?? 0));
  });
  return record(REC.PAGE_DATA, Buffer.concat([words, ...pages]));
}

const checkpointRec = (): Buffer => record(REC.CHECKPOINT, Buffer.alloc(0));

/** Feeds bytes in pieces of random sizes (seeded) and collects what the splitter yields. */
function split(
  bytes: Buffer,
  pieceMax: number,
  seed = 1,
  expectHeaders = true,
): { headers: Buffer[]; recs: RawRecord[] } {
  const out = { headers: [] as Buffer[], recs: [] as RawRecord[] };
  const s = new RecordSplitter(
    (h) => out.headers.push(Buffer.from(h)),
    (r) => out.recs.push({ ...r, bytes: Buffer.from(r.bytes) }),
    expectHeaders,
  );
  let x = seed;
  for (let at = 0; at < bytes.length; ) {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    const n = 1 + (x % pieceMax);
    s.push(bytes.subarray(at, at + n));
    at += n;
  }
  s.end();
  return out;
}

const PAGES = 64;
/** The scripted save writes to a pipe from the test's own thread: stay below its 64 KiB. */
const DPAGES = 8;

function twoCheckpoints(): { first: Buffer[]; second: Buffer[] } {
  const first = [
    record(REC.X86_PV_INFO, Buffer.from([8, 4, 0, 0, 0, 0, 0, 0])),
    record(0x80000123, Buffer.from('opaque optional record, 29 oc')), // unknown: kept as is, padded
    pageData([{ pfn: 0 }, { pfn: 1, type: L1TAB }, { pfn: 2, type: XTAB }, { pfn: 3 }]),
    pageData([{ pfn: 40 }, { pfn: 63 }]),
    record(REC.SHARED_INFO, page(999, 9)),
    checkpointRec(),
  ];
  const second = [
    pageData([
      { pfn: 3, round: 1 },
      { pfn: 40, round: 1 },
    ]),
    record(REC.SHARED_INFO, page(999, 10)),
    checkpointRec(),
  ];
  return { first, second };
}

function collect(c: CheckpointCollector, recs: RawRecord[]): CollectedCheckpoint[] {
  const done: CollectedCheckpoint[] = [];
  for (const r of recs) {
    const d = c.add(r);
    if (d) done.push(d);
  }
  return done;
}

/** What the backup does at commit: the capture's pages into the image, then the rebuild. */
function commit(image: Uint8Array, ck: CollectedCheckpoint): ReturnType<typeof rebuildCheckpoint> {
  const { pfns, count } = ck.capture;
  for (let i = 0; i < count; i++) image.set(capturedPages(ck.capture, i, 1), pfns[i] * PAGE_BYTES);
  return rebuildCheckpoint(ck.capture.deviceState, image);
}

describe('47 xen stream', () => {
  it('47.1 cuts a stream into headers and padded records, whatever the chunking', () => {
    const { first } = twoCheckpoints();
    const bytes = Buffer.concat([headers(), ...first]);
    for (const pieceMax of [1, 7, 4096, 1 << 20]) {
      const got = split(bytes, pieceMax, pieceMax);
      assert.equal(got.headers.length, 1);
      assert.deepEqual(
        got.recs.map((r) => r.type),
        [REC.X86_PV_INFO, 0x80000123, REC.PAGE_DATA, REC.PAGE_DATA, REC.SHARED_INFO, REC.CHECKPOINT],
      );
      assert.equal(got.recs[1].bodyLength, 29);
      assert.equal(got.recs[1].bytes.length, 8 + 32, 'body padded to 8 octets');
      assert.deepEqual(Buffer.concat([got.headers[0], ...got.recs.map((r) => r.bytes)]), bytes);
    }
  });

  it('47.2 rejects malformed input with a RemusError that says what is wrong', () => {
    const bad = headers();
    bad.writeUInt32BE(0x12345678, 8);
    assert.throws(
      () => split(bad, 100),
      (e: Error) => e instanceof RemusError && /XENF/.test(e.message),
    );
    const v9 = headers();
    v9.writeUInt32BE(9, 12);
    assert.throws(() => split(v9, 100), /image version 9/);
    assert.throws(
      () => split(Buffer.concat([headers(), pageData([{ pfn: 1 }]).subarray(0, 100)]), 50),
      /stream ends inside a record/,
    );
    const huge = record(REC.PAGE_DATA, Buffer.alloc(8));
    huge.writeUInt32LE(0x7fffffff, 4);
    assert.throws(() => split(huge, 16, 1, false), /claims 2147483647 octets/);
    const short = pageData([{ pfn: 1 }, { pfn: 2 }]);
    short.writeUInt32LE(8 + 16 + PAGE_BYTES, 4); // says one page of data, has two
    assert.throws(
      () => parsePageData(short.subarray(0, 8 + 8 + 16 + PAGE_BYTES), false),
      /2 pfns with 2 data pages need/,
    );
    const reserved = pageData([{ pfn: 1 }]);
    reserved.writeUInt32LE(0x00100000, 20);
    assert.throws(() => parsePageData(reserved, false), /reserved bits/);
    const zero = record(REC.PAGE_DATA, Buffer.alloc(8));
    assert.throws(() => parsePageData(zero, false), /PAGE_DATA with 0 pfns/);
  });

  it('47.3 PAGE_DATA: pfn words, types, data only for types that carry it', () => {
    const p = parsePageData(pageData([{ pfn: 5, type: L1TAB }, { pfn: 6, type: XTAB }, { pfn: 2 ** 33 + 7 }]), false);
    assert.deepEqual(Array.from(p.pfns), [5, 6, 2 ** 33 + 7]);
    assert.deepEqual(Array.from(p.types), [L1TAB, XTAB, 0]);
    assert.equal(p.dataPages, 2);
    assert.deepEqual(Array.from(p.dataOffsets), [8 + 8 + 24, -1, 8 + 8 + 24 + PAGE_BYTES]);
  });

  it('47.4 capture + skeleton rebuild the exact stream, preamble first', () => {
    const { first, second } = twoCheckpoints();
    const { headers: h, recs } = split(Buffer.concat([headers(), ...first, ...second]), 5000);
    const c = new CheckpointCollector(PAGES);
    const preamble = Buffer.concat([Buffer.from('xl+libxl preamble.'), h[0]]);
    c.startSave(preamble);
    const [ck1, ck2] = collect(c, recs);
    assert.equal(ck1.capture.count, PAGES, 'the first checkpoint of a save is full');
    assert.deepEqual(Buffer.from(capturedPages(ck1.capture, 1, 1)), page(1, 0));
    assert.deepEqual(Array.from(ck2.capture.pfns), [3, 40]);
    const image = new Uint8Array(PAGES * PAGE_BYTES);
    const r1 = commit(image, ck1),
      r2 = commit(image, ck2);
    assert.deepEqual(r1.preamble, preamble);
    assert.equal(r2.preamble, null);
    assert.deepEqual(Buffer.concat(r1.parts), Buffer.concat(first));
    assert.deepEqual(Buffer.concat(r2.parts), Buffer.concat(second));
    assert.ok(r1.endsWithCheckpoint && r2.endsWithCheckpoint);
    assert.ok(
      ck2.capture.deviceState.length < 200,
      `a delta skeleton has no page data (${ck2.capture.deviceState.length} octets)`,
    );
    assert.equal(ck2.rawBytes, Buffer.concat(second).length);
  });

  it('47.5 a pfn sent twice in a checkpoint keeps its last content and type only', () => {
    const recs = [
      pageData([{ pfn: 1 }, { pfn: 2 }, { pfn: 3 }]), // live round 1
      pageData([
        { pfn: 2, round: 1, type: L1TAB },
        { pfn: 3, type: XTAB },
      ]), // round 2
      pageData([{ pfn: 1, round: 2 }]), // stop-and-copy
      checkpointRec(),
    ];
    const c = new CheckpointCollector(8);
    c.startSave(headers());
    const { recs: raw } = split(Buffer.concat(recs), 999, 3, false);
    const [ck] = collect(c, raw);
    const image = new Uint8Array(8 * PAGE_BYTES);
    const r = commit(image, ck);
    assert.deepEqual(Buffer.from(image.subarray(PAGE_BYTES, 2 * PAGE_BYTES)), page(1, 2));
    assert.deepEqual(
      Buffer.from(image.subarray(3 * PAGE_BYTES, 4 * PAGE_BYTES)),
      Buffer.alloc(PAGE_BYTES),
      'XTAB last: no content',
    );
    const expected = [
      pageData([
        { pfn: 2, round: 1, type: L1TAB },
        { pfn: 3, type: XTAB },
      ]),
      pageData([{ pfn: 1, round: 2 }]),
      checkpointRec(),
    ];
    assert.deepEqual(
      Buffer.concat(r.parts),
      Buffer.concat(expected),
      'round 1 dropped: every pfn of it was sent again',
    );
    // A delta checkpoint with the same shape keeps only pfn 1 and 2 as pages.
    const [d] = collect(c, split(Buffer.concat(recs), 999, 4, false).recs);
    assert.deepEqual(Array.from(d.capture.pfns), [1, 2]);
    assert.throws(
      () => collect(new CheckpointCollector(2), split(pageData([{ pfn: 5 }]), 99, 1, false).recs),
      /pfn 5, beyond the 2 pages/,
    );
  });

  it('47.6 a real stream recorded in the lab rebuilds byte for byte', function () {
    const fixture = path.join(__dirname, '..', '..', 'test', 'fixtures', 'xen-pv-stream.bin.gz');
    if (!fs.existsSync(fixture)) this.skip();
    const bytes = zlib.gunzipSync(fs.readFileSync(fixture));
    const { headers: h, recs } = split(bytes, 65536);
    const info = JSON.parse(fs.readFileSync(fixture.replace(/\.bin\.gz$/, '.json'), 'utf8')) as { pageCount: number };
    const c = new CheckpointCollector(info.pageCount);
    c.startSave(h[0]);
    const done = collect(c, recs);
    assert.ok(done.length >= 3, `${done.length} checkpoints in the fixture`);
    const image = new Uint8Array(info.pageCount * PAGE_BYTES);
    let at = 0,
      pages = 0;
    const ends = recs.map((r, i) => (r.type === REC.CHECKPOINT ? i : -1)).filter((i) => i >= 0);
    done.forEach((ck, k) => {
      const r = commit(image, ck);
      const original = Buffer.concat(recs.slice(at, ends[k] + 1).map((x) => x.bytes));
      at = ends[k] + 1;
      assert.deepEqual(Buffer.concat(r.parts), original, `checkpoint ${k + 1} rebuilt exactly`);
      if (k > 0) pages += ck.capture.count;
    });
    assert.ok(pages > 0, 'the later checkpoints carry pages');
  });

  it('47.7 the replica writes whole checkpoints to the receiver and fails over by closing it', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'remusdb-47-'));
    const out = path.join(dir, 'stream');
    let incomingPaused = true;
    const addon = {
      xenDomainInfo: (d: string | number): XenDomainInfo => {
        if (d !== 'vm--incoming' && d !== 41) throw new RemusError(ErrorCode.NO_DOMAIN, 'no');
        return {
          domid: 41,
          dying: false,
          shutdown: false,
          shutdownReason: 0,
          paused: incomingPaused,
          hvm: false,
          maxMemKb: 0,
          pages: 0,
          vcpus: 1,
        };
      },
    };
    const rx = new XenReplica('vm', PAGES, {
      receiver: ['sh', '-c', `printf '${RECEIVER_BANNER.replace('\n', '\\n')}'; cat > '${out}'; sleep 0.3`],
      addon,
      resumeTimeoutMs: 5000,
    });
    const { first, second } = twoCheckpoints();
    const c = new CheckpointCollector(PAGES);
    c.startSave(Buffer.from('PRE'));
    const [ck1, ck2] = collect(c, split(Buffer.concat([...first, ...second]), 100, 1, false).recs);
    assert.throws(() => rx.commitDeviceState(ck2.capture.deviceState), /no stream preamble/);
    for (const ck of [ck1, ck2]) {
      for (let i = 0; i < ck.capture.count; i++) rx.image.setPage(ck.capture.pfns[i], capturedPages(ck.capture, i, 1));
      rx.commitDeviceState(ck.capture.deviceState);
    }
    setTimeout(() => {
      incomingPaused = false;
    }, 100);
    const info = await rx.resume();
    assert.equal(info.domid, 41);
    const end = Buffer.from([4, 0, 0, 0, 0, 0, 0, 0]);
    assert.deepEqual(fs.readFileSync(out), Buffer.concat([Buffer.from('PRE'), ...first, end, ...second, end]));
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it(
    '47.9 a first checkpoint of 64 MiB is fed a record at a time: the commit returns at once, a later commit does ' +
      'not change it, failover waits',
    async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'remusdb-47-'));
      const out = path.join(dir, 'stream');
      const BIG = 16384; // 64 MiB: eight turns of the feed
      const addon = {
        xenDomainInfo: (d: string | number): XenDomainInfo => {
          if (d !== 'vm--incoming' && d !== 41) throw new RemusError(ErrorCode.NO_DOMAIN, 'no');
          return {
            domid: 41,
            dying: false,
            shutdown: false,
            shutdownReason: 0,
            paused: false,
            hvm: false,
            maxMemKb: 0,
            pages: 0,
            vcpus: 1,
          };
        },
      };
      const rx = new XenReplica('vm', BIG, {
        receiver: ['sh', '-c', `printf '${RECEIVER_BANNER.replace('\n', '\\n')}'; cat > '${out}'; touch '${out}.done'`],
        addon,
        resumeTimeoutMs: 20000,
      });
      const batches: Buffer[] = [];
      for (let p = 0; p < BIG; p += 1024)
        batches.push(pageData(Array.from({ length: 1024 }, (_, i) => ({ pfn: p + i }))));
      const first = [...batches, checkpointRec()];
      const second = [
        pageData([
          { pfn: 0, round: 1 },
          { pfn: BIG - 1, round: 1 },
        ]),
        checkpointRec(),
      ];
      const c = new CheckpointCollector(BIG);
      c.startSave(Buffer.from('PRE'));
      const cks = collect(c, split(Buffer.concat([...first, ...second]), 1 << 20, 1, false).recs);
      assert.equal(cks.length, 2);
      const feedBytes = (): number => (rx as unknown as { feedBytes: number }).feedBytes;
      for (const ck of cks) {
        const pfns = Array.from(ck.capture.pfns.subarray(0, ck.capture.count));
        if (ck !== cks[0]) rx.beforeImageWrite(pfns); // as the engine does before an incremental commit
        for (let i = 0; i < ck.capture.count; i++)
          rx.image.setPage(ck.capture.pfns[i], capturedPages(ck.capture, i, 1));
        rx.commitDeviceState(ck.capture.deviceState);
        assert.ok(
          feedBytes() > 32 * 2 ** 20,
          `the commit returned with ${feedBytes()} octets still to write (not written at once)`,
        );
      }
      await rx.resume();
      assert.equal(feedBytes(), 0, 'failover waited until every committed checkpoint was written');
      for (let i = 0; i < 200 && !fs.existsSync(`${out}.done`); i++) await new Promise((r) => setTimeout(r, 25));
      const stream = fs.readFileSync(out);
      assert.ok(stream.subarray(0, 3).equals(Buffer.from('PRE')));
      const firstBytes = first.reduce((n, b) => n + b.length, 0),
        secondBytes = second.reduce((n, b) => n + b.length, 0);
      assert.equal(
        stream.length,
        3 + firstBytes + 8 + secondBytes + 8,
        "each checkpoint once, with libxl's CHECKPOINT_END",
      );
      // Each checkpoint carries its own pages: the first, written while the second was committed,
      // still has round 0 of the page the second changed (libxc checks page tables per checkpoint).
      const parts = [stream.subarray(3, 3 + firstBytes), stream.subarray(3 + firstBytes + 8, stream.length - 8)];
      const pagesOf = (part: Buffer): Map<number, Buffer> => {
        const m = new Map<number, Buffer>();
        for (const r of split(part, 1 << 20, 1, false).recs) {
          if (r.type !== REC.PAGE_DATA) continue;
          const d = parsePageData(r.bytes, false);
          for (let i = 0; i < d.count; i++)
            if (d.dataOffsets[i] >= 0)
              m.set(d.pfns[i], r.bytes.subarray(d.dataOffsets[i], d.dataOffsets[i] + PAGE_BYTES));
        }
        return m;
      };
      const [one, two] = parts.map(pagesOf);
      assert.equal(one.size, BIG);
      assert.deepEqual(
        [...two.keys()].sort((x, y) => x - y),
        [0, BIG - 1],
      );
      for (const p of [0, 1, BIG / 2, BIG - 1])
        assert.ok(one.get(p)!.equals(page(p, 0)), `checkpoint 1, page ${p}: its own content`);
      for (const p of [0, BIG - 1])
        assert.ok(
          two.get(p)!.equals(page(p, 1)) && two.get(p)!.equals(Buffer.from(rx.image.page(p))),
          `checkpoint 2, page ${p}`,
        );
      fs.rmSync(dir, { recursive: true, force: true });
    },
  );

  describe('47.8 the domain drives a (scripted) save loop', () => {
    let addon: Partial<XenAddon> = {};
    before(function () {
      try {
        addon = loadAddon() as unknown as Partial<XenAddon>;
      } catch {
        /* no addon: skipped below */
      }
      if (!addon.makePipe) this.skip(); // the addon's Xen part (libxen-dev) makes the pipe
    });

    /** A save loop that writes checkpoints like libxc and calls back in libxc's order. */
    function fakeXen(opts: { dieAt?: number; suspendMs?: number; leftSuspended?: boolean } = {}): {
      x: XenAddon;
      log: string[];
    } {
      const log: string[] = [];
      let dying = false,
        saves = 0,
        suspended = opts.leftSuspended === true;
      const info = (): XenDomainInfo => ({
        domid: 7,
        dying,
        shutdown: suspended,
        shutdownReason: suspended ? 2 : 0,
        paused: false,
        hvm: false,
        maxMemKb: DPAGES * 4,
        pages: DPAGES,
        vcpus: 1,
      });
      const x: XenAddon = {
        xenDomainInfo: () => info(),
        xenDomainConfigJson: () => JSON.stringify({ c_info: { name: 'vm' } }),
        xenSuspendAsync: async () => {
          log.push('suspend');
          if (opts.suspendMs) await new Promise((r) => setTimeout(r, opts.suspendMs));
          if (dying) throw new RemusError(ErrorCode.XEN, 'suspend: the domain is dying (destroyed)');
        },
        xenPause: () => {
          log.push('pause');
        },
        xenResume: () => {
          log.push('resume');
          suspended = false;
        },
        makePipe: () => addon.makePipe!(),
        xenSaveCheckpointed: async (_d, fd, dispatch) => {
          const save = ++saves;
          const ask = (k: 'suspend' | 'postcopy' | 'checkpoint'): Promise<number> =>
            new Promise((r) => setImmediate(() => dispatch(k, r)));
          const write = (b: Buffer): void => {
            fs.writeSync(fd, b);
          };
          write(headers());
          write(pageData(Array.from({ length: DPAGES }, (_, pfn) => ({ pfn, round: save * 100 })))); // live round
          for (let n = 1; ; n++) {
            if (opts.dieAt === n) dying = true;
            if ((await ask('suspend')) <= 0) return { rc: -1, errno: 0, message: 'suspend failed' };
            write(pageData([{ pfn: n % DPAGES, round: save * 100 + n }]));
            write(checkpointRec());
            if ((await ask('postcopy')) <= 0) return { rc: -1, errno: 0, message: 'postcopy failed' };
            if ((await ask('checkpoint')) <= 0) return { rc: 0, errno: 0, message: 'save loop ended' };
          }
        },
      };
      return { x, log };
    }

    it('47.8.1 suspend → capture → resume per checkpoint; a new full capture restarts the save', async () => {
      const { x, log } = fakeXen();
      const d = XenDomain.open('vm', { stepTimeoutMs: 2000, firstCheckpointTimeoutMs: 2000 }, x);
      assert.equal(d.pageCount, DPAGES);
      await d.suspend();
      const c1 = await d.capture(true);
      await d.resume();
      assert.equal(c1.count, DPAGES);
      assert.deepEqual(Buffer.from(capturedPages(c1, 1, 1)), page(1, 101), 'the stop-and-copy content wins');
      await d.suspend();
      const c2 = await d.capture(false);
      await d.resume();
      assert.deepEqual(Array.from(c2.pfns), [2]);
      await d.suspend();
      const c3 = await d.capture(true); // a new backup session
      await d.resume();
      assert.equal(c3.count, DPAGES);
      assert.deepEqual(Buffer.from(capturedPages(c3, 0, 1)), page(0, 200), "the second save's live round");
      assert.equal(d.describe().saves, 2);
      assert.deepEqual(log, ['suspend', 'resume', 'suspend', 'resume', 'suspend', 'resume', 'suspend', 'resume']);
      await d.close();
    });

    it(
      '47.8.2 the suspend wait leaves this thread free; close() during it resumes the guest, fence() ' +
        'leaves it paused',
      async () => {
        for (const how of ['close', 'fence'] as const) {
          const { x, log } = fakeXen({ suspendMs: 300 });
          const d = XenDomain.open('vm', { stepTimeoutMs: 2000, firstCheckpointTimeoutMs: 2000 }, x);
          await d.suspend();
          await d.capture(true);
          await d.resume();
          let ticks = 0;
          const timer = setInterval(() => {
            ticks++;
          }, 10);
          const outcome = d.suspend().then(
            () => 'suspended',
            (e: Error) => e.message,
          );
          await new Promise((r) => setTimeout(r, 150));
          clearInterval(timer);
          assert.ok(ticks >= 5, `timers ran while the guest was suspending (${ticks})`);
          log.length = 0;
          if (how === 'close') await d.close();
          else d.fence();
          assert.match(await outcome, /ended during a suspend/, how);
          assert.deepEqual(log, how === 'close' ? ['resume'] : ['pause'], `${how}: ${log.join(',')}`);
          if (how === 'fence') await d.close();
        }
      },
    );

    it('47.8.4 left suspended by a crashed protect: so until a session or no backup answered; fenced: so', async () => {
      for (const how of ['session', 'fence', 'close', 'unprotected', 'fence-unprotected'] as const) {
        const { x, log } = fakeXen({ leftSuspended: true });
        const lines: string[] = [];
        const d = XenDomain.open(
          'vm',
          { stepTimeoutMs: 2000, firstCheckpointTimeoutMs: 2000, log: (l) => lines.push(l) },
          x,
        );
        assert.deepEqual(log, [], 'opening resumes nothing');
        assert.equal(d.adoptLeftSuspended(), true);
        assert.equal(d.describe().leftSuspended, true);
        assert.match(lines.join('\n'), /suspended with no save running .* until the backup answers/);
        if (how === 'session') {
          await d.suspend();
          await d.capture(true);
          await d.resume();
          assert.deepEqual(log, ['resume', 'suspend', 'resume'], 'the save resumes it first, then checkpoints');
        } else if (how === 'fence') {
          d.fence();
          await d.close();
          assert.deepEqual(log, ['pause'], 'fenced: paused, never resumed');
          assert.equal(d.describe().leftSuspended, true);
        } else if (how === 'unprotected') {
          d.runUnprotected(); // no backup answered while outputs were held
          assert.deepEqual(log, ['resume'], 'running unprotected: the guest runs again');
          assert.equal(d.describe().leftSuspended, false);
          await d.close();
          assert.deepEqual(log, ['resume'], 'resumed once');
        } else if (how === 'fence-unprotected') {
          d.fence();
          d.runUnprotected();
          assert.deepEqual(log, ['pause'], 'fenced: never resumed, whatever comes after');
          await d.close();
        } else {
          await d.close();
          assert.deepEqual(log, ['resume'], 'protection ends: the guest runs on');
        }
        if (how === 'session') await d.close();
      }
      const running = XenDomain.open('vm', { stepTimeoutMs: 2000 }, fakeXen().x);
      assert.equal(running.adoptLeftSuspended(), false, 'a running guest is not adopted');
      await running.close();
    });

    it('47.8.3 a destroyed domain fails the pending suspend at once with NO_DOMAIN', async () => {
      const { x } = fakeXen({ dieAt: 2 });
      const d = XenDomain.open('vm', { stepTimeoutMs: 2000, firstCheckpointTimeoutMs: 2000 }, x);
      await d.suspend();
      await d.capture(true);
      await d.resume();
      const t0 = Date.now();
      await assert.rejects(
        d.suspend(),
        (e: Error) => e instanceof RemusError && e.code === ErrorCode.NO_DOMAIN && /dying/.test(e.message),
      );
      assert.ok(Date.now() - t0 < 1000);
      await assert.rejects(d.suspend(), (e: Error) => (e as RemusError).code === ErrorCode.NO_DOMAIN);
      await d.close();
    });
  });
});

// 41 protocol: record framing (CRC32C, limits, unknown records) and the backup's rules for
// a session — every violation is ERR_PROTOCOL, the connection is dropped, nothing is half
// applied, and it is not taken for a dead primary (no failover).
import { strict as assert } from 'node:assert';
import { encodeRecord, RecordDecoder } from '../dom0/protocol/framer';
import {
  Rec,
  RECORD_BODY_MAX,
  checkpointBegin,
  checkpointEnd,
  jsonBody,
  withEpoch,
  PROTOCOL_VERSION,
} from '../dom0/protocol/records';
import { ErrorCode, isRemusError } from '../dom0/errors';
import { Backup } from '../dom0/engine/backup';
import { PageEncoder } from '../dom0/memory/page-codec';
import { MemReplica, VirtualClock } from './support/sim-world';
import { TapLink } from './support/tap-link';
import { simHello } from './support/disk-session';
import { dbPages } from './support/helpers';
import { GuestMemory } from '../dom0/memory/guest-memory';
import * as net from 'node:net';
import { connectLink, listenLinks } from '../dom0/protocol/channel';
import * as tls from 'node:tls';
import { randomBytes } from 'node:crypto';
import { LINK_TURN_MS_MAX } from '../dom0/limits';
import { loadAddon } from '../dom0/native';
import type { Link } from '../dom0/ports';

const KNOWN = new Set<number>(Object.values(Rec));
const isProto = (e: unknown): boolean => isRemusError(e, ErrorCode.PROTOCOL);

describe('41 protocol', () => {
  it('41.1 records survive any chunking', () => {
    const bytes = Buffer.concat([
      encodeRecord(Rec.HEARTBEAT, Buffer.alloc(16, 1)),
      encodeRecord(Rec.ACK, Buffer.alloc(8, 2)),
      encodeRecord(Rec.GOODBYE, Buffer.alloc(0)),
    ]);
    for (const step of [1, 3, 7, bytes.length]) {
      const d = new RecordDecoder(KNOWN);
      const got = [];
      for (let i = 0; i < bytes.length; i += step) got.push(...d.push(bytes.subarray(i, i + step)));
      assert.deepEqual(
        got.map((r) => r.type),
        [Rec.HEARTBEAT, Rec.ACK, Rec.GOODBYE],
      );
      assert.deepEqual([...got[1].body], [2, 2, 2, 2, 2, 2, 2, 2]);
    }
  });

  it('41.2 a flipped bit anywhere fails the CRC and the stream stays failed', () => {
    const good = encodeRecord(Rec.ACK, Buffer.alloc(8, 5));
    for (let i = 0; i < good.length; i++) {
      if (i >= 4 && i < 12) continue; // flags/length bits fail earlier, by other checks
      const bad = Buffer.from(good);
      bad[i] ^= 0x10;
      const d = new RecordDecoder(KNOWN);
      assert.throws(() => d.push(bad), isProto, `byte ${i}`);
      assert.throws(() => d.push(good), isProto, 'refuses input after an error');
    }
  });

  it('41.3 an oversize length is rejected before its body arrives', () => {
    const h = Buffer.alloc(16);
    h.writeUInt32LE(Rec.PAGE_BATCH, 0);
    h.writeUInt32LE(RECORD_BODY_MAX + 1, 8);
    assert.throws(
      () => new RecordDecoder(KNOWN).push(h),
      (e: unknown) => isProto(e) && /exceeds/.test((e as Error).message),
    );
  });

  it('41.4 unknown mandatory records fail, unknown optional ones are skipped', () => {
    assert.throws(
      () => new RecordDecoder(KNOWN).push(encodeRecord(99, Buffer.alloc(3))),
      (e: unknown) => isProto(e) && /unknown mandatory record type 99/.test((e as Error).message),
    );
    const d = new RecordDecoder(KNOWN);
    const got = d.push(
      Buffer.concat([encodeRecord(99, Buffer.alloc(3), 1), encodeRecord(Rec.GOODBYE, Buffer.alloc(0))]),
    );
    assert.deepEqual(
      got.map((r) => r.type),
      [Rec.GOODBYE],
    );
    assert.throws(() => new RecordDecoder(KNOWN).push(encodeRecord(Rec.ACK, Buffer.alloc(8), 4)), isProto);
  });

  it('41.6 a burst of records reaches the engine in bounded turns, timers between, the close last', async () => {
    const RECORDS = 200;
    const BUSY_MS = 1; // the engine's work per record: the burst needs 20 × the turn budget
    let linkCb: (l: Link) => void = () => {};
    const linked = new Promise<Link>((resolve) => (linkCb = resolve));
    const listener = await listenLinks('127.0.0.1', 0, { insecure: true }, (l) => linkCb(l));
    const burst = Buffer.concat(
      Array.from({ length: RECORDS }, (_, i) => encodeRecord(Rec.HEARTBEAT, Buffer.alloc(16, i))),
    );
    const client = net.connect(listener.port, '127.0.0.1', () => client.end(burst)); // records, then FIN
    const link = await linked;
    let ticks = 0;
    const ticker = setInterval(() => ticks++, 1);
    const ticksAtRecord: number[] = [];
    const closedAfter = new Promise<number>((resolve) => link.onClose(() => resolve(ticksAtRecord.length)));
    link.onRecord(() => {
      const until = performance.now() + BUSY_MS;
      while (performance.now() < until);
      ticksAtRecord.push(ticks);
    });
    const recordsBeforeClose = await closedAfter;
    clearInterval(ticker);
    listener.close();
    assert.equal(recordsBeforeClose, RECORDS, 'the close came after every record sent before it');
    const ticksDuring = ticksAtRecord[RECORDS - 1] - ticksAtRecord[0];
    assert.ok(ticksDuring >= 5, `timers ran ${ticksDuring} times while 200 ms of records were delivered`);
    let run = 1; // records handed over in one turn: no timer ran between them
    let longestRun = 1;
    for (let i = 1; i < RECORDS; i++) {
      run = ticksAtRecord[i] === ticksAtRecord[i - 1] ? run + 1 : 1;
      longestRun = Math.max(longestRun, run);
    }
    assert.ok(longestRun <= LINK_TURN_MS_MAX / BUSY_MS + 2, `${longestRun} records in one turn`);
  });

  it('41.6b holdReading stops reading the socket (the sender backs up); released, all come in order', async () => {
    const RECORDS = 512; // 32 MiB: more than the kernel's buffers on both sides hold
    let linkCb: (l: Link) => void = () => {};
    const linked = new Promise<Link>((resolve) => (linkCb = resolve));
    const listener = await listenLinks('127.0.0.1', 0, { insecure: true }, (l) => linkCb(l));
    const client = net.connect(listener.port, '127.0.0.1');
    const link = await linked;
    const got: number[] = [];
    link.onRecord((_t, body) => {
      if (got.length === 0) link.holdReading!(true);
      got.push(body[0] + 256 * body[1]);
    });
    for (let i = 0; i < RECORDS; i++) {
      const body = Buffer.alloc(64 * 1024);
      body.writeUInt16LE(i, 0);
      client.write(encodeRecord(Rec.HEARTBEAT, body));
    }
    await new Promise((r) => setTimeout(r, 300));
    const whileHeld = got.length;
    const backlog = client.writableLength;
    link.holdReading!(true); // idempotent
    link.holdReading!(false);
    const deadline = Date.now() + 10_000;
    while (got.length < RECORDS && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    client.destroy();
    listener.close();
    assert.ok(whileHeld < RECORDS / 2, `${whileHeld} of ${RECORDS} records delivered while reading was held`);
    assert.ok(backlog > 0, 'the sender backed up');
    assert.equal(got.length, RECORDS, 'released: every record arrived');
    assert.deepEqual(
      got,
      Array.from({ length: RECORDS }, (_, i) => i),
      'in order',
    );
  });

  it('41.7 the TLS channel runs DHE-PSK with AES-256-GCM, and serves a peer that offers only ChaCha20', async () => {
    const sec = { psk: randomBytes(32) };
    let linkCb: (l: Link) => void = () => {};
    let linked = new Promise<Link>((resolve) => (linkCb = resolve));
    const listener = await listenLinks('127.0.0.1', 0, sec, (l) => linkCb(l));
    try {
      const ours = await connectLink('127.0.0.1', listener.port, sec);
      const served = await linked;
      assert.equal(ours.cipher, 'DHE-PSK-AES256-GCM-SHA384');
      assert.equal(served.cipher, 'DHE-PSK-AES256-GCM-SHA384');
      ours.close();
      served.close();
      linked = new Promise<Link>((resolve) => (linkCb = resolve));
      const older = tls.connect({
        host: '127.0.0.1',
        port: listener.port,
        ciphers: 'ECDHE-PSK-CHACHA20-POLY1305',
        maxVersion: 'TLSv1.2',
        pskCallback: () => ({ psk: sec.psk, identity: 'remusdb' }),
        checkServerIdentity: () => undefined,
      });
      const olderServed = await linked;
      assert.equal(olderServed.cipher, 'ECDHE-PSK-CHACHA20-POLY1305');
      older.destroy();
      olderServed.close();
    } finally {
      listener.close();
    }
  });

  it('41.8 CRC32C: the RFC 3720 check value; three joined chains equal one table-driven chain at every length', () => {
    const { crc32c, crc32cPages } = loadAddon();
    const table = Array.from({ length: 256 }, (_, i) => {
      let c = i;
      for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0x82f63b78 & -(c & 1));
      return c >>> 0;
    });
    const reference = (b: Uint8Array, seed = 0): number => {
      let c = ~seed >>> 0;
      for (const x of b) c = (table[(c ^ x) & 0xff] ^ (c >>> 8)) >>> 0;
      return ~c >>> 0;
    };
    assert.equal(crc32c(Buffer.from('123456789')), 0xe3069283);
    const block = 4096; // the addon's three-chain block (crc32c.cc)
    const lengths = [0, 1, 7, 8, 3 * block - 1, 3 * block, 3 * block + 1, 6 * block + 13, 9 * block + 4095, 1 << 20];
    for (const n of lengths) {
      for (const misaligned of [0, 3]) {
        const b = randomBytes(n + misaligned).subarray(misaligned);
        const seed = randomBytes(4).readUInt32LE();
        assert.equal(crc32c(b, seed), reference(b, seed), `${n} octets at +${misaligned}, seeded`);
      }
    }
    const pages = randomBytes(7 * 4096),
      out = new Uint32Array(7);
    crc32cPages(pages, out); // three at a time, then one by one
    for (let i = 0; i < 7; i++) assert.equal(out[i], reference(pages.subarray(i * 4096, (i + 1) * 4096)), `page ${i}`);
  });

  describe('41.5 the backup refuses out-of-order sessions without failing over', () => {
    const PAGES = 128;
    const hello = simHello(); // PAGES pages
    const mem = dbPages(PAGES, 3);
    const batch = (pfns: number[], enc: PageEncoder): Buffer => {
      const pages = Buffer.concat(pfns.map((p) => mem.subarray(p * 4096, (p + 1) * 4096)));
      return Buffer.from(enc.encode(pages, BigUint64Array.from(pfns.map(BigInt))).container);
    };
    function session(): { b: Backup; link: TapLink; replica: () => MemReplica; events: string[]; enc: PageEncoder } {
      const events: string[] = [];
      let replica!: MemReplica;
      const b = new Backup(
        new VirtualClock(),
        { pageCountMax: 1 << 20, batchPagesMax: 256, replicaFor: (h) => (replica = new MemReplica(h.pageCount)) },
        { event: (n) => events.push(n) },
      );
      const link = new TapLink();
      b.attach(link);
      link.rec(Rec.HELLO, hello);
      const enc = new PageEncoder({ cachePages: 16, compressor: 'zstd', batchPagesMax: 256 });
      // a good FULL checkpoint 1
      link.rec(Rec.CHECKPOINT_BEGIN, checkpointBegin(1, true));
      link.rec(
        Rec.PAGE_BATCH,
        withEpoch(
          1,
          batch(
            Array.from({ length: PAGES }, (_, i) => i),
            enc,
          ),
        ),
      );
      link.rec(Rec.DEVICE_STATE, withEpoch(1, Buffer.from('{"kind":"sim"}')));
      link.rec(Rec.CHECKPOINT_END, checkpointEnd(1, PAGES));
      return { b, link, replica: () => replica, events, enc };
    }

    it('a good FULL checkpoint commits and is acknowledged', () => {
      const s = session();
      assert.equal(s.b.committedEpoch, 1);
      assert.ok(s.link.sent.some((r) => r.type === Rec.ACK));
      assert.ok(s.replica().image.equals(GuestMemory.over(mem)));
    });

    const cases: Array<[string, (s: ReturnType<typeof session>) => void, RegExp]> = [
      ['epoch gap', (s) => s.link.rec(Rec.CHECKPOINT_BEGIN, checkpointBegin(3, false)), /does not follow/],
      [
        'batch for another epoch',
        (s) => {
          s.link.rec(Rec.CHECKPOINT_BEGIN, checkpointBegin(2, false));
          s.link.rec(Rec.PAGE_BATCH, withEpoch(7, batch([1], s.enc)));
        },
        /epoch 7 inside checkpoint 2/,
      ],
      [
        'a pfn twice in one checkpoint',
        (s) => {
          s.link.rec(Rec.CHECKPOINT_BEGIN, checkpointBegin(2, false));
          s.link.rec(Rec.PAGE_BATCH, withEpoch(2, batch([5], s.enc)));
          s.link.rec(Rec.PAGE_BATCH, withEpoch(2, batch([5], s.enc)));
        },
        /appears twice/,
      ],
      [
        'END with the wrong page count',
        (s) => {
          s.link.rec(Rec.CHECKPOINT_BEGIN, checkpointBegin(2, false));
          s.link.rec(Rec.PAGE_BATCH, withEpoch(2, batch([5, 6], s.enc)));
          s.link.rec(Rec.DEVICE_STATE, withEpoch(2, Buffer.from('{"kind":"sim"}')));
          s.link.rec(Rec.CHECKPOINT_END, checkpointEnd(2, 3));
        },
        /announced 3 pages but carried 2/,
      ],
      [
        'END without DEVICE_STATE',
        (s) => {
          s.link.rec(Rec.CHECKPOINT_BEGIN, checkpointBegin(2, false));
          s.link.rec(Rec.CHECKPOINT_END, checkpointEnd(2, 0));
        },
        /no DEVICE_STATE/,
      ],
      [
        'a corrupt page batch',
        (s) => {
          s.link.rec(Rec.CHECKPOINT_BEGIN, checkpointBegin(2, false));
          s.link.rec(Rec.PAGE_BATCH, withEpoch(2, Buffer.from([1, 0, 0, 0, 50, 0, 0, 0, 1, 2, 3])));
        },
        /page batch/,
      ],
      ['HELLO twice', (s) => s.link.rec(Rec.HELLO, hello), /HELLO twice/],
    ];
    for (const [name, act, why] of cases) {
      it(name, () => {
        const s = session();
        const before = s.replica().image.crc32c();
        act(s);
        const err = s.link.sent.find((r) => r.type === Rec.ERROR);
        assert.ok(err, 'an ERROR record was sent');
        assert.match(JSON.parse(err.body.toString()).message, why);
        assert.ok(s.link.closed, 'the connection was dropped');
        assert.ok(!s.events.includes('failover'), 'no failover');
        assert.equal(s.b.state, 'waiting');
        assert.equal(s.replica().image.crc32c(), before, 'nothing half-applied');
        assert.equal(s.b.committedEpoch, 1, 'the committed checkpoint stands');
      });
    }

    it('the first checkpoint of a session must be FULL', () => {
      const events: string[] = [];
      const b = new Backup(
        new VirtualClock(),
        { pageCountMax: 1 << 20, batchPagesMax: 64, replicaFor: (h) => new MemReplica(h.pageCount) },
        { event: (n) => events.push(n) },
      );
      const link = new TapLink();
      b.attach(link);
      link.rec(Rec.HELLO, hello);
      link.rec(Rec.CHECKPOINT_BEGIN, checkpointBegin(5, false));
      assert.match(JSON.parse(link.sent.find((r) => r.type === Rec.ERROR)!.body.toString()).message, /must be FULL/);
    });

    it('a HELLO with another protocol version or page size is refused', () => {
      for (const body of [
        jsonBody({}, 99),
        jsonBody({ kind: 'sim', domain: 't', pageCount: 128, pageSize: 8192 }, PROTOCOL_VERSION),
      ]) {
        const b = new Backup(new VirtualClock(), {
          pageCountMax: 1 << 20,
          batchPagesMax: 64,
          replicaFor: (h) => new MemReplica(h.pageCount),
        });
        const link = new TapLink();
        b.attach(link);
        link.rec(Rec.HELLO, body);
        const err = link.sent.find((r) => r.type === Rec.ERROR);
        assert.equal(JSON.parse(err!.body.toString()).code, ErrorCode.HANDSHAKE);
        assert.ok(link.closed);
      }
    });
  });
});

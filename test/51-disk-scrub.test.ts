// 51.17–19 the scrub (--disk-scrub, blktap/disk-scrub.ts): the primary sends with each
// checkpoint a few ranges whose CRC is the disk's at that checkpoint (never one written since
// its read); the backup compares them with its own disk at that commit, names a range that
// differs for the next session, and counts the disk verified only when a pass covered it all.
import { strict as assert } from 'node:assert';
import { BlockGenerations } from '../blktap/block-generations';
import { DiskScrub } from '../blktap/disk-scrub';
import { RangeCrcs } from '../blktap/range-crcs';
import { Backup } from '../dom0/engine/backup';
import { ErrorCode, isRemusError } from '../dom0/errors';
import { loadAddon } from '../dom0/native';
import type { ScrubPick } from '../dom0/ports';
import { Rec, diskScrubBody, diskSyncEndBody, parseDiskScrub, parseJson } from '../dom0/protocol/records';
import { Prng } from '../dom0/util/prng';
import { diskHello, fullCheckpoint } from './support/disk-session';
import { MemDiskTarget, MemReplica, VirtualClock } from './support/sim-world';
import { TapLink } from './support/tap-link';

const RANGE = 8192;
const DISK = 10 * RANGE + 4096; // a short last range

function memDisk(seed: number): Uint8Array {
  const b = new Uint8Array(DISK);
  new Prng(seed).fill(b);
  return b;
}

describe('51 the disk scrub', () => {
  it('51.17 a pick sends only ranges read since their last write, each once a pass; the last ends the pass', () => {
    const bytes = memDisk(1);
    const gens = new BlockGenerations(DISK);
    const clock = new VirtualClock();
    const source = {
      sizeBytes: DISK,
      read: (o: number, into: Uint8Array) => into.set(bytes.subarray(o, o + into.length)),
    };
    const table = new RangeCrcs(source, gens, clock, RANGE);
    const scrub = new DiskScrub(table, clock, 1e12, RANGE); // unpaced: the pace is 51.17b's
    assert.equal(scrub.pick(), null, 'nothing before a session starts');
    scrub.start();
    clock.runUntil(100); // the read-ahead, at once for a disk in memory
    gens.beginWrite(2 * RANGE, 4096); // range 2: a write in flight
    bytes[2 * RANGE] ^= 1;
    const first = scrub.pick(4)!;
    assert.deepEqual(
      first.ranges.map((r) => r.offsetBytes / RANGE),
      [0, 1, 3, 4],
      'range 2 waits',
    );
    for (const r of first.ranges) {
      const want = loadAddon().crc32c(bytes.subarray(r.offsetBytes, r.offsetBytes + r.lengthBytes));
      assert.equal(r.crc32c, want, `range ${r.offsetBytes / RANGE} as the disk holds it`);
    }
    clock.runUntil(101); // the read-ahead cannot read range 2 while its write is in flight
    const second = scrub.pick(8)!;
    assert.ok(!second.ranges.some((r) => r.offsetBytes === 2 * RANGE), 'not while its write is in flight');
    gens.endWrite(2 * RANGE, 4096); // landed: current once read again
    clock.runUntil(300);
    const seen = new Set([...first.ranges, ...second.ranges].map((r) => r.offsetBytes));
    let end: ScrubPick | null = null;
    for (let i = 0; i < 20 && !end?.passEnd; i++) {
      clock.runUntil(300 + 50 * (i + 1));
      end = scrub.pick(8);
      for (const r of end?.ranges ?? []) {
        assert.ok(!seen.has(r.offsetBytes), `range ${r.offsetBytes / RANGE} twice in a pass`);
        seen.add(r.offsetBytes);
      }
    }
    assert.ok(end?.passEnd, 'the pass ended');
    assert.equal(seen.size, 11, 'every range once, the short last one too');
    assert.equal(scrub.counters.passes, 1);
    scrub.stop();
    assert.equal(scrub.pick(), null);
  });

  it("51.17c the scrub's ranges over a finer table: a range is current when all its parts are, its CRC theirs", () => {
    const bytes = memDisk(3);
    const gens = new BlockGenerations(DISK);
    const clock = new VirtualClock();
    const source = {
      sizeBytes: DISK,
      read: (o: number, into: Uint8Array) => into.set(bytes.subarray(o, o + into.length)),
    };
    const scrub = new DiskScrub(new RangeCrcs(source, gens, clock, RANGE / 2), clock, 1e12, RANGE);
    scrub.start();
    clock.runUntil(100);
    gens.beginWrite(2 * RANGE + 4096, 4096); // one part of scrub range 2: a write in flight
    const first = scrub.pick(8)!;
    assert.deepEqual(
      first.ranges.map((r) => r.offsetBytes / RANGE),
      [0, 1, 3, 4, 5, 6, 7, 8],
      'range 2 waits for its written part',
    );
    for (const r of first.ranges) {
      assert.equal(r.lengthBytes, RANGE, 'whole scrub ranges');
      const want = loadAddon().crc32c(bytes.subarray(r.offsetBytes, r.offsetBytes + r.lengthBytes));
      assert.equal(r.crc32c, want, `range ${r.offsetBytes / RANGE}: its parts' CRCs combined`);
    }
    bytes[2 * RANGE + 4096] ^= 1;
    gens.endWrite(2 * RANGE + 4096, 4096);
    clock.runUntil(300); // the read-ahead reads the written part again
    const rest = scrub.pick(8)!;
    const two = rest.ranges.find((r) => r.offsetBytes === 2 * RANGE);
    assert.ok(two, 'range 2 once its part was read again');
    assert.equal(two.crc32c, loadAddon().crc32c(bytes.subarray(2 * RANGE, 3 * RANGE)));
    const last = rest.ranges.find((r) => r.offsetBytes === 10 * RANGE);
    assert.equal(last?.lengthBytes, 4096, 'the short last range');
    assert.equal(last?.crc32c, loadAddon().crc32c(bytes.subarray(10 * RANGE)));
  });

  it('51.17b the scrub keeps its pace: ranges a second, never more than a checkpoint may carry', () => {
    const SIZE = 40 * RANGE;
    const gens = new BlockGenerations(SIZE);
    const clock = new VirtualClock();
    const source = { sizeBytes: SIZE, read: (o: number, into: Uint8Array) => into.fill(o % 251) };
    // 4 ranges a second
    const scrub = new DiskScrub(new RangeCrcs(source, gens, clock, RANGE), clock, 4 * RANGE, RANGE);
    scrub.start();
    let sent = 0;
    for (let t = 50; t <= 2000; t += 50) {
      clock.runUntil(t);
      sent += scrub.pick(8)?.ranges.length ?? 0;
    }
    assert.ok(sent >= 8 && sent <= 9, `${sent} ranges in 2 s at 4 a second (and the first at once)`);
    clock.runUntil(60_000); // a long quiet while: still at most 8 at once
    assert.equal(scrub.pick(8)?.ranges.length, 8);
    assert.equal(scrub.pick(8), null, 'spent');
  });

  it('51.18 DISK_SCRUB bodies: ranges of one width at its multiples inside the disk, 1–8 of them', () => {
    const one = (off: number, len: number, rangeBytes = RANGE): Buffer =>
      diskScrubBody(3, { ranges: [{ offsetBytes: off, lengthBytes: len, crc32c: 7 }], passEnd: false, rangeBytes });
    assert.deepEqual(parseDiskScrub(one(10 * RANGE, 4096), DISK).ranges, [
      { offsetBytes: 10 * RANGE, lengthBytes: 4096, crc32c: 7 },
    ]);
    const bad: Array<[string, Buffer]> = [
      ['not at a multiple', one(4096, RANGE)],
      ['a short range inside', one(RANGE, 4096)],
      ['past the end', one(11 * RANGE, RANGE)],
      ['the last range too long', one(10 * RANGE, RANGE)],
      ['width not whole blocks', one(0, 1000, 1000)],
      ['width past the bound', one(0, 32 * 2 ** 20, 32 * 2 ** 20)],
    ];
    const nine = diskScrubBody(3, {
      ranges: Array.from({ length: 9 }, (_, i) => ({ offsetBytes: i * RANGE, lengthBytes: RANGE, crc32c: 0 })),
      passEnd: false,
      rangeBytes: RANGE,
    });
    bad.push(['nine ranges', nine]);
    const flags = Buffer.from(one(0, RANGE));
    flags.writeUInt32LE(6, 12);
    bad.push(['unknown flags', flags]);
    for (const [what, body] of bad) {
      assert.throws(
        () => parseDiskScrub(body, DISK),
        (e: unknown) => isRemusError(e) && e.code === ErrorCode.PROTOCOL,
        what,
      );
    }
  });

  it('51.19 the backup: a pass verifies; a range twice or a short pass is refused; one that differs is named', () => {
    const primary = memDisk(2);
    const crc = (off: number): number => loadAddon().crc32c(primary.subarray(off, Math.min(DISK, off + RANGE)));
    const range = (r: number) => ({
      offsetBytes: r * RANGE,
      lengthBytes: Math.min(RANGE, DISK - r * RANGE),
      crc32c: crc(r * RANGE),
    });
    const run = (backupBytes: Uint8Array, picks: Array<{ ranges: number[]; passEnd: boolean }>) => {
      const target = new MemDiskTarget(DISK);
      target.bytes.set(backupBytes);
      const events: Array<[string, Record<string, unknown>]> = [];
      const b = new Backup(
        new VirtualClock(),
        {
          pageCountMax: 1 << 20,
          batchPagesMax: 256,
          replicaFor: (h) => new MemReplica(h.pageCount, target, true, 4096),
        },
        { event: (name, d) => events.push([name, d]) },
      );
      const link = new TapLink();
      b.attach(link);
      link.rec(Rec.HELLO, diskHello(DISK));
      link.rec(Rec.DISK_SYNC_END, diskSyncEndBody(0));
      fullCheckpoint(link, () => {
        const p = picks[0];
        link.rec(
          Rec.DISK_SCRUB,
          diskScrubBody(1, { ranges: p.ranges.map(range), passEnd: p.passEnd, rangeBytes: RANGE }),
        );
      });
      const error = link.sent.find((r) => r.type === Rec.ERROR);
      return { b, link, events, error: error ? String(JSON.parse(error.body.toString()).message) : null };
    };
    const all = Array.from({ length: 11 }, (_, i) => i);
    // One checkpoint carrying 8 ranges cannot end an 11-range pass.
    const short = run(primary, [{ ranges: all.slice(0, 8), passEnd: true }]);
    assert.match(short.error ?? '', /a scrub pass ended with 8 of 11 ranges/);
    const twice = run(primary, [{ ranges: [1, 1], passEnd: false }]);
    assert.match(twice.error ?? '', /DISK_SCRUB range at 8192 twice in a pass/);
    const equal = run(primary, [{ ranges: all.slice(0, 8), passEnd: false }]);
    assert.equal(equal.error, null);
    assert.ok(
      equal.link.sent.some((r) => r.type === Rec.ACK),
      'equal ranges: committed',
    );
    assert.ok(!equal.events.some(([n]) => n === 'disk-verified'), 'not verified before the pass ends');
    const rotten = Uint8Array.from(primary);
    rotten[3 * RANGE + 5] ^= 0x10;
    const found = run(rotten, [{ ranges: [2, 3, 4], passEnd: false }]);
    assert.match(found.error ?? '', /the scrub found 1 range\(s\) .* \(first at 24576\)/);
    found.link.peerClosed();
    const next = new TapLink();
    found.b.attach(next);
    next.rec(Rec.HELLO, diskHello(DISK));
    const ack = parseJson(Rec.HELLO_ACK, next.sent.find((r) => r.type === Rec.HELLO_ACK)!.body, false).value;
    assert.deepEqual(ack.diskDiffers, [[3 * RANGE, RANGE]], 'the range found, for the next session to copy');
  });
});

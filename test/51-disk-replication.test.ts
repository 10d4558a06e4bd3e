// 51 disk replication: the disk records (hostile parsing), the backup's epoch buffer (applies
// only committed epochs, in order, bounded), the resync bitmap, and the primary's replicator
// (tags by barrier, resyncs exactly what the backup may lack). The seeded simulator (40)
// checks the same invariants under crashes; the demo (44) checks them across processes.
import { strict as assert } from 'node:assert';
import { Backup } from '../dom0/engine/backup';
import type { DiskLink } from '../dom0/ports';
import { BlockGenerations } from '../blktap/block-generations';
import { ReadTracker } from '../blktap/read-tracker';
import { loadAddon } from '../dom0/native';
import { EpochBuffer } from '../blktap/epoch-buffer';
import { EpochHeldDisk } from '../blktap/replica-disk';
import { DiskReplicator } from '../blktap/replicator';
import { ResyncBitmap } from '../blktap/resync-bitmap';
import { ErrorCode, isRemusError } from '../dom0/errors';
import {
  DW_FLUSH,
  DW_AT_ONCE,
  DW_FUA,
  DW_ZEROES,
  Rec,
  checkpointBegin,
  checkpointEnd,
  DS_ZEROES,
  diskSyncBody,
  diskSyncEndBody,
  diskSyncZeroesBody,
  diskWriteBody,
  diskRefsBody,
  parseDiskSync,
  parseDiskWrite,
  withEpoch,
} from '../dom0/protocol/records';
import { MemDiskTarget, MemReplica, VirtualClock } from './support/sim-world';
import { TapLink } from './support/tap-link';
import { diskHello, fullCheckpoint } from './support/disk-session';
import { DISK_BLOCK_BYTES } from '../dom0/limits';
import { BlockFile } from '../blktap/block-file';
import { RANGE_CRC_BYTES, RangeCrcs, rangeCrcBytesFor } from '../blktap/range-crcs';
import { ReplicaRangeCrcs } from '../blktap/replica-range-crcs';
import { Prng } from '../dom0/util/prng';
import { crc32cCombine, shiftFor } from '../blktap/crc-combine';
import { diskChecksum } from '../blktap/disk-source';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const isProto = (e: unknown): boolean => isRemusError(e, ErrorCode.PROTOCOL);
const DISK = 64 * DISK_BLOCK_BYTES;
const fill = (len: number, v: number): Buffer => Buffer.alloc(len, v);

/** A file disk of random bytes, its write generations and 1 MiB range CRCs (real timers); write(): a guest's 4 KiB. */
function rangedFileDisk(dir: string, sizeBytes: number) {
  const disk = BlockFile.create(path.join(dir, 'vm.disk'), sizeBytes);
  disk.write(0, randomBytes(sizeBytes));
  const gens = new BlockGenerations(sizeBytes);
  const clock = {
    defer: (f: () => void) => setImmediate(f),
    setTimer: (ms: number, f: () => void) => setTimeout(f, ms),
  };
  const ranges = new RangeCrcs(disk, gens, clock, RANGE_CRC_BYTES);
  const write = (off: number): void => {
    gens.beginWrite(off, 4096);
    disk.write(off, randomBytes(4096));
    gens.endWrite(off, 4096);
  };
  return { disk, gens, ranges, write };
}

describe('51 disk replication', () => {
  describe('51.1 records', () => {
    it('a write round-trips; zeroes and flushes carry no data', () => {
      const w = parseDiskWrite(diskWriteBody(7, 8192, 4096, DW_FUA, fill(4096, 3)), DISK);
      assert.deepEqual([w.epoch, w.offsetBytes, w.lengthBytes, w.flags, w.data![0]], [7, 8192, 4096, DW_FUA, 3]);
      const z = parseDiskWrite(diskWriteBody(7, 0, 1 << 20, DW_ZEROES, null), 1 << 21);
      assert.equal(z.data, null);
      assert.equal(parseDiskWrite(diskWriteBody(8, 0, 0, DW_FLUSH, null), DISK).flags, DW_FLUSH);
    });
    it('hostile bodies are protocol errors naming what is wrong', () => {
      const good = diskWriteBody(1, 4096, 4096, 0, fill(4096, 1));
      const mutate = (f: (b: Buffer) => void): Buffer => {
        const b = Buffer.from(good);
        f(b);
        return b;
      };
      const cases: Array<[Buffer, RegExp]> = [
        [mutate((b) => b.writeUInt32LE(64, 20)), /unknown flags/],
        [mutate((b) => b.writeBigUInt64LE(BigInt(DISK), 8)), /past the end/],
        [mutate((b) => b.writeBigUInt64LE(100n, 8)), /sector-aligned/],
        [mutate((b) => b.writeUInt32LE(8192, 16)), /body of/],
        [good.subarray(0, 20), /malformed/],
      ];
      for (const [body, why] of cases)
        assert.throws(
          () => parseDiskWrite(body, DISK),
          (e: unknown) => isProto(e) && why.test((e as Error).message),
          String(why),
        );
      assert.throws(() => parseDiskSync(diskSyncBody(DISK - 4096, fill(8192, 1)), DISK), /past the end/);
      const sync = diskSyncBody(4096, fill(4096, 1));
      const syncMutated = (f: (b: Buffer) => void): Buffer => {
        const b = Buffer.from(sync);
        f(b);
        return b;
      };
      for (const [body, why] of [
        [syncMutated((b) => b.writeUInt32LE(1, 12)), /unknown flags/],
        [syncMutated((b) => b.writeUInt32LE(DS_ZEROES, 12)), /\(zeroes\) has a body of/],
        [syncMutated((b) => b.writeUInt32LE(0, 8)), /covers no octets/],
        [diskSyncZeroesBody(0, DISK).subarray(0, 12), /too short/],
      ] as Array<[Buffer, RegExp]>)
        assert.throws(
          () => parseDiskSync(body, DISK),
          (e: unknown) => isProto(e) && why.test((e as Error).message),
          String(why),
        );
      assert.deepEqual(parseDiskSync(diskSyncZeroesBody(8192, 4096), DISK), {
        offsetBytes: 8192,
        lengthBytes: 4096,
        data: null,
      });
    });
  });

  describe('51.2 the backup epoch buffer', () => {
    const w = (epoch: number, block: number, v: number, flags = 0) =>
      parseDiskWrite(diskWriteBody(epoch, block * 4096, 4096, flags, fill(4096, v)), DISK);
    it('applies epochs ≤ N at commit N, in arrival order, and keeps later ones', () => {
      const b = new EpochBuffer(1 << 20),
        t = new MemDiskTarget(DISK);
      b.add(w(1, 0, 1), null);
      b.add(w(1, 0, 2), null);
      b.add(w(2, 1, 3), null);
      assert.equal(t.bytes[0], 0, 'nothing applied before a commit');
      const r = b.commit(1, t);
      assert.deepEqual([r.writes, t.bytes[0], t.bytes[4096]], [2, 2, 0]);
      assert.equal(b.writes, 1);
      b.commit(2, t);
      assert.equal(t.bytes[4096], 3);
    });
    it('flushes the backup disk at commit only when the epoch asked for durability', () => {
      const b = new EpochBuffer(1 << 20),
        t = new MemDiskTarget(DISK);
      b.add(w(1, 0, 1), null);
      b.commit(1, t);
      assert.equal(t.flushes, 0);
      b.add(w(2, 0, 1, DW_FUA), 1);
      b.commit(2, t);
      b.add(parseDiskWrite(diskWriteBody(3, 0, 0, DW_FLUSH, null), DISK), 2);
      b.commit(3, t);
      assert.equal(t.flushes, 2);
    });
    it('refuses writes for committed or earlier epochs, and past its bound (typed, nothing applied)', () => {
      const b = new EpochBuffer(3 * 4096),
        t = new MemDiskTarget(DISK);
      b.add(w(5, 0, 1), 4);
      assert.throws(() => b.add(w(4, 0, 1), 3), /after one for epoch 5/);
      assert.throws(() => b.add(w(4, 0, 1), 4), /already committed/);
      b.add(w(5, 1, 1), 4);
      assert.throws(
        () => b.add(w(6, 2, 1), 4),
        (e: unknown) => isRemusError(e, ErrorCode.DISK_BUFFER_FULL),
      );
      assert.equal(t.bytes[8192], 0);
      assert.equal(b.discard().length, 2);
      assert.equal(b.bytes, 0);
    });
  });

  describe('51.3 the resync bitmap', () => {
    it('marks whole blocks, counts bytes, and yields coalesced runs', () => {
      const m = new ResyncBitmap(10 * 4096 + 512);
      m.markRange(4096 + 100, 10);
      m.markRange(2 * 4096, 4096 * 2);
      m.markRange(10 * 4096, 512);
      assert.equal(m.count, 4);
      assert.equal(m.bytes, 3 * 4096 + 512);
      assert.deepEqual(m.nextRun(0, 100), { first: 1, count: 3 });
      assert.deepEqual(m.nextRun(0, 2), { first: 1, count: 2 });
      assert.deepEqual(m.nextRun(4, 100), { first: 10, count: 1 });
      m.clear(10);
      assert.equal(m.nextRun(4, 100), null);
    });
  });

  describe('51.4 the primary replicator', () => {
    const tap = (): DiskLink & { sent: Array<{ type: number; body: Buffer }> } => {
      const sent: Array<{ type: number; body: Buffer }> = [];
      return { sent, backlogBytes: 0, send: (type, body) => sent.push({ type, body: Buffer.from(body) }) };
    };
    const src = (bytes: Uint8Array) => ({
      sizeBytes: bytes.length,
      read: (off: number, into: Uint8Array) => into.set(bytes.subarray(off, off + into.length)),
    });

    it('tags writes with the next checkpoint until the disk barrier moves the tag', () => {
      const c = new VirtualClock();
      const r = new DiskReplicator(src(new Uint8Array(DISK)), c, { unackedBytesMax: 1 << 20, inSync: true });
      const l = tap();
      let ready = false;
      r.connect(
        l,
        5,
        { continues: true, differing: [] },
        () => {
          ready = true;
        },
        () => assert.fail('no overflow'),
      );
      c.runUntil(10);
      assert.ok(ready);
      assert.equal(l.sent.at(-1)!.type, Rec.DISK_SYNC_END, 'in sync: an empty copy');
      r.onWrite(0, fill(4096, 1), false);
      r.barrier(5);
      r.onWrite(4096, fill(4096, 2), true);
      const tags = l.sent.filter((s) => s.type === Rec.DISK_WRITE).map((s) => parseDiskWrite(s.body, DISK));
      assert.deepEqual(
        tags.map((t) => [t.epoch, t.flags]),
        [
          [5, DW_AT_ONCE],
          [6, DW_FUA],
        ],
        "the first checkpoint's writes go at once; the next epoch's are held",
      );
    });

    it('a lost session resyncs exactly the unacknowledged and the later writes', () => {
      const c = new VirtualClock();
      const disk = new Uint8Array(DISK);
      const r = new DiskReplicator(src(disk), c, { unackedBytesMax: 1 << 20, inSync: true });
      r.connect(
        tap(),
        1,
        { continues: true, differing: [] },
        () => {},
        () => {},
      );
      c.runUntil(5);
      r.onWrite(0, fill(4096, 1), false); // epoch 1, acked
      r.barrier(1);
      r.onWrite(4096, fill(8192, 2), false); // epoch 2, never acked: 2 blocks
      r.acked(1);
      r.disconnect();
      r.onWrite(10 * 4096, fill(4096, 3), false); // while no backup
      assert.deepEqual([r.bitmap.count, r.bitmap.bytes], [3, 3 * 4096]);
      const l = tap();
      r.connect(
        l,
        3,
        { continues: true, differing: [] },
        () => {},
        () => {},
      );
      c.runUntil(20);
      const copied = l.sent
        .filter((s) => s.type === Rec.DISK_SYNC)
        .reduce((a, s) => a + parseDiskSync(s.body, DISK).lengthBytes, 0);
      assert.equal(copied, 3 * 4096, 'reprotection copies the changed blocks only');
      assert.equal(r.bitmap.count, 0);
      r.disconnect(); // before any ack: the copy may not have arrived
      assert.equal(r.bitmap.count, 3);
    });
    it('a session that ends during its disk copy stops the checksum read-ahead (nothing keeps running)', async () => {
      const c = new VirtualClock();
      const r = new DiskReplicator(src(new Uint8Array(DISK)), c, {
        unackedBytesMax: 1 << 20,
        inSync: false,
        rangeCrcBytes: 4096,
      });
      // The read-ahead's steps are promise continuations: they run between the clock's turns.
      const run = async (ms: number): Promise<void> => {
        for (let t = 0; t < ms; t += 10) {
          c.runUntil(c.now() + 10);
          await new Promise((resolve) => setImmediate(resolve));
        }
      };
      r.connect(
        tap(),
        1,
        { continues: false },
        () => {},
        () => {},
      );
      r.prepareChecksum();
      await run(30);
      assert.ok(c.pendingEvents > 0, 'the copy (the read-ahead waits for its end) runs');
      r.disconnect(); // SIGTERM during the copy: CI's 44.7 hung here, the read-ahead's timer alive
      await run(100);
      assert.equal(c.pendingEvents, 0, 'nothing left to run after the session ended');
    });

    it('the disk copy gives the checksum the ranges it read; one written across its read is read again', async () => {
      const c = new VirtualClock();
      const bytes = new Uint8Array(DISK).map((_, i) => (i * 7) & 0xff);
      const RANGE = 16 * 1024; // four per 64 KiB chunk
      let r: DiskReplicator | null = null;
      const source = {
        sizeBytes: DISK,
        read: (off: number, into: Uint8Array) => {
          into.set(bytes.subarray(off, off + into.length));
          if (off === 2 * 65536) {
            // The guest writes range 9 (in this chunk) while the copy reads it: begun, not ended.
            r!.generations.beginWrite(9 * RANGE, 4096);
            bytes[9 * RANGE] ^= 0xff;
          }
        },
      };
      r = new DiskReplicator(source, c, {
        unackedBytesMax: 1 << 20,
        inSync: false,
        rangeCrcBytes: RANGE,
        syncChunkBytes: 65536,
      });
      let ready = false;
      r.connect(
        tap(),
        1,
        { continues: false },
        () => (ready = true),
        () => {},
      );
      r.prepareChecksum();
      c.runUntil(1000);
      assert.ok(ready, 'the copy ended');
      r.generations.endWrite(9 * RANGE, 4096);
      const ranges = DISK / RANGE;
      assert.equal(r.stats().checksumRanges.rangesTakenFromCopy, ranges - 1, 'all but the one written across its read');
      const sum = await r.checksum();
      assert.equal(sum.crc32c, loadAddon().crc32c(bytes), 'the checksum is of the disk as it is');
      assert.equal(r.stats().checksumRanges.rangesReadAtChecksum, 1, 'only range 9 was read again');
      r.disconnect();
    });

    it("a backend that does not move generations (Xen's worker): a write heard of makes its range stale", async () => {
      const c = new VirtualClock();
      const bytes = new Uint8Array(DISK).map((_, i) => (i * 5) & 0xff);
      const RANGE = 16 * 1024;
      const source = {
        sizeBytes: DISK,
        read: (off: number, into: Uint8Array) => into.set(bytes.subarray(off, off + into.length)),
      };
      const r = new DiskReplicator(source, c, {
        unackedBytesMax: 1 << 20,
        inSync: false,
        rangeCrcBytes: RANGE,
        syncChunkBytes: 65536,
        backendMovesGenerations: false,
      });
      // The worker writes the disk itself; the replicator hears of it afterwards (onWrite).
      const workerWrites = (off: number, value: number): void => {
        bytes.fill(value, off, off + 4096);
        r.onWrite(off, bytes.subarray(off, off + 4096), false);
      };
      r.connect(
        tap(),
        1,
        { continues: false },
        () => {},
        () => {},
      );
      c.runUntil(1000);
      assert.equal(r.stats().checksumRanges.rangesTakenFromCopy, DISK / RANGE, 'the copy read every range');
      workerWrites(3 * RANGE, 1); // after the copy read range 3
      let sum = await r.checksum();
      assert.equal(sum.crc32c, loadAddon().crc32c(bytes), 'range 3 was read again');
      assert.equal(r.stats().checksumRanges.rangesReadAtChecksum, 1);
      r.barrier(1);
      r.acked(1);
      workerWrites(7 * RANGE, 2); // a later session's checksum must not reuse range 7's CRC
      sum = await r.checksum();
      assert.equal(sum.crc32c, loadAddon().crc32c(bytes), 'range 7 was read again');
      assert.equal(r.stats().checksumRanges.rangesReadAtChecksum, 2);
      r.disconnect();
    });

    it("the first checkpoint's writes (copy, preparation) are off the unacked bound, as blocks until its ack", () => {
      const c = new VirtualClock();
      const r = new DiskReplicator(src(new Uint8Array(DISK)), c, {
        unackedBytesMax: 8192,
        inSync: true,
        syncChunkBytes: 4096,
      });
      r.bitmap.markRange(0, 8 * 4096); // 8 blocks to copy, one per turn
      let overflow = '';
      const l = tap();
      r.connect(
        l,
        1,
        { continues: true, differing: [] },
        () => {},
        (why) => (overflow = why),
      );
      for (let b = 20; b < 24; b++) r.onWrite(b * 4096, fill(4096, b), false); // 16 KiB: twice the bound
      c.runUntil(50); // the copy ends; a continued session prepares its first checkpoint meanwhile
      for (let b = 24; b < 28; b++) r.onWrite(b * 4096, fill(4096, b), false); // twice the bound again
      assert.equal(overflow, '', 'the backup applies them as they come: no bound');
      const writes = l.sent.filter((s) => s.type === Rec.DISK_WRITE).map((s) => parseDiskWrite(s.body, DISK));
      assert.ok(writes.length === 8 && writes.every((w) => w.flags === DW_AT_ONCE && w.epoch === 1));
      r.barrier(1); // the first checkpoint: from here writes are held until their ack
      r.onWrite(30 * 4096, fill(8192, 1), false);
      r.onWrite(32 * 4096, fill(4096, 1), false);
      assert.match(overflow, /unacknowledged/);
      r.disconnect(); // no ack: the copy and every write of epochs 1 and 2 are marked again
      assert.equal(r.bitmap.count, 8 + 4 + 4 + 3);
    });

    it('a backup whose disk does not continue gets a full copy; overflow is reported', () => {
      const c = new VirtualClock();
      const r = new DiskReplicator(src(new Uint8Array(DISK)), c, {
        unackedBytesMax: 8192,
        inSync: true,
        syncChunkBytes: 16 * 4096,
      });
      const l = tap();
      let overflow = '';
      r.connect(
        l,
        1,
        { continues: false },
        () => {},
        (why) => {
          overflow = why;
        },
      );
      c.runUntil(50);
      assert.equal(l.sent.filter((s) => s.type === Rec.DISK_SYNC).length, 4);
      r.barrier(1);
      r.onWrite(0, fill(4096, 1), false);
      assert.equal(overflow, '');
      r.onWrite(0, fill(8192, 1), false);
      assert.match(overflow, /unacknowledged/);
    });
    it('zero runs go as 16-octet ranges; the backup zeroes what is not zero (stale image), not a fresh one', () => {
      const bytes = new Uint8Array(DISK);
      bytes.set(fill(3 * 4096, 7), 20 * 4096); // data in blocks 20..22 of 64; the rest a thin disk's zeros
      const c = new VirtualClock();
      const r = new DiskReplicator(src(bytes), c, {
        unackedBytesMax: 1 << 20,
        inSync: false,
        syncChunkBytes: 16 * 4096,
      });
      const l = tap();
      r.connect(
        l,
        1,
        { continues: false },
        () => {},
        () => {},
      );
      c.runUntil(50);
      const syncs = l.sent.filter((x) => x.type === Rec.DISK_SYNC).map((x) => parseDiskSync(x.body, DISK));
      assert.deepEqual(
        syncs.map((x) => [x.offsetBytes / 4096, x.lengthBytes / 4096, x.data !== null]),
        [
          [0, 16, false],
          [16, 16, true],
          [32, 16, false],
          [48, 16, false],
        ],
      );
      const wire = l.sent.filter((x) => x.type === Rec.DISK_SYNC).reduce((a, x) => a + x.body.length, 0);
      assert.equal(wire, 4 * 16 + 16 * 4096, 'zero runs cost their 16-octet header only');
      assert.deepEqual([r.stats().resyncCopiedBytes, r.stats().resyncZeroBytes], [DISK, 48 * 4096]);
      const apply = (t: MemDiskTarget): number => {
        let zeroed = 0;
        const zero = t.zero.bind(t);
        t.zero = (off, len) => {
          zeroed += len;
          zero(off, len);
        };
        const disk = new EpochHeldDisk(t);
        for (const x of syncs) x.data ? disk.write(x.offsetBytes, x.data) : disk.zeroSync(x.offsetBytes, x.lengthBytes);
        assert.deepEqual(t.bytes, bytes, 'the backup equals the primary');
        return zeroed;
      };
      assert.equal(apply(new MemDiskTarget(DISK)), 0, 'a fresh (sparse) image is not written where it reads as zeros');
      const stale = new MemDiskTarget(DISK);
      stale.bytes.set(fill(4096, 9), 40 * 4096); // an earlier session's block where the primary has zeros
      assert.equal(apply(stale), 16 * 4096, 'a stale image: the zero run holding old data is zeroed, no other');
    });
  });

  describe('51.6 read tracking is exact', () => {
    const setup = () => {
      const disk = new Uint8Array(DISK);
      for (let b = 0; b < 64; b++) disk.fill(b + 1, b * 4096, (b + 1) * 4096);
      const gens = new BlockGenerations(DISK);
      const t = new ReadTracker(
        { sizeBytes: DISK, read: (off, into) => into.set(disk.subarray(off, off + into.length)) },
        gens,
        16,
      );
      const page = (b: number): Uint8Array => Uint8Array.from(disk.subarray(b * 4096, (b + 1) * 4096));
      const read = (b: number, epoch: number): void =>
        t.onBlockRead(b, loadAddon().crc32c(page(b)), gens.get(b), epoch);
      return { disk, gens, t, page, read };
    };
    it('a page equal to a block read in an epoch ≤ N goes as that block, for any pfn', () => {
      const { t, page, read } = setup();
      read(3, 5);
      assert.deepEqual(t.match(page(3), 5), { offsetBytes: 3 * 4096, crc32c: loadAddon().crc32c(page(3)) });
      assert.equal(t.match(page(4), 5), null, 'an untracked block');
    });
    it('a batch of pages: one reference per page that matches, in order; onRangeRead tracks whole blocks only', () => {
      const { t, page, gens } = setup();
      const pages = new Uint8Array(4 * 4096);
      [7, 2, 7, 40].forEach((b, i) => pages.set(page(b), i * 4096));
      assert.equal(t.matchPages(pages, 5), null, 'nothing tracked yet');
      const range = new Uint8Array(3 * 4096); // from 100 bytes before block 7: blocks 7 and 8 whole
      range.set(page(6).subarray(4096 - 100), 0);
      range.set(page(7), 100);
      range.set(page(8), 4196);
      range.set(page(9).subarray(0, 4096 - 100), 8292);
      t.onRangeRead(7 * 4096 - 100, range, [gens.get(6), gens.get(7), gens.get(8), gens.get(9)], 5);
      assert.equal(t.stats().tracked, 2, 'the partial blocks 6 and 9 are not tracked');
      const refs = t.matchPages(pages, 5);
      assert.deepEqual(
        refs!.map((r) => r?.offsetBytes ?? null),
        [7 * 4096, null, 7 * 4096, null],
      );
      const crcs = new Uint32Array(4);
      loadAddon().crc32cPages(pages, crcs);
      assert.deepEqual(
        [...crcs],
        [0, 1, 2, 3].map((i) => loadAddon().crc32c(pages.subarray(i * 4096, (i + 1) * 4096))),
        'batch CRCs equal one-by-one CRCs',
      );
      assert.throws(() => loadAddon().crc32cPages(pages.subarray(1), crcs), RangeError);
      assert.throws(() => loadAddon().crc32cPages(pages, new Uint16Array(4) as unknown as Uint32Array), TypeError);
    });
    it('not for a checkpoint before the read completed', () => {
      const { t, page, read } = setup();
      read(3, 6);
      assert.equal(t.match(page(3), 5), null);
    });
    it('not once a write to the block began (even before it is forwarded)', () => {
      const { t, page, read, gens, disk } = setup();
      read(3, 5);
      const old = page(3);
      gens.beginWrite(3 * 4096, 4096);
      assert.equal(t.match(old, 5), null, 'write in flight');
      disk.fill(99, 3 * 4096, 4 * 4096);
      gens.endWrite(3 * 4096, 4096);
      assert.equal(t.match(old, 6), null, 'the block changed');
      assert.equal(t.stats().stale, 1);
    });
    it('not when the bytes differ (a CRC collision cannot pass), nor for a read across a write', () => {
      const { t, page, gens, disk } = setup();
      t.onBlockRead(3, loadAddon().crc32c(page(3)), gens.get(3), 5);
      disk[3 * 4096 + 7] ^= 1; // our disk changed under an unchanged generation (cannot happen, but must not pass)
      assert.equal(t.match(Uint8Array.from(page(3)).fill(4, 7, 8), 5), null);
      t.onBlockRead(9, 0, 1, 5); // odd generation: a write was in flight during the read
      assert.equal(t.stats().tracked, 1);
    });
    it('stays within its bound, oldest first', () => {
      const { t, read, page } = setup();
      for (let b = 0; b < 20; b++) read(b, 1);
      assert.equal(t.stats().tracked, 16);
      assert.equal(t.match(page(0), 1), null);
      assert.notEqual(t.match(page(19), 1), null);
    });
  });

  describe('51.5 the backup enforces the disk session rules', () => {
    const hello = diskHello;
    const start = (replicaDisk: number | null, helloDisk: number) => {
      let replica!: MemReplica;
      const b = new Backup(new VirtualClock(), {
        pageCountMax: 1 << 20,
        batchPagesMax: 256,
        replicaFor: (h) => (replica = new MemReplica(h.pageCount, replicaDisk ? new MemDiskTarget(replicaDisk) : null)),
      });
      const link = new TapLink();
      b.attach(link);
      link.rec(Rec.HELLO, hello(helloDisk));
      return {
        b,
        link,
        replica: () => replica,
        error: () => {
          const e = link.sent.find((r) => r.type === Rec.ERROR);
          return e ? (JSON.parse(e.body.toString()) as { code: string; message: string }) : null;
        },
      };
    };
    it('a disk of another size (or none) is refused at the handshake', () => {
      assert.equal(start(DISK, DISK * 2).error()?.code, ErrorCode.HANDSHAKE);
      assert.match(start(null, DISK).error()!.message, /give the backup --disk/);
      assert.equal(start(DISK, DISK).error(), null);
    });
    it('no checkpoint before DISK_SYNC_END, and DISK_SYNC_END must count what arrived', () => {
      const s = start(DISK, DISK);
      s.link.rec(Rec.CHECKPOINT_BEGIN, checkpointBegin(1, true));
      assert.match(s.error()!.message, /before the disk copy ended/);
      const t = start(DISK, DISK);
      t.link.rec(Rec.DISK_SYNC, diskSyncBody(0, fill(4096, 9)));
      t.link.rec(Rec.DISK_SYNC_END, diskSyncEndBody(8192));
      assert.match(t.error()!.message, /8192 octets were copied; 4096 arrived/);
    });
    it('writes wait for their checkpoint; a failover discards the uncommitted ones', () => {
      const s = start(DISK, DISK);
      s.link.rec(Rec.DISK_SYNC, diskSyncBody(0, fill(4096, 9)));
      s.link.rec(Rec.DISK_SYNC_END, diskSyncEndBody(4096));
      s.link.rec(Rec.DISK_WRITE, diskWriteBody(1, 4096, 4096, 0, fill(4096, 1)));
      s.link.rec(Rec.DISK_WRITE, diskWriteBody(2, 8192, 4096, 0, fill(4096, 2)));
      const disk = (): MemDiskTarget => s.replica().diskTarget!;
      assert.deepEqual([disk().bytes[0], disk().bytes[4096]], [9, 0], 'sync applied at once, writes held');
      fullCheckpoint(s.link);
      assert.equal(s.error(), null);
      assert.deepEqual([disk().bytes[4096], disk().bytes[8192]], [1, 0], 'commit 1 applied epoch 1 only');
      s.b.failover('test');
      assert.equal(s.b.counters.diskDiscardedWrites, 1, 'epoch 2 was discarded');
      assert.equal(disk().bytes[8192], 0);
    });

    it("AT_ONCE writes go as they arrive, in order with the copy: the first checkpoint's, before any commit", () => {
      const at = (epoch: number, off: number, v: number) => diskWriteBody(epoch, off, 4096, DW_AT_ONCE, fill(4096, v));
      const s = start(DISK, DISK);
      s.link.rec(Rec.DISK_SYNC, diskSyncBody(0, fill(4096, 9)));
      s.link.rec(Rec.DISK_WRITE, at(1, 0, 1)); // after the copy of block 0
      s.link.rec(Rec.DISK_SYNC, diskSyncBody(4096, fill(4096, 8)));
      const disk = (): MemDiskTarget => s.replica().diskTarget!;
      assert.deepEqual([disk().bytes[0], disk().bytes[4096]], [1, 8], 'in arrival order, at once');
      s.link.rec(Rec.DISK_SYNC_END, diskSyncEndBody(8192));
      s.link.rec(Rec.DISK_WRITE, at(1, 8192, 3)); // a continued session's preparation
      assert.deepEqual([s.error(), disk().bytes[8192]], [null, 3], 'after the copy too, until the first commit');
      s.link.rec(Rec.DISK_WRITE, diskWriteBody(2, 12288, 4096, 0, fill(4096, 4)));
      assert.deepEqual([s.error(), disk().bytes[12288]], [null, 0], 'the next epoch waits for its commit');
      s.link.rec(Rec.DISK_WRITE, diskWriteBody(1, 12288, 4096, 0, fill(4096, 4)));
      assert.match(s.error()!.message, /epoch 1 is held, but that epoch's writes went at once/);

      const rules: Array<[string, (t: ReturnType<typeof start>) => void, RegExp]> = [
        [
          'held in the copy',
          (t) => t.link.rec(Rec.DISK_WRITE, diskWriteBody(1, 0, 4096, 0, fill(4096, 1))),
          /not AT_ONCE/,
        ],
        ['two epochs', (t) => [1, 2].forEach((e) => t.link.rec(Rec.DISK_WRITE, at(e, 0, e))), /after one for epoch 1/],
        [
          'another first checkpoint',
          (t) => {
            t.link.rec(Rec.DISK_WRITE, at(1, 0, 1));
            t.link.rec(Rec.DISK_SYNC_END, diskSyncEndBody(0));
            t.link.rec(Rec.CHECKPOINT_BEGIN, checkpointBegin(2, true));
          },
          /first checkpoint 2 is not the epoch 1 of its AT_ONCE writes/,
        ],
        [
          'after a commit',
          (t) => {
            t.link.rec(Rec.DISK_SYNC_END, diskSyncEndBody(0));
            fullCheckpoint(t.link);
            t.link.rec(Rec.DISK_WRITE, at(2, 0, 2));
          },
          /AT_ONCE DISK_WRITE for epoch 2 after checkpoint 1 committed/,
        ],
      ];
      for (const [what, send, error] of rules) {
        const t = start(DISK, DISK);
        send(t);
        assert.match(t.error()?.message ?? '', error, what);
      }
    });

    const committedSession = () => {
      const s = start(DISK, DISK);
      s.link.rec(Rec.DISK_SYNC, diskSyncBody(0, fill(4096, 9)));
      s.link.rec(Rec.DISK_SYNC_END, diskSyncEndBody(4096));
      fullCheckpoint(s.link);
      assert.equal(s.b.committedEpoch, 1);
      return s;
    };
    const refCheckpoint = (s: ReturnType<typeof start>, crc: number) => {
      s.link.rec(Rec.CHECKPOINT_BEGIN, checkpointBegin(2, false));
      s.link.rec(Rec.DISK_WRITE, diskWriteBody(2, 4096, 4096, 0, fill(4096, 5)));
      s.link.rec(Rec.DISK_REFS, diskRefsBody(2, [{ pfn: 100, offsetBytes: 4096, crc32c: crc }]));
      s.link.rec(Rec.DEVICE_STATE, withEpoch(2, Buffer.from('{}')));
      s.link.rec(Rec.CHECKPOINT_END, checkpointEnd(2, 1));
    };
    it('a disk reference rebuilds the page from the disk as of its checkpoint', () => {
      const s = committedSession();
      refCheckpoint(s, loadAddon().crc32c(fill(4096, 5)));
      assert.equal(s.error(), null);
      assert.equal(s.b.committedEpoch, 2);
      assert.ok(Buffer.from(s.replica().image.page(100)).equals(fill(4096, 5)), 'the block after epoch 2 writes');
    });
    it('a reference whose block differs is ERR_DISK_REF_MISMATCH; the next session copies the disk whole', () => {
      const s = committedSession();
      refCheckpoint(s, loadAddon().crc32c(fill(4096, 9)));
      assert.equal(s.error()?.code, ErrorCode.DISK_REF_MISMATCH);
      assert.match(s.error()!.message, /page 100 was sent as disk block 1/);
      assert.equal(s.b.committedEpoch, null, 'nothing to fail over to: the replica is no checkpoint');
      const again = new TapLink();
      s.b.attach(again);
      again.rec(Rec.HELLO, hello(DISK));
      assert.equal(JSON.parse(again.sent.find((r) => r.type === Rec.HELLO_ACK)!.body.toString()).diskContinues, false);
    });
  });

  it('51.7 a replica image over an old one: zeros, old blocks unlinked aside, a symbolic link refused', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'remusdb-51-'));
    try {
      const file = path.join(dir, 'vm.disk');
      fs.writeFileSync(file, Buffer.alloc(4 << 20, 0x5a)); // an old replica, its blocks allocated
      const disk = BlockFile.create(file, 1 << 20);
      const back = new Uint8Array(1 << 20);
      disk.read(0, back);
      disk.close();
      assert.ok(
        back.every((b) => b === 0),
        'none of the old image shows through',
      );
      assert.equal(fs.statSync(file).size, 1 << 20);
      for (let i = 0; i < 50 && fs.readdirSync(dir).length > 1; i++) await new Promise((r) => setTimeout(r, 20));
      assert.deepEqual(fs.readdirSync(dir), ['vm.disk'], 'the old image was unlinked');
      const link = path.join(dir, 'link.disk');
      fs.symlinkSync(file, link);
      assert.throws(
        () => BlockFile.create(link, 1 << 20),
        (e) => isRemusError(e, ErrorCode.IO),
      );
      assert.equal(fs.statSync(file).size, 1 << 20, 'the link target untouched');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('51.8 the backup checksums a file disk off the event loop: the same CRC32C, timers run meanwhile', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'remusdb-51-'));
    try {
      const SIZE = 9 * 1024 * 1024 + 4096; // ranges of 1 MiB and a short last one
      const file = path.join(dir, 'vm.disk');
      const disk = BlockFile.create(file, SIZE);
      disk.write(0, randomBytes(SIZE));
      let ticks = 0;
      const ticker = setInterval(() => ticks++, 0);
      const crc = await new EpochHeldDisk(disk).checksum();
      clearInterval(ticker);
      assert.equal(crc, diskChecksum(disk), 'the same CRC32C as the synchronous read');
      assert.ok(ticks >= 1, 'timers ran while the disk was read');
      disk.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('51.9 the whole-disk CRC32C from per-range CRCs: ranges written since they were read are read again', async () => {
    for (const [a, b] of [
      [1, 1],
      [4096, 1 << 20],
      [(1 << 20) + 5, 7],
    ]) {
      const x = randomBytes(a),
        y = randomBytes(b);
      const crc32c = loadAddon().crc32c;
      assert.equal(crc32cCombine(crc32c(x), crc32c(y), shiftFor(b)), crc32c(Buffer.concat([x, y])));
    }
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'remusdb-51-'));
    try {
      const SIZE = 5 * RANGE_CRC_BYTES + 8192; // a short last range
      const { disk, gens, ranges, write } = rangedFileDisk(dir, SIZE);
      const filled = async (n: number): Promise<void> => {
        while (ranges.counters.rangesFilled < n) await new Promise((r) => setTimeout(r, 1));
      };
      gens.beginWrite(3 * RANGE_CRC_BYTES, 4096); // a write in flight: range 3 is not kept
      ranges.fill();
      await filled(ranges.ranges - 1);
      ranges.stop(); // the checkpoint came: what is written from here on is read at the checksum
      await new Promise((r) => setTimeout(r, 30));
      assert.equal(ranges.counters.rangesFilled, ranges.ranges - 1, 'every range but the one being written');
      disk.write(3 * RANGE_CRC_BYTES, randomBytes(4096));
      gens.endWrite(3 * RANGE_CRC_BYTES, 4096);
      write(RANGE_CRC_BYTES + 100 * 4096); // range 1, after it was read
      write(5 * RANGE_CRC_BYTES); // the short last range
      const sum = await ranges.checksum();
      assert.equal(sum.crc32c, diskChecksum(disk), 'equals reading the whole disk');
      const whole = Buffer.alloc(SIZE);
      disk.read(0, whole);
      const each = Array.from({ length: ranges.ranges }, (_, r) =>
        loadAddon().crc32c(whole.subarray(r * RANGE_CRC_BYTES, (r + 1) * RANGE_CRC_BYTES)),
      );
      assert.deepEqual(Array.from(sum.rangeCrcs), each, "DISK_VERIFY's table: each range's CRC32C");
      assert.equal(ranges.counters.rangesReadAtChecksum, 3, 'ranges 1, 3 and 5 were read again, no other');
      ranges.fill(); // a running fill keeps written ranges current: the next checksum reads nothing
      write(2 * RANGE_CRC_BYTES);
      await filled(ranges.ranges - 1 + 1);
      assert.equal((await ranges.checksum()).crc32c, diskChecksum(disk));
      assert.equal(ranges.counters.rangesReadAtChecksum, 3, 'nothing stale at this checksum');
      disk.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('51.9c a catch-up reads what the read-ahead missed; the checksum then reads only later writes', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'remusdb-51-'));
    try {
      const { disk, gens, ranges, write } = rangedFileDisk(dir, 6 * RANGE_CRC_BYTES);
      ranges.fill();
      while (ranges.counters.rangesFilled < ranges.ranges) await new Promise((r) => setTimeout(r, 1));
      ranges.stop(); // a read-ahead that fell behind: these writes are not read before the checkpoint
      for (const r of [0, 2, 4]) write(r * RANGE_CRC_BYTES + 8192);
      gens.beginWrite(5 * RANGE_CRC_BYTES, 4096); // in flight: a read now would not make it current
      assert.equal(await ranges.catchUp(), 3, 'ranges 0, 2 and 4');
      assert.equal(ranges.counters.rangesReadAtCatchUp, 3);
      disk.write(5 * RANGE_CRC_BYTES, randomBytes(4096));
      gens.endWrite(5 * RANGE_CRC_BYTES, 4096);
      write(3 * RANGE_CRC_BYTES); // after the catch-up, before the checkpoint
      const sum = await ranges.checksum();
      assert.equal(sum.crc32c, diskChecksum(disk), 'equals reading the whole disk');
      assert.equal(ranges.counters.rangesReadAtChecksum, 2, 'ranges 3 and 5 only');
      assert.equal(await ranges.catchUp(), 0, 'nothing left to catch up');
      disk.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("51.9b a table's ranges follow the disk's size: a write since its read costs 64 KiB, not 1 MiB", async () => {
    assert.equal(rangeCrcBytesFor(16 * 2 ** 20), 64 * 1024);
    assert.equal(rangeCrcBytesFor(16 * 2 ** 30), 64 * 1024, 'up to 16 GiB');
    assert.equal(rangeCrcBytesFor(16 * 2 ** 30 + 4096), 128 * 1024);
    assert.equal(rangeCrcBytesFor(64 * 2 ** 30), 256 * 1024);
    assert.equal(rangeCrcBytesFor(256 * 2 ** 30), RANGE_CRC_BYTES);
    assert.equal(rangeCrcBytesFor(4 * 2 ** 40), RANGE_CRC_BYTES, 'never past a resync run');
    const SIZE = 16 * 2 ** 20;
    const bytes = new Uint8Array(SIZE);
    new Prng(519).fill(bytes);
    const source = {
      sizeBytes: SIZE,
      read: (o: number, into: Uint8Array) => into.set(bytes.subarray(o, o + into.length)),
    };
    const gens = new BlockGenerations(SIZE);
    const clock = {
      defer: (f: () => void) => setImmediate(f),
      setTimer: (ms: number, f: () => void) => setTimeout(f, ms),
    };
    const ranges = new RangeCrcs(source, gens, clock);
    assert.equal(ranges.rangeBytes, 64 * 1024);
    ranges.fill();
    while (ranges.counters.rangesFilled < ranges.ranges) await new Promise((r) => setTimeout(r, 1));
    ranges.stop();
    gens.beginWrite(5 * 2 ** 20, 4096);
    bytes[5 * 2 ** 20] ^= 1;
    gens.endWrite(5 * 2 ** 20, 4096);
    const sum = (await ranges.checksum()) as { crc32c: number };
    assert.equal(sum.crc32c, loadAddon().crc32c(bytes), 'the whole disk');
    assert.equal(
      ranges.counters.rangesReadAtChecksum,
      1,
      `one 64 KiB range read again (${JSON.stringify(ranges.counters)})`,
    );
    const backup = new ReplicaRangeCrcs(SIZE);
    assert.equal(backup.rangeBytes, ranges.rangeBytes, "the backup's table cuts the disk the same way");
  });

  it('51.10 the backup reads only ranges changed since the resync wrote them (in memory or a file)', async () => {
    const SIZE = 4 * RANGE_CRC_BYTES + 8192; // a short last range
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'remusdb-51-'));
    const inMemory = (): MemDiskTarget => new MemDiskTarget(SIZE);
    const inFile = (): BlockFile => BlockFile.create(path.join(dir, 'replica.disk'), SIZE);
    try {
      for (const make of [inMemory, inFile]) {
        const target = make();
        target.write(0, fill(SIZE, 0x5a)); // an earlier life's image under the copy
        await backupChecksumsChanges(target, SIZE, make === inFile);
        if (target instanceof BlockFile) target.close();
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** Resolves once every write the disk queued is on its target. */
function writesDone(disk: EpochHeldDisk): Promise<void> {
  return new Promise((resolve, reject) => {
    if (!disk.afterWrites((e) => (e ? reject(e) : resolve()))) resolve();
  });
}

/** Test 51.10 on one target: a full resync, then writes committed and applied; the checksums. */
async function backupChecksumsChanges(target: MemDiskTarget | BlockFile, SIZE: number, off: boolean): Promise<void> {
  const primary = new Uint8Array(SIZE);
  primary.set(randomBytes(RANGE_CRC_BYTES), RANGE_CRC_BYTES); // range 1 data; 0, 2, 3 zeros
  primary.set(randomBytes(8192), 4 * RANGE_CRC_BYTES);
  const want = (): number =>
    diskChecksum({ sizeBytes: SIZE, read: (o, i) => i.set(primary.subarray(o, o + i.length)) });
  const disk = new EpochHeldDisk(target, RANGE_CRC_BYTES); // ranges as the runs below
  // The resync as the primary sends it: 1 MiB runs, zero runs as ranges, the last one partial.
  for (let o = 0; o < SIZE; o += RANGE_CRC_BYTES) {
    const piece = primary.subarray(o, Math.min(SIZE, o + RANGE_CRC_BYTES));
    if (piece.every((b) => b === 0)) disk.zeroSync(o, piece.length);
    else disk.write(o, piece);
  }
  assert.equal(disk.pendingBytes > 0, off, "a file's writes are queued for libuv's pool, memory's done at once");
  await writesDone(disk);
  assert.equal(disk.pendingBytes, 0);
  const first = disk.checksum();
  assert.equal(first instanceof Promise, off, 'a file is read off the event loop, memory at once');
  assert.equal(await first, want());
  assert.deepEqual(disk.rangeCrcs.counters, { rangesFromRecords: 5, rangesRead: 0 }, 'nothing read after a full copy');
  // Held writes committed later, and one applied before the first commit: their ranges only.
  const write = (epoch: number, o: number, len: number): void => {
    const data = randomBytes(len);
    primary.set(data, o);
    disk.hold(parseDiskWrite(diskWriteBody(epoch, o, len, 0, data), SIZE), null);
  };
  disk.holdFrom(1 << 24);
  write(1, 2 * RANGE_CRC_BYTES + 4096, 4096);
  write(2, RANGE_CRC_BYTES - 4096, 8192); // across ranges 0 and 1
  disk.commit(2);
  const z = parseDiskWrite(diskWriteBody(3, 3 * RANGE_CRC_BYTES, 4096, DW_ZEROES, null), SIZE);
  primary.fill(0, z.offsetBytes, z.offsetBytes + z.lengthBytes);
  disk.apply(z);
  await writesDone(disk);
  const now = new Uint8Array(SIZE);
  target.read(0, now);
  assert.deepEqual(now, primary, 'the backup equals the primary');
  assert.equal(await disk.checksum(), want());
  assert.equal(disk.rangeCrcs.counters.rangesRead, 4, 'ranges 0, 1, 2 and 3 were read, not range 4');
  assert.equal(await disk.checksum(), want(), 'and nothing at the next one');
  assert.equal(disk.rangeCrcs.counters.rangesRead, 4);
}

// 51.14–16 a disk check that fails repairs only what differs: the primary's DISK_VERIFY carries
// its ranges' CRCs, the backup names the ranges where its disk differs, and its next HELLO_ACKs
// carry them (diskDiffers) until a session commits; the primary copies them with its bitmap.
// Why: a crashed primary's disk, reused as the new backup's, holds writes it never forwarded,
// which no bitmap knows (test 77.4 met them); before, the whole disk was copied again.
import { strict as assert } from 'node:assert';
import { Backup } from '../dom0/engine/backup';
import { backupDiskOf } from '../dom0/engine/hello';
import { ErrorCode, isRemusError } from '../dom0/errors';
import { loadAddon } from '../dom0/native';
import { DISK_DIFFERING_RUNS_MAX } from '../dom0/limits';
import {
  Rec,
  diskSyncBody,
  diskSyncEndBody,
  diskVerifyBody,
  parseDiskVerify,
  parseJson,
} from '../dom0/protocol/records';
import { coarsenRangeCrcs, combineRangeCrcs } from '../blktap/crc-combine';
import { ReplicaRangeCrcs } from '../blktap/replica-range-crcs';
import { diskHello, fullCheckpoint } from './support/disk-session';
import { MemDiskTarget, MemReplica, VirtualClock } from './support/sim-world';
import { TapLink } from './support/tap-link';
import { Prng } from '../dom0/util/prng';

const DISK = 64 * 1024;

/** A table of range CRCs of a disk in memory. */
function table(bytes: Uint8Array, rangeBytes: number): { crc32c: number; rangeBytes: number; rangeCrcs: Uint32Array } {
  const crcs = new Uint32Array(Math.ceil(bytes.length / rangeBytes));
  for (let r = 0; r < crcs.length; r++)
    crcs[r] = loadAddon().crc32c(bytes.subarray(r * rangeBytes, (r + 1) * rangeBytes));
  return { crc32c: loadAddon().crc32c(bytes), rangeBytes, rangeCrcs: crcs };
}

function throwsCode(f: () => unknown, code: string, what: string): void {
  assert.throws(f, (e: unknown) => isRemusError(e) && e.code === code, what);
}

describe('51 a failed disk check repairs only what differs', () => {
  it('51.14 the backup names the differing ranges in its HELLO_ACKs until a session commits', () => {
    const primaryDisk = new Uint8Array(DISK);
    new Prng(7).fill(primaryDisk);
    const backupDisk = new MemDiskTarget(DISK);
    backupDisk.bytes.set(primaryDisk);
    backupDisk.bytes[3 * 4096 + 17] ^= 1; // blocks 3 and 9: ranges 1 and 4 of 8 KiB
    backupDisk.bytes[9 * 4096] ^= 0x80;
    const b = new Backup(new VirtualClock(), {
      pageCountMax: 1 << 20,
      batchPagesMax: 256,
      replicaFor: (h) => new MemReplica(h.pageCount, backupDisk, true, 4096),
    });
    /** A session whose disk copy is the given [offset, length] runs of the primary's disk. */
    const session = (copy: number[][] = []): { link: TapLink; ack: Record<string, unknown> } => {
      const link = new TapLink();
      b.attach(link);
      link.rec(Rec.HELLO, diskHello(DISK));
      for (const [off, len] of copy) link.rec(Rec.DISK_SYNC, diskSyncBody(off, primaryDisk.subarray(off, off + len)));
      link.rec(Rec.DISK_SYNC_END, diskSyncEndBody(copy.reduce((n, [, len]) => n + len, 0)));
      const ack = link.sent.find((r) => r.type === Rec.HELLO_ACK)!;
      return { link, ack: parseJson(Rec.HELLO_ACK, ack.body, false).value };
    };
    const verify = (link: TapLink, sum = table(primaryDisk, 8192)): void =>
      fullCheckpoint(link, () => link.rec(Rec.DISK_VERIFY, diskVerifyBody(1, sum)));
    const error = (link: TapLink): string | null => {
      const e = link.sent.find((r) => r.type === Rec.ERROR);
      return e ? String(JSON.parse(e.body.toString()).code) : null;
    };

    const first = session();
    assert.equal(first.ack.diskContinues, true);
    assert.equal(first.ack.diskDiffers, undefined, 'nothing known to differ yet');
    verify(first.link);
    assert.equal(error(first.link), ErrorCode.DISK_DIVERGED);
    first.link.peerClosed();
    const want = [
      [8192, 8192],
      [32768, 8192],
    ];
    const second = session();
    assert.equal(second.ack.diskContinues, true, 'the disk is kept: only the ranges are copied');
    assert.deepEqual(second.ack.diskDiffers, want);
    second.link.peerClosed(); // lost before a commit: the next HELLO_ACK names them again
    const third = session(want); // the primary copies the named runs
    assert.deepEqual(third.ack.diskDiffers, want, 'until a session commits');
    verify(third.link);
    assert.equal(error(third.link), null);
    assert.ok(
      third.link.sent.some((r) => r.type === Rec.ACK),
      'committed, the disks verified equal',
    );
    third.link.rec(Rec.GOODBYE, Buffer.alloc(0)); // a planned stop: no failover, the next primary is served
    third.link.peerClosed();
    assert.equal(session().ack.diskDiffers, undefined, 'a commit ends it');
  });

  it('51.15 tables that cannot be compared, and DISK_VERIFY bodies that do not cover the disk', () => {
    const bytes = new Uint8Array(DISK);
    new Prng(3).fill(bytes);
    const crcs = new ReplicaRangeCrcs(DISK, 8192);
    crcs.checksumNow({
      sizeBytes: DISK,
      read: (o: number, into: Uint8Array) => into.set(bytes.subarray(o, o + into.length)),
    } as never);
    assert.deepEqual(crcs.differingRanges(table(bytes, 16384)), [], 'wider ranges of ours compare');
    const other = Uint8Array.from(bytes);
    other[DISK - 1] ^= 1;
    assert.deepEqual(crcs.differingRanges(table(other, 32768)), [{ offsetBytes: 32768, lengthBytes: 32768 }]);
    assert.equal(crcs.differingRanges(table(bytes, 4096)), null, 'narrower than ours: the whole disk');
    assert.equal(crcs.differingRanges(table(bytes, 12288)), null, 'not a multiple of ours');
    const good = diskVerifyBody(5, table(bytes, 8192));
    assert.equal(parseDiskVerify(good, DISK).rangeCrcs.length, 8);
    throwsCode(() => parseDiskVerify(good, DISK * 2), ErrorCode.PROTOCOL, 'ranges of another disk');
    throwsCode(() => parseDiskVerify(good.subarray(0, good.length - 4), DISK), ErrorCode.PROTOCOL, 'short');
    const odd = Buffer.from(good);
    odd.writeUInt32LE(1000, 16);
    throwsCode(() => parseDiskVerify(odd, DISK), ErrorCode.PROTOCOL, 'ranges of part blocks');
  });

  it("51.16 the primary checks a HELLO_ACK's diskDiffers: whole blocks of the disk, a bounded list", () => {
    const ok = backupDiskOf({ diskContinues: true, diskDiffers: [[4096, 8192]] }, DISK);
    assert.deepEqual(ok, { continues: true, differing: [{ offsetBytes: 4096, lengthBytes: 8192 }] });
    assert.deepEqual(backupDiskOf({ diskContinues: false, diskDiffers: [[0, 4096]] }, DISK), { continues: false });
    const bad: unknown[] = [
      [[4096, 100]],
      [[100, 4096]],
      [[DISK - 4096, 8192]],
      [[0, 0]],
      [[-4096, 4096]],
      [[0]],
      'x',
      Array.from({ length: DISK_DIFFERING_RUNS_MAX + 1 }, () => [0, 4096]),
    ];
    for (const d of bad) {
      throwsCode(() => backupDiskOf({ diskContinues: true, diskDiffers: d }, DISK), ErrorCode.PROTOCOL, String(d));
    }
    // A table sent in wider ranges combines the narrower ones exactly.
    const bytes = new Uint8Array(5 * 8192 + 4096);
    new Prng(5).fill(bytes);
    const t = table(bytes, 8192);
    const wide = coarsenRangeCrcs(t.rangeCrcs, 8192, bytes.length, 4);
    assert.deepEqual(Array.from(wide), Array.from(table(bytes, 32768).rangeCrcs));
    assert.equal(combineRangeCrcs(wide, 32768, bytes.length), t.crc32c);
  });
});

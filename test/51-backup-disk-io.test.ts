// 51 backup disk I/O: the backup's resync writes go to its disk off the event loop, in order
// (blktap/disk-io-queue.ts), and the engine waits for them where it must — a session's first
// commit, a replica let go with a write under way — while its link is held past its intake
// bound. The target here lands each write only when the test says so.
import { strict as assert } from 'node:assert';
import { DISK_IO_IN_FLIGHT_MAX, DiskIoQueue, type AsyncDiskTarget } from '../blktap/disk-io-queue';
import { Backup } from '../dom0/engine/backup';
import { ErrorCode, type RemusError, isRemusError } from '../dom0/errors';
import { Rec, diskSyncBody, diskSyncEndBody, diskSyncZeroesBody } from '../dom0/protocol/records';
import { diskHello, fullCheckpoint } from './support/disk-session';
import { MemDiskTarget, MemReplica, VirtualClock } from './support/sim-world';
import { TapLink } from './support/tap-link';

const BLOCK = 4096;
const DISK = 64 * BLOCK;
const fill = (len: number, v: number): Buffer => Buffer.alloc(len, v);

/**
 * Writes start at once and land when land() says, oldest first or newest first (a pool runs
 * them in any order); those under way never overlap (the queue's rule).
 */
class HandTarget extends MemDiskTarget implements AsyncDiskTarget {
  private underWay: Array<{ off: number; end: number; land: () => void }> = [];
  started = 0;
  mostAtOnce = 0;
  failNext: Error | null = null;
  writeAsync(off: number, data: Uint8Array, done: (e: Error | null) => void): void {
    const end = off + data.length;
    assert.ok(!this.underWay.some((u) => off < u.end && u.off < end), 'two overlapping writes under way at once');
    this.started++;
    const copy = Uint8Array.from(data);
    this.underWay.push({
      off,
      end,
      land: () => {
        const e = this.failNext;
        this.failNext = null;
        if (!e) this.write(off, copy);
        done(e);
      },
    });
    this.mostAtOnce = Math.max(this.mostAtOnce, this.underWay.length);
  }
  get writesUnderWay(): number {
    return this.underWay.length;
  }
  /** Lands up to n writes (each may start more); returns how many landed. */
  land(n = Infinity, newestFirst = false): number {
    let k = 0;
    while (k < n && this.underWay.length) {
      (newestFirst ? this.underWay.pop()! : this.underWay.shift()!).land();
      k++;
    }
    return k;
  }
}

describe('51 backup disk I/O off the event loop', () => {
  it('51.11 the queue writes in order where it matters; afterWrites; sparse zeros; a failure; abandon', () => {
    const t = new HandTarget(DISK);
    const q = new DiskIoQueue(t);
    assert.equal(
      q.afterWrites(() => assert.fail('idle')),
      false,
      'nothing pending: no wait',
    );
    q.write(0, fill(BLOCK, 1));
    q.write(0, fill(BLOCK, 2)); // the same block again: must land second
    q.zero(BLOCK, 3 * BLOCK, true); // already zeros: checked, not written
    assert.equal(q.pendingBytes, 5 * BLOCK);
    let done = 0;
    assert.equal(
      q.afterWrites(() => done++),
      true,
    );
    assert.equal(t.land(), 2, 'the two writes; the zero range was read and skipped');
    assert.equal(t.bytes[0], 2, 'the later write landed last');
    assert.deepEqual([done, q.pendingBytes, q.counters.zeroPiecesSkipped], [1, 0, 1]);
    t.bytes.fill(7, BLOCK, 2 * BLOCK);
    q.zero(0, 2 * BLOCK, true); // not zeros: written
    t.land();
    assert.deepEqual([t.bytes[0], t.bytes[BLOCK]], [0, 0]);

    // A failed write: its waiters hear ERR_IO, what was queued behind it is dropped (one under
    // way beside it still lands), and the queue refuses more.
    t.failNext = new Error('EIO');
    q.write(0, fill(BLOCK, 3));
    q.write(BLOCK, fill(BLOCK, 4)); // under way beside it
    q.write(0, fill(BLOCK, 5)); // waits for the first (the same block): dropped
    let failure: Error | null = null;
    q.afterWrites((e) => (failure = e));
    t.land();
    assert.ok(isRemusError(failure, ErrorCode.IO), String(failure));
    assert.equal((failure as unknown as RemusError).cause instanceof Error, true, 'the cause is kept');
    assert.deepEqual([t.bytes[0], t.bytes[BLOCK], q.pendingBytes], [0, 4, 0]);
    assert.throws(
      () => q.write(0, fill(BLOCK, 5)),
      (e: unknown) => isRemusError(e, ErrorCode.IO),
    );

    // A low-water watch (flow control): once at most one block is pending.
    const t3 = new HandTarget(DISK);
    const q3 = new DiskIoQueue(t3);
    // (the four writes go at once; they land oldest first)
    for (let b = 0; b < 4; b++) q3.write(b * BLOCK, fill(BLOCK, 8));
    let low = 0;
    assert.equal(
      q3.whenAtMost(4 * BLOCK, () => low++),
      false,
      'already at most 4 blocks',
    );
    assert.equal(
      q3.whenAtMost(2 * BLOCK, () => assert.fail('replaced')),
      true,
    );
    assert.equal(
      q3.whenAtMost(BLOCK, () => low++),
      true,
      'a new watch replaces the last',
    );
    assert.equal(t3.land(2), 2);
    assert.equal(low, 0);
    t3.land(1);
    assert.deepEqual([low, q3.pendingBytes], [1, BLOCK]);
    t3.land();

    // abandon: the writes under way land (then done), those not started never do.
    const t2 = new HandTarget(DISK);
    const q2 = new DiskIoQueue(t2);
    const N = DISK_IO_IN_FLIGHT_MAX;
    for (let b = 0; b < N + 3; b++) q2.write(b * BLOCK, fill(BLOCK, 9));
    let let_go = 0;
    q2.abandon(() => let_go++);
    assert.deepEqual([let_go, q2.pendingBytes, q2.counters.abandonedBytes], [0, N * BLOCK, 3 * BLOCK]);
    assert.equal(t2.land(N - 1), N - 1);
    assert.equal(let_go, 0, 'not while one is under way');
    assert.equal(t2.land(), 1);
    assert.deepEqual([let_go, t2.started, t2.bytes[N * BLOCK]], [1, N, 0]);
    q2.abandon(() => let_go++);
    assert.equal(let_go, 2, 'idle: at once');
  });

  it('51.11b writes that do not overlap go several at once; one on their blocks waits; a zero range, alone', () => {
    const N = DISK_IO_IN_FLIGHT_MAX;
    const t = new HandTarget(DISK);
    const q = new DiskIoQueue(t);
    for (let b = 0; b < N + 4; b++) q.write(b * BLOCK, fill(BLOCK, 20 + b));
    assert.equal(t.writesUnderWay, N, 'as many as the bound, at once');
    q.write(3 * BLOCK, fill(BLOCK, 99)); // block 3 again: after the first has landed
    q.zero(50 * BLOCK, 2 * BLOCK); // alone, once the writes before it have landed
    q.write(60 * BLOCK, fill(BLOCK, 61)); // after the zero range
    t.land(4, true); // the newest first: blocks N-1..N-4
    assert.equal(t.writesUnderWay, N, 'blocks N..N+3 took their places');
    t.land(1, true);
    assert.equal(t.bytes[3 * BLOCK], 0, 'the rewrite of block 3 waits while its first write is under way');
    let done = 0;
    q.afterWrites(() => done++);
    while (t.land(1, true) > 0) assert.ok(t.writesUnderWay <= N);
    assert.equal(t.bytes[3 * BLOCK], 99, 'the later write to block 3 landed last');
    assert.deepEqual([t.bytes[(N + 3) * BLOCK], t.bytes[60 * BLOCK], done, q.pendingBytes], [20 + N + 3, 61, 1, 0]);
    assert.equal(t.mostAtOnce, N);
  });

  it('51.11c a write not yet started is absorbed by a later one to the same range, never by another', () => {
    const N = DISK_IO_IN_FLIGHT_MAX;
    const t = new HandTarget(DISK);
    const q = new DiskIoQueue(t);
    for (let b = 0; b < N; b++) q.write(b * BLOCK, fill(BLOCK, 1)); // the pool is full
    q.write(N * BLOCK, fill(2 * BLOCK, 2)); // blocks N, N+1
    q.write(N * BLOCK, fill(BLOCK, 3)); // block N only: not the same range, kept
    q.write(N * BLOCK, fill(2 * BLOCK, 4)); // the same range as the first: absorbs it
    assert.equal(q.counters.absorbed, 1);
    assert.equal(q.pendingBytes, N * BLOCK + 3 * BLOCK, 'the absorbed bytes are no longer pending');
    const started = t.started;
    t.land();
    assert.equal(t.started - started, 2, 'two of the three writes to blocks N, N+1 ran');
    assert.deepEqual([t.bytes[N * BLOCK], t.bytes[(N + 1) * BLOCK], q.pendingBytes], [4, 4, 0]);
  });

  const session = (intakeBytesHigh?: number) => {
    const target = new HandTarget(DISK);
    const b = new Backup(new VirtualClock(), {
      pageCountMax: 1 << 20,
      batchPagesMax: 256,
      replicaFor: (h) => new MemReplica(h.pageCount, target),
      intakeBytesHigh,
    });
    const link = new TapLink();
    b.attach(link);
    link.rec(Rec.HELLO, diskHello(DISK));
    return { b, link, target };
  };
  it('51.12 the first commit waits for the resync to land; the link is held past the intake bound', () => {
    const { b, link, target } = session(2 * BLOCK);
    for (let i = 0; i < 4; i++) link.rec(Rec.DISK_SYNC, diskSyncBody(i * BLOCK, fill(BLOCK, 10 + i)));
    link.rec(Rec.DISK_SYNC, diskSyncZeroesBody(4 * BLOCK, DISK - 4 * BLOCK));
    link.rec(Rec.DISK_SYNC_END, diskSyncEndBody(DISK));
    assert.equal(target.bytes[0], 0, 'nothing landed: the handler returned with the writes queued');
    assert.deepEqual(link.holds, [true], 'past 2 blocks of intake the backup stopped reading');
    fullCheckpoint(link);
    assert.equal(b.committedEpoch, null, 'the commit waits for the disk');
    assert.equal(link.sent.filter((r) => r.type === Rec.ACK).length, 0);
    assert.equal(b.counters.diskWriteWaits, 1);
    target.land();
    assert.equal(b.committedEpoch, 1, 'committed once every write landed');
    assert.equal(link.sent.filter((r) => r.type === Rec.ACK).length, 1);
    assert.deepEqual([target.bytes[0], target.bytes[3 * BLOCK]], [10, 13]);
    assert.deepEqual(link.holds, [true, false], 'reading again once the disk caught up');
    assert.equal(b.counters.intakeHolds, 1);
  });

  it('51.13 a replica let go with a write under way: the next session waits for it to land', () => {
    const target = new HandTarget(DISK);
    const b = new Backup(new VirtualClock(), {
      pageCountMax: 1 << 20,
      batchPagesMax: 256,
      replicaFor: (h) => new MemReplica(h.pageCount, target), // one image for both (as --reuse-disk)
    });
    const first = new TapLink();
    b.attach(first);
    first.rec(Rec.HELLO, diskHello(DISK));
    const N = DISK_IO_IN_FLIGHT_MAX;
    for (let i = 0; i <= N; i++) first.rec(Rec.DISK_SYNC, diskSyncBody(i * BLOCK, fill(BLOCK, 1 + i)));
    first.rec(Rec.GOODBYE, Buffer.alloc(0)); // nothing committed: the replica is let go
    const second = new TapLink();
    b.attach(second);
    second.rec(Rec.HELLO, diskHello(DISK));
    second.rec(Rec.DISK_SYNC, diskSyncBody(0, fill(BLOCK, 99)));
    assert.equal(target.land(N - 1), N - 1);
    assert.equal(second.sent.length, 0, 'the HELLO waits while an old write is under way');
    assert.equal(target.land(1), 1, 'the last old write under way lands...');
    assert.equal(second.sent[0]?.type, Rec.HELLO_ACK, '...then the HELLO is answered');
    target.land();
    assert.deepEqual(
      [target.bytes[0], target.bytes[N * BLOCK]],
      [99, 0],
      'the old write not started was dropped; the new one last',
    );
  });
});

// 59 pre-copy turns: a guest's live pre-copy reads, encodes and queues at most
// PRECOPY_BATCH_PAGES_MAX pages per event-loop turn, whatever the session's batch size (4 MiB
// turns stalled the primary's loop 40–80 ms on a 2-core host, past the checkpoint interval);
// the first checkpoint still completes from those turns.
import { strict as assert } from 'node:assert';
import { Backup } from '../dom0/engine/backup';
import { OutputBuffer } from '../dom0/engine/output-buffer';
import { type LiveMemory, PRECOPY_BATCH_PAGES_MAX, Precopy, notIn } from '../dom0/engine/precopy';
import { Staging } from '../dom0/engine/staging';
import { PAGE_RECORD_HEADER_BYTES } from '../dom0/limits';
import { PageDecoder } from '../dom0/memory/page-codec';
import {
  CONTINUED_HEADROOM_PAGES,
  PAUSE_BUFFER_HEADROOM_PAGES_MIN,
  ResidentBuffer,
  continuedPauseBufferPages,
  pauseBufferPages,
} from '../dom0/engine/resident-buffer';
import { Primary } from '../dom0/engine/primary';
import { Prng } from '../dom0/util/prng';
import { MemReplica, Net, StepDomain, VirtualClock } from './support/sim-world';

describe('59 pre-copy turns', () => {
  it('59.1 no turn carries more than PRECOPY_BATCH_PAGES_MAX pages; checkpoint 1 is acknowledged', () => {
    const PAGES = 4096;
    const BATCH_PAGES = 1024; // the session's batch: 4 × the pre-copy's turn
    const clock = new VirtualClock();
    const net = new Net(clock, new Prng(59), 1);
    const domain = new StepDomain(PAGES, 1, clock, () => {});
    let turns = 0;
    let sentPages = 0;
    const primary = new Primary(
      domain,
      new OutputBuffer<number>(() => {}),
      clock,
      {
        intervalMs: 50,
        compressor: 'lz4',
        cachePages: 16,
        maxInFlight: 2,
        heartbeatTimeoutMs: 1000,
        batchPagesMax: BATCH_PAGES,
        deviceStateMax: 4096,
      },
      {
        phase: (phase) => {
          if (phase === 'precopy-batch') turns++;
        },
        event: (name, detail) => {
          if (name === 'precopy-round') sentPages = Number((detail as { sentPages: number }).sentPages);
        },
      },
    );
    const backup = new Backup(
      clock,
      { pageCountMax: 1 << 20, batchPagesMax: BATCH_PAGES, replicaFor: (h) => new MemReplica(h.pageCount) },
      {},
    );
    primary.start();
    const [b, p] = net.pair();
    backup.attach(b);
    primary.attach(p);
    clock.runUntil(5000);
    assert.ok(primary.stats().ackedEpoch >= 1, 'the pre-copied first checkpoint was acknowledged');
    assert.ok(sentPages >= PAGES, `the pre-copy sent every page (${sentPages})`);
    // A turn ends a round or carries a batch: the batches alone need sentPages / bound turns.
    assert.ok(
      turns >= Math.ceil(sentPages / PRECOPY_BATCH_PAGES_MAX),
      `${sentPages} pages in ${turns} turns: more than ${PRECOPY_BATCH_PAGES_MAX} per turn`,
    );
  });
});

describe('59 the final pause reads into memory written before it', () => {
  it('59.2 notIn merges ascending lists like a Set filter, and falls back to one when unsorted', () => {
    const prng = new Prng(592);
    const ascendingPick = (n: number, of: number): Uint32Array =>
      Uint32Array.from(new Set(Array.from({ length: n }, () => prng.below(of)))).sort();
    for (let i = 0; i < 200; i++) {
      const list = ascendingPick(prng.below(300), 1000);
      const except = ascendingPick(prng.below(300), 1000);
      const want = list.filter((p) => !except.includes(p));
      assert.deepEqual(Array.from(notIn(list, except)), Array.from(want), `case ${i}`);
      const shuffled = Uint32Array.from(except).reverse();
      assert.deepEqual(Array.from(notIn(list, shuffled)), Array.from(want), `case ${i}, except unsorted`);
    }
  });

  it('59.3 a prepared buffer is handed out once; a larger or second take is fresh and counted', () => {
    const r = new ResidentBuffer();
    r.prepare(3 * 4096 + 1);
    assert.equal(r.preparedBytes, 4 * 4096, 'whole pages');
    const a = r.take(4 * 4096);
    assert.equal(a.byteLength, 4 * 4096);
    assert.equal(r.freshTakes, 0, 'the prepared memory');
    const b = r.take(4096);
    assert.notEqual(b.buffer, a.buffer, 'given away: never handed out twice');
    assert.equal(r.freshTakes, 1);
    r.prepare(4096);
    r.take(2 * 4096);
    assert.equal(r.freshTakes, 2, 'too large: fresh');
    assert.equal(pauseBufferPages(10), 10 + PAUSE_BUFFER_HEADROOM_PAGES_MIN, 'a small set: the minimum headroom');
    assert.equal(pauseBufferPages(1000), 2000, 'a larger one: as much again');
    // a continued session's buffer: reserved at once, written a piece per turn, a few intervals' headroom
    r.reserve(5 * 4096);
    assert.deepEqual([r.prepareSome(2 * 4096), r.prepareSome(2 * 4096), r.prepareSome(2 * 4096)], [false, false, true]);
    assert.equal(r.take(5 * 4096).byteLength, 5 * 4096);
    assert.equal(r.freshTakes, 2, 'the prepared memory');
    assert.equal(r.prepareSome(4096), true, 'nothing reserved: nothing to write');
    assert.equal(continuedPauseBufferPages(10_000), 10_000 + CONTINUED_HEADROOM_PAGES);
  });

  it("59.4 a pre-copied session's first pause takes the buffer prepared after the last round", () => {
    const PAGES = 4096;
    const clock = new VirtualClock();
    const net = new Net(clock, new Prng(594), 1);
    const domain = new StepDomain(PAGES, 1, clock, () => {});
    const primary = new Primary(domain, new OutputBuffer<number>(() => {}), clock, {
      intervalMs: 50,
      compressor: 'lz4',
      cachePages: 16,
      maxInFlight: 2,
      heartbeatTimeoutMs: 1000,
      batchPagesMax: 256,
      deviceStateMax: 4096,
      precopyRemainingPagesMin: 8,
    });
    const backup = new Backup(
      clock,
      { pageCountMax: 1 << 20, batchPagesMax: 256, replicaFor: (h) => new MemReplica(h.pageCount) },
      {},
    );
    primary.start();
    const [b, p] = net.pair();
    backup.attach(b);
    primary.attach(p);
    clock.runUntil(5000);
    const s = primary.stats();
    assert.ok(s.ackedEpoch >= 1, 'the pre-copied first checkpoint was acknowledged');
    assert.ok(s.fullPause && s.fullPause.pages > 0, `the final pause read pages (${s.fullPause?.pages})`);
    assert.equal(s.fullPause.freshTakes, 0, 'the final pause allocated no fresh memory');
  });
});

describe('59 a full copy at size', () => {
  it("59.5 a round's collect spread over turns sends a page written between two of its ranges", () => {
    const PAGES = 64;
    const written = new Set<number>();
    const collects: number[][] = [];
    const armed = new Set<number>();
    const mem: LiveMemory = {
      pageCount: PAGES,
      readLive: (pfns, count) => {
        for (let i = 0; i < count; i++) assert.ok(armed.has(pfns[i]), `page ${pfns[i]} is armed before it is read`);
      },
      collectDirtyLive: (into, first = 0, end = PAGES) => {
        collects.push([first, end]);
        let n = 0;
        for (let p = first; p < end; p++) {
          armed.add(p);
          if (written.delete(p)) into[n++] = p;
        }
        return n;
      },
    };
    const pc = new Precopy(mem, 16, 0, { remainingPagesMin: 0, collectPagesPerTurn: 10 });
    while (pc.nextBatch()) written.add(3); // the guest writes while round 0 reads
    const ranges = Array.from({ length: Math.ceil(PAGES / 10) }, (_, i) => [10 * i, Math.min(PAGES, 10 * i + 10)]);
    assert.deepEqual(collects, ranges, 'round 0 armed the guest a range at a time, ahead of its reads');
    collects.length = 0;
    let turns = 0;
    for (; !pc.collectSome(); turns++) if (turns === 2) written.add(60); // between two ranges
    assert.deepEqual(collects, ranges, 'the collect: ranges of collectPagesPerTurn pages, in order');
    assert.equal(turns + 1, ranges.length, 'one range a turn');
    assert.ok(pc.endRound(), 'another round: pages remain');
    const sent: number[] = [];
    for (let b = pc.nextBatch(); b; b = pc.nextBatch()) sent.push(...b.pfns);
    assert.deepEqual(sent, [3, 60], 'round 1 sends what was written during round 0 and during its collect');
  });

  it("59.6 the backup's list of a full copy's pages grows past its first capacity, and clears", () => {
    const PAGES = 20_000;
    const staging = new Staging(PAGES, new PageDecoder(), 16);
    const records = new Uint8Array(PAGE_RECORD_HEADER_BYTES * 10_000); // headers only: no page data
    const view = new DataView(records.buffer);
    for (let i = 0; i < 10_000; i++) view.setBigUint64(i * PAGE_RECORD_HEADER_BYTES, BigInt(2 * i), true);
    staging.markRecords(records);
    staging.markRecords(records); // a pre-copy resends pages: counted once
    assert.equal(staging.distinctPages, 10_000);
    assert.deepEqual(
      [...staging.pfns],
      Array.from({ length: 10_000 }, (_, i) => 2 * i),
      'every pfn once, in order',
    );
    staging.clear();
    assert.equal(staging.distinctPages, 0);
    staging.addRefs([{ pfn: 0, offsetBytes: 0, crc32c: 0 }], false); // not "twice in one checkpoint"
    assert.deepEqual([...staging.pfns], [0]);
  });

  it("59.7 a continued session's rounds: round 0 sends the given pages, each collect is heard, rounds grow", () => {
    const PAGES = 64;
    const written = new Set<number>();
    const read: number[] = [];
    const mem: LiveMemory = {
      pageCount: PAGES,
      readLive: (pfns, count) => read.push(...pfns.subarray(0, count)),
      collectDirtyLive: (into, first = 0, end = PAGES) => {
        let n = 0;
        for (let p = first; p < end; p++) if (written.delete(p)) into[n++] = p;
        return n;
      },
    };
    const heard: number[] = [];
    const start = {
      round0: Uint32Array.from([5, 9]),
      onCollect: (p: Uint32Array, n: number) => heard.push(...p.subarray(0, n)),
    };
    const pc = new Precopy(mem, 16, 0, { remainingPagesMin: 0, collectPagesPerTurn: 16 }, start);
    while (pc.nextBatch()) for (let p = 20; p < 40; p++) written.add(p); // 20 pages: more than round 0 had
    assert.deepEqual(read, [5, 9], 'round 0 reads the listed pages, nothing armed first');
    while (!pc.collectSome());
    assert.deepEqual(
      heard,
      Array.from({ length: 20 }, (_, i) => 20 + i),
      'every range collected is heard at once',
    );
    assert.ok(pc.endRound(), 'another round: 20 pages remain');
    read.length = 0;
    while (pc.nextBatch());
    assert.deepEqual(read, heard, "round 1 sends round 0's writes (its list is not round 0's shorter one)");
    while (!pc.collectSome());
    assert.equal(pc.endRound(), false, 'nothing written: the rounds end');
  });
});

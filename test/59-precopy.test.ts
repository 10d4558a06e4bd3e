// 59 pre-copy turns: a guest's live pre-copy reads, encodes and queues at most
// PRECOPY_BATCH_PAGES_MAX pages per event-loop turn, whatever the session's batch size (4 MiB
// turns stalled the primary's loop 40–80 ms on a 2-core host, past the checkpoint interval);
// the first checkpoint still completes from those turns.
import { strict as assert } from 'node:assert';
import { Backup } from '../dom0/engine/backup';
import { OutputBuffer } from '../dom0/engine/output-buffer';
import { PRECOPY_BATCH_PAGES_MAX } from '../dom0/engine/precopy';
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

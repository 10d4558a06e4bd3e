// 73 coordination simulator: seeded runs of primary + backup with an owner lease (modelled
// etcd, virtual time) under partitions — the link cut while both reach etcd (healed or not),
// either host isolated from everything, etcd unreachable, the primary crashed. Invariants:
// the primary releases outputs only while it provably owns the domain, never at or after the
// instant the backup owns it, and the backup fails over only with the key; the side that must
// own at the end does (the primary after a link cut or an isolated backup, the backup after
// the primary's isolation or crash). A failing seed reproduces with COORD_SEED=<n>.
import { strict as assert } from 'node:assert';
import { type CoordResult, runCoordWorld } from './support/coord-world';
import { assertNoViolations, seedsFrom } from './support/seeds';

const SEEDS = Number(process.env.COORD_SEEDS ?? 300);

describe('73 coordination simulator', () => {
  const runs = process.env.COORD_SEED ? `seed ${process.env.COORD_SEED}` : `${SEEDS} seeds`;
  it(`73.1 ${runs}: at most one owner releases outputs`, function () {
    this.timeout(600_000);
    const seeds = seedsFrom(process.env.COORD_SEED, SEEDS);
    const failures: CoordResult[] = [];
    const kinds: Record<string, number> = {};
    let failovers = 0,
      released = 0;
    for (const s of seeds) {
      const r = runCoordWorld(s);
      kinds[r.fault.kind] = (kinds[r.fault.kind] ?? 0) + 1;
      if (r.failedOverAt !== null) failovers++;
      released += r.outputsReleased;
      if (r.violations.length) failures.push(r);
    }
    assertNoViolations(failures, seeds.length);
    if (!process.env.COORD_SEED) {
      assert.equal(Object.keys(kinds).length, 8, `every fault kind ran: ${JSON.stringify(kinds)}`);
      assert.ok(failovers > seeds.length / 6, `takeovers were exercised (${failovers})`);
      assert.ok(released > seeds.length * 100, `outputs flowed (${released})`);
    }
  });

  it('73.2 the same seed replays exactly', () => {
    assert.deepEqual(runCoordWorld(42), runCoordWorld(42));
  });
});

// 10 page cache: LRU order, eviction, bounded capacity, clearing; --cache parsing.
import { strict as assert } from 'node:assert';
import { PageCache } from '../dom0/memory/page-cache';
import { parseCachePages } from '../dom0/memory/cache-size';
import { PfnIndex } from '../dom0/memory/pfn-index';
import { Prng } from '../dom0/util/prng';
import { ErrorCode, isRemusError } from '../dom0/errors';

function assign(c: PageCache, pfns: number[]): { slots: number[]; hits: number[] } {
  const p = BigUint64Array.from(pfns.map(BigInt));
  const slots = new Int32Array(p.length),
    hits = new Uint8Array(p.length);
  c.assignBatch(p, slots, hits);
  return { slots: [...slots], hits: [...hits] };
}

describe('10 page cache', () => {
  it('10.1 a miss takes a free slot, a repeat is a hit on the same slot', () => {
    const c = new PageCache(4);
    const a = assign(c, [10, 20, 30]);
    assert.deepEqual(a.hits, [0, 0, 0]);
    assert.deepEqual(new Set(a.slots).size, 3);
    const b = assign(c, [20]);
    assert.deepEqual(b, { slots: [a.slots[1]], hits: [1] });
    assert.deepEqual([...c.orderMruFirst()], [20, 30, 10]);
  });

  it('10.2 evicts the least recently used page and reuses its slot', () => {
    const c = new PageCache(3);
    const a = assign(c, [1, 2, 3]);
    assign(c, [1]); // order: 1, 3, 2 → LRU is 2
    const b = assign(c, [4]);
    assert.equal(b.hits[0], 0);
    assert.equal(b.slots[0], a.slots[1], 'the slot of page 2 is reused');
    assert.equal(c.peek(2), -1);
    assert.equal(c.size, 3);
    assert.equal(c.stats.evictions, 1);
  });

  it('10.3 never holds more than its capacity, however many pages pass through', () => {
    const c = new PageCache(100);
    for (let i = 0; i < 50; i++)
      assign(
        c,
        Array.from({ length: 37 }, (_, k) => (i * 31 + k * 7) % 1000),
      );
    assert.equal(c.size, 100);
    assert.equal([...c.orderMruFirst()].length, 100);
    const slots = new Set<number>();
    for (const pfn of c.orderMruFirst()) slots.add(c.peek(pfn));
    assert.equal(slots.size, 100, 'slots are distinct');
    assert.ok([...slots].every((s) => s >= 0 && s < 100));
  });

  it('10.4 a batch larger than the cache evicts pages of the same batch in order', () => {
    const c = new PageCache(2);
    const a = assign(c, [1, 2, 3, 4]);
    assert.deepEqual(a.hits, [0, 0, 0, 0]);
    assert.deepEqual(a.slots, [0, 1, 0, 1]);
    assert.deepEqual([...c.orderMruFirst()], [4, 3]);
  });

  it('10.5 clear() forgets every page', () => {
    const c = new PageCache(4);
    assign(c, [1, 2]);
    c.clear();
    assert.equal(c.size, 0);
    assert.deepEqual(assign(c, [1]).hits, [0]);
  });

  it('10.7 the pfn index agrees with a Map through adds and deletes that wrap its table', () => {
    // Few buckets and pfns that collide (multiples of 2^20, large pfns) exercise the probe
    // runs, their wrap at the table's end and the backward shift that closes a deletion.
    for (const seed of [1, 2, 3]) {
      const rng = new Prng(seed);
      const capacity = 48;
      const pfnOf = new Float64Array(capacity).fill(-1);
      const index = new PfnIndex(capacity, pfnOf);
      const model = new Map<number, number>();
      const free = Array.from({ length: capacity }, (_, i) => i);
      const pick = (): number => (rng.below(3) === 0 ? rng.below(2 ** 40) : rng.below(64)) * 2 ** 20;
      for (let op = 0; op < 20_000; op++) {
        const pfn = pick();
        if (model.has(pfn) || (free.length === 0 && rng.chance(0.5))) {
          const victim = model.has(pfn) ? pfn : [...model.keys()][rng.below(model.size)];
          const slot = model.get(victim)!;
          assert.equal(index.delete(victim), slot, `delete ${victim}`);
          pfnOf[slot] = -1;
          model.delete(victim);
          free.push(slot);
        } else if (free.length > 0) {
          const slot = free.pop()!;
          pfnOf[slot] = pfn;
          index.add(pfn, slot);
          model.set(pfn, slot);
        }
        assert.equal(index.get(pfn), model.get(pfn) ?? -1, `get ${pfn} after op ${op}`);
        if (op % 500 === 0) for (const [k, v] of model) assert.equal(index.get(k), v, `entry ${k}`);
        assert.equal(index.size, model.size);
      }
    }
  });

  it('10.6 --cache accepts percentages and sizes and rejects nonsense clearly', () => {
    assert.equal(parseCachePages('10%', 65536), 6553);
    assert.equal(parseCachePages('64MiB', 65536), 16384);
    assert.equal(parseCachePages('1048576', 65536), 256);
    assert.equal(parseCachePages('2g', 1000), 1000, 'capped at guest memory');
    for (const bad of ['0%', '101%', 'ten', '12parsecs', '100', '-5%']) {
      assert.throws(
        () => parseCachePages(bad, 65536),
        (e: unknown) => isRemusError(e, ErrorCode.BAD_ARGUMENT) && e.message.includes('--cache'),
        bad,
      );
    }
  });
});

// 12 codec fuzz: hostile batches never crash the decoders, never raise anything but
// ERR_BAD_PAGE_RECORD, and never touch a page that no record names. `npm run fuzz` runs
// millions; this runs enough to catch a regression within CI time.
import { strict as assert } from 'node:assert';
import { fuzzDecoder } from '../dom0/memory/codec-fuzz';

describe('12 codec fuzz', () => {
  it('12.1 native decoder: 100k random and mutated batches', () => {
    const r = fuzzDecoder(100_000, 1, 'native');
    assert.deepEqual(r.violations, []);
    assert.equal(r.iterations, 100_000);
    assert.ok(r.accepted > 1000 && r.rejected > 1000, `both outcomes exercised: ${r.accepted}/${r.rejected}`);
  });

  it('12.2 reference decoder: 20k random and mutated batches', () => {
    const r = fuzzDecoder(20_000, 2, 'ref');
    assert.deepEqual(r.violations, []);
    assert.ok(r.accepted > 100 && r.rejected > 100);
  });
});

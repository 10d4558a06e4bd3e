// 22 trace benchmark: verified replay, the figures the contract promises, and agreement
// between the native and reference codecs on what the wire carries.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { benchTrace } from '../dom0/bench/trace-bench';
import { synthTrace } from '../dom0/trace/synth';
import { tmpDir } from './support/helpers';

describe('22 bench trace', () => {
  const dir = tmpDir('bench');
  const trace = path.join(dir, 's.rdt.gz');
  before(() => synthTrace({ out: trace, pages: 2048, epochs: 40, seed: 5 }));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('22.1 replays, verifies every epoch and reports every field', async () => {
    const r = await benchTrace(trace, { cache: '10%', compressor: 'zstd' });
    assert.equal(r.verified, true);
    assert.equal(r.epochs, 40);
    assert.equal(r.cache_pages, 204);
    for (const k of [
      'pages',
      'raw_bytes',
      'sent_bytes',
      'ratio',
      'ratio_incremental',
      'hit_rate',
      'encode_mb_s',
      'decode_mb_s',
    ] as const) {
      assert.ok(Number.isFinite(r[k]) && r[k] > 0, `${k} = ${r[k]}`);
    }
    assert.equal(r.raw_bytes, r.pages * 4096);
    assert.ok(r.ratio > 1.5, `compresses: ${r.ratio}`);
    assert.ok(r.raw_bytes_incremental < r.raw_bytes);
  });

  it('22.2 --no-compress sends more than the raw bytes (headers), and a larger cache helps', async () => {
    const raw = await benchTrace(trace, { cache: '10%', compressor: 'none' });
    assert.ok(raw.sent_bytes > raw.raw_bytes && raw.ratio < 1);
    assert.equal(raw.verified, true);
    const small = await benchTrace(trace, { cache: '1%', compressor: 'zstd' });
    const big = await benchTrace(trace, { cache: '100%', compressor: 'zstd' });
    assert.ok(big.hit_rate_incremental > small.hit_rate_incremental);
    assert.ok(big.ratio_incremental > small.ratio_incremental);
  });

  it('22.3 the reference codec sends exactly the same bytes', async () => {
    const a = await benchTrace(trace, { cache: '5%', compressor: 'zstd', impl: 'native' });
    const b = await benchTrace(trace, { cache: '5%', compressor: 'zstd', impl: 'ref' });
    assert.equal(a.sent_bytes, b.sent_bytes);
    assert.deepEqual(a.encodings, b.encodings);
  });
});

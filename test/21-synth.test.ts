// 21 synthetic traces: seeded and reproducible, database-like, valid RDTRACE1.
import { strict as assert } from 'node:assert';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { synthTrace } from '../dom0/trace/synth';
import { REC_DISK_READ, REC_EPOCH_END, REC_PAGE, TraceReader } from '../dom0/trace/rdtrace';
import { tmpDir } from './support/helpers';

const sha = (f: string): string => crypto.createHash('sha256').update(fs.readFileSync(f)).digest('hex');

describe('21 synthetic traces', () => {
  const dir = tmpDir('synth');
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('21.1 the same seed gives the same bytes; another seed differs', () => {
    const a = path.join(dir, 'a.rdt'),
      b = path.join(dir, 'b.rdt'),
      c = path.join(dir, 'c.rdt');
    synthTrace({ out: a, pages: 512, epochs: 6, seed: 3 });
    synthTrace({ out: b, pages: 512, epochs: 6, seed: 3 });
    synthTrace({ out: c, pages: 512, epochs: 6, seed: 4 });
    assert.equal(sha(a), sha(b));
    assert.notEqual(sha(a), sha(c));
  });

  it('21.2 epoch 0 holds every page; later epochs hold some, with zero pages and disk reads', async () => {
    const f = path.join(dir, 'd.rdt.gz');
    synthTrace({ out: f, pages: 1024, epochs: 30, seed: 9 });
    const r = await TraceReader.open(f);
    assert.deepEqual(r.header, { pageSize: 4096, totalPages: 1024 });
    const perEpoch: number[] = [];
    let pages = 0,
      zeroPages = 0,
      reads = 0;
    for await (const rec of r.records()) {
      if (rec.type === REC_PAGE) {
        pages++;
        if (rec.data.every((x) => x === 0)) zeroPages++;
      }
      if (rec.type === REC_DISK_READ) reads++;
      if (rec.type === REC_EPOCH_END) {
        perEpoch.push(pages);
        pages = 0;
      }
    }
    assert.equal(perEpoch.length, 30);
    assert.equal(perEpoch[0], 1024);
    assert.ok(
      perEpoch.slice(1).every((n) => n > 0 && n < 1024),
      `later epochs are partial: ${perEpoch.slice(1, 5)}`,
    );
    assert.ok(zeroPages > 0, 'free memory shows as zero pages');
    assert.ok(reads > 0, 'refills are recorded as DISK_READ');
  });
});

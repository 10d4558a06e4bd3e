// 20 RDTRACE1: writer → reader round trips (plain and gzip) and clear errors for every
// kind of bad input: magic, record type, length, padding, truncation, pfn, epoch counts.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import {
  REC_DISK_READ,
  REC_DISK_WRITE,
  REC_EPOCH_END,
  REC_PAGE,
  TraceReader,
  TraceWriter,
  type TraceRecord,
} from '../dom0/trace/rdtrace';
import { ErrorCode, isRemusError } from '../dom0/errors';
import { tmpDir } from './support/helpers';

async function readAll(file: string): Promise<TraceRecord[]> {
  const r = await TraceReader.open(file);
  const out: TraceRecord[] = [];
  for await (const rec of r.records())
    out.push(rec.type === REC_PAGE ? { ...rec, data: Uint8Array.from(rec.data) } : rec);
  return out;
}

function writeSample(file: string): void {
  const w = new TraceWriter(file, { pageSize: 4096, totalPages: 8 });
  const page = new Uint8Array(4096).fill(7);
  w.page(0, page);
  w.page(5, page);
  w.endEpoch(10n);
  w.diskRead(3, 800n, 8);
  w.diskWrite(16n, 8);
  w.page(3, page);
  w.endEpoch(20n);
  w.close();
}

async function expectBad(file: string, why: RegExp): Promise<void> {
  await assert.rejects(
    readAll(file),
    (e: unknown) => isRemusError(e, ErrorCode.BAD_TRACE) && why.test(e.message) && e.message.includes(file),
  );
}

describe('20 RDTRACE1', () => {
  const dir = tmpDir('rdtrace');
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  for (const name of ['t.rdt', 't.rdt.gz']) {
    it(`20.1 round trip (${name})`, async () => {
      const f = path.join(dir, name);
      writeSample(f);
      if (name.endsWith('.gz')) assert.equal(fs.readFileSync(f)[0], 0x1f);
      const recs = await readAll(f);
      assert.deepEqual(
        recs.map((r) => r.type),
        [REC_PAGE, REC_PAGE, REC_EPOCH_END, REC_DISK_READ, REC_DISK_WRITE, REC_PAGE, REC_EPOCH_END],
      );
      const e = recs[6] as Extract<TraceRecord, { type: 2 }>;
      assert.deepEqual([e.epoch, e.pagesInEpoch, e.timestampUs], [1, 1, 20n]);
      const d = recs[3] as Extract<TraceRecord, { type: 3 }>;
      assert.deepEqual([d.pfn, d.sector, d.sectorCount], [3, 800n, 8]);
      assert.equal((recs[1] as Extract<TraceRecord, { type: 1 }>).pfn, 5);
    });
  }

  function corrupt(name: string, edit: (b: Buffer) => Buffer): string {
    const src = path.join(dir, 'good.rdt');
    writeSample(src);
    const f = path.join(dir, name);
    fs.writeFileSync(f, edit(fs.readFileSync(src)));
    return f;
  }
  // Layout of good.rdt: header 24; page records of 8+8+4096 = 4112 at 24 and 4136; EPOCH_END at 8248.
  it('20.2 bad magic', () =>
    expectBad(
      corrupt('m.rdt', (b) => {
        b.write('RDTRACE2');
        return b;
      }),
      /magic/,
    ));
  it('20.3 unknown record type', () =>
    expectBad(
      corrupt('u.rdt', (b) => {
        b[24] = 9;
        return b;
      }),
      /unknown record type 9/,
    ));
  it('20.4 wrong length', () =>
    expectBad(
      corrupt('l.rdt', (b) => {
        b.writeUInt32LE(100, 28);
        return b;
      }),
      /length 100, expected 4104/,
    ));
  it('20.5 nonzero padding', () =>
    expectBad(
      corrupt('p.rdt', (b) => {
        b[25] = 1;
        return b;
      }),
      /padding/,
    ));
  it('20.6 truncated inside a record', () =>
    expectBad(
      corrupt('t.rdt', (b) => b.subarray(0, 3000)),
      /ends inside a record/,
    ));
  it('20.7 truncated after pages, before EPOCH_END', () =>
    expectBad(
      corrupt('e.rdt', (b) => b.subarray(0, 24 + 2 * 4112)),
      /2 pages after the last EPOCH_END/,
    ));
  it('20.8 pfn out of range', () =>
    expectBad(
      corrupt('r.rdt', (b) => {
        b.writeBigUInt64LE(8n, 32);
        return b;
      }),
      /pfn 8 is out of range/,
    ));
  it('20.9 epoch page count disagrees', () =>
    expectBad(
      corrupt('c.rdt', (b) => {
        b.writeUInt32LE(3, 8248 + 8 + 12);
        return b;
      }),
      /says 3 pages but carries 2/,
    ));
  it('20.10 bad page size in the header', () =>
    expectBad(
      corrupt('s.rdt', (b) => {
        b.writeUInt32LE(1000, 8);
        return b;
      }),
      /page size 1000/,
    ));
  it('20.11 corrupt gzip stream', async () => {
    const f = path.join(dir, 'z.rdt.gz');
    const gz = zlib.gzipSync(fs.readFileSync(corrupt('g.rdt', (b) => b)));
    fs.writeFileSync(f, gz.subarray(0, gz.length - 40));
    await assert.rejects(readAll(f), (e: unknown) => isRemusError(e, ErrorCode.BAD_TRACE));
  });
  it('20.12 a missing file is an IO error', async () => {
    await assert.rejects(TraceReader.open(path.join(dir, 'nope.rdt')), (e: unknown) => isRemusError(e, ErrorCode.IO));
  });
});

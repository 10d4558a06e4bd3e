// synth: `remusdb trace synth` — writes a seeded synthetic database-like RDTRACE1 trace from
// DbMemoryModel: epoch 0 holds every page, each later epoch the pages the model wrote, with
// DISK_READ records for pages refilled from disk. Same seed and sizes, same bytes.
import { assertInt } from '../assert';
import { Prng } from '../util/prng';
import { DB_PAGE, DbMemoryModel, OLTP_RATES, type ModelRates } from './db-memory-model';
import { TraceWriter } from './rdtrace';

export interface SynthOptions {
  out: string;
  pages: number;
  epochs: number;
  seed: number;
  intervalMs?: number;
  rates?: ModelRates;
}

export interface SynthResult {
  epochs: number;
  pages: number;
  pageRecords: number;
}

export function synthTrace(o: SynthOptions): SynthResult {
  assertInt(o.pages, 64, 2 ** 26, 'pages');
  assertInt(o.epochs, 1, 2 ** 31, 'epochs');
  const mem = new Uint8Array(o.pages * DB_PAGE);
  const dirty = new Uint8Array(o.pages);
  const list: number[] = [];
  const reads: Array<[number, number]> = [];
  const onDirty = (p: number): void => {
    if (!dirty[p]) {
      dirty[p] = 1;
      list.push(p);
    }
  };
  const model = new DbMemoryModel(mem, new Prng(o.seed), onDirty, (p, b) => reads.push([p, b]));
  const w = new TraceWriter(o.out, { pageSize: DB_PAGE, totalPages: o.pages });
  const intervalUs = BigInt(Math.round((o.intervalMs ?? 50) * 1000));
  let pageRecords = 0;
  try {
    model.initialise();
    for (let e = 0; e < o.epochs; e++) {
      if (e > 0) model.step(o.rates ?? OLTP_RATES);
      for (const [pfn, block] of reads) w.diskRead(pfn, BigInt(block) * 8n, 8);
      const pfns = e === 0 ? Array.from({ length: o.pages }, (_, i) => i) : list.sort((a, b) => a - b);
      for (const p of pfns) w.page(p, mem.subarray(p * DB_PAGE, (p + 1) * DB_PAGE));
      pageRecords += pfns.length;
      w.endEpoch(BigInt(e) * intervalUs);
      for (const p of list) dirty[p] = 0;
      list.length = 0;
      reads.length = 0;
    }
  } finally {
    w.close();
  }
  return { epochs: o.epochs, pages: o.pages, pageRecords };
}

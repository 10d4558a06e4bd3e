// codec-bench: `npm run bench` — native encode and decode throughput of the page codec on
// scattered-change, clustered-change and cache-miss pages, each against memcpy of the same
// bytes measured in the same run, as medians of several runs (the machines are noisy).
import { DB_PAGE, DbMemoryModel } from '../trace/db-memory-model';
import { PageDecoder, PageEncoder } from '../memory/page-codec';
import { PAGE_BYTES } from '../limits';
import { Prng } from '../util/prng';
import type { Compressor } from '../memory/encodings';

export interface CodecCase {
  name: string;
  pages: number;
  memcpy_mb_s: number;
  encode_mb_s: number;
  decode_mb_s: number;
  encode_vs_memcpy: number;
  decode_vs_memcpy: number;
  wire_ratio: number;
}

export interface CodecBenchResult {
  runs: number;
  cases: CodecCase[];
}

const PAGES = 2048;

type Mutator = (page: Uint8Array, rng: Prng) => void;

const scattered: Mutator = (page, rng) => {
  for (let k = 0; k < 8; k++) {
    const o = rng.below(PAGE_BYTES / 8) * 8;
    for (let b = 0; b < 8; b++) page[o + b] = rng.u32() & 0xff;
  }
};

const clustered: Mutator = (page, rng) => {
  const len = 64 + rng.below(192),
    o = rng.below(PAGE_BYTES - len);
  for (let b = 0; b < len; b++) page[o + b] = rng.u32() & 0xff;
};

function basePages(seed: number): Uint8Array {
  const mem = new Uint8Array((PAGES + 64) * DB_PAGE);
  new DbMemoryModel(mem, new Prng(seed)).initialise();
  // The buffer pool region holds slotted database pages: take PAGES of them.
  return mem.slice(DB_PAGE * 16, DB_PAGE * (16 + PAGES));
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function timeNs(f: () => void): number {
  const t = process.hrtime.bigint();
  f();
  return Number(process.hrtime.bigint() - t);
}

function runCase(name: string, runs: number, mutate: Mutator | null, compressor: Compressor): CodecCase {
  const a = basePages(7);
  const b = Uint8Array.from(a);
  const rng = new Prng(11);
  if (mutate) for (let p = 0; p < PAGES; p++) mutate(b.subarray(p * PAGE_BYTES, (p + 1) * PAGE_BYTES), rng);
  const pfns = BigUint64Array.from({ length: PAGES }, (_, i) => BigInt(i));
  const enc = new PageEncoder({ cachePages: mutate ? PAGES : 0, compressor, batchPagesMax: PAGES });
  const dec = new PageDecoder('native', PAGES);
  const image = Uint8Array.from(a);
  const copyDst = new Uint8Array(a.length);
  const bytes = a.length;
  const memcpy: number[] = [],
    encode: number[] = [],
    decode: number[] = [];
  let wire = 0;
  enc.encode(a, pfns); // warm the cache with version A (hits from here on when mutate)
  for (let r = 0; r < runs; r++) {
    memcpy.push(timeNs(() => copyDst.set(r % 2 ? a : b)));
    const next = r % 2 ? a : b; // alternate A/B so that every run is a hit against the other
    let records: Uint8Array = new Uint8Array(0);
    encode.push(
      timeNs(() => {
        records = enc.encode(next, pfns).container;
      }),
    );
    wire = records.length;
    decode.push(timeNs(() => dec.applyInPlace(dec.unpack(records), image)));
  }
  enc.close();
  const mbs = (ns: number): number => bytes / 1e6 / (ns / 1e9);
  const m = median(memcpy),
    e = median(encode),
    d = median(decode);
  return {
    name,
    pages: PAGES,
    memcpy_mb_s: mbs(m),
    encode_mb_s: mbs(e),
    decode_mb_s: mbs(d),
    encode_vs_memcpy: m / e,
    decode_vs_memcpy: m / d,
    wire_ratio: bytes / wire,
  };
}

export function benchCodec(o: { runs: number }): CodecBenchResult {
  const runs = Math.max(1, o.runs);
  const cases: CodecCase[] = [];
  for (const c of ['zstd', 'lz4'] as const) {
    cases.push(runCase(`${c}: scattered-change hits`, runs, scattered, c));
    cases.push(runCase(`${c}: clustered-change hits`, runs, clustered, c));
    cases.push(runCase(`${c}: cache misses`, runs, null, c));
  }
  return { runs, cases };
}

export function formatCodecBench(r: CodecBenchResult): string {
  const rows = r.cases.map(
    (c) =>
      `${c.name.padEnd(32)} ${c.memcpy_mb_s.toFixed(0).padStart(7)} ` +
      `${c.encode_mb_s.toFixed(0).padStart(7)} ${c.decode_mb_s.toFixed(0).padStart(7)} ` +
      `${c.encode_vs_memcpy.toFixed(3).padStart(8)} ${c.decode_vs_memcpy.toFixed(3).padStart(8)} ` +
      `${c.wire_ratio.toFixed(1).padStart(7)}x`,
  );
  return [
    `codec throughput, MB/s of page data, median of ${r.runs} runs (${PAGES} pages each)`,
    `${'case'.padEnd(32)} ${'memcpy'.padStart(7)} ${'encode'.padStart(7)} ${'decode'.padStart(7)} ` +
      `${'enc/cpy'.padStart(8)} ${'dec/cpy'.padStart(8)} ${'wire'.padStart(8)}`,
    ...rows,
  ].join('\n');
}

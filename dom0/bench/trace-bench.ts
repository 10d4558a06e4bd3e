// trace-bench: `remusdb bench trace` — replays an RDTRACE1 trace through the same encoder the
// replication path uses and a backup-side decoder with its own memory image, checks after
// every epoch that the backup image equals the trace's image byte for byte, and reports
// wire bytes, compression ratios, cache hit rate and codec throughput.
import { ErrorCode, RemusError } from '../errors';
import { parseCachePages } from '../memory/cache-size';
import { BATCH_FRAME_BYTES, ENCODING_NAMES, type Compressor } from '../memory/encodings';
import { PageDecoder, PageEncoder, type CodecImpl } from '../memory/page-codec';
import { PAGE_BYTES } from '../limits';
import { REC_EPOCH_END, REC_PAGE, TraceReader } from '../trace/rdtrace';

export interface TraceBenchOptions {
  cache: string;
  compressor: Compressor;
  impl?: CodecImpl;
  batchPages?: number;
  /** Called after each epoch (live progress). */
  onEpoch?: (epoch: number, r: TraceBenchResult) => void;
}

export interface TraceBenchResult {
  trace: string;
  compressor: Compressor;
  epochs: number;
  pages: number;
  total_pages: number;
  raw_bytes: number;
  sent_bytes: number;
  ratio: number;
  raw_bytes_incremental: number;
  sent_bytes_incremental: number;
  ratio_incremental: number;
  hit_rate: number;
  hit_rate_incremental: number;
  cache_pages: number;
  cache_bytes: number;
  encode_mb_s: number;
  decode_mb_s: number;
  encodings: Record<string, number>;
  verified: boolean;
}

export async function benchTrace(path: string, o: TraceBenchOptions): Promise<TraceBenchResult> {
  const reader = await TraceReader.open(path);
  const { pageSize, totalPages } = reader.header;
  if (pageSize !== PAGE_BYTES) {
    throw new RemusError(ErrorCode.BAD_TRACE, `${path}: page size ${pageSize}; the codec handles 4096-byte pages`);
  }
  const imageBytes = totalPages * PAGE_BYTES;
  const truth = allocImage(imageBytes),
    image = allocImage(imageBytes);
  const cachePages = parseCachePages(o.cache, totalPages);
  const batchMax = o.batchPages ?? 1024;
  const enc = new PageEncoder({ cachePages, compressor: o.compressor, impl: o.impl, batchPagesMax: batchMax });
  const dec = new PageDecoder(o.impl, batchMax);
  const pages = new Uint8Array(batchMax * PAGE_BYTES);
  const pfns = new BigUint64Array(batchMax);
  const r: TraceBenchResult = {
    trace: path,
    compressor: o.compressor,
    epochs: 0,
    pages: 0,
    total_pages: totalPages,
    raw_bytes: 0,
    sent_bytes: 0,
    ratio: 0,
    raw_bytes_incremental: 0,
    sent_bytes_incremental: 0,
    ratio_incremental: 0,
    hit_rate: 0,
    hit_rate_incremental: 0,
    cache_pages: enc.cache?.capacityPages ?? 0,
    cache_bytes: enc.cacheBytes,
    encode_mb_s: 0,
    decode_mb_s: 0,
    encodings: {},
    verified: true,
  };
  let n = 0,
    encodeNs = 0n,
    decodeNs = 0n,
    hits0 = 0,
    miss0 = 0;
  const flush = (): void => {
    if (n === 0) return;
    const t0 = process.hrtime.bigint();
    const { container } = enc.encode(pages.subarray(0, n * PAGE_BYTES), pfns.subarray(0, n));
    const t1 = process.hrtime.bigint();
    dec.applyInPlace(dec.unpack(container), image);
    decodeNs += process.hrtime.bigint() - t1;
    encodeNs += t1 - t0;
    const sent = container.length + BATCH_FRAME_BYTES;
    r.sent_bytes += sent;
    if (r.epochs > 0) {
      r.sent_bytes_incremental += sent;
      r.raw_bytes_incremental += n * PAGE_BYTES;
    }
    r.raw_bytes += n * PAGE_BYTES;
    r.pages += n;
    n = 0;
  };
  try {
    for await (const rec of reader.records()) {
      if (rec.type === REC_PAGE) {
        pages.set(rec.data, n * PAGE_BYTES);
        pfns[n++] = BigInt(rec.pfn);
        truth.set(rec.data, rec.pfn * PAGE_BYTES);
        if (n === batchMax) flush();
      } else if (rec.type === REC_EPOCH_END) {
        flush();
        verifyEpoch(truth, image, r.epochs, path);
        if (r.epochs === 0 && enc.cache) {
          hits0 = enc.cache.stats.hits;
          miss0 = enc.cache.stats.misses;
        }
        r.epochs++;
        o.onEpoch?.(r.epochs - 1, finish(r, enc, encodeNs, decodeNs, hits0, miss0));
      }
    }
  } finally {
    enc.close();
  }
  return finish(r, enc, encodeNs, decodeNs, hits0, miss0);
}

function allocImage(bytes: number): Buffer {
  try {
    return Buffer.alloc(bytes);
  } catch (e) {
    throw new RemusError(
      ErrorCode.OUT_OF_MEMORY,
      `cannot allocate a ${bytes}-byte memory image: ${(e as Error).message}`,
      {},
      { cause: e },
    );
  }
}

function verifyEpoch(truth: Buffer, image: Buffer, epoch: number, path: string): void {
  if (truth.equals(image)) return;
  let p = 0;
  while (truth.compare(image, p * PAGE_BYTES, (p + 1) * PAGE_BYTES, p * PAGE_BYTES, (p + 1) * PAGE_BYTES) === 0) p++;
  throw new RemusError(
    ErrorCode.VERIFY_FAILED,
    `${path}: after epoch ${epoch} the backup's page ${p} differs from the trace: the codec is broken`,
    { epoch, pfn: p },
  );
}

function finish(
  r: TraceBenchResult,
  enc: PageEncoder,
  encodeNs: bigint,
  decodeNs: bigint,
  hits0: number,
  miss0: number,
): TraceBenchResult {
  const mbs = (ns: bigint): number => (ns > 0n ? r.raw_bytes / 1e6 / (Number(ns) / 1e9) : 0);
  const s = enc.cache?.stats;
  const hits = s?.hits ?? 0,
    misses = s?.misses ?? r.pages;
  const incHits = hits - hits0,
    incLookups = hits + misses - hits0 - miss0;
  const encodings: Record<string, number> = {};
  enc.encodingCounts.forEach((c, i) => {
    if (c) encodings[ENCODING_NAMES[i]] = c;
  });
  return {
    ...r,
    ratio: r.sent_bytes ? r.raw_bytes / r.sent_bytes : 0,
    ratio_incremental: r.sent_bytes_incremental ? r.raw_bytes_incremental / r.sent_bytes_incremental : 0,
    hit_rate: hits + misses ? hits / (hits + misses) : 0,
    hit_rate_incremental: incLookups ? incHits / incLookups : 0,
    encode_mb_s: mbs(encodeNs),
    decode_mb_s: mbs(decodeNs),
    encodings,
  };
}

// codec-fuzz: feeds random and mutated page records to a decoder and checks what a hostile
// stream must never achieve: a crash, an error other than ERR_BAD_PAGE_RECORD, or a write
// to any page other than the pfns the batch names. Used by the fuzz test and scripts/fuzz.
import { isRemusError, ErrorCode } from '../errors';
import { PageDecoder, PageEncoder, type CodecImpl } from './page-codec';
import { PAGE_BYTES, PAGE_RECORD_HEADER_BYTES } from '../limits';
import { Prng } from '../util/prng';
import { DbMemoryModel } from '../trace/db-memory-model';
import { loadAddon } from '../native';

export interface FuzzReport {
  iterations: number;
  accepted: number;
  rejected: number;
  violations: string[];
}

/** zstd containers of real batches, for mutating the stage-2 path. */
function seedContainers(records: Uint8Array[]): Uint8Array[] {
  return records.map((r) => {
    const out = new Uint8Array(loadAddon().packBound(r.length));
    return out.slice(0, loadAddon().packBatch(r, 1, out));
  });
}

const GUEST_PAGES = 64;

/** Valid batches to mutate: real encoder output of every encoding. */
function seedBatches(rng: Prng): Uint8Array[] {
  const mem = new Uint8Array(GUEST_PAGES * PAGE_BYTES);
  const model = new DbMemoryModel(mem, rng);
  model.initialise();
  const enc = new PageEncoder({ cachePages: GUEST_PAGES, compressor: 'lz4', batchPagesMax: GUEST_PAGES });
  const pfns = BigUint64Array.from({ length: GUEST_PAGES }, (_, i) => BigInt(i));
  const out: Uint8Array[] = [Uint8Array.from(enc.encode(mem, pfns).records)];
  for (let k = 0; k < 8; k++) {
    for (let i = 0; i < 40; i++) mem[rng.below(mem.length)] = rng.u32() & 0xff;
    for (let i = 0; i < PAGE_BYTES; i += 2) mem[PAGE_BYTES * 7 + i] ^= 0x21;
    out.push(Uint8Array.from(enc.encode(mem, pfns).records));
  }
  enc.close();
  return out;
}

function mutate(src: Uint8Array, rng: Prng): Uint8Array {
  const b = Uint8Array.from(src.subarray(0, Math.min(src.length, PAGE_RECORD_HEADER_BYTES * 4 + rng.below(9000))));
  const flips = 1 + rng.below(6);
  for (let i = 0; i < flips && b.length; i++) {
    const at = rng.chance(0.5) ? rng.below(Math.min(b.length, 16)) : rng.below(b.length);
    b[at] = rng.chance(0.5) ? rng.u32() & 0xff : b[at] ^ (1 << rng.below(8));
  }
  if (rng.chance(0.2) && b.length > 1) return b.subarray(0, rng.below(b.length));
  return b;
}

function randomBatch(rng: Prng): Uint8Array {
  const b = new Uint8Array(PAGE_RECORD_HEADER_BYTES + rng.below(300));
  rng.fill(b);
  b[8] = rng.below(8);
  b[9] = rng.chance(0.9) ? 0 : 1;
  b[10] = b.length - PAGE_RECORD_HEADER_BYTES;
  b[11] = 0;
  for (let i = 1; i < 8; i++) b[i] = rng.chance(0.9) ? 0 : b[i];
  b[0] = rng.below(GUEST_PAGES + 2);
  return b;
}

/** Pfns named by the well-formed headers of a batch (a bad record stops the walk). */
function namedPfns(batch: Uint8Array): Set<number> {
  const s = new Set<number>();
  for (let off = 0; off + PAGE_RECORD_HEADER_BYTES <= batch.length; ) {
    const dv = new DataView(batch.buffer, batch.byteOffset + off);
    s.add(Number(dv.getBigUint64(0, true)));
    off += PAGE_RECORD_HEADER_BYTES + dv.getUint16(10, true);
  }
  return s;
}

export function fuzzDecoder(iterations: number, seed: number, impl: CodecImpl = 'native'): FuzzReport {
  const rng = new Prng(seed);
  const seeds = seedBatches(new Prng(seed ^ 0x5eed));
  const containers = seedContainers(seeds);
  const dec = new PageDecoder(impl, GUEST_PAGES * 2);
  const image = new Uint8Array(GUEST_PAGES * PAGE_BYTES);
  const before = new Uint8Array(image.length);
  const r: FuzzReport = { iterations: 0, accepted: 0, rejected: 0, violations: [] };
  for (let i = 0; i < iterations; i++) {
    const viaContainer = rng.chance(0.1);
    let batch = viaContainer
      ? mutate(containers[rng.below(containers.length)], rng)
      : rng.chance(0.85)
        ? mutate(seeds[rng.below(seeds.length)], rng)
        : randomBatch(rng);
    if ((i & 1023) === 0) rng.fill(image);
    before.set(image);
    try {
      if (viaContainer) batch = Uint8Array.from(dec.unpack(batch));
      dec.applyInPlace(batch, image);
      r.accepted++;
    } catch (e) {
      if (!isRemusError(e, ErrorCode.BAD_PAGE_RECORD) && !isRemusError(e, ErrorCode.BAD_PAGE_BATCH)) {
        r.violations.push(`iteration ${i}: unexpected ${String(e)}`);
      }
      r.rejected++;
      if (viaContainer && isRemusError(e, ErrorCode.BAD_PAGE_BATCH)) batch = new Uint8Array(0);
    }
    const named = namedPfns(batch);
    for (let p = 0; p < GUEST_PAGES; p++) {
      if (named.has(p)) continue;
      const o = p * PAGE_BYTES;
      if (Buffer.compare(image.subarray(o, o + PAGE_BYTES), before.subarray(o, o + PAGE_BYTES)) !== 0) {
        r.violations.push(`iteration ${i}: page ${p} changed though no record names it`);
      }
    }
    r.iterations++;
    if (r.violations.length > 10) break;
  }
  return r;
}

// 11 codec: the page record format (docs/memory-encoding.md). The native batch encoder and
// the TypeScript reference must emit identical bytes; both decoders must rebuild the page;
// malformed records are typed errors that write nothing.
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { loadAddon } from '../dom0/native';
import { GuestMemory } from '../dom0/memory/guest-memory';
import { PageDecoder, PageEncoder, type CodecImpl } from '../dom0/memory/page-codec';
import { Encoding, type Compressor } from '../dom0/memory/encodings';
import { xorRleEncode } from '../dom0/memory/codec-ref';
import { ErrorCode, isRemusError } from '../dom0/errors';
import { DbMemoryModel, OLTP_RATES } from '../dom0/trace/db-memory-model';
import { Prng } from '../dom0/util/prng';
import { PAGE, dbPages, pfnRange, randomPages } from './support/helpers';
import { PAGE_RECORD_HEADER_BYTES } from '../dom0/limits';

const IMPLS: CodecImpl[] = ['native', 'ref'];

function pair(cachePages: number, compressor: Compressor = 'lz4'): [PageEncoder, PageEncoder] {
  return [
    new PageEncoder({ cachePages, compressor, impl: 'native', batchPagesMax: 8192 }),
    new PageEncoder({ cachePages, compressor, impl: 'ref', batchPagesMax: 8192 }),
  ];
}

/** Encodes with both encoders, asserts equal bytes, decodes with both decoders. */
function roundTrip(
  encs: [PageEncoder, PageEncoder],
  images: Uint8Array[],
  pages: Uint8Array,
  pfns: BigUint64Array,
  truth: Uint8Array,
): Uint8Array {
  const a = encs[0].encode(pages, pfns),
    b = encs[1].encode(pages, pfns);
  assert.deepEqual(Buffer.from(a.kinds), Buffer.from(b.kinds), 'same encodings chosen');
  assert.ok(Buffer.from(a.records).equals(Buffer.from(b.records)), 'native and reference bytes are equal');
  const records = Uint8Array.from(a.records);
  for (let i = 0; i < pfns.length; i++) truth.set(pages.subarray(i * PAGE, (i + 1) * PAGE), Number(pfns[i]) * PAGE);
  IMPLS.forEach((impl, k) => {
    new PageDecoder(impl).applyInPlace(records, images[k]);
    assert.ok(Buffer.from(images[k]).equals(Buffer.from(truth)), `${impl} decoder rebuilt the memory`);
  });
  return Uint8Array.from(a.kinds);
}

describe('11 codec', () => {
  it('11.1 canonical XOR+RLE: literals split only at gaps of 3 or more zero bytes', () => {
    const base = new Uint8Array(PAGE),
      page = new Uint8Array(PAGE);
    page[0] = 1;
    page[1] = 2;
    page[4] = 3; // gap of 2 → one literal of 5
    page[100] = 9; // gap of 95 → new token
    page[300] = 7; // gap of 199 → 2-octet varint
    const out = xorRleEncode(page, base, PAGE - 1)!;
    assert.deepEqual([...out], [0, 5, 1, 2, 0, 0, 3, 95, 1, 9, 0xc7, 0x01, 1, 7]);
    assert.equal(xorRleEncode(page, page, PAGE - 1)!.length, 0, 'equal pages: empty delta');
    assert.equal(xorRleEncode(randomPages(1, 1), base, PAGE - 1), null, 'too long → null');
  });

  it('11.2 chooses ZERO, UNCHANGED, XOR_RLE, LZ4 and RAW as the policy says', () => {
    const encs = pair(16);
    const images = [new Uint8Array(16 * PAGE), new Uint8Array(16 * PAGE)],
      truth = new Uint8Array(16 * PAGE);
    const first = Buffer.concat([Buffer.alloc(PAGE), dbPages(1, 3), randomPages(1, 4)]);
    assert.deepEqual(
      [...roundTrip(encs, images, first, pfnRange(3), truth)],
      [Encoding.ZERO, Encoding.LZ4, Encoding.RAW],
    );
    const second = Buffer.from(first);
    second[PAGE + 100] ^= 0xff; // small change → XOR_RLE
    assert.deepEqual(
      [...roundTrip(encs, images, second, pfnRange(3), truth)],
      [Encoding.ZERO, Encoding.XOR_RLE, Encoding.UNCHANGED],
    );
    encs.forEach((e) => e.close());
  });

  it('11.3 a dense but regular change of a cached page is sent as XOR_LZ4', () => {
    const encs = pair(4);
    const images = [new Uint8Array(4 * PAGE), new Uint8Array(4 * PAGE)],
      truth = new Uint8Array(4 * PAGE);
    const v1 = randomPages(1, 8);
    roundTrip(encs, images, v1, pfnRange(1), truth);
    const v2 = Uint8Array.from(v1);
    for (let i = 0; i < PAGE; i += 2) v2[i] ^= 0x11; // every other byte flips: RLE is long
    assert.deepEqual([...roundTrip(encs, images, v2, pfnRange(1), truth)], [Encoding.XOR_LZ4]);
    encs.forEach((e) => e.close());
  });

  it('11.4 native and reference agree byte for byte over a database workload, with evictions', () => {
    for (const cachePages of [0, 37, 400]) {
      const pagesTotal = 1024;
      const mem = new Uint8Array(pagesTotal * PAGE);
      const dirty = new Set<number>();
      const model = new DbMemoryModel(mem, new Prng(cachePages + 1), (p) => dirty.add(p));
      model.initialise();
      const encs = pair(cachePages);
      const images = [new Uint8Array(mem.length), new Uint8Array(mem.length)],
        truth = new Uint8Array(mem.length);
      const all = pfnRange(pagesTotal);
      roundTrip(encs, images, mem, all, truth);
      const seen = new Set<number>();
      for (let epoch = 1; epoch < 25; epoch++) {
        dirty.clear();
        model.step({ ...OLTP_RATES, updates: 60, refills: 4, walBytes: 6000 });
        const pfns = BigUint64Array.from([...dirty].sort((x, y) => x - y).map(BigInt));
        const pages = new Uint8Array(pfns.length * PAGE);
        pfns.forEach((p, i) => pages.set(mem.subarray(Number(p) * PAGE, (Number(p) + 1) * PAGE), i * PAGE));
        roundTrip(encs, images, pages, pfns, truth).forEach((k) => seen.add(k));
      }
      if (cachePages === 400) assert.ok(seen.has(Encoding.XOR_RLE), 'hits were delta-encoded');
      encs.forEach((e) => e.close());
    }
  });

  it('11.5 random and sparse-change pages: identical bytes, exact rebuild', () => {
    const n = 256;
    const encs = pair(n);
    const images = [new Uint8Array(n * PAGE), new Uint8Array(n * PAGE)],
      truth = new Uint8Array(n * PAGE);
    const v = randomPages(n, 5);
    roundTrip(encs, images, v, pfnRange(n), truth);
    const rng = new Prng(6);
    for (let round = 0; round < 6; round++) {
      for (let p = 0; p < n; p++) {
        const changes = rng.below(12);
        for (let c = 0; c < changes; c++) v[p * PAGE + rng.below(PAGE)] = rng.u32() & 0xff;
        if (rng.chance(0.05)) v.fill(0, p * PAGE, (p + 1) * PAGE);
      }
      roundTrip(encs, images, v, pfnRange(n), truth);
    }
    encs.forEach((e) => e.close());
  });

  it('11.6 --no-compress sends every page RAW and keeps no cache', () => {
    const [a, b] = pair(64, 'none');
    assert.equal(a.cache, null);
    const images = [new Uint8Array(8 * PAGE), new Uint8Array(8 * PAGE)],
      truth = new Uint8Array(8 * PAGE);
    const kinds = roundTrip([a, b], images, Buffer.concat([Buffer.alloc(PAGE), dbPages(7, 2)]), pfnRange(8), truth);
    assert.ok(kinds.every((k) => k === Encoding.RAW));
    a.close();
    b.close();
  });

  it('11.7 the cache slot holds exactly the version sent (native store)', () => {
    const enc = new PageEncoder({ cachePages: 8, compressor: 'lz4' });
    const v1 = dbPages(2, 9),
      v2 = Uint8Array.from(v1);
    v2[10] ^= 1;
    v2[PAGE + 4000] ^= 0x80;
    enc.encode(v1, pfnRange(2));
    enc.encode(v2, pfnRange(2));
    const store = (enc as unknown as { store: { read(s: number, d: Uint8Array): void } }).store;
    for (let p = 0; p < 2; p++) {
      const got = new Uint8Array(PAGE);
      store.read(enc.cache!.peek(p), got);
      assert.ok(Buffer.from(got).equals(Buffer.from(v2.subarray(p * PAGE, (p + 1) * PAGE))), `slot of page ${p}`);
    }
    enc.close();
    enc.close(); // idempotent
  });

  it('11.8 staged decoding leaves the image untouched and returns pages in record order', () => {
    const enc = new PageEncoder({ cachePages: 0, compressor: 'lz4' });
    const pages = dbPages(3, 4);
    const { records } = enc.encode(pages, BigUint64Array.from([5n, 1n, 3n]));
    for (const impl of IMPLS) {
      const image = new Uint8Array(8 * PAGE).fill(0xee);
      const staged = new Uint8Array(3 * PAGE),
        spfns = new BigUint64Array(3);
      assert.equal(new PageDecoder(impl).decodeStaged(records, image, staged, spfns), 3);
      assert.ok(
        image.every((b) => b === 0xee),
        `${impl}: image untouched`,
      );
      assert.deepEqual([...spfns], [5n, 1n, 3n]);
      assert.ok(Buffer.from(staged).equals(Buffer.from(pages)));
    }
    enc.close();
  });

  /** Whether this kernel allocates memory on a read of fresh anonymous memory (no shared zero page). */
  it('11.10 ZERO clears a written page, and leaves fresh guest memory unallocated', function () {
    const pages = 16384; // 64 MiB
    const Arena = loadAddon().Arena;
    // Only where reading fresh memory maps the kernel's zero page: some kernels allocate on a
    // read fault too, and then nothing can stay unallocated. Measured on the arena alone.
    const probe = new Arena(pages * PAGE);
    try {
      const m = GuestMemory.ofArena(probe);
      let sum = 0;
      for (let p = 0; p < pages; p++) sum += m.page(p)[0];
      assert.equal(sum, 0, 'fresh memory reads zero');
      if (probe.residentBytes() > pages * PAGE * 0.5) this.skip();
    } finally {
      probe.close();
    }
    const arena = new Arena(pages * PAGE);
    try {
      const image = GuestMemory.ofArena(arena);
      image.page(7).fill(0x5a);
      assert.ok(arena.residentBytes() >= PAGE, 'a written page is resident');
      const zero = Buffer.alloc(PAGE_RECORD_HEADER_BYTES);
      zero[8] = Encoding.ZERO;
      const batch = Buffer.concat(
        Array.from({ length: pages }, (_, p) => {
          const r = Buffer.from(zero);
          r.writeBigUInt64LE(BigInt(p));
          return r;
        }),
      );
      assert.equal(new PageDecoder('native').applyInPlace(batch, image), pages);
      assert.ok(
        image.page(7).every((b) => b === 0),
        'the written page is zero now',
      );
      const resident = arena.residentBytes();
      assert.ok(
        resident <= 2 ** 21,
        `decoding ZERO into fresh memory made ${resident} bytes resident (64 MiB if every page were written)`,
      );
    } finally {
      arena.close();
    }
  });

  it('11.11 XOR+RLE literals at word boundaries and at the payload limit: native equals reference', () => {
    // The native encoder finds literals on 64-byte words of an equality mask; its edge cases
    // are runs of equal bytes that straddle a word, literals that touch the page's ends, and
    // deltas that just fit (or just miss) the 4095-octet limit.
    const n = 512;
    const encs = pair(n, 'zstd');
    const images = [new Uint8Array(n * PAGE), new Uint8Array(n * PAGE)],
      truth = new Uint8Array(n * PAGE);
    const v = randomPages(n, 11);
    roundTrip(encs, images, v, pfnRange(n), truth);
    const rng = new Prng(12);
    const flip = (p: number, at: number): void => {
      if (at >= 0 && at < PAGE) v[p * PAGE + at] ^= 1 + rng.below(255);
    };
    for (let round = 0; round < 4; round++) {
      for (let p = 0; p < n - 32; p++) {
        for (let cluster = 1 + rng.below(6); cluster > 0; cluster--) {
          let at = 64 * rng.below(65) - rng.below(6);
          for (let runs = 1 + rng.below(4); runs > 0; runs--) {
            for (let d = 1 + rng.below(3); d > 0; d--) flip(p, at++);
            at += 1 + rng.below(4); // equal bytes: 1–2 stay in the literal, 3–4 end it
          }
        }
      }
      roundTrip(encs, images, v, pfnRange(n), truth);
    }
    // The last 32 pages: one long literal from byte 0, then a short one near the limit.
    const kinds: number[] = [];
    for (let k = 0; k < 32; k++) {
      const p = n - 32 + k,
        head = 4076 + (k >> 1),
        tail = 1 + (k % 8);
      for (let i = 0; i < head; i++) v[p * PAGE + i] ^= 0x5a;
      for (let i = 0; i < tail && head + 3 + i < PAGE; i++) v[p * PAGE + head + 3 + i] ^= 0xa5;
    }
    kinds.push(...roundTrip(encs, images, v, pfnRange(n), truth).subarray(n - 32));
    assert.ok(kinds.includes(Encoding.XOR_RLE) && kinds.includes(Encoding.RAW), 'both sides of the limit');
    encs.forEach((e) => e.close());
  });

  it('11.12 every compare width (AVX-512, AVX2, SSE2, scalar) emits the reference bytes', () => {
    // The child encodes the 11.11-style batch with REMUSDB_CODEC_SIMD capping the width; the
    // widths this CPU lacks fall back to its widest, which is then checked twice.
    const script = `
      const { PageEncoder } = require(${JSON.stringify(path.resolve(__dirname, '../dom0/memory/page-codec.js'))});
      const { loadAddon } = require(${JSON.stringify(path.resolve(__dirname, '../dom0/native.js'))});
      const input = require('node:fs').readFileSync(0, 'utf8');
      const [base, next] = JSON.parse(input).map((b) => Buffer.from(b, 'base64'));
      const enc = new PageEncoder({ cachePages: 64, compressor: 'zstd', batchPagesMax: 64 });
      const pfns = BigUint64Array.from({ length: 64 }, (_, i) => BigInt(i));
      enc.encode(base, pfns);
      const out = Buffer.from(enc.encode(next, pfns).records).toString('base64');
      process.stdout.write(JSON.stringify({ simd: loadAddon().codecSimd, out }));`;
    const base = randomPages(64, 21),
      next = Uint8Array.from(base);
    const rng = new Prng(22);
    for (let p = 0; p < 64; p++) {
      for (let at = 64 * rng.below(64) - 3, k = 0; k < 40 && at < PAGE; k++, at += 1 + rng.below(5)) {
        if (at >= 0) next[p * PAGE + at] ^= 1 + rng.below(255);
      }
    }
    const ref = new PageEncoder({ cachePages: 64, compressor: 'zstd', impl: 'ref', batchPagesMax: 64 });
    ref.encode(base, pfnRange(64));
    const want = Buffer.from(ref.encode(next, pfnRange(64)).records).toString('base64');
    const seen = new Set<string>();
    for (const simd of ['avx512bw', 'avx2', 'sse2', 'scalar']) {
      const arg = JSON.stringify([Buffer.from(base).toString('base64'), Buffer.from(next).toString('base64')]);
      const r = spawnSync(process.execPath, ['-e', script], {
        input: arg,
        env: { ...process.env, REMUSDB_CODEC_SIMD: simd },
        encoding: 'utf8',
      });
      assert.equal(r.status, 0, r.stderr);
      const got = JSON.parse(r.stdout) as { simd: string; out: string };
      seen.add(got.simd);
      assert.equal(got.out, want, `${simd} (ran ${got.simd}): native bytes differ from the reference`);
    }
    assert.ok(seen.has('scalar') && seen.has('sse2'), `widths run: ${[...seen].join(', ')}`);
  });

  describe('11.9 malformed records are typed errors that write nothing', () => {
    const header = (pfn: number, enc: number, len: number, reserved = 0): Buffer => {
      const h = Buffer.alloc(PAGE_RECORD_HEADER_BYTES);
      h.writeBigUInt64LE(BigInt(pfn));
      h[8] = enc;
      h[9] = reserved;
      h.writeUInt16LE(len, 10);
      return h;
    };
    const rec = (pfn: number, enc: number, payload: number[], reserved = 0): Buffer =>
      Buffer.concat([header(pfn, enc, payload.length, reserved), Buffer.from(payload)]);
    const cases: Array<[string, Buffer, RegExp]> = [
      ['truncated header', Buffer.alloc(7), /header cut/],
      ['unknown encoding', rec(0, 9, []), /unknown page encoding/],
      ['DISK_REF without read tracking', rec(0, 6, [1, 2]), /DISK_REF/],
      ['reserved octet set', rec(0, 1, [], 1), /reserved octet/],
      ['RAW too short', rec(0, 0, [1, 2, 3]), /RAW payload/],
      ['ZERO with payload', rec(0, 1, [0]), /carries a payload/],
      ['payload past the batch', header(0, 3, 40), /past the end of the batch/],
      ['pfn beyond memory', rec(4, 1, []), /beyond the end of guest memory/],
      ['RLE literal of length 0', rec(0, 3, [5, 0]), /literal of length 0/],
      ['RLE run past the page', rec(1, 3, [0x80, 0x20, 1, 1]), /passes the end of the page/],
      ['RLE literal cut', rec(0, 3, [0, 5, 1, 2]), /literal cut/],
      ['RLE 3-octet varint', rec(0, 3, [0x80, 0x80, 0x01, 1, 1]), /longer than 2 octets/],
      ['RLE non-minimal varint', rec(0, 3, [0x85, 0x00, 1, 1]), /shortest form/],
      ['LZ4 garbage', rec(0, 4, [0xf0, 1, 2]), /LZ4/],
      ['LZ4 short of a page', rec(0, 4, [0x10, 0x41]), /LZ4/],
      ['XOR_LZ4 bad offset', rec(0, 5, [0x04, 0x41, 0x05, 0x00]), /LZ4/],
    ];
    for (const [name, batch, why] of cases) {
      it(name, () => {
        for (const impl of IMPLS) {
          const image = new Uint8Array(4 * PAGE).fill(0x5a);
          const good = rec(2, 1, []); // a valid ZERO record for page 2 before the bad one
          assert.throws(
            () => new PageDecoder(impl).applyInPlace(Buffer.concat([good, batch]), image),
            (e: unknown) =>
              isRemusError(e, ErrorCode.BAD_PAGE_RECORD) && why.test(e.message) && /record #1/.test(e.message),
            `${impl}: ${name}`,
          );
          for (const p of [0, 1, 3]) {
            assert.ok(
              image.subarray(p * PAGE, (p + 1) * PAGE).every((b) => b === 0x5a),
              `${impl}: page ${p} untouched`,
            );
          }
        }
      });
    }
  });
});

describe('11b page batch container', () => {
  const header = (kind: number, len: number): Buffer => {
    const h = Buffer.alloc(8);
    h[0] = kind;
    h.writeUInt32LE(len, 4);
    return h;
  };

  it('11b.1 zstd containers round-trip and beat per-page LZ4 on database pages', () => {
    const pages = dbPages(256, 12);
    const sizes: Record<string, number> = {};
    for (const compressor of ['zstd', 'lz4', 'none'] as const) {
      const enc = new PageEncoder({ cachePages: 0, compressor, batchPagesMax: 256 });
      const { container, records } = enc.encode(pages, pfnRange(256));
      sizes[compressor] = container.length;
      const dec = new PageDecoder('native', 256);
      assert.ok(Buffer.from(dec.unpack(container)).equals(Buffer.from(records)));
      const image = new Uint8Array(256 * PAGE);
      dec.applyInPlace(dec.unpack(container), image);
      assert.ok(Buffer.from(image).equals(Buffer.from(pages)), compressor);
      enc.close();
    }
    assert.ok(sizes.zstd < sizes.lz4 && sizes.lz4 < sizes.none, JSON.stringify(sizes));
  });

  const bad: Array<[string, Buffer, RegExp]> = [
    ['short header', Buffer.alloc(5), /shorter than its header/],
    ['reserved octets', Buffer.from([0, 1, 0, 0, 0, 0, 0, 0]), /reserved/],
    ['unknown kind', header(7, 0), /unknown page batch kind/],
    ['plain length mismatch', Buffer.concat([header(0, 20), Buffer.alloc(10)]), /length mismatch/],
    ['larger than accepted', header(0, 64 * 4108 + 1), /larger than the receiver accepts/],
    ['zstd garbage', Buffer.concat([header(1, 100), Buffer.from('not a zstd frame at all')]), /zstd frame/],
  ];
  for (const [name, container, why] of bad) {
    it(`11b.2 rejects: ${name}`, () => {
      assert.throws(
        () => new PageDecoder('native', 64).unpack(container),
        (e: unknown) => isRemusError(e, ErrorCode.BAD_PAGE_BATCH) && why.test(e.message),
      );
    });
  }

  it('11b.3 rejects a zstd frame that declares another size or is cut or padded', () => {
    const enc = new PageEncoder({ cachePages: 0, compressor: 'zstd', batchPagesMax: 16 });
    const c = Buffer.from(enc.encode(dbPages(16, 1), pfnRange(16)).container);
    assert.equal(c[0], 1, 'zstd was used');
    const dec = new PageDecoder('native', 16);
    const wrongLen = Buffer.from(c);
    wrongLen.writeUInt32LE(c.readUInt32LE(4) - 1, 4);
    const isBatch = (e: unknown): boolean => isRemusError(e, ErrorCode.BAD_PAGE_BATCH);
    assert.throws(() => dec.unpack(wrongLen), isBatch);
    assert.throws(() => dec.unpack(c.subarray(0, c.length - 3)), isBatch);
    assert.throws(() => dec.unpack(Buffer.concat([c, Buffer.alloc(4)])), isBatch);
    const flipped = Buffer.from(c);
    flipped[c.length - 20] ^= 0xff;
    try {
      dec.unpack(flipped);
    } catch (e) {
      assert.ok(isBatch(e));
    }
    enc.close();
  });
});

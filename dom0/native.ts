// native: loads the native-xc addon once, injects RemusError into it, and types its
// surface. Parts built only when their system headers existed (xen, nfqueue) are optional
// here; `requirePart` turns a missing part into an actionable RemusError. The codes the
// addon can throw (its `errorCodes` table) are checked against ErrorCode when it loads, so
// a code added on one side only is a failed assertion at start, not a surprise at failover.
import * as path from 'node:path';
import { AssertionError } from 'node:assert';
import { assert } from './assert';
import { ErrorCode, RemusError, unknownErrorCodes } from './errors';
import { IMAGE_SEGMENTS_MAX, PAGE_BYTES, PAGE_RECORD_BYTES_MAX, PAGE_RECORD_HEADER_BYTES } from './limits';

export interface ProbeResult {
  ok: boolean;
  errno: number;
  message: string;
}

export interface SlotStore {
  readonly slotCount: number;
  readonly byteLength: number;
  read(slot: number, dst: Uint8Array): void;
  close(): void;
}

export interface NativeArena {
  readonly id: number;
  /** A new external ArrayBuffer over the whole arena; RemusError ERR_OUT_OF_MEMORY past arenaBufferBytesMax. */
  readonly buffer: ArrayBuffer;
  readonly pageCount: number;
  readonly dirtyMode: 'off' | 'uffd-wp' | 'hash';
  startDirtyTracking(): { mode: 'uffd-wp' | 'hash'; reason: string };
  /** The pages of [firstPfn, endPfn) (default: all) written since that range was last collected; re-arms it. */
  collectDirty(out: Uint32Array, firstPfn?: number, endPfn?: number): number;
  /**
   * As collectDirty, without re-arming: the walk is ~6× cheaper (a TLB flush per 2 MiB re-armed),
   * so a suspended guest's capture uses it; rearmDeferred() re-arms those pages once it runs.
   */
  collectDirtyDeferred(out: Uint32Array, firstPfn?: number, endPfn?: number): number;
  /**
   * Re-arms what deferred collects left writable; pages re-armed. A page written meanwhile is
   * reported again: one whose bytes differ from what the capture (pfns ascending) holds of it.
   */
  rearmDeferred(pfns?: Uint32Array, count?: number, pages?: Uint8Array): number;
  copyPages(pfns: Uint32Array, count: number, dst: Uint8Array): void;
  /** An external ArrayBuffer over pages [firstPage, firstPage + pages) (at most arenaBufferBytesMax). */
  view(firstPage: number, pages: number): ArrayBuffer;
  /** Bytes backed by the arena's own pages (not the kernel's zero page); reads /proc/self/pagemap, O(pages). */
  residentBytes(): number;
  close(): void;
}

export interface NativeAddon {
  parts: { codec: boolean; xen: boolean; nfqueue: boolean; bpf?: boolean };
  lz4Version: string;
  codecConstants: { pageSize: number; recordHeaderSize: number; recordSizeMax: number; imageSegmentsMax: number };
  SlotStore: new (slotCount: number) => SlotStore;
  encodeBatch(
    store: SlotStore | null,
    pages: Uint8Array,
    pfns: BigUint64Array,
    slots: Int32Array | null,
    hits: Uint8Array | null,
    policy: number,
    out: Uint8Array,
    kinds: Uint8Array,
  ): number;
  packBatch(records: Uint8Array, level: number, out: Uint8Array): number;
  unpackBatch(container: Uint8Array, out: Uint8Array): number;
  packBound(recordsLength: number): number;
  zstdVersion: string;
  /** The widest compare XOR+RLE uses here (avx512bw, avx2, sse2, scalar; REMUSDB_CODEC_SIMD caps it). */
  codecSimd: string;
  /** image: one buffer, or segments of equal length (the last may be shorter), each whole pages. */
  decodeBatch(
    records: Uint8Array,
    image: Uint8Array | readonly Uint8Array[],
    staged?: Uint8Array,
    stagedPfns?: BigUint64Array,
  ): number;
  lz4Compress(page: Uint8Array): Buffer | null;
  dirtyProbe(): ProbeResult;
  crc32c(data: Uint8Array, seed?: number): number;
  /** mallopt M_MMAP_THRESHOLD and M_TRIM_THRESHOLD (native-xc/src/malloc_tuning.cc); false if refused. */
  keepLargeBuffersResident(mmapThresholdBytes: number, trimThresholdBytes: number): boolean;
  /** out[i] = CRC32C of data's 4 KiB page i (data.byteLength === out.length × 4096). */
  crc32cPages(data: Uint8Array, out: Uint32Array): void;
  /** One rtnetlink request (NLM_F_ACK set); 0 or -errno from its acknowledgement. */
  netlinkRoute(message: Uint8Array): number;
  /**
   * new Arena(bytes[, {hugePages}]) maps guest memory (≤ 64 GiB; ERR_OUT_OF_MEMORY when it cannot),
   * with 2 MiB pages where the kernel allows when asked (native-xc/src/arena.cc says the
   * trade); new Arena(0, id) attaches.
   */
  Arena: new (
    bytes: number,
    idOrOptions?: number | { hugePages: boolean },
  ) => NativeArena;
  /** Longest arena `buffer` the addon creates, in bytes (2^32: Node.js 20's largest Buffer). */
  arenaBufferBytesMax: number;
  xenProbe?: () => ProbeResult;
  nfqueueProbe?: (queueNum: number) => ProbeResult;
  /** The nfqueue output buffer's queue (dom0/net/nfqueue-buffer.ts types its surface). */
  NfqueueQueue?: new (
    opts: Record<string, unknown>,
    onBatch: (count: number) => void,
  ) => unknown;
  setErrorClass(cls: unknown): void;
  /** Every code the addon's RemusErrors can carry (native-xc/src/errors.h, REMUS_ERROR_CODES). */
  errorCodes: readonly string[];
  /** CPU time of the calling thread in ns (CLOCK_THREAD_CPUTIME_ID). */
  threadCpuNs(): number;
}

const ADDON_DIR = path.join(__dirname, '..', '..', 'native-xc', 'build', 'Release');
const ADDON_PATH = path.join(ADDON_DIR, 'remusdb_native.node');
/** The in-kernel pgwire classifier's BPF object, built with the addon (its bpf part). */
export const CLASSIFY_BPF_OBJECT_PATH = path.join(ADDON_DIR, 'classify_tc.bpf.o');

let loaded: NativeAddon | undefined;
let loadError: Error | undefined;

export function loadAddon(): NativeAddon {
  if (loaded) return loaded;
  if (loadError) throw loadError;
  const addon = requireAddon();
  try {
    checkLimits(addon.codecConstants);
    checkAddonErrorCodes(addon.errorCodes);
  } catch (e) {
    loadError = e as Error;
    throw e;
  }
  addon.setErrorClass(RemusError);
  loaded = addon;
  return addon;
}

/** Asserts that each code the addon lists is one of ErrorCode's (an addon/TypeScript mismatch is a bug). */
export function checkAddonErrorCodes(codes: readonly string[] | undefined): void {
  assert(Array.isArray(codes), 'the native addon exports no errorCodes list: rebuild it (`npm install`)');
  const unknown = unknownErrorCodes(codes);
  assert(
    unknown.length === 0,
    `the native addon throws codes that dom0/errors.ts does not know: ${unknown.join(', ')}`,
  );
}

function requireAddon(): NativeAddon {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require(ADDON_PATH) as NativeAddon;
  } catch (e) {
    loadError = new RemusError(
      ErrorCode.ADDON_PART_MISSING,
      `the native addon is not built (${(e as Error).message.split('\n')[0]}); run \`npm install\` ` +
        '(it needs g++, make, python3 and liblz4-dev: `sudo scripts/setup.sh`)',
      {},
      { cause: e },
    );
    throw loadError;
  }
}

/**
 * The sizes both sides of the codec are compiled with (limits.ts, native-xc/src/page_codec.h)
 * must be equal: a difference is a build error, never an operating condition.
 */
function checkLimits(native: NativeAddon['codecConstants']): void {
  const ours = {
    pageSize: PAGE_BYTES,
    recordHeaderSize: PAGE_RECORD_HEADER_BYTES,
    recordSizeMax: PAGE_RECORD_BYTES_MAX,
    imageSegmentsMax: IMAGE_SEGMENTS_MAX,
  };
  for (const [name, value] of Object.entries(ours) as Array<[keyof typeof ours, number]>) {
    if (native[name] !== value) {
      throw new AssertionError({
        message:
          `remusdb build error: the addon's ${name} is ${native[name]}, limits.ts says ${value} ` +
          '(rebuild the addon and the TypeScript from one tree: `npm install`)',
        actual: native[name],
        expected: value,
        operator: 'strictEqual',
      });
    }
  }
}

const PART_PACKAGES = {
  codec: 'liblz4-dev',
  xen: 'libxen-dev',
  nfqueue: 'libnetfilter-queue-dev',
  bpf: 'libbpf-dev and clang',
};

/** CPU time of this (the JS) thread in ns: what a step cost, whatever else ran meanwhile. */
export function threadCpuNs(): number {
  return loadAddon().threadCpuNs();
}

export function requirePart(part: 'codec' | 'xen' | 'nfqueue' | 'bpf'): NativeAddon {
  const addon = loadAddon();
  if (!addon.parts[part]) {
    const pkg = PART_PACKAGES[part];
    throw new RemusError(
      ErrorCode.ADDON_PART_MISSING,
      `the native addon was built without its ${part} part: install ${pkg} ` +
        '(`sudo scripts/setup.sh`) and run `npm install` again',
    );
  }
  return addon;
}

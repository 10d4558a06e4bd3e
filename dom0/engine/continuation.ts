// continuation: what lets a new session continue the backup's image instead of copying all of
// guest memory again (docs/protocol.md "Reconnect"). Three parts:
//
// - UnackedPages (primary): the pfns of every checkpoint captured but not acknowledged, one
//   list per epoch, dropped as acks arrive. A page in epochs 5 and 7 stays listed until 7 is
//   acknowledged, because 7's list holds it. After a loss, a continued session's first
//   checkpoint carries these pages plus those dirtied since the last capture: everything
//   written since the backup's last acknowledged image (in live rounds, whose collects are
//   listed as they happen, and its pause). Its own list then replaces the older ones (it holds
//   them all: what it carries and what its rounds sent), so at most maxInFlight + 2 lists exist.
// - PageCrcTable (primary): the CRC32C of every page as last captured or sent. After a capture
//   at epoch N it is the per-page CRC of guest memory at N (a page written since its last
//   capture is in a later capture), so region digests of memory at N cost a CRC over the table
//   (4 octets per page), not a pass over guest memory with the guest suspended.
// - The backup's side is ImageCrcs (image-crcs.ts): the same table, kept as it commits.
//
// A region's digest is the CRC32C of its pages' CRC32Cs, as u32 little-endian (both sides
// compute it the same way; docs/protocol.md "MEMORY_VERIFY").
import { assert } from '../assert';
import { loadAddon } from '../native';
import { PAGE_BYTES } from '../limits';

/** Pages per digest region: 64 MiB of guest memory (a 64 GiB guest has 1024 regions). */
export const DIGEST_REGION_PAGES = 16384;

assert(new Uint8Array(new Uint32Array([1]).buffer)[0] === 1, 'region digests read the CRC table as little-endian u32');

export class UnackedPages {
  private lists: Array<{ epoch: number; pfns: Uint32Array }> = [];
  /**
   * Pages a live collect took from dirty tracking while no session ran (addCollected), for the
   * next continued checkpoint, which reads them with the guest suspended. Ascending, each once
   * (so at most pageCount); they belong to no epoch yet, so no acknowledgement drops them.
   */
  private collected: Uint32Array = new Uint32Array(0);
  private readonly marks: Uint32Array;

  /** listsMax: the bound the in-flight limit gives (an assertion, not a policy). */
  constructor(
    readonly pageCount: number,
    private readonly listsMax: number,
  ) {
    this.marks = new Uint32Array(Math.ceil(pageCount / 32));
  }

  get epochs(): number {
    return this.lists.length;
  }

  /** Entries over all lists (a page in two lists counts twice): at least the pages missingFrom can return. */
  get pageEntries(): number {
    let n = this.collected.length;
    for (const l of this.lists) n += l.pfns.length;
    return n;
  }

  /** Pages taken from dirty tracking before a continued checkpoint (a cut's writes): they go with it. */
  addCollected(pfns: Uint32Array, count: number): void {
    const m = this.marks;
    for (const p of this.collected) m[p >>> 5] |= 1 << (p & 31);
    for (let i = 0; i < count; i++) m[pfns[i] >>> 5] |= 1 << (pfns[i] & 31);
    this.collected = this.drainMarks(this.collected.length + count);
    assert(this.collected.length <= this.pageCount, 'collected pages are each listed once');
  }

  /** The marked pfns, ascending (at most `most` of them), read a word at a time; every mark is clear again. */
  private drainMarks(most: number): Uint32Array {
    const m = this.marks;
    const out = new Uint32Array(Math.min(this.pageCount, most));
    let n = 0;
    for (let w = 0; w < m.length; w++) {
      for (let bits = m[w]; bits !== 0; bits &= bits - 1) out[n++] = w * 32 + (31 - Math.clz32(bits & -bits));
      m[w] = 0;
    }
    return n === out.length ? out : out.slice(0, n);
  }

  /**
   * The pages of checkpoint epoch (copied: a capture's array may be reused). subsumes: they
   * include every listed page (a continued checkpoint), so the older lists go.
   */
  add(epoch: number, pfns: Uint32Array, count: number, subsumes = false): void {
    const last = this.lists[this.lists.length - 1];
    assert(!last || last.epoch < epoch, `unacked epochs increase (${last?.epoch} then ${epoch})`);
    if (subsumes) {
      this.lists = [];
      this.collected = new Uint32Array(0);
    }
    this.lists.push({ epoch, pfns: pfns.slice(0, count) });
    assert(this.lists.length <= this.listsMax, `${this.lists.length} unacknowledged lists (bound ${this.listsMax})`);
  }

  /** The backup acknowledged epoch: its pages, and all earlier ones, are in its image. */
  acked(epoch: number): void {
    while (this.lists.length && this.lists[0].epoch <= epoch) this.lists.shift();
  }

  clear(): void {
    this.lists = [];
    this.collected = new Uint32Array(0);
  }

  /**
   * Listed and collected pages that are not among except[0..exceptCount), each once, ascending:
   * marked in a bitmap, read back a word at a time (no sort: it may run in a pause).
   */
  missingFrom(except: Uint32Array, exceptCount: number): Uint32Array {
    const m = this.marks;
    const all = [...this.lists.map((l) => l.pfns), this.collected];
    for (const pfns of all) for (const p of pfns) m[p >>> 5] |= 1 << (p & 31);
    for (let i = 0; i < exceptCount; i++) m[except[i] >>> 5] &= ~(1 << (except[i] & 31));
    return this.drainMarks(this.pageEntries);
  }
}

export class PageCrcTable {
  readonly crcs: Uint32Array;
  private scratch = new Uint32Array(0);

  constructor(readonly pageCount: number) {
    this.crcs = new Uint32Array(pageCount);
  }

  /** Pages pfns[0..count) now hold pages (count × 4096 octets, in that order) as the backup will. */
  update(pfns: ArrayLike<number | bigint>, count: number, pages: Uint8Array): void {
    if (count === 0) return;
    assert(pages.length >= count * PAGE_BYTES, 'one page per pfn');
    if (this.scratch.length < count) this.scratch = new Uint32Array(count);
    const out = this.scratch.subarray(0, count);
    loadAddon().crc32cPages(pages.subarray(0, count * PAGE_BYTES), out);
    for (let i = 0; i < count; i++) this.crcs[Number(pfns[i])] = out[i];
  }

  digests(regionPages: number): Uint32Array {
    return regionDigests(this.crcs, regionPages);
  }
}

/** Region i's digest: CRC32C over the u32 CRCs of its pages. */
export function regionDigests(crcs: Uint32Array, regionPages: number): Uint32Array {
  assert(regionPages >= 1, 'region pages');
  const n = Math.ceil(crcs.length / regionPages),
    out = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    const from = i * regionPages,
      to = Math.min(crcs.length, from + regionPages);
    out[i] = loadAddon().crc32c(new Uint8Array(crcs.buffer, crcs.byteOffset + from * 4, (to - from) * 4));
  }
  return out;
}

/** How a session began, for `remusdb status --json` (lastSessionStart) and the log. */
export interface SessionStart {
  kind: 'continued' | 'full';
  /** Why: the backup's kept epoch continued, or why a full copy was needed. */
  reason: string;
  /** continued: the backup's kept epoch, our last acknowledged one, the first checkpoint's epoch. */
  keptEpoch?: number;
  ackedEpoch?: number;
  epoch?: number;
  /** continued: pages written since the last acknowledged checkpoint (what its first checkpoint carries). */
  pages?: number;
  /** continued: octets of that checkpoint's records on the channel (headers included). */
  bytes?: number;
  /** continued: the backup confirmed the digests and committed it (its ACK arrived). */
  verified?: boolean;
}

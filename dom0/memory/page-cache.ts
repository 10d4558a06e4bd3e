// page-cache: the primary's per-domain LRU of the last version of each page sent to the
// backup (RemusDB §5.3.1). This is the index only — pfn → slot, in LRU order, O(1) per page
// with no allocation per page; the page bytes live in a slot store (native, or a plain
// buffer for the reference codec) that the encoder writes. See docs/memory-encoding.md for
// why the backup needs no cache of its own.
import { assert, assertInt } from '../assert';
import { PfnIndex } from './pfn-index';

const NONE = -1;

export interface CacheStats {
  hits: number;
  misses: number;
  evictions: number;
}

export class PageCache {
  readonly capacityPages: number;
  /** pfn → slot of every cached page; pfnOf[slot] is the inverse (−1: a free slot). */
  private readonly slotOf: PfnIndex;
  private readonly pfnOf: Float64Array;
  private readonly prev: Int32Array;
  private readonly next: Int32Array;
  private mru = NONE;
  private lru = NONE;
  private used = 0;
  readonly stats: CacheStats = { hits: 0, misses: 0, evictions: 0 };

  constructor(capacityPages: number) {
    assertInt(capacityPages, 1, 2 ** 30, 'PageCache capacityPages');
    this.capacityPages = capacityPages;
    this.pfnOf = new Float64Array(capacityPages);
    this.prev = new Int32Array(capacityPages);
    this.next = new Int32Array(capacityPages);
    this.slotOf = new PfnIndex(capacityPages, this.pfnOf);
  }

  get size(): number {
    return this.used;
  }

  /**
   * Assigns a slot to each page of a batch, in batch order: a hit keeps its slot (and the
   * slot still holds the version the backup has); a miss takes a free slot or evicts the
   * least recently used page. pfns must be unique within the batch.
   */
  assignBatch(pfns: BigUint64Array, slots: Int32Array, hits: Uint8Array): void {
    assert(slots.length === pfns.length && hits.length === pfns.length, 'assignBatch sizes');
    for (let i = 0; i < pfns.length; i++) {
      const pfn = Number(pfns[i]);
      const slot = this.slotOf.get(pfn);
      if (slot !== NONE) {
        this.unlink(slot);
        this.pushMru(slot);
        slots[i] = slot;
        hits[i] = 1;
        this.stats.hits++;
      } else {
        slots[i] = this.insert(pfn);
        hits[i] = 0;
        this.stats.misses++;
      }
    }
  }

  /** Slot of pfn without changing LRU order, or -1. */
  peek(pfn: number): number {
    return this.slotOf.get(pfn);
  }

  /**
   * Forgets one page: the backup now holds a version we did not encode (it came as a disk
   * reference), so it must not serve as a delta base. Its slot is reused first.
   */
  forget(pfn: number): void {
    const slot = this.slotOf.delete(pfn);
    if (slot === NONE) return;
    this.pfnOf[slot] = -1;
    this.unlink(slot);
    this.pushLru(slot);
  }

  /** Forgets everything: the stream restarted and the backup's copy is rebuilt in full. */
  clear(): void {
    this.slotOf.clear();
    this.mru = this.lru = NONE;
    this.used = 0;
  }

  /** Pfns from most to least recently used (for tests and diagnostics). */
  *orderMruFirst(): Generator<number> {
    for (let s = this.mru; s !== NONE; s = this.next[s]) if (this.pfnOf[s] >= 0) yield this.pfnOf[s];
  }

  private insert(pfn: number): number {
    let slot: number;
    if (this.used < this.capacityPages) {
      slot = this.used++;
    } else {
      slot = this.lru;
      this.unlink(slot);
      if (this.pfnOf[slot] >= 0) {
        this.slotOf.delete(this.pfnOf[slot]);
        this.stats.evictions++;
      }
    }
    this.pfnOf[slot] = pfn;
    this.slotOf.add(pfn, slot);
    this.pushMru(slot);
    return slot;
  }

  private unlink(slot: number): void {
    const p = this.prev[slot],
      n = this.next[slot];
    if (p !== NONE) this.next[p] = n;
    else this.mru = n;
    if (n !== NONE) this.prev[n] = p;
    else this.lru = p;
  }

  private pushLru(slot: number): void {
    this.next[slot] = NONE;
    this.prev[slot] = this.lru;
    if (this.lru !== NONE) this.next[this.lru] = slot;
    this.lru = slot;
    if (this.mru === NONE) this.mru = slot;
  }

  private pushMru(slot: number): void {
    this.prev[slot] = NONE;
    this.next[slot] = this.mru;
    if (this.mru !== NONE) this.prev[this.mru] = slot;
    this.mru = slot;
    if (this.lru === NONE) this.lru = slot;
  }
}

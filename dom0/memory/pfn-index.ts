// pfn-index: the page cache's map from a guest page number to its slot, as an open-addressing
// hash table in one Int32Array (linear probing, deletion by backward shift, no tombstones).
// A JavaScript Map cost 150–300 ns per lookup on the encoder's path, a tenth of the time it
// takes to encode a batch; this costs a few tens. The table stores slots only: a slot's pfn
// is read from the cache's own slot → pfn array, so each cached page costs 2 × 4 octets here.
import { assert, assertInt } from '../assert';

const EMPTY = -1;

export class PfnIndex {
  /** Slot per bucket, or EMPTY. Invariant: every stored slot is reachable from its home bucket
   * without crossing an EMPTY bucket (what lookups rely on, and deletions restore). */
  private readonly buckets: Int32Array;
  private readonly mask: number;
  /** 32 − log2(buckets): a bucket is the top bits of a multiplicative (Fibonacci) hash. */
  private readonly shift: number;
  private count = 0;

  /**
   * @param capacity most entries at once (the cache's slots)
   * @param pfnOf the cache's slot → pfn array, read for every key comparison
   */
  constructor(
    readonly capacity: number,
    private readonly pfnOf: Float64Array,
  ) {
    assertInt(capacity, 1, 2 ** 30, 'PfnIndex capacity');
    let size = 2;
    while (size < capacity * 2) size *= 2; // load factor at most 1/2; 2^31 buckets at most
    this.buckets = new Int32Array(size).fill(EMPTY);
    this.mask = size - 1;
    this.shift = 32 - Math.log2(size);
  }

  get size(): number {
    return this.count;
  }

  /** Slot holding pfn, or -1. */
  get(pfn: number): number {
    for (let b = this.home(pfn); ; b = (b + 1) & this.mask) {
      const slot = this.buckets[b];
      if (slot === EMPTY || this.pfnOf[slot] === pfn) return slot;
    }
  }

  /** Records that slot holds pfn (pfnOf[slot] must already say so; pfn must be absent). */
  add(pfn: number, slot: number): void {
    assert(this.pfnOf[slot] === pfn, 'PfnIndex.add: pfnOf[slot] must hold pfn');
    assert(this.count < this.capacity, 'PfnIndex.add: full');
    let b = this.home(pfn);
    while (this.buckets[b] !== EMPTY) {
      assert(this.pfnOf[this.buckets[b]] !== pfn, 'PfnIndex.add: pfn already present');
      b = (b + 1) & this.mask;
    }
    this.buckets[b] = slot;
    this.count++;
  }

  /** Removes pfn (call before pfnOf[slot] changes); returns its slot, or -1. */
  delete(pfn: number): number {
    let b = this.home(pfn);
    for (; ; b = (b + 1) & this.mask) {
      const slot = this.buckets[b];
      if (slot === EMPTY) return EMPTY;
      if (this.pfnOf[slot] === pfn) break;
    }
    const removed = this.buckets[b];
    this.shiftBack(b);
    this.count--;
    return removed;
  }

  clear(): void {
    this.buckets.fill(EMPTY);
    this.count = 0;
  }

  /** Empties bucket `hole` and moves later entries of its probe run back over it. */
  private shiftBack(hole: number): void {
    for (let b = (hole + 1) & this.mask; ; b = (b + 1) & this.mask) {
      const slot = this.buckets[b];
      if (slot === EMPTY) break;
      const home = this.home(this.pfnOf[slot]);
      // The entry may move to the hole only if its home is not inside (hole, b] cyclically.
      const stays = hole <= b ? home > hole && home <= b : home > hole || home <= b;
      if (stays) continue;
      this.buckets[hole] = slot;
      hole = b;
    }
    this.buckets[hole] = EMPTY;
  }

  private home(pfn: number): number {
    const low = pfn >>> 0,
      high = (pfn / 4294967296) >>> 0;
    return Math.imul(low ^ Math.imul(high, 0x85ebca6b), 0x9e3779b1) >>> this.shift;
  }
}

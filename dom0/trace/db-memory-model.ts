// db-memory-model: a seeded model of how a database server dirties its memory, used to
// synthesise traces (`remusdb trace synth`) and, later, by the simulated domain's `oltp` and
// `scan` workloads. Memory is laid out like a database VM's: static text, a buffer pool of
// slotted pages whose tuples take small in-place updates, pages refilled from "disk"
// (content derived from the block number, so a disk reference could rebuild them), a WAL
// ring with appended records, lock/session tables with small scattered writes, and work
// memory that is allocated (filled) and freed (zeroed).
// Memory is reached a page at a time (PageSpace), so guests larger than one JavaScript
// buffer work (dom0/memory/guest-memory.ts).
import { assert } from '../assert';
import { GuestMemory } from '../memory/guest-memory';
import { Prng } from '../util/prng';

export const DB_PAGE = 4096;
const WORDS = (
  'alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike ' +
  'november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu ' +
  'customer order district warehouse stock item history payment delivery neworder'
).split(' ');

export interface ModelRates {
  /** Tuple updates per epoch (mostly hot pages). Rates are per 64 MiB of memory. */
  updates: number;
  /** Buffer pool pages replaced by a block read from disk per epoch. */
  refills: number;
  /** WAL bytes appended per epoch. */
  walBytes: number;
  /** Small writes to lock/session/stat tables per epoch. */
  tableWrites: number;
  /** Probability per epoch that a work-memory area is allocated or freed. */
  workMemChurn: number;
}

export const OLTP_RATES: ModelRates = {
  updates: 400,
  refills: 12,
  walBytes: 48 * 1024,
  tableWrites: 40,
  workMemChurn: 0.3,
};
export const SCAN_RATES: ModelRates = {
  updates: 10,
  refills: 160,
  walBytes: 1024,
  tableWrites: 10,
  workMemChurn: 0.6,
};

interface Regions {
  pool: [number, number];
  wal: [number, number];
  tables: [number, number];
  work: [number, number];
}

export type DiskReadHook = (pfn: number, block: number) => void;

/**
 * The guest's block device when the model does real disk I/O (the simulated domain with a
 * disk): 4 KiB blocks; the first walBlocks hold the WAL, the rest the table data.
 */
export interface ModelDisk {
  readonly blocks: number;
  read(block: number, into: Uint8Array): void;
  /** durable: the write carries FUA (a commit's WAL write). */
  write(block: number, from: Uint8Array, durable: boolean): void;
}

/** WAL blocks at the start of a model disk (the rest hold data pages). */
export function walBlocksOf(diskBlocks: number): number {
  return Math.max(4, Math.floor(diskBlocks / 16));
}

/** Pages the model writes: page(p) is a 4 KiB view of page p (0 ≤ p < pageCount). */
export interface PageSpace {
  readonly pageCount: number;
  page(p: number): Uint8Array;
}

/**
 * Work-memory areas (16 pages each) the model allocates and frees: at most this many, so that
 * its state (one bit per area) fits the guest's header page at every guest size (the areas
 * then cover the first 512 MiB of the work region of guests above ~3.4 GiB).
 */
export const WORK_AREAS_MAX = 8192;

export class DbMemoryModel {
  readonly regions: Regions;
  private walPos = 0;
  private lsn = 1n;
  private nextBlock: number;
  private readonly workUsed: boolean[];
  private disk: ModelDisk | null = null;

  readonly mem: PageSpace;

  /** memory: guest memory (pages × 4096, or pages); onDirty is called for every page written. */
  constructor(
    memory: Uint8Array | PageSpace,
    readonly rng: Prng,
    readonly onDirty: (pfn: number) => void = () => {},
    readonly onDiskRead: DiskReadHook = () => {},
  ) {
    this.mem = memory instanceof Uint8Array ? GuestMemory.over(memory) : memory;
    const pages = this.mem.pageCount;
    assert(Number.isInteger(pages) && pages >= 64, 'DbMemoryModel needs at least 64 pages');
    const at = (f: number): number => Math.floor(pages * f);
    this.regions = {
      pool: [at(0.05), at(0.65)],
      wal: [at(0.65), at(0.7)],
      tables: [at(0.7), at(0.85)],
      work: [at(0.85), pages],
    };
    this.nextBlock = pages * 4;
    this.workUsed = new Array(Math.min(WORK_AREAS_MAX, Math.max(1, Math.floor((pages - at(0.85)) / 16)))).fill(false);
  }

  /** Octets saveState writes: prng 16, lsn 8, walPos 4, nextBlock 4, work flags. */
  stateBytes(): number {
    return 32 + Math.ceil(this.workUsed.length / 8);
  }

  /** From now on refills read their block from disk, and transactions write WAL and pages back. */
  attachDisk(disk: ModelDisk): void {
    assert(disk.blocks >= 64, 'model disk of at least 64 blocks');
    this.disk = disk;
  }

  /** Lays out a fresh disk: every data block holds the page a refill of it would produce. */
  static formatDisk(disk: ModelDisk): void {
    const scratch = new DbMemoryModel(new Uint8Array(64 * DB_PAGE), new Prng(1));
    const page = scratch.mem.page(0);
    for (let b = walBlocksOf(disk.blocks); b < disk.blocks; b++) {
      scratch.writeDbPage(0, b);
      disk.write(b, page, false);
    }
  }

  /** Writes every field of the model's state into dv (guest memory) at offset. */
  saveState(dv: DataView, offset: number): void {
    this.rng.save(dv, offset);
    dv.setBigUint64(offset + 16, this.lsn, true);
    dv.setUint32(offset + 24, this.walPos, true);
    dv.setUint32(offset + 28, this.nextBlock, true);
    for (let i = 0; i < this.workUsed.length; i += 8) {
      let b = 0;
      for (let k = 0; k < 8 && i + k < this.workUsed.length; k++) if (this.workUsed[i + k]) b |= 1 << k;
      dv.setUint8(offset + 32 + i / 8, b);
    }
  }

  /** Reads the state saveState wrote (a resumed guest continues exactly). */
  loadState(dv: DataView, offset: number): void {
    this.rng.load(dv, offset);
    this.lsn = dv.getBigUint64(offset + 16, true);
    this.walPos = dv.getUint32(offset + 24, true);
    this.nextBlock = dv.getUint32(offset + 28, true);
    for (let i = 0; i < this.workUsed.length; i++) {
      this.workUsed[i] = (dv.getUint8(offset + 32 + (i >> 3)) & (1 << (i & 7))) !== 0;
    }
  }

  /** One OLTP transaction: update a tuple, log it, touch a lock table; sometimes a refill. */
  transaction(refillChance: number, walBytes: number): number {
    this.updateTuple();
    this.appendWal(walBytes);
    this.tableWrite();
    if (this.rng.chance(refillChance)) this.refill();
    if (this.rng.chance(0.002)) this.churnWorkMem();
    if (this.disk) this.commitToDisk();
    return this.rng.below(100000);
  }

  /** With a disk: the commit's WAL page goes out durably; now and then a pool page is written back. */
  private commitToDisk(): void {
    const disk = this.disk!;
    const [ws] = this.regions.wal;
    const walPage = ws + Math.floor(this.walPos / DB_PAGE);
    disk.write(walPage % walBlocksOf(disk.blocks), this.page(walPage), true);
    if (this.rng.chance(0.05)) {
      const p = this.hotPoolPage();
      const block = this.dv(p).getUint32(16, true);
      if (block !== 0) disk.write(this.dataBlock(block), this.page(p), false);
    }
  }

  /** The data block a page id names (ids of pages read from disk are their block already). */
  private dataBlock(block: number): number {
    const wal = walBlocksOf(this.disk!.blocks);
    if (block >= wal && block < this.disk!.blocks) return block;
    return wal + (block % (this.disk!.blocks - wal));
  }

  /** One read-heavy step: pages replaced by blocks read from disk, little else. */
  scanStep(refills: number): number {
    for (let i = 0; i < refills; i++) this.refill();
    if (this.rng.chance(0.01)) this.churnWorkMem();
    return this.rng.below(100000);
  }

  /** Fills memory as a freshly booted, warmed-up server would have it. */
  initialise(): void {
    const [ps, pe] = this.regions.pool;
    for (let p = 0; p < ps; p++) this.fillText(p);
    for (let p = ps; p < pe; p++) this.writeDbPage(p, p - ps);
    for (let p = this.regions.tables[0]; p < this.regions.tables[1]; p++) this.fillTable(p);
  }

  /** Runs one epoch of the workload; rates are per 16384 pages (64 MiB) of memory. */
  step(rates: ModelRates): void {
    const r = this.rng;
    const scale = (x: number): number => Math.max(1, Math.round((x * this.mem.pageCount) / 16384));
    for (let i = scale(rates.updates); i > 0; i--) this.updateTuple();
    for (let i = scale(rates.refills); i > 0; i--) this.refill();
    this.appendWal(scale(rates.walBytes));
    for (let i = scale(rates.tableWrites); i > 0; i--) this.tableWrite();
    if (r.chance(rates.workMemChurn)) this.churnWorkMem();
  }

  private page(p: number): Uint8Array {
    return this.mem.page(p);
  }
  private dv(p: number): DataView {
    const pg = this.mem.page(p);
    return new DataView(pg.buffer, pg.byteOffset, DB_PAGE);
  }

  private fillText(p: number): void {
    const pg = this.page(p);
    for (let i = 0; i < DB_PAGE; i += 4) {
      const v = this.rng.u32();
      pg[i] = 0x48;
      pg[i + 1] = v & 0xff;
      pg[i + 2] = (v >>> 8) & 0x3f;
      pg[i + 3] = 0xe8;
    }
    this.onDirty(p);
  }

  /** A slotted page holding block `block`: its content is a function of the block alone. */
  private writeDbPage(p: number, block: number): void {
    const pg = this.page(p),
      dv = this.dv(p);
    pg.fill(0);
    const g = new Prng(block * 2654435761);
    const tupleLen = 48 + g.below(80);
    const count = Math.floor(((DB_PAGE - 24) / (tupleLen + 4)) * (0.6 + 0.35 * g.float()));
    let upper = DB_PAGE;
    for (let t = 0; t < count; t++) {
      upper -= tupleLen;
      dv.setUint32(24 + 4 * t, (upper << 15) | tupleLen, true);
      dv.setUint32(upper, 1000 + block, true); // xmin
      dv.setUint16(upper + 18, t + 1, true); // item number
      dv.setUint32(upper + 24, block * 100 + t, true); // key
      dv.setUint32(upper + 28, g.below(100000), true); // balance
      let o = upper + 32;
      while (o < upper + tupleLen - 1) {
        const w = WORDS[g.below(WORDS.length)];
        for (let k = 0; k < w.length && o < upper + tupleLen - 1; k++) pg[o++] = w.charCodeAt(k);
        if (o < upper + tupleLen - 1) pg[o++] = 0x20;
      }
    }
    dv.setBigUint64(0, BigInt(block), true); // page LSN at load
    dv.setUint16(12, 24 + 4 * count, true); // pd_lower
    dv.setUint16(14, upper, true); // pd_upper
    dv.setUint32(16, block, true);
    this.onDirty(p);
  }

  /** A buffer pool page to update: mostly the hot set (indexes, small tables), else any. */
  private hotPoolPage(): number {
    const [ps, pe] = this.regions.pool;
    const hot = Math.max(4, Math.floor((pe - ps) * 0.03));
    return ps + (this.rng.chance(0.75) ? this.rng.skewed(hot) : this.rng.below(pe - ps));
  }

  private updateTuple(): void {
    const p = this.hotPoolPage();
    const dv = this.dv(p);
    const lower = dv.getUint16(12, true);
    const count = (lower - 24) / 4;
    if (count < 1) return;
    const item = dv.getUint32(24 + 4 * this.rng.below(count), true);
    const off = item >>> 15;
    if (off < 24 || off + 32 > DB_PAGE) return;
    dv.setUint32(off + 4, Number(this.lsn & 0xffffffffn), true); // xmax
    dv.setUint32(off + 28, this.rng.below(100000), true); // balance
    this.lsn += 1n + BigInt(this.rng.below(200));
    dv.setBigUint64(0, this.lsn, true);
    dv.setUint16(8, this.rng.u32() & 0xffff, true); // checksum
    this.onDirty(p);
  }

  private refill(): void {
    const [ps, pe] = this.regions.pool;
    const p = ps + this.rng.below(pe - ps);
    const block = this.nextBlock++;
    if (this.disk) {
      const at = this.dataBlock(block);
      this.disk.read(at, this.page(p));
      this.onDirty(p);
      this.onDiskRead(p, at);
      return;
    }
    this.writeDbPage(p, block);
    this.onDiskRead(p, block);
  }

  private appendWal(bytes: number): void {
    const [ws, we] = this.regions.wal;
    const ringBytes = (we - ws) * DB_PAGE;
    let left = bytes;
    while (left > 0) {
      const recLen = Math.min(left, 64 + this.rng.below(200));
      const rec = new Uint8Array(recLen);
      const dv = new DataView(rec.buffer);
      if (recLen >= 4) dv.setUint32(0, recLen, true);
      if (recLen >= 16) dv.setBigUint64(8, this.lsn, true);
      for (let i = 16; i < recLen; i++) rec[i] = i % 7 === 0 ? this.rng.u32() & 0xff : 0x41 + (i % 26);
      for (let i = 0; i < recLen; ) {
        const p = ws + Math.floor(this.walPos / DB_PAGE),
          at = this.walPos % DB_PAGE;
        const n = Math.min(recLen - i, DB_PAGE - at, ringBytes - this.walPos);
        this.page(p).set(rec.subarray(i, i + n), at);
        this.onDirty(p);
        i += n;
        this.walPos = (this.walPos + n) % ringBytes;
      }
      left -= recLen;
      this.lsn += BigInt(recLen);
    }
  }

  private fillTable(p: number): void {
    const dv = this.dv(p);
    for (let o = 0; o < DB_PAGE; o += 32) {
      dv.setUint32(o, (p << 8) | (o >>> 5), true);
      dv.setUint32(o + 8, this.rng.below(1 << 20), true);
    }
    this.onDirty(p);
  }

  private tableWrite(): void {
    const [ts, te] = this.regions.tables;
    const p = ts + this.rng.skewed(Math.max(2, Math.floor((te - ts) / 8)));
    const o = this.rng.below(DB_PAGE / 32) * 32;
    const dv = this.dv(p);
    dv.setUint32(o + 12, this.rng.u32(), true);
    if (this.rng.chance(0.3)) dv.setBigUint64(o + 16, this.lsn, true);
    this.onDirty(p);
  }

  private churnWorkMem(): void {
    const [ws] = this.regions.work;
    const area = this.rng.below(this.workUsed.length);
    const first = ws + area * 16;
    const n = Math.min(16, this.mem.pageCount - first);
    for (let p = first; p < first + n; p++) {
      const pg = this.page(p);
      if (this.workUsed[area]) {
        pg.fill(0);
      } else {
        const dv = this.dv(p);
        for (let o = 0; o < DB_PAGE; o += 16) {
          dv.setUint32(o, this.rng.below(1 << 24), true);
          dv.setUint32(o + 4, o, true);
        }
      }
      this.onDirty(p);
    }
    this.workUsed[area] = !this.workUsed[area];
  }
}

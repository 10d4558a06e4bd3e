// guest-program: what the simulated domain's vCPU runs. Every bit of the guest's state lives
// in guest memory — a header in page 0 (workload, step count, output sequence number, a
// running hash of all outputs, the workload model's own state) and the database-like memory
// of DbMemoryModel in the pages after it — so a backup that holds the memory resumes the
// guest exactly. Steps are deterministic: the memory after K steps depends only on the
// workload, the seed and K, which lets a test rebuild the expected image by replaying.
import * as fs from 'node:fs';
import { assert } from '../../assert';
import { ErrorCode, RemusError } from '../../errors';
import { GuestMemory } from '../../memory/guest-memory';
import { DB_PAGE, DbMemoryModel, type ModelDisk, type PageSpace } from '../../trace/db-memory-model';
import { Prng } from '../../util/prng';

export const WORKLOADS = ['oltp', 'scan', 'idle', 'trace'] as const;
export type Workload = (typeof WORKLOADS)[number];

const MAGIC = 'RDBGUEST';
const H_VERSION = 8,
  H_WORKLOAD = 12,
  H_SEED = 16,
  H_STEPS = 24,
  H_SEQ = 32,
  H_HASH = 40;
const H_TRACE_OFF = 48,
  H_DISK_BLOCKS = 56,
  H_TRACE_PATH = 2048,
  TRACE_PATH_MAX = 1024;
const H_MODEL = 64;
export const GUEST_PAGES_MIN = 128;

export type Emit = (seq: number, value: number) => void;

export interface GuestHeader {
  workload: Workload;
  seed: number;
  steps: number;
  seq: number;
  stateHash: string;
}

export class GuestProgram {
  private readonly dv: DataView;
  private readonly model: DbMemoryModel;
  private trace: TraceReplay | null = null;

  private constructor(
    readonly mem: GuestMemory,
    readonly workload: Workload,
    readonly seed: number,
  ) {
    const header = mem.page(0);
    this.dv = new DataView(header.buffer, header.byteOffset, DB_PAGE);
    this.model = new DbMemoryModel(afterHeader(mem), new Prng(seed));
    assert(
      H_MODEL + this.model.stateBytes() <= H_TRACE_PATH,
      'the model state fits the header page, before the trace path',
    );
  }

  /**
   * Boots a fresh guest: lays out memory and writes the header. With a disk (oltp and scan),
   * the guest formats it and does its I/O there: refills read blocks, commits write the WAL
   * page durably, and dirty pages are written back now and then.
   */
  static boot(
    memory: GuestMemory | Uint8Array,
    workload: Workload,
    seed: number,
    tracePath?: string,
    disk?: ModelDisk,
  ): GuestProgram {
    const mem = GuestMemory.of(memory);
    assert(mem.pageCount >= GUEST_PAGES_MIN, 'guest memory size');
    mem.page(0).fill(0);
    const g = new GuestProgram(mem, workload, seed);
    if (workload === 'trace') {
      const p = Buffer.from(tracePath ?? '', 'utf8');
      if (p.length === 0 || p.length > TRACE_PATH_MAX)
        throw new RemusError(ErrorCode.BAD_ARGUMENT, 'trace workload needs a trace file path (at most 1024 bytes)');
      mem.page(0).set(p, H_TRACE_PATH);
      g.dv.setBigUint64(H_TRACE_OFF, BigInt(TraceReplay.open(tracePath!, mem.pageCount - 1).firstRecord), true);
    } else if (workload !== 'idle') {
      g.model.initialise();
    }
    if (disk && (workload === 'oltp' || workload === 'scan')) {
      DbMemoryModel.formatDisk(disk);
      g.dv.setUint32(H_DISK_BLOCKS, disk.blocks, true);
      g.model.attachDisk(disk);
    }
    for (let i = 0; i < MAGIC.length; i++) mem.page(0)[i] = MAGIC.charCodeAt(i);
    g.dv.setUint32(H_VERSION, 1, true);
    g.dv.setUint32(H_WORKLOAD, WORKLOADS.indexOf(workload), true);
    g.dv.setUint32(H_SEED, seed >>> 0, true);
    g.dv.setUint32(H_HASH, 0x811c9dc5, true);
    g.dv.setUint32(H_HASH + 4, 0x01000193, true);
    g.model.saveState(g.dv, H_MODEL);
    return g;
  }

  /** Resumes a guest from memory (a backup after failover, or a worker after a restart). */
  static attach(memory: GuestMemory | Uint8Array, disk?: ModelDisk): GuestProgram {
    const mem = GuestMemory.of(memory);
    const header = mem.page(0);
    const magic = String.fromCharCode(...header.subarray(0, 8));
    if (magic !== MAGIC)
      throw new RemusError(ErrorCode.NO_DOMAIN, 'guest memory holds no simulated guest (bad header magic)');
    const dv = new DataView(header.buffer, header.byteOffset, DB_PAGE);
    const workload = WORKLOADS[dv.getUint32(H_WORKLOAD, true)];
    if (!workload) throw new RemusError(ErrorCode.NO_DOMAIN, 'guest header names an unknown workload');
    const g = new GuestProgram(mem, workload, dv.getUint32(H_SEED, true));
    g.model.loadState(g.dv, H_MODEL);
    const blocks = dv.getUint32(H_DISK_BLOCKS, true);
    if (blocks > 0 && disk) {
      if (disk.blocks !== blocks)
        throw new RemusError(
          ErrorCode.NO_DOMAIN,
          `the guest's disk has ${blocks} blocks; the disk given has ${disk.blocks}`,
        );
      g.model.attachDisk(disk);
    }
    return g;
  }

  /** Applies the next epoch of the trace to memory (page p of the trace is guest page p + 1). */
  private traceEpoch(): number {
    if (!this.trace) {
      const raw = this.mem.page(0).subarray(H_TRACE_PATH, H_TRACE_PATH + TRACE_PATH_MAX);
      const end = raw.indexOf(0);
      this.trace = TraceReplay.open(
        Buffer.from(raw.subarray(0, end < 0 ? raw.length : end)).toString('utf8'),
        this.mem.pageCount - 1,
      );
    }
    const off = Number(this.dv.getBigUint64(H_TRACE_OFF, true));
    const next = this.trace.applyEpoch(off, afterHeader(this.mem));
    this.dv.setBigUint64(H_TRACE_OFF, BigInt(next.offset), true);
    return next.pages;
  }

  /** Blocks of the guest's disk (0: it has none). */
  get diskBlocks(): number {
    return this.dv.getUint32(H_DISK_BLOCKS, true);
  }

  get header(): GuestHeader {
    const lo = this.dv.getUint32(H_HASH, true),
      hi = this.dv.getUint32(H_HASH + 4, true);
    return {
      workload: this.workload,
      seed: this.seed,
      steps: Number(this.dv.getBigUint64(H_STEPS, true)),
      seq: Number(this.dv.getBigUint64(H_SEQ, true)),
      stateHash: hi.toString(16).padStart(8, '0') + lo.toString(16).padStart(8, '0'),
    };
  }

  /** Runs one step (a transaction) and emits its output; all state is saved to memory. */
  step(emit: Emit): void {
    const value =
      this.workload === 'oltp'
        ? this.model.transaction(0.02, 180)
        : this.workload === 'scan'
          ? this.model.scanStep(4)
          : this.workload === 'trace'
            ? this.traceEpoch()
            : 0;
    const steps = this.dv.getBigUint64(H_STEPS, true) + 1n;
    const seq = this.dv.getBigUint64(H_SEQ, true) + 1n;
    this.dv.setBigUint64(H_STEPS, steps, true);
    this.dv.setBigUint64(H_SEQ, seq, true);
    let lo = this.dv.getUint32(H_HASH, true),
      hi = this.dv.getUint32(H_HASH + 4, true);
    lo = Math.imul(lo ^ Number(seq & 0xffffffffn), 0x01000193) >>> 0;
    hi = Math.imul(hi ^ value ^ (lo >>> 7), 0x5bd1e995) >>> 0;
    this.dv.setUint32(H_HASH, lo, true);
    this.dv.setUint32(H_HASH + 4, hi, true);
    if (this.workload === 'oltp' || this.workload === 'scan') this.model.saveState(this.dv, H_MODEL);
    emit(Number(seq), value);
  }
}

/**
 * Replays an uncompressed RDTRACE1 trace into guest memory, one epoch per step, reading at
 * the offset kept in guest memory (so a resumed guest continues at the same record). At the
 * end of the trace the guest idles.
 */
class TraceReplay {
  private constructor(
    private readonly fd: number,
    readonly firstRecord: number,
    private readonly totalPages: number,
  ) {}

  static open(file: string, guestPages: number): TraceReplay {
    let fd: number;
    try {
      fd = fs.openSync(file, 'r');
    } catch (e) {
      throw new RemusError(ErrorCode.IO, `cannot open trace ${file}: ${(e as Error).message}`, {}, { cause: e });
    }
    const h = Buffer.alloc(24);
    fs.readSync(fd, h, 0, 24, 0);
    if (h[0] === 0x1f && h[1] === 0x8b)
      throw new RemusError(
        ErrorCode.BAD_TRACE,
        `${file} is gzip-compressed: gunzip it first (the guest resumes at a byte offset)`,
      );
    if (h.subarray(0, 8).toString('latin1') !== 'RDTRACE1' || h.readUInt32LE(8) !== DB_PAGE)
      throw new RemusError(ErrorCode.BAD_TRACE, `${file} is not an RDTRACE1 trace of 4096-byte pages`);
    const total = Number(h.readBigUInt64LE(16));
    if (total > guestPages)
      throw new RemusError(
        ErrorCode.BAD_ARGUMENT,
        `${file} needs ${total + 1} pages of guest memory; the guest has ${guestPages + 1}`,
      );
    return new TraceReplay(fd, 24, total);
  }

  applyEpoch(offset: number, mem: PageSpace): { offset: number; pages: number } {
    const h = Buffer.alloc(8),
      pfn = Buffer.alloc(8);
    let pages = 0;
    for (;;) {
      if (fs.readSync(this.fd, h, 0, 8, offset) < 8) return { offset, pages }; // end of trace: idle
      const type = h[0],
        len = h.readUInt32LE(4);
      if (type === 1 && len === 8 + DB_PAGE) {
        fs.readSync(this.fd, pfn, 0, 8, offset + 8);
        const p = Number(pfn.readBigUInt64LE(0));
        if (p >= this.totalPages) throw new RemusError(ErrorCode.BAD_TRACE, `trace pfn ${p} out of range`);
        fs.readSync(this.fd, mem.page(p), 0, DB_PAGE, offset + 16);
        pages++;
      } else if (type < 1 || type > 4) {
        throw new RemusError(ErrorCode.BAD_TRACE, `unknown trace record type ${type} at byte ${offset}`);
      }
      offset += 8 + len;
      if (type === 2) return { offset, pages };
    }
  }
}

/** The pages after the header page (the workload model's memory): page p is guest page p + 1. */
function afterHeader(mem: GuestMemory): PageSpace {
  return { pageCount: mem.pageCount - 1, page: (p) => mem.page(p + 1) };
}

/** Rebuilds the memory a guest has after `steps` steps (verification by replay; any size). */
export function replayGuest(
  pages: number,
  workload: Workload,
  seed: number,
  steps: number,
  tracePath?: string,
  disk?: ModelDisk,
): GuestMemory {
  const mem = GuestMemory.allocate(pages);
  const g = GuestProgram.boot(mem, workload, seed, tracePath, disk);
  for (let i = 0; i < steps; i++) g.step(() => {});
  return mem;
}

/** Hooks of an in-memory guest disk: the fault simulator plays the backend's part with them. */
export interface MemDiskHooks {
  beforeWrite?(block: number): void;
  afterWrite?(block: number, data: Uint8Array, durable: boolean): void;
  afterRead?(block: number, data: Uint8Array): void;
}

/** A guest disk in memory: replay checks and the fault simulator. */
export class MemModelDisk implements ModelDisk {
  readonly bytes: Uint8Array;
  constructor(
    readonly blocks: number,
    private readonly hooks: MemDiskHooks = {},
  ) {
    this.bytes = new Uint8Array(blocks * DB_PAGE);
  }
  read(block: number, into: Uint8Array): void {
    into.set(this.bytes.subarray(block * DB_PAGE, (block + 1) * DB_PAGE));
    this.hooks.afterRead?.(block, into);
  }
  write(block: number, from: Uint8Array, durable: boolean): void {
    assert(block >= 0 && block < this.blocks && from.length === DB_PAGE, 'model disk write');
    this.hooks.beforeWrite?.(block);
    this.bytes.set(from, block * DB_PAGE);
    this.hooks.afterWrite?.(block, from, durable);
  }
}

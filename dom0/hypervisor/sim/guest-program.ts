// guest-program: what the simulated domain's vCPU runs. Every bit of the guest's state lives
// in guest memory — a header in page 0 (workload, step count, output sequence number, a
// running hash of all outputs, the workload model's own state) and the database-like memory
// of DbMemoryModel in the pages after it — so a backup that holds the memory resumes the
// guest exactly. Steps are deterministic: the memory after K steps depends only on the
// workload, the seed and K, which lets a test rebuild the expected image by replaying.
import { assert } from '../../assert';
import { ErrorCode, RemusError } from '../../errors';
import { DB_PAGE, DbMemoryModel } from '../../trace/db-memory-model';
import { Prng } from '../../util/prng';

export const WORKLOADS = ['oltp', 'scan', 'idle'] as const;
export type Workload = (typeof WORKLOADS)[number];

const MAGIC = 'RDBGUEST';
const H_VERSION = 8, H_WORKLOAD = 12, H_SEED = 16, H_STEPS = 24, H_SEQ = 32, H_HASH = 40;
const H_MODEL = 64;
export const GUEST_PAGES_MIN = 128;

export type Emit = (seq: number, value: number) => void;

export interface GuestHeader { workload: Workload; seed: number; steps: number; seq: number; stateHash: string; }

export class GuestProgram {
  private readonly dv: DataView;
  private readonly model: DbMemoryModel;

  private constructor(readonly mem: Uint8Array, readonly workload: Workload, readonly seed: number) {
    this.dv = new DataView(mem.buffer, mem.byteOffset, DB_PAGE);
    this.model = new DbMemoryModel(mem.subarray(DB_PAGE), new Prng(seed));
    assert(H_MODEL + this.model.stateBytes() <= DB_PAGE, 'guest header fits page 0');
  }

  /** Boots a fresh guest: lays out memory and writes the header. */
  static boot(mem: Uint8Array, workload: Workload, seed: number): GuestProgram {
    assert(mem.length % DB_PAGE === 0 && mem.length / DB_PAGE >= GUEST_PAGES_MIN, 'guest memory size');
    mem.fill(0, 0, DB_PAGE);
    const g = new GuestProgram(mem, workload, seed);
    if (workload !== 'idle') g.model.initialise();
    for (let i = 0; i < MAGIC.length; i++) mem[i] = MAGIC.charCodeAt(i);
    g.dv.setUint32(H_VERSION, 1, true);
    g.dv.setUint32(H_WORKLOAD, WORKLOADS.indexOf(workload), true);
    g.dv.setUint32(H_SEED, seed >>> 0, true);
    g.dv.setUint32(H_HASH, 0x811c9dc5, true);
    g.dv.setUint32(H_HASH + 4, 0x01000193, true);
    g.model.saveState(g.dv, H_MODEL);
    return g;
  }

  /** Resumes a guest from memory (a backup after failover, or a worker after a restart). */
  static attach(mem: Uint8Array): GuestProgram {
    const magic = String.fromCharCode(...mem.subarray(0, 8));
    if (magic !== MAGIC) throw new RemusError(ErrorCode.NO_DOMAIN, 'guest memory holds no simulated guest (bad header magic)');
    const dv = new DataView(mem.buffer, mem.byteOffset, DB_PAGE);
    const workload = WORKLOADS[dv.getUint32(H_WORKLOAD, true)];
    if (!workload) throw new RemusError(ErrorCode.NO_DOMAIN, 'guest header names an unknown workload');
    const g = new GuestProgram(mem, workload, dv.getUint32(H_SEED, true));
    g.model.loadState(g.dv, H_MODEL);
    return g;
  }

  get header(): GuestHeader {
    const lo = this.dv.getUint32(H_HASH, true), hi = this.dv.getUint32(H_HASH + 4, true);
    return {
      workload: this.workload, seed: this.seed,
      steps: Number(this.dv.getBigUint64(H_STEPS, true)),
      seq: Number(this.dv.getBigUint64(H_SEQ, true)),
      stateHash: hi.toString(16).padStart(8, '0') + lo.toString(16).padStart(8, '0'),
    };
  }

  /** Runs one step (a transaction) and emits its output; all state is saved to memory. */
  step(emit: Emit): void {
    const value = this.workload === 'oltp' ? this.model.transaction(0.02, 180)
      : this.workload === 'scan' ? this.model.scanStep(4) : 0;
    const steps = this.dv.getBigUint64(H_STEPS, true) + 1n;
    const seq = this.dv.getBigUint64(H_SEQ, true) + 1n;
    this.dv.setBigUint64(H_STEPS, steps, true);
    this.dv.setBigUint64(H_SEQ, seq, true);
    let lo = this.dv.getUint32(H_HASH, true), hi = this.dv.getUint32(H_HASH + 4, true);
    lo = Math.imul(lo ^ Number(seq & 0xffffffffn), 0x01000193) >>> 0;
    hi = Math.imul(hi ^ value ^ (lo >>> 7), 0x5bd1e995) >>> 0;
    this.dv.setUint32(H_HASH, lo, true);
    this.dv.setUint32(H_HASH + 4, hi, true);
    if (this.workload !== 'idle') this.model.saveState(this.dv, H_MODEL);
    emit(Number(seq), value);
  }
}

/** Rebuilds the memory a guest has after `steps` steps (verification by replay). */
export function replayGuest(pages: number, workload: Workload, seed: number, steps: number): Uint8Array {
  const mem = new Uint8Array(pages * DB_PAGE);
  const g = GuestProgram.boot(mem, workload, seed);
  for (let i = 0; i < steps; i++) g.step(() => {});
  return mem;
}

// sim-domain: the built-in simulated domain (`sim:<name>`). Guest memory is a native arena
// whose writes the kernel tracks (userfaultfd async write-protect + PAGEMAP_SCAN, or page
// hashing where the kernel lacks it); the vCPU is a worker thread running a seeded guest
// program. Suspend stops the vCPU at a safe point; capture copies the dirty pages and the
// small device state; outputs (one per guest step) are drained from a shared ring. The same
// class resumes a replica's memory on a backup after failover. Guest memory is at most
// SIM_GUEST_BYTES_MAX and the host's RAM (guest-size.ts): boot refuses more before mapping anything. destroy()
// waits for the vCPU thread's exit, which is watched from the start: a vCPU that already
// died (workerError) does not make it wait forever.
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { assert } from '../../assert';
import { ErrorCode, RemusError } from '../../errors';
import type { Capture, Domain } from '../../ports';
import type { LiveMemory } from '../../engine/precopy';
import { PAGE_BYTES } from '../../limits';

/** How long suspend() waits for the vCPU on the event loop before it waits asynchronously (ms). */
const SUSPEND_SYNC_WAIT_MS_DEFAULT = 5;
import { GuestMemory } from '../../memory/guest-memory';
import { loadAddon, type NativeArena } from '../../native';
import { BlockFile } from '../../../blktap/block-file';
import type { BlockGenerations } from '../../../blktap/block-generations';
import { BlockGenerations as Generations } from '../../../blktap/block-generations';
import { drainJournal, makeJournal, type JournalSink } from './disk-journal';
import { GuestProgram, type Workload } from './guest-program';
import { checkSimGuestFitsHost } from './guest-size';
import {
  C_HEAD,
  C_STATE,
  C_STEPS_PER_SEC,
  C_TAIL,
  PAUSED,
  PAUSE_REQ,
  RING_SLOTS,
  RUN,
  STOP,
  makeShared,
  type VcpuShared,
} from './vcpu-control';

export interface SimOutput {
  seq: number;
  value: number;
}

export interface SimDomainOptions {
  name: string;
  stepsPerSec: number;
  /** Called for every output the guest emits, in order (drained at barriers and by a timer). */
  onOutput?: (o: SimOutput) => void;
  suspendTimeoutMs?: number;
  /** How long suspend() and fence() wait for the vCPU on the event loop before waiting asynchronously (ms). */
  suspendSyncWaitMs?: number;
  /** Extra fields of the device state (the sim's "NIC config": its client address). */
  deviceInfo?: Record<string, unknown>;
  /** The guest's disk image (oltp and scan do their I/O there), and where completed writes go. */
  diskPath?: string;
  /** Where completed disk writes and tracked reads go (the replicator), with its generations. */
  disk?: JournalSink & { generations: BlockGenerations };
}

const WORKER = path.join(__dirname, 'vcpu-worker.js');

export class SimDomain implements Domain {
  readonly kind = 'sim' as const;
  readonly name: string;
  readonly pageCount: number;
  readonly mem: GuestMemory;
  /** 'off' until tracking starts: at boot, or for a resumed replica at its first capture or pre-copy. */
  dirtyMode = 'off';
  dirtyReason = '';
  private readonly shared: VcpuShared;
  private worker: Worker | null;
  private readonly dirty: Uint32Array;
  private readonly guestView: GuestProgram;
  private fenced = false;
  private drainTimer: NodeJS.Timeout | null = null;
  private readonly journal: SharedArrayBuffer | null;
  private readonly generations: BlockGenerations | null;
  /** Resolves when the vCPU thread has exited (for whatever reason). */
  private readonly workerExited: Promise<void>;
  private destroyed = false;
  private rearmScheduled = false;
  /** The last capture, until its pages are re-armed (pfns ascending). */
  private lastCapture: { pfns: Uint32Array; count: number; pages: Uint8Array } | null = null;
  /** Why re-arming a capture's pages last failed (they stay writable: reported at every capture). */
  private rearmError = '';
  workerError: Error | null = null;

  /** Boots a fresh guest in a new arena (at most SIM_GUEST_BYTES_MAX and the host's RAM: ERR_BAD_ARGUMENT past it). */
  static boot(
    memoryBytes: number,
    workload: Workload,
    seed: number,
    o: SimDomainOptions,
    tracePath?: string,
  ): SimDomain {
    checkSimGuestFitsHost(memoryBytes, `sim:${o.name}`);
    const arena = new (loadAddon().Arena)(memoryBytes, { hugePages: true });
    try {
      const file = o.diskPath ? BlockFile.open(o.diskPath) : null;
      try {
        // Formatting the disk happens here, before protection: the first session copies it whole.
        const disk = file
          ? {
              blocks: Math.floor(file.sizeBytes / PAGE_BYTES),
              read: (b: number, into: Uint8Array) => file.read(b * PAGE_BYTES, into),
              write: (b: number, from: Uint8Array) => file.write(b * PAGE_BYTES, from),
            }
          : undefined;
        GuestProgram.boot(GuestMemory.ofArena(arena), workload, seed, tracePath, disk);
      } finally {
        file?.close();
      }
      const d = new SimDomain(arena, o);
      d.startTracking(); // may fail too (ERR_OUT_OF_MEMORY)
      return d;
    } catch (e) {
      arena.close();
      throw e;
    }
  }

  /**
   * Resumes the guest that an arena holds (a backup's replica after failover). Dirty tracking
   * starts only when this copy is protected again (its first capture or pre-copy): write-
   * protecting every resident page costs ~100 ms per GiB, which the failover does not wait for.
   * mem: the replica's views of the arena, reused (new views of 8 GiB cost ~1 ms; before V8
   * stopped counting them as its external memory, a full garbage collection of ~30–40 ms).
   */
  static resume(arena: NativeArena, o: SimDomainOptions, mem?: GuestMemory): SimDomain {
    return new SimDomain(arena, o, mem);
  }

  private startTracking(): void {
    if (this.dirtyMode !== 'off') return;
    const t = this.arena.startDirtyTracking();
    this.dirtyMode = t.mode;
    this.dirtyReason = t.reason;
  }

  private constructor(
    private readonly arena: NativeArena,
    private readonly o: SimDomainOptions,
    mem?: GuestMemory,
  ) {
    this.name = o.name;
    this.pageCount = arena.pageCount;
    assert(!mem || mem.pageCount === arena.pageCount, 'reused views cover the arena');
    this.mem = mem ?? GuestMemory.ofArena(arena);
    this.guestView = GuestProgram.attach(this.mem);
    this.dirty = new Uint32Array(this.pageCount);
    this.shared = makeShared();
    this.journal = o.diskPath && this.guestView.diskBlocks > 0 ? makeJournal() : null;
    // Without a replicator (a resumed backup) the vCPU still keeps generations, for nobody.
    this.generations = this.journal
      ? (o.disk?.generations ?? new Generations(this.guestView.diskBlocks * PAGE_BYTES))
      : null;
    Atomics.store(this.shared.control, C_STEPS_PER_SEC, Math.max(0, Math.floor(o.stepsPerSec)));
    this.worker = new Worker(WORKER, {
      workerData: {
        arenaId: arena.id,
        sab: this.shared.sab,
        disk: this.journal ? { path: o.diskPath, journal: this.journal, generations: this.generations!.buffer } : null,
      },
    });
    this.worker.on('error', (e) => {
      this.workerError = e;
    });
    const w = this.worker;
    this.workerExited = new Promise<void>((resolve) => w.once('exit', () => resolve()));
    this.worker.unref();
    this.drainTimer = setInterval(() => this.drainOutputs(), 2);
    this.drainTimer.unref();
  }

  /**
   * Stops the vCPU. It stops within microseconds when it gets a core, so this waits for it
   * here briefly (suspendSyncWaitMs, default 5); on a loaded host it may take longer, and then the
   * wait goes on asynchronously, so that the event loop (heartbeats above all) keeps running:
   * a primary blocked past the backup's heartbeat timeout would make it fail over.
   */
  suspend(): void | Promise<void> {
    if (this.destroyed) throw new RemusError(ErrorCode.VCPU, `${this.name} was destroyed: its vCPU is gone`);
    const c = this.shared.control;
    this.drainOutputs();
    Atomics.store(c, C_STATE, PAUSE_REQ);
    Atomics.notify(c, C_STATE);
    const timeoutMs = this.o.suspendTimeoutMs ?? 2000;
    const startedAt = performance.now();
    while (!this.stopped(startedAt, timeoutMs)) {
      if (performance.now() - startedAt >= this.syncWaitMs) return this.suspendLater(startedAt, timeoutMs);
      Atomics.wait(c, C_STATE, PAUSE_REQ, 1);
    }
    this.drainOutputs(); // everything emitted before the barrier
  }

  private get syncWaitMs(): number {
    return this.o.suspendSyncWaitMs ?? SUSPEND_SYNC_WAIT_MS_DEFAULT;
  }

  private async suspendLater(startedAt: number, timeoutMs: number): Promise<void> {
    while (!this.stopped(startedAt, timeoutMs)) await new Promise((r) => setTimeout(r, 1));
    this.drainOutputs();
  }

  /** True once the vCPU has stopped; throws when it died or the timeout passed (the request withdrawn). */
  private stopped(startedAt: number, timeoutMs: number): boolean {
    const c = this.shared.control;
    if (Atomics.load(c, C_STATE) === PAUSED) return true;
    if (this.workerError)
      throw new RemusError(
        ErrorCode.VCPU,
        `the vCPU of ${this.name} died: ${this.workerError.message}`,
        {},
        { cause: this.workerError },
      );
    if (performance.now() - startedAt <= timeoutMs) return false;
    if (this.fenced) {
      throw new RemusError(
        ErrorCode.VCPU,
        `the vCPU of ${this.name} did not stop within ${timeoutMs} ms (fenced: it stops when it runs)`,
      );
    }
    // Withdraw the request so that the guest runs on; it may have stopped just now.
    if (Atomics.compareExchange(c, C_STATE, PAUSE_REQ, RUN) === PAUSED) return true;
    throw new RemusError(ErrorCode.VCPU, `the vCPU of ${this.name} did not stop within ${timeoutMs} ms (it runs on)`);
  }

  resume(): void {
    if (this.fenced || this.destroyed) return; // a destroyed guest never runs again
    const c = this.shared.control;
    assert(Atomics.load(c, C_STATE) === PAUSED, 'resume without suspend');
    Atomics.store(c, C_STATE, RUN);
    Atomics.notify(c, C_STATE);
    this.rearmSoon();
  }

  /**
   * The capture collected without re-arming (a walk ~6× cheaper in the pause); its pages are
   * re-armed in a turn of their own once the guest runs, each compared with what the capture
   * holds of it: one written meanwhile is reported again (native-xc/src/arena.cc). Nothing
   * depends on when this runs, or whether it does: pages left writable are reported at every
   * capture. A failure is kept for describe().
   */
  private rearmSoon(): void {
    if (this.rearmScheduled) return;
    this.rearmScheduled = true;
    setImmediate(() => {
      this.rearmScheduled = false;
      const cap = this.lastCapture;
      this.lastCapture = null;
      if (this.destroyed) return;
      try {
        if (cap) this.arena.rearmDeferred(cap.pfns, cap.count, cap.pages);
        else this.arena.rearmDeferred();
      } catch (e) {
        this.rearmError = (e as Error).message;
      }
    });
  }

  capture(full: boolean): Capture {
    this.startTracking();
    let count = this.arena.collectDirtyDeferred(this.dirty);
    let pfns = this.dirty;
    if (full) {
      // The engine pre-copies a simulated guest (live); a suspended whole copy is one buffer.
      if (this.pageCount * PAGE_BYTES > loadAddon().arenaBufferBytesMax) {
        throw new RemusError(
          ErrorCode.BAD_ARGUMENT,
          `a whole suspended copy of ${this.name} (${this.pageCount} pages) ` +
            'does not fit one buffer: guests past 4 GiB are copied live (pre-copy)',
        );
      }
      pfns = Uint32Array.from({ length: this.pageCount }, (_, i) => i);
      count = this.pageCount;
    }
    const pages = Buffer.allocUnsafe(count * PAGE_BYTES);
    this.arena.copyPages(pfns, count, pages);
    const own = full ? pfns : pfns.slice(0, count);
    this.lastCapture = { pfns: own, count, pages }; // nobody writes into a capture
    const deviceState = Buffer.from(
      JSON.stringify({ kind: 'sim', stepsPerSec: this.o.stepsPerSec, ...this.o.deviceInfo, ...this.guestView.header }),
    );
    return { pfns: own, count, pages, deviceState };
  }

  /** Pre-copy: the arena is shared memory, readable while the vCPU runs; collects re-arm tracking. */
  get live(): LiveMemory {
    this.startTracking(); // before the pre-copy's first read: round 0 then misses no write
    return {
      pageCount: this.pageCount,
      readLive: (pfns, count, into) => this.arena.copyPages(pfns, count, into),
      collectDirtyLive: (into, firstPfn = 0, endPfn = this.pageCount) =>
        this.arena.collectDirty(into, firstPfn, endPfn),
    };
  }

  describe(): Record<string, unknown> {
    const rearm = this.rearmError ? { rearmError: this.rearmError } : {};
    return { ...this.guestView.header, dirtyMode: this.dirtyMode, ...rearm };
  }

  /** Outputs (and completed disk writes) the guest produced since the last drain, in order. */
  drainOutputs(): void {
    if (this.journal) {
      const gens = this.generations!,
        sink = this.o.disk;
      drainJournal(this.journal, {
        write: (off, data, durable) => {
          sink?.write(off, data, durable);
          gens.endWrite(off, data.length);
        },
        read: (block, crc, gen) => sink?.read(block, crc, gen),
      });
    }
    const c = this.shared.control;
    const tail = Atomics.load(c, C_TAIL);
    let head = Atomics.load(c, C_HEAD);
    for (; head < tail; head++) {
      const slot = (head % RING_SLOTS) * 2;
      this.o.onOutput?.({ seq: this.shared.ring[slot], value: this.shared.ring[slot + 1] });
    }
    Atomics.store(c, C_HEAD, head);
  }

  /**
   * Stops the guest for good (a fenced primary). The pause request is never withdrawn: a vCPU
   * that has not stopped within the brief wait stops when it next runs (resume() is a no-op).
   */
  fence(): void {
    if (this.fenced || this.destroyed) return;
    this.fenced = true;
    const c = this.shared.control;
    if (Atomics.compareExchange(c, C_STATE, RUN, PAUSE_REQ) !== RUN) return;
    Atomics.notify(c, C_STATE);
    const until = performance.now() + this.syncWaitMs;
    while (Atomics.load(c, C_STATE) === PAUSE_REQ && performance.now() < until) Atomics.wait(c, C_STATE, PAUSE_REQ, 1);
    this.drainOutputs();
  }

  /** Stops the vCPU for good and releases the arena. Idempotent; resume() is a no-op after it. */
  async destroy(): Promise<void> {
    this.destroyed = true;
    if (this.drainTimer) clearInterval(this.drainTimer);
    this.drainTimer = null;
    if (!this.worker) return;
    Atomics.store(this.shared.control, C_STATE, STOP);
    Atomics.notify(this.shared.control, C_STATE);
    const w = this.worker;
    this.worker = null;
    // Let the vCPU leave its loop by itself: terminating a thread that is inside a native
    // call can abort the process. Terminate only if it does not stop in time. The exit is
    // watched since construction, so a vCPU that is already gone resolves at once.
    const t = setTimeout(() => {
      void w.terminate();
    }, 2000);
    await this.workerExited;
    clearTimeout(t);
    this.arena.close();
  }
}

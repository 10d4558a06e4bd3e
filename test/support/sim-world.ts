// sim-world: a seeded, deterministic world for the checkpoint engine — virtual time, links
// that frame records through the real framer and can lose, delay, corrupt or cut them, a
// guest that runs one deterministic step per virtual millisecond, and actors (primary,
// backup) that can be crashed at any phase. One seed, one exact run: a failing seed
// reproduces with SIM_SEED=<n>. Checkpoints cost the guest virtual time (the whole world
// waits while the primary's synchronous pause runs, as a process blocked in it would), so the
// paced checkpoints of trigger 'output' (engine/pacing.ts) meet a real pause share bound.
import { Backup } from '../../dom0/engine/backup';
import { OutputBuffer } from '../../dom0/engine/output-buffer';
import { Primary, type Phase } from '../../dom0/engine/primary';
import type { Capture, Clock, Domain, Link, Replica, ReplicaDisk } from '../../dom0/ports';
import type { LiveMemory } from '../../dom0/engine/precopy';
import { GuestProgram, MemModelDisk } from '../../dom0/hypervisor/sim/guest-program';
import { DiskReplicator } from '../../blktap/replicator';
import type { DiskTarget } from '../../blktap/epoch-buffer';
import type { AsyncDiskTarget } from '../../blktap/disk-io-queue';
import { EpochHeldDisk } from '../../blktap/replica-disk';
import { loadAddon } from '../../dom0/native';
import { ErrorCode, RemusError } from '../../dom0/errors';
import { GuestMemory } from '../../dom0/memory/guest-memory';
import { encodeRecord, RecordDecoder } from '../../dom0/protocol/framer';
import { PROTOCOL_VERSION, Rec, jsonBody } from '../../dom0/protocol/records';
import { Prng } from '../../dom0/util/prng';
import type { PaceCause, Trigger } from '../../dom0/engine/pacing';
import { INTERVAL_AUTO_MS_MIN } from '../../dom0/limits';

const PAGE = 4096;
export class Crash extends Error {}

interface Ev {
  at: number;
  seq: number;
  fn: () => void;
  cancelled: boolean;
}

export class VirtualClock implements Clock {
  private t = 0;
  private n = 0;
  private heap: Ev[] = [];
  now(): number {
    return this.t;
  }
  setTimer(ms: number, fn: () => void): unknown {
    const ev = { at: this.t + Math.max(0, ms), seq: this.n++, fn, cancelled: false };
    this.push(ev);
    return ev;
  }
  clearTimer(h: unknown): void {
    (h as Ev).cancelled = true;
  }
  defer(fn: () => void): void {
    this.setTimer(0, fn);
  }
  /** Events still to run (a timer not cleared keeps its loop alive). */
  get pendingEvents(): number {
    return this.heap.filter((ev) => !ev.cancelled).length;
  }
  /**
   * Time passes inside the running event (a synchronous pause of the primary): events due
   * meanwhile run late, in order, as timers of a blocked process do.
   */
  advance(ms: number): void {
    this.t += Math.max(0, ms);
  }
  /** Runs events until virtual time `end`; a Crash thrown by an actor's hook is its death. */
  runUntil(end: number): void {
    while (this.heap.length && this.heap[0].at <= end) {
      const ev = this.pop();
      if (ev.cancelled) continue;
      this.t = Math.max(this.t, ev.at);
      try {
        ev.fn();
      } catch (e) {
        if (!(e instanceof Crash)) throw e;
      }
    }
    this.t = Math.max(this.t, end);
  }
  private less(a: Ev, b: Ev): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq);
  }
  private push(ev: Ev): void {
    const h = this.heap;
    h.push(ev);
    for (let i = h.length - 1; i > 0; ) {
      const p = (i - 1) >> 1;
      if (!this.less(h[i], h[p])) break;
      [h[i], h[p]] = [h[p], h[i]];
      i = p;
    }
  }
  private pop(): Ev {
    const h = this.heap,
      top = h[0],
      last = h.pop()!;
    if (h.length) {
      h[0] = last;
      for (let i = 0; ; ) {
        const l = 2 * i + 1,
          r = l + 1;
        let m = i;
        if (l < h.length && this.less(h[l], h[m])) m = l;
        if (r < h.length && this.less(h[r], h[m])) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m], h[i]];
        i = m;
      }
    }
    return top;
  }
}

/** A clock whose timers stop firing once its actor is dead. */
export function actorClock(base: Clock, dead: () => boolean): Clock {
  return {
    now: () => base.now(),
    setTimer: (ms, fn) =>
      base.setTimer(ms, () => {
        if (!dead()) fn();
      }),
    clearTimer: (h) => base.clearTimer(h),
    defer: (fn) =>
      base.defer(() => {
        if (!dead()) fn();
      }),
  };
}

const KNOWN = new Set<number>(Object.values(Rec));

/** One end of an in-memory connection; bytes go through the real framer. */
export class MemLink implements Link {
  peer!: MemLink;
  private recordCb: (type: number, body: Buffer) => void = () => {};
  private closeCb: (e: Error | null) => void = () => {};
  private closed = false;
  private gone = false;
  /** A middlebox cut the connection: nothing more passes either way (each end learns only by itself). */
  private severed = false;
  private lastDelivery = 0;
  private readonly decoder = new RecordDecoder(KNOWN);
  corruptNext = false;

  /** Octets sent but not yet delivered (the pre-copy waits while this is high). */
  backlogBytes = 0;
  queuedBytes = 0;
  get drainedBytes(): number {
    return this.queuedBytes - this.backlogBytes;
  }
  constructor(
    private readonly net: Net,
    readonly remote: string,
  ) {}

  send(type: number, body: Uint8Array): void {
    if (this.closed || this.net.cut || this.severed) return;
    const bytes = encodeRecord(type, body);
    if (this.corruptNext) {
      this.corruptNext = false;
      bytes[bytes.length - 1] ^= 0x40;
    }
    const at = Math.max(this.lastDelivery, this.net.clock.now() + this.net.latency());
    this.lastDelivery = at;
    this.backlogBytes += bytes.length;
    this.queuedBytes += bytes.length;
    // A dead peer reads nothing: what was sent to it stays queued (its backlog is no sign of life).
    // Nor does one that holds its reading: the bytes wait (still our backlog), as TCP's window closes.
    this.net.clock.setTimer(at - this.net.clock.now(), () => {
      if (this.peer.gone) return;
      if (this.peer.readingHeld) return void this.peer.unread.push([this, bytes]);
      this.backlogBytes -= bytes.length;
      this.peer.receive(bytes);
    });
  }
  private readingHeld = false;
  private unread: Array<[MemLink, Buffer]> = [];
  /** Flow control (Link.holdReading): the backup stops reading while its intake is over its bound. */
  holdReading(held: boolean): void {
    this.readingHeld = held;
    while (!this.readingHeld && this.unread.length > 0) {
      const [from, bytes] = this.unread.shift()!;
      from.backlogBytes -= bytes.length;
      this.receive(bytes);
    }
  }
  private receive(bytes: Buffer): void {
    if (this.closed || this.gone || this.severed) return;
    let recs: ReturnType<RecordDecoder['push']>;
    try {
      recs = this.decoder.push(bytes);
    } catch (e) {
      this.end(e as Error);
      return;
    }
    for (const r of recs) if (!this.closed) this.recordCb(r.type, r.body);
  }
  close(): void {
    if (this.closed) return;
    this.closed = true;
    // Like TCP's FIN, the close reaches the peer after everything sent before it.
    const at = Math.max(this.lastDelivery, this.net.clock.now() + this.net.latency());
    if (!this.net.silent && !this.severed)
      this.net.clock.setTimer(at - this.net.clock.now(), () => this.peer.end(null));
  }
  /**
   * A reset that only this end sees (a middlebox, a NAT timeout): it breaks here at once; the
   * peer's end stays open and hears nothing more, as a half-open TCP connection.
   */
  resetHere(): void {
    this.severed = this.peer.severed = true;
    this.end(new Error('connection reset'));
  }
  /** This side's process died: power loss (silent) or kill (the peer sees the close). */
  die(silent: boolean): void {
    this.gone = true;
    this.closed = true;
    if (!silent) this.net.clock.setTimer(this.net.latency(), () => this.peer.end(null));
  }
  end(e: Error | null): void {
    if (this.closed) return;
    const cb = this.closeCb;
    this.closeCb = () => {};
    cb(e);
    this.closed = true;
  }
  onRecord(cb: (type: number, body: Buffer) => void): void {
    this.recordCb = cb;
  }
  onClose(cb: (e: Error | null) => void): void {
    this.closeCb = cb;
  }
}

export class Net {
  cut = false;
  silent = false;
  extraLatency = 0;
  constructor(
    readonly clock: Clock,
    private readonly rng: Prng,
    private readonly baseLatency: number,
  ) {}
  latency(): number {
    return this.baseLatency + this.extraLatency + this.rng.below(3);
  }
  pair(): [MemLink, MemLink] {
    const a = new MemLink(this, 'backup'),
      b = new MemLink(this, 'primary');
    a.peer = b;
    b.peer = a;
    return [a, b];
  }
}

/** A deterministic guest: one step per virtual millisecond while running. */
export class StepDomain implements Domain {
  readonly kind = 'sim' as const;
  readonly name = 'simtest';
  readonly mem: Uint8Array;
  private readonly shadow: Uint8Array;
  private readonly guest: GuestProgram;
  private running = true;
  fenced = false;
  /** The next call of this step throws (a domain error: vCPU did not stop, hypervisor call failed). */
  failNext: 'suspend' | 'capture' | 'resume' | null = null;
  /** The domain is gone (destroyed on this host): it runs no more and every call fails with ERR_NO_DOMAIN. */
  gone = false;
  /** What a capture of n pages costs in virtual time (null: nothing), and how that time passes. */
  pauseCost: { ms: (pages: number) => number; advance: (ms: number) => void } | null = null;
  /** Told of every pause, from the suspend to the resume that ends it (virtual ms). */
  onPause: ((fromMs: number, toMs: number) => void) | null = null;
  private suspendedAt = -1;

  constructor(
    readonly pageCount: number,
    seed: number,
    private readonly clock: Clock,
    private readonly onOutput: (seq: number, value: number) => void,
    readonly disk?: MemModelDisk,
  ) {
    this.mem = new Uint8Array(pageCount * PAGE);
    this.guest = GuestProgram.boot(this.mem, 'oltp', seed, undefined, disk);
    this.shadow = Uint8Array.from(this.mem);
    this.tick();
  }
  private tick(): void {
    this.clock.setTimer(1, () => {
      if (this.running && !this.fenced && !this.gone) this.guest.step((s, v) => this.onOutput(s, v));
      this.tick();
    });
  }
  suspend(): void {
    this.failIf('suspend');
    this.running = false;
    this.suspendedAt = this.clock.now();
  }
  resume(): void {
    this.failIf('resume');
    this.running = true;
    this.leftSuspended = false;
    if (this.suspendedAt >= 0) this.onPause?.(this.suspendedAt, this.clock.now());
    this.suspendedAt = -1;
  }
  private failIf(step: 'suspend' | 'capture' | 'resume'): void {
    if (this.gone) throw new RemusError(ErrorCode.NO_DOMAIN, `the domain is gone (${step})`);
    if (this.failNext === step) {
      this.failNext = null;
      throw new Error(`injected: ${step} failed`);
    }
  }
  capture(full: boolean): Capture {
    this.failIf('capture');
    const pfns: number[] = [];
    for (let p = 0; p < this.pageCount; p++) if (full || this.written(p)) pfns.push(p);
    this.lastRead.clear();
    const pages = new Uint8Array(pfns.length * PAGE);
    pfns.forEach((p, i) => pages.set(this.mem.subarray(p * PAGE, (p + 1) * PAGE), i * PAGE));
    this.shadow.set(this.mem);
    if (this.pauseCost) this.pauseCost.advance(this.pauseCost.ms(pfns.length));
    return {
      pfns: Uint32Array.from(pfns),
      count: pfns.length,
      pages,
      deviceState: Buffer.from(JSON.stringify({ kind: 'sim', ...this.guest.header })),
    };
  }
  describe(): Record<string, unknown> {
    return { ...this.guest.header };
  }
  fence(): void {
    this.fenced = true;
  }
  /** Running: neither suspended, fenced nor gone. */
  get runs(): boolean {
    return this.running && !this.fenced && !this.gone;
  }
  /**
   * A new protect process finds the guest suspended mid-checkpoint by the one that died (as
   * XenDomain.adoptLeftSuspended): it stays so until a checkpoint resumes it, or runUnprotected.
   */
  private leftSuspended = false;
  adoptLeftSuspended(): boolean {
    this.leftSuspended = !this.running && this.suspendedAt >= 0;
    return this.leftSuspended;
  }
  runUnprotected(): void {
    if (!this.leftSuspended || this.fenced) return;
    this.resume();
  }

  /**
   * Pre-copy (engine/precopy.ts). The guest runs while the engine reads: one guest step lands
   * in the middle of every live read (a torn batch), so writes race the copy as on a real host.
   */
  get live(): LiveMemory {
    return {
      pageCount: this.pageCount,
      readLive: (p, c, into) => this.readLive(p, c, into),
      collectDirtyLive: (into, first, end) => this.collectDirtyLive(into, first, end),
    };
  }
  /**
   * What each page held when a live read copied it. Dirty tracking here compares contents, so a
   * page written and then restored (A→B→A) would look clean although a read saw B: a page also
   * counts as written while it differs from what was read of it (real log-dirty marks writes).
   */
  private readonly lastRead = new Map<number, Buffer>();
  private readLive(pfns: Uint32Array, count: number, into: Uint8Array): void {
    const half = count >> 1;
    for (let i = 0; i < count; i++) {
      if (i === half && this.running && !this.fenced) this.guest.step((s, v) => this.onOutput(s, v));
      into.set(this.mem.subarray(pfns[i] * PAGE, (pfns[i] + 1) * PAGE), i * PAGE);
      this.lastRead.set(pfns[i], Buffer.from(into.subarray(i * PAGE, (i + 1) * PAGE)));
    }
  }
  private written(p: number): boolean {
    const page = this.mem.subarray(p * PAGE, (p + 1) * PAGE),
      read = this.lastRead.get(p);
    return (
      Buffer.compare(page, this.shadow.subarray(p * PAGE, (p + 1) * PAGE)) !== 0 ||
      (read !== undefined && !read.equals(page))
    );
  }
  /** A collect of part of the guest; the guest runs before each later part (the engine's turns). */
  private collectDirtyLive(into: Uint32Array, first = 0, end = this.pageCount): number {
    if (first > 0 && this.running && !this.fenced) this.guest.step((s, v) => this.onOutput(s, v));
    let n = 0;
    for (let p = first; p < end; p++) {
      if (!this.written(p)) continue;
      into[n++] = p;
      this.shadow.set(this.mem.subarray(p * PAGE, (p + 1) * PAGE), p * PAGE);
      this.lastRead.delete(p);
    }
    return n;
  }
}

/** A backup's disk in memory. */
export class MemDiskTarget implements DiskTarget {
  readonly bytes: Uint8Array;
  flushes = 0;
  constructor(readonly sizeBytes: number) {
    this.bytes = new Uint8Array(sizeBytes);
  }
  write(off: number, data: Uint8Array): void {
    this.bytes.set(data, off);
  }
  zero(off: number, len: number): void {
    this.bytes.fill(0, off, off + len);
  }
  read(off: number, into: Uint8Array): void {
    into.set(this.bytes.subarray(off, off + into.length));
  }
  flush(): void {
    this.flushes++;
  }
}

/**
 * A backup's disk whose writes land later, on the backup's clock, each after its own delay — a
 * file written on libuv's pool (blktap/disk-io-queue.ts). The queue issues one at a time; one
 * that issued several would land them out of order here.
 */
export class SlowDiskTarget implements AsyncDiskTarget {
  constructor(
    readonly disk: MemDiskTarget,
    private readonly clock: Clock,
    private readonly delayMs: () => number,
  ) {}
  get sizeBytes(): number {
    return this.disk.sizeBytes;
  }
  writeAsync(off: number, data: Uint8Array, done: (e: Error | null) => void): void {
    const copy = Uint8Array.from(data);
    this.clock.setTimer(this.delayMs(), () => {
      this.disk.write(off, copy);
      done(null);
    });
  }
  write(off: number, data: Uint8Array): void {
    this.disk.write(off, data);
  }
  zero(off: number, len: number): void {
    this.disk.zero(off, len);
  }
  read(off: number, into: Uint8Array): void {
    this.disk.read(off, into);
  }
  flush(): void {
    this.disk.flush();
  }
}

/**
 * Pages per segment of a MemReplica's image: small and prime, so a test guest's image has
 * several segments of which the last is shorter, as a 5 GiB guest's has (1 GiB each).
 */
export const MEM_REPLICA_SEGMENT_PAGES = 61;

export class MemReplica implements Replica {
  readonly image: GuestMemory;
  deviceState: Uint8Array | null = null;
  resumed = false;
  readonly disk: ReplicaDisk | null;
  /** diskContinues: diskTarget is a copy the primary trusts (remusdb backup --reuse-disk). */
  constructor(
    readonly pageCount: number,
    readonly diskTarget: MemDiskTarget | null = null,
    readonly diskContinues = false,
    rangeCrcBytes?: number,
    /** The disk's writes land later on this clock (SlowDiskTarget); absent: at once. */
    slowWrites?: { clock: Clock; delayMs: () => number },
  ) {
    this.image = GuestMemory.allocate(pageCount, MEM_REPLICA_SEGMENT_PAGES);
    const target =
      diskTarget && slowWrites ? new SlowDiskTarget(diskTarget, slowWrites.clock, slowWrites.delayMs) : diskTarget;
    this.disk = target ? new EpochHeldDisk(target, rangeCrcBytes) : null;
  }
  commitDeviceState(s: Uint8Array): void {
    this.deviceState = Uint8Array.from(s);
  }
  resume(): Record<string, unknown> {
    this.resumed = true;
    const disk = this.diskTarget ? { diskCrc: loadAddon().crc32c(this.diskTarget.bytes) } : {};
    return { ...GuestProgram.attach(this.image.clone()).header, crc: this.image.crc32c(), ...disk };
  }
}

export const SIM_DISK_BLOCKS = 256;

export type Fault =
  | { kind: 'none' }
  | { kind: 'crash-primary'; phase: Phase; epoch: number; silent: boolean }
  | { kind: 'crash-backup'; phase: string; epoch: number; silent: boolean; restartAfterMs: number | null }
  /**
   * precopyBatch: drop the link when the first pre-copy has sent that batch instead — with a
   * disk, at the next data-block write after it, so that write is in flight and lost.
   */
  | { kind: 'drop-link'; atMs: number; precopyBatch?: number }
  | { kind: 'delay'; atMs: number; forMs: number; extraMs: number }
  | { kind: 'corrupt'; atMs: number; toBackup: boolean }
  /** gone: from then on the domain does not exist (xl destroy): a live session must fail over. */
  | { kind: 'domain-error'; step: 'suspend' | 'capture' | 'resume'; epoch: number; gone: boolean }
  | { kind: 'stray'; atMs: number; afterGoodbye: boolean; act: StrayAct }
  | { kind: 'reconnect'; atMs: number; how: ReconnectCause; forMs: number; then: ContinuedFault }
  /**
   * At a phase of the nth output-triggered checkpoint: the primary dies, or the link is reset
   * (seen by both ends: the backup fails over; or by the primary only: the session continues).
   */
  | { kind: 'crash-early'; phase: Phase; nth: number; silent: boolean }
  | { kind: 'cut-early'; phase: Phase; nth: number; onlyPrimary: boolean }
  /**
   * The protect process dies at a phase of a checkpoint (kill -9, a bug), the domain lives on
   * (Xen): running, or suspended when the phase falls inside the pause. restartAfterMs later a
   * new process protects it, first holding its outputs (the backup may have taken over). With
   * backupGone the backup's host dies at the same moment: no backup ever answers, and after
   * the hold the guest must run (unprotected), also one the dead process left suspended.
   */
  | { kind: 'restart-primary'; phase: Phase; epoch: number; restartAfterMs: number; backupGone: boolean };

/**
 * How checkpoints are paced in a run (engine/pacing.ts), drawn from a generator of its own so
 * that each seed's fault is the one it always was. sparseEvery: the guest sends only every
 * nth output (1: a flood, one per step); bursts: extra outputs pushed at once, some while a
 * checkpoint streams; pauseMs: what a capture of n pages costs.
 */
export interface Pacing {
  trigger: Trigger;
  maxPauseShare: number;
  windowMs: number;
  sparseEvery: number;
  burstChance: number;
  pauseBaseMs: number;
  pagesPerMs: number;
  earlyFault: Fault | null;
  /** --interval auto (engine/adaptive-interval.ts): the interval chosen in [5, 20] ms from the pauses. */
  intervalAuto: boolean;
}

const PAUSE_SHARES = [0.02, 0.05, 0.1, 0.25, 0.5];

export function pickPacing(seed: number): Pacing {
  const rng = new Prng((Math.imul(seed, 0x9e3779b1) ^ 0x5eed) >>> 0);
  const trigger: Trigger = rng.chance(0.6) ? 'output' : 'timer';
  const phases = PRIMARY_PHASES.filter((p) => p !== 'precopy-batch');
  const phase = phases[rng.below(phases.length)],
    nth = 1 + rng.below(12);
  const k = trigger === 'output' ? rng.below(8) : 8;
  const earlyFault: Fault | null =
    k === 0
      ? { kind: 'crash-early', phase, nth, silent: rng.chance(0.5) }
      : k === 1
        ? { kind: 'cut-early', phase, nth, onlyPrimary: rng.chance(0.5) }
        : null;
  return {
    trigger,
    maxPauseShare: PAUSE_SHARES[rng.below(PAUSE_SHARES.length)],
    windowMs: [60, 100, 200, 400][rng.below(4)],
    sparseEvery: rng.chance(0.4) ? 1 : 2 + rng.below(40),
    burstChance: rng.chance(0.5) ? 0.3 : 0,
    pauseBaseMs: rng.below(3),
    pagesPerMs: 8 + rng.below(56),
    earlyFault,
    intervalAuto: rng.chance(0.3), // drawn last: the draws above stay what they were for every seed
  };
}

/**
 * Losses of a session with both processes alive (docs/protocol.md "Reconnect"): a reset only
 * the primary sees (the backup's end stays open and silent), a corrupted record (the backup
 * drops the session), a silence of the channel (either side may notice first).
 */
export const RECONNECT_CAUSES = ['reset-primary', 'corrupt', 'silence'] as const;
export type ReconnectCause = (typeof RECONNECT_CAUSES)[number];
/** A second fault during the continued session's first checkpoint, at a phase of either side. */
/** nth: at the nth time the continued checkpoint reaches phase (its batches: live or streamed). */
export type ContinuedFault =
  | { kind: 'none' }
  | { kind: 'crash-primary'; phase: Phase; nth: number; silent: boolean }
  | { kind: 'crash-backup'; phase: string; silent: boolean }
  | { kind: 'reset-primary' | 'corrupt'; phase: Phase; nth: number };

/**
 * What a stray peer does on the backup's port: a port scan or health check (close at once),
 * an idle connection, garbage, a HELLO that is refused (a path as domain name), or a valid
 * HELLO of another domain that then closes or goes silent. None of it may fail over.
 */
export const STRAY_ACTS = ['close', 'silent', 'garbage', 'bad-hello', 'hello-close', 'hello-silent'] as const;
export type StrayAct = (typeof STRAY_ACTS)[number];

const PRIMARY_PHASES: Phase[] = [
  'suspend',
  'net-barrier',
  'capture',
  'disk-barrier',
  'resume',
  'stream-begin',
  'stream-batch',
  'stream-end',
  'ack',
  'release',
  'precopy-batch',
];
const BACKUP_PHASES = ['record', 'pre-commit', 'post-commit', 'post-ack'];

export function pickFault(rng: Prng): Fault {
  const k = rng.below(9);
  const epoch = 1 + rng.below(10);
  if (k === 0)
    return {
      kind: 'crash-primary',
      phase: PRIMARY_PHASES[rng.below(PRIMARY_PHASES.length)],
      epoch,
      silent: rng.chance(0.5),
    };
  if (k === 1)
    return {
      kind: 'crash-backup',
      phase: BACKUP_PHASES[rng.below(BACKUP_PHASES.length)],
      epoch,
      silent: rng.chance(0.5),
      restartAfterMs: rng.chance(0.6) ? 100 + rng.below(400) : null,
    };
  if (k === 2)
    return {
      kind: 'drop-link',
      atMs: 5 + rng.below(425),
      ...(rng.chance(0.4) ? { precopyBatch: 1 + rng.below(6) } : {}),
    };
  if (k === 3)
    return { kind: 'delay', atMs: 5 + rng.below(425), forMs: 50 + rng.below(400), extraMs: 20 + rng.below(200) };
  if (k === 4) return { kind: 'corrupt', atMs: 5 + rng.below(425), toBackup: rng.chance(0.7) };
  if (k === 5)
    return {
      kind: 'domain-error',
      step: (['suspend', 'capture', 'resume'] as const)[rng.below(3)],
      epoch,
      gone: rng.chance(0.3),
    };
  if (k === 7)
    return {
      kind: 'reconnect',
      atMs: 150 + rng.below(400),
      how: RECONNECT_CAUSES[rng.below(RECONNECT_CAUSES.length)],
      forMs: 40 + rng.below(120),
      // biome-ignore lint/suspicious/noThenProperty: the fault that follows a reconnection; never awaited
      then: pickContinuedFault(rng),
    };
  if (k === 6)
    return {
      kind: 'stray',
      atMs: 100 + rng.below(500),
      afterGoodbye: rng.chance(0.7),
      act: STRAY_ACTS[rng.below(STRAY_ACTS.length)],
    };
  if (rng.chance(0.5)) {
    const phase = RESTART_PHASES[rng.below(RESTART_PHASES.length)];
    return { kind: 'restart-primary', phase, epoch, restartAfterMs: 5 + rng.below(300), backupGone: rng.chance(0.3) };
  }
  return { kind: 'none' };
}

/**
 * Where a process may die with its domain living on: inside the pause (net-barrier … resume:
 * the guest stays suspended) or after the guest resumed.
 */
const RESTART_PHASES: Phase[] = PRIMARY_PHASES.filter((p) => p !== 'suspend');

// A continued session's first checkpoint has live rounds too (its precopy-batch phases): a fault
// there loses a session whose pages the backup decoded in place, before their ack.
const CONTINUED_PHASES = PRIMARY_PHASES;

/** A phase of the continued checkpoint, and which of its batches (1st–4th) when it has several. */
function continuedPhase(rng: Prng): { phase: Phase; nth: number } {
  const phase = CONTINUED_PHASES[rng.below(CONTINUED_PHASES.length)];
  return { phase, nth: phase === 'precopy-batch' || phase === 'stream-batch' ? 1 + rng.below(4) : 1 };
}

function pickContinuedFault(rng: Prng): ContinuedFault {
  const k = rng.below(5);
  if (k === 0) return { kind: 'crash-primary', ...continuedPhase(rng), silent: rng.chance(0.5) };
  if (k === 1)
    return { kind: 'crash-backup', phase: BACKUP_PHASES[rng.below(BACKUP_PHASES.length)], silent: rng.chance(0.5) };
  if (k === 2) return { kind: 'reset-primary', ...continuedPhase(rng) };
  if (k === 3) return { kind: 'corrupt', ...continuedPhase(rng) };
  return { kind: 'none' };
}

export interface WorldResult {
  seed: number;
  fault: Fault;
  violations: string[];
  commits: number;
  /** Pages the primary sent as disk references (read tracking). */
  diskRefPages: number;
  failedOver: boolean;
  primaryState: string;
  outputsSeen: number;
  /** How each session after the first began: 'continued', or 'full: <reason>'. */
  laterSessions: string[];
  trigger: Trigger;
  /** Checkpoints held outputs started, and those the pause share bound made wait (all primaries). */
  earlyCheckpoints: number;
  checkpointsHeldBack: number;
  /** --interval auto ran, and the interval the last primary would time its next checkpoint by. */
  intervalAuto: boolean;
  intervalMsLast: number;
  /** The backups' commits that waited for queued disk writes, and their holds of the link (flow control). */
  diskWriteWaits: number;
  intakeHolds: number;
  /** A restarted protect found the guest left suspended; with no backup left, whether it ran again. */
  restartedSuspended: { noBackup: boolean; ranAgain: boolean } | null;
}

/** Runs one seeded scenario and checks the invariants of docs/design.md. */
export function runWorld(seed: number, durationMs = 1500): WorldResult {
  const rng = new Prng(seed);
  const picked = pickFault(rng); // drawn always: a seed's other choices stay what they were
  const pacing = pickPacing(seed);
  const fault: Fault = pacing.earlyFault ?? picked;
  const clock = new VirtualClock();
  const net = new Net(clock, rng, 1 + rng.below(4));
  const violations: string[] = [];
  const violate = (v: string): void => {
    if (violations.length < 5) violations.push(v);
  };
  // SIM_TRACE=1 with SIM_SEED=<n>: every event of both sides, with its virtual time.
  const trace = process.env.SIM_TRACE
    ? (who: string, name: string, d: unknown): void => console.log(clock.now(), who, name, JSON.stringify(d))
    : (): void => {};
  const crc = (b: Uint8Array): number => loadAddon().crc32c(b);
  const snapshots = new Map<number, { crc: number; seq: number; diskCrc: number }>();
  const withDisk = rng.chance(0.5);
  let primaryDead = false;
  let domainFaulted = false; // a domain-error fault fires once
  let goneWhileLive = false; // the domain vanished while the backup held a live session
  let maxCommitted = 0;
  /** The guest's output sequence number at the last checkpoint the backup committed. */
  let committedSeq = 0;
  // Pacing: the pauses as the guest lived them, the output-triggered checkpoint under way (with
  // the pause the engine predicted for it), each early checkpoint's ordinal (its faults).
  let pauseLog: Array<[number, number]> = [];
  let early: { epoch: number; predictedMs: number } | null = null;
  const earlyOrdinal = new Map<number, number>();
  let earlyCount = 0,
    earlyFaulted = false,
    pacedTotals = { early: 0, heldBack: 0 };
  // Reconnect faults: the continued session's first epoch (its second fault fires there), how
  // later sessions began, whether a failover was due when the primary died.
  let continuedEpoch = -1;
  let continuedFaulted = false;
  /** Times the continued checkpoint reached the fault's phase (the fault strikes at its nth). */
  let continuedPhaseHits = 0;
  let ackedAtFault = 0;
  /** An ACK reached the primary since its last full copy began: a reconnect may continue. */
  let lineageAcked = false;
  const laterSessions: string[] = [];
  let afterDivergence = false;
  let sessionStarts = 0;
  let backupLiveAtDeath = false;
  let committedAfterDeath = false;
  /** The backup's last session ended because its disk was found different: it resumes nothing of it. */
  let sessionEndedDiverged = false;
  const seen: Array<{ seq: number; epoch: number }> = [];
  let commits = 0;

  const pclock = actorClock(clock, () => primaryDead);
  // The protect process, not its host: a restart-primary fault ends it while the domain runs on.
  let processGen = 0;
  let processDown = false;
  let processKilled = false;
  let liveAtKill = false;
  let restartedAtMs = -1;
  let restartedSuspended = false;
  const processClock = (): Clock => {
    const gen = processGen;
    return actorClock(pclock, () => processDown || processGen !== gen);
  };
  let primary: Primary | null = null;
  const makeGate = (): OutputBuffer<{ seq: number; value: number }> =>
    new OutputBuffer<{ seq: number; value: number }>((o, epoch, held) => {
      const st = primary?.stats().state;
      if (held && st === 'protected' && epoch > maxCommitted)
        violate(
          `output seq ${o.seq} of epoch ${epoch} released before the backup committed it (committed ${maxCommitted})`,
        );
      // The same rule by the guest's own count, whatever epoch the buffer says: an output shows
      // state up to its seq, which only a committed checkpoint at or past it has.
      if (held && st === 'protected' && o.seq > committedSeq)
        violate(`output seq ${o.seq} released while the backup has the guest only up to seq ${committedSeq}`);
      seen.push({ seq: o.seq, epoch });
    });
  let gate = makeGate();
  let replicator: DiskReplicator | null = null;
  let precopyBatches = 0,
    dropArmed = false;
  const guestDisk = withDisk
    ? new MemModelDisk(SIM_DISK_BLOCKS, {
        // The guest's backend: generations around writes, tracked reads (as the sim vCPU does).
        beforeWrite: (block) => replicator?.generations.beginWrite(block * PAGE, PAGE),
        afterWrite: (block, data, fua) => {
          replicator?.onWrite(block * PAGE, Buffer.from(data), fua);
          replicator?.generations.endWrite(block * PAGE, PAGE);
          if (dropArmed && !fua) {
            dropArmed = false;
            dropLink();
          }
        },
        afterRead: (block, data) => {
          if (replicator) replicator.onBlockRead(block, loadAddon().crc32c(data), replicator.generations.get(block));
        },
      })
    : undefined;
  const domain = new StepDomain(
    128,
    seed,
    pclock,
    (seq, value) => {
      if (seq % pacing.sparseEvery === 0) gate.push({ seq, value });
    },
    guestDisk,
  );
  domain.pauseCost = { ms: (n) => pacing.pauseBaseMs + n / pacing.pagesPerMs, advance: (ms) => clock.advance(ms) };
  domain.onPause = (from, to) => {
    pauseLog = pauseLog.filter(([, b]) => b > to - 1000);
    pauseLog.push([from, to]);
    if (early) checkPauseShare(early, from, to);
    early = null;
  };
  // An early checkpoint never takes the guest's paused share of the window ending with its
  // pause over the bound — save by what its pause exceeded the prediction it was admitted on.
  const checkPauseShare = (e: { epoch: number; predictedMs: number }, from: number, to: number): void => {
    const w = pacing.windowMs;
    let paused = 0;
    for (const [a, b] of pauseLog) paused += Math.max(0, Math.min(b, to) - Math.max(a, to - w));
    const slack = Math.max(0, to - from - e.predictedMs);
    if (paused > pacing.maxPauseShare * w + slack + 1e-6)
      violate(
        `early checkpoint ${e.epoch} paused the guest ${paused.toFixed(2)} ms of the ${w} ms window ` +
          `(bound ${pacing.maxPauseShare}, predicted pause ${e.predictedMs.toFixed(2)}, ` +
          `took ${(to - from).toFixed(2)})`,
      );
  };
  // A burst of outputs at once (the guest's current state), some while a checkpoint streams.
  const burst = (): void => {
    const seq = Number(domain.describe().seq);
    for (let i = 0, n = 1 + (seq % 7); i < n; i++) gate.push({ seq, value: -1 });
  };
  const bursts = (): void => {
    pclock.setTimer(5 + (committedSeq % 37), () => {
      if (!domain.fenced && !domain.gone) burst();
      bursts();
    });
  };
  if (pacing.burstChance > 0) bursts();
  /**
   * A verified disk equals the primary's at that checkpoint — but a scrub pass checked each
   * range at its own checkpoint: bit rot after the pass began may hit a range already checked.
   */
  const diskVerified = (epoch: number, scrub: boolean): void => {
    const disk = liveReplica?.diskTarget;
    const snap = snapshots.get(epoch);
    const rotDuringPass = scrub && bitRot !== null && bitRot.doneAtMs >= passSinceMs;
    if (disk && snap && crc(disk.bytes) !== snap.diskCrc && !rotDuringPass)
      violate(`the backup verified its disk at checkpoint ${epoch}${scrub ? ' (a scrub pass)' : ''}, yet it differs`);
    if (scrub) passSinceMs = clock.now();
  };
  // Reprotection's disk (remusdb backup --reuse-disk): one disk that outlives the backup's
  // replicas and processes, equal to the primary's at the start; the primary then trusts its
  // resync bitmap alone (what it forwarded but cannot know arrived must be in it).
  // A link dropped during the pre-copy is aimed at continued disks (the lost writes matter there).
  const precopyDrop = fault.kind === 'drop-link' && fault.precopyBatch !== undefined;
  const reuseDisk = guestDisk && (rng.chance(0.4) || precopyDrop) ? new MemDiskTarget(guestDisk.bytes.length) : null;
  if (guestDisk && reuseDisk) reuseDisk.bytes.set(guestDisk.bytes);
  // A third of those disks are an old primary's after its crash: a few blocks it wrote but never
  // forwarded, which no bitmap knows. The first disk check finds them; the next session copies
  // the ranges that differ, not the disk (DISK_VERIFY's table, HELLO_ACK's diskDiffers).
  const unforwarded = new Set<number>();
  if (reuseDisk && rng.chance(0.34)) {
    for (let n = 1 + rng.below(3); n > 0; n--) unforwarded.add(rng.below(SIM_DISK_BLOCKS));
    for (const b of unforwarded) reuseDisk.bytes[b * PAGE + rng.below(PAGE)] ^= 1 + rng.below(255);
  }
  /** Disk checks that failed: one is expected where blocks were never forwarded, none elsewhere. */
  let disksDiverged = 0;
  // A third of the disk runs check the disks with the scrub; a third of those then flip a byte
  // of the backup's copy behind its back (bit rot): a pass that began after it must find it.
  const scrubDisk = guestDisk !== undefined && rng.chance(0.34);
  const bitRot = scrubDisk && rng.chance(0.34) ? { atMs: 60 + rng.below(600), doneAtMs: -1, block: -1 } : null;
  /** The replica the backup serves now (the one bit rot hits). */
  let liveReplica: MemReplica | null = null;
  /** When the backup's current scrub pass began (its session, or the last pass's end). */
  let passSinceMs = 0;
  /** A divergence was made on purpose (never-forwarded blocks, bit rot): commits may carry it until found. */
  // The whole check finds every never-forwarded block at once; the scrub, range by range.
  const divergencesMade = (): number => unforwarded.size + (bitRot !== null && bitRot.doneAtMs >= 0 ? 1 : 0);
  // A backup's disk it does not continue may hold an earlier life's bytes: the full copy must
  // overwrite every block, its zero ranges (DISK_SYNC ZEROES) too.
  const staleBackupDisk = rng.chance(0.5);
  const freshBackupDisk = (bytes: number): MemDiskTarget => {
    const t = new MemDiskTarget(bytes);
    if (staleBackupDisk) t.bytes.fill(0x5a);
    return t;
  };
  // The disk is 1 MiB, one range of production's CRC table: the backup's table gets ranges of
  // 1–16 blocks instead, half the time the resync's chunk (whole ranges learn their CRC from it).
  const syncChunkBytes = PAGE * (1 + rng.below(16));
  // Half the runs, the backup's disk writes land later (a file's, on libuv's pool) and, half the
  // runs, the backup stops reading the link past a small intake (flow control).
  // A write lands in a later turn, now and then after a stall of 5–30 ms (writeback throttling).
  // Not slower: the guest writes ~4 MB/s of 4 KiB blocks; a backup's disk slower than that
  // rightly holds the primary back, past the run's 1.5 s.
  const slowDisk = rng.chance(0.5);
  const slowDiskDelayMs = (): number => (rng.chance(0.02) ? 5 + rng.below(26) : 0);
  const intakeBytesHigh = rng.chance(0.5) ? PAGE * (8 + rng.below(64)) : undefined;
  const replicaRangeCrcBytes = rng.chance(0.5) ? syncChunkBytes : PAGE * (1 + rng.below(16));
  // The primary's ranges are whole multiples of the backup's (as in production, both 1 MiB).
  const primaryRangeCrcBytes = replicaRangeCrcBytes * (1 + rng.below(4));
  if (guestDisk) {
    replicator = new DiskReplicator(
      {
        sizeBytes: guestDisk.bytes.length,
        read: (off, into) => into.set(guestDisk.bytes.subarray(off, off + into.length)),
      },
      pclock,
      {
        // The smallest (256 KiB) in 30% of seeds: ~3 epochs of the guest's writes.
        unackedBytesMax: 64 * PAGE * (rng.chance(0.3) ? 1 : 1 + rng.below(64)),
        inSync: reuseDisk !== null,
        syncChunkBytes: syncChunkBytes,
        readTrackingBlocksMax: rng.chance(0.7) ? 8 + rng.below(256) : 0,
        rangeCrcBytes: primaryRangeCrcBytes,
        // The scrub's pace: a pass of the disk in 100–500 ms (at 8 ranges a checkpoint it takes ~150 ms).
        scrubBytesPerSecond: (SIM_DISK_BLOCKS * PAGE * 1000) / (100 + rng.below(400)),
      },
    );
  }
  const diskCrc = (): number => (guestDisk ? crc(guestDisk.bytes) : 0);
  if (replicator && guestDisk && reuseDisk) {
    // The resync bitmap's invariant: when a session continues the backup's disk, every block
    // where that disk differs from the primary's is in the bitmap (the resync copies it).
    const r = replicator,
      connect = r.connect.bind(r);
    // Blocks never forwarded are known to no bitmap until a disk check named their ranges.
    r.connect = (link, nextEpoch, backup, ready, overflow) => {
      const named = (b: number): boolean =>
        backup.continues &&
        backup.differing.some((d) => d.offsetBytes <= b * PAGE && b * PAGE < d.offsetBytes + d.lengthBytes);
      for (let b = 0; backup.continues && b < SIM_DISK_BLOCKS; b++) {
        const at = b * PAGE,
          mine = guestDisk.bytes.subarray(at, at + PAGE);
        if (r.bitmap.has(b) || named(b) || Buffer.compare(mine, reuseDisk.bytes.subarray(at, at + PAGE)) === 0)
          continue;
        if ((unforwarded.has(b) || bitRot?.block === b) && disksDiverged < divergencesMade()) continue;
        violate(`block ${b} differs on the backup's continued disk, but neither the bitmap nor a disk check names it`);
        break;
      }
      connect(link, nextEpoch, backup, ready, overflow);
    };
  }
  // A reset: both ends see the connection break; records in flight are lost.
  const dropLink = (): void => {
    const l = currentLinks;
    if (l) {
      l[0].end(new Error('reset'));
      l[1].end(new Error('reset'));
      l[0].close();
      l[1].close();
    }
  };
  // The protect process dies, its domain runs on: the kernel closes its socket (the backup hears
  // at once), and its buffer holds what it held, and what comes after, until a new process
  // replaces it (dropping them) — unless it passed outputs through, as an unprotected one does.
  const killProcess = (restartAfterMs: number, backupGone: boolean): never => {
    processKilled = true;
    processDown = true;
    liveAtKill = backup.live;
    trace('world', 'process-killed', { restartAfterMs, backupGone, guestRuns: domain.runs });
    if (backupGone) {
      backupDead = true; // its host went down with the same blow: nobody fails over
      currentLinks?.[0].die(true);
    }
    currentLinks?.[1].die(false);
    replicator?.disconnect(); // the disk's session went with the process (the disk itself is kept)
    pclock.setTimer(restartAfterMs, restartProcess);
    throw new Crash('primary process');
  };
  const restartProcess = (): void => {
    const leftSuspended = domain.adoptLeftSuspended(); // as the Xen driver does once the host lock is its
    trace('world', 'process-restarted', { leftSuspended });
    restartedAtMs = clock.now();
    restartedSuspended = leftSuspended;
    gate.discard(); // its buffer replaced: what the dead process held is dropped
    processGen++;
    processDown = false;
    if (!newPrimaryProcess({ holdOutputs: true })) scheduleReconnect();
  };
  /** A new protect process of the same domain (its own buffer and engine, from epoch 1); connected? */
  const newPrimaryProcess = (o: { holdOutputs: boolean }): boolean => {
    maxCommitted = 0;
    committedSeq = 0;
    pauseLog = []; // a new process: the old one's pauses are not its to bound
    const st = primary!.stats();
    pacedTotals = { early: st.earlyCheckpoints, heldBack: st.checkpointsHeldBack };
    gate = makeGate();
    primary = makePrimary();
    primary.start(o);
    return connect();
  };
  const crashPrimary = (silent: boolean): never => {
    backupLiveAtDeath = backup.live;
    primaryDead = true;
    domain.fence();
    currentLinks?.[1].die(silent);
    throw new Crash('primary');
  };
  const primaryOptions = {
    intervalMs: 20,
    intervalAuto: pacing.intervalAuto,
    compressor: rng.chance(0.5) ? ('zstd' as const) : ('lz4' as const),
    cachePages: 16 + rng.below(64),
    maxInFlight: 1 + rng.below(3),
    trigger: pacing.trigger,
    maxPauseShare: pacing.maxPauseShare,
    pauseShareWindowMs: pacing.windowMs,
    heartbeatTimeoutMs: 100,
    holdOnLossMs: 400,
    batchPagesMax: 16 + rng.below(48),
    deviceStateMax: 4096,
    precopy: rng.chance(0.7) || precopyDrop,
    precopyRemainingPagesMin: rng.below(4),
    // Collects in ranges over 16–128 turns (the guest writes between them), or at once. The many
    // turns make a continued session's preparation outlast a disk buffer of 256 KiB: its first
    // checkpoint's writes go AT_ONCE, or each reconnect would be dropped (8 of 2000 seeds were).
    liveCollectPagesPerTurn: rng.chance(0.5) ? 1 + rng.below(8) : 1 << 20,
    precopyBacklogBytesMax: 4096 * (1 + rng.below(16)),
    copySilenceMs: 100 + rng.below(300),
    // Each session's first checkpoint carries the disk's CRC32C (range-crcs.ts on the primary,
    // replica-range-crcs.ts on the backup); the backup compares at its commit.
    verifyDisk: guestDisk !== undefined && (rng.chance(0.5) || unforwarded.size > 0),
    // The other way to check the disks (blktap/disk-scrub.ts): a few ranges per checkpoint.
    diskScrub: scrubDisk,
  };
  // A second primary of the same domain (after the first ended with GOODBYE) starts again from epoch 1.
  const makePrimary = (): Primary =>
    new Primary(
      domain,
      gate,
      processClock(),
      primaryOptions,
      {
        phase: (phase, epoch) => {
          if (
            (fault.kind === 'crash-early' || fault.kind === 'cut-early') &&
            fault.phase === phase &&
            earlyOrdinal.get(epoch) === fault.nth &&
            !earlyFaulted &&
            !primaryDead
          ) {
            earlyFaulted = true;
            if (fault.kind === 'crash-early') crashPrimary(fault.silent);
            else if (fault.onlyPrimary) {
              ackedAtFault = lineageAcked ? primary!.stats().ackedEpoch : 0;
              currentLinks?.[1].resetHere();
            } else dropLink();
          }
          if (phase === 'stream-begin' && pacing.burstChance > 0 && epoch % 3 === 0 && !domain.fenced) burst();
          if (fault.kind === 'drop-link' && phase === 'precopy-batch' && ++precopyBatches === fault.precopyBatch) {
            if (guestDisk) dropArmed = true;
            else dropLink();
          }
          if (fault.kind === 'crash-primary' && fault.phase === phase && fault.epoch === epoch && !primaryDead)
            crashPrimary(fault.silent);
          if (fault.kind === 'restart-primary' && fault.phase === phase && fault.epoch === epoch && !processKilled)
            killProcess(fault.restartAfterMs, fault.backupGone);
          if (
            fault.kind === 'reconnect' &&
            epoch === continuedEpoch &&
            !continuedFaulted &&
            'nth' in fault.then &&
            fault.then.phase === phase &&
            ++continuedPhaseHits >= fault.then.nth
          ) {
            const t = fault.then;
            if (t.kind === 'crash-primary') {
              continuedFaulted = true;
              crashPrimary(t.silent);
            }
            if (t.kind === 'reset-primary') {
              continuedFaulted = true;
              currentLinks?.[1].resetHere();
            }
            if (t.kind === 'corrupt') {
              continuedFaulted = true;
              if (currentLinks) currentLinks[1].corruptNext = true;
            }
          }
          if (fault.kind === 'domain-error' && fault.step === phase && fault.epoch === epoch && !domainFaulted) {
            domainFaulted = true;
            if (!fault.gone) domain.failNext = fault.step;
            else {
              domain.gone = true;
              goneWhileLive = backup.live;
            }
          }
          if (phase === 'ack') lineageAcked = true; // after the faults: they see the ACKs before this one
        },
        paced: (epoch: number, cause: PaceCause, predictedMs: number) => {
          early = cause === 'output' ? { epoch, predictedMs } : null;
          const interval = primary?.stats().intervalMs ?? 20;
          if (interval < (pacing.intervalAuto ? INTERVAL_AUTO_MS_MIN : 20) || interval > 20)
            violate(`checkpoint ${epoch} timed by an interval of ${interval} ms (bounds: 5–20 auto, else 20)`);
          if (cause === 'output') earlyOrdinal.set(epoch, ++earlyCount);
        },
        checkpoint: (epoch) => {
          snapshots.set(epoch, { crc: crc(domain.mem), seq: Number(domain.describe().seq), diskCrc: diskCrc() });
        },
        event: (name, d) => {
          trace('primary', name, d);
          if (name === 'backup-lost' || name === 'held-after-crash') scheduleReconnect();
          // The session after a failed disk check copies memory whole (its first commit failed):
          // the faults' expectations are of the sessions after theirs, so it is not one of them.
          if (name === 'backup-lost') afterDivergence = String(d.reason).includes(ErrorCode.DISK_DIVERGED);
          if (name === 'session-start' && d.kind !== 'continued') lineageAcked = false; // nothing to continue yet
          if (name === 'session-start' && sessionStarts++ > 0 && !afterDivergence)
            laterSessions.push(d.kind === 'continued' ? 'continued' : `full: ${String(d.reason)}`);
          if (name === 'session-start' && d.kind === 'continued' && continuedEpoch < 0 && fault.kind === 'reconnect')
            continuedEpoch = primary!.stats().epoch + 1;
        },
      },
      replicator,
    );
  primary = makePrimary();

  let backupDead = false;
  let backupFaulted = false;
  let resumed: { epoch: number; seq: number; crc: number; diskCrc: number | null } | null = null;
  let backup: Backup;
  const backups: Backup[] = [];
  const makeBackup = (): Backup => {
    backupDead = false;
    let divergedHere = 0; // what a backup learnt of its disk dies with it: a new one may find it again
    const bclock = actorClock(clock, () => backupDead);
    const b: Backup = new Backup(
      bclock,
      {
        pageCountMax: 1 << 20,
        batchPagesMax: 64,
        handshakeTimeoutMs: 150,
        copySilenceMs: 100 + rng.below(300),
        replicaFor: (h) =>
          (liveReplica = new MemReplica(
            h.pageCount,
            h.diskBytes ? (reuseDisk ?? freshBackupDisk(h.diskBytes)) : null,
            reuseDisk !== null,
            replicaRangeCrcBytes,
            slowDisk ? { clock: bclock, delayMs: slowDiskDelayMs } : undefined,
          )),
        intakeBytesHigh,
      },
      {
        commit: (epoch, r) => {
          commits++;
          const snap = snapshots.get(epoch);
          if (!snap || r.image.crc32c() !== snap.crc)
            violate(`backup committed epoch ${epoch} with memory that is not the primary's at that checkpoint`);
          const rdisk = (r as MemReplica).diskTarget;
          if (rdisk && (!snap || crc(rdisk.bytes) !== snap.diskCrc) && divergencesMade() === 0)
            violate(`backup committed epoch ${epoch} with a disk that is not the primary's at that checkpoint`);
          maxCommitted = Math.max(maxCommitted, epoch);
          if (snap) committedSeq = Math.max(committedSeq, snap.seq);
          if (primaryDead) committedAfterDeath = true;
        },
        phase: (phase, epoch) => {
          const then =
            fault.kind === 'reconnect' && fault.then.kind === 'crash-backup' && epoch === continuedEpoch
              ? fault.then
              : null;
          if (then && then.phase === phase && !continuedFaulted && !backupDead && b === backup) {
            continuedFaulted = true;
            backupDead = true;
            currentLinks?.[0].die(then.silent);
            clock.setTimer(100, () => {
              backup = makeBackup();
            });
            throw new Crash('backup');
          }
          if (
            fault.kind === 'crash-backup' &&
            fault.phase === phase &&
            fault.epoch === epoch &&
            !backupDead &&
            b === backup &&
            !backupFaulted
          ) {
            backupDead = true;
            backupFaulted = true; // once: the restarted backup is healthy
            currentLinks?.[0].die(fault.silent);
            if (fault.restartAfterMs !== null)
              clock.setTimer(fault.restartAfterMs, () => {
                backup = makeBackup();
              });
            throw new Crash('backup');
          }
        },
        event: (name, d) => {
          trace('backup', name, d);
          // Read tracking's references find a made divergence too (the next session copies the disk).
          if (name === 'protocol-error' && d.code === ErrorCode.DISK_REF_MISMATCH && divergencesMade() === 0)
            violate(`a disk reference did not match at the backup: ${String(d.message)}`);
          if (name === 'failover')
            resumed = {
              epoch: Number(d.epoch),
              seq: Number(d.seq),
              crc: Number(d.crc),
              diskCrc: d.diskCrc === undefined ? null : Number(d.diskCrc),
            };
          if (name === 'failover' && fault.kind === 'stray')
            violate(
              `the backup failed over (${String(d.reason)}) on a stray peer (${fault.act}${
                fault.afterGoodbye ? ', after GOODBYE' : ''
              })`,
            );
          if (name === 'internal-error' && !backupDead)
            violate(`the backup met a bug on peer input: ${String(d.message)}`);
          // Nothing in this world alters an image: a continued one that differs is a bug of the reconnect.
          if (name === 'protocol-error' && d.code === ErrorCode.MEMORY_DIVERGED)
            violate(`a continued image differed: ${String(d.message)}`);
          // Nor a disk: a verified commit whose CRCs differ is a bug of the copy or of a checksum.
          if (name === 'protocol-error' && d.code === ErrorCode.DISK_DIVERGED) {
            if (divergedHere >= divergencesMade())
              violate(`a verified commit found the disks different: ${String(d.message)}`);
            divergedHere++;
            disksDiverged++;
            sessionEndedDiverged = true;
            lineageAcked = false; // the backup keeps no checkpoint of a session whose disk differed
          }
          if (name === 'session') {
            passSinceMs = clock.now();
            sessionEndedDiverged = false;
          }
          if (name === 'disk-verified') diskVerified(Number(d.epoch), d.scrub === true);
        },
      },
    );
    backups.push(b);
    return b;
  };
  backup = makeBackup();

  let currentLinks: [MemLink, MemLink] | null = null;
  const connect = (): boolean => {
    if (backupDead || primaryDead || processDown || primary!.attached)
      return !primaryDead && !processDown && primary!.attached;
    currentLinks = net.pair();
    backup.attach(currentLinks[0]);
    primary!.attach(currentLinks[1]);
    return true;
  };
  const scheduleReconnect = reconnector(
    pclock,
    () => primaryDead || ['fenced', 'stopped'].includes(primary!.stats().state),
    () => !net.cut && connect(),
  );

  primary.start();
  connect();
  if (fault.kind === 'drop-link' && fault.precopyBatch === undefined) clock.setTimer(fault.atMs, dropLink);
  if (fault.kind === 'delay') {
    clock.setTimer(fault.atMs, () => {
      net.extraLatency = fault.extraMs;
    });
    clock.setTimer(fault.atMs + fault.forMs, () => {
      net.extraLatency = 0;
    });
  }
  if (fault.kind === 'stray') {
    const at = fault.atMs;
    if (fault.afterGoodbye) {
      clock.setTimer(at, () => {
        if (!primaryDead) primary!.stop();
      });
      clock.setTimer(at + 300, () => void newPrimaryProcess({ holdOutputs: false }));
    }
    clock.setTimer(at + (fault.afterGoodbye ? 20 : 0), () => strayPeer(net, backup, fault.act));
  }
  if (fault.kind === 'reconnect') {
    clock.setTimer(fault.atMs, () => {
      const l = currentLinks;
      ackedAtFault = primaryDead || !lineageAcked ? 0 : primary!.stats().ackedEpoch;
      if (!l) return;
      if (fault.how === 'reset-primary') l[1].resetHere();
      if (fault.how === 'corrupt') l[1].corruptNext = true;
      if (fault.how === 'silence') net.extraLatency = fault.forMs;
    });
    if (fault.how === 'silence')
      clock.setTimer(fault.atMs + fault.forMs, () => {
        net.extraLatency = 0;
      });
  }
  if (fault.kind === 'corrupt') {
    clock.setTimer(fault.atMs, () => {
      const l = currentLinks;
      if (l) (fault.toBackup ? l[1] : l[0]).corruptNext = true;
    });
  }
  if (bitRot) {
    clock.setTimer(bitRot.atMs, () => {
      const t = liveReplica?.diskTarget;
      if (!t || backupDead) return;
      bitRot.block = rng.below(SIM_DISK_BLOCKS);
      t.bytes[bitRot.block * PAGE + rng.below(PAGE)] ^= 1 + rng.below(255);
      bitRot.doneAtMs = clock.now();
      trace('world', 'bit-rot', { block: bitRot.block });
    });
  }
  clock.runUntil(durationMs);
  // A disk found different (bit rot, a reused disk's unforwarded blocks) ends its session, one
  // range at a time under the scrub: the end state is checked once the repairs had their time.
  if (disksDiverged > 0) clock.runUntil(durationMs + 1000);

  // Invariants after the run.
  const r = resumed as { epoch: number; seq: number; crc: number; diskCrc: number | null } | null;
  if (r) {
    const snap = snapshots.get(r.epoch);
    if (!snap || snap.crc !== r.crc)
      violate(`the backup resumed epoch ${r.epoch} with memory that is not a checkpoint boundary`);
    if (withDisk && (!snap || r.diskCrc !== snap.diskCrc) && divergencesMade() === 0)
      violate(`the backup resumed epoch ${r.epoch} with a disk that is not the primary's at that checkpoint`);
    const ahead = seen.filter((o) => o.seq > r.seq);
    if (ahead.length)
      violate(
        `${ahead.length} outputs (first seq ${ahead[0].seq}) reached the client beyond the resumed guest's ` +
          `seq ${r.seq}`,
      );
    if (!primaryDead && primary.stats().state !== 'fenced')
      violate(`the backup resumed but the live primary is ${primary.stats().state}, not fenced`);
  }
  if (liveAtKill && !r && !backupDead)
    violate('the protect process died in a live session (its socket closed) but the backup never failed over');
  // A live session lost its primary, unless the backup ended that session itself on finding its
  // disk different (made on purpose here): a copy with a wrong disk must not resume.
  const due = (backupLiveAtDeath || committedAfterDeath) && !sessionEndedDiverged;
  if (primaryDead && due && !r && !backupDead)
    violate('the primary died in a live session but the backup never failed over');
  if (fault.kind === 'reconnect' && fault.how !== 'silence' && ackedAtFault > 0) {
    // Both lived: the session is continued (no copy, no failover) unless the second fault killed one.
    const next = laterSessions[0];
    if (next !== undefined && next !== 'continued') violate(`the session after a ${fault.how} copied all (${next})`);
    if (r && fault.then.kind !== 'crash-primary')
      violate(`the backup failed over after a ${fault.how} although the primary lived`);
  }
  if (fault.kind === 'cut-early' && fault.onlyPrimary && ackedAtFault > 0) {
    // As a reset only the primary sees between checkpoints: continued, no failover.
    const next = laterSessions[0];
    if (next !== undefined && next !== 'continued') violate(`the session after an early cut copied all (${next})`);
    if (r) violate('the backup failed over after a cut only the primary saw');
  }
  const gone = fault.kind === 'domain-error' && fault.gone;
  if (gone && goneWhileLive && !r)
    violate("the primary's domain vanished during a live session, yet the backup never failed over");
  const noBackupLeft = fault.kind === 'restart-primary' && fault.backupGone && processKilled;
  if (noBackupLeft && restartedAtMs >= 0 && clock.now() - restartedAtMs > primaryOptions.holdOnLossMs + 100) {
    // Nobody took over and nobody will: the guest runs, also one the dead process left suspended.
    if (!domain.runs) violate(`no backup answered a restarted protect, yet the guest is not running at the end`);
    if (primary.stats().state !== 'unprotected')
      violate(`no backup answered a restarted protect, yet it ended ${primary.stats().state}`);
  }
  if (
    !primaryDead &&
    !r &&
    !gone &&
    !noBackupLeft &&
    fault.kind !== 'crash-backup' &&
    primary.stats().state !== 'protected'
  ) {
    violate(`no failover and no crash, yet the primary ended ${primary.stats().state}`);
  }
  if (
    fault.kind === 'crash-backup' &&
    !primaryDead &&
    !r &&
    fault.restartAfterMs !== null &&
    primary.stats().state !== 'protected'
  ) {
    violate(`the backup restarted but the primary did not re-protect (state ${primary.stats().state})`);
  }
  if (withDisk && !primaryDead && primary.stats().state === 'protected' && replicator!.stats().forwardedWrites === 0)
    violate('the guest wrote to its disk but nothing was forwarded');
  return {
    seed,
    fault,
    violations,
    commits,
    diskRefPages: primary.stats().diskRefPages,
    failedOver: r !== null,
    primaryState: primaryDead ? 'dead' : primary.stats().state,
    outputsSeen: seen.length,
    laterSessions,
    trigger: pacing.trigger,
    earlyCheckpoints: pacedTotals.early + primary.stats().earlyCheckpoints,
    checkpointsHeldBack: pacedTotals.heldBack + primary.stats().checkpointsHeldBack,
    intervalAuto: pacing.intervalAuto,
    intervalMsLast: primary.stats().intervalMs,
    diskWriteWaits: backups.reduce((n, b) => n + b.counters.diskWriteWaits, 0),
    intakeHolds: backups.reduce((n, b) => n + b.counters.intakeHolds, 0),
    restartedSuspended: restartedSuspended ? { noBackup: noBackupLeft, ranAgain: domain.runs } : null,
  };
}

/**
 * The primary's reconnection in virtual time: the first attempt after 20 ms, then every 50 ms,
 * until connect() succeeds or giveUp() says the primary is done; one loop at a time.
 */
export function reconnector(clock: Clock, giveUp: () => boolean, connect: () => boolean): () => void {
  let reconnecting = false;
  return () => {
    if (reconnecting) return;
    reconnecting = true;
    const attempt = (): void => {
      if (giveUp() || connect()) {
        reconnecting = false;
        return;
      }
      clock.setTimer(50, attempt);
    };
    clock.setTimer(20, attempt);
  };
}

/** A peer on the backup's port that is not the primary (see STRAY_ACTS). */
function strayPeer(net: Net, backup: Backup, act: StrayAct): void {
  const [b, p] = net.pair();
  backup.attach(b);
  const hello = (domain: string): void =>
    p.send(
      Rec.HELLO,
      jsonBody(
        {
          kind: 'sim',
          domain,
          pageCount: 16,
          pageSize: PAGE,
          compressor: 'zstd',
          intervalMs: 20,
          heartbeatTimeoutMs: 100,
          deviceStateMax: 4096,
          sessionId: 'stray-1',
        },
        PROTOCOL_VERSION,
      ),
    );
  if (act === 'close') p.close();
  if (act === 'garbage') p.send(0x7777, Buffer.from('GET / HTTP/1.0\r\n\r\n'));
  if (act === 'bad-hello') hello('../../../pwned');
  if (act === 'hello-close' || act === 'hello-silent') hello('stray');
  if (act === 'hello-close') net.clock.setTimer(30, () => p.close());
}

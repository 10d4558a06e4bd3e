// nfqueue-buffer: the `nfqueue` network output buffer driver — the engine's OutputGate
// over a kernel netfilter queue (docs/netbuffer.md). Guest packets are diverted into
// NFQUEUE Q by iptables rules (iptables-rules.ts); the kernel holds each one until we issue
// its verdict, so holding costs no copy and a crash of this process drops (never leaks)
// what was held. The native queue (native-xc/src/nfqueue_driver.cc) reads packets in
// batches; PacketLedger decides the verdicts. Order of use (setupNfqueue does 1, 2 and 4):
//   1. const buf = NfqueueBuffer.open({ queueNum, netns });   // bind the queue first
//   2. installRules({ domain, queueNum, match });              // then divert the guest's traffic
//   3. buf.barrier(n) at suspend, buf.release(n) on ack ...
//   4. removeRules(...); buf.close();                          // teardown, in this order
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { assertInt } from '../assert';
import type { OutputGate } from '../ports';
import { ErrorCode, RemusError } from '../errors';
import { requirePart, threadCpuNs } from '../native';
import { type GuestMatch, installRules, removeRules } from './iptables-rules';
import {
  type Classifier,
  type LedgerObserver,
  type LedgerStats,
  PacketLedger,
  type PacketBatch,
} from './packet-ledger';

export interface NfqueueBufferOptions {
  queueNum: number;
  /** Network namespace (name under /run/netns) the queue lives in; default: ours. */
  netns?: string;
  /** Per-packet commit protection; default: hold everything. */
  classify?: Classifier;
  /** Sees every packet and epoch event (failover reset tracking). */
  observer?: LedgerObserver;
  heldMax?: number;
  heldBytesMax?: number;
  /**
   * Bytes of each packet copied to us (IP + TCP headers and DSCP fit in 128; pgwire needs
   * whole segments: PGWIRE_COPY_BYTES). At most 65531 (the kernel's NFQNL_MAX_COPY_RANGE).
   */
  copyBytes?: number;
  batchMax?: number;
  rcvbufBytes?: number;
}

export const NFQUEUE_DEFAULTS = {
  heldMax: 60_000,
  heldBytesMax: 256 * 1024 * 1024,
  copyBytes: 128,
  batchMax: 1024,
  rcvbufBytes: 64 * 1024 * 1024,
} as const;

/** Observed ceiling of one queue (queue_total stops at 65536, then queue_dropped grows). */
export const KERNEL_QUEUE_MAX = 65_536;

/** The native queue as typed here (the addon's `NfqueueQueue`). */
interface NativeQueue extends PacketBatch {
  readonly capLens: Uint16Array;
  readonly marks: Uint32Array;
  readonly batchMax: number;
  drain(batchesMax: number): number;
  verdictUpTo(id: number, accept: boolean): void;
  verdictEach(ids: Uint32Array, count: number, accept: boolean): void;
  stats(): NativeQueueStats;
  close(): void;
}
export interface NativeQueueStats {
  received: number;
  batches: number;
  verdictMsgs: number;
  netlinkErrors: number;
  recvErrors: number;
  lastErrno: number;
  open: boolean;
}
type NativeQueueCtor = new (opts: Record<string, unknown>, onBatch: (count: number) => void) => NativeQueue;

/** A row of /proc/net/netfilter/nfnetlink_queue. */
export interface KernelQueueStats {
  queueNum: number;
  portId: number;
  queued: number;
  copyMode: number;
  copyRange: number;
  /** Dropped because the queue was full. */
  queueDropped: number;
  /** Dropped because the netlink socket could not take them. */
  userDropped: number;
  idSequence: number;
}

export class NfqueueBuffer implements OutputGate {
  private constructor(
    private readonly q: NativeQueue,
    readonly ledger: PacketLedger,
    readonly queueNum: number,
    readonly netns: string | undefined,
    /** This thread's CPU time handing batches to the ledger (its rules, the verdicts' syscalls): benchmarks. */
    private readonly timing: { ingestNs: number },
  ) {}

  static open(opts: NfqueueBufferOptions): NfqueueBuffer {
    assertInt(opts.queueNum, 0, 65535, 'queueNum');
    const o = { ...NFQUEUE_DEFAULTS, ...opts };
    assertInt(o.batchMax, 1, 4096, 'batchMax');
    // The kernel keeps at most KERNEL_QUEUE_MAX packets per queue (held + not yet read).
    assertInt(o.heldMax, 1, KERNEL_QUEUE_MAX - 2 * o.batchMax, 'heldMax');
    const addon = requirePart('nfqueue') as unknown as { NfqueueQueue?: NativeQueueCtor };
    if (!addon.NfqueueQueue)
      throw new RemusError(ErrorCode.ADDON_PART_MISSING, 'the addon lacks NfqueueQueue: run `npm install`');
    const netnsPath = o.netns === undefined ? undefined : netnsPathOf(o.netns);
    let ledger: PacketLedger | undefined;
    let q: NativeQueue | undefined;
    const timing = { ingestNs: 0 };
    const onBatch = (count: number): void => {
      const t0 = threadCpuNs();
      ledger!.ingest({ ...batchView(q!), count });
      timing.ingestNs += threadCpuNs() - t0;
    };
    q = new addon.NfqueueQueue(
      {
        queueNum: o.queueNum,
        copyBytes: o.copyBytes,
        queueMaxLen: KERNEL_QUEUE_MAX,
        rcvbufBytes: o.rcvbufBytes,
        batchMax: o.batchMax,
        netnsPath,
      },
      onBatch,
    );
    const sink = {
      verdictUpTo: (id: number, accept: boolean) => q!.verdictUpTo(id, accept),
      verdictEach: (ids: Uint32Array, n: number, accept: boolean) => q!.verdictEach(ids, n, accept),
      drain: () => {
        q!.drain(1 << 16);
      },
    };
    ledger = new PacketLedger(
      sink,
      { heldMax: o.heldMax, heldBytesMax: o.heldBytesMax },
      o.classify ?? null,
      o.batchMax,
      o.observer ?? null,
    );
    return new NfqueueBuffer(q, ledger, o.queueNum, o.netns, timing);
  }

  get held(): number {
    return this.ledger.held;
  }
  /** This thread's CPU time spent in the ledger's batches so far (ns). */
  get ingestNs(): number {
    return this.timing.ingestNs;
  }
  get nextEpoch(): number {
    return this.ledger.nextEpoch;
  }
  barrier(epoch: number): void {
    this.ledger.barrier(epoch);
  }
  release(epoch: number): void {
    this.ledger.release(epoch);
  }
  setPassThrough(on: boolean): void {
    this.ledger.setPassThrough(on);
  }
  discard(): void {
    this.ledger.discard();
  }
  watchHeld(onHeld: (() => void) | null): void {
    this.ledger.watchHeld(onHeld);
  }
  /** Reads what the kernel already queued (tests, status). */
  poll(): void {
    this.q.drain(1 << 16);
  }

  stats(): { ledger: LedgerStats; native: NativeQueueStats; kernel: KernelQueueStats | null; ingestNs: number } {
    return {
      ingestNs: this.timing.ingestNs,
      ledger: { ...this.ledger.stats },
      native: this.q.stats(),
      kernel: readKernelQueueStats(this.queueNum, this.netns),
    };
  }

  /** Unbinds the queue: the kernel drops whatever is still held (remove the rules first). */
  close(): void {
    this.q.close();
  }
}

function batchView(q: NativeQueue): Omit<PacketBatch, 'count'> {
  return {
    ids: q.ids,
    ipLens: q.ipLens,
    protos: q.protos,
    headers: q.headers,
    copyBytes: q.copyBytes,
    capLens: q.capLens,
    marks: q.marks,
  };
}

export function netnsPathOf(name: string): string {
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(name))
    throw new RemusError(ErrorCode.BAD_ARGUMENT, `bad network namespace name '${name}'`);
  const p = `/run/netns/${name}`;
  if (!fs.existsSync(p)) throw new RemusError(ErrorCode.NETBUF, `network namespace '${name}' does not exist (${p})`);
  return p;
}

/** The kernel's counters for a queue (null when nobody is bound to it). */
export function readKernelQueueStats(queueNum: number, netns?: string): KernelQueueStats | null {
  let text: string;
  if (netns === undefined) {
    try {
      text = fs.readFileSync('/proc/net/netfilter/nfnetlink_queue', 'utf8');
    } catch {
      return null;
    }
  } else {
    const r = spawnSync('ip', ['netns', 'exec', netns, 'cat', '/proc/net/netfilter/nfnetlink_queue'], {
      encoding: 'utf8',
    });
    if (r.status !== 0) return null;
    text = r.stdout;
  }
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/).map(Number);
    if (f.length >= 8 && f[0] === queueNum) {
      return {
        queueNum: f[0],
        portId: f[1],
        queued: f[2],
        copyMode: f[3],
        copyRange: f[4],
        queueDropped: f[5],
        userDropped: f[6],
        idSequence: f[7],
      };
    }
  }
  return null;
}

/** The nfqueue driver as a device: setup at protect time, teardown always (idempotent). */
export interface NfqueueDevice {
  readonly gate: NfqueueBuffer;
  /** Removes the rules, then unbinds the queue (what is still held is dropped). */
  teardown(): void;
}

/**
 * Binds the queue, then installs the domain's rules (removing any a crashed run left).
 * On failure nothing stays installed or bound.
 */
export function setupNfqueue(
  opts: NfqueueBufferOptions & {
    domain: string;
    match: GuestMatch;
    onlyDscp?: number;
    onlyMarks?: number[];
    markMask?: number;
  },
): NfqueueDevice {
  const spec = {
    domain: opts.domain,
    queueNum: opts.queueNum,
    match: opts.match,
    netns: opts.netns,
    onlyDscp: opts.onlyDscp,
    onlyMarks: opts.onlyMarks,
    markMask: opts.markMask,
  };
  removeRules(spec);
  const gate = NfqueueBuffer.open(opts);
  try {
    installRules(spec);
  } catch (e) {
    gate.close();
    throw e;
  }
  let done = false;
  return {
    gate,
    teardown: () => {
      if (done) return;
      done = true;
      try {
        removeRules(spec);
      } finally {
        gate.close();
      }
    },
  };
}

// kernel-classifier: commit protection classified in the kernel (`--pgwire-in-kernel`,
// `--dscp-in-kernel`; docs/commit-protection.md "`pgwire` in the kernel"). A tc BPF program on
// the ingress hook of the guest's interface (native-xc/src/bpf/classify_tc.bpf.c, the rules of
// pgwire-classifier.ts, or of classify-dscp.ts in dscp mode) marks the packets that must wait:
// MARKS.hold for a commit acknowledgement (and everything the userspace classifier would
// hold), MARKS.follow for a
// packet that may leave but has an earlier packet of its flow still queued. iptables queues
// only marked packets (iptables-rules.ts `onlyMarks`); every other packet leaves without a
// trip to dom0's userspace. Here:
//   - `classify` turns the mark into the ledger's verdict (follow → 'release': the ledger
//     keeps it behind its flow);
//   - `observer` tells the program the ledger's epochs: at barrier N, packets belong to N + 1;
//     at release N, every packet queued in an epoch ≤ N has left, so a flow whose last
//     queued packet is that old needs no follow mark;
//   - every packet that left in the kernel is in the program's exposure ring; `exposureSink`
//     (the failover reset tracker) gets them as packets, each with its epoch: at each release
//     and every PGWIRE_KERNEL_EXPOSURE_DRAIN_MS while open (then the primary ships
//     NET_EXPOSURE), never at a barrier (the guest is paused then; the tracker takes a packet
//     of an epoch that already closed). Unlike the userspace path, a packet leaves before the tracker knows:
//     docs/commit-protection.md says what that window costs;
//   - a leftover filter (a crashed run) is removed by `removeLeftoverFilter` with tc.
// The program needs root (CAP_BPF + CAP_NET_ADMIN), libbpf and a kernel with bpf_loop (5.17).
import { spawnSync } from 'node:child_process';
import { AssertionError } from 'node:assert';
import { assert, assertInt } from '../assert';
import {
  PGWIRE_KERNEL_EXPOSURE_DRAIN_MS,
  PGWIRE_KERNEL_FLOWS_DEFAULT,
  PGWIRE_KERNEL_FLOWS_MAX,
  PGWIRE_KERNEL_HELD_RANGES,
  PGWIRE_KERNEL_PORTS_MAX,
  PGWIRE_KERNEL_SEGMENT_BYTES,
} from '../limits';
import { CLASSIFY_BPF_OBJECT_PATH, requirePart, threadCpuNs } from '../native';
import type { Classifier, LedgerObserver, PacketVerdict } from './packet-ledger';
import { seqAdd, seqDiff, TCP_ACK, TCP_FIN, TCP_SYN } from './pgwire-segment';

/** The skb mark bits the program owns, and its two values (iptables matches them). */
export const PGWIRE_KERNEL_MARKS = { mask: 0x00ff0000, hold: 0x00a10000, follow: 0x00a20000 } as const;

/** The program's counters, in the order of classify_tc.h's `enum pgw_stat`. */
const STAT_NAMES = [
  'packets',
  'notIp',
  'otherHeld',
  'held',
  'follow',
  'passed',
  'retransmissions',
  'commits',
  'flowsOpened',
  'flowsEnded',
  'afterEnd',
  'unsyncedPackets',
  'opaqueEncrypted',
  'opaqueType',
  'opaqueLength',
  'opaqueReadyForQuery',
  'opaqueNoSyn',
  'opaqueGap',
  'opaqueInternal',
  'exposureLost',
] as const;
export type KernelClassifierStats = Record<(typeof STAT_NAMES)[number], number>;

interface NativeBpfClassifier {
  setEpochs(open: number, released: number): void;
  stats(): number[];
  testRun(frame: Uint8Array, mark: number): { retval: number; mark: number };
  /** The ring's records since the last drain, merged to one per flow and epoch (exposure_coalesce.h). */
  drainExposures(): Buffer;
  /** Records read from the ring so far, before merging. */
  exposuresRead(): number;
  runStats(): { runTimeNs: number; runCount: number; counting: boolean };
  close(): void;
}
type NativeBpfClassifierCtor = new (opts: Record<string, unknown>) => NativeBpfClassifier;
interface BpfConstants {
  portsMax: number;
  flowsMax: number;
  flowsMaxDefault: number;
  heldRanges: number;
  segmentBytes: number;
  statsCount: number;
  exposureBytes: number;
  tcHandle: number;
  tcPriority: number;
}

export interface KernelClassifierOptions {
  /** The guest's interface (its ingress is the guest's output); none: load only (tests). */
  iface?: string;
  /** Network namespace (name under /run/netns) the interface lives in. */
  netnsPath?: string;
  /** What it classifies by: the PostgreSQL protocol, or the guest's DSCP mark. */
  mode: 'pgwire' | 'dscp';
  /** dscp mode: the code point of packets to hold. */
  dscp?: number;
  /** pgwire mode: server ports whose connections are parsed (default [5432]). */
  ports?: number[];
  flowsMax?: number;
  /** The ledger's open epoch when the program starts (its nextEpoch). */
  epoch: number;
  /** Have the kernel time the program's runs (BPF_ENABLE_STATS, all programs: benchmarks only). */
  runStats?: boolean;
}

export class KernelClassifier {
  private open: number;
  private released: number;
  private closed = false;
  private drainTimer: NodeJS.Timeout | null = null;
  /** Gets the packets that left in the kernel (the failover reset tracker); null: not read. */
  exposureSink: LedgerObserver | null = null;
  /** This thread's CPU time spent reading the exposure ring and handing its records over. */
  drainNs = 0;

  private constructor(
    private readonly prog: NativeBpfClassifier,
    epoch: number,
  ) {
    this.open = epoch;
    this.released = epoch - 1;
  }

  static load(o: KernelClassifierOptions): KernelClassifier {
    const addon = requirePart('bpf') as unknown as {
      BpfClassifier: NativeBpfClassifierCtor;
      bpfClassifierConstants: BpfConstants;
    };
    checkConstants(addon.bpfClassifierConstants);
    const ports = o.ports ?? [5432];
    assertInt(ports.length, 1, PGWIRE_KERNEL_PORTS_MAX, 'pgwire ports');
    for (const p of ports) assertInt(p, 1, 65535, 'pgwire port');
    const flowsMax = o.flowsMax ?? PGWIRE_KERNEL_FLOWS_DEFAULT;
    assertInt(flowsMax, 1, PGWIRE_KERNEL_FLOWS_MAX, 'flowsMax');
    assertInt(o.epoch, 1, Number.MAX_SAFE_INTEGER, 'epoch');
    const prog = new addon.BpfClassifier({
      objPath: CLASSIFY_BPF_OBJECT_PATH,
      ifname: o.iface,
      netnsPath: o.netnsPath,
      ports,
      mode: o.mode,
      dscp: o.dscp ?? 0,
      markMask: PGWIRE_KERNEL_MARKS.mask,
      markHold: PGWIRE_KERNEL_MARKS.hold,
      markFollow: PGWIRE_KERNEL_MARKS.follow,
      flowsMax,
      epochOpen: o.epoch,
      epochReleased: o.epoch - 1,
      runStats: o.runStats === true,
    });
    return new KernelClassifier(prog, o.epoch);
  }

  /** The ledger's classifier: the program's mark is the verdict. */
  readonly classify: Classifier = (_header, _proto, mark = 0): PacketVerdict =>
    (mark & PGWIRE_KERNEL_MARKS.mask) === PGWIRE_KERNEL_MARKS.hold ? 'hold' : 'release';

  /** Feeds the ledger's epochs to the program (pass it to the ledger as an observer). */
  readonly observer: LedgerObserver = {
    packet: () => {},
    barrier: (epoch) => {
      this.open = epoch + 1; // the guest is paused: one bpf() call, no reading of the ring here
      this.write();
    },
    release: (epoch) => {
      this.drainSoon(); // after what the acknowledgement starts (the next checkpoint, releases)
      if (epoch <= this.released) return;
      this.released = epoch;
      this.write();
    },
  };

  private write(): void {
    if (this.closed) return;
    assert(this.released < this.open, `released epoch ${this.released} not below open ${this.open}`);
    this.prog.setEpochs(this.open, this.released);
  }

  /** Hands the packets that left in the kernel since the last drain to exposureSink. */
  drainExposures(): void {
    if (this.closed || this.exposureSink === null) return;
    const t0 = threadCpuNs();
    const records = this.prog.drainExposures();
    if (records.length > 0) {
      for (const x of coalesceExposures(records)) this.exposureSink.packet(x.header, 'release', 'accept', x.epoch);
      this.exposureSink.beforeVerdicts?.();
    }
    this.drainNs += threadCpuNs() - t0;
  }

  private drainScheduled = false;
  private drainSoon(): void {
    if (this.drainScheduled || this.exposureSink === null) return;
    this.drainScheduled = true;
    setImmediate(() => {
      this.drainScheduled = false;
      this.drainInBackground();
    });
  }

  /** A drain no caller waits for: a failure to read the ring is kept for status, not thrown. */
  private drainInBackground(): void {
    try {
      this.drainExposures();
    } catch (e) {
      this.drainError = (e as Error).message;
    }
  }
  /** Why reading the exposure ring last failed (status); null: it never did. */
  drainError: string | null = null;

  /** Drains the ring every PGWIRE_KERNEL_EXPOSURE_DRAIN_MS until close (without holding the process up). */
  startDraining(): void {
    if (this.drainTimer !== null || this.exposureSink === null) return;
    this.drainTimer = setInterval(() => this.drainInBackground(), PGWIRE_KERNEL_EXPOSURE_DRAIN_MS);
    this.drainTimer.unref();
  }

  /** Packets read from the exposure ring (each packet that left in the kernel, before merging). */
  get exposuresRead(): number {
    return this.prog.exposuresRead(); // kept by the native object, closed or not
  }

  stats(): KernelClassifierStats {
    const raw = this.prog.stats();
    return Object.fromEntries(STAT_NAMES.map((name, i) => [name, raw[i]])) as KernelClassifierStats;
  }

  /** The kernel's count of the program's runs and their time (zero unless loaded with runStats). */
  runStats(): { runTimeNs: number; runCount: number; counting: boolean } {
    return this.prog.runStats();
  }

  /** Runs the program on one Ethernet frame (BPF_PROG_TEST_RUN): its verdict and mark. */
  testRun(frame: Uint8Array, mark = 0): { verdict: 'hold' | 'follow' | 'pass'; mark: number } {
    const r = this.prog.testRun(frame, mark);
    const bits = r.mark & PGWIRE_KERNEL_MARKS.mask;
    const verdict =
      bits === PGWIRE_KERNEL_MARKS.hold ? 'hold' : bits === PGWIRE_KERNEL_MARKS.follow ? 'follow' : 'pass';
    return { verdict, mark: r.mark };
  }

  /** Detaches the program from the interface and frees it; idempotent. */
  close(): void {
    if (this.closed) return;
    if (this.drainTimer !== null) clearInterval(this.drainTimer);
    this.drainTimer = null;
    this.closed = true;
    this.prog.close();
  }
}

/** The addon's compiled-in bounds must be limits.ts's (a difference is a build error). */
function checkConstants(c: BpfConstants): void {
  const ours: Partial<BpfConstants> = {
    portsMax: PGWIRE_KERNEL_PORTS_MAX,
    flowsMax: PGWIRE_KERNEL_FLOWS_MAX,
    flowsMaxDefault: PGWIRE_KERNEL_FLOWS_DEFAULT,
    heldRanges: PGWIRE_KERNEL_HELD_RANGES,
    segmentBytes: PGWIRE_KERNEL_SEGMENT_BYTES,
    statsCount: STAT_NAMES.length,
    exposureBytes: EXPOSURE_BYTES,
  };
  for (const [k, v] of Object.entries(ours)) {
    const got = c[k as keyof BpfConstants];
    if (got !== v) {
      throw new AssertionError({
        message: `remusdb build error: the addon's bpf ${k} is ${got}, limits.ts says ${v} (rebuild: \`npm install\`)`,
      });
    }
  }
}

/** struct pgw_exposure (classify_tc.h): host byte order, as the program stored it. */
const EXPOSURE_BYTES = 64;

/**
 * The records of one drain as one packet per flow and epoch: the highest sequence end and
 * ACK that left, which is all the tracker keeps of them (failover-reset.ts), for a fraction
 * of its per-packet work (a drain holds 5 ms of a flow's packets).
 */
export function coalesceExposures(b: Buffer): Array<{ header: Uint8Array; epoch: number }> {
  const byFlow = new Map<string, { at: number; seqEnd: number; ack: number | null; epoch: number }>();
  for (let at = 0; at + EXPOSURE_BYTES <= b.length; at += EXPOSURE_BYTES) {
    const epoch = Number(b.readBigUInt64LE(at + 56));
    const flags = b[at + 1];
    const seqEnd = seqAdd(
      b.readUInt32LE(at + 40),
      b.readUInt32LE(at + 48) + (flags & TCP_SYN ? 1 : 0) + (flags & TCP_FIN ? 1 : 0),
    );
    const ack = flags & TCP_ACK ? b.readUInt32LE(at + 44) : null;
    const key = `${b[at]}${b.toString('latin1', at + 2, at + 40)}${epoch}`; // not the flags (byte 1)
    const x = byFlow.get(key);
    if (x === undefined) {
      byFlow.set(key, { at, seqEnd, ack, epoch });
      continue;
    }
    if (seqDiff(seqEnd, x.seqEnd) > 0) x.seqEnd = seqEnd;
    if (ack !== null && (x.ack === null || seqDiff(ack, x.ack) > 0)) x.ack = ack;
  }
  return [...byFlow.values()].map((x) => ({ header: exposureHeader(b, x.at, x.seqEnd, x.ack), epoch: x.epoch }));
}

/** The IP + TCP header of a flow's record (failover-reset.ts parses it): no payload, seq = seqEnd. */
function exposureHeader(b: Buffer, at: number, seqEnd: number, ack: number | null): Uint8Array {
  const v6 = b[at] === 1;
  const ipBytes = v6 ? 40 : 20;
  const h = Buffer.alloc(ipBytes + 20);
  if (v6) {
    h[0] = 0x60;
    h.writeUInt16BE(20, 4);
    h[6] = 6;
    b.copy(h, 8, at + 8, at + 24);
    b.copy(h, 24, at + 24, at + 40);
  } else {
    h[0] = 0x45;
    h.writeUInt16BE(40, 2);
    h[9] = 6;
    b.copy(h, 12, at + 8, at + 12);
    b.copy(h, 16, at + 24, at + 28);
  }
  h.writeUInt16BE(b.readUInt16LE(at + 2), ipBytes);
  h.writeUInt16BE(b.readUInt16LE(at + 4), ipBytes + 2);
  h.writeUInt32BE(seqEnd, ipBytes + 4);
  h.writeUInt32BE(ack ?? 0, ipBytes + 8);
  h[ipBytes + 12] = 5 << 4;
  h[ipBytes + 13] = ack === null ? 0 : TCP_ACK;
  return h;
}

/**
 * Removes the program's filter from the interface's ingress if a crashed run left it (a
 * missing interface or filter is no error). The clsact qdisc stays: others may use it.
 */
export function removeLeftoverFilter(iface: string, netns?: string): void {
  const addon = requirePart('bpf') as unknown as { bpfClassifierConstants: BpfConstants };
  const c = addon.bpfClassifierConstants;
  const args = ['filter', 'del', 'dev', iface, 'ingress', 'pref', String(c.tcPriority), 'handle'];
  const argv = [...args, `0x${c.tcHandle.toString(16)}`, 'bpf'];
  const cmd = netns === undefined ? ['tc', ...argv] : ['ip', 'netns', 'exec', netns, 'tc', ...argv];
  spawnSync(cmd[0], cmd.slice(1), { encoding: 'utf8', timeout: 30_000 });
}

// net-device: the one entry the protect service calls to get the guest's network output
// gate. It picks the driver (none: nothing held, as `xl remus -n`; nfqueue: the kernel
// queue of docs/netbuffer.md; plug: sch_plug on an IFB, docs/netbuffer-plug.md) and the commit
// protection mode (off: hold everything; dscp: hold DSCP-marked packets; pgwire: hold PostgreSQL
// commit acknowledgements), sizes the NFQUEUE copy for the mode (pgwire parses whole segments),
// installs the rules (replacing any a crashed run left) and tracks unprotected exposure for failover resets.
// close() is idempotent: rules first, then the queue (held packets are dropped).
import { assertInt } from '../assert';
import type { OutputGate } from '../ports';
import { ErrorCode, RemusError } from '../errors';
import { dscpClassifier, PROTECTED_DSCP } from './classify-dscp';
import { ExposureTracker } from './failover-reset';
import type { GuestMatch } from './iptables-rules';
import { NFQUEUE_DEFAULTS, netnsPathOf, setupNfqueue, type NfqueueBuffer } from './nfqueue-buffer';
import { loadAddon } from '../native';
import type { Classifier } from './packet-ledger';
import { PacketTrace, teeObservers } from './packet-trace';
import { PgwireClassifier } from './pgwire-classifier';
import { KernelClassifier, PGWIRE_KERNEL_MARKS, removeLeftoverFilter } from './kernel-classifier';
import { setupPlug } from './plug-buffer';

export type NetDriver = 'none' | 'nfqueue' | 'plug';
export type CommitProtection = 'off' | 'dscp' | 'pgwire';

/** The kernel's ceiling for the NFQUEUE copy range (0xffff − NLA_HDRLEN): whole segments. */
export const PGWIRE_COPY_BYTES = 65531;
/** pgwire batches are smaller: the header area is batchMax × copyBytes (16 MiB here). */
export const PGWIRE_BATCH_MAX = 256;

export interface NetBufferOptions {
  driver: NetDriver;
  domain: string;
  match: GuestMatch;
  netns?: string;
  queueNum: number;
  commitProtection: CommitProtection;
  /** dscp mode: the code point of protected packets (default 59). */
  dscp?: number;
  /** pgwire mode: PostgreSQL server ports (default 5432). */
  pgPorts?: number[];
  /**
   * dscp mode: classify in the kernel (the tc program in dscp mode: only marked packets are
   * queued; what leaves reaches the exposure tracker through its ring; without the addon's
   * bpf part, an iptables DSCP match and no exposure tracking, RemusDB's behaviour). Default
   * false: every packet is classified here.
   */
  dscpInKernel?: boolean;
  /**
   * pgwire mode: classify in the kernel (a tc BPF program on the guest's interface marks
   * what must wait; only marked packets are queued, 128 bytes each; what leaves in the kernel
   * reaches the exposure tracker through the program's ring, late by up to
   * PGWIRE_KERNEL_EXPOSURE_DRAIN_MS). Default false.
   */
  pgwireInKernel?: boolean;
  /** Classified in the kernel: have it time the program (benchmarks; all BPF programs pay for it). */
  kernelRunStats?: boolean;
  /** Override of the copy range (default 128; pgwire: PGWIRE_COPY_BYTES). */
  copyBytes?: number;
  heldMax?: number;
  /** plug: bytes sch_plug may hold (default 64 MiB; beyond it the kernel drops). */
  plugLimitBytes?: number;
}

export interface NetBuffer {
  readonly gate: OutputGate;
  /** The nfqueue buffer (null for driver none). */
  readonly nfqueue: NfqueueBuffer | null;
  readonly pgwire: PgwireClassifier | null;
  /** The classifier program in the kernel (--pgwire-in-kernel, --dscp-in-kernel), or null. */
  readonly kernel: KernelClassifier | null;
  /** Unprotected exposure per connection (null for driver none or commit protection off). */
  readonly exposure: ExposureTracker | null;
  describe(): Record<string, unknown>;
  close(): void;
}

/** Nothing is held: every output leaves at once (no output commit; xl remus -n). */
export class NoGate implements OutputGate {
  readonly held = 0;
  barrier(): void {
    /* nothing held */
  }
  release(): void {
    /* nothing held */
  }
  setPassThrough(): void {
    /* always */
  }
  discard(): void {
    /* nothing held */
  }
  watchHeld(): void {
    /* nothing is ever held, so nothing waits */
  }
}

export function openNetBuffer(o: NetBufferOptions): NetBuffer {
  assertInt(o.queueNum, 0, 65535, 'queueNum');
  if (o.driver === 'none') {
    if (o.commitProtection !== 'off') {
      throw new RemusError(
        ErrorCode.BAD_ARGUMENT,
        `--commit-protection ${o.commitProtection} needs a network buffer (--net-buffer nfqueue)`,
      );
    }
    return {
      gate: new NoGate(),
      nfqueue: null,
      pgwire: null,
      kernel: null,
      exposure: null,
      describe: () => ({ driver: 'none', domain: o.domain, commitProtection: 'off' }),
      close: () => {},
    };
  }
  if (o.driver === 'plug') return openPlug(o);
  const k = classifierFor(o);
  const tracePath = process.env.REMUSDB_NET_TRACE || undefined;
  const trace = tracePath ? new PacketTrace(tracePath, (key) => k.pgwire?.flowMode(key)) : null;
  const pg = o.commitProtection === 'pgwire' && k.kernel === null;
  const copyBytes = o.copyBytes ?? (pg ? PGWIRE_COPY_BYTES : NFQUEUE_DEFAULTS.copyBytes);
  const batchMax = pg ? PGWIRE_BATCH_MAX : NFQUEUE_DEFAULTS.batchMax;
  let dev: ReturnType<typeof setupNfqueue>;
  try {
    dev = setupNfqueue({
      domain: o.domain,
      match: o.match,
      netns: o.netns,
      queueNum: o.queueNum,
      classify: k.classify,
      // The kernel classifier's observer tells its program the ledger's epochs (kernel-classifier.ts).
      observer: teeObservers([k.kernel?.observer ?? null, k.exposure, trace].filter((x) => x !== null)),
      copyBytes,
      batchMax,
      onlyDscp: k.dscpByIptables ? k.dscp : undefined,
      onlyMarks: k.kernel ? [PGWIRE_KERNEL_MARKS.hold, PGWIRE_KERNEL_MARKS.follow] : undefined,
      markMask: PGWIRE_KERNEL_MARKS.mask,
      ...(o.heldMax === undefined ? {} : { heldMax: o.heldMax }),
    });
  } catch (e) {
    k.kernel?.close();
    throw e;
  }
  k.kernel?.startDraining();
  return {
    gate: dev.gate,
    nfqueue: dev.gate,
    pgwire: k.pgwire,
    kernel: k.kernel,
    exposure: k.exposure,
    describe: () => ({
      driver: 'nfqueue',
      domain: o.domain,
      queueNum: o.queueNum,
      netns: o.netns ?? null,
      match: o.match,
      commitProtection: o.commitProtection,
      dscp: o.commitProtection === 'dscp' ? k.dscp : null,
      dscpInKernel: o.commitProtection === 'dscp' && o.dscpInKernel === true,
      pgwireInKernel: k.kernel !== null && o.commitProtection === 'pgwire',
      classifiedBy: k.kernel ? 'bpf' : k.dscpByIptables ? 'iptables' : k.classify ? 'dom0' : 'none',
      copyBytes,
      batchMax,
      ...dev.gate.stats(),
      pgwire: k.pgwire ? { ...k.pgwire.stats, opaqueReasons: k.pgwire.opaqueReasons } : null,
      kernelClassifier: k.kernel
        ? {
            ...k.kernel.stats(),
            ...k.kernel.runStats(),
            exposuresRead: k.kernel.exposuresRead,
            drainNs: k.kernel.drainNs,
            drainError: k.kernel.drainError,
          }
        : null,
      exposedFlows: k.exposure?.flowCount ?? null,
    }),
    close: () => {
      try {
        dev.teardown();
      } finally {
        k.kernel?.close();
        trace?.flush();
      }
    },
  };
}

/** The commit protection mode's classifier: in userspace, or a program in the kernel. */
interface ClassifierSetup {
  classify: Classifier | undefined;
  pgwire: PgwireClassifier | null;
  kernel: KernelClassifier | null;
  exposure: ExposureTracker | null;
  dscp: number;
  /** --dscp-in-kernel without the bpf part: iptables queues the marked packets (no exposure). */
  dscpByIptables: boolean;
}

function classifierFor(o: NetBufferOptions): ClassifierSetup {
  const dscp = o.dscp ?? PROTECTED_DSCP;
  const cp = o.commitProtection;
  const inKernel = (cp === 'dscp' && o.dscpInKernel === true) || (cp === 'pgwire' && o.pgwireInKernel === true);
  // An addon without its bpf part classifies --dscp-in-kernel with an iptables DSCP match: what
  // leaves at once then never reaches us, so there is no exposure tracking (no failover resets).
  const dscpByIptables = cp === 'dscp' && inKernel && !loadAddon().parts.bpf;
  // A crashed run's program would go on marking: harmless, but nobody would read it.
  if (!inKernel && loadAddon().parts.bpf) removeLeftoverFilter(ifaceOf(o.match), o.netns);
  const exposure = cp === 'off' || dscpByIptables ? null : new ExposureTracker();
  const none = { pgwire: null, kernel: null, exposure, dscp, dscpByIptables };
  if (cp === 'off' || dscpByIptables) return { ...none, classify: undefined };
  if (!inKernel) {
    if (cp === 'dscp') return { ...none, classify: dscpClassifier(dscp) };
    const pgwire = new PgwireClassifier({ ports: o.pgPorts });
    return { ...none, pgwire, classify: pgwire.classify };
  }
  const kernel = KernelClassifier.load({
    mode: cp,
    dscp,
    ports: o.pgPorts,
    iface: ifaceOf(o.match),
    netnsPath: o.netns === undefined ? undefined : netnsPathOf(o.netns),
    epoch: 1,
    runStats: o.kernelRunStats === true,
  });
  kernel.exposureSink = exposure;
  return { ...none, kernel, classify: kernel.classify };
}

const ifaceOf = (m: GuestMatch): string => ('physdevIn' in m ? m.physdevIn : m.inIface);

/** The IFB device that holds iface's packets: rdb-<iface>, or a hash when that is too long. */
export function ifbNameFor(iface: string): string {
  const name = `rdb-${iface}`;
  if (name.length <= 15) return name;
  let h = 2166136261;
  for (const c of iface) h = Math.imul(h ^ c.charCodeAt(0), 16777619) >>> 0;
  return `rdb-${h.toString(16).padStart(8, '0')}`;
}

/** sch_plug holds whole epochs: no per-packet classification, one unacknowledged epoch. */
function openPlug(o: NetBufferOptions): NetBuffer {
  if (o.commitProtection !== 'off') {
    throw new RemusError(
      ErrorCode.BAD_ARGUMENT,
      `--commit-protection ${o.commitProtection} classifies packets, which sch_plug cannot: use --net-buffer nfqueue`,
    );
  }
  if (o.netns !== undefined)
    throw new RemusError(
      ErrorCode.BAD_ARGUMENT,
      'the plug driver works in its own network namespace only (run remusdb there)',
    );
  const iface = ifaceOf(o.match);
  const ifb = ifbNameFor(iface);
  const dev = setupPlug({ vif: iface, ifb, limitBytes: o.plugLimitBytes });
  return {
    gate: dev.gate,
    nfqueue: null,
    pgwire: null,
    kernel: null,
    exposure: null,
    describe: () => ({
      driver: 'plug',
      domain: o.domain,
      iface,
      ifb,
      commitProtection: 'off',
      epochsHeld: dev.gate.held,
    }),
    close: () => dev.close(),
  };
}

// domain-net: the network output buffer of one protected domain, over all of its
// interfaces — what `remusdb protect --net-buffer nfqueue|plug` installs at start and
// removes at stop. One openNetBuffer per interface (a Xen domain has a vif per NIC:
// vif<domid>.<devid>), joined into one OutputGate so the engine's barrier / release /
// discard reach every interface in the same step. Setup is all or nothing: when one
// interface fails, the ones already set up are torn down before the error is thrown.
// Each driver's own setup replaces what a crashed run left (stale rules, IFB, plug).
import { assert, assertInt } from '../assert';
import type { OutputGate } from '../ports';
import { ErrorCode, RemusError } from '../errors';
import type { ExposureTracker } from './failover-reset';
import { type CommitProtection, type NetBuffer, openNetBuffer } from './net-device';

/** Interfaces one domain may buffer (a Xen PV guest has at most a handful of vifs). */
export const DOMAIN_IFACES_MAX = 8;

export interface DomainNetOptions {
  driver: 'nfqueue' | 'plug';
  /** Tag of the domain's rules and IFBs (its name). */
  domain: string;
  /** Interfaces whose incoming packets are the guest's output (a Xen vif receives what the guest sends). */
  ifaces: string[];
  /** The interfaces are bridge ports (Xen's vif-bridge): match them with -m physdev. */
  bridged: boolean;
  /** nfqueue: queue of the first interface; the next ones take the following numbers. */
  queueBase: number;
  commitProtection: CommitProtection;
  dscp?: number;
  dscpInKernel?: boolean;
  pgwireInKernel?: boolean;
  pgPorts?: number[];
}

export interface DomainNet {
  readonly gate: OutputGate;
  /** Per-interface exposure trackers (commit protection only), for failover resets. */
  readonly exposure: ExposureTracker[];
  /**
   * Told, per released epoch, how long its oldest held packet waited over all interfaces (ms):
   * the metrics' hold histogram. nfqueue only: sch_plug holds in the kernel, unseen by dom0.
   */
  onHoldMs: ((ms: number) => void) | null;
  describe(): Record<string, unknown>;
  /** Removes every rule, IFB and queue (held packets are dropped). Idempotent. */
  close(): void;
}

/**
 * Forwards each engine step to every interface's gate, in interface order. It tells of held
 * outputs (watchHeld) only when every gate can: one silent gate would leave its outputs to the timer.
 */
export class GateSet implements OutputGate {
  readonly watchHeld?: (onHeld: (() => void) | null) => void;
  /** afterRelease: runs once every gate has released (the hold times are then all known). */
  constructor(
    private readonly gates: OutputGate[],
    private readonly afterRelease: () => void = () => {},
  ) {
    assert(gates.length > 0, 'a gate set needs a gate');
    if (gates.every((g) => g.watchHeld))
      this.watchHeld = (onHeld) => {
        for (const g of gates) g.watchHeld!(onHeld);
      };
  }
  get held(): number {
    return this.gates.reduce((n, g) => n + g.held, 0);
  }
  barrier(epoch: number): void {
    for (const g of this.gates) g.barrier(epoch);
  }
  release(epoch: number): void {
    for (const g of this.gates) g.release(epoch);
    this.afterRelease();
  }
  setPassThrough(on: boolean): void {
    for (const g of this.gates) g.setPassThrough(on);
  }
  discard(): void {
    for (const g of this.gates) g.discard();
  }
}

/**
 * The domain's hold per released epoch: each interface's ledger reports its own during a
 * release; the domain's is the longest of them, told in epoch order once all have released.
 */
export class EpochHolds {
  private readonly longest = new Map<number, number>();
  add(epoch: number, ms: number): void {
    this.longest.set(epoch, Math.max(ms, this.longest.get(epoch) ?? 0));
  }
  tell(to: ((ms: number) => void) | null): void {
    if (this.longest.size === 0) return; // most releases: no interface held a packet (or plug)
    for (const epoch of [...this.longest.keys()].sort((a, b) => a - b)) to?.(this.longest.get(epoch)!);
    this.longest.clear();
  }
}

export function openDomainNet(o: DomainNetOptions): DomainNet {
  assertInt(o.ifaces.length, 1, DOMAIN_IFACES_MAX, 'interfaces per domain');
  assertInt(o.queueBase, 0, 65535 - o.ifaces.length, 'queueBase');
  if (new Set(o.ifaces).size !== o.ifaces.length)
    throw new RemusError(ErrorCode.BAD_ARGUMENT, `interface named twice: ${o.ifaces.join(', ')}`);
  const opened: NetBuffer[] = [];
  try {
    o.ifaces.forEach((iface, i) => {
      opened.push(
        openNetBuffer({
          driver: o.driver,
          domain: i === 0 ? o.domain : `${o.domain.slice(0, 17)}-${i}`,
          queueNum: o.queueBase + i,
          match: o.bridged ? { physdevIn: iface } : { inIface: iface },
          commitProtection: o.commitProtection,
          dscp: o.dscp,
          dscpInKernel: o.dscpInKernel,
          pgwireInKernel: o.pgwireInKernel,
          pgPorts: o.pgPorts,
        }),
      );
    });
  } catch (e) {
    for (const nb of opened.reverse()) nb.close();
    throw e;
  }
  let closed = false;
  const holds = new EpochHolds();
  for (const nb of opened) if (nb.nfqueue) nb.nfqueue.ledger.onHoldMs = (ms, epoch) => holds.add(epoch, ms);
  const net: DomainNet = {
    gate: new GateSet(
      opened.map((nb) => nb.gate),
      () => holds.tell(net.onHoldMs),
    ),
    onHoldMs: null,
    exposure: opened.flatMap((nb) => (nb.exposure ? [nb.exposure] : [])),
    describe: () => ({
      driver: o.driver,
      commitProtection: o.commitProtection,
      interfaces: opened.map((nb) => nb.describe()),
    }),
    close: () => {
      if (closed) return;
      closed = true;
      for (const nb of opened.slice().reverse()) nb.close();
    },
  };
  return net;
}

// net-options: the network output buffer options of `remusdb protect` and the plan they
// make (docs/netbuffer.md, docs/netbuffer-plug.md, docs/commit-protection.md):
//   --net-buffer nfqueue|plug   Xen default plug (as xl remus); a simulated domain's own
//                               outputs are always buffered, this adds real interfaces
//   --vif IF (repeatable)       Xen default: all of the domain's vif<domid>.*; sim: required
//   --routed                    match -i IF instead of the bridge port (-m physdev)
//   --commit-protection off|dscp|pgwire, --dscp N (59), --pg-port P (5432, repeatable)
//   --dscp-in-kernel            dscp: the kernel queues only marked packets (fastest; no
//                               failover resets: docs/commit-protection.md)
//   --queue N                   nfqueue number of the first interface (7000 + domid)
// The plan is checked before anything is installed; the sch_plug driver holds one
// unacknowledged epoch, so it takes --max-in-flight 1 (the default with it), and holds
// packets unseen, so it takes --trigger timer (the default with it; output elsewhere).
import type { Command } from 'commander';
import { ErrorCode, RemusError } from '../errors';
import { PROTECTED_DSCP } from '../net/classify-dscp';
import { type DomainNetOptions, DOMAIN_IFACES_MAX } from '../net/domain-net';
import { NET_BUFFERS, type NetBufferName, maxInFlightFor, triggerFor } from '../net/net-buffers';
import { checkBridgeNetfilter, checkIptablesTools } from '../net/iptables-rules';
import type { Trigger } from '../engine/pacing';
import { type DomainDriver, requireFeature } from '../hypervisor/driver';
import type { CommitProtection } from '../net/net-device';
import { badValue, choiceOption, intOption, specified, valueSpec } from './options';

export interface NetCliOptions {
  /** --net-buffer DRIVER, false with -n/--no-net-buffer, undefined when neither was given. */
  netBuffer?: 'nfqueue' | 'plug' | false;
  vif?: string[];
  routed?: boolean;
  commitProtection: CommitProtection;
  dscp: number;
  dscpInKernel?: boolean;
  pgPort?: number[];
  queue?: number;
  maxInFlight?: number;
  trigger?: Trigger;
}

const QUEUE_BASE = 7000;
const IFNAME = /^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,14}$/;

/** A repeatable option: each value parsed by parse (and described by its spec), collected in order. */
function collect<T>(parse: (v: string) => T): (v: string, prev: T[] | undefined) => T[] {
  const spec = valueSpec(parse);
  const all = (v: string, prev: T[] | undefined): T[] => [...(prev ?? []), parse(v)];
  return spec ? specified(all, spec) : all;
}

const ifaceOption = specified(
  (v: string): string => {
    if (!IFNAME.test(v)) {
      throw badValue('--vif', v, '1 to 15 letters, digits, _ . or - (not first)', 'not an interface name');
    }
    return v;
  },
  { name: '--vif', kind: 'iface' },
);

export function addNetOptions(cmd: Command): Command {
  return cmd
    .option(
      '--net-buffer <driver>',
      'network output buffer: plug (sch_plug, Xen default) or nfqueue (needed for commit protection)',
      choiceOption('--net-buffer', ['nfqueue', 'plug'] as const),
    )
    .option(
      '-n, --no-net-buffer',
      'release outputs at once (unsafe: clients may see state a failover loses; xl remus -n; needs --unsafe)',
    )
    .option(
      '--vif <iface>',
      "interface whose incoming packets are the guest's output (repeatable; Xen default: all vif<domid>.*)",
      collect(ifaceOption),
    )
    .option('--routed', 'the interfaces are not bridge ports (vif-route): match them as input interfaces')
    .option(
      '--commit-protection <mode>',
      'off (hold everything), dscp (hold packets the guest marks) or pgwire (hold PostgreSQL commit replies)',
      choiceOption('--commit-protection', ['off', 'dscp', 'pgwire'] as const),
      'off',
    )
    .option('--dscp <n>', 'dscp mode: the code point of protected packets', intOption('--dscp', 1, 63), PROTECTED_DSCP)
    .option(
      '--dscp-in-kernel',
      'dscp mode: only marked packets reach the queue, the rest never leave the kernel (no per-packet cost; no ' +
        'failover resets)',
    )
    .option(
      '--pg-port <port>',
      'pgwire mode: a PostgreSQL server port in the guest (repeatable; default 5432)',
      collect(intOption('--pg-port', 1, 65535)),
    )
    .option(
      '--queue <n>',
      'nfqueue: queue number of the first interface (default 7000 + domid)',
      intOption('--queue', 0, 65535 - DOMAIN_IFACES_MAX),
    );
}

/** The domain as the network plan needs it: its driver, its rules' tag, its default interfaces. */
export interface NetDomain {
  driver: DomainDriver;
  /** Tag of its rules and IFBs (a plain name). */
  tag: string;
  label: string;
  domid: number;
  defaultInterfaces(): string[];
}

/**
 * What the chosen network buffer needs from this host, checked before the domain is opened:
 * a Xen domain's disk is served from then on, and a refusal after that would take the disk
 * away from a running guest. nfqueue needs iptables, and on bridged interfaces br_netfilter's
 * IP hooks.
 */
export function netPreflight(o: NetCliOptions, driver: DomainDriver): void {
  if (bufferNameOf(o, driver) !== 'nfqueue') return;
  checkIptablesTools();
  if (!o.routed) checkBridgeNetfilter(undefined);
}

/** The network buffer asked for, else the domain driver's default (null: none, or -n). */
function bufferNameOf(o: NetCliOptions, driver: DomainDriver): NetBufferName | null {
  return o.netBuffer === false ? null : (o.netBuffer ?? driver.defaults.netBuffer ?? null);
}

/** Which network buffer to install (null: only a domain's own outputs are held, or -n). */
export function netPlan(o: NetCliOptions, d: NetDomain): DomainNetOptions | null {
  if (o.netBuffer === false) {
    if (o.vif || o.commitProtection !== 'off') {
      throw new RemusError(
        ErrorCode.BAD_ARGUMENT,
        '--no-net-buffer releases every output at once: it cannot go with --vif or --commit-protection',
      );
    }
    return null;
  }
  const name = bufferNameOf(o, d.driver);
  if (!name) {
    if (o.vif || o.commitProtection !== 'off') {
      throw new RemusError(
        ErrorCode.BAD_ARGUMENT,
        'name the driver of the interfaces to buffer: --net-buffer nfqueue (or plug)',
      );
    }
    return null;
  }
  const buffer = NET_BUFFERS[name];
  requireFeature(d.driver, buffer.feature);
  if (o.commitProtection !== 'off') requireFeature(d.driver, 'commitProtection');
  buffer.validate(o);
  const ifaces = o.vif ?? d.defaultInterfaces();
  if (!ifaces.length) {
    throw new RemusError(
      ErrorCode.BAD_ARGUMENT,
      d.domid > 0
        ? `domain ${d.label} (id ${d.domid}) has no interface in dom0 to buffer: name its interfaces with --vif, ` +
            'or protect it without output buffering (-n -F, unsafe)'
        : `--net-buffer on ${d.label} buffers real interfaces: name them with --vif`,
    );
  }
  if (ifaces.length > DOMAIN_IFACES_MAX) {
    throw new RemusError(
      ErrorCode.BAD_ARGUMENT,
      `at most ${DOMAIN_IFACES_MAX} interfaces per domain (got ${ifaces.length})`,
    );
  }
  return {
    driver: name,
    domain: d.tag,
    ifaces,
    bridged: !o.routed,
    queueBase: o.queue ?? Math.min(QUEUE_BASE + d.domid, 65535 - DOMAIN_IFACES_MAX),
    commitProtection: o.commitProtection,
    dscp: o.dscp,
    dscpInKernel: o.dscpInKernel === true,
    pgPorts: o.pgPort,
  };
}

/** --max-in-flight: 1 under sch_plug, else what was asked (default 2). */
export function maxInFlightOf(o: NetCliOptions, plan: DomainNetOptions | null): number {
  return maxInFlightFor(o, plan ? NET_BUFFERS[plan.driver] : null);
}

/**
 * --trigger: what was asked (checked against the buffer by netPlan), else output unless the
 * buffer cannot tell (plug).
 */
export function triggerOf(o: NetCliOptions, plan: DomainNetOptions | null): Trigger {
  return triggerFor(o, plan ? NET_BUFFERS[plan.driver] : null);
}

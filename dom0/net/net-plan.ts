// net-plan: from the network options of `remusdb protect` (or of a reprotect request) and
// the domain, which network buffer to install, on which interfaces, with which in-flight
// bound and checkpoint trigger (docs/netbuffer.md, docs/netbuffer-plug.md,
// docs/commit-protection.md). The plan is checked before anything is installed: the
// sch_plug driver holds one unacknowledged epoch, so it takes --max-in-flight 1, and holds
// packets unseen, so it takes --trigger timer (the defaults with it). The CLI parses the
// options (cli/net-options.ts); a backup that reprotects a domain makes its plan here too.
import { ErrorCode, RemusError } from '../errors';
import { type DomainNetOptions, DOMAIN_IFACES_MAX } from './domain-net';
import { MAX_IN_FLIGHT_MAX, NET_BUFFERS, type NetBufferName, maxInFlightFor, triggerFor } from './net-buffers';
import { checkBridgeNetfilter, checkIptablesTools } from './iptables-rules';
import { TRIGGERS, type Trigger } from '../engine/pacing';
import { PROTECTED_DSCP } from './classify-dscp';
import { type DomainDriver, requireFeature } from '../hypervisor/driver';
import type { CommitProtection } from './net-device';

/** The first interface's nfqueue number is QUEUE_BASE + domid unless --queue names it. */
const QUEUE_BASE = 7000;
/** An interface name as Linux takes it (IFNAMSIZ 16 with its NUL). */
export const IFNAME = /^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,14}$/;

/** What the user chose for the network buffer (absent fields: the driver's defaults). */
export interface NetChoice {
  /** --net-buffer DRIVER, false with -n/--no-net-buffer, undefined when neither was given. */
  netBuffer?: 'nfqueue' | 'plug' | false;
  vif?: string[];
  routed?: boolean;
  commitProtection: CommitProtection;
  dscp: number;
  dscpInKernel?: boolean;
  pgwireInKernel?: boolean;
  pgPort?: number[];
  queue?: number;
  maxInFlight?: number;
  trigger?: Trigger;
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
export function netPreflight(o: NetChoice, driver: DomainDriver): void {
  if (bufferNameOf(o, driver) !== 'nfqueue') return;
  checkIptablesTools();
  if (!o.routed) checkBridgeNetfilter(undefined);
}

/** The network buffer asked for, else the domain driver's default (null: none, or -n). */
function bufferNameOf(o: NetChoice, driver: DomainDriver): NetBufferName | null {
  return o.netBuffer === false ? null : (o.netBuffer ?? driver.defaults.netBuffer ?? null);
}

/** Which network buffer to install (null: only a domain's own outputs are held, or -n). */
export function netPlan(o: NetChoice, d: NetDomain): DomainNetOptions | null {
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
    pgwireInKernel: o.pgwireInKernel === true,
    pgPorts: o.pgPort,
  };
}

/** --max-in-flight: 1 under sch_plug, else what was asked (default 2). */
export function maxInFlightOf(o: NetChoice, plan: DomainNetOptions | null): number {
  return maxInFlightFor(o, plan ? NET_BUFFERS[plan.driver] : null);
}

/**
 * --trigger: what was asked (checked against the buffer by netPlan), else output unless the
 * buffer cannot tell (plug).
 */
export function triggerOf(o: NetChoice, plan: DomainNetOptions | null): Trigger {
  return triggerFor(o, plan ? NET_BUFFERS[plan.driver] : null);
}

/**
 * A NetChoice as a control request carries it (`remusdb reprotect` on this host), checked
 * field by field: a wrong one is ERR_BAD_ARGUMENT naming it. Absent: the driver's defaults.
 */
export function netChoiceOf(v: unknown): NetChoice {
  if (v === undefined || v === null) return { commitProtection: 'off', dscp: PROTECTED_DSCP };
  if (typeof v !== 'object' || Array.isArray(v)) throw badNet('net', v, 'an object');
  const o = v as Record<string, unknown>;
  const nb = o.netBuffer;
  if (nb !== undefined && nb !== false && nb !== 'nfqueue' && nb !== 'plug')
    throw badNet('netBuffer', nb, 'nfqueue|plug|false');
  const cp = o.commitProtection ?? 'off';
  if (cp !== 'off' && cp !== 'dscp' && cp !== 'pgwire') throw badNet('commitProtection', cp, 'off|dscp|pgwire');
  const trigger = o.trigger;
  if (trigger !== undefined && !TRIGGERS.includes(trigger as Trigger))
    throw badNet('trigger', trigger, TRIGGERS.join('|'));
  const vif = o.vif === undefined ? undefined : listOf(o.vif, 'vif', (x) => typeof x === 'string' && IFNAME.test(x));
  return {
    netBuffer: nb as NetChoice['netBuffer'],
    vif: vif as string[] | undefined,
    routed: flag(o.routed, 'routed'),
    commitProtection: cp,
    dscp: intIn(o.dscp ?? PROTECTED_DSCP, 'dscp', 1, 63)!,
    dscpInKernel: flag(o.dscpInKernel, 'dscpInKernel'),
    pgwireInKernel: flag(o.pgwireInKernel, 'pgwireInKernel'),
    pgPort: o.pgPort === undefined ? undefined : (listOf(o.pgPort, 'pgPort', isPort) as number[]),
    queue: intIn(o.queue, 'queue', 0, 65535 - DOMAIN_IFACES_MAX),
    maxInFlight: intIn(o.maxInFlight, 'maxInFlight', 1, MAX_IN_FLIGHT_MAX),
    trigger: trigger as Trigger | undefined,
  };
}

function badNet(field: string, v: unknown, want: string): RemusError {
  return new RemusError(ErrorCode.BAD_ARGUMENT, `network option ${field}: ${JSON.stringify(v)} is not ${want}`);
}

function isPort(x: unknown): boolean {
  return Number.isInteger(x) && (x as number) >= 1 && (x as number) <= 65535;
}

function flag(v: unknown, field: string): boolean | undefined {
  if (v !== undefined && typeof v !== 'boolean') throw badNet(field, v, 'true or false');
  return v;
}

function intIn(v: unknown, field: string, min: number, max: number): number | undefined {
  if (v === undefined) return undefined;
  if (!Number.isInteger(v) || (v as number) < min || (v as number) > max) throw badNet(field, v, `${min}..${max}`);
  return v as number;
}

function listOf(v: unknown, field: string, ok: (x: unknown) => boolean): unknown[] {
  if (!Array.isArray(v) || v.length === 0 || v.length > DOMAIN_IFACES_MAX * 4 || !v.every(ok)) {
    throw badNet(field, v, 'a short list of valid values');
  }
  return v;
}

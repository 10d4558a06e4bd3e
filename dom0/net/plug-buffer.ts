// plug-buffer: the `plug` network output buffer driver — the engine's OutputGate over Linux
// sch_plug, the way Xen's Remus buffers a domain's output, but with IPv6 and ARP too.
//
// Why: sch_plug holds every packet enqueued after a "buffer" command until a "release one"
// releases them, so an epoch's output leaves only after its checkpoint is acknowledged. It
// sits on the root of an IFB device that receives the guest's traffic: the vif's ingress
// (what the guest sends) is redirected there by a u32 match-all filter for *all* protocols
// (Xen's remus-netbuf-setup redirects only IPv4). Setup, in this order (setupPlug does 1-3):
//   1. ip link add ifbN type ifb; ip link set ifbN up
//   2. tc qdisc add dev ifbN root handle 1: plug limit L      (netlink, then a BUFFER)
//   3. tc qdisc add dev VIF ingress; tc filter add dev VIF parent ffff: protocol all u32
//      match u32 0 0 action mirred egress redirect dev ifbN
//   4. per checkpoint: barrier → TCQ_PLUG_BUFFER (suspended); ack → TCQ_PLUG_RELEASE_ONE
//   5. teardown: delete the ingress qdisc (stops the redirect), delete ifbN (drops what it held)
// Nothing the guest sends passes unheld while a plug is replaced: a new plug is grafted in
// place of the old one in one netlink request (replaceRootQdisc), and a setup that finds a
// crashed run's IFB and redirect keeps them (deleting either first would open the path for
// the time of the next commands: packets of a copy the backup may have resumed).
// sch_plug counts only two epochs (the one being released and the current one), so one
// checkpoint may be unacknowledged at a time: protect with --max-in-flight 1 (checked).
// A crash of this process leaves the plug closed: held packets are dropped when the next
// setup replaces it, never leaked.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { assert } from '../assert';
import type { OutputGate } from '../ports';
import { ErrorCode, RemusError } from '../errors';
import {
  RTM_DELQDISC,
  RTM_NEWQDISC,
  TCQ_PLUG_BUFFER,
  TCQ_PLUG_LIMIT,
  TCQ_PLUG_RELEASE_INDEFINITE,
  TCQ_PLUG_RELEASE_ONE,
  TC_H_ROOT,
  ifindexOf,
  plugOptions,
  qdiscRequest,
  replaceRootQdisc,
} from './rtnetlink';

export class PlugBuffer implements OutputGate {
  private bufferedEpoch = 0;
  private releasedEpoch = 0;
  private passThrough = false;
  private readonly ifindex: number;
  /** The installed plug's handle (1: or 2:, replaceRootQdisc); 0 before install(). */
  private handle = 0;

  constructor(
    readonly ifb: string,
    readonly limitBytes: number,
  ) {
    this.ifindex = ifindexOf(ifb);
  }

  /** Installs a closed plug on the IFB's root in one step, replacing one a crashed run left (dropping what it held). */
  install(): void {
    const what = `add the plug qdisc to ${this.ifb}`;
    this.handle = replaceRootQdisc(this.ifindex, 'plug', plugOptions(TCQ_PLUG_LIMIT, this.limitBytes), what);
    this.action(TCQ_PLUG_BUFFER);
  }

  get held(): number {
    return this.bufferedEpoch - this.releasedEpoch;
  }

  barrier(epoch: number): void {
    if (this.passThrough) return;
    if (this.bufferedEpoch > this.releasedEpoch) {
      throw new RemusError(
        ErrorCode.NETBUF,
        `the plug holds epoch ${this.bufferedEpoch} still: sch_plug keeps one unacknowledged checkpoint (use ` +
          `--max-in-flight 1)`,
      );
    }
    this.action(TCQ_PLUG_BUFFER);
    this.bufferedEpoch = epoch;
  }

  release(epoch: number): void {
    if (this.passThrough || epoch < this.bufferedEpoch || this.bufferedEpoch === this.releasedEpoch) return;
    this.action(TCQ_PLUG_RELEASE_ONE);
    this.releasedEpoch = this.bufferedEpoch;
  }

  setPassThrough(on: boolean): void {
    if (on === this.passThrough) return;
    this.passThrough = on;
    if (on) {
      this.action(TCQ_PLUG_RELEASE_INDEFINITE);
      this.releasedEpoch = this.bufferedEpoch;
    } else this.action(TCQ_PLUG_BUFFER);
  }

  /** Fenced: drop what is held (a new plug replaces the old one, whose packets go with it). */
  discard(): void {
    this.install();
    this.releasedEpoch = this.bufferedEpoch;
  }

  /** Removes the plug (what it holds is dropped). Idempotent. */
  close(): void {
    if (this.handle === 0) return;
    try {
      this.change(RTM_DELQDISC, 0, null, 'remove the plug');
    } catch {
      /* already gone */
    }
  }

  private action(a: number): void {
    assert(this.handle !== 0, 'plug action before install');
    this.change(RTM_NEWQDISC, 0, plugOptions(a), `plug ${ACTION_NAMES[a]} on ${this.ifb}`);
  }

  private change(
    type: typeof RTM_NEWQDISC | typeof RTM_DELQDISC,
    flags: number,
    options: Buffer | null,
    what: string,
  ): void {
    qdiscRequest(
      { type, flags, ifindex: this.ifindex, handle: this.handle, parent: TC_H_ROOT, kind: 'plug', options },
      what,
    );
  }
}

const ACTION_NAMES: Record<number, string> = { 0: 'BUFFER', 1: 'RELEASE_ONE', 2: 'RELEASE_INDEFINITE', 3: 'LIMIT' };

function run(cmd: string, args: string[], okIfFails = false): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0 && !okIfFails)
    throw new RemusError(ErrorCode.NETBUF, `${cmd} ${args.join(' ')}: ${(r.stderr || r.error?.message || '').trim()}`);
}

export interface PlugDevice {
  gate: PlugBuffer;
  close(): void;
}

/**
 * Steps 1-3 of the header, idempotent. A crashed run's IFB and redirect stay in place (its
 * plug holds until the new one replaces it); anything else on the vif's ingress is replaced.
 */
export function setupPlug(o: { vif: string; ifb: string; limitBytes?: number }): PlugDevice {
  ifindexOf(o.vif); // a clear error when the guest's interface does not exist
  const ifbExisted = fs.existsSync(`/sys/class/net/${o.ifb}`);
  const redirected = ifbExisted && redirectsTo(o.vif) === o.ifb;
  let gate: PlugBuffer;
  try {
    if (!ifbExisted) run('ip', ['link', 'add', o.ifb, 'type', 'ifb']);
    run('ip', ['link', 'set', o.ifb, 'up']);
    gate = new PlugBuffer(o.ifb, o.limitBytes ?? 64 * 1024 * 1024);
    gate.install();
    if (!redirected) redirectIngress(o.vif, o.ifb);
  } catch (e) {
    // nothing this call added stays behind; a crashed run's buffer stays closed
    if (!redirected) run('tc', ['qdisc', 'del', 'dev', o.vif, 'ingress'], true);
    if (!ifbExisted) run('ip', ['link', 'del', o.ifb], true);
    throw e;
  }
  let closed = false;
  return {
    gate,
    close: () => {
      if (closed) return;
      closed = true;
      run('tc', ['qdisc', 'del', 'dev', o.vif, 'ingress'], true);
      gate.close();
      run('ip', ['link', 'del', o.ifb], true);
    },
  };
}

/** The device the vif's ingress redirects to (`tc filter show` of our u32 + mirred filter), or null. */
function redirectsTo(vif: string): string | null {
  const r = spawnSync('tc', ['filter', 'show', 'dev', vif, 'parent', 'ffff:'], { encoding: 'utf8' });
  return /Egress Redirect to device ([^)\s]+)\)/.exec(r.stdout ?? '')?.[1] ?? null;
}

/** Step 3: every packet the guest sends goes to the IFB (all protocols). */
function redirectIngress(vif: string, ifb: string): void {
  run('tc', ['qdisc', 'del', 'dev', vif, 'ingress'], true);
  run('tc', ['qdisc', 'add', 'dev', vif, 'ingress']);
  const matchAll = ['protocol', 'all', 'u32', 'match', 'u32', '0', '0'];
  run('tc', [
    'filter',
    'add',
    'dev',
    vif,
    'parent',
    'ffff:',
    ...matchAll,
    'action',
    'mirred',
    'egress',
    'redirect',
    'dev',
    ifb,
  ]);
}

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
// sch_plug counts only two epochs (the one being released and the current one), so one
// checkpoint may be unacknowledged at a time: protect with --max-in-flight 1 (checked).
// A crash of this process leaves the plug closed: held packets are dropped with the IFB at
// the next setup, never leaked.
import { spawnSync } from 'node:child_process';
import type { OutputGate } from '../ports';
import { ErrorCode, RemusError } from '../errors';
import {
  NLM_F_CREATE,
  NLM_F_EXCL,
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
} from './rtnetlink';

const PLUG_HANDLE = 0x00010000; // 1:0

export class PlugBuffer implements OutputGate {
  private bufferedEpoch = 0;
  private releasedEpoch = 0;
  private passThrough = false;
  private readonly ifindex: number;

  constructor(
    readonly ifb: string,
    readonly limitBytes: number,
  ) {
    this.ifindex = ifindexOf(ifb);
  }

  /** Installs the plug on the IFB's root (replacing one left by a crashed run), closed. */
  install(): void {
    try {
      this.change(RTM_DELQDISC, 0, null, 'remove a stale plug');
    } catch {
      /* none there */
    }
    this.change(
      RTM_NEWQDISC,
      NLM_F_CREATE | NLM_F_EXCL,
      plugOptions(TCQ_PLUG_LIMIT, this.limitBytes),
      `add the plug qdisc to ${this.ifb}`,
    );
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

  /** Fenced: drop what is held (recreate the plug; the old one's packets go with it). */
  discard(): void {
    this.install();
    this.releasedEpoch = this.bufferedEpoch;
  }

  /** Removes the plug (what it holds is dropped). Idempotent. */
  close(): void {
    try {
      this.change(RTM_DELQDISC, 0, null, 'remove the plug');
    } catch {
      /* already gone */
    }
  }

  private action(a: number): void {
    this.change(RTM_NEWQDISC, 0, plugOptions(a), `plug ${ACTION_NAMES[a]} on ${this.ifb}`);
  }

  private change(
    type: typeof RTM_NEWQDISC | typeof RTM_DELQDISC,
    flags: number,
    options: Buffer | null,
    what: string,
  ): void {
    qdiscRequest(
      { type, flags, ifindex: this.ifindex, handle: PLUG_HANDLE, parent: TC_H_ROOT, kind: 'plug', options },
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

/** Steps 1-3 of the header, idempotent (a previous run's IFB and filter are replaced). */
export function setupPlug(o: { vif: string; ifb: string; limitBytes?: number }): PlugDevice {
  ifindexOf(o.vif); // a clear error when the guest's interface does not exist
  run('ip', ['link', 'del', o.ifb], true);
  let gate: PlugBuffer;
  try {
    run('ip', ['link', 'add', o.ifb, 'type', 'ifb']);
    run('ip', ['link', 'set', o.ifb, 'up']);
    gate = new PlugBuffer(o.ifb, o.limitBytes ?? 64 * 1024 * 1024);
    gate.install();
    run('tc', ['qdisc', 'del', 'dev', o.vif, 'ingress'], true);
    run('tc', ['qdisc', 'add', 'dev', o.vif, 'ingress']);
    run('tc', [
      'filter',
      'add',
      'dev',
      o.vif,
      'parent',
      'ffff:',
      'protocol',
      'all',
      'u32',
      'match',
      'u32',
      '0',
      '0',
      'action',
      'mirred',
      'egress',
      'redirect',
      'dev',
      o.ifb,
    ]);
  } catch (e) {
    // nothing half-installed stays behind
    run('tc', ['qdisc', 'del', 'dev', o.vif, 'ingress'], true);
    run('ip', ['link', 'del', o.ifb], true);
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

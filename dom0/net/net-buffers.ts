// net-buffers: the network output buffer drivers as a registry, each with what it can hold
// and the options it refuses. nfqueue queues every packet in this process (any number of
// unacknowledged checkpoints; it can classify packets for commit protection); sch_plug is a
// kernel qdisc that holds one unacknowledged checkpoint and cannot look into packets.
// Output-triggered checkpoints (--trigger output) need a buffer that tells the engine when a
// protected packet is held (OutputGate.watchHeld): nfqueue sees each packet and does; sch_plug
// holds them in the kernel unseen, so it is refused there and its default trigger is the timer.
import { ErrorCode, RemusError } from '../errors';
import type { Trigger } from '../engine/pacing';
import type { Feature } from '../hypervisor/driver';
import type { CommitProtection } from './net-device';

export type NetBufferName = 'nfqueue' | 'plug';

/** The choices of `protect` a network buffer driver checks. */
export interface NetBufferChoices {
  commitProtection: CommitProtection;
  dscpInKernel?: boolean;
  pgwireInKernel?: boolean;
  maxInFlight?: number;
  /** --trigger; undefined: the default for the buffer (triggerFor). */
  trigger?: Trigger;
}

export interface NetBufferDriver {
  readonly name: NetBufferName;
  /** The domain driver's feature that allows it. */
  readonly feature: Feature;
  /** Unacknowledged checkpoints it can hold apart; --max-in-flight above it is refused. */
  readonly maxInFlightMax: number;
  /** It tells the engine when a protected output is held (OutputGate.watchHeld), or why not. */
  readonly signalsHeld: true | { reason: string };
  /** Throws ERR_BAD_ARGUMENT for a choice it cannot honour. */
  validate(c: NetBufferChoices): void;
}

/** The engine's own bound on checkpoints in flight (--max-in-flight). */
export const MAX_IN_FLIGHT_MAX = 16;
const MAX_IN_FLIGHT_DEFAULT = 2;

/** A driver whose validate also applies the checks every buffer shares (--trigger). */
function netBuffer(d: NetBufferDriver): NetBufferDriver {
  const validate = (c: NetBufferChoices): void => {
    checkTrigger(c, d);
    d.validate(c);
  };
  return { ...d, validate };
}

export const NET_BUFFERS: Readonly<Record<NetBufferName, NetBufferDriver>> = {
  nfqueue: netBuffer({
    name: 'nfqueue',
    feature: 'netBufferNfqueue',
    maxInFlightMax: MAX_IN_FLIGHT_MAX,
    signalsHeld: true,
    validate: (c) => checkDscpInKernel(c),
  }),
  plug: netBuffer({
    name: 'plug',
    feature: 'netBufferPlug',
    maxInFlightMax: 1,
    signalsHeld: { reason: 'sch_plug holds packets in the kernel without telling this process' },
    validate: (c) => {
      if (c.commitProtection !== 'off') {
        throw new RemusError(
          ErrorCode.BAD_ARGUMENT,
          `--commit-protection ${c.commitProtection} classifies packets, ` +
            'which sch_plug cannot: use --net-buffer nfqueue',
        );
      }
      if (c.maxInFlight !== undefined && c.maxInFlight > 1) {
        throw new RemusError(
          ErrorCode.BAD_ARGUMENT,
          '--net-buffer plug holds one unacknowledged checkpoint ' +
            `(sch_plug): --max-in-flight ${c.maxInFlight} needs --net-buffer nfqueue`,
        );
      }
      checkDscpInKernel(c);
    },
  }),
};

function checkDscpInKernel(c: NetBufferChoices): void {
  if (c.dscpInKernel && c.commitProtection !== 'dscp') {
    throw new RemusError(ErrorCode.BAD_ARGUMENT, '--dscp-in-kernel goes with --commit-protection dscp');
  }
  if (c.pgwireInKernel && c.commitProtection !== 'pgwire') {
    throw new RemusError(ErrorCode.BAD_ARGUMENT, '--pgwire-in-kernel goes with --commit-protection pgwire');
  }
}

/** --max-in-flight: what was asked, else the default within what the buffer (if any) holds. */
export function maxInFlightFor(c: NetBufferChoices, buffer: NetBufferDriver | null): number {
  return c.maxInFlight ?? Math.min(MAX_IN_FLIGHT_DEFAULT, buffer?.maxInFlightMax ?? MAX_IN_FLIGHT_DEFAULT);
}

/**
 * --trigger: what was asked, else 'output' (commits wait for one checkpoint, not for the
 * next tick too) when the buffer tells of held outputs, 'timer' with one that cannot (plug).
 * Output commit does not depend on the pace; the pause share bound keeps the guest running.
 */
export function triggerFor(c: NetBufferChoices, buffer: NetBufferDriver | null): Trigger {
  return c.trigger ?? (buffer && buffer.signalsHeld !== true ? 'timer' : 'output');
}

/** --trigger output needs a buffer that tells of held outputs: refused, with why, for one that cannot. */
function checkTrigger(c: NetBufferChoices, buffer: NetBufferDriver): void {
  if (c.trigger !== 'output' || buffer.signalsHeld === true) return;
  throw new RemusError(
    ErrorCode.BAD_ARGUMENT,
    `--trigger output takes a checkpoint when a held packet waits, and ${buffer.signalsHeld.reason}: ` +
      'use --net-buffer nfqueue, or --trigger timer',
  );
}

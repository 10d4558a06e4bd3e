// interval-options: `-i, --interval <ms|auto>` and `--max-loss-window <ms>`, the same for
// every command that starts checkpoints (protect, reprotect, agent), and what they mean for
// the engine: a fixed interval, or the adaptive one (engine/adaptive-interval.ts) whose
// longest interval is the loss window.
import type { Command } from 'commander';
import { ErrorCode, RemusError } from '../errors';
import { INTERVAL_AUTO_MS_MIN, MAX_LOSS_WINDOW_MS_DEFAULT, MAX_PAUSE_SHARE_DEFAULT } from '../limits';
import { intOption, intOrWordOption } from './options';

export const INTERVAL_MS_DEFAULT = 50;

export interface IntervalCliOptions {
  interval: number | 'auto';
  maxLossWindow?: number;
}

/** The engine's view: intervalMs is the loss window under auto (HELLO and heartbeats use it). */
export interface IntervalChoice {
  intervalMs: number;
  intervalAuto: boolean;
}

/**
 * Adds both options. help.whose: whose checkpoints they pace (" of the domains …"); help.share:
 * what bounds the paused share (a command with --max-pause-share names it).
 */
export function addIntervalOptions(cmd: Command, help: { whose?: string; share?: string } = {}): Command {
  const share = help.share ?? `${Math.round(MAX_PAUSE_SHARE_DEFAULT * 100)} % of the time`;
  return cmd
    .option(
      '-i, --interval <ms|auto>',
      `checkpoint interval${help.whose ?? ''}; auto: the shortest that keeps the guest paused at most ` +
        `${share}, from ${INTERVAL_AUTO_MS_MIN} ms up to --max-loss-window`,
      intOrWordOption('--interval', 1, 60000, ['auto'] as const),
      INTERVAL_MS_DEFAULT,
    )
    .option(
      '--max-loss-window <ms>',
      `--interval auto: the longest interval (what a failover may discard of the guest's run; default ` +
        `${MAX_LOSS_WINDOW_MS_DEFAULT})`,
      intOption('--max-loss-window', INTERVAL_AUTO_MS_MIN, 60000),
    );
}

/** The choice, or ERR_BAD_ARGUMENT for a loss window given with a fixed interval. */
export function intervalChoice(o: IntervalCliOptions): IntervalChoice {
  if (o.interval !== 'auto' && o.maxLossWindow !== undefined) {
    throw new RemusError(
      ErrorCode.BAD_ARGUMENT,
      `--max-loss-window bounds the interval --interval auto chooses: with --interval ${o.interval} the loss ` +
        'window is that interval',
    );
  }
  if (o.interval === 'auto') return { intervalMs: o.maxLossWindow ?? MAX_LOSS_WINDOW_MS_DEFAULT, intervalAuto: true };
  return { intervalMs: o.interval, intervalAuto: false };
}

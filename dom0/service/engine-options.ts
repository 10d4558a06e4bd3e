// engine-options: the one place the checkpoint engine's options are made from what the user
// chose and what the domain's driver needs (its defaults differ where the hypervisor does:
// a Xen save may stall on libxc longer than a simulated guest ever pauses).
import type { PrimaryOptions } from '../engine/primary';
import type { Compressor } from '../memory/encodings';
import { parseCachePages } from '../memory/cache-size';
import type { DomainDriver } from '../hypervisor/driver';
import type { Trigger } from '../engine/pacing';
import { BATCH_PAGES_MAX_DEFAULT, MAX_PAUSE_SHARE_DEFAULT, PAUSE_SHARE_WINDOW_MS } from '../limits';

export interface EngineChoices {
  /** The interval (ms); with intervalAuto the longest the adaptive interval may choose. */
  intervalMs: number;
  /** --interval auto (engine/adaptive-interval.ts). */
  intervalAuto?: boolean;
  /** none: pages go raw and no cache is kept (plain Remus, -u). */
  compressor: Compressor;
  /** --cache: percent of guest memory or bytes. */
  cache: string;
  maxInFlight: number;
  /** --heartbeat-timeout, or undefined: the driver's default for the interval. */
  heartbeatTimeoutMs?: number;
  diskBufferBytesMax: number;
  verifyDisk: boolean;
  /** --disk-scrub: the disks checked range by range with every checkpoint instead (blktap/disk-scrub.ts). */
  diskScrub?: boolean;
  /** --trigger (the CLI's default: net-buffers.ts triggerFor); undefined: 'timer'. */
  trigger?: Trigger;
  /** --max-pause-share, or undefined: MAX_PAUSE_SHARE_DEFAULT. */
  maxPauseShare?: number;
}

export function engineOptions(driver: DomainDriver, pageCount: number, c: EngineChoices): PrimaryOptions {
  return {
    intervalMs: c.intervalMs,
    intervalAuto: c.intervalAuto === true,
    compressor: c.compressor,
    cachePages: c.compressor === 'none' ? 0 : parseCachePages(c.cache, pageCount),
    maxInFlight: c.maxInFlight,
    heartbeatTimeoutMs: c.heartbeatTimeoutMs ?? driver.defaults.heartbeatTimeoutMs(c.intervalMs),
    batchPagesMax: BATCH_PAGES_MAX_DEFAULT,
    deviceStateMax: driver.defaults.deviceStateBytesMax(pageCount),
    diskBufferBytesMax: c.diskBufferBytesMax,
    verifyDisk: c.verifyDisk,
    diskScrub: c.diskScrub === true,
    trigger: c.trigger ?? 'timer',
    maxPauseShare: c.maxPauseShare ?? MAX_PAUSE_SHARE_DEFAULT,
    pauseShareWindowMs: PAUSE_SHARE_WINDOW_MS,
  };
}

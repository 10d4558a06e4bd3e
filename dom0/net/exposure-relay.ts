// exposure-relay: carries commit protection's failover resets across hosts. The primary's
// net buffer knows, per TCP flow, what clients saw unprotected (ExposureTracker); the
// process that fails over is the backup, on another host. So at each checkpoint the primary
// sends the flows that changed (NET_EXPOSURE, exportExposure), the backup keeps them
// (BackupExposure, bounded like the tracker) and, when it fails over from checkpoint C,
// resets the flows whose clients saw output beyond C: the client side at once, the guest
// side once the resumed domain runs (docs/commit-protection.md "Failover resets").
// What clients saw after the primary's last NET_EXPOSURE is unknown to the backup: those
// flows are reset only if they were already exposed (see the doc for the window).
import {
  type ExposureTracker,
  ExposureTracker as Tracker,
  parseFlowExports,
  type ResetTarget,
  sendResets,
} from './failover-reset';

/** Primary: one NET_EXPOSURE body from all interfaces' trackers (null when nothing changed). */
export function exportExposure(trackers: readonly ExposureTracker[], full: boolean): Record<string, unknown> | null {
  let released = 0;
  const flows = [];
  for (const t of trackers) {
    const x = t.exportChanged(undefined, full);
    released = Math.max(released, x.released);
    flows.push(...x.flows);
  }
  return flows.length || full ? { released, flows: flows.slice(0, 4096) } : null;
}

export class BackupExposure {
  private tracker = new Tracker();
  private pending: ResetTarget[] = [];
  records = 0;

  constructor(
    private readonly log: (line: string) => void,
    private readonly send = sendResets,
  ) {}

  /** A NET_EXPOSURE body; a string names what is malformed (a protocol error). */
  onRecord(value: Record<string, unknown>): string | null {
    const x = parseFlowExports(value);
    if (typeof x === 'string') return x;
    this.tracker.importFlows(x.released, x.flows);
    this.records++;
    return null;
  }

  /** A new primary session: what an earlier primary exposed no longer applies. */
  onSession(): void {
    this.tracker = new Tracker();
    this.pending = [];
  }

  /** Failover from checkpoint `epoch`: reset the clients of inconsistent flows now. */
  onFailover(epoch: number): number {
    const targets = this.tracker.inconsistent(Math.max(epoch, this.tracker.releasedEpoch));
    if (!targets.length) return 0;
    try {
      this.send(targets, { toGuest: false });
      this.pending = targets;
      this.log(
        `reset ${targets.length} client connection(s) that saw unprotected output beyond checkpoint ${epoch}: ${targets
          .slice(0, 5)
          .map((t) => `${t.client}:${t.clientPort}→${t.guest}:${t.guestPort} (${t.why})`)
          .join(', ')}`,
      );
    } catch (e) {
      this.log(`could not reset ${targets.length} inconsistent connection(s): ${(e as Error).message}`);
    }
    return targets.length;
  }

  /** The resumed domain runs: reset its side of the same flows. */
  onResumed(): void {
    const targets = this.pending;
    this.pending = [];
    if (!targets.length) return;
    try {
      const sent = this.send(targets, { toGuest: true, toClient: false });
      this.log(`reset the guest side of ${sent} connection(s) in the resumed domain`);
    } catch (e) {
      this.log(`could not reset the guest side of ${targets.length} connection(s): ${(e as Error).message}`);
    }
  }
}

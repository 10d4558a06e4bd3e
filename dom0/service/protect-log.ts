// protect-log: what the protect process says of each engine event, one line each, the same
// for every kind of domain (status and the journal carry the details).
import type { StatusDiskPort } from '../hypervisor/driver';

export function protectLogLine(
  name: string,
  event: string,
  d: Record<string, unknown>,
  disk: StatusDiskPort | null,
): string | null {
  const s = (k: string): string => String(d[k]);
  switch (event) {
    case 'disk-sync': {
      const pending = (disk?.stats() as { resyncPendingBytes?: number } | undefined)?.resyncPendingBytes ?? 0;
      const bytes = d.wholeDisk === true ? (disk?.sizeBytes ?? pending) : pending; // whole: marked as it connects
      const differing = Number(d.differingBytes ?? 0); // marked as it connects, after this line
      const also = differing > 0 ? ` and the ${differing} bytes its disk check found different` : '';
      const what = `copying ${bytes} bytes of disk it may lack${also}`;
      return `backup ${s('backup')} answered: ${what}, then checkpoints start`;
    }
    case 'protected':
      return (
        `protected: ${name} → ${s('backup')} ` + `(${d.continued ? 'continued' : 'full copy'} as epoch ${s('epoch')})`
      );
    case 'session-start':
      return `${d.kind === 'continued' ? 'session continues' : 'session copies all memory'}: ${s('reason')}`;
    case 'continued':
      return (
        `continued session verified at epoch ${s('epoch')}: ${s('pages')} pages written since the last ` +
        `acknowledged checkpoint, ${s('bytes')} bytes sent`
      );
    case 'precopy':
      return d.continued
        ? `continuing ${name} to ${s('backup')}: sending the ${s('pages')} pages written since the last ` +
            'acknowledged checkpoint while the guest runs (unprotected until it ends)'
        : `pre-copy of ${name} to ${s('backup')}: ${s('pages')} pages, guest running unprotected until it ends`;
    case 'precopy-round':
      return precopyLine(d);
    case 'checkpoint-failed':
      return `checkpoint ${s('epoch')} of ${name} failed: ${s('message')}`;
    case 'guest-starved':
      return (
        `WARNING: ${name} was paused ${(100 * Number(d.share)).toFixed(0)}% of the last second: its checkpoints ` +
        `pause it ${Number(d.pauseMs).toFixed(0)} ms, and the interval (${s('intervalMs')} ms, from one ` +
        "checkpoint's start to the next) leaves it little time to run; " +
        (d.auto ? '--interval auto is at its longest (the loss window): raise --max-loss-window' : 'raise --interval')
      );
    case 'resume-failed':
      return `could not resume ${name}: ${s('message')}`;
    case 'fenced':
      return `the backup took over from epoch ${s('epoch')}: ${name} is stopped here (fenced)`;
    default:
      return null;
  }
}

/** One line per pre-copy round: what was sent, how fast, what the guest dirtied meanwhile. */
export function precopyLine(d: Record<string, unknown>): string {
  const n = (k: string): number => Number(d[k]);
  return (
    `pre-copy round ${n('round')}: ${((n('sentPages') * 4096) / 2 ** 20).toFixed(0)} MiB sent in ` +
    `${(n('elapsedMs') / 1000).toFixed(1)} s (${n('mbPerSec').toFixed(0)} MB/s), ${n('dirtyPagesLast')} pages ` +
    'dirtied meanwhile' +
    (d.final ? ': the first checkpoint copies them with the guest paused' : '')
  );
}

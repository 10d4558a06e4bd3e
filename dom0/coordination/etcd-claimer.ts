// etcd-claimer.ts: the backup's takeover claim (engine/backup.ts, OwnershipClaimer) over
// etcd. It waits for the domain's key to be free — the old primary's lease must end first —
// for as long as it takes, retrying while etcd is unreachable (a takeover is never given up
// because etcd was briefly away), until it wins or the engine cancels it (the primary came
// back). Reported once per change: waiting on an owner, or on etcd. It gives up when the key
// passes to a new owner while it waits — a primary restarted (by systemd, say) that claimed
// it once its old lease ended: that primary runs the domain, and its HELLO is then accepted.
import { ErrorCode, isRemusError, type RemusError } from '../errors';
import type { Ownership, OwnershipClaimer } from '../ports';
import { claimOwnership, type OwnerInfo } from './etcd-ownership';

const RETRY_AFTER_ETCD_ERROR_MS = 500;
/** One claim call waits this long for the key before it is renewed (the loop goes on). */
const WAIT_PER_CALL_MS = 60_000;

export function etcdClaimer(endpoints: string[], ttlSeconds: number, log: (line: string) => void): OwnershipClaimer {
  return {
    claim(domain, done) {
      const abort = new AbortController();
      void claimUntilWon(endpoints, ttlSeconds, domain, abort.signal, log).then(
        (won) => !abort.signal.aborted && done(won, ''),
        (e: Error) => !abort.signal.aborted && done(null, e.message),
      );
      return () => abort.abort(new Error('the takeover claim was cancelled'));
    },
  };
}

async function claimUntilWon(
  endpoints: string[],
  ttlSeconds: number,
  domain: string,
  signal: AbortSignal,
  log: (line: string) => void,
): Promise<Ownership> {
  let said = '';
  const yieldToNewOwner: { firstHolder: OwnerInfo | null } = { firstHolder: null }; // a new owner wins
  const say = (line: string): void => {
    if (line !== said) log(line);
    said = line;
  };
  for (;;) {
    signal.throwIfAborted();
    try {
      say(`taking over ${domain}: waiting for its key in etcd (the primary's lease must end first)`);
      return await claimOwnership({
        endpoints,
        domain,
        role: 'backup',
        ttlSeconds,
        waitFreeMs: WAIT_PER_CALL_MS,
        signal,
        log,
        yieldToNewOwner,
      });
    } catch (e) {
      if (signal.aborted) throw e;
      if (isRemusError(e, ErrorCode.NOT_OWNER) && !(e as RemusError).details.newOwner) continue; // it renews: wait on
      if (!isRemusError(e, ErrorCode.COORDINATION)) throw e;
      say(`taking over ${domain}: etcd unreachable (${(e as Error).message}); retrying`);
      await new Promise((r) => setTimeout(r, RETRY_AFTER_ETCD_ERROR_MS));
    }
  }
}

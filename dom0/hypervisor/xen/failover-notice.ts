// failover-notice: tells a resumed Xen guest that it is now the failed-over copy, so its
// database can recover at once (guest-patches/agent: the guest agent watches this key and
// signals the patched PostgreSQL, which aborts the transactions that were not committing).
// dom0 writes /local/domain/<domid>/data/remusdb/failover = <epoch the backup resumed from>;
// nodes under a guest's data/ inherit its permissions, so the guest may read and watch it.
// A guest without the agent ignores the key: writing it is harmless; failing to write it
// is logged, never fatal (the guest runs either way).
import { spawnSync } from 'node:child_process';
import { assertInt } from '../../assert';

export const FAILOVER_KEY = 'data/remusdb/failover';

export function announceFailover(
  domid: number,
  epoch: number,
  log: (line: string) => void,
  tool = 'xenstore-write',
): boolean {
  assertInt(domid, 1, 0x7fef, 'domid');
  assertInt(epoch, 0, Number.MAX_SAFE_INTEGER, 'epoch');
  const key = `/local/domain/${domid}/${FAILOVER_KEY}`;
  const r = spawnSync(tool, [key, String(epoch)], { encoding: 'utf8', timeout: 10_000 });
  if (r.status === 0) {
    log(`told domain ${domid} it failed over (xenstore ${key} = ${epoch})`);
    return true;
  }
  log(
    `could not write xenstore ${key} (${(r.stderr || r.error?.message || `exit ${r.status}`).trim()}): the guest ` +
      `agent will not start database recovery`,
  );
  return false;
}

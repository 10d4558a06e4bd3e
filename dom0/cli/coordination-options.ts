// coordination-options: --coordination etcd://host:port[,host:port…] and --owner-ttl, shared by
// protect and backup (docs/coordination.md). Without --coordination both keep the two-node
// rule and say so; with it, the primary releases outputs only while it owns the domain's key
// and the backup takes over only once it has claimed that key.
import type { Command } from 'commander';
import { OWNER_LEASE_TTL_S_DEFAULT } from '../limits';
import { parseHostPort } from '../protocol/channel';
import { badValue, intOption, refuseOptionLike, specified } from './options';

export const ETCD_ENDPOINTS_MAX = 9;
const EXAMPLE = 'etcd://10.0.0.5:2379,10.0.0.6:2379';
const EXPECTED = `etcd://host:port[,host:port…] (1 to ${ETCD_ENDPOINTS_MAX} members), like ${EXAMPLE}`;

export interface CoordinationCliOptions {
  coordination?: string[];
  ownerTtl: number;
}

/** etcd://h:p,h:p → the client endpoints http://h:p (ERR_BAD_ARGUMENT naming the flag otherwise). */
export const etcdEndpointsOption = specified(
  (v: string): string[] => {
    refuseOptionLike('--coordination', v, EXPECTED);
    const m = /^etcd:\/\/(.+)$/.exec(v.trim());
    if (!m) throw badValue('--coordination', v, EXPECTED);
    const members = m[1].split(',');
    if (members.length > ETCD_ENDPOINTS_MAX) throw badValue('--coordination', v, EXPECTED, 'too many members');
    return members.map((hp) => {
      if (!/:\d+\]?$/.test(hp.trim()))
        throw badValue('--coordination', v, EXPECTED, `${JSON.stringify(hp)} has no port`);
      let host: string, port: number;
      try {
        ({ host, port } = parseHostPort(hp, 2379));
      } catch {
        throw badValue('--coordination', v, EXPECTED);
      }
      return `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
    });
  },
  { name: '--coordination', kind: 'etcd-endpoints' },
);

export function addCoordinationOptions(cmd: Command): Command {
  return cmd
    .option(
      '--coordination <etcd://host:port,…>',
      'etcd cluster holding who owns the domain: no split brain under partitions (docs/coordination.md)',
      etcdEndpointsOption,
    )
    .option(
      '--owner-ttl <seconds>',
      "the owner lease's TTL: a dead owner's outputs stop, and a takeover may start, after it",
      intOption('--owner-ttl', 2, 60),
      OWNER_LEASE_TTL_S_DEFAULT,
    );
}

// member-renewal: one renewal of an owner lease, sent to every etcd member at once. Why:
// etcd3's pooled client opens a lease keepalive as a stream on a member picked at random, and
// an error on that stream is neither retried on another member nor counted against the
// member, so with one member dead a third of renewals failed — with `--owner-ttl 2` ownership
// lapsed for seconds at a time (found by test 75.6; 71.6 had not shown it by chance). How: one
// single-member client per endpoint; a renewal sends the keepalive to all of them, and the
// first member that renews the lease and then reads the owner key (a linearizable read: it
// has a quorum) answers for the renewal. Renewing one lease through several members is
// harmless (each renewal restarts the same TTL), and the proof is measured from before any
// was sent (lease-validity.ts). A member that says the lease is gone is believed at once.
import { noop } from 'cockatiel';
import { EtcdLeaseInvalidError, Etcd3 } from 'etcd3';

export interface Renewed {
  /** The TTL etcd granted again (s). */
  ttlSeconds: number;
  /** The lease the owner key carries now (null: the key is gone). */
  keyLease: string | null;
}

export class MemberRenewal {
  private readonly clients: Etcd3[];

  constructor(endpoints: string[], dialTimeoutMs: number) {
    const faultHandling = { host: () => noop, global: noop }; // one member each: nothing to retry on
    this.clients = endpoints.map((hosts) => new Etcd3({ hosts, dialTimeout: dialTimeoutMs, faultHandling }));
  }

  /** Renews leaseId and reads key through the first member that can; EtcdLeaseInvalidError if the lease is gone. */
  async renew(leaseId: string, key: string, deadline: Date): Promise<Renewed> {
    try {
      return await Promise.any(this.clients.map((c) => renewThrough(c, leaseId, key, deadline)));
    } catch (e) {
      const errors = (e as AggregateError).errors ?? [e];
      throw errors.find((x) => x instanceof EtcdLeaseInvalidError) ?? errors[0];
    }
  }

  close(): void {
    for (const c of this.clients) c.close();
  }
}

async function renewThrough(client: Etcd3, leaseId: string, key: string, deadline: Date): Promise<Renewed> {
  const stream = await client.leaseClient.leaseKeepAlive({ deadline });
  const res = await new Promise<{ TTL: string }>((resolve, reject) => {
    stream.on('data', resolve);
    stream.on('error', reject);
    stream.write({ ID: leaseId });
  }).finally(() => stream.end());
  if (!(Number(res.TTL) > 0)) throw new EtcdLeaseInvalidError(leaseId);
  const kv = await client.get(key).options({ deadline }).exec();
  return { ttlSeconds: Number(res.TTL), keyLease: kv.kvs[0]?.lease ?? null };
}

// etcd-pool: an agent's membership of the pool in etcd (pool.ts says what a record holds).
//
// Layout: /remusdb/v1/pool/hosts/<hostId> = the host's record (JSON), and
// /remusdb/v1/pool/reserved/<hostId>/<port> = the domain a reprotection chose that slot for;
// both bound to the writer's lease, renewed OWNER_LEASE_RENEWALS_PER_TTL times per TTL through
// every member at once (member-renewal.ts: etcd3's own keepalive stalls on a dead member, and a
// host would flap out of the pool). Membership is advice, not a safety property — ownership
// stays with the owner key. A host
// whose agent dies leaves the pool when that lease ends; its reservations go with it. A lease
// lost while the agent lives (etcd unreachable past its TTL) is replaced, and the record and
// reservations are written again. Reserving is one transaction (create if absent), so two
// reprotections never take the same slot. Every call has a deadline, the lease's grant too: a
// frozen or cut etcd answers nothing, and a call without one would hold the agent for ever
// (a grant that failed is replaced at the next call).
import { Etcd3, EtcdLeaseInvalidError, type Lease } from 'etcd3';
import { ErrorCode, RemusError } from '../errors';
import { POOL_HOSTS_MAX, POOL_SLOTS_MAX } from '../limits';
import { etcdFaultHandling, renewalPeriodMs } from './etcd-ownership';
import { MemberRenewal } from './member-renewal';
import { type PoolHost, parsePoolHost, slotKey } from './pool';

const PREFIX = '/remusdb/v1/pool/';
const HOSTS = `${PREFIX}hosts/`;
const RESERVED = `${PREFIX}reserved/`;
/** Each call gives up after this long (the agent's loop tries again). */
const CALL_DEADLINE_MS = 3000;

export class EtcdPool {
  private readonly client: Etcd3;
  private lease: Lease;
  private closed = false;
  /** Reservations this agent holds (slot key → domain), written again on a new lease. */
  private readonly mine = new Map<string, string>();
  private lastRecord: string | null = null;
  private readonly members: MemberRenewal;
  private readonly renewTimer: NodeJS.Timeout;

  constructor(
    endpoints: string[],
    private readonly ttlSeconds: number,
    private readonly log: (line: string) => void,
  ) {
    if (endpoints.length === 0) throw new RemusError(ErrorCode.BAD_ARGUMENT, 'no etcd endpoint given');
    const renewalMs = renewalPeriodMs(ttlSeconds);
    const faultHandling = etcdFaultHandling(endpoints.length, ttlSeconds);
    this.client = new Etcd3({ hosts: endpoints, dialTimeout: CALL_DEADLINE_MS, faultHandling });
    this.members = new MemberRenewal(endpoints, CALL_DEADLINE_MS);
    this.lease = this.newLease();
    this.renewTimer = setInterval(() => void this.renew(renewalMs), renewalMs);
  }

  /** A lease whose grant gives up at the call deadline (it is then replaced by liveLease). */
  private newLease(): Lease {
    return this.client.lease(this.ttlSeconds, { autoKeepAlive: false, deadline: this.deadline() });
  }

  /** The lease, granted; one whose grant failed (etcd unreachable then) is replaced by a new one. */
  private async liveLease(): Promise<Lease> {
    const lease = this.lease;
    if ((await lease.grant().catch(() => null)) === null && lease === this.lease && !this.closed) this.rejoin();
    return this.lease;
  }

  /** A new lease: the record is written again at the next publish, the reservations at once. */
  private rejoin(): void {
    this.lease = this.newLease();
    this.lastRecord = null;
    for (const [k, d] of this.mine)
      void this.lease
        .put(RESERVED + k)
        .value(d)
        .options({ deadline: this.deadline() })
        .catch(() => {});
  }

  /** Keeps the lease alive; one etcd says is gone is replaced, the record and reservations written again. */
  private async renew(withinMs: number): Promise<void> {
    if (this.closed || this.lastRecord === null) return; // granted with the first record
    const id = await this.lease.grant().catch(() => null);
    if (id === null) return; // publish replaces a lease whose grant failed
    try {
      await this.members.renew(id, HOSTS, new Date(Date.now() + withinMs));
    } catch (e) {
      if (!(e instanceof EtcdLeaseInvalidError) || this.closed) return; // unreachable: the next one tries
      this.log("pool: etcd ended this host's lease; joining again");
      this.rejoin();
    }
  }

  private deadline(): Date {
    return new Date(Date.now() + CALL_DEADLINE_MS);
  }

  /** Writes this host's record if it changed since the last write. ERR_COORDINATION if etcd fails. */
  async publish(host: PoolHost): Promise<void> {
    const text = JSON.stringify(host);
    if (text === this.lastRecord) return;
    await this.call('publish this host', async () => {
      await (await this.liveLease())
        .put(HOSTS + host.hostId)
        .value(text)
        .options({ deadline: this.deadline() });
    });
    this.lastRecord = text;
  }

  /** The pool's hosts (records that do not parse are skipped and said), and the slots reserved. */
  async read(): Promise<{ hosts: PoolHost[]; reserved: Map<string, string> }> {
    const [hostKvs, resKvs] = await this.call('read the pool', () =>
      Promise.all([
        this.client.getAll().prefix(HOSTS).limit(POOL_HOSTS_MAX).options({ deadline: this.deadline() }).strings(),
        this.client
          .getAll()
          .prefix(RESERVED)
          .limit(POOL_HOSTS_MAX * POOL_SLOTS_MAX)
          .options({ deadline: this.deadline() })
          .strings(),
      ]),
    );
    const hosts: PoolHost[] = [];
    for (const [key, text] of Object.entries(hostKvs)) {
      const h = parsePoolHost(text);
      if (h && key === HOSTS + h.hostId) hosts.push(h);
      else this.log(`pool: the record at ${key} is not a host record; skipped`);
    }
    const reserved = new Map(Object.entries(resKvs).map(([k, d]) => [k.slice(RESERVED.length), d]));
    return { hosts, reserved };
  }

  /** Reserves a slot for domain: true if this agent got it (nobody else holds it). */
  async reserve(hostId: string, port: number, domain: string): Promise<boolean> {
    const key = RESERVED + slotKey(hostId, port);
    const txn = await this.call('reserve a slot', async () =>
      this.client
        .if(key, 'Create', '==', 0)
        .then((await this.liveLease()).put(key).value(domain))
        .options({ deadline: this.deadline() })
        .commit(),
    );
    if (txn.succeeded) this.mine.set(slotKey(hostId, port), domain);
    return txn.succeeded;
  }

  async unreserve(hostId: string, port: number): Promise<void> {
    const k = slotKey(hostId, port);
    if (!this.mine.delete(k)) return;
    await this.call('free a slot', () =>
      this.client
        .delete()
        .key(RESERVED + k)
        .options({ deadline: this.deadline() })
        .exec(),
    );
  }

  /** Leaves the pool (the record and reservations go with the lease). Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.renewTimer);
    this.members.close();
    await this.lease.revoke({ deadline: this.deadline() }).catch(() => {}); // else it expires
    this.client.close();
  }

  private async call<T>(what: string, f: () => Promise<T>): Promise<T> {
    try {
      return await f();
    } catch (e) {
      throw new RemusError(
        ErrorCode.COORDINATION,
        `pool: cannot ${what} in etcd: ${(e as Error).message}`,
        {},
        {
          cause: e,
        },
      );
    }
  }
}

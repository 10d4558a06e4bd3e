// etcd-ownership.ts: a domain's owner key in etcd, bound to the owner's lease.
//
// Layout: /remusdb/v1/domains/<domain, URI-encoded>/owner = JSON {host, role, pid, claimedAt}
// with the owner's lease attached. Claiming is one transaction — create the key if it does
// not exist — so two hosts never both succeed; a key whose owner died goes when etcd expires
// its lease, and a waiting claimant (the backup taking over) succeeds only then. While it
// owns, the process renews OWNER_LEASE_RENEWALS_PER_TTL times per TTL with its own loop
// (not the client's automatic keepalive) so that it knows when each renewal was sent: that
// instant, not the answer's, is what proves ownership (lease-validity.ts). Each renewal also
// checks that the key still carries our lease (an operator may have deleted it); it goes to
// every member at once (member-renewal.ts: one dead member must cost no renewal). Any failure
// to renew is retried; ownership then lapses by itself when the proof runs out, and becomes
// 'lost' once etcd says the lease is gone.
//
// The client is etcd3 (Microsoft's maintained gRPC client) with our own fault policies
// (cockatiel): its default breaker blocks a member for 5 s after three failures, which would
// outlast a short lease; ours skip a failed member for half a renewal interval and retry the
// call on another member at once (faultHandling below).
import * as os from 'node:os';
import { ConsecutiveBreaker, circuitBreaker, handleWhen, noop, retry } from 'cockatiel';
import { Etcd3, EtcdLeaseInvalidError, type IOptions, isRecoverableError, type Lease } from 'etcd3';
import { assert } from '../assert';
import { ErrorCode, RemusError } from '../errors';
import { OWNER_LEASE_RENEWALS_PER_TTL, OWNER_LEASE_TTL_S_DEFAULT } from '../limits';
import type { Ownership } from '../ports';
import type { LeaseValidityOptions } from './lease-validity';
import { MemberRenewal } from './member-renewal';
import { ProvenOwnership } from './proven-ownership';

export interface OwnerInfo {
  host: string;
  role: 'primary' | 'backup';
  pid: number;
  claimedAt: string;
}

export interface EtcdOwnershipOptions extends LeaseValidityOptions {
  /** etcd client endpoints, e.g. ["http://10.0.0.1:2379", …]. */
  endpoints: string[];
  domain: string;
  role: OwnerInfo['role'];
  ttlSeconds?: number;
  /** How long a claim waits for the key to become free (ms): 0 fails at once if another owns it. */
  waitFreeMs?: number;
  /**
   * A takeover's claim: the owner it first waits on is kept here (across calls); if the key
   * passes to another owner meanwhile (a restarted primary claimed it after its old lease
   * ended), the claim gives up with ERR_NOT_OWNER and details.newOwner.
   */
  yieldToNewOwner?: { firstHolder: OwnerInfo | null };
  /** Stops a claim that waits (the primary came back): it rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Monotonic clock (ms); performance.now() unless a test injects one. */
  now?: () => number;
  log?: (line: string) => void;
}

const CLAIM_RETRY_MS = 250;
const DIAL_TIMEOUT_MS = 3000;

export function ownerKey(domain: string): string {
  assert(domain.length > 0, 'a domain has a name');
  return `/remusdb/v1/domains/${encodeURIComponent(domain)}/owner`;
}

/** Claims the domain's owner key: resolves once this process owns it, else ERR_NOT_OWNER / ERR_COORDINATION. */
export async function claimOwnership(o: EtcdOwnershipOptions): Promise<Ownership> {
  if (o.endpoints.length === 0) throw new RemusError(ErrorCode.BAD_ARGUMENT, 'no etcd endpoint given');
  const faultHandling = etcdFaultHandling(o.endpoints.length, o.ttlSeconds ?? OWNER_LEASE_TTL_S_DEFAULT);
  const client = new Etcd3({ hosts: o.endpoints, dialTimeout: DIAL_TIMEOUT_MS, faultHandling });
  try {
    return await EtcdOwnership.claim(client, o);
  } catch (e) {
    client.close();
    throw e;
  }
}

/**
 * One member: no retry, no breaker (our loop retries). Several: a member whose call failed is
 * skipped for half a renewal interval, and a failed call is retried at once on another member,
 * so that one dead member costs no renewal. (etcd3's default breaker refuses every call for 5 s
 * after three failures: an etcd back from a freeze would go unused that long.)
 */
export function etcdFaultHandling(endpointCount: number, ttlSeconds: number): IOptions['faultHandling'] {
  if (endpointCount === 1) return { host: () => noop, global: noop };
  return {
    host: () =>
      circuitBreaker(handleWhen(isRecoverableError), {
        halfOpenAfter: renewalPeriodMs(ttlSeconds) / 2,
        breaker: new ConsecutiveBreaker(1),
      }),
    global: retry(handleWhen(isRecoverableError), { maxAttempts: endpointCount - 1 }),
  };
}

class EtcdOwnership extends ProvenOwnership {
  readonly key: string;
  private readonly now: () => number;
  private readonly ttlSeconds: number;
  private timer: NodeJS.Timeout | null = null;
  private failing = false;
  /** Renewals go to every member at once (member-renewal.ts). */
  private readonly members: MemberRenewal;

  private constructor(
    private readonly client: Etcd3,
    private readonly lease: Lease,
    private readonly leaseId: string,
    private readonly o: EtcdOwnershipOptions,
    claimSentAt: number,
  ) {
    super(o);
    this.key = ownerKey(o.domain);
    this.now = o.now ?? (() => performance.now());
    this.ttlSeconds = o.ttlSeconds ?? OWNER_LEASE_TTL_S_DEFAULT;
    this.members = new MemberRenewal(o.endpoints, DIAL_TIMEOUT_MS);
    this.validity.renewed(claimSentAt, this.ttlSeconds);
    this.schedule();
  }

  static async claim(client: Etcd3, o: EtcdOwnershipOptions): Promise<EtcdOwnership> {
    const now = o.now ?? (() => performance.now());
    const ttl = o.ttlSeconds ?? OWNER_LEASE_TTL_S_DEFAULT;
    assert(Number.isInteger(ttl) && ttl >= 2, 'an owner lease of at least 2 s');
    const key = ownerKey(o.domain);
    const deadline = now() + (o.waitFreeMs ?? 0);
    const me: OwnerInfo = { host: os.hostname(), role: o.role, pid: process.pid, claimedAt: new Date().toISOString() };
    for (;;) {
      o.signal?.throwIfAborted();
      const sentAt = now(); // before the grant: the lease's TTL starts after this instant
      // Each call has a deadline: a member without quorum answers late or never, and a lease
      // granted elsewhere could expire meanwhile; past it the call is retried on another member.
      const callDeadline = renewalDeadline(ttl);
      const lease = client.lease(ttl, { autoKeepAlive: false, deadline: callDeadline });
      const result = await attempt(client, lease, key, me, callDeadline).catch((e: RemusError) => {
        if (now() >= deadline) throw e; // etcd unreachable: retried like a held key, while the wait lasts
        return { won: false as const, holder: null, error: e };
      });
      if (result.won && o.signal?.aborted) await lease.revoke({ deadline: renewalDeadline(ttl) }).catch(() => {});
      o.signal?.throwIfAborted();
      if (result.won)
        return new EtcdOwnership(client, lease, result.leaseId, o, await freshProof(lease, sentAt, now, ttl));
      if (!result.error) await lease.revoke({ deadline: renewalDeadline(ttl) }).catch(() => {}); // else attempt did
      checkSameHolder(o, key, result.holder);
      if (now() >= deadline) {
        throw new RemusError(ErrorCode.NOT_OWNER, `${o.domain} is owned by ${describe(result.holder)} (${key})`, {
          key,
          holder: result.holder,
        });
      }
      await new Promise((r) => setTimeout(r, Math.min(CLAIM_RETRY_MS, Math.max(0, deadline - now()))));
    }
  }

  /** Idempotent; bounded by one renewal period: a frozen or cut etcd must not hold a stopping process. */
  async release(): Promise<void> {
    if (!this.end()) return;
    // Unreachable etcd: the revoke gives up at its deadline and the lease expires by itself.
    await this.lease.revoke({ deadline: renewalDeadline(this.ttlSeconds) }).catch(() => {});
    this.client.close();
    this.members.close();
  }

  /** Ends ownership and the renewals; false when it had ended already. */
  private end(): boolean {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    return this.endOwnership();
  }

  private schedule(): void {
    if (this.ended) return;
    this.timer = setTimeout(() => void this.renew(), renewalPeriodMs(this.ttlSeconds));
  }

  /** One renewal: keepalive, then the key must still carry our lease. */
  private async renew(): Promise<void> {
    const sentAt = this.now();
    try {
      const res = await this.members.renew(this.leaseId, this.key, renewalDeadline(this.ttlSeconds));
      if (this.ended) return;
      if (res.keyLease !== this.leaseId) return this.lose('the owner key was deleted or taken');
      this.validity.renewed(sentAt, res.ttlSeconds);
      if (this.failing) this.o.log?.(`etcd: ownership of ${this.o.domain} renewed again`);
      this.failing = false;
      this.emit({ kind: 'renewed' });
    } catch (e) {
      if (this.ended) return;
      if (e instanceof EtcdLeaseInvalidError) return this.lose('etcd expired the owner lease');
      if (!this.failing) this.o.log?.(`etcd: cannot renew ownership of ${this.o.domain}: ${(e as Error).message}`);
      this.failing = true;
    }
    this.schedule();
  }

  private lose(reason: string): void {
    if (!this.end()) return;
    this.client.close();
    this.members.close();
    this.emit({ kind: 'lost', reason });
  }
}

/** A takeover's claim gives up when the key passed to a new owner while it waited (yieldToNewOwner). */
function checkSameHolder(o: EtcdOwnershipOptions, key: string, holder: OwnerInfo | null): void {
  const y = o.yieldToNewOwner;
  if (!y || !holder) return;
  y.firstHolder ??= holder;
  const same = (a: OwnerInfo, b: OwnerInfo): boolean =>
    a.host === b.host && a.pid === b.pid && a.claimedAt === b.claimedAt;
  if (same(y.firstHolder, holder)) return;
  throw new RemusError(
    ErrorCode.NOT_OWNER,
    `${o.domain} has a new owner, ${describe(holder)}, since this claim began: it gives up (${key})`,
    { key, holder, newOwner: true },
  );
}

/**
 * A claim that waited (a grant held up by an unreachable etcd) may have been sent long ago:
 * its proof could be spent already. One keepalive right after winning gives a fresh one.
 */
async function freshProof(lease: Lease, claimSentAt: number, now: () => number, ttl: number): Promise<number> {
  const sentAt = now();
  try {
    const res = await lease.keepaliveOnce({ deadline: renewalDeadline(ttl) });
    return Number(res.TTL) > 0 ? sentAt : claimSentAt;
  } catch {
    return claimSentAt; // the renewal loop tries again
  }
}

type Attempt = { won: true; leaseId: string } | { won: false; holder: OwnerInfo | null; error?: RemusError };

/** How often a lease of ttlSeconds is renewed (ms): OWNER_LEASE_RENEWALS_PER_TTL times per TTL. */
export function renewalPeriodMs(ttlSeconds: number): number {
  return (ttlSeconds * 1000) / OWNER_LEASE_RENEWALS_PER_TTL;
}

/** An etcd call's deadline: one renewal period from now (a later answer proves nothing the next call would not). */
function renewalDeadline(ttlSeconds: number): Date {
  return new Date(Date.now() + renewalPeriodMs(ttlSeconds));
}

/** One transaction: create the key with our lease if nobody holds it; else tell who does. */
async function attempt(client: Etcd3, lease: Lease, key: string, me: OwnerInfo, deadline: Date): Promise<Attempt> {
  try {
    const leaseId = await lease.grant();
    const txn = await client
      .if(key, 'Create', '==', 0)
      .options({ deadline })
      .then(lease.put(key).value(JSON.stringify(me)))
      .else(client.get(key))
      .commit();
    if (txn.succeeded) return { won: true, leaseId };
    const kv = txn.responses[0]?.response_range?.kvs?.[0];
    return { won: false, holder: kv ? parseOwner(kv.value) : null };
  } catch (e) {
    await lease.revoke({ deadline }).catch(() => {});
    throw new RemusError(
      ErrorCode.COORDINATION,
      `etcd: cannot claim ${key}: ${(e as Error).message}`,
      { key },
      { cause: e },
    );
  }
}

function parseOwner(value: Buffer | Uint8Array | null | undefined): OwnerInfo | null {
  try {
    const v = JSON.parse(Buffer.from(value ?? []).toString('utf8')) as OwnerInfo;
    return typeof v.host === 'string' ? v : null;
  } catch {
    return null;
  }
}

function describe(h: OwnerInfo | null): string {
  return h ? `${h.role} on ${h.host} (pid ${h.pid}, since ${h.claimedAt})` : 'another process';
}

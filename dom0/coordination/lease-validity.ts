// lease-validity.ts: until when an etcd lease provably keeps this host the owner, in this
// host's monotonic time only (no wall clock: a clock jump on either host changes nothing).
//
// A renewal sent at instant s (our monotonic clock) that etcd answers with TTL t seconds
// keeps the lease alive on etcd's side at least until s + t seconds of etcd's time: etcd
// starts the TTL when it receives the request, which is after s. Our clock may run faster
// than etcd's by at most OWNER_CLOCK_DRIFT_RATE_MAX, and our own process may stall between
// checking validity and acting on it, so we claim ownership only until
//   s + t·1000·(1 − drift) − margin   (ms, monotonic).
// A leader change in etcd only lengthens leases (a new leader restarts every TTL), never
// shortens them. The backup can acquire the key only after etcd expired the lease, so the two
// never both hold a provable ownership at the same instant.
import { assert } from '../assert';
import { OWNER_CLOCK_DRIFT_RATE_MAX, OWNER_LEASE_SAFETY_MARGIN_MS } from '../limits';

export interface LeaseValidityOptions {
  driftRateMax?: number;
  safetyMarginMs?: number;
}

export class LeaseValidity {
  /** Monotonic ms until which ownership is provable; −Infinity before the first renewal. Never decreases. */
  private untilMs = Number.NEGATIVE_INFINITY;
  private readonly driftRateMax: number;
  private readonly safetyMarginMs: number;

  constructor(o: LeaseValidityOptions = {}) {
    this.driftRateMax = o.driftRateMax ?? OWNER_CLOCK_DRIFT_RATE_MAX;
    this.safetyMarginMs = o.safetyMarginMs ?? OWNER_LEASE_SAFETY_MARGIN_MS;
    assert(this.driftRateMax >= 0 && this.driftRateMax < 1, 'drift rate in [0, 1)');
    assert(this.safetyMarginMs >= 0, 'safety margin ≥ 0');
  }

  /** etcd answered the renewal (or grant) sent at sentAtMs with ttlSeconds left. */
  renewed(sentAtMs: number, ttlSeconds: number): void {
    assert(Number.isFinite(sentAtMs) && ttlSeconds >= 0, 'a renewal has a send instant and a TTL ≥ 0');
    const until = sentAtMs + ttlSeconds * 1000 * (1 - this.driftRateMax) - this.safetyMarginMs;
    this.untilMs = Math.max(this.untilMs, until);
  }

  /** The lease is gone (etcd said so, or we revoked it): nothing is provable from now on. */
  revoked(): void {
    this.untilMs = Number.NEGATIVE_INFINITY;
  }

  validAt(nowMs: number): boolean {
    return nowMs < this.untilMs;
  }

  /** Monotonic ms until which ownership is provable (−Infinity: not at all). */
  get validUntilMs(): number {
    return this.untilMs;
  }
}

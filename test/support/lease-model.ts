// lease-model.ts: etcd's owner key and lease, modelled on the simulator's virtual clock, for
// the seeded simulator and unit tests. One key; a holder and the instant its lease ends in
// the service's time; clients the test can cut off (a partition) or whose answers it can
// delay. ModelOwnership is the Ownership port over it, renewing as the etcd one does
// (OWNER_LEASE_RENEWALS_PER_TTL per TTL, proof from the send instant via LeaseValidity).
import { ProvenOwnership } from '../../dom0/coordination/proven-ownership';
import { OWNER_LEASE_RENEWALS_PER_TTL } from '../../dom0/limits';
import type { Clock } from '../../dom0/ports';

export class LeaseService {
  holder: string | null = null;
  expiresAt = 0;
  /** Clients that cannot reach the service (requests and answers are lost). */
  readonly cut = new Set<string>();
  /** One-way delay of every request and answer (ms). */
  delayMs = 1;

  constructor(readonly clock: Clock) {}

  private free(): boolean {
    return this.holder === null || this.clock.now() >= this.expiresAt;
  }

  /** A request from `who`, answered after the round trip: undefined when either leg is lost. */
  request<T>(who: string, op: () => T, answer: (v: T) => void): void {
    if (this.cut.has(who)) return;
    this.clock.setTimer(this.delayMs, () => {
      const v = op();
      this.clock.setTimer(this.delayMs, () => {
        if (!this.cut.has(who)) answer(v);
      });
    });
  }

  tryClaim(who: string, ttlMs: number): boolean {
    if (!this.free() && this.holder !== who) return false;
    this.holder = who;
    this.expiresAt = this.clock.now() + ttlMs;
    return true;
  }

  /** Keepalive: the TTL left (ms), 0 when the lease is gone. */
  renew(who: string, ttlMs: number): number {
    if (this.holder !== who || this.free()) return 0;
    this.expiresAt = this.clock.now() + ttlMs;
    return ttlMs;
  }

  revoke(who: string): void {
    if (this.holder === who) this.holder = null;
  }
}

export class ModelOwnership extends ProvenOwnership {
  readonly key = '/remusdb/v1/domains/model/owner';
  private timer: unknown = null;

  constructor(
    private readonly svc: LeaseService,
    readonly who: string,
    private readonly ttlMs: number,
    marginMs: number,
  ) {
    super({ driftRateMax: 0.01, safetyMarginMs: marginMs });
  }

  /** Claims (retrying every 50 ms until `until`, also when the request is lost); calls back with success. */
  claim(until: number, done: (won: boolean) => void): void {
    const clock = this.svc.clock;
    const sentAt = clock.now();
    let answered = false;
    const retry = (): void => {
      if (clock.now() >= until) done(false);
      else clock.setTimer(50, () => this.claim(until, done));
    };
    this.svc.request(
      this.who,
      () => this.svc.tryClaim(this.who, this.ttlMs),
      (won) => {
        answered = true;
        if (!won) return retry();
        this.validity.renewed(sentAt, this.ttlMs / 1000);
        this.schedule();
        done(true);
      },
    );
    clock.setTimer(2 * this.svc.delayMs + 1, () => {
      if (!answered) retry();
    });
  }

  async release(): Promise<void> {
    this.stop();
    this.svc.revoke(this.who);
  }
  /** Stops renewing (a dead process, or release); nothing is provable from now on. */
  stop(): void {
    this.endOwnership();
    if (this.timer !== null) this.svc.clock.clearTimer(this.timer);
  }

  private schedule(): void {
    if (this.ended) return;
    this.timer = this.svc.clock.setTimer(this.ttlMs / OWNER_LEASE_RENEWALS_PER_TTL, () => this.renew());
  }

  private renew(): void {
    const sentAt = this.svc.clock.now();
    this.svc.request(
      this.who,
      () => this.svc.renew(this.who, this.ttlMs),
      (left) => {
        if (this.ended) return;
        if (left === 0) {
          this.stop();
          return this.emit({ kind: 'lost', reason: 'the lease expired' });
        }
        this.validity.renewed(sentAt, left / 1000);
        this.emit({ kind: 'renewed' });
      },
    );
    this.schedule();
  }
}

// proven-ownership.ts: what every Ownership shares — validity proven by renewals
// (lease-validity.ts), listeners, and an end after which nothing is provable. The etcd owner
// (etcd-ownership.ts) and the simulator's model of it (test/support/lease-model.ts) differ only
// in how they claim, renew and release.
import type { Ownership, OwnershipEvent } from '../ports';
import { LeaseValidity, type LeaseValidityOptions } from './lease-validity';

export abstract class ProvenOwnership implements Ownership {
  abstract readonly key: string;
  protected readonly validity: LeaseValidity;
  private readonly listeners: ((e: OwnershipEvent) => void)[] = [];
  /** Set once: after release() or 'lost' nothing is renewed again and validAt stays false. */
  protected ended = false;

  constructor(o: LeaseValidityOptions) {
    this.validity = new LeaseValidity(o);
  }

  validAt(nowMs: number): boolean {
    return !this.ended && this.validity.validAt(nowMs);
  }

  get validUntilMs(): number {
    return this.ended ? Number.NEGATIVE_INFINITY : this.validity.validUntilMs;
  }

  onChange(cb: (e: OwnershipEvent) => void): void {
    this.listeners.push(cb);
  }

  abstract release(): Promise<void>;

  protected emit(e: OwnershipEvent): void {
    for (const cb of this.listeners) cb(e);
  }

  /** Ends ownership here for good. Idempotent: true only the first time. */
  protected endOwnership(): boolean {
    if (this.ended) return false;
    this.ended = true;
    this.validity.revoked();
    return true;
  }
}

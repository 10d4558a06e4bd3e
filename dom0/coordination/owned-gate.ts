// owned-gate.ts: outputs leave only while this host provably owns the domain.
//
// Why: with a coordination service the backup may take over once the primary's lease has
// expired in etcd. From that instant on, anything the old primary lets out (released
// checkpoints, or everything while it runs unprotected) could contradict the new copy: split
// brain. So every output of the domain passes through this gate, which forwards the engine's
// wishes (release epoch N, pass through) to the real gate only while Ownership.validAt(now)
// holds, and closes the real gate (hold) at the instant the proof runs out — a timer armed at
// validUntilMs. When a renewal proves ownership again, what was wished meanwhile is done.
// The proof already ends OWNER_LEASE_SAFETY_MARGIN_MS before the lease can (lease-validity.ts),
// which covers this timer firing late.
//
// Invariant: the inner gate releases epoch N, or passes outputs through, only at instants
// when ownership is provable; `done ≤ wanted`, and `done < wanted` only while not provable.
import { assert } from '../assert';
import type { Clock, Ownership, OutputGate } from '../ports';

export class OwnedGate implements OutputGate {
  /** The highest epoch the engine released, and the highest the inner gate was told to release. */
  private releaseWanted = 0;
  private releaseDone = 0;
  /** What the engine asked for, and what the inner gate does now. */
  private passWanted = false;
  private passDone = false;
  private lapseTimer: unknown = null;
  /** The proof's end the lapse timer is armed for (re-armed only when a renewal moves it). */
  private lapseAt = Number.NaN;
  /** Whether ownership was provable at the last sync (what onProvable last heard). */
  private provable = true;
  /** Told when ownership stops or starts being provable (the primary tells its backup). */
  onProvable: ((provable: boolean) => void) | null = null;

  constructor(
    private readonly inner: OutputGate,
    private readonly ownership: Ownership,
    private readonly clock: Clock,
  ) {
    ownership.onChange(() => this.sync());
    if (inner.watchHeld) this.watchHeld = (cb) => inner.watchHeld!(cb);
  }

  barrier(epoch: number): void {
    this.inner.barrier(epoch);
  }

  release(epoch: number): void {
    this.releaseWanted = Math.max(this.releaseWanted, epoch);
    this.sync();
  }

  setPassThrough(on: boolean): void {
    this.passWanted = on;
    this.sync();
  }

  discard(): void {
    this.inner.discard();
  }

  get held(): number {
    return this.inner.held;
  }

  watchHeld?: (onHeld: (() => void) | null) => void;

  /** Outputs wait here because ownership is not provable now (status). */
  get waitingForOwnership(): boolean {
    return this.releaseDone < this.releaseWanted || this.passDone !== this.passWanted;
  }

  /** Brings the inner gate in line with the wishes as far as ownership allows now. */
  private sync(): void {
    const now = this.clock.now();
    const provable = this.ownership.validAt(now);
    if (provable !== this.provable) {
      this.provable = provable;
      this.onProvable?.(provable);
    }
    if (provable) {
      if (this.releaseDone < this.releaseWanted) {
        this.inner.release(this.releaseWanted);
        this.releaseDone = this.releaseWanted;
      }
      if (this.passDone !== this.passWanted) {
        this.inner.setPassThrough(this.passWanted);
        this.passDone = this.passWanted;
      }
      if (this.ownership.validUntilMs !== this.lapseAt || this.lapseTimer === null) this.armLapse(now);
    } else if (this.passDone) {
      this.inner.setPassThrough(false); // hold from this instant
      this.passDone = false;
    }
    assert(this.releaseDone <= this.releaseWanted, 'the inner gate never releases past the engine');
    assert(this.ownership.validAt(now) || !this.passDone, 'nothing passes through without provable ownership');
  }

  private armLapse(now: number): void {
    if (this.lapseTimer !== null) this.clock.clearTimer(this.lapseTimer);
    this.lapseAt = this.ownership.validUntilMs;
    this.lapseTimer = this.clock.setTimer(Math.max(0, this.lapseAt - now), () => {
      this.lapseTimer = null;
      this.sync();
    });
  }

  /** Stops the lapse timer (the process ends). Idempotent. */
  close(): void {
    if (this.lapseTimer !== null) this.clock.clearTimer(this.lapseTimer);
    this.lapseTimer = null;
  }
}

// output-buffer: output commit. Outputs are held in per-epoch queues; a barrier closes the
// current epoch; release(N) delivers every epoch ≤ N, strictly in epoch order; nothing of
// epoch N leaves before release(N). Bounded: past heldMax outputs new ones are dropped and
// counted (a full queue drops, like a NIC ring; TCP retransmits) — never leaked early.
// Every output held is protected: watchHeld's callback hears of each one at once (the
// engine's output-triggered checkpoints, engine/pacing.ts).
import { assert } from '../assert';
import type { OutputGate } from '../ports';
import { Window } from './stats';

export interface OutputStats {
  held: number;
  released: number;
  dropped: number;
  passedThrough: number;
  /** The longest any output waited here, from when it was pushed to its release (ms). */
  holdMsMax: number;
}

export class OutputBuffer<T> implements OutputGate {
  private readonly epochs: Array<{ epoch: number; items: T[]; since: number }> = [];
  private current: T[] = [];
  /** When the oldest output of the current epoch was pushed (its hold starts then). */
  private currentSince = 0;
  private currentEpoch = 1;
  private passThrough = false;
  readonly stats: OutputStats = { held: 0, released: 0, dropped: 0, passedThrough: 0, holdMsMax: 0 };

  /** deliver: held is false for an output that passed straight through (nothing protected it). */
  constructor(
    private readonly deliver: (item: T, epoch: number, held: boolean) => void,
    readonly heldMax = 100_000,
  ) {}

  get held(): number {
    return this.stats.held;
  }

  private onHeld: (() => void) | null = null;
  watchHeld(onHeld: (() => void) | null): void {
    this.onHeld = onHeld;
  }

  /** Per released epoch, how long its oldest output waited (the last 1024 epochs). */
  private readonly holds = new Window();
  /** Told each released epoch's hold, in ms, as it happens (the metrics' histogram). */
  onHoldMs: ((ms: number) => void) | null = null;
  private holdMs(ms: number): void {
    this.holds.add(ms);
    this.stats.holdMsMax = Math.max(this.stats.holdMsMax, ms);
    this.onHoldMs?.(ms);
  }
  get holdMsP99(): number {
    return this.holds.quantile(0.99);
  }

  /** An output the domain produced just now. */
  push(item: T): void {
    if (this.passThrough) {
      this.stats.passedThrough++;
      this.deliver(item, this.currentEpoch, false);
      return;
    }
    if (this.stats.held >= this.heldMax) {
      this.stats.dropped++;
      return;
    }
    if (this.current.length === 0) this.currentSince = performance.now();
    this.current.push(item);
    this.stats.held++;
    this.onHeld?.();
  }

  barrier(epoch: number): void {
    assert(epoch === this.currentEpoch, `barrier ${epoch} out of order (expected ${this.currentEpoch})`);
    this.epochs.push({ epoch, items: this.current, since: this.currentSince });
    this.current = [];
    this.currentEpoch = epoch + 1;
  }

  release(epoch: number): void {
    while (this.epochs.length && this.epochs[0].epoch <= epoch) {
      const e = this.epochs.shift()!;
      if (e.items.length) this.holdMs(performance.now() - e.since);
      for (const item of e.items) this.deliver(item, e.epoch, true);
      this.stats.held -= e.items.length;
      this.stats.released += e.items.length;
    }
  }

  setPassThrough(on: boolean): void {
    this.passThrough = on;
    if (!on) return;
    this.release(Number.MAX_SAFE_INTEGER);
    for (const item of this.current) this.deliver(item, this.currentEpoch, true);
    this.stats.released += this.current.length;
    this.stats.held -= this.current.length;
    this.current = [];
  }

  discard(): void {
    let n = this.current.length;
    for (const e of this.epochs) n += e.items.length;
    this.epochs.length = 0;
    this.current = [];
    this.stats.held = 0;
    this.stats.dropped += n;
  }
}

// 72 owned gate: a domain's outputs leave only while its host provably owns it (etcd lease,
// modelled on virtual time) — through partitions, delays, renewals and a successor's claim,
// no output leaves the old owner after the instant a successor holds the key.
import { strict as assert } from 'node:assert';
import { OwnedGate } from '../dom0/coordination/owned-gate';
import { OutputBuffer } from '../dom0/engine/output-buffer';
import { LeaseService, ModelOwnership } from './support/lease-model';
import { VirtualClock } from './support/sim-world';

const TTL_MS = 2000;
const MARGIN_MS = 200;

/** A primary's gate over an OutputBuffer; every output that leaves is stamped with the instant. */
function world(marginMs = MARGIN_MS): {
  clock: VirtualClock;
  svc: LeaseService;
  own: ModelOwnership;
  gate: OwnedGate;
  buf: OutputBuffer<number>;
  left: { value: number; at: number }[];
} {
  const clock = new VirtualClock();
  const svc = new LeaseService(clock);
  const own = new ModelOwnership(svc, 'primary', TTL_MS, marginMs);
  const left: { value: number; at: number }[] = [];
  const buf = new OutputBuffer<number>((value) => left.push({ value, at: clock.now() }));
  let claimed = false;
  own.claim(1000, (won) => (claimed = won));
  clock.runUntil(100);
  assert.ok(claimed, 'the primary owns the domain');
  return { clock, svc, own, gate: new OwnedGate(buf, own, clock), buf, left };
}

describe('72 owned gate', () => {
  it('72.1 while owned, release and pass-through act at once', () => {
    const { clock, gate, buf, left } = world();
    buf.push(1);
    gate.barrier(1);
    gate.release(1);
    assert.deepEqual(
      left.map((l) => l.value),
      [1],
    );
    gate.setPassThrough(true);
    buf.push(2);
    assert.equal(left.length, 2);
    assert.equal(gate.waitingForOwnership, false);
    clock.runUntil(10_000); // renewals keep it owned
    buf.push(3);
    assert.equal(left.length, 3);
  });

  it('72.2 cut from etcd: outputs stop when the proof runs out, before the lease ends; then a successor', () => {
    const { clock, svc, own, gate, buf, left } = world();
    gate.setPassThrough(true); // unprotected, as after losing the backup
    let lastRenewalSent = 0;
    own.onChange(() => (lastRenewalSent = clock.now()));
    clock.runUntil(1000);
    svc.cut.add('primary');
    const cutAt = clock.now();
    const pushes = setInterval(clock, 10, () => buf.push(clock.now()));
    const successor = new ModelOwnership(svc, 'backup', TTL_MS, MARGIN_MS);
    let tookOverAt = Number.POSITIVE_INFINITY;
    successor.claim(60_000, (won) => {
      if (won) tookOverAt = clock.now();
    });
    clock.runUntil(cutAt + 10_000);
    pushes.stop();
    assert.ok(Number.isFinite(tookOverAt), 'the successor claimed once the lease expired');
    const lastOut = Math.max(...left.map((l) => l.at));
    assert.ok(lastOut < tookOverAt, `an output left at ${lastOut}, the successor owned from ${tookOverAt}`);
    assert.ok(lastOut <= lastRenewalSent + TTL_MS, 'nothing left after the last proof');
    assert.ok(buf.held > 0 && gate.waitingForOwnership, 'what came after is held');
  });

  it('72.3 past the proof (etcd unreachable): a release is held, not done', () => {
    const { clock, svc, gate, buf, left } = world();
    svc.cut.add('primary');
    clock.runUntil(3000); // the proof ran out; the lease (renewed until ~1000 + TTL) too
    buf.push(7);
    gate.barrier(1);
    gate.release(1);
    assert.equal(left.length, 0, 'held: ownership is not provable');
    assert.equal(gate.waitingForOwnership, true);
  });

  it('72.4 short cut healed before the lease ends: renewed, the held release goes out', () => {
    // A wide margin (1000 of a 2000 ms TTL): the proof ends at 980 ms, the lease at 2001.
    const { clock, svc, gate, buf, left } = world(1000);
    buf.push(5);
    gate.barrier(1);
    svc.cut.add('primary'); // at 100: the renewals sent at 500 and 1000 are lost
    clock.runUntil(1100); // past the proof, not past the lease
    gate.release(1);
    assert.equal(left.length, 0);
    svc.cut.delete('primary');
    clock.runUntil(1600); // the renewal sent at 1500 reaches etcd before the lease ends
    assert.deepEqual(
      left.map((l) => l.value),
      [5],
    );
    assert.equal(gate.waitingForOwnership, false);
  });
});

/** A repeating virtual-time timer. */
function setInterval(clock: VirtualClock, ms: number, fn: () => void): { stop(): void } {
  let stopped = false;
  const tick = (): void => {
    if (stopped) return;
    fn();
    clock.setTimer(ms, tick);
  };
  clock.setTimer(ms, tick);
  return { stop: () => (stopped = true) };
}

// 60 packet ledger: the verdict rules of the nfqueue buffer, against a model of the kernel
// queue (ids in arrival order; verdictUpTo takes every queued id ≤ id, in order; a verdict
// for an unknown id is a kernel error). Checks epoch order, the per-flow order rule of
// commit protection, bounds, pass-through, discard, and a seeded random run.
import { strict as assert } from 'node:assert';
import { type Classifier, flowKey, idAfter, PacketLedger, type VerdictSink } from '../dom0/net/packet-ledger';
import { EpochHolds, GateSet } from '../dom0/net/domain-net';
import type { OutputGate } from '../dom0/ports';
import { Prng } from '../dom0/util/prng';

const COPY = 64;

class KernelModel implements VerdictSink {
  queue: number[] = [];
  sent: number[] = [];
  dropped: number[] = [];
  errors = 0;
  nextId = 1;
  pending: Uint8Array[] = [];
  ledger!: PacketLedger;
  verdictUpTo(id: number, accept: boolean): void {
    while (this.queue.length && !idAfter(this.queue[0], id))
      (accept ? this.sent : this.dropped).push(this.queue.shift()!);
  }
  verdictEach(ids: Uint32Array, count: number, accept: boolean): void {
    for (let i = 0; i < count; i++) {
      const at = this.queue.indexOf(ids[i]);
      if (at < 0) {
        this.errors++;
        continue;
      }
      this.queue.splice(at, 1);
      (accept ? this.sent : this.dropped).push(ids[i]);
    }
  }
  drain(): void {
    this.deliver();
  }
  /** The guest sends a packet; it waits in the kernel queue until read. */
  send(header: Uint8Array): number {
    const id = this.nextId++;
    this.queue.push(id);
    this.pending.push(header);
    return id;
  }
  /** The reader hands everything pending to the ledger in one batch. */
  deliver(): void {
    const n = this.pending.length;
    if (!n) return;
    const first = this.nextId - n;
    const headers = new Uint8Array(n * COPY);
    this.pending.forEach((h, i) => headers.set(h.subarray(0, COPY), i * COPY));
    this.pending = [];
    this.ledger.ingest({
      count: n,
      ids: Uint32Array.from({ length: n }, (_, i) => first + i),
      ipLens: new Uint32Array(n).fill(100),
      protos: new Uint16Array(n).fill(0x0800),
      headers,
      copyBytes: COPY,
    });
  }
}

/** An IPv4/TCP header from flow number f with a mark byte (TOS) that the classifier reads. */
function pkt(flow: number, protect: boolean, fragment = false): Uint8Array {
  const h = new Uint8Array(COPY);
  h[0] = 0x45;
  h[1] = protect ? 0xb8 : 0;
  h[9] = 6;
  if (fragment) h[7] = 10;
  h.set([127, 0, 0, 2], 12);
  h.set([127, 0, 0, 3], 16);
  h[20] = 0x30;
  h[21] = 0x39;
  h[22] = flow >> 8;
  h[23] = flow & 255;
  return h;
}
const byTos: Classifier = (h) => (h[1] === 0xb8 ? 'hold' : 'release');

function setup(classify: Classifier | null, heldMax = 1000): KernelModel {
  const k = new KernelModel();
  k.ledger = new PacketLedger(k, { heldMax, heldBytesMax: 1 << 30 }, classify, 4096);
  return k;
}

describe('60 packet ledger (verdict rules, kernel model)', () => {
  it('60.10 holds every packet until its epoch is released; release(N) releases all ≤ N in order', () => {
    const k = setup(null);
    const a = k.send(pkt(1, false));
    const b = k.send(pkt(2, false));
    k.ledger.barrier(1); // drains a, b into epoch 1
    const c = k.send(pkt(1, false));
    k.deliver();
    k.ledger.barrier(2);
    const d = k.send(pkt(1, false));
    k.deliver();
    assert.deepEqual(k.sent, []);
    assert.equal(k.ledger.held, 4);
    k.ledger.release(1);
    assert.deepEqual(k.sent, [a, b]);
    k.ledger.release(5);
    assert.deepEqual(k.sent, [a, b, c], 'd belongs to the open epoch 3');
    assert.equal(k.ledger.held, 1);
    k.ledger.barrier(3);
    k.ledger.release(3);
    assert.deepEqual(k.sent, [a, b, c, d]);
    assert.equal(k.errors, 0);
    assert.throws(() => k.ledger.barrier(7), /out of order/);
  });

  it('60.11 an unprotected packet leaves at once unless its flow has a held packet', () => {
    const k = setup(byTos);
    const a = k.send(pkt(1, true)); // protected, held
    const b = k.send(pkt(1, false)); // same flow: must wait behind a
    const c = k.send(pkt(2, false)); // other flow: leaves at once
    k.deliver();
    assert.deepEqual(k.sent, [c]);
    assert.equal(k.ledger.stats.waitedBehindFlow, 1);
    k.ledger.barrier(1);
    const d = k.send(pkt(3, true));
    k.deliver(); // epoch 2, held
    const e = k.send(pkt(1, false));
    k.deliver(); // flow 1 still held in epoch 1: rides epoch 1
    k.ledger.release(1);
    assert.deepEqual(k.sent, [c, a, b, e], 'flow 1 in order; d (epoch 2) stays');
    const f = k.send(pkt(1, false));
    k.deliver(); // flow 1 has nothing held now
    assert.deepEqual(k.sent, [c, a, b, e, f]);
    k.ledger.barrier(2);
    k.ledger.release(2);
    assert.deepEqual(k.sent, [c, a, b, e, f, d]);
    assert.equal(k.errors, 0, 'no verdict for an id the kernel no longer holds');
  });

  it("60.12 a waiting packet with an id below its epoch's last held id goes with the batch", () => {
    const k = setup(byTos);
    const a = k.send(pkt(1, true));
    const b = k.send(pkt(1, false));
    const c = k.send(pkt(2, true));
    k.ledger.barrier(1);
    k.ledger.release(1);
    assert.deepEqual(k.sent, [a, b, c]);
    assert.equal(k.errors, 0);
  });

  it('60.13 bounds: past heldMax new packets are dropped at once and counted, never released', () => {
    const k = setup(null, 3);
    const ids = [1, 2, 3, 4, 5].map((f) => k.send(pkt(f, true)));
    k.deliver();
    assert.deepEqual(k.dropped, ids.slice(3));
    assert.equal(k.ledger.stats.droppedOverLimit, 2);
    k.ledger.barrier(1);
    k.ledger.release(1);
    assert.deepEqual(k.sent, ids.slice(0, 3));
  });

  it('60.14 pass-through releases everything in arrival order; discard drops everything held', () => {
    const k = setup(byTos);
    const a = k.send(pkt(1, true));
    const b = k.send(pkt(1, false));
    k.ledger.barrier(1);
    const c = k.send(pkt(2, true));
    k.deliver();
    k.ledger.setPassThrough(true);
    assert.deepEqual(k.sent, [a, b, c]);
    const d = k.send(pkt(2, true));
    k.deliver();
    assert.deepEqual(k.sent, [a, b, c, d]);
    k.ledger.setPassThrough(false);
    const e = k.send(pkt(1, true));
    k.ledger.barrier(2);
    const f = k.send(pkt(1, false));
    k.deliver();
    k.ledger.discard();
    assert.deepEqual(k.dropped, [e, f]);
    assert.equal(k.ledger.held, 0);
    assert.equal(k.errors, 0);
  });

  it('60.15 ids wrap at 2^32; flow keys use ports only for non-fragments', () => {
    assert.ok(idAfter(1, 0xffffffff));
    assert.ok(!idAfter(0xffffffff, 1));
    assert.notEqual(flowKey(pkt(1, false)), flowKey(pkt(2, false)));
    assert.equal(flowKey(pkt(1, false, true)), flowKey(pkt(2, false, true)));
    assert.equal(flowKey(new Uint8Array(COPY)), null);
  });

  it('60.16 random run: protected packets never leave before their epoch, every flow stays in order', () => {
    const rnd = new Prng(60);
    const k = setup(byTos, 100_000);
    const epochOf = new Map<number, number>();
    const flowOf = new Map<number, number>();
    const protectedIds = new Set<number>();
    let epoch = 1,
      released = 0;
    for (let step = 0; step < 20_000; step++) {
      const r = rnd.below(100);
      if (r < 80) {
        const flow = rnd.below(8),
          prot = rnd.below(4) === 0;
        const id = k.send(pkt(flow, prot));
        epochOf.set(id, epoch);
        flowOf.set(id, flow);
        if (prot) protectedIds.add(id);
      } else if (r < 90) {
        k.deliver();
      } else if (r < 96) {
        k.ledger.barrier(epoch++);
      } else if (epoch - 1 > released) {
        const upTo = released + 1 + rnd.below(epoch - 1 - released);
        const before = k.sent.length;
        k.ledger.release(upTo);
        released = upTo;
        for (const id of k.sent.slice(before)) {
          if (protectedIds.has(id)) assert.ok(epochOf.get(id)! <= released, `id ${id} left early`);
        }
      }
    }
    k.ledger.barrier(epoch);
    k.ledger.release(epoch);
    assert.equal(k.errors, 0);
    assert.equal(k.sent.length, k.nextId - 1, 'everything left in the end');
    assert.ok(
      k.ledger.stats.waitedBehindFlow > 100 && k.ledger.stats.releasedAtOnce > 100,
      JSON.stringify(k.ledger.stats),
    );
    const last = new Map<number, number>();
    for (const id of k.sent) {
      const f = flowOf.get(id)!;
      assert.ok((last.get(f) ?? 0) < id, `flow ${f} reordered at ${id}`);
      last.set(f, id);
    }
  });
  it('60.17 per released epoch, how long its first held packet waited (hold metric); none for an empty one', () => {
    let now = 1000;
    const k = new KernelModel();
    k.ledger = new PacketLedger(k, { heldMax: 100, heldBytesMax: 1 << 20 }, byTos, 64, null, () => now);
    const told: Array<[number, number]> = [];
    k.ledger.onHoldMs = (ms, epoch) => told.push([epoch, ms]);
    k.send(pkt(1, true));
    k.deliver(); // held at 1000
    now = 1010;
    k.send(pkt(2, true));
    k.deliver(); // the same epoch: its first packet still decides
    k.ledger.barrier(1);
    now = 1030;
    k.ledger.barrier(2); // epoch 2 held nothing
    k.send(pkt(3, false)); // leaves at once: never held
    k.deliver();
    k.ledger.barrier(3);
    now = 1075;
    k.ledger.release(3);
    assert.deepEqual(told, [[1, 75]], 'only epoch 1 held packets, its first for 75 ms');
    assert.equal(k.ledger.stats.holdMsMax, 75);
    k.send(pkt(1, false)); // rides nothing: epoch 1's flow is released
    k.send(pkt(4, true));
    k.deliver();
    k.ledger.barrier(4);
    now = 1100;
    k.ledger.release(4);
    assert.deepEqual(told[1], [4, 25]);
  });

  it('60.18 several interfaces: the domain hold of an epoch is the longest, told in order after all released', () => {
    const order: string[] = [];
    const holds = new EpochHolds();
    const gate = (name: string, hold: Array<[number, number]>): OutputGate => ({
      held: 0,
      barrier() {},
      release: () => {
        order.push(`release ${name}`);
        for (const [epoch, ms] of hold) holds.add(epoch, ms);
      },
      setPassThrough() {},
      discard() {},
    });
    const set = new GateSet(
      [
        gate('vif1.0', [
          [3, 10],
          [2, 40],
        ]),
        gate('vif1.1', [[3, 20]]),
      ],
      () => holds.tell((ms) => order.push(`told ${ms}`)),
    );
    set.release(3);
    assert.deepEqual(order, ['release vif1.0', 'release vif1.1', 'told 40', 'told 20']);
    holds.tell(() => assert.fail('told twice'));
  });
});

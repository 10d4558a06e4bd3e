// 62b commit protection classified in the kernel: the tc BPF program
// (native-xc/src/bpf/classify_tc.bpf.c) run with BPF_PROG_TEST_RUN on Ethernet frames, against
// the userspace classifiers packet by packet. pgwire mode: seeded PostgreSQL sessions cover
// segmentation (1 byte to 3400), pipelining, retransmissions (exact, coalesced, with new
// bytes), gaps, TLS, FIN/RST and after-end ACKs, IPv4 and IPv6, other ports and protocols;
// the program must hold exactly what pgwire-classifier.ts holds, and the packets it lets go
// must reach the failover reset tracker (its exposure ring) as the queue would have told it.
// dscp mode: what classify-dscp.ts holds. Then the follow mark: a packet behind a queued one
// of its flow is marked until the ledger's release.
// Needs root and the addon's bpf part (libbpf-dev, clang); skipped without them.
import { strict as assert } from 'node:assert';
import { dscpClassifier, ETH_P_IP, ETH_P_IPV6, PROTECTED_DSCP } from '../dom0/net/classify-dscp';
import { ExposureTracker } from '../dom0/net/failover-reset';
import { PgwireClassifier } from '../dom0/net/pgwire-classifier';
import { coalesceExposures, KernelClassifier, PGWIRE_KERNEL_MARKS } from '../dom0/net/kernel-classifier';
import { PGWIRE_KERNEL_HELD_RANGES, PGWIRE_KERNEL_PORTS_MAX } from '../dom0/limits';
import { loadAddon, requirePart } from '../dom0/native';
import { Prng } from '../dom0/util/prng';
import {
  asCopy,
  commandComplete,
  concat,
  dataRow,
  errorResponse,
  msg,
  notice,
  rfq,
  ServerStream,
  startupReply,
  tcpPacket,
  TCP_ACK,
  TCP_FIN,
  TCP_PSH,
  TCP_RST,
  udpPacket,
} from './support/pg-packets';

/**
 * BPF_PROG_TEST_RUN takes a frame of at most a page less the skb's head and tail room
 * (~3.7 KiB): the segments here stay under that. GSO-sized segments (64 KiB) run on real
 * traffic (test 65's cp_pgwire_kernel).
 */
const SEGMENT_MAX = 3400;
const SEEDS = Number(process.env.PGWIRE_KERNEL_SEEDS ?? 100);

function frameOf(ip: Uint8Array, etherType = ip[0] >> 4 === 6 ? ETH_P_IPV6 : ETH_P_IP): Uint8Array {
  const f = new Uint8Array(14 + ip.length);
  f.set([0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1], 0);
  f[12] = etherType >> 8;
  f[13] = etherType & 0xff;
  f.set(ip, 14);
  return f;
}

/** Sends one packet to both classifiers; returns the kernel's verdict after checking they agree. */
type Both = (ip: Uint8Array, what: string, etherType?: number) => 'hold' | 'follow' | 'pass';

function pair(k: KernelClassifier, u: PgwireClassifier): Both {
  return (ip, what, etherType) => {
    const proto = etherType ?? (ip[0] >> 4 === 6 ? ETH_P_IPV6 : ETH_P_IP);
    const user = u.classify(asCopy(ip, 65535), proto);
    const kern = k.testRun(frameOf(ip, proto)).verdict;
    assert.equal(kern === 'hold' ? 'hold' : 'release', user, `${what}: kernel ${kern}, userspace ${user}`);
    return kern;
  };
}

/** A random cycle of server messages, as pgbench and psql produce them. */
function cycle(rng: Prng): Uint8Array {
  switch (rng.below(9)) {
    case 0:
      return concat(commandComplete('BEGIN'), rfq('T'));
    case 1:
      return concat(msg('T', new Uint8Array(20)), dataRow(rng.below(3000)), commandComplete('SELECT 1'), rfq('T'));
    case 2:
      return concat(commandComplete('COMMIT'), rfq('I'));
    case 3:
      return concat(commandComplete('INSERT 0 1'), rfq('I'));
    case 4:
      return concat(notice(), errorResponse(), rfq('E'));
    case 5:
      return concat(msg('1'), msg('2'), commandComplete('UPDATE 1'), rfq('T'));
    case 6:
      return concat(commandComplete('UPDATE 1'), rfq('T'), commandComplete('COMMIT'), rfq('T')); // AND CHAIN
    case 7:
      return concat(msg('I'), rfq('I'));
    default:
      return concat(...Array.from({ length: 1 + rng.below(40) }, () => dataRow(rng.below(60))), rfq('T'));
  }
}

interface Session {
  s: ServerStream;
  stream: Uint8Array;
  at: number;
  done: boolean;
}

function newSession(rng: Prng, n: number, both: Both): Session {
  const v6 = rng.chance(0.3);
  const s = new ServerStream(rng.u32(), { v6, dport: 40000 + n, ...(v6 ? {} : { dst: `10.0.0.${3 + n}` }) });
  both(s.synAck(), `session ${n} SYN-ACK`);
  const parts = [startupReply(), ...Array.from({ length: 40 + rng.below(80) }, () => cycle(rng))];
  if (rng.chance(0.05)) parts.unshift(new Uint8Array([0x4e])); // SSLRequest refused
  if (rng.chance(0.03)) parts.unshift(new Uint8Array([0x53])); // TLS accepted: opaque
  return { s, stream: concat(...parts), at: 0, done: false };
}

/** One step of a session: a segment, a retransmission, a pure ACK, a gap, or its end. */
function step(rng: Prng, x: Session, both: Both, tag: string): void {
  const r = rng.below(100);
  if (r < 8 && x.s.sent.length > 0) {
    const i = rng.below(x.s.sent.length);
    let j = Math.min(x.s.sent.length - 1, i + rng.below(3));
    while (j > i && x.s.sent.slice(i, j + 1).reduce((n, p) => n + p.payload.length, 0) > SEGMENT_MAX) j--;
    both(j > i ? x.s.retransmitRange(i, j) : x.s.retransmit(i), `${tag} retransmit ${i}..${j}`);
    return;
  }
  if (r < 14) {
    both(x.s.pureAck(), `${tag} pure ACK`);
    return;
  }
  if (r < 15 && x.at < x.stream.length) {
    const skip = 1 + rng.below(20); // a gap: the flow becomes opaque in both
    x.s.next = (x.s.next + skip) >>> 0;
    x.at = Math.min(x.stream.length, x.at + skip);
  }
  if (x.at >= x.stream.length) {
    const flags = rng.chance(0.5) ? TCP_FIN | TCP_ACK : TCP_RST;
    both(tcpPacket({ ...x.s.opts, seq: x.s.next, ack: 1, flags }), `${tag} end`);
    both(x.s.pureAck(), `${tag} ACK after the end`);
    x.done = true;
    return;
  }
  const size = rng.chance(0.2) ? 1 + rng.below(8) : rng.chance(0.1) ? 1 + rng.below(SEGMENT_MAX) : 1 + rng.below(1448);
  const to = Math.min(x.stream.length, x.at + size);
  both(x.s.segment(x.stream.subarray(x.at, to), TCP_ACK | TCP_PSH), `${tag} bytes ${x.at}..${to}`);
  x.at = to;
}

function kernelOrSkip(ctx: Mocha.Context): KernelClassifier {
  const parts = loadAddon().parts;
  if (!parts.bpf) ctx.skip(); // the addon was built without libbpf-dev / clang
  if (process.getuid?.() !== 0) ctx.skip(); // BPF_PROG_LOAD needs CAP_BPF
  return KernelClassifier.load({ mode: 'pgwire', epoch: 1 });
}

describe('62b commit protection classified in the kernel (BPF_PROG_TEST_RUN)', () => {
  it('holds exactly what the userspace classifier holds: seeded sessions of 1–3 interleaved flows', function () {
    this.timeout(120_000);
    const k = kernelOrSkip(this);
    try {
      let packets = 0,
        held = 0;
      for (let seed = 1; seed <= SEEDS; seed++) {
        const rng = new Prng(seed);
        const u = new PgwireClassifier({ heldRangesMax: PGWIRE_KERNEL_HELD_RANGES });
        const counted: Both = (ip, what, et) => {
          packets++;
          const v = pair(k, u)(ip, `seed ${seed} ${what}`, et);
          if (v === 'hold') held++;
          return v;
        };
        const sessions = Array.from({ length: 1 + rng.below(3) }, (_, n) => newSession(rng, seed * 4 + n, counted));
        for (let guard = 0; guard < 20_000 && sessions.some((x) => !x.done); guard++) {
          const live = sessions.filter((x) => !x.done);
          const x = live[rng.below(live.length)];
          step(rng, x, counted, `flow ${sessions.indexOf(x)}`);
          if (rng.chance(0.01)) counted(udpPacket(0), 'UDP');
          if (rng.chance(0.01)) counted(tcpPacket({ seq: 1, sport: 22 }), 'TCP from port 22');
          if (rng.chance(0.01)) counted(new Uint8Array(28), 'ARP', 0x0806);
          if (rng.chance(0.005)) {
            const stranger = { sport: 5432, dport: 50000 + rng.below(1000), seq: rng.u32(), ack: 1 };
            counted(tcpPacket({ ...stranger, flags: TCP_RST }), 'RST of a flow never seen');
            counted(tcpPacket({ ...stranger, flags: TCP_ACK }), 'its last ACK');
          }
        }
      }
      const st = k.stats();
      assert.ok(packets > 5000 && held > 500, `${packets} packets, ${held} held`);
      assert.equal(st.packets, packets, 'the program counted every packet');
      assert.ok(st.commits > 0 && st.retransmissions > 0 && st.opaqueGap > 0 && st.afterEnd > 0, JSON.stringify(st));
    } finally {
      k.close();
    }
  });

  it('a packet behind a queued one of its flow is marked follow until the ledger releases that epoch', function () {
    const k = kernelOrSkip(this);
    try {
      const s = new ServerStream(7000, { dport: 41000 });
      const send = (ip: Uint8Array): string => k.testRun(frameOf(ip)).verdict;
      assert.equal(send(s.synAck()), 'pass');
      assert.equal(send(s.segment(startupReply())), 'pass');
      assert.equal(send(s.segment(concat(commandComplete('COMMIT'), rfq('I')))), 'hold');
      assert.equal(send(s.segment(concat(commandComplete('BEGIN'), rfq('T')))), 'follow', 'epoch 1 still queued');
      assert.equal(send(s.pureAck()), 'follow');
      k.observer.barrier(1); // epoch 1 closed: packets now belong to 2
      assert.equal(send(s.pureAck()), 'follow', 'queued in epoch 1, not released yet');
      k.observer.release(1); // the follow packet above was queued in epoch 2
      assert.equal(send(s.pureAck()), 'follow');
      k.observer.barrier(2);
      k.observer.release(2);
      assert.equal(send(s.pureAck()), 'pass', 'nothing of the flow queued any more');
      const other = new ServerStream(9000, { dport: 41001 });
      assert.equal(send(other.synAck()), 'pass', 'other flows never waited');
      const before = k.testRun(frameOf(s.pureAck()), 0x12345678).mark;
      assert.equal(before, 0x12345678, 'a packet that passes keeps its mark');
      const kept = k.testRun(frameOf(s.segment(concat(commandComplete('COMMIT'), rfq('I')))), 0x12000078).mark;
      assert.equal(kept, (0x12000078 & ~PGWIRE_KERNEL_MARKS.mask) | PGWIRE_KERNEL_MARKS.hold, 'only its bits change');
    } finally {
      k.close();
    }
  });

  it('what left in the kernel reaches the reset tracker through the ring as the queue would tell it', function () {
    this.timeout(60_000);
    const k = kernelOrSkip(this);
    try {
      for (let seed = 1; seed <= 10; seed++) {
        const rng = new Prng(1000 + seed);
        const viaKernel = new ExposureTracker(),
          viaQueue = new ExposureTracker();
        k.exposureSink = viaKernel;
        k.observer.barrier(0); // each seed counts its epochs from 1
        const u = new PgwireClassifier({ heldRangesMax: PGWIRE_KERNEL_HELD_RANGES });
        let epoch = 1;
        const send: Both = (ip, what, etherType) => {
          const proto = etherType ?? (ip[0] >> 4 === 6 ? ETH_P_IPV6 : ETH_P_IP);
          const user = u.classify(asCopy(ip, 65535), proto);
          if (proto !== 0x0806) viaQueue.packet(ip, user, user === 'hold' ? 'held' : 'accept', epoch);
          const kern = k.testRun(frameOf(ip, proto)).verdict;
          // What the queue saw (held, or released behind its flow), the ledger tells the tracker.
          if (kern !== 'pass') viaKernel.packet(ip, kern === 'hold' ? 'hold' : 'release', 'held', epoch);
          assert.equal(kern === 'hold' ? 'hold' : 'release', user, `seed ${seed} ${what}`);
          return kern;
        };
        const sessions = Array.from({ length: 1 + rng.below(3) }, (_, n) => newSession(rng, 1000 + seed * 4 + n, send));
        for (let guard = 0; guard < 5000 && sessions.some((x) => !x.done); guard++) {
          const live = sessions.filter((x) => !x.done);
          step(rng, live[rng.below(live.length)], send, `seed ${seed}`);
          if (rng.chance(0.05)) {
            k.observer.barrier(epoch); // the ring is read at the end: late records still land in their epochs
            viaKernel.barrier();
            epoch++;
          }
        }
        k.drainExposures();
        const flows = (t: ExposureTracker): unknown[] =>
          t
            .exportChanged(4096, true)
            .flows.sort((a, b) => (a.g + a.gp + a.c + a.cp < b.g + b.gp + b.c + b.cp ? -1 : 1));
        assert.ok(viaQueue.flowCount > 0);
        assert.deepEqual(flows(viaKernel), flows(viaQueue), `seed ${seed}`);
        for (const committed of [1, Math.max(1, epoch >> 1), epoch]) {
          const keys = (t: ExposureTracker): string[] =>
            t.inconsistent(committed).map((r) => `${r.clientPort}/${r.why}`);
          assert.deepEqual(keys(viaKernel).sort(), keys(viaQueue).sort(), `seed ${seed} committed ${committed}`);
        }
      }
      assert.equal(k.stats().exposureLost, 0);
    } finally {
      k.close();
    }
  });

  it('dscp mode holds what the userspace dscp classifier holds, keeps flow order and records what leaves', function () {
    if (!loadAddon().parts.bpf || process.getuid?.() !== 0) this.skip();
    const k = KernelClassifier.load({ mode: 'dscp', dscp: PROTECTED_DSCP, epoch: 1 });
    const user = dscpClassifier(PROTECTED_DSCP);
    const seen: string[] = [];
    k.exposureSink = {
      packet: (h) => seen.push(`${(h[0] >> 4) === 6 ? 6 : 4}/${h.length}`),
      barrier: () => {},
      release: () => {},
    };
    try {
      const rng = new Prng(62);
      let passedTcp = 0;
      for (let i = 0; i < 3000; i++) {
        const v6 = rng.chance(0.3);
        const dscp = rng.chance(0.3) ? PROTECTED_DSCP : rng.below(64);
        const ip = rng.chance(0.8)
          ? tcpPacket({
              v6,
              dscp,
              seq: rng.u32(),
              dport: 40000 + rng.below(4),
              payload: new Uint8Array(rng.below(200)),
            })
          : udpPacket(dscp, v6);
        const want = user(asCopy(ip, 128), v6 ? ETH_P_IPV6 : ETH_P_IP);
        const got = k.testRun(frameOf(ip)).verdict;
        assert.equal(got === 'hold' ? 'hold' : 'release', want, `packet ${i} (dscp ${dscp}, v6 ${v6})`);
        if (got === 'pass' && ip[v6 ? 6 : 9] === 6) passedTcp++;
        if (i % 20 === 19) {
          const epoch = (i + 1) / 20;
          k.observer.barrier(epoch);
          k.observer.release(epoch); // reads the ring; the queue let everything go: flows leave in the kernel again
        }
      }
      assert.equal(k.testRun(frameOf(new Uint8Array(28), 0x0806)).verdict, 'pass', 'ARP leaves');
      // (an IP header shorter than 20 bytes cannot be fed: BPF_PROG_TEST_RUN refuses the frame)
      k.drainExposures();
      assert.ok(passedTcp > 100, `${passedTcp} TCP packets left`);
      assert.equal(k.exposuresRead, passedTcp, 'each TCP packet that left is in the ring, nothing else');
      assert.ok(seen.length > 0 && seen.length <= passedTcp, 'handed over one per flow and epoch in a drain');
      const st = k.stats();
      assert.ok(st.follow > 0, 'packets behind a held one of their flow were queued too');
    } finally {
      k.close();
    }
  });

  it('bad options are refused: too many ports, port 0, an interface that does not exist', function () {
    if (!loadAddon().parts.bpf || process.getuid?.() !== 0) this.skip();
    const ports = Array.from({ length: PGWIRE_KERNEL_PORTS_MAX + 1 }, (_, i) => 5432 + i);
    assert.throws(() => KernelClassifier.load({ mode: 'pgwire', ports, epoch: 1 }), /pgwire ports/);
    assert.throws(() => KernelClassifier.load({ mode: 'pgwire', ports: [0], epoch: 1 }), /pgwire port/);
    assert.throws(() => KernelClassifier.load({ mode: 'pgwire', epoch: 0 }), /epoch/);
    assert.throws(
      () => KernelClassifier.load({ mode: 'pgwire', iface: 'rdb62none0', epoch: 1 }),
      (e: Error & { code?: string }) => e.code === 'ERR_NETBUF' && /interface rdb62none0/.test(e.message),
    );
  });

  it('the ledger reads the mark as the verdict; a closed program refuses calls; close is idempotent', function () {
    const k = kernelOrSkip(this);
    const h = new Uint8Array(40);
    assert.equal(k.classify(h, ETH_P_IP, PGWIRE_KERNEL_MARKS.hold | 0x5), 'hold');
    assert.equal(k.classify(h, ETH_P_IP, PGWIRE_KERNEL_MARKS.follow), 'release');
    assert.equal(k.classify(h, ETH_P_IP, 0), 'release');
    k.close();
    k.close();
    assert.throws(() => k.testRun(frameOf(udpPacket(0))), { code: 'ERR_NETBUF' });
  });
});

describe('62c the exposure ring merged natively (exposure_coalesce.cc)', () => {
  /** One raw struct pgw_exposure (classify_tc.h): 64 octets, little-endian. */
  function record(rng: Prng, flow: number, epoch: number): Buffer {
    const b = Buffer.alloc(64);
    b[0] = flow & 1; // v6
    b[1] = [0x10, 0x18, 0x11, 0x12, 0x02, 0x01, 0x04][rng.below(7)]; // ACK, PSH-ACK, FIN-ACK, SYN-ACK, SYN, FIN, RST
    b.writeUInt16LE(5432, 2);
    b.writeUInt16LE(40000 + (flow >> 1), 4);
    b.fill(10 + flow, 8, 24);
    b.fill(20 + flow, 24, 40);
    b.writeUInt32LE((0xfffff000 + rng.below(0x2000)) >>> 0, 40); // around the wrap
    b.writeUInt32LE((0xffffff00 + rng.below(0x200)) >>> 0, 44);
    b.writeUInt32LE(rng.below(3) === 0 ? 0 : rng.below(9000), 48);
    b.writeBigUInt64LE(BigInt(epoch), 56);
    return b;
  }
  it('gives the reset tracker what the raw records give it: per flow and epoch, the highest end and ACK', function () {
    if (!loadAddon().parts.bpf) this.skip(); // the addon was built without libbpf-dev / clang
    const native = requirePart('bpf') as unknown as { coalesceExposureRecords(b: Buffer): Buffer };
    const rng = new Prng(62);
    for (let round = 0; round < 200; round++) {
      const n = 1 + rng.below(60);
      const raw = Buffer.concat(Array.from({ length: n }, () => record(rng, rng.below(4), 1 + rng.below(3))));
      const merged = native.coalesceExposureRecords(raw);
      assert.ok(merged.length <= raw.length && merged.length % 64 === 0);
      assert.ok(merged.length / 64 <= 12, 'at most one record per flow (4) and epoch (3)');
      const text = (b: Buffer): string[] =>
        coalesceExposures(b)
          .map((x) => `${x.epoch} ${Buffer.from(x.header).toString('hex')}`)
          .sort();
      assert.deepEqual(text(merged), text(raw), `round ${round}`);
    }
    assert.throws(() => native.coalesceExposureRecords(Buffer.alloc(65)), /whole pgw_exposure records/);
  });
});

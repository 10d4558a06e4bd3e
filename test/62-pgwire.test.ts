// 62 pgwire classifier: synthetic server→client packets (hand-built IPv4/IPv6 + TCP) of
// PostgreSQL sessions. Checks that only commit acknowledgements are held — across
// segmentation, several messages per packet, pipelining, retransmission (exact, coalesced,
// overlapping new data), connection start (SSL/GSSENC refusal, TLS → opaque), gaps,
// truncated copies, unknown flows, FIN/RST, the flow table bound and idle eviction — and a
// seeded random segmentation property: a segment is held iff it carries C/Z bytes of a
// committing cycle or C/Z bytes whose cycle is still open at its end.
import { strict as assert } from 'node:assert';
import { PgwireClassifier } from '../dom0/net/pgwire-classifier';
import { PgwireParser } from '../dom0/net/pgwire-parser';
import { PacketTrace } from '../dom0/net/packet-trace';
import { NET_TRACE_LINES_MAX } from '../dom0/limits';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ETH_P_IP, ETH_P_IPV6 } from '../dom0/net/classify-dscp';
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
  TCP_RST,
  TCP_SYN,
  udpPacket,
} from './support/pg-packets';

const COPY = 65535;

function session(c: PgwireClassifier, isn = 1000, opts = {}): { s: ServerStream; send: (p: Uint8Array) => string } {
  const s = new ServerStream(isn, opts);
  const v6 = (opts as { v6?: boolean }).v6;
  const send = (p: Uint8Array): string => c.classify(asCopy(p, COPY), v6 ? ETH_P_IPV6 : ETH_P_IP);
  assert.equal(send(s.synAck()), 'release');
  return { s, send };
}

function started(c = new PgwireClassifier(), isn = 1000, opts = {}): ReturnType<typeof session> {
  const x = session(c, isn, opts);
  assert.equal(x.send(x.s.segment(startupReply())), 'release', 'the startup reply acknowledges no commit');
  return x;
}

describe('62 pgwire classifier', () => {
  it('a TPC-B-like transaction: only the COMMIT acknowledgement is held', () => {
    const { s, send } = started();
    assert.equal(send(s.segment(concat(commandComplete('BEGIN'), rfq('T')))), 'release');
    assert.equal(send(s.segment(concat(commandComplete('UPDATE 1'), rfq('T')))), 'release');
    assert.equal(
      send(s.segment(concat(msg('T', new Uint8Array(20)), dataRow(8), commandComplete('SELECT 1'), rfq('T')))),
      'release',
    );
    assert.equal(send(s.segment(concat(commandComplete('INSERT 0 1'), rfq('T')))), 'release');
    assert.equal(send(s.segment(concat(commandComplete('COMMIT'), rfq('I')))), 'hold');
    assert.equal(send(s.pureAck()), 'release', 'a pure ACK carries no reply');
  });

  it('autocommit statements are held; empty queries, errors and notices alone are not', () => {
    const { s, send } = started();
    assert.equal(send(s.segment(concat(commandComplete('INSERT 0 1'), rfq('I')))), 'hold');
    assert.equal(
      send(s.segment(concat(dataRow(4), commandComplete('SELECT 1'), rfq('I')))),
      'hold',
      'conservative: a SELECT may write',
    );
    assert.equal(send(s.segment(concat(msg('I'), rfq('I')))), 'release', 'EmptyQueryResponse');
    assert.equal(send(s.segment(concat(errorResponse(), rfq('I')))), 'release', 'an error commits nothing');
    assert.equal(send(s.segment(notice())), 'release');
    assert.equal(
      send(s.segment(concat(commandComplete('ROLLBACK'), rfq('I')))),
      'hold',
      'end of a block: held (rollbacks included)',
    );
  });

  it('COMMIT AND CHAIN (status stays T) and a commit inside a pipelined batch are held', () => {
    const { s, send } = started();
    assert.equal(send(s.segment(concat(commandComplete('BEGIN'), rfq('T')))), 'release');
    assert.equal(send(s.segment(concat(commandComplete('COMMIT'), rfq('T')))), 'hold');
    // Pipelining: several cycles in one segment; one of them commits.
    assert.equal(
      send(s.segment(concat(commandComplete('UPDATE 1'), rfq('T'), commandComplete('UPDATE 2'), rfq('T')))),
      'release',
    );
    assert.equal(
      send(
        s.segment(
          concat(
            commandComplete('UPDATE 1'),
            rfq('T'),
            commandComplete('COMMIT'),
            rfq('I'),
            commandComplete('BEGIN'),
            rfq('T'),
          ),
        ),
      ),
      'hold',
    );
    // Extended protocol: ParseComplete, BindComplete, CommandComplete, ReadyForQuery.
    assert.equal(send(s.segment(concat(msg('1'), msg('2'), commandComplete('UPDATE 1'), rfq('T')))), 'release');
    assert.equal(send(s.segment(concat(msg('1'), msg('2'), commandComplete('COMMIT'), rfq('I')))), 'hold');
  });

  it('segmentation: a large result split over many segments is released; a split commit is held in every piece', () => {
    const { s, send } = started();
    const big = concat(msg('T', new Uint8Array(30)), ...Array.from({ length: 20 }, () => dataRow(700)));
    for (let at = 0; at < big.length; at += 1000) assert.equal(send(s.segment(big.subarray(at, at + 1000))), 'release');
    assert.equal(send(s.segment(concat(commandComplete('SELECT 20'), rfq('T')))), 'release');
    // COMMIT's C and Z split at every possible point: each piece carries commit bytes.
    const tail = concat(commandComplete('COMMIT'), rfq('I'));
    for (let cut = 1; cut < tail.length; cut++) {
      assert.equal(send(s.segment(tail.subarray(0, cut))), 'hold', `cut ${cut}, first part`);
      assert.equal(send(s.segment(tail.subarray(cut))), 'hold', `cut ${cut}, second part`);
    }
    // A non-committing cycle split: the piece that completes its Z 'T' is released.
    const t = concat(commandComplete('UPDATE 1'), rfq('T'));
    assert.equal(send(s.segment(t.subarray(0, 7))), 'hold', 'not known yet: C bytes of an open cycle');
    assert.equal(send(s.segment(t.subarray(7))), 'release');
    // Header split across three segments, tag split inside "COMMIT".
    const c = concat(commandComplete('COMMIT'), rfq('T'));
    send(s.segment(c.subarray(0, 2)));
    send(s.segment(c.subarray(2, 8)));
    assert.equal(send(s.segment(c.subarray(8))), 'hold', 'the tag matched across segments');
  });

  it('retransmissions get the same verdict; coalesced or overlapping ones are held if any part was', () => {
    const { s, send } = started();
    send(s.segment(concat(commandComplete('BEGIN'), rfq('T')))); // 1: release
    send(s.segment(concat(commandComplete('COMMIT'), rfq('I')))); // 2: hold
    send(s.segment(concat(commandComplete('BEGIN'), rfq('T')))); // 3: release
    assert.equal(send(s.retransmit(1)), 'release');
    assert.equal(send(s.retransmit(2)), 'hold');
    assert.equal(send(s.retransmit(2)), 'hold', 'twice');
    assert.equal(send(s.retransmit(3)), 'release');
    assert.equal(send(s.retransmitRange(1, 2)), 'hold');
    assert.equal(send(s.retransmitRange(0, 1)), 'release', 'startup + BEGIN');
    // Retransmission of segment 3 coalesced with new bytes (a commit): parsed once, held.
    const fresh = concat(commandComplete('COMMIT'), rfq('I'));
    const seq = s.sent[3].seq;
    s.segment(fresh);
    const merged = tcpPacket({ seq, ack: 1, payload: concat(s.sent[3].payload, fresh) });
    assert.equal(send(merged), 'hold');
    assert.equal(send(s.retransmit(4)), 'hold', 'the new part was recorded as held');
    assert.equal(
      send(s.segment(concat(commandComplete('BEGIN'), rfq('T')))),
      'release',
      'the stream continues in sync',
    );
  });

  it('old held ranges beyond the per-flow bound are held on retransmission (floor)', () => {
    const c = new PgwireClassifier({ heldRangesMax: 2 });
    const { s, send } = started(c);
    for (let i = 0; i < 4; i++) {
      send(s.segment(concat(commandComplete('COMMIT'), rfq('I'))));
      send(s.segment(concat(commandComplete('BEGIN'), rfq('T'))));
    }
    assert.equal(send(s.retransmit(0)), 'hold', 'below the floor: held');
    assert.equal(send(s.retransmit(8)), 'release', 'recent released range: released');
  });

  it('connection start: N answers are skipped; TLS (S), GSSAPI (G) or a TLS record make the flow opaque', () => {
    const c = new PgwireClassifier();
    const a = session(c, 10);
    assert.equal(a.send(a.s.segment(Uint8Array.of(0x4e))), 'release', 'GSSENC refused');
    assert.equal(a.send(a.s.segment(Uint8Array.of(0x4e))), 'release', 'SSL refused');
    assert.equal(a.send(a.s.segment(startupReply())), 'release');
    assert.equal(a.send(a.s.segment(concat(commandComplete('BEGIN'), rfq('T')))), 'release');
    for (const first of [0x53, 0x47, 0x16]) {
      const b = session(c, 20 + first, { dport: 41000 + first });
      assert.equal(b.send(b.s.segment(Uint8Array.of(first))), 'hold');
      assert.equal(b.send(b.s.segment(new Uint8Array(300))), 'hold', 'encrypted bytes');
      assert.equal(b.send(b.s.pureAck()), 'hold', 'even pure ACKs of an opaque flow');
    }
  });

  it('gaps, truncated copies, unknown flows and bad framing make a flow opaque (everything held)', () => {
    const c = new PgwireClassifier();
    const a = started(c, 100);
    a.s.segment(concat(commandComplete('BEGIN'), rfq('T'))); // lost before us
    assert.equal(a.send(a.s.segment(concat(commandComplete('UPDATE 1'), rfq('T')))), 'hold', 'gap');
    assert.equal(a.send(a.s.segment(concat(commandComplete('BEGIN'), rfq('T')))), 'hold');
    const b = started(c, 200, { dport: 40001 });
    const big = concat(...Array.from({ length: 4 }, () => dataRow(400)), commandComplete('BEGIN'), rfq('T'));
    assert.equal(c.classify(asCopy(b.s.segment(big), 128), ETH_P_IP), 'hold', 'the copy holds 128 of ~1660 bytes');
    assert.equal(b.send(b.s.segment(concat(commandComplete('BEGIN'), rfq('T')))), 'hold');
    const unknown = tcpPacket({ seq: 5, dport: 40002, payload: concat(commandComplete('BEGIN'), rfq('T')) });
    assert.equal(c.classify(asCopy(unknown, COPY), ETH_P_IP), 'hold', 'no SYN seen');
    const d = started(c, 300, { dport: 40003 });
    assert.equal(d.send(d.s.segment(msg('Z', 'II'))), 'hold', 'ReadyForQuery of length 6');
    const e = started(c, 400, { dport: 40004 });
    assert.equal(e.send(e.s.segment(Uint8Array.of(0x78, 0, 0, 0, 4))), 'hold', 'unknown type');
    assert.ok(c.stats.opaqueFlows >= 5);
  });

  it('FIN and RST end a flow; the table is bounded (LRU) and idle flows are evicted first', () => {
    let now = 0;
    const c = new PgwireClassifier({ flowsMax: 2, idleMs: 1000, nowMs: () => now });
    const a = started(c, 10, { dport: 1 });
    assert.equal(
      a.send(a.s.segment(concat(commandComplete('COMMIT'), rfq('I')), TCP_ACK | TCP_FIN)),
      'hold',
      'FIN with a commit',
    );
    assert.equal(c.flowCount, 0);
    // The server's last ACK (after the client's FIN) and a retransmitted FIN pass as while the flow
    // lived: no opaque entry, as the lab's trace showed before (20261206-053404).
    const opaque = c.stats.opaqueFlows;
    assert.equal(a.send(a.s.pureAck()), 'release', 'the last ACK');
    assert.equal(a.send(tcpPacket({ seq: a.s.next - 1, dport: 1, flags: TCP_FIN | TCP_ACK })), 'release');
    assert.deepEqual([c.flowCount, c.stats.opaqueFlows, c.stats.afterEnd], [0, opaque, 2]);
    assert.equal(a.send(a.s.segment(rfq('I'))), 'hold', 'data after the end: unknown, held');
    assert.equal(c.stats.opaqueFlows, opaque + 1);
    assert.equal(a.send(tcpPacket({ seq: a.s.next, dport: 1, flags: TCP_RST | TCP_ACK })), 'release');
    const b = started(c, 20, { dport: 2 });
    assert.equal(b.send(tcpPacket({ seq: b.s.next, dport: 2, flags: TCP_RST | TCP_ACK })), 'release');
    assert.equal(c.flowCount, 0);
    const f1 = started(c, 30, { dport: 3 });
    now = 10;
    const f2 = started(c, 40, { dport: 4 });
    now = 20;
    f1.send(f1.s.segment(concat(commandComplete('BEGIN'), rfq('T')))); // f1 most recent
    started(c, 50, { dport: 5 }); // evicts f2 (LRU)
    assert.equal(c.flowCount, 2);
    assert.equal(c.stats.flowsEvicted, 1);
    assert.equal(f2.send(f2.s.segment(concat(commandComplete('BEGIN'), rfq('T')))), 'hold', 'evicted: unknown now');
    assert.equal(
      f1.send(f1.s.segment(concat(commandComplete('BEGIN'), rfq('T')))),
      'hold',
      'f1 was evicted by the unknown f2',
    );
    now = 5000;
    const g = started(c, 60, { dport: 6 }); // both others idle
    assert.equal(g.send(g.s.segment(concat(commandComplete('BEGIN'), rfq('T')))), 'release');
    assert.ok(c.flowCount <= 2);
  });

  it('other traffic is held (UDP, TCP from other ports), non-IP is released; IPv6 and sequence wrap work', () => {
    const c = new PgwireClassifier();
    assert.equal(c.classify(udpPacket(0), ETH_P_IP), 'hold');
    assert.equal(c.classify(tcpPacket({ seq: 1, sport: 22 }), ETH_P_IP), 'hold');
    assert.equal(c.classify(new Uint8Array(28), 0x0806), 'release');
    const v6 = started(c, 7, { v6: true });
    assert.equal(v6.send(v6.s.segment(concat(commandComplete('BEGIN'), rfq('T')))), 'release');
    assert.equal(v6.send(v6.s.segment(concat(commandComplete('COMMIT'), rfq('I')))), 'hold');
    const w = started(c, 0xffffffc0, { dport: 40100 }); // wraps during the run
    for (let i = 0; i < 5; i++) {
      assert.equal(w.send(w.s.segment(concat(commandComplete('BEGIN'), rfq('T')))), 'release', `wrap ${i}`);
      assert.equal(w.send(w.s.segment(concat(commandComplete('COMMIT'), rfq('I')))), 'hold');
    }
    assert.equal(w.send(w.s.retransmit(1)), 'release');
    assert.equal(w.send(w.s.retransmit(2)), 'hold');
    assert.ok(w.s.sent[2].seq < 0x1000, 'the COMMIT segment lies after the wrap');
  });

  it('random segmentation of a long session: held iff a piece carries undecided or committing C/Z bytes', () => {
    for (let seed = 1; seed <= 20; seed++) {
      const rng = new Prng(seed);
      // Build the byte stream and, per byte, the cycle it belongs to and whether it is a C/Z byte.
      const parts: Uint8Array[] = [startupReply()];
      const commitCycle: boolean[] = [false];
      for (let k = 0; k < 60; k++) {
        const kind = rng.below(5);
        if (kind === 0) {
          parts.push(concat(commandComplete('BEGIN'), rfq('T')));
          commitCycle.push(false);
        } else if (kind === 1) {
          parts.push(concat(dataRow(rng.below(3000)), commandComplete('SELECT 1'), rfq('T')));
          commitCycle.push(false);
        } else if (kind === 2) {
          parts.push(concat(commandComplete('COMMIT'), rfq('I')));
          commitCycle.push(true);
        } else if (kind === 3) {
          parts.push(concat(commandComplete('INSERT 0 1'), rfq('I')));
          commitCycle.push(true);
        } else {
          parts.push(concat(notice(), errorResponse(), rfq('T')));
          commitCycle.push(false);
        }
      }
      const stream = concat(...parts);
      const cycleOf = new Int32Array(stream.length),
        czByte = new Uint8Array(stream.length);
      let at = 0;
      parts.forEach((p, ci) => {
        let m = 0;
        while (m < p.length) {
          const len = 1 + new DataView(p.buffer, p.byteOffset + m + 1, 4).getUint32(0);
          const cz = p[m] === 0x43 || p[m] === 0x5a;
          for (let b = 0; b < len; b++) {
            cycleOf[at + m + b] = ci;
            czByte[at + m + b] = cz ? 1 : 0;
          }
          m += len;
        }
        at += p.length;
      });
      const cycleEnd = new Int32Array(parts.length);
      {
        let e = 0;
        parts.forEach((p, ci) => {
          e += p.length;
          cycleEnd[ci] = e;
        });
      }
      const c = new PgwireClassifier();
      const { s, send } = session(c, rng.u32());
      for (let from = 0; from < stream.length; ) {
        const to = Math.min(stream.length, from + 1 + rng.below(rng.chance(0.3) ? 8 : 1400));
        let expect = false;
        for (let b = from; b < to; b++) {
          if (!czByte[b]) continue;
          const ci = cycleOf[b];
          if (commitCycle[ci] || cycleEnd[ci] > to) expect = true;
        }
        assert.equal(
          send(s.segment(stream.subarray(from, to))),
          expect ? 'hold' : 'release',
          `seed ${seed} bytes ${from}..${to}`,
        );
        from = to;
      }
      assert.equal(c.stats.opaqueFlows, 0);
      assert.equal(c.stats.commits, commitCycle.filter(Boolean).length);
    }
  });

  it('the packet trace (REMUSDB_NET_TRACE) writes a line per packet with its flow mode, barriers and releases, bounded', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'remusdb-62-'));
    try {
      const file = path.join(dir, 'trace.txt');
      const c = new PgwireClassifier();
      const trace = new PacketTrace(file, (key) => c.flowMode(key));
      const syn = tcpPacket({ seq: 99, sport: 5432, dport: 4000, flags: TCP_SYN | 0x10 });
      trace.packet(syn, c.classify(syn, ETH_P_IP), 'accept', 3);
      trace.packet(udpPacket(0), 'hold', 'held', 3);
      trace.barrier(3);
      const lines = fs.readFileSync(file, 'utf8').trim().split('\n');
      assert.match(lines[0], /^# remusdb packet trace /);
      assert.match(
        lines[1],
        /^[\d.]+ e3 release accept 127\.60\.0\.2:5432>127\.60\.0\.3:4000 S\. seq=99 .*mode=start$/,
      );
      assert.match(lines[2], /^[\d.]+ e3 hold held other-ip proto=17$/);
      assert.match(lines[3], /^[\d.]+ barrier e3$/);
      for (let i = 0; i < NET_TRACE_LINES_MAX + 10; i++) trace.release(i);
      trace.flush();
      const n = fs.readFileSync(file, 'utf8').trim().split('\n').length;
      assert.equal(n, NET_TRACE_LINES_MAX + 1, 'the header and NET_TRACE_LINES_MAX lines, no more');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the parser alone keeps constant state per stream (no body buffering)', () => {
    const p = new PgwireParser();
    assert.equal(p.segment(concat(startupReply(), msg('D', new Uint8Array(1 << 20)))), false);
    assert.equal(p.mode, 'messages');
  });
});

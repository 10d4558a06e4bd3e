// 61 dscp classifier: packets marked DSCP 59 (TOS 0xEC with any ECN bits; IPv6 traffic
// class likewise) are held, every other IP packet is released, non-IP is released, short
// IP headers are held; and, through the ledger, a released packet still waits behind a
// held packet of its own flow.
import { strict as assert } from 'node:assert';
import { dscpClassifier, dscpOf, ETH_P_IP, ETH_P_IPV6, PROTECTED_DSCP } from '../dom0/net/classify-dscp';
import { PacketLedger, type VerdictSink } from '../dom0/net/packet-ledger';
import { asCopy, tcpPacket, udpPacket } from './support/pg-packets';

describe('61 dscp classifier', () => {
  const cls = dscpClassifier();

  it('holds DSCP 59 and releases other code points, IPv4 and IPv6, whatever the ECN bits', () => {
    assert.equal(PROTECTED_DSCP, 59);
    for (const v6 of [false, true]) {
      const hw = v6 ? ETH_P_IPV6 : ETH_P_IP;
      const marked = tcpPacket({ seq: 1, dscp: 59, v6 });
      assert.equal(dscpOf(marked), 59);
      assert.equal(cls(asCopy(marked, 128), hw), 'hold');
      for (const ecn of [1, 2, 3]) {
        const p = tcpPacket({ seq: 1, dscp: 59, v6 });
        if (v6) p[1] |= ecn << 4;
        else p[1] |= ecn;
        assert.equal(cls(p, hw), 'hold', `ECN ${ecn} must not change the verdict`);
      }
      for (const other of [0, 10, 46, 58, 60, 63])
        assert.equal(cls(tcpPacket({ seq: 1, dscp: other, v6 }), hw), 'release', `dscp ${other}`);
      assert.equal(cls(udpPacket(59, v6), hw), 'hold');
      assert.equal(cls(udpPacket(0, v6), hw), 'release');
    }
  });

  it('reads the TOS byte 0xEC as DSCP 59 and the IPv6 traffic class across its two bytes', () => {
    const v4 = tcpPacket({ seq: 1 });
    v4[1] = 0xec;
    assert.equal(cls(v4, ETH_P_IP), 'hold');
    const v6 = tcpPacket({ seq: 1, v6: true });
    v6[0] = 0x6e;
    v6[1] = 0xc0; // traffic class 0xEC
    assert.equal(dscpOf(v6), 59);
    assert.equal(cls(v6, ETH_P_IPV6), 'hold');
    v6[0] = 0x6e;
    v6[1] = 0x80; // traffic class 0xE8: DSCP 58
    assert.equal(cls(v6, ETH_P_IPV6), 'release');
  });

  it('a configurable code point', () => {
    const c46 = dscpClassifier(46);
    assert.equal(c46(tcpPacket({ seq: 1, dscp: 46 }), ETH_P_IP), 'hold');
    assert.equal(c46(tcpPacket({ seq: 1, dscp: 59 }), ETH_P_IP), 'release');
    assert.throws(() => dscpClassifier(64), /dscp/);
  });

  it('non-IP is released; IP with a truncated header is held; hwProtocol 0 falls back to the version', () => {
    const arp = new Uint8Array(28);
    arp[0] = 0x00;
    arp[1] = 0x01;
    assert.equal(cls(arp, 0x0806), 'release');
    assert.equal(cls(tcpPacket({ seq: 1, dscp: 59 }), 0), 'hold');
    assert.equal(cls(tcpPacket({ seq: 1, dscp: 0 }), 0), 'release');
    assert.equal(cls(tcpPacket({ seq: 1, dscp: 0 }).subarray(0, 12), ETH_P_IP), 'hold');
    assert.equal(cls(tcpPacket({ seq: 1, dscp: 0, v6: true }).subarray(0, 30), ETH_P_IPV6), 'hold');
    assert.equal(cls(new Uint8Array([0x10, 0]), ETH_P_IP), 'hold', 'hwProtocol says IP, version nibble is junk');
  });

  it('through the ledger: unmarked packets leave at once unless a marked packet of their flow is held', () => {
    const accepted: number[] = [];
    const sink: VerdictSink = {
      verdictUpTo: (id) => accepted.push(-id),
      verdictEach: (ids, n) => {
        for (let i = 0; i < n; i++) accepted.push(ids[i]);
      },
      drain: () => {},
    };
    const ledger = new PacketLedger(sink, { heldMax: 100, heldBytesMax: 1 << 20 }, cls, 16);
    const pkts = [
      tcpPacket({ seq: 1, dscp: 0 }),
      tcpPacket({ seq: 2, dscp: 59 }),
      tcpPacket({ seq: 3, dscp: 0 }),
      tcpPacket({ seq: 1, dscp: 0, sport: 5433 }),
    ];
    const copy = 64;
    const headers = new Uint8Array(copy * pkts.length);
    pkts.forEach((p, i) => headers.set(asCopy(p, copy), i * copy));
    ledger.ingest({
      count: 4,
      ids: Uint32Array.from([1, 2, 3, 4]),
      ipLens: Uint32Array.from(pkts.map((p) => p.length)),
      protos: Uint16Array.from([ETH_P_IP, ETH_P_IP, ETH_P_IP, ETH_P_IP]),
      headers,
      copyBytes: copy,
    });
    assert.deepEqual(accepted, [1, 4], 'packet 3 waits behind held packet 2 of its flow; the other flow passes');
    assert.equal(ledger.held, 2);
    ledger.barrier(1);
    ledger.release(1);
    assert.deepEqual(accepted, [1, 4, -2, 3]);
  });
});

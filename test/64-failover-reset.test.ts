// 64 failover resets: the exposure tracker (which connections left unprotected bytes or
// ACKs beyond a checkpoint), the forged RSTs (checksums), and on the netns test bed (root):
// two connections to a fake PostgreSQL server through the pgwire gate; after checkpoint 2
// one of them gets an unprotected reply (epoch 3), then "failover to checkpoint 2": only
// that connection is reported, RSTs sent from dom0 reset the client (ECONNRESET) and, via
// the challenge-ACK exchange, the guest's socket too; the other connection keeps working.
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import {
  checksum,
  ExposureTracker,
  parseFlowExports,
  rstPacket,
  sendResets,
  type ResetTarget,
} from '../dom0/net/failover-reset';
import { BackupExposure, exportExposure } from '../dom0/net/exposure-relay';
import { createTestbed, destroyTestbed, sysctl, type Testbed } from '../dom0/net/netns-testbed';
import { type NetBuffer, openNetBuffer } from '../dom0/net/net-device';
import { PacketLedger, type VerdictSink } from '../dom0/net/packet-ledger';
import { PgwireClassifier } from '../dom0/net/pgwire-classifier';
import { commandComplete, concat, rfq, ServerStream, startupReply } from './support/pg-packets';
import { FAKE_PG_CLIENT, FAKE_PG_SERVER, NsProcess, sleep, waitFor, whyNoNetns } from './support/pg-netns';

const PREFIX = process.env.RDB64_PREFIX ?? 'rdb64';

/** Feeds packets one at a time into a ledger with a pgwire classifier and a tracker. */
function harness(): { tracker: ExposureTracker; ledger: PacketLedger; feed: (p: Uint8Array) => void } {
  const tracker = new ExposureTracker();
  const sink: VerdictSink = { verdictUpTo: () => {}, verdictEach: () => {}, drain: () => {} };
  const pg = new PgwireClassifier();
  const ledger = new PacketLedger(sink, { heldMax: 1000, heldBytesMax: 1 << 24 }, pg.classify, 4, tracker);
  let id = 1;
  const feed = (p: Uint8Array): void => {
    const copy = 2048,
      h = new Uint8Array(copy);
    h.set(p);
    ledger.ingest({
      count: 1,
      ids: Uint32Array.of(id++),
      ipLens: Uint32Array.of(p.length),
      protos: Uint16Array.of(0x0800),
      headers: h,
      copyBytes: copy,
    });
  };
  return { tracker, ledger, feed };
}

describe('64 failover resets', () => {
  it('64.1 reports exactly the flows whose unprotected bytes or ACKs passed the checkpoint', () => {
    const { tracker, ledger, feed } = harness();
    const a = new ServerStream(100, { dport: 1001 }),
      b = new ServerStream(5000, { dport: 1002 }),
      c = new ServerStream(9000, { dport: 1003 });
    for (const s of [a, b, c]) {
      feed(s.synAck());
      feed(s.segment(startupReply()));
    }
    feed(a.segment(concat(commandComplete('COMMIT'), rfq('I')))); // held, epoch 1
    ledger.barrier(1);
    ledger.release(1);
    // epoch 2: a gets an unprotected reply; b only a held commit; c only a pure ACK with a newer ack
    feed(a.segment(concat(commandComplete('BEGIN'), rfq('T'))));
    feed(b.segment(concat(commandComplete('COMMIT'), rfq('I'))));
    const ackOnly = c.pureAck();
    new DataView(ackOnly.buffer).setUint32(28, 500);
    feed(ackOnly);
    ledger.barrier(2);
    const d = new ServerStream(20000, { dport: 1004 });
    feed(d.synAck()); // epoch 3: a new connection
    const bad = tracker.inconsistent(1);
    assert.deepEqual(bad.map((t) => `${t.clientPort}:${t.why}`).sort(), ['1001:seq', '1003:ack', '1004:new-flow']);
    const ta = bad.find((t) => t.clientPort === 1001)!;
    assert.equal(ta.toClient.seq, a.next, "RST at the client's next expected byte");
    assert.equal(ta.guest, '127.60.0.2');
    assert.equal(ta.client, '127.60.0.3');
    assert.ok(ta.toGuest !== null);
    assert.equal(bad.find((t) => t.clientPort === 1004)!.toGuest, null, 'unknown to the resumed guest');
    // Once checkpoint 2 is committed only the connection born in epoch 3 remains.
    ledger.release(2);
    assert.deepEqual(
      tracker.inconsistent(2).map((t) => t.clientPort),
      [1004],
    );
    assert.throws(() => tracker.inconsistent(1), /committed epoch/);
  });

  it('64.5 the backup computes the same resets from NET_EXPOSURE records; malformed ones are refused', () => {
    const { tracker, ledger, feed } = harness();
    let flushes = 0;
    tracker.onExposed = () => {
      flushes++;
    };
    const a = new ServerStream(100, { dport: 1001 }),
      b = new ServerStream(5000, { dport: 1002 });
    for (const s of [a, b]) {
      feed(s.synAck());
      feed(s.segment(startupReply()));
    }
    ledger.barrier(1);
    ledger.release(1);
    const flushesBefore = flushes;
    feed(a.segment(concat(commandComplete('BEGIN'), rfq('T')))); // unprotected: released at once
    assert.equal(flushes, flushesBefore + 1, 'the exposure is shipped before the verdict that releases it');
    feed(b.segment(concat(commandComplete('COMMIT'), rfq('I')))); // held: no flush
    assert.equal(flushes, flushesBefore + 1);
    // The backup receives the records as JSON (through the channel) and fails over from 1.
    const backupSide = new BackupExposure(
      () => {},
      (targets: ResetTarget[], o) => {
        sent.push({ n: targets.length, ...o });
        return targets.length;
      },
    );
    const sent: Array<Record<string, unknown>> = [];
    const wire = (x: Record<string, unknown> | null): Record<string, unknown> => JSON.parse(JSON.stringify(x));
    assert.equal(backupSide.onRecord(wire(exportExposure([tracker], true))), null);
    assert.equal(exportExposure([tracker], false), null, 'nothing changed since');
    const expected = tracker
      .inconsistent(1)
      .map((t) => ({ port: t.clientPort, why: t.why, toClient: t.toClient, toGuest: t.toGuest }));
    assert.deepEqual(
      expected.map((t) => t.port),
      [1001],
    );
    assert.equal(backupSide.onFailover(1), 1);
    backupSide.onResumed();
    assert.deepEqual(sent, [
      { n: 1, toGuest: false },
      { n: 1, toGuest: true, toClient: false },
    ]);
    const mirror = new ExposureTracker();
    const x = parseFlowExports(wire(exportExposure([tracker], true)));
    assert.ok(typeof x !== 'string');
    mirror.importFlows(x.released, x.flows);
    assert.deepEqual(
      mirror.inconsistent(1).map((t) => ({ port: t.clientPort, why: t.why, toClient: t.toClient, toGuest: t.toGuest })),
      expected,
    );
    // Hostile bodies: a string naming the problem (the engine turns it into ERR_PROTOCOL).
    const flow = x.flows[0];
    for (const bad of [
      null,
      { released: 1 },
      { released: 'x', flows: [] },
      { released: 1, flows: [{ ...flow, g: 'zz' }] },
      { released: 1, flows: [{ ...flow, marks: [[1, -5, 0]] }] },
      { released: 1, flows: [{ ...flow, gp: 70000 }] },
      { released: 1, flows: new Array(4097).fill(flow) },
    ]) {
      assert.equal(typeof parseFlowExports(bad), 'string', JSON.stringify(bad)?.slice(0, 80));
      assert.equal(typeof backupSide.onRecord(bad as Record<string, unknown>), 'string');
    }
  });

  it('64.2 remus mode (hold everything) exposes nothing; the flow table is bounded', () => {
    const tracker = new ExposureTracker(2);
    const ledger = new PacketLedger(
      { verdictUpTo: () => {}, verdictEach: () => {}, drain: () => {} },
      { heldMax: 100, heldBytesMax: 1 << 20 },
      null,
      4,
      tracker,
    );
    for (let i = 0; i < 3; i++) {
      const s = new ServerStream(i * 1000, { dport: 2000 + i });
      const h = new Uint8Array(256);
      h.set(s.segment(startupReply()));
      ledger.ingest({
        count: 1,
        ids: Uint32Array.of(i + 1),
        ipLens: Uint32Array.of(100),
        protos: Uint16Array.of(0x0800),
        headers: h,
        copyBytes: 256,
      });
    }
    assert.equal(tracker.flowCount, 2);
    assert.equal(tracker.evicted, 1);
    assert.deepEqual(tracker.inconsistent(0), []);
  });

  it('64.3 forged RSTs carry valid IPv4 and TCP checksums (IPv6 too)', () => {
    const src = Uint8Array.of(127, 60, 0, 2),
      dst = Uint8Array.of(127, 60, 0, 3);
    const p = rstPacket(false, src, dst, 5432, 40000, 0xfffffff0, 77);
    assert.equal(checksum(p.subarray(0, 20)), 0, 'IP header checksum');
    const pseudo = Uint8Array.from([...src, ...dst, 0, 6, 0, 20, ...p.subarray(20)]);
    assert.equal(checksum(pseudo), 0, 'TCP checksum');
    assert.equal(p[33], 0x14, 'RST|ACK');
    assert.equal(new DataView(p.buffer).getUint32(24), 0xfffffff0);
    const s6 = new Uint8Array(16),
      d6 = new Uint8Array(16);
    s6[0] = 0xfd;
    s6[15] = 2;
    d6[0] = 0xfd;
    d6[15] = 3;
    const q = rstPacket(true, s6, d6, 5432, 40000, 1, 2);
    assert.equal(checksum(Uint8Array.from([...s6, ...d6, 0, 0, 0, 20, 0, 0, 0, 6, ...q.subarray(40)])), 0);
  });

  describe('on the netns test bed (root)', () => {
    let bed: Testbed;
    let server: NsProcess;
    let client: NsProcess;
    let nb: NetBuffer | null = null;

    before(async function () {
      const why = whyNoNetns();
      if (why) {
        console.log(`      skipped: ${why}`);
        this.skip();
      }
      bed = createTestbed(PREFIX);
      // dom0 gets an address on the bridge to send from (as a Xen dom0 has on its bridge).
      sysctl(bed.dom0, ['net.ipv4.conf.all.route_localnet=1', 'net.ipv4.conf.br0.route_localnet=1']);
      const r = spawnSync('ip', ['-n', bed.dom0, 'addr', 'add', '127.60.0.1/24', 'dev', 'br0'], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      server = new NsProcess(bed.guest, FAKE_PG_SERVER, [bed.guestIp4, '5432']);
      await waitFor('server ready', () => server.has('ready'));
      client = new NsProcess(bed.client, FAKE_PG_CLIENT, [bed.guestIp4]);
    });

    after(() => {
      nb?.close();
      server?.kill();
      client?.kill();
      if (bed) destroyTestbed(PREFIX);
    });

    it('64.4 resets only the exposed connection, at both ends; the other one continues', async function () {
      nb = openNetBuffer({
        driver: 'nfqueue',
        domain: 't64',
        match: { physdevIn: bed.vif },
        netns: bed.dom0,
        queueNum: 64,
        commitProtection: 'pgwire',
      });
      const zs = (conn: number): number => client.count(`z ${conn} `);
      client.send({ op: 'connect', port: 5432 });
      client.send({ op: 'connect', port: 5432 });
      await waitFor('both startup replies', () => zs(0) === 1 && zs(1) === 1);
      for (const c of [0, 1]) client.send({ op: 'q', conn: c, text: 'COMMIT' });
      await sleep(200);
      nb.gate.barrier(1);
      nb.gate.release(1); // checkpoint 1: both COMMIT replies
      await waitFor('commit replies', () => zs(0) === 2 && zs(1) === 2);
      // A held segment may have been retransmitted by the guest meanwhile (RTO ≥ 200 ms on a
      // loaded machine): such a copy is held too, in epoch 2, and its flow waits behind it.
      nb.gate.barrier(2);
      nb.gate.release(2);
      client.send({ op: 'q', conn: 0, text: 'BEGIN' }); // epoch 3: unprotected reply on conn 0
      try {
        await waitFor('BEGIN reply (unprotected)', () => zs(0) === 3, 5000);
      } catch (e) {
        // A retransmitted COMMIT reply was held in epoch 3 and the BEGIN reply waits behind it
        // (per-flow order): the scenario did not happen on this run, nothing to check.
        if (nb.nfqueue!.ledger.stats.held === 0) throw e;
        console.log('      inconclusive: a retransmission was held ahead of the BEGIN reply');
        this.skip();
      }
      nb.gate.barrier(3); // the primary "dies" before checkpoint 3 commits
      const targets = nb.exposure!.inconsistent(2);
      assert.equal(targets.length, 1, JSON.stringify(targets));
      assert.equal(targets[0].why, 'seq');
      nb.gate.discard();
      nb.gate.setPassThrough(true); // the resumed guest's traffic flows (fenced primary gone)
      const sent = sendResets(targets, { netns: bed.dom0, toGuest: true });
      assert.equal(sent, 2);
      await waitFor('the client sees ECONNRESET on conn 0', () => client.has('error 0 ECONNRESET'), 5000);
      await waitFor(
        'the guest side of conn 0 is reset too',
        () => server.has('serror 0 ECONNRESET') || server.has('sclose 0'),
        5000,
      );
      client.send({ op: 'q', conn: 1, text: 'BEGIN' });
      await waitFor('conn 1 still works', () => zs(1) === 3);
      assert.ok(!client.has('error 1') && !client.has('close 1'));
    });
  });
});

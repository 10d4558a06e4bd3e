// 63 net device: openNetBuffer, the entry the protect service calls. Without root: the
// `none` driver and option checks. With root, on the netns test bed (guest ── vif1.0 ─ br0
// ─ cl0 ── client, rule in dom0): a fake PostgreSQL server in the guest and a client —
// pgwire mode releases BEGIN/UPDATE replies at once and holds the COMMIT reply until the
// epoch is released; off mode holds everything (even the SYN-ACK); dscp mode holds what
// the guest marks DSCP 59 (an iptables DSCP rule in the guest marks port 5433), in dom0 or in
// the kernel (the tc program, whose exposure ring reaches the failover reset tracker); setup
// after a crash that left rules behind replaces them; close is idempotent.
import { strict as assert } from 'node:assert';
import { loadAddon } from '../dom0/native';
import { spawnSync } from 'node:child_process';
import { ErrorCode } from '../dom0/errors';
import { listRules } from '../dom0/net/iptables-rules';
import { createTestbed, destroyTestbed, type Testbed } from '../dom0/net/netns-testbed';
import { type NetBuffer, openNetBuffer, PGWIRE_COPY_BYTES } from '../dom0/net/net-device';
import { readKernelQueueStats } from '../dom0/net/nfqueue-buffer';
import { FAKE_PG_CLIENT, FAKE_PG_SERVER, NsProcess, sleep, waitFor, whyNoNetns } from './support/pg-netns';

const PREFIX = process.env.RDB63_PREFIX ?? 'rdb63';
const QUEUE = 63;
const DOMAIN = 't63';

describe('63 net device', () => {
  it('63.1 driver none holds nothing and refuses commit protection', () => {
    const nb = openNetBuffer({
      driver: 'none',
      domain: 'x',
      match: { inIface: 'vif1.0' },
      queueNum: 1,
      commitProtection: 'off',
    });
    nb.gate.barrier(1);
    nb.gate.release(1);
    assert.equal(nb.gate.held, 0);
    assert.equal(nb.describe().driver, 'none');
    nb.close();
    nb.close();
    assert.throws(
      () =>
        openNetBuffer({
          driver: 'none',
          domain: 'x',
          match: { inIface: 'vif1.0' },
          queueNum: 1,
          commitProtection: 'pgwire',
        }),
      (e: Error & { code?: string }) => e.code === ErrorCode.BAD_ARGUMENT && /needs a network buffer/.test(e.message),
    );
  });

  describe('on the netns test bed (root)', () => {
    let bed: Testbed;
    let server: NsProcess;
    let client: NsProcess;
    let nb: NetBuffer | null = null;
    let conns = 0;

    before(async function () {
      const why = whyNoNetns();
      if (why) {
        console.log(`      skipped: ${why}`);
        this.skip();
      }
      bed = createTestbed(PREFIX);
      server = new NsProcess(bed.guest, FAKE_PG_SERVER, [bed.guestIp4, '5432', '5433']);
      await waitFor('server ready', () => server.count('ready') === 2);
      client = new NsProcess(bed.client, FAKE_PG_CLIENT, [bed.guestIp4]);
    });

    after(() => {
      nb?.close();
      server?.kill();
      client?.kill();
      if (bed) destroyTestbed(PREFIX);
    });

    let epoch = 0;
    function open(mode: 'off' | 'dscp' | 'pgwire'): NetBuffer {
      nb?.close(); // a failed test left it open
      epoch = 0;
      return openNetBuffer({
        driver: 'nfqueue',
        domain: DOMAIN,
        match: { physdevIn: bed.vif },
        netns: bed.dom0,
        queueNum: QUEUE,
        commitProtection: mode,
      });
    }
    const zs = (conn: number): string[] =>
      client.lines.filter((l) => l.startsWith(`z ${conn} `)).map((l) => l.split(' ')[2]);
    function connect(port = 5432): number {
      client.send({ op: 'connect', port });
      return conns++;
    }
    const q = (conn: number, text: string): void => client.send({ op: 'q', conn, text });
    const commitEpoch = (): void => {
      epoch++;
      nb!.gate.barrier(epoch);
      nb!.gate.release(epoch);
    };

    it('63.2 pgwire: only the COMMIT reply waits for the checkpoint', async () => {
      nb = open('pgwire');
      assert.equal(nb.describe().copyBytes, PGWIRE_COPY_BYTES);
      assert.equal(readKernelQueueStats(QUEUE, bed.dom0)?.copyRange, PGWIRE_COPY_BYTES);
      const c = connect();
      await waitFor('startup reply, unprotected', () => zs(c).length === 1);
      q(c, 'BEGIN');
      await waitFor('BEGIN reply at once', () => zs(c).length === 2);
      q(c, 'T:UPDATE 1');
      await waitFor('UPDATE reply at once', () => zs(c).length === 3);
      q(c, 'COMMIT');
      await sleep(300);
      assert.equal(zs(c).length, 3, 'the COMMIT reply is held');
      assert.ok(nb.gate.held >= 1);
      commitEpoch();
      await waitFor('COMMIT reply after the release', () => zs(c).length === 4);
      assert.deepEqual(zs(c), ['I', 'T', 'T', 'I']);
      const pg = nb.describe().pgwire as Record<string, number>;
      assert.ok(pg.commits >= 1 && pg.segmentsHeld >= 1 && pg.opaqueFlows === 0, JSON.stringify(pg));
      nb.close();
      nb.close();
      nb = null;
      assert.deepEqual(listRules({ domain: DOMAIN, netns: bed.dom0 }), []);
    });

    it('63.3 off: every packet waits for its epoch (the connection itself cannot open before a release)', async () => {
      nb = open('off');
      const c = connect();
      await sleep(300);
      assert.equal(zs(c).length, 0);
      const t0 = Date.now();
      while (zs(c).length === 0 && Date.now() - t0 < 10_000) {
        commitEpoch();
        await sleep(50);
      }
      assert.equal(zs(c).length, 1, 'startup reply after releases');
      q(c, 'BEGIN');
      await sleep(300);
      assert.equal(zs(c).length, 1, 'even the BEGIN reply is held');
      commitEpoch();
      await waitFor('BEGIN reply', () => zs(c).length === 2);
      nb.close();
      nb = null;
    });

    it('63.4 dscp: packets the guest marks DSCP 59 are held, others leave at once', async function () {
      const mark = spawnSync(
        'ip',
        [
          'netns',
          'exec',
          bed.guest,
          'iptables',
          '-w',
          '-t',
          'mangle',
          '-A',
          'OUTPUT',
          '-p',
          'tcp',
          '--sport',
          '5433',
          '-j',
          'DSCP',
          '--set-dscp',
          '59',
        ],
        { encoding: 'utf8' },
      );
      if (mark.status !== 0) {
        console.log(`      skipped: iptables DSCP target unavailable: ${mark.stderr.trim()}`);
        this.skip();
      }
      nb = open('dscp');
      const plain = connect(5432);
      await waitFor('unmarked startup reply at once', () => zs(plain).length === 1);
      const marked = connect(5433);
      await sleep(300);
      assert.equal(zs(marked).length, 0, 'marked: even the SYN-ACK waits');
      q(plain, 'COMMIT');
      await waitFor('unmarked COMMIT reply at once', () => zs(plain).length === 2);
      const t0 = Date.now();
      while (zs(marked).length === 0 && Date.now() - t0 < 10_000) {
        commitEpoch();
        await sleep(50);
      }
      assert.equal(zs(marked).length, 1);
      nb.close();
      nb = null;
    });

    it('63.6 dscp in the kernel: only marked packets reach the queue; the rest never do', async function () {
      const mark = spawnSync(
        'ip',
        [
          'netns',
          'exec',
          bed.guest,
          'sh',
          '-c',
          'iptables -w -t mangle -C OUTPUT -p tcp --sport 5433 -j DSCP --set-dscp 59 2>/dev/null || iptables -w -t ' +
            'mangle -A OUTPUT -p tcp --sport 5433 -j DSCP --set-dscp 59',
        ],
        { encoding: 'utf8' },
      );
      if (mark.status !== 0) {
        console.log(`      skipped: iptables DSCP target unavailable: ${mark.stderr.trim()}`);
        this.skip();
      }
      nb?.close();
      epoch = 0;
      nb = openNetBuffer({
        driver: 'nfqueue',
        domain: DOMAIN,
        match: { physdevIn: bed.vif },
        netns: bed.dom0,
        queueNum: QUEUE,
        commitProtection: 'dscp',
        dscpInKernel: true,
      });
      // The tc program (the addon's bpf part) records what leaves; an iptables DSCP match cannot.
      const bpf = loadAddon().parts.bpf === true;
      assert.equal(nb.describe().classifiedBy, bpf ? 'bpf' : 'iptables');
      if (!bpf) assert.equal(nb.exposure, null, 'nothing unprotected is seen, so nothing is tracked');
      const plain = connect(5432);
      await waitFor('unmarked startup reply at once', () => zs(plain).length === 1);
      q(plain, 'COMMIT');
      await waitFor('unmarked COMMIT reply at once', () => zs(plain).length === 2);
      assert.equal(nb.nfqueue!.ledger.stats.received, 0, 'unmarked packets never reached the queue');
      if (bpf) {
        commitEpoch(); // the barrier reads the program's exposure ring
        assert.ok(nb.exposure!.flowCount >= 1, 'what left in the kernel reached the failover reset tracker');
      }
      const marked = connect(5433);
      await sleep(300);
      assert.equal(zs(marked).length, 0, 'marked: even the SYN-ACK waits');
      assert.ok(nb.nfqueue!.ledger.stats.received > 0);
      const t0 = Date.now();
      while (zs(marked).length === 0 && Date.now() - t0 < 10_000) {
        commitEpoch();
        await sleep(50);
      }
      assert.equal(zs(marked).length, 1);
      nb.close();
      nb = null;
    });

    it('63.5 setup after a crash that left the rules: replaced, not duplicated; close twice', () => {
      const first = open('pgwire');
      first.nfqueue!.close(); // the process "died": queue gone, rules still installed
      assert.equal(listRules({ domain: DOMAIN, netns: bed.dom0 }).filter((r) => r.includes('-A PREROUTING')).length, 2);
      nb = open('pgwire');
      assert.equal(listRules({ domain: DOMAIN, netns: bed.dom0 }).filter((r) => r.includes('-A PREROUTING')).length, 2);
      assert.ok(readKernelQueueStats(QUEUE, bed.dom0));
      nb.close();
      nb.close();
      nb = null;
      assert.deepEqual(listRules({ domain: DOMAIN, netns: bed.dom0 }), []);
    });
  });
});

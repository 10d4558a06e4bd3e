// 70 guest patches: the patched PostgreSQL (guest-patches/postgresql, built by
// scripts/guest-patches/build-postgresql.sh; REMUSDB_PG_PATCHED_BIN) end to end over real
// TCP on loopback, captured with tcpdump and judged by dom0's own `dscpClassifier()`:
// commit acknowledgements (explicit COMMIT, autocommit statements) leave marked DSCP 59
// and are held; results inside a transaction block are released; after a commit the
// socket's own TOS is back; the failover signal aborts a transaction that is not
// committing while a committing one completes. On a stock guest kernel the patch marks
// with IP_TOS / IPV6_TCLASS itself, which is what runs here.
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { dscpClassifier, PROTECTED_DSCP } from '../dom0/net/classify-dscp';
import { ROOT } from './support/helpers';
import { Capture, dataSegments, type Segment, whyNoTcpdump } from './support/guest-pcap';
import { buildTosPreload, PgCluster, patchedPgBin } from './support/guest-pg';
import type { PgClient } from './support/guest-pgclient';

const APP_TOS = 0x20; // DSCP 8 (CS1): the "application's own" marking
const hold = dscpClassifier();

/** Server→client data segments of one client whose payload contains `text`. */
function segmentsWith(segs: Segment[], serverPort: number, client: PgClient, text: string): Segment[] {
  return dataSegments(segs, serverPort, client.localPort).filter((s) => s.payload.includes(text));
}

function verdicts(segs: Segment[]): string[] {
  return segs.map((s) => hold(s.ip, s.hwProtocol));
}

describe('70 guest patches: PostgreSQL commit protection', function () {
  this.timeout(120_000);
  const found = patchedPgBin();
  const why = 'why' in found ? found.why : whyNoTcpdump();
  let cluster: PgCluster | null = null;
  let tmp = '';

  before(async function () {
    if (why || 'why' in found) {
      console.log(`      skipped: ${why}`);
      this.skip();
    }
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'remusdb-70-'));
    fs.chmodSync(tmp, 0o755);
    const preload = buildTosPreload(ROOT, tmp);
    cluster = await PgCluster.start({
      bin: found.bin,
      env: { LD_PRELOAD: preload, REMUSDB_TEST_TOS: String(APP_TOS) },
    });
    const c = await cluster.connect();
    await c.query('CREATE TABLE t (k text PRIMARY KEY, v int)');
    c.close();
  });

  after(async () => {
    await cluster?.stop();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  /** Runs `body` with one client while tcpdump captures the server's port on lo. */
  async function captured(host: string, body: (c: PgClient) => Promise<void>): Promise<[Segment[], PgClient]> {
    const cap = await Capture.start(path.join(tmp, `cap-${Date.now()}.pcap`), 'lo', `tcp port ${cluster!.port}`);
    const c = await cluster!.connect(host);
    try {
      await body(c);
    } finally {
      c.close();
    }
    return [await cap.stop(), c];
  }

  for (const host of ['127.0.0.1', '::1']) {
    it(`${host}: marks the COMMIT acknowledgement, not the results inside the transaction`, async () => {
      const [segs, c] = await captured(host, async (cl) => {
        assert.equal((await cl.query('BEGIN')).status, 'T');
        const ins = await cl.query(`INSERT INTO t VALUES ('tx-${host}', 1) RETURNING 'intx-row-${host}'`);
        assert.equal(ins.status, 'T');
        const sel = await cl.query(`SELECT 'intx-select-${host}'`);
        assert.equal(sel.status, 'T');
        const commit = await cl.query('COMMIT');
        assert.deepEqual([commit.tags, commit.status], [['COMMIT'], 'I']);
      });
      const port = cluster!.port;
      const commitSegs = segmentsWith(segs, port, c, 'COMMIT\0');
      assert.ok(commitSegs.length >= 1, 'the COMMIT acknowledgement was captured');
      assert.deepEqual(
        commitSegs.map((s) => s.dscp),
        commitSegs.map(() => PROTECTED_DSCP),
      );
      assert.ok(
        commitSegs.every((s) => s.payload.includes(Buffer.from('Z\0\0\0\x05I', 'latin1'))),
        'ReadyForQuery(I) travels with it',
      );
      assert.deepEqual(
        verdicts(commitSegs),
        commitSegs.map(() => 'hold'),
      );
      const inTx = [
        ...segmentsWith(segs, port, c, `intx-row-${host}`),
        ...segmentsWith(segs, port, c, `intx-select-${host}`),
        ...segmentsWith(segs, port, c, 'BEGIN\0'),
      ];
      assert.equal(inTx.length, 3, 'BEGIN, INSERT … RETURNING and SELECT replies were captured');
      assert.deepEqual(
        inTx.map((s) => s.dscp),
        [APP_TOS >> 2, APP_TOS >> 2, APP_TOS >> 2],
      );
      assert.deepEqual(verdicts(inTx), ['release', 'release', 'release']);
    });
  }

  it("marks the acknowledgement of an autocommit statement, then restores the socket's own TOS", async () => {
    const [segs, c] = await captured('127.0.0.1', async (cl) => {
      const r = await cl.query("INSERT INTO t VALUES ('auto', 2)");
      assert.deepEqual([r.tags, r.status], [['INSERT 0 1'], 'I']);
      await cl.query('BEGIN');
      await cl.query("SELECT 'after-commit-row'");
      await cl.query('ROLLBACK');
    });
    const port = cluster!.port;
    const ack = segmentsWith(segs, port, c, 'INSERT 0 1\0');
    assert.equal(ack.length, 1);
    assert.equal(ack[0].dscp, PROTECTED_DSCP);
    assert.equal(hold(ack[0].ip, ack[0].hwProtocol), 'hold');
    const later = segmentsWith(segs, port, c, 'after-commit-row');
    assert.equal(later.length, 1);
    assert.equal(later[0].dscp, APP_TOS >> 2, 'deprotect restored DSCP 8 set by the application');
    assert.equal(later[0].ip[1] & 0x03, 0, 'ECN bits untouched');
    const startup = dataSegments(segs, port, c.localPort)[0];
    assert.equal(startup.dscp, APP_TOS >> 2, 'the startup exchange is not marked');
  });

  it('failover signal: aborts a transaction that is not committing, a committing one completes', async () => {
    const setup = await cluster!.connect();
    await setup.query(
      `CREATE TABLE slow (k text);
      CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ ` +
        `BEGIN PERFORM pg_sleep(1.5); RETURN NULL; END $$;
      CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON slow DEFERRABLE INITIALLY DEFERRED
        FOR EACH ROW EXECUTE FUNCTION slow_commit()`,
    );
    setup.close();
    const idle = await cluster!.connect();
    const committing = await cluster!.connect();
    await idle.query('BEGIN');
    await idle.query("INSERT INTO t VALUES ('speculative', 3)");
    await committing.query('BEGIN');
    await committing.query("INSERT INTO slow VALUES ('committing')");
    const trigger = path.join(tmp, 'failover');
    const agent = spawn(
      'sh',
      [
        path.join(ROOT, 'guest-patches/agent/remusdb-guest-agent.sh'),
        '--watch-file',
        trigger,
        '--interval-ms',
        '50',
        '--pg-data',
        path.join(cluster!.dir, 'data'),
      ],
      { stdio: 'ignore' },
    );
    try {
      await new Promise((r) => setTimeout(r, 300)); // the agent has read the file's initial state
      const commit = committing.query('COMMIT'); // sleeps 1.5 s inside its commit
      await new Promise((r) => setTimeout(r, 500));
      fs.writeFileSync(trigger, 'epoch 42\n'); // the plain-Linux failover signal
      const done = await commit;
      assert.match(cluster!.logText(), /received RemusDB failover signal/, 'the failover came while COMMIT ran');
      assert.deepEqual([done.tags, done.errors, done.status], [['COMMIT'], [], 'I']);
      const end = Date.now() + 10_000;
      while (!idle.closed && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
      assert.ok(idle.closed, "the non-committing transaction's connection was terminated");
      assert.match(idle.unsolicitedErrors().join(), /aborted by failover/);
      const check = await cluster!.connect();
      const rows = await check.query("SELECT k FROM t WHERE k = 'speculative' UNION ALL SELECT k FROM slow");
      assert.deepEqual(
        rows.messages.filter((m) => m.type === 'D').map((m) => m.body.subarray(6).toString()),
        ['committing'],
      );
      const still = await committing.query('SELECT 1');
      assert.deepEqual(still.errors, [], 'the committed session lives on');
      check.close();
      committing.close();
    } finally {
      agent.kill();
    }
  });
});

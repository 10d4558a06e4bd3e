// 74 coordination end to end: a real etcd, a real `remusdb backup` and `remusdb protect
// sim:c74`, both with --coordination, the replication link through a TCP proxy this test can
// cut. A cut longer than the heartbeat timeout while both still reach etcd: the backup starts
// a takeover, cannot claim the key the living primary renews, and does not fail over; the
// primary reconnects and the takeover is cancelled. Then the primary is killed: the backup
// claims the key once the lease has ended, and only then resumes the domain.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CuttableProxy } from '../dom0/util/cuttable-proxy';
import { type EtcdMember, haveEtcd, startEtcd } from './support/etcd';
import { freePort, processWorld, until } from './support/helpers';

const TTL_S = 2;

describe('74 coordination end to end (real etcd)', function () {
  this.timeout(180_000);
  const { dir, start, status } = processWorld('coord');
  let etcd: EtcdMember | null = null;
  let proxy: CuttableProxy | null = null;
  before(async function () {
    if (!haveEtcd()) this.skip(); // scripts/setup.sh installs etcd-server; CI always has it
    etcd = await startEtcd('t74');
  });
  after(async () => {
    proxy?.close();
    await etcd?.stop();
  });

  it('74.1 a link cut while both reach etcd: no failover; a killed primary: takeover after its lease', async () => {
    const coord = ['--coordination', etcd!.endpoint.replace('http://', 'etcd://'), '--owner-ttl', String(TTL_S)];
    const port = await freePort();
    start(['backup', '--listen', `127.0.0.1:${port}`, '--insecure', ...coord], 'backup.log');
    const backupSock = `backup-${port}.sock`;
    await until(async () => fs.existsSync(path.join(dir, backupSock)), 10_000, 'backup');
    proxy = new CuttableProxy(port);
    await proxy.listen();
    const protectArgs = ['protect', 'sim:c74', `127.0.0.1:${proxy.port}`, '--insecure', '--memory', '64MiB'];
    const metricsPort = await freePort();
    const metrics = ['--metrics', `127.0.0.1:${metricsPort}`];
    const primary = start([...protectArgs, '--heartbeat-timeout', '1000', ...coord, ...metrics], 'primary.log');
    const before = await until(
      async () => {
        const s = await status('primary-c74.sock');
        return Number(s.ackedEpoch) > 5 ? s : null;
      },
      60_000,
      'protection',
    );
    const c = before.coordination as Record<string, unknown>;
    assert.equal(c.mode, 'etcd');
    assert.equal(c.owned, true, 'the primary owns the domain');
    assert.equal(c.key, '/remusdb/v1/domains/c74/owner');
    const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    assert.match(text, /^remusdb_ownership_provable\{[^}]*\} 1$/m, 'the metric says the primary owns');
    const valid = Number(/^remusdb_ownership_valid_seconds\{[^}]*\} ([\d.]+)$/m.exec(text)?.[1]);
    assert.ok(valid > 0 && valid <= TTL_S, `ownership proven for ${valid} s more`);

    await proxy.cut(4000); // > the heartbeat timeout: the backup starts a takeover it cannot win
    const log = (): string => fs.readFileSync(path.join(dir, 'backup.log'), 'utf8');
    assert.match(log(), /claiming c74 in etcd before taking over/);
    const after = await until(
      async () => {
        const s = await status('primary-c74.sock');
        return Number(s.ackedEpoch) > Number(before.ackedEpoch) + 5 && s.state === 'protected' ? s : null;
      },
      30_000,
      'protected again after the cut',
    );
    const b = await status(backupSock);
    assert.equal(b.failovers, 0, 'no failover while the primary owned the domain');
    assert.match(log(), /takeover cancelled: the primary reconnected/);
    assert.equal((after.coordination as Record<string, unknown>).owned, true);

    const killedAt = Date.now();
    primary.kill('SIGKILL');
    const resumed = await until(
      async () => {
        const s = await status(backupSock);
        return Number(s.failovers) === 1 ? s : null;
      },
      30_000,
      'a takeover',
    );
    const tookMs = Date.now() - killedAt;
    assert.equal((resumed.coordination as Record<string, unknown>).owner_key, '/remusdb/v1/domains/c74/owner');
    assert.ok(tookMs >= 500, `the takeover waited for the lease (${tookMs} ms)`);
    assert.ok(tookMs <= TTL_S * 1000 + 5000, `and came within the TTL and the heartbeat (${tookMs} ms)`);
    assert.match(log(), /FAILOVER \(.*the domain's key in the coordination service is ours\)/);
  });
});

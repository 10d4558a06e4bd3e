// 75 partitions (network namespaces): hosts p (primary dom0), b (backup dom0), c (the client)
// and e0–e2 (a 3-member etcd cluster) on one bridge (members crash in 75.6); `remusdb protect sim:… --client c` and
// `remusdb backup`, both with --coordination, and partitions made with iptables in the hosts'
// namespaces while the client reaches both dom0s — the case where two copies would answer.
// What the client received is the record: a TCP server on c logs every output line with the
// address it came from, in arrival order. The invariant: every line from the primary arrived
// before the first line from the backup (at no instant did both copies release outputs);
// and the side that must own the domain at the end does.
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Etcd3 } from 'etcd3';
import { controlRequest } from '../dom0/service/control';
import { type EtcdMember, startEtcdOnNet, whyNoEtcdNet } from './support/etcd';
import { sleep, tmpDir, until } from './support/helpers';
import { type PartitionNet, createPartitionNet } from './support/partition-net';
import { LINE_CLIENT } from './support/line-client';
import { NsProcess } from './support/pg-netns';

const HOSTS = ['p', 'b', 'c', 'e0', 'e1', 'e2'];
const ETCD = ['e0', 'e1', 'e2'];
const TTL_S = 2;
const ROOT = path.join(__dirname, '..', '..');

describe('75 partitions in network namespaces (real etcd, real processes)', function () {
  this.timeout(240_000);
  let net: PartitionNet | null = null;
  let etcd: EtcdMember[] = [];
  const dir = tmpDir('partitions');
  before(async function () {
    if (whyNoEtcdNet()) this.skip();
    net = createPartitionNet('r75', 75, HOSTS);
    etcd = await startEtcdOnNet(net, ETCD);
  });
  after(async () => {
    for (const m of etcd) await m.stop();
    net?.destroy();
  });

  /** A protected sim domain with its backup and client (env: added to both processes'); what to look at. */
  async function protectedPair(
    domain: string,
    env: NodeJS.ProcessEnv = {},
  ): Promise<{
    client: NsProcess;
    primaryStatus: () => Promise<Record<string, unknown>>;
    backupStatus: () => Promise<Record<string, unknown>>;
    primaryLog: () => string;
    stop: () => void;
  }> {
    const n = net!;
    const coord = [
      '--coordination',
      `etcd://${ETCD.map((h) => `${n.ip(h)}:2379`).join(',')}`,
      '--owner-ttl',
      String(TTL_S),
    ];
    const client = new NsProcess(n.ns('c'), LINE_CLIENT, [n.ip('c')]);
    await until(async () => client.has('READY'), 10_000, 'the client listens');
    const runDir = (h: string): string => fs.mkdtempSync(path.join(dir, `${domain}-${h}-`));
    const [pDir, bDir] = [runDir('p'), runDir('b')];
    const node = (args: string[]): string[] => [process.execPath, path.join(ROOT, 'bin', 'remusdb'), ...args];
    const logOf = (d: string, name: string): number => fs.openSync(path.join(d, name), 'a');
    const backup = n.spawn(
      'b',
      node(['backup', '--listen', `${n.ip('b')}:7400`, '--insecure', ...coord]),
      logOf(bDir, 'backup.log'),
      {
        ...process.env,
        ...env,
        REMUSDB_RUN_DIR: bDir,
        FAKETIME_TIMESTAMP_FILE: env.FAKETIME_TIMESTAMP_FILE && `${env.FAKETIME_TIMESTAMP_FILE}.b`,
      },
    );
    const primary = n.spawn(
      'p',
      node([
        'protect',
        `sim:${domain}`,
        `${n.ip('b')}:7400`,
        '--insecure',
        '--memory',
        '64MiB',
        '--heartbeat-timeout',
        '1000',
        '--client',
        `${n.ip('c')}:9000`,
        ...coord,
      ]),
      logOf(pDir, 'primary.log'),
      {
        ...process.env,
        ...env,
        REMUSDB_RUN_DIR: pDir,
        FAKETIME_TIMESTAMP_FILE: env.FAKETIME_TIMESTAMP_FILE && `${env.FAKETIME_TIMESTAMP_FILE}.p`,
      },
    );
    const primaryStatus = () => controlRequest(path.join(pDir, `primary-${domain}.sock`), { cmd: 'status' });
    const backupStatus = () => controlRequest(path.join(bDir, 'backup-7400.sock'), { cmd: 'status' });
    await until(
      async () => Number((await primaryStatus().catch(() => ({}) as Record<string, unknown>)).ackedEpoch ?? 0) > 5,
      60_000,
      'protected',
    );
    return {
      client,
      primaryStatus,
      backupStatus,
      primaryLog: () => fs.readFileSync(path.join(pDir, 'primary.log'), 'utf8'),
      stop: () => {
        for (const k of [primary, backup]) k.kill('SIGKILL');
        client.kill();
        n.heal();
      },
    };
  }

  /** Lines the client received, by sender: the invariant that the primary's all came first. */
  function received(client: NsProcess): { fromP: number; fromB: number; lastP: number; firstB: number } {
    const lines = client.lines.filter((l) => l.startsWith('L '));
    const idx = (host: string): number[] => lines.flatMap((l, i) => (l.split(' ')[1] === net!.ip(host) ? [i] : []));
    const p = idx('p'),
      b = idx('b');
    return { fromP: p.length, fromB: b.length, lastP: p.at(-1) ?? -1, firstB: b[0] ?? Number.POSITIVE_INFINITY };
  }

  /** The backup takes over and serves the client; every line from the primary arrived before its first. */
  async function takeoverWithoutOverlap(
    pair: { client: NsProcess; backupStatus: () => Promise<Record<string, unknown>> },
    takeoverMs: number,
    settleMs: number,
  ): Promise<void> {
    await until(async () => Number((await pair.backupStatus()).failovers) === 1, takeoverMs, 'the backup takes over');
    await until(async () => received(pair.client).fromB > 0, 10_000, 'the resumed copy serves the client');
    await sleep(settleMs);
    const r = received(pair.client);
    assert.ok(
      r.lastP < r.firstB,
      `a line from the primary (#${r.lastP}) arrived after the backup's first (#${r.firstB})`,
    );
  }

  it('75.1 primary and backup cut apart, both reach etcd and the client: no failover; the primary serves', async () => {
    const pair = await protectedPair('s751');
    try {
      net!.cut('p', 'b');
      await sleep(5000); // past the heartbeat timeout and the primary's hold: it runs unprotected, owning
      const mid = received(pair.client).fromP;
      await sleep(3000);
      const r = received(pair.client);
      assert.equal((await pair.backupStatus()).failovers, 0, 'the backup did not take over');
      assert.equal(r.fromB, 0, 'nothing from the backup reached the client');
      assert.ok(r.fromP > mid, `the primary's outputs still flow (${mid} → ${r.fromP})`);
      const c = (await pair.primaryStatus()).coordination as Record<string, unknown>;
      assert.equal(c.owned, true);
    } finally {
      pair.stop();
    }
  });

  it('75.2 the unprotected primary then loses etcd too: its outputs stop before the backup takes over', async () => {
    const pair = await protectedPair('s752');
    try {
      net!.cut('p', 'b');
      await sleep(5000); // unprotected, outputs flowing to the client
      assert.ok(received(pair.client).fromP > 0);
      for (const e of ETCD) net!.cut('p', e); // the client still reaches p: a split brain without ownership
      await takeoverWithoutOverlap(pair, 20_000, 2000);
    } finally {
      pair.stop();
    }
  });

  it('75.3 the backup isolated from everything: no failover; the primary owns and serves', async () => {
    const pair = await protectedPair('s753');
    try {
      for (const h of ['p', 'c', ...ETCD]) net!.cut('b', h);
      await sleep(5000);
      const mid = received(pair.client).fromP;
      await sleep(3000);
      const r = received(pair.client);
      assert.equal((await pair.backupStatus()).failovers, 0);
      assert.equal(r.fromB, 0);
      assert.ok(r.fromP > mid, 'the primary serves on');
    } finally {
      pair.stop();
    }
  });

  it("75.4 an etcd minority on the primary's side (the link intact): the backup takes over and fences it", async () => {
    const pair = await protectedPair('s754');
    try {
      // p reaches only e0, and e0 is cut from e1 and e2: p can renew nothing, b reaches the majority.
      for (const e of ['e1', 'e2']) {
        net!.cut('p', e);
        net!.cut('e0', e);
      }
      await takeoverWithoutOverlap(pair, 30_000, 1000);
      const events = (await pair.backupStatus()).events as Array<Record<string, unknown>>;
      assert.ok(
        events.some((e) => e.name === 'claiming' && /cannot prove/.test(String(e.reason))),
        "the claim began on the primary's word",
      );
      await until(async () => /ended: it runs on the backup now/.test(pair.primaryLog()), 10_000, 'the primary fenced');
    } finally {
      pair.stop();
    }
  });

  it('75.5 wall clocks jump hours on both hosts: no failover or lapse; with a partition, no overlap', async function () {
    if (!fs.existsSync(FAKETIME_LIB)) this.skip();
    const clock = path.join(dir, 'clock'); // libfaketime reads each host's offset from <clock>.p / <clock>.b
    const jump = (host: 'p' | 'b', offset: string): void => fs.writeFileSync(`${clock}.${host}`, `${offset}\n`);
    jump('p', '+0');
    jump('b', '+0');
    const pair = await protectedPair('s755', {
      LD_PRELOAD: FAKETIME_LIB,
      FAKETIME_TIMESTAMP_FILE: clock,
      FAKETIME_CACHE_DURATION: '1', // the offset is read again every second
      FAKETIME_DONT_FAKE_MONOTONIC: '1', // the wall clock alone jumps, as NTP or an operator would move it
    });
    try {
      const seen = async (): Promise<number> => {
        const c = (await pair.primaryStatus()).coordination as Record<string, unknown>;
        assert.equal(c.owned, true, 'the primary proves ownership across the jump');
        return received(pair.client).fromP;
      };
      for (const [host, offset] of [
        ['p', '+1h'],
        ['b', '+1h'],
        ['p', '-2h'],
        ['b', '-2h'],
      ] as const) {
        jump(host, offset);
        const skewMs = Number(faked(`${clock}.${host}`)) - Date.now();
        assert.ok(Math.abs(skewMs) > 50 * 60_000, `a process of ${host} sees its wall clock moved (${skewMs} ms)`);
        const before = await seen();
        await sleep(2500); // the offset is read within 1 s; more than a TTL passes
        assert.ok((await seen()) > before, `outputs flow after ${host}'s clock moved ${offset}`);
      }
      const st = await pair.backupStatus();
      assert.equal(st.failovers, 0, 'no failover');
      assert.equal(received(pair.client).fromB, 0);
      // p loses the backup, then etcd, and its wall clock goes back two more hours at that moment: a
      // proof kept in wall-clock time would last hours; in monotonic time it ends within the TTL.
      net!.cut('p', 'b');
      await sleep(5000); // as in 75.2: p runs unprotected, its outputs flowing, when it loses etcd
      for (const e of ETCD) net!.cut('p', e);
      jump('p', '-4h');
      await takeoverWithoutOverlap(pair, 20_000, 2000);
    } finally {
      pair.stop();
    }
  });

  it('75.6 etcd members crash one at a time: no takeover; quorum lost: outputs wait, no takeover', async () => {
    const pair = await protectedPair('s756');
    try {
      const owned = async (): Promise<boolean> =>
        ((await pair.primaryStatus()).coordination as Record<string, unknown>).owned === true;
      // One member down leaves a quorum. With --owner-ttl 2 a proof lasts 0.98 s after a renewal's
      // send, so a crashed leader (an election, 0.5 s timeout here) may lapse it briefly: outputs
      // wait meanwhile, never pass. With the default TTL (5 s: 3.95 s) an election fits.
      const lapses: number[] = [];
      for (const [i, m] of etcd.entries()) {
        await m.kill();
        const before = received(pair.client).fromP;
        let lapse = 0,
          longest = 0;
        for (let t = 0; t < 40; t++) {
          lapse = (await owned()) ? 0 : lapse + 100;
          longest = Math.max(longest, lapse);
          await sleep(100);
        }
        lapses.push(longest);
        assert.ok(longest < TTL_S * 1000, `e${i} down: ownership unprovable for ${longest} ms at most`);
        assert.ok(await owned(), `e${i} down: provable again`);
        assert.ok(received(pair.client).fromP > before, `outputs flow with e${i} down`);
        m.restart();
        await memberServes(m); // it has rejoined (a linearizable read through it) before the next one goes
      }
      console.log(`      longest lapse with one member down: ${lapses.join(', ')} ms (e0, e1, e2)`);
      await etcd[0].kill();
      await etcd[1].kill(); // no quorum: nobody can renew or claim
      await until(async () => !(await owned()), 10_000, 'the proof lapses without quorum');
      await sleep(500);
      const stalled = received(pair.client).fromP;
      await sleep(3000);
      assert.equal(received(pair.client).fromP, stalled, 'nothing is released while ownership is unprovable');
      etcd[0].restart();
      etcd[1].restart();
      await until(async () => await owned(), 20_000, 'ownership provable again');
      await until(async () => received(pair.client).fromP > stalled, 10_000, 'the held outputs go out');
      assert.equal((await pair.backupStatus()).failovers, 0, 'no takeover');
      assert.equal(received(pair.client).fromB, 0);
    } finally {
      pair.stop();
    }
  });
});

const FAKETIME_LIB = '/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1';

/** Resolves once a linearizable read through member m succeeds (it is back in the cluster, caught up). */
async function memberServes(m: EtcdMember): Promise<void> {
  const client = new Etcd3({ hosts: m.endpoint, dialTimeout: 1000 });
  try {
    await until(
      async () => {
        await client
          .get('/probe')
          .options({ deadline: new Date(Date.now() + 1000) })
          .string();
        return true;
      },
      30_000,
      `etcd member ${m.endpoint} serves again`,
    );
  } finally {
    client.close();
  }
}

/** Date.now() in a process started as the test's hosts are, with the offset file given. */
function faked(offsetFile: string): string {
  const env = { ...process.env, LD_PRELOAD: FAKETIME_LIB, FAKETIME_TIMESTAMP_FILE: offsetFile };
  return spawnSync(process.execPath, ['-e', 'console.log(Date.now())'], { env, encoding: 'utf8' }).stdout.trim();
}

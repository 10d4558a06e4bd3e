// 67 protect with a network buffer: `remusdb protect --net-buffer nfqueue --vif IF` as a
// real process in the netns test bed's dom0 (guest ── vif1.0 ─ br0 ─ cl0 ── client). The
// guest's answers to a client's pings are its output: while protected they leave only when
// their checkpoint is acknowledged (round trips grow to about half the interval and more);
// the rules are installed at start and removed at stop; after a SIGKILL of protect the
// guest's packets are dropped (never leaked) until the next protect replaces the stale
// rules. With a real backup and --commit-protection pgwire, a failover resets exactly the
// connection whose client saw an unprotected reply beyond the resumed checkpoint — the
// backup process does it, from the NET_EXPOSURE records it received. Option errors need no root.
import { strict as assert } from 'node:assert';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createTestbed, destroyTestbed, type Testbed } from '../dom0/net/netns-testbed';
import { listRules } from '../dom0/net/iptables-rules';
import { GateSet } from '../dom0/net/domain-net';
import { xenVifs } from '../dom0/hypervisor/xen/xen-driver';
import type { OutputGate } from '../dom0/ports';
import { ROOT, runCli, tmpDir } from './support/helpers';
import { controlRequest } from '../dom0/service/control';
import { sysctl } from '../dom0/net/netns-testbed';
import { loadAddon } from '../dom0/native';
import { FAKE_PG_CLIENT, FAKE_PG_SERVER, NsProcess, sleep, waitFor, whyNoNetns } from './support/pg-netns';

const PREFIX = process.env.RDB67_PREFIX ?? 'rdb67';
const INTERVAL_MS = 200;

interface PingResult {
  sent: number;
  received: number;
  avgMs: number | null;
}

// Guest: a UDP echo service on port 7777 (its answers are the guest's output).
const ECHO_SERVER = `const s = require('dgram').createSocket('udp4');
s.on('message', (m, r) => s.send(m, r.port, r.address));
s.bind(7777, process.argv[1], () => console.log('ready'));`;

// Client: count datagrams 100 ms apart, then waits 2 s for the last answers.
const ECHO_CLIENT =
  `const s = require('dgram').createSocket('udp4');
const [host, count] = [process.argv[1], Number(process.argv[2])];
const sentAt = new Map(); const rtts = [];
s.on('message', (m) => { const t = sentAt.get(m.toString()); if (t !== undefined) { rtts.push(Date.now() - t); ` +
  `sentAt.delete(m.toString()); } });
let i = 0;
const tick = setInterval(() => {
  if (i === count) { clearInterval(tick); setTimeout(() => { console.log(JSON.stringify({ sent: count, received: ` +
  `rtts.length,
    avgMs: rtts.length ? rtts.reduce((a, b) => a + b, 0) / rtts.length : null })); process.exit(0); }, 2000); return; }
  const id = String(i++); sentAt.set(id, Date.now()); s.send(id, 7777, host);
}, 100);`;

function ping(bed: Testbed, count: number): PingResult {
  const r = spawnSync(
    'ip',
    ['netns', 'exec', bed.client, process.execPath, '-e', ECHO_CLIENT, bed.guestIp4, String(count)],
    { encoding: 'utf8', timeout: 60_000 },
  );
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout.trim()) as PingResult;
}

describe('67 protect with a network buffer', function () {
  this.timeout(120_000);

  it('67.1 option errors are clear and nothing is installed', () => {
    const cases: Array<[string[], RegExp]> = [
      [['--net-buffer', 'plug'], /name them with --vif/],
      [['--commit-protection', 'pgwire', '--vif', 'lo'], /name the driver/],
      [['-n', '-F', '--vif', 'lo'], /cannot go with --vif/],
      [['--net-buffer', 'plug', '--vif', 'lo', '--max-in-flight', '2'], /one unacknowledged checkpoint/],
      [['--net-buffer', 'plug', '--vif', 'lo', '--commit-protection', 'dscp'], /use --net-buffer nfqueue/],
      [['--net-buffer', 'nfqueue', '--vif', 'no such'], /not an interface name/],
      [['--net-buffer', 'plug', '--vif', 'rdb67none0'], /no network interface rdb67none0/],
      [
        ['--net-buffer', 'nfqueue', '--vif', 'lo', '--commit-protection', 'dscp', '--pgwire-in-kernel'],
        /--pgwire-in-kernel goes with --commit-protection pgwire/,
      ],
    ];
    for (const [args, re] of cases) {
      const r = runCli(
        ['protect', 'sim:t67', '--blackhole', '--memory', '16MiB', '--disk', '0', '--seconds', '1', ...args],
        30_000,
      );
      assert.notEqual(r.status, 0, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, re, args.join(' '));
      assert.match(r.stderr, /\[ERR_(BAD_ARGUMENT|NETBUF)\]/);
    }
  });

  it('67.1b nfqueue without br_netfilter hooks is refused before the domain is opened', function () {
    const why = whyNoNetns();
    if (why) {
      console.log(`      skipped: ${why}`);
      this.skip();
    }
    const ns = 'rdb67pf';
    spawnSync('ip', ['netns', 'del', ns]);
    assert.equal(spawnSync('ip', ['netns', 'add', ns]).status, 0);
    try {
      // Missing (no br_netfilter) or 0: either way bridged packets would bypass the queue.
      spawnSync('ip', ['netns', 'exec', ns, 'sysctl', '-qw', 'net.bridge.bridge-nf-call-iptables=0']);
      const args = ['protect', 'sim:t67pf', '--blackhole', '--memory', '16MiB', '--disk', '0', '--seconds', '1'];
      const r = spawnSync(
        'ip',
        ['netns', 'exec', ns, process.execPath, path.join(ROOT, 'bin/remusdb'), ...args, '--net-buffer', 'nfqueue'],
        { encoding: 'utf8', timeout: 30_000 },
      );
      assert.notEqual(r.status, 0, r.stderr);
      assert.match(r.stderr, /net\.bridge\.bridge-nf-call-iptables is (0|missing).*\[ERR_NETBUF\]/);
      // Nothing was opened: the error is all protect said (no --vif needed to get this far).
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.equal(r.stdout.trim(), '', r.stdout);
    } finally {
      spawnSync('ip', ['netns', 'del', ns]);
    }
  });

  it('67.1c nfqueue without iptables is refused before the domain is opened, saying what to install', () => {
    const args = ['protect', 'sim:t67pt', '--blackhole', '--memory', '16MiB', '--disk', '0', '--seconds', '1'];
    const r = spawnSync(process.execPath, [path.join(ROOT, 'bin/remusdb'), ...args, '--net-buffer', 'nfqueue'], {
      encoding: 'utf8',
      timeout: 30_000,
      env: { ...process.env, PATH: path.dirname(process.execPath) }, // no iptables on this PATH
    });
    assert.notEqual(r.status, 0, r.stderr);
    assert.match(r.stderr, /with iptables, which is not installed here: install iptables .*\[ERR_NETBUF\]/);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  });

  it('67.5 one gate over all vifs: every step reaches each interface; vifs found in device order', () => {
    const calls: string[] = [];
    const fake = (n: string): OutputGate => ({
      held: 2,
      barrier: (e) => calls.push(`${n}b${e}`),
      release: (e) => calls.push(`${n}r${e}`),
      setPassThrough: (on) => calls.push(`${n}p${on}`),
      discard: () => calls.push(`${n}d`),
    });
    const g = new GateSet([fake('a'), fake('b')]);
    g.barrier(3);
    g.release(3);
    g.setPassThrough(true);
    g.discard();
    assert.deepEqual(calls, ['ab3', 'bb3', 'ar3', 'br3', 'aptrue', 'bptrue', 'ad', 'bd']);
    assert.equal(g.held, 4);
    const sys = tmpDir('t67sys');
    for (const n of ['vif7.10', 'vif7.2', 'vif70.0', 'vif7.0', 'eth0']) fs.mkdirSync(path.join(sys, n));
    assert.deepEqual(xenVifs(7, sys), ['vif7.0', 'vif7.2', 'vif7.10']);
    assert.deepEqual(xenVifs(8, sys), []);
    assert.deepEqual(xenVifs(7, path.join(sys, 'missing')), []);
  });

  describe('on the netns test bed (root)', () => {
    let bed: Testbed;
    let echo: NsProcess;
    const dir = tmpDir('t67');
    const kids: ChildProcess[] = [];
    let runs = 0;
    const logOf = (c: ChildProcess): string =>
      fs.readFileSync(path.join(dir, `protect-${(c as ChildProcess & { run: number }).run}.log`), 'utf8');
    const protect = (extra: string[] = []): ChildProcess => {
      const run = ++runs;
      const fd = fs.openSync(path.join(dir, `protect-${run}.log`), 'a');
      const c = spawn(
        'ip',
        [
          'netns',
          'exec',
          bed.dom0,
          process.execPath,
          path.join(ROOT, 'bin', 'remusdb'),
          'protect',
          'sim:t67',
          '--blackhole',
          '--memory',
          '16MiB',
          '--disk',
          '0',
          '--rate',
          '200',
          '-i',
          String(INTERVAL_MS),
          '--net-buffer',
          'nfqueue',
          '--vif',
          bed.vif,
          ...extra,
        ],
        { env: { ...process.env, REMUSDB_RUN_DIR: dir }, stdio: ['ignore', fd, fd] },
      );
      (c as ChildProcess & { run: number }).run = run;
      kids.push(c);
      return c;
    };
    const jumps = (): number =>
      listRules({ domain: 'sim-t67', netns: bed.dom0 }).filter((l) =>
        /^iptables: -A PREROUTING .*REMUSDB-sim-t67/.test(l),
      ).length;
    const installed = (): boolean => jumps() > 0;
    const exited = (c: ChildProcess): Promise<void> =>
      new Promise((r) => {
        if (c.exitCode !== null || c.signalCode) r();
        else c.once('exit', () => r());
      });

    before(async function () {
      const why = whyNoNetns();
      if (why) {
        console.log(`      skipped: ${why}`);
        this.skip();
      }
      bed = createTestbed(PREFIX);
      echo = new NsProcess(bed.guest, ECHO_SERVER, [bed.guestIp4]);
      await waitFor('echo service ready', () => echo.has('ready'));
    });
    afterEach(async () => {
      // a failed test must not leave its processes (and their queue) to the next
      for (const k of kids)
        if (k.exitCode === null && k.signalCode === null) {
          k.kill('SIGTERM');
          await exited(k);
        }
    });
    after(() => {
      echo?.kill();
      for (const k of kids) k.kill('SIGKILL');
      if (bed) destroyTestbed(PREFIX);
    });

    it('67.2 outputs wait for their checkpoint; rules come with protect and go with it', async () => {
      const before = ping(bed, 10);
      assert.equal(before.received, 10);
      const p = protect(['--trigger', 'timer']); // the interval alone paces: a reply waits for the next tick
      await waitFor('rules installed', installed, 30_000);
      await sleep(1000);
      const held = ping(bed, 20);
      console.log(
        `      round trip: unprotected ${before.avgMs?.toFixed(1)} ms, protected ` +
          `(-i ${INTERVAL_MS}) ${held.avgMs?.toFixed(1)} ms`,
      );
      assert.equal(held.received, 20, 'nothing lost while protected');
      assert.ok(
        held.avgMs! > INTERVAL_MS / 4 && held.avgMs! > 10 * before.avgMs!,
        `round trip while protected ${held.avgMs} ms (unprotected ${before.avgMs} ms, interval ${INTERVAL_MS} ms)`,
      );
      // The replies' hold times reach status (and the metrics' histogram): nfqueue sees each packet.
      const st = await controlRequest(path.join(dir, 'primary-t67.sock'), { cmd: 'status' });
      const ledger = (st.net as { interfaces: Array<{ ledger: { holdMsMax: number } }> }).interfaces[0].ledger;
      assert.ok(
        ledger.holdMsMax > INTERVAL_MS / 4 && ledger.holdMsMax < 20 * INTERVAL_MS,
        `longest hold ${ledger.holdMsMax} ms`,
      );
      p.kill('SIGTERM');
      await exited(p);
      assert.equal(p.exitCode, 0, logOf(p).slice(-2000));
      assert.equal(jumps(), 0, 'rules removed at stop');
      const after = ping(bed, 10);
      assert.equal(after.received, 10);
      assert.ok(after.avgMs! < INTERVAL_MS / 4, `round trip after stop ${after.avgMs} ms`);
    });

    it('67.2b --trigger output (default): a held reply starts its checkpoint at once', async () => {
      const before = ping(bed, 10);
      const p = protect();
      await waitFor('rules installed', installed, 30_000);
      await sleep(1000);
      const held = ping(bed, 20);
      console.log(
        `      round trip: unprotected ${before.avgMs?.toFixed(1)} ms, output-triggered ${held.avgMs?.toFixed(1)} ms`,
      );
      assert.equal(held.received, 20, 'nothing lost while protected');
      assert.ok(held.avgMs! < INTERVAL_MS / 4, `round trip ${held.avgMs} ms: the reply did not wait for a tick`);
      const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'remusdb'), 'status', '--json'], {
        env: { ...process.env, REMUSDB_RUN_DIR: dir },
        encoding: 'utf8',
      });
      const st = (JSON.parse(r.stdout).processes as Array<Record<string, unknown>>)[0];
      const ledger = (st.net as { interfaces: Array<{ ledger: Record<string, number> }> }).interfaces[0].ledger;
      assert.equal(st.trigger, 'output');
      assert.ok(Number(st.earlyCheckpoints) >= 20, `early checkpoints: ${st.earlyCheckpoints}`);
      assert.ok(ledger.released >= 20 && ledger.releasedAtOnce === 0, 'the replies were held, then released');
      p.kill('SIGTERM');
      await exited(p);
      assert.equal(p.exitCode, 0, logOf(p).slice(-2000));
    });

    it('67.3 a killed protect leaks nothing; the next one replaces its rules', async () => {
      const p1 = protect();
      await waitFor('rules installed', installed, 30_000);
      p1.kill('SIGKILL');
      await exited(p1);
      assert.equal(jumps(), 1, 'the rules stay after a crash');
      const dead = ping(bed, 10);
      assert.equal(dead.received, 0, "no listener: the guest's packets are dropped, never released unacknowledged");
      const p2 = protect();
      await waitFor('protect running again', () => logOf(p2).includes('protected: t67'), 60_000);
      assert.equal(jumps(), 1, 'one jump: the stale rules were replaced, not duplicated');
      const again = ping(bed, 10);
      assert.equal(again.received, 10);
      p2.kill('SIGTERM');
      await exited(p2);
      assert.equal(jumps(), 0);
    });

    it('67.4 failover on another process resets only the connection that saw unprotected output', async function () {
      await failoverResets(this, false);
    });

    it('67.4k the same with --pgwire-in-kernel: what left in the kernel reaches the backup', async function () {
      if (!loadAddon().parts.bpf) this.skip(); // built without libbpf-dev / clang
      await failoverResets(this, true);
    });

    async function failoverResets(ctx: Mocha.Context, inKernel: boolean): Promise<void> {
      const tag = inKernel ? 't67k' : 't67b';
      const backupPort = inKernel ? '7468' : '7467';
      // dom0 sends the RSTs from its bridge address (as a Xen dom0 does); the backup listens on dom0's loopback.
      sysctl(bed.dom0, ['net.ipv4.conf.all.route_localnet=1', 'net.ipv4.conf.br0.route_localnet=1']);
      spawnSync('ip', ['-n', bed.dom0, 'addr', 'add', '127.60.0.1/24', 'dev', 'br0']); // once for both cases
      assert.equal(spawnSync('ip', ['-n', bed.dom0, 'link', 'set', 'lo', 'up']).status, 0);
      const server = new NsProcess(bed.guest, FAKE_PG_SERVER, [bed.guestIp4, '5432']);
      const client = new NsProcess(bed.client, FAKE_PG_CLIENT, [bed.guestIp4]);
      try {
        await waitFor('fake PostgreSQL ready', () => server.has('ready'));
        const env = { ...process.env, REMUSDB_RUN_DIR: dir };
        const inDom0 = (args: string[], log: string): ChildProcess => {
          const c = spawn(
            'ip',
            ['netns', 'exec', bed.dom0, process.execPath, path.join(ROOT, 'bin', 'remusdb'), ...args],
            { env, stdio: ['ignore', fs.openSync(path.join(dir, log), 'a'), fs.openSync(path.join(dir, log), 'a')] },
          );
          kids.push(c);
          return c;
        };
        inDom0(['backup', '--listen', `127.0.0.1:${backupPort}`, '--insecure'], `backup-${tag}.log`);
        await sleep(1000);
        const p = inDom0(
          [
            'protect',
            `sim:${tag}`,
            `127.0.0.1:${backupPort}`,
            '--insecure',
            '--memory',
            '16MiB',
            '--disk',
            '0',
            '--rate',
            '200',
            '-i',
            '5000',
            '--heartbeat-timeout',
            '20000',
            '--net-buffer',
            'nfqueue',
            '--vif',
            bed.vif,
            '--commit-protection',
            'pgwire',
            '--queue',
            inKernel ? '7068' : '7067',
            ...(inKernel ? ['--pgwire-in-kernel'] : []),
            // The timer alone paces: with --trigger output a held output would start the next
            // checkpoint at once, and the reply's checkpoint would commit before the failover.
            '--trigger',
            'timer',
          ],
          `protect-${tag}.log`,
        );
        const primary = (): Promise<Record<string, unknown>> =>
          controlRequest(path.join(dir, `primary-${tag}.sock`), { cmd: 'status' });
        await waitFor(
          'protected',
          () => fs.readFileSync(path.join(dir, `protect-${tag}.log`), 'utf8').includes(`protected: ${tag}`),
          60_000,
        );
        const zs = (conn: number): number => client.count(`z ${conn} `);
        client.send({ op: 'connect', port: 5432 });
        client.send({ op: 'connect', port: 5432 });
        await waitFor('startup replies', () => zs(0) === 1 && zs(1) === 1, 30_000);
        for (const c of [0, 1]) client.send({ op: 'q', conn: c, text: 'COMMIT' });
        await waitFor('COMMIT replies (after their checkpoint)', () => zs(0) === 2 && zs(1) === 2, 30_000);
        client.send({ op: 'q', conn: 0, text: 'BEGIN' });
        await waitFor('BEGIN reply (unprotected, at once)', () => zs(0) === 3, 3000);
        const status = await primary();
        const epochAtReply = Number(status.epoch);
        if (inKernel) {
          const nic = (status.net as { interfaces: Array<Record<string, Record<string, number>>> }).interfaces[0];
          assert.ok(
            nic.kernelClassifier.passed > 0 && nic.kernelClassifier.held > 0,
            JSON.stringify(nic.kernelClassifier),
          );
        }
        await sleep(100); // NET_EXPOSURE goes every 10 ms
        const r = runCli(['failover', tag], 30_000, env);
        assert.equal(r.status, 0, r.stderr);
        const resumed = Number(/epoch (\d+)/.exec(r.stdout)![1]);
        console.log(`      primary epoch at the unprotected reply ${epochAtReply}, backup resumed from ${resumed}`);
        if (resumed >= epochAtReply + 1) {
          console.log("      inconclusive: the reply's checkpoint committed first");
          ctx.skip();
        }
        await waitFor('the client sees ECONNRESET on conn 0', () => client.has('error 0 ECONNRESET'), 10_000);
        const log = fs.readFileSync(path.join(dir, `backup-${tag}.log`), 'utf8');
        assert.match(log, /reset 1 client connection/);
        // The guest-side RST carries the sequence number the resumed guest expects (its ACK at
        // the checkpoint); this fake guest does not roll back, so only its sending is checked.
        assert.match(log, /reset the guest side of 1 connection/);
        p.kill('SIGTERM'); // the fenced primary's rules go (a real primary's vif goes with its domain)
        await exited(p);
        client.send({ op: 'q', conn: 1, text: 'BEGIN' });
        await waitFor('conn 1 still works', () => zs(1) === 3, 10_000);
        assert.ok(!client.has('error 1') && !client.has('close 1'), client.lines.join('\n'));
      } finally {
        server.kill();
        client.kill();
      }
    }
  });
});

// 30 CLI: doctor, trace synth and bench trace as a user runs them, including bad input.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { runCli, tmpDir } from './support/helpers';
import { errorOutcome } from '../dom0/cli/main';
import { ErrorCode, RemusError } from '../dom0/errors';
import { loadAddon } from '../dom0/native';

describe('30 cli', () => {
  const dir = tmpDir('cli');
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('30.1 doctor --json lists every capability with available and reason', () => {
    const r = runCli(['doctor', '--json']);
    assert.equal(r.status, 0, r.stderr);
    const caps = JSON.parse(r.stdout).capabilities as Array<{ name: string; available: boolean; reason: string }>;
    const names = caps.map((c) => c.name);
    for (const n of [
      'addon.codec',
      'liblz4',
      'addon.xen',
      'addon.nfqueue',
      'xen',
      'nfqueue',
      'pgwire-in-kernel',
      'sch_plug',
      'dirty-tracking',
    ]) {
      assert.ok(names.includes(n), `doctor reports ${n}`);
    }
    for (const c of caps) assert.ok(typeof c.available === 'boolean' && c.reason.length > 5, c.name);
    assert.ok(caps.find((c) => c.name === 'addon.codec')!.available);
    const xen = caps.find((c) => c.name === 'xen')!;
    if (!fs.existsSync('/dev/xen/privcmd')) assert.match(xen.reason, /privcmd/);
    const bpf = caps.find((c) => c.name === 'pgwire-in-kernel')!;
    if (process.getuid?.() === 0 && loadAddon().parts.bpf) assert.ok(bpf.available, bpf.reason);
  });

  it('30.2 trace synth then bench trace --json: one JSON object, verified', () => {
    const f = path.join(dir, 'x.rdt.gz');
    const s = runCli(['trace', 'synth', '--out', f, '--pages', '1024', '--epochs', '20', '--seed', '2']);
    assert.equal(s.status, 0, s.stderr);
    const b = runCli(['bench', 'trace', f, '--json']);
    assert.equal(b.status, 0, b.stderr);
    const lines = b.stdout.trim().split('\n');
    const r = JSON.parse(lines[lines.length - 1]);
    assert.equal(r.verified, true);
    assert.equal(r.epochs, 20);
    for (const k of [
      'epochs',
      'pages',
      'raw_bytes',
      'sent_bytes',
      'ratio',
      'ratio_incremental',
      'hit_rate',
      'encode_mb_s',
      'decode_mb_s',
      'verified',
    ]) {
      assert.ok(k in r, k);
    }
  });

  it('30.3 bad arguments exit 2 with a message naming the option', () => {
    const r = runCli(['trace', 'synth', '--out', path.join(dir, 'y.rdt'), '--pages', 'lots']);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /--pages "lots": expected an integer/);
    const c = runCli(['bench', 'trace', path.join(dir, 'y.rdt'), '--cache', '300%']);
    assert.equal(c.status, 2);
    assert.match(c.stderr, /--cache "300%"/);
    const s = runCli(['bench', 'scale', '--min', '4GiB', '--max', '2GiB']);
    assert.equal(s.status, 2, 'no size between --min and --max: refused before anything starts');
    assert.match(s.stderr, /no guest size between --min and --max \[ERR_BAD_ARGUMENT\]/);
  });

  it('30.3b another host owning the domain (ERR_NOT_OWNER) exits 3, as fenced: systemd does not restart it', () => {
    const out = errorOutcome(new RemusError(ErrorCode.NOT_OWNER, 'sim:x is owned by backup on b'));
    assert.equal(out?.exitCode, 3);
    assert.match(out?.line ?? '', /\[ERR_NOT_OWNER\]/);
    assert.equal(errorOutcome(new RemusError(ErrorCode.COORDINATION, 'etcd away'))?.exitCode, 1, 'etcd away: retried');
  });

  it('30.4 a missing or malformed trace exits 1 with its error code', () => {
    const missing = runCli(['bench', 'trace', path.join(dir, 'missing.rdt')]);
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /cannot open trace .*\[ERR_IO\]/);
    const junk = path.join(dir, 'junk.rdt');
    fs.writeFileSync(junk, 'this is not a trace at all, not even close');
    const bad = runCli(['bench', 'trace', junk]);
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /magic.*\[ERR_BAD_TRACE\]/);
  });

  it('30.5 npm run bench figures: every case reports ratios against memcpy', () => {
    const r = runCli(['bench', 'codec', '--runs', '1', '--json']);
    assert.equal(r.status, 0, r.stderr);
    const o = JSON.parse(r.stdout);
    assert.equal(o.cases.length, 6);
    for (const c of o.cases) assert.ok(c.encode_vs_memcpy > 0 && c.decode_vs_memcpy > 0 && c.wire_ratio > 1, c.name);
  });

  describe('30.6 a long-running command always runs its stop path, once', () => {
    // A child process plays protect: its "service" holds one timer; stop() writes a line.
    const mod = path.join(__dirname, '..', 'dom0', 'cli', 'until-stopped.js');
    function run(body: string, signal?: NodeJS.Signals): { status: number | null; out: string } {
      const code =
        `const { untilStopped } = require(${JSON.stringify(mod)});
        const log = (l) => process.stdout.write('log ' + l + '\\n');
        const stop = async () => { await new Promise((r) => setTimeout(r, 50).unref()); ` +
        `process.stdout.write('stopped\\n'); };
        ${body}
        ${signal ? `setTimeout(() => process.kill(process.pid, '${signal}'), 100);` : ''}`;
      const r = spawnSync(process.execPath, ['-e', code], { encoding: 'utf8', timeout: 20_000 });
      return { status: r.status, out: r.stdout };
    }

    it("30.6.1 on SIGTERM: stop runs (even when it waits on unref'd timers), exit 0", () => {
      const r = run(
        `const t = setInterval(() => {}, 1000); ` +
          `untilStopped(async () => { clearInterval(t); await stop(); }, { log });`,
        'SIGTERM',
      );
      assert.equal(r.status, 0);
      assert.equal(r.out, 'stopped\n');
    });

    it('30.6.2 the service ends by itself (fenced): the reason is logged, stop runs, exit 3', () => {
      const r = run(`const t = setInterval(() => {}, 1000);
        const ended = new Promise((res) => setTimeout(() => res('the backup took over'), 100));
        untilStopped(async () => { clearInterval(t); await stop(); }, { log, ended });`);
      assert.equal(r.status, 3);
      assert.equal(r.out, 'log the backup took over\nstopped\n');
    });

    it('30.6.3 its last handle closed without a signal: stop still runs before the process ends', () => {
      const r = run(`const t = setTimeout(() => {}, 100); untilStopped(stop, { log });`);
      assert.equal(r.status, 0);
      assert.equal(r.out, 'log nothing left to run: stopping\nstopped\n');
    });

    it('30.6.4 a second signal while stopping ends the process at once (the way out of a stuck stop)', () => {
      const r = run(
        `const t = setInterval(() => {}, 1000);
        untilStopped(async () => { clearInterval(t); process.kill(process.pid, 'SIGINT'); await stop(); }, { log });`,
        'SIGTERM',
      );
      assert.equal(r.status, null, 'no listener is left for a second signal: its default action ends the process');
    });
  });
});

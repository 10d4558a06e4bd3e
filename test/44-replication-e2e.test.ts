// 44 replication end to end: real `remusdb` processes on loopback with the real TLS channel.
// The demo's own verification (state replayed byte for byte, no output ahead of its
// checkpoint), authentication, fencing on manual failover, re-protection after the backup
// returns, and the errors a user gets for unusable configurations.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { freePort, processWorld, runCli, sleep, until } from './support/helpers';

describe('44 replication end to end', function () {
  this.timeout(120_000);
  const { dir, env, start, status } = processWorld('e2e');
  const logOf = (f: string): string => fs.readFileSync(path.join(dir, f), 'utf8');
  const psk = path.join(dir, 'a.psk'),
    other = path.join(dir, 'b.psk');
  before(() => {
    assert.equal(runCli(['keygen', '--out', psk]).status, 0);
    assert.equal(runCli(['keygen', '--out', other]).status, 0);
    assert.equal(runCli(['keygen', '--out', psk]).status, 1, 'keygen never overwrites a key');
  });

  it('44.1 remusdb demo: fails over with the state verified and no output ahead of its checkpoint', () => {
    const r = runCli(['demo', '--seconds', '3', '--memory', '64MiB', '--json'], 120_000);
    assert.equal(r.status, 0, r.stderr.slice(-2000));
    const lines = r.stdout.trim().split('\n');
    const j = JSON.parse(lines[lines.length - 1]);
    for (const k of [
      'epochs',
      'interval_ms',
      'pause_ms_p50',
      'pause_ms_p99',
      'wire_bytes',
      'ratio',
      'failover_ms',
      'outputs_seen',
      'outputs_ahead_of_checkpoint',
      'state_verified',
    ])
      assert.ok(k in j, k);
    assert.equal(j.state_verified, true);
    assert.equal(j.outputs_ahead_of_checkpoint, 0);
    assert.equal(j.sessions, 1, 'one session: the first copy is a live pre-copy, never dropped');
    assert.ok(
      j.initial_sync_ms > 0 && Number.isFinite(j.max_output_hold_ms),
      `initial sync ${j.initial_sync_ms} ms, hold ${j.max_output_hold_ms} ms`,
    );
    assert.ok(j.primary_rss_bytes > 64 * 2 ** 20 && j.backup_rss_bytes > 64 * 2 ** 20, 'both RSS include the guest');
    assert.ok(j.outputs_seen > 100 && j.epochs > 10 && j.ratio > 1);
    assert.ok(j.resumed_epoch >= j.acked_epoch_before_kill);
  });

  it('44.2 a primary with another key is rejected and never reaches the backup', async () => {
    const port = await freePort();
    const b = start(['backup', '--listen', `127.0.0.1:${port}`, '--psk-file', psk], 'auth-backup.log');
    await until(async () => fs.existsSync(path.join(dir, `backup-${port}.sock`)), 10000, 'backup');
    const p = start(
      ['protect', 'sim:auth', `127.0.0.1:${port}`, '--psk-file', other, '--memory', '1MiB'],
      'auth-primary.log',
    );
    await sleep(2500);
    const st = await status(`backup-${port}.sock`);
    assert.equal(st.domain, null, 'no session was opened');
    assert.match(fs.readFileSync(path.join(dir, 'auth-backup.log'), 'utf8'), /rejected a peer that failed TLS/);
    assert.match(
      fs.readFileSync(path.join(dir, 'auth-primary.log'), 'utf8'),
      /TLS .* failed \(different pre-shared keys\?\)/,
    );
    const ps = await status('primary-auth.sock');
    assert.equal(ps.state, 'connecting');
    p.kill('SIGKILL');
    b.kill('SIGKILL');
  });

  it('44.6 a 1 GiB guest is protected in one session (live pre-copy), fails over, state verified', () => {
    // Before the pre-copy, every first full copy of a guest this size was dropped (~220 ms of silence), for ever.
    const r = runCli(['demo', '--seconds', '3', '--memory', '1GiB', '--json'], 150_000);
    assert.equal(r.status, 0, r.stderr.slice(-2000));
    const lines = r.stdout.trim().split('\n');
    const j = JSON.parse(lines[lines.length - 1]);
    assert.equal(j.sessions, 1);
    assert.equal(j.state_verified, true);
    assert.equal(j.outputs_ahead_of_checkpoint, 0);
    assert.ok(j.full_copy_pause_ms < 1000, `the final stop-and-copy paused ${j.full_copy_pause_ms} ms`);
  });

  it('44.3 manual failover: the backup resumes and the live primary is fenced', async () => {
    const port = await freePort();
    start(['backup', '--listen', `127.0.0.1:${port}`, '--psk-file', psk], 'manual-backup.log');
    await until(async () => fs.existsSync(path.join(dir, `backup-${port}.sock`)), 10000, 'backup');
    const primary = start(
      ['protect', 'sim:manual', `127.0.0.1:${port}`, '--psk-file', psk, '--memory', '16MiB'],
      'manual-primary.log',
    );
    const exit = new Promise<number | null>((resolve) => primary.on('exit', (c) => resolve(c)));
    await until(async () => Number((await status('primary-manual.sock')).ackedEpoch) > 5, 20000, 'checkpoints');
    const st = runCli(['status', 'sim:manual', '--json'], 10000, env);
    assert.equal(st.status, 0, st.stderr);
    const procs = JSON.parse(st.stdout).processes as Array<Record<string, unknown>>;
    const prim = procs.find((p) => p.role === 'primary')!;
    for (const k of [
      'epoch',
      'pauseMsP50',
      'pauseMsP99',
      'dirtyPagesLast',
      'wireBytes',
      'ratio',
      'outputsHeld',
      'lastAckAgeMs',
    ])
      assert.ok(k in prim, `status has ${k}`);
    const [diskMs, syncMs] = [Number(prim.diskSyncMs), Number(prim.initialSyncMs)];
    const part = `the disk copy (${diskMs} ms) is part of the initial sync (${syncMs} ms)`;
    assert.ok(diskMs > 0 && diskMs <= syncMs, part);
    assert.ok(procs.some((p) => p.role === 'backup' && p.state === 'receiving'));
    const r = runCli(['failover', 'sim:manual'], 30000, env);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /resumed from epoch \d+/);
    // Fenced, the primary's protection ends and the process exits 3 (EXIT_FENCED), as a Xen one does.
    assert.equal(await Promise.race([exit, sleep(10_000).then(() => 'still running')]), 3);
    assert.match(fs.readFileSync(path.join(dir, 'manual-primary.log'), 'utf8'), /manual is stopped here \(fenced\)/);
    const b = await status(`backup-${port}.sock`);
    assert.equal(b.state, 'failed-over');
  });

  it(
    '44.4 losing the backup leaves the primary running unprotected; ' + 'it re-protects when the backup returns',
    async () => {
      const port = await freePort();
      let b = start(['backup', '--listen', `127.0.0.1:${port}`, '--psk-file', psk], 'reprotect-backup.log');
      await until(async () => fs.existsSync(path.join(dir, `backup-${port}.sock`)), 10000, 'backup');
      start(
        ['protect', 'sim:rp', `127.0.0.1:${port}`, '--psk-file', psk, '--memory', '16MiB', '-i', '20'],
        'reprotect-primary.log',
      );
      await until(async () => Number((await status('primary-rp.sock')).ackedEpoch) > 3, 20000, 'checkpoints');
      b.kill('SIGKILL');
      await until(async () => (await status('primary-rp.sock')).state === 'unprotected', 10000, 'unprotected');
      const stepsBefore = Number(((await status('primary-rp.sock')).guest as Record<string, unknown>).steps);
      await sleep(300);
      assert.ok(
        Number(((await status('primary-rp.sock')).guest as Record<string, unknown>).steps) > stepsBefore,
        'the guest keeps running',
      );
      b = start(['backup', '--listen', `127.0.0.1:${port}`, '--psk-file', psk], 'reprotect-backup2.log');
      const st = await until(
        async () => {
          const s = await status('primary-rp.sock');
          return s.state === 'protected' && Number(s.sessions) === 2 ? s : null;
        },
        20000,
        're-protection',
      );
      assert.ok(Number(st.ackedEpoch) > 0);
      b.kill('SIGKILL');
    },
  );

  it('44.5 configuration errors are clear', () => {
    const xen = runCli(['protect', 'mydb', '127.0.0.1', '--insecure']);
    assert.equal(xen.status, 1);
    assert.match(xen.stderr, /no Xen.*sim:demo.*\[ERR_NO_XEN\]/);
    const unsafe = runCli(['protect', 'sim:x', '127.0.0.1', '--insecure', '--no-net-buffer']);
    assert.equal(unsafe.status, 2);
    assert.match(unsafe.stderr, /--unsafe/);
    const nokey = runCli(['protect', 'sim:x', '127.0.0.1']);
    assert.equal(nokey.status, 1);
    assert.match(nokey.stderr, /pre-shared key.*keygen.*\[ERR_AUTH\]/);
    const badkey = path.join(dir, 'bad.psk');
    fs.writeFileSync(badkey, 'nothex');
    assert.match(runCli(['backup', '--psk-file', badkey]).stderr, /64 hex digits/);
    assert.match(runCli(['failover', 'sim:nothere'], 10000, env).stderr, /no backup on this host holds sim:nothere/);
  });

  it('44.8 --disk-scrub: verified range by range, no whole check; bit rot on the backup found and repaired', async () => {
    const port = await freePort();
    start(['backup', '--listen', `127.0.0.1:${port}`, '--psk-file', psk], 'scrub-backup.log');
    await until(async () => fs.existsSync(path.join(dir, `backup-${port}.sock`)), 10000, 'backup');
    start(
      ['protect', 'sim:scrub', `127.0.0.1:${port}`, '--psk-file', psk, '--memory', '16MiB', '--disk', '32MiB'].concat([
        '--disk-scrub',
        '-i',
        '20',
      ]),
      'scrub-primary.log',
    );
    type Disk = { checksumRanges: { rangesReadAtChecksum: number }; scrub: { passes: number; rangesSent: number } };
    const primary = async (): Promise<Record<string, unknown>> => status('primary-scrub.sock');
    const first = await until(
      async () => {
        const s = await primary();
        return Number(s.diskVerifiedEpoch ?? 0) > 0 ? s : null;
      },
      30000,
      'a scrub pass verified the disk',
    );
    const disk = first.disk as Disk;
    assert.equal(disk.checksumRanges.rangesReadAtChecksum, 0, 'no whole-disk check');
    assert.ok(disk.scrub.passes >= 1 && disk.scrub.rangesSent >= 32, JSON.stringify(disk.scrub));
    // Bit rot: a byte flipped in 6 ranges of the backup's copy, behind its back (the guest may
    // rewrite some of those blocks, which repairs them; not all six).
    const image = path.join(dir, 'sim-scrub.backup.disk');
    const fd = fs.openSync(image, 'r+');
    for (const mib of [3, 9, 14, 20, 25, 30]) {
      const at = mib * 2 ** 20 + 777;
      const b = Buffer.alloc(1);
      fs.readSync(fd, b, 0, 1, at);
      b[0] ^= 0x5a;
      fs.writeSync(fd, b, 0, 1, at);
    }
    fs.closeSync(fd);
    const rotAt = Number((await primary()).epoch);
    await until(
      async () => /the scrub found \d+ range\(s\) of the backup's disk different/.test(logOf('scrub-backup.log')),
      30000,
      'the scrub found the bit rot',
    );
    const again = await until(
      async () => {
        const s = await primary();
        return s.state === 'protected' && Number(s.diskVerifiedEpoch) > rotAt ? s : null;
      },
      60000,
      'a later pass verified the repaired disk',
    );
    assert.ok(Number(again.sessions) >= 2, 'the session after the finding copied the ranges that differ');
    // Each session after a finding copied the ranges found (and what the failed session had copied),
    // not the disk (the first session's 32 MiB).
    const copies = [
      ...logOf('scrub-primary.log').matchAll(/answered: copying (\d+) bytes of disk it may lack( and the (\d+))?/g),
    ];
    const said = copies.map((m) => m[0]).join('; ');
    const later = copies.slice(1).map((m) => Number(m[1]) + Number(m[3] ?? 0));
    assert.ok(copies.length >= 2 && later.every((bytes) => bytes < 4 * 2 ** 20), said);
    assert.ok(
      copies.slice(1).some((m) => Number(m[3]) >= 2 ** 20),
      `a found range (1 MiB) was copied again: ${said}`,
    );
  });

  it('44.7 a disk of 1 GiB or more: protect warns what --verify-disk costs', () => {
    const run = (...more: string[]) =>
      runCli(
        ['protect', 'sim:bigdisk', '-b', '--memory', '16MiB', '--disk', '1GiB', '--seconds', '1', ...more],
        60000,
        env,
      );
    const verify = run();
    assert.equal(verify.status, 0, verify.stderr);
    const warning = /WARNING: --verify-disk: .* whole 1(\.00)? GiB disk; .* guest paused.*--no-verify-disk/;
    assert.match(verify.stderr, warning);
    const skip = run('--no-verify-disk');
    assert.equal(skip.status, 0, skip.stderr);
    assert.doesNotMatch(skip.stderr, /--verify-disk: /);
  });
});

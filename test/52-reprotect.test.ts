// 52 reprotection: real processes (backup, primary, SIGKILL, failover, a new backup on the
// old primary's disk, `reprotect`). What users rely on: only the changed blocks travel, the
// two disks are verified equal at a checkpoint, a fresh backup gets a full copy, and
// reprotecting a backup that never failed over is refused with a clear error.
import { strict as assert } from 'node:assert';
import { spawn, spawnSync } from 'node:child_process';
import { ControlServer } from '../dom0/service/control';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runReprotect } from '../dom0/bench/reprotect-bench';
import { netChoiceOf } from '../dom0/net/net-plan';
import { ErrorCode, RemusError } from '../dom0/errors';
import { rangeCrcBytesFor } from '../blktap/range-crcs';

const BIN = path.join(__dirname, '..', '..', 'bin', 'remusdb');

describe('52 reprotection', function () {
  this.timeout(120000);

  it(
    '52.1 copies only the blocks written since failover ' + '(and the discarded epochs), then verifies the disks equal',
    async () => {
      const r = await runReprotect({
        diskMiB: 64,
        runSeconds: 2,
        afterFailoverSeconds: 1,
        reuse: true,
        heartbeatTimeoutMs: 1000,
      });
      assert.ok(r.verified_epoch > 0, "the new backup confirmed its disk equals the primary's at a checkpoint");
      assert.ok(
        r.changed_bytes > 0 && r.changed_bytes < r.disk_bytes / 4,
        `changed ${r.changed_bytes} of ${r.disk_bytes}`,
      );
      // The guest keeps writing until the session connects; those blocks are copied too (a
      // loaded machine connects later). The copy is what was planned at the connection.
      assert.ok(r.planned_bytes < r.disk_bytes / 4, `planned ${r.planned_bytes} of ${r.disk_bytes}`);
      assert.ok(r.planned_bytes >= r.changed_bytes, `planned ${r.planned_bytes}, ${r.changed_bytes} changed`);
      assert.ok(r.copied_bytes <= 1.05 * r.planned_bytes, `copied ${r.copied_bytes} for ${r.planned_bytes} planned`);
      assert.ok(r.copied_bytes >= r.differing_bytes * 0.9, 'at least what differs was copied');
    },
  );

  it("52.6 the old primary's disk has writes it never forwarded: only the differing ranges are copied", async () => {
    // Blocks in three of the table's ranges (64 KiB on a 64 MiB disk: range-crcs.ts), in three
    // 1 MiB stretches: what a primary SIGKILLed between its local write and the forward leaves.
    // The first disk check fails; the next session copies those ranges with the bitmap's
    // blocks, and its check passes.
    const r = await runReprotect({
      diskMiB: 64,
      runSeconds: 1,
      afterFailoverSeconds: 0.5,
      reuse: true,
      heartbeatTimeoutMs: 1000,
      unforwardedBlocks: [10 * 256 + 3, 11 * 256 + 200, 40 * 256 + 7],
    });
    assert.ok(r.verified_epoch > 0, 'verified equal in the end');
    assert.match(r.diverged ?? '', /copies the \d+ runs of \d+ octets that differ/, 'the first check found them');
    const range = rangeCrcBytesFor(64 * 2 ** 20);
    assert.ok(r.copied_bytes >= 3 * range, `the three ranges were copied (${r.copied_bytes} bytes)`);
    // The first session's copy is sent again (its checkpoint never committed), then the ranges.
    assert.ok(r.copied_bytes < 2 * r.changed_bytes + 4 * 2 ** 20, `not the disk: ${r.copied_bytes} of ${r.disk_bytes}`);
  });

  it('52.2 a backup without the old disk gets a full copy, also verified (under --interval auto)', async () => {
    const r = await runReprotect({
      diskMiB: 32,
      runSeconds: 1,
      afterFailoverSeconds: 0.5,
      reuse: false,
      heartbeatTimeoutMs: 1000,
      intervalAuto: true,
    });
    assert.ok(r.verified_epoch > 0);
    assert.ok(r.copied_bytes >= r.disk_bytes, `copied ${r.copied_bytes} of ${r.disk_bytes}`);
    assert.ok(r.interval_auto, 'the reprotection chose its interval from what checkpoints cost');
  });

  it('52.3 reprotect on a backup that did not fail over is refused: nothing to reprotect', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rdb-52-'));
    const env = { ...process.env, REMUSDB_RUN_DIR: dir };
    let p: { kill(s: string): void } | null = null;
    const b = require('node:child_process').spawn(
      process.execPath,
      [BIN, 'backup', '--listen', '127.0.0.1:7597', '--insecure'],
      { env, stdio: 'ignore' },
    );
    try {
      for (let i = 0; i < 100 && !fs.existsSync(path.join(dir, 'backup-7597.sock')); i++)
        await new Promise((r) => setTimeout(r, 50));
      const none = spawnSync(process.execPath, [BIN, 'reprotect', 'sim:nothing', '127.0.0.1:7598', '--insecure'], {
        env,
        encoding: 'utf8',
      });
      assert.notEqual(none.status, 0);
      assert.match(none.stderr, /no backup on this host holds sim:nothing.*ERR_NO_DOMAIN/);
      const nokey = spawnSync(process.execPath, [BIN, 'reprotect', 'sim:x', '127.0.0.1:7598'], {
        env,
        encoding: 'utf8',
      });
      assert.match(nokey.stderr, /--psk-file/);
      const cli = (...args: string[]) =>
        spawnSync(process.execPath, [BIN, 'reprotect', 'sim:x', '127.0.0.1:7598', '--insecure', ...args], {
          env,
          encoding: 'utf8',
        });
      const window = cli('--interval', '20', '--max-loss-window', '80');
      assert.equal(window.status, 2, window.stderr);
      assert.match(window.stderr, /--max-loss-window bounds the interval --interval auto chooses.*ERR_BAD_ARGUMENT/);
      const auto = cli('--interval', 'auto', '--max-loss-window', '80');
      assert.match(
        auto.stderr,
        /no backup on this host holds sim:x.*ERR_NO_DOMAIN/,
        'auto parses; the domain is what is missing',
      );
      p = require('node:child_process').spawn(
        process.execPath,
        [
          BIN,
          'protect',
          'sim:x',
          '127.0.0.1:7597',
          '--insecure',
          '--memory',
          '16MiB',
          '--disk',
          '1MiB',
          '--heartbeat-timeout',
          '3000',
        ],
        { env, stdio: 'ignore' },
      );
      for (let i = 0; i < 200; i++) {
        const st = spawnSync(process.execPath, [BIN, 'status', '--json'], { env, encoding: 'utf8' });
        if (/"committedEpoch":[1-9]/.test(st.stdout)) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      const live = spawnSync(
        process.execPath,
        [BIN, 'reprotect', 'sim:x', '127.0.0.1:7598', '--insecure', '--timeout', '5'],
        { env, encoding: 'utf8', timeout: 20000 },
      );
      assert.notEqual(live.status, 0);
      assert.match(live.stderr, /has not failed over.*ERR_NO_DOMAIN/);
    } finally {
      b.kill('SIGKILL');
      p?.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("52.4 reprotect's network options reach the backup checked, as protect's (Xen: the vifs are buffered)", () => {
    assert.deepEqual(netChoiceOf(undefined), { commitProtection: 'off', dscp: 59 }, "absent: the driver's defaults");
    const good = {
      netBuffer: 'plug',
      vif: ['vif3.0'],
      commitProtection: 'off',
      dscp: 46,
      pgPort: [5432],
      trigger: 'timer',
    };
    assert.equal(netChoiceOf(good).netBuffer, 'plug');
    assert.deepEqual(netChoiceOf(good).vif, ['vif3.0']);
    for (const [field, bad] of [
      ['netBuffer', 'tc'],
      ['vif', ['eth0; rm -rf /']],
      ['vif', []],
      ['commitProtection', 'all'],
      ['dscp', 64],
      ['pgPort', [0]],
      ['queue', -1],
      ['maxInFlight', 99],
      ['trigger', 'soon'],
      ['routed', 'yes'],
    ] as const) {
      assert.throws(
        () => netChoiceOf({ ...good, [field]: bad }),
        (e: unknown) => e instanceof RemusError && e.code === ErrorCode.BAD_ARGUMENT && e.message.includes(field),
        `${field} = ${JSON.stringify(bad)} is refused, naming the field`,
      );
    }
    assert.throws(() => netChoiceOf('plug'), /network option net/);
    const unbuffered = spawnSync(
      process.execPath,
      [BIN, 'reprotect', 'domu', '127.0.0.1:7598', '--insecure', '--no-net-buffer'],
      { encoding: 'utf8' },
    );
    assert.equal(unbuffered.status, 2, unbuffered.stderr);
    assert.match(unbuffered.stderr, /--no-net-buffer lets clients see state .* add --unsafe/);
    const help = spawnSync(process.execPath, [BIN, 'reprotect', '--help'], { encoding: 'utf8' });
    for (const o of ['--net-buffer', '--vif', '--commit-protection', '--max-in-flight', '--trigger'])
      assert.ok(help.stdout.includes(o), `reprotect takes ${o}`);
  });
  it('52.5 reprotect waits for a backup that takes seconds to open the domain (the Xen lab: ~10 s)', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rdb-52-'));
    const asked: Array<Record<string, unknown>> = [];
    const server = new ControlServer(path.join(dir, 'backup-7599.sock'), async (req) => {
      if (req.cmd === 'status') return { role: 'backup', domain: 'domu', state: 'failed-over' };
      asked.push(req);
      await new Promise((r) => setTimeout(r, 4000)); // longer than a status answer may take
      return { ok: true, resyncBytes: 4096, diskBytes: 1 << 20 };
    });
    try {
      const args = ['reprotect', 'domu', '127.0.0.1:7598', '--insecure', '--no-wait', '--net-buffer', 'plug'];
      const r = await new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
        const c = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, REMUSDB_RUN_DIR: dir } });
        let out = '',
          err = '';
        c.stdout.on('data', (d) => (out += d));
        c.stderr.on('data', (d) => (err += d));
        c.on('exit', (code) => resolve({ code, out, err }));
      });
      assert.equal(r.code, 0, r.err);
      assert.match(r.out, /^reprotecting domu → 127\.0\.0\.1:7598: 4 KiB of its 1\.0 MiB disk/m);
      assert.equal(asked.length, 1);
      assert.deepEqual((asked[0].net as Record<string, unknown>).netBuffer, 'plug', 'the network choice travels');
    } finally {
      server.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

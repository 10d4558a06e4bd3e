// 76 Xen lab dom0 helpers (scripts/xen-lab/dom0-lib.sh), run by bash on this host against a
// loopback server: a value a scenario compares later (protect-pg's boot id) is read with
// lab_http_body, which retries while the guest's answer comes back empty. In lab run
// 20261204-153234 one lab_http right after /boot had answered returned nothing, and the run
// would have ended "boot id changed ('' -> id)" although the guest was never rebooted.
// lab_status and lab_field ask the control sockets with socat and read fields with jq (a node
// start-up cost ~25 s in a busy emulated dom0): here against real ControlServers.
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { ControlServer } from '../dom0/service/control';
import { ROOT } from './support/helpers';

const LIB = path.join(ROOT, 'scripts', 'xen-lab', 'dom0-lib.sh');
const TWO_LIB = path.join(ROOT, 'scripts', 'xen-lab', 'dom0-two-lib.sh');

/** A server that closes the first `empty` connections unanswered, then answers with `body`. */
async function flakyServer(
  empty: number,
  body: string,
): Promise<{ port: number; seen: () => number; close: () => void }> {
  let n = 0;
  const server = net.createServer((s) => {
    n++;
    s.on('error', () => {});
    if (n <= empty) {
      s.destroy();
      return;
    }
    s.once('data', () => s.end(`HTTP/1.0 200 OK\r\nContent-Length: ${body.length}\r\n\r\n${body}`));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as net.AddressInfo).port, seen: () => n, close: () => server.close() };
}

/** Runs `script` in bash after sourcing dom0-lib.sh (and dom0-two-lib.sh); stdout and exit status. */
function lib(script: string, env: NodeJS.ProcessEnv = process.env): Promise<{ out: string; status: number | null }> {
  return new Promise((resolve) => {
    const p = spawn('bash', ['-c', `. "$0"; . "$1"; ${script}`, LIB, TWO_LIB], {
      stdio: ['ignore', 'pipe', 'ignore'],
      env,
    });
    let out = '';
    p.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    p.on('close', (status) => resolve({ out, status }));
  });
}

describe('76 Xen lab dom0 helpers', () => {
  it('76.1 lab_http_body retries an empty answer; a single lab_http returns it empty', async () => {
    const srv = await flakyServer(2, 'boot-4711');
    try {
      const once = await lib(`lab_http 127.0.0.1 ${srv.port} /boot 5`);
      assert.equal(once.out, '');
      const got = await lib(`lab_http_body 127.0.0.1 ${srv.port} /boot 30`);
      assert.equal(got.status, 0);
      assert.equal(got.out, 'boot-4711\n');
      assert.equal(srv.seen(), 3);
    } finally {
      srv.close();
    }
  }).timeout(40_000);

  it('76.2 lab_http_body gives up after its seconds with status 1 and no output', async () => {
    const srv = await flakyServer(1_000_000, 'never');
    try {
      const t0 = Date.now();
      const got = await lib(`lab_http_body 127.0.0.1 ${srv.port} /boot 2`);
      assert.equal(got.status, 1);
      assert.equal(got.out, '');
      assert.ok(Date.now() - t0 < 15_000, 'it gave up in time');
      assert.ok(srv.seen() >= 2, 'it tried more than once');
    } finally {
      srv.close();
    }
  }).timeout(30_000);

  it('76.3 lab_status asks each control socket (socat, half-closed); lab_field reads dotted keys (jq)', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'remusdb-76-'));
    const primary = { role: 'primary', ackedEpoch: 42, fenced: false, net: { interfaces: [{ ledger: { held: 7 } }] } };
    const servers = [
      // The primary answers late: the socket must stay open until the answer went out.
      new ControlServer(path.join(dir, 'primary-domu.sock'), async () => {
        await new Promise((resolve) => setTimeout(resolve, 300));
        return primary;
      }),
      new ControlServer(path.join(dir, 'backup-domu.sock'), () => ({ role: 'backup', committedEpoch: 41 })),
    ];
    try {
      const env = { ...process.env, REMUSDB_RUN_DIR: dir };
      const st = await lib('lab_status', env);
      assert.equal(st.status, 0);
      const all = JSON.parse(st.out) as { processes: Array<{ role: string }> };
      assert.deepEqual(all.processes.map((p) => p.role).sort(), ['backup', 'primary']);
      const f = (role: string, key: string) => lib(`lab_status | lab_field ${role} ${key}`, env);
      assert.equal((await f('primary', 'ackedEpoch')).out, '42\n');
      assert.equal((await f('primary', 'net.interfaces.0.ledger.held')).out, '7\n');
      assert.equal((await f('primary', 'fenced')).out, 'false\n');
      assert.equal((await f('backup', 'committedEpoch')).out, '41\n');
      assert.equal((await f('primary', 'no.such.key')).out, '\n');
      assert.equal((await f('agent', 'ackedEpoch')).out, '\n');
      assert.equal(
        (await lib('lab_status', { ...env, REMUSDB_RUN_DIR: path.join(dir, 'none') })).out,
        '{"processes":[]}\n',
      );
    } finally {
      for (const s of servers) s.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }).timeout(30_000);

  it('76.4 lab_two_stop_backup destroys the resumed domU while its disk server runs, then stops it', async () => {
    // Run 20261206-053404: C stopped its backup with the domU still running on the backup's
    // /dev/nbd0; dom0's poweroff then waited out the host's 180 s bound among I/O errors.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'remusdb-76-'));
    try {
      const log = path.join(dir, 'order');
      fs.writeFileSync(
        path.join(dir, 'xl'),
        `#!/bin/bash\necho "xl $* backup=$(kill -0 "$BACKUP_PID" 2>/dev/null && echo up || echo gone)" >> ${log}\n`,
        { mode: 0o755 },
      );
      const env = { ...process.env, PATH: `${dir}:${process.env.PATH}`, DOMU: 'domu' };
      const r = await lib(
        'sleep 30 & export BACKUP_PID=$!; lab_two_stop_backup $BACKUP_PID; wait $BACKUP_PID; echo "rc=$?"',
        env,
      );
      assert.equal(r.status, 0);
      assert.equal(fs.readFileSync(log, 'utf8'), 'xl destroy domu backup=up\n');
      assert.match(r.out, /rc=143/, 'then the backup got SIGTERM');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }).timeout(30_000);
});

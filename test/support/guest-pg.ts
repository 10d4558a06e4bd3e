// guest-pg: a throwaway PostgreSQL cluster for the guest-patch tests and benchmark:
// initdb + postgres from a given bin directory (the patched build, or the stock one for
// comparison), run as `nobody` (PostgreSQL refuses root) with trust authentication on
// 127.0.0.1 and ::1, optionally with an LD_PRELOAD library. The postmaster is the child
// process itself, so a test can signal it (SIGUSR2 = RemusDB failover).
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { PgClient } from './guest-pgclient';

const NOBODY = ['--reuid=65534', '--regid=65534', '--clear-groups'];

/** The patched build's bin directory, or why it is not usable. */
export function patchedPgBin(): { bin: string } | { why: string } {
  const bin = process.env.REMUSDB_PG_PATCHED_BIN;
  if (!bin) return { why: 'REMUSDB_PG_PATCHED_BIN is unset (build it: scripts/guest-patches/build-postgresql.sh)' };
  if (!fs.existsSync(path.join(bin, 'postgres')))
    return { why: `REMUSDB_PG_PATCHED_BIN=${bin} has no postgres binary` };
  if (process.getuid?.() !== 0) return { why: 'needs root (runs the server as nobody, captures with tcpdump)' };
  return { bin };
}

export async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return port;
}

export interface ClusterOptions {
  bin: string;
  /** Extra environment for the postmaster (e.g. LD_PRELOAD). */
  env?: Record<string, string>;
  /** Extra `-c name=value` settings. */
  settings?: string[];
}

export class PgCluster {
  private constructor(
    readonly dir: string,
    readonly port: number,
    readonly child: ChildProcess,
    readonly log: string,
  ) {}

  static async start(opts: ClusterOptions): Promise<PgCluster> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'remusdb-pg-'));
    fs.chownSync(dir, 65534, 65534);
    const data = path.join(dir, 'data');
    execFileSync(
      'setpriv',
      [
        ...NOBODY,
        path.join(opts.bin, 'initdb'),
        '-D',
        data,
        '-U',
        'postgres',
        '--auth=trust',
        '--no-sync',
        '-E',
        'UTF8',
        '--locale=C',
      ],
      { stdio: 'ignore' },
    );
    const port = await freePort();
    const log = path.join(dir, 'server.log');
    const out = fs.openSync(log, 'a');
    const settings = [
      'listen_addresses=127.0.0.1,::1',
      `unix_socket_directories=${dir}`,
      'fsync=off',
      'synchronous_commit=off',
      'max_connections=20',
      'shared_buffers=16MB',
      ...(opts.settings ?? []),
    ];
    const args = [
      ...NOBODY,
      'env',
      ...Object.entries(opts.env ?? {}).map(([k, v]) => `${k}=${v}`),
      path.join(opts.bin, 'postgres'),
      '-D',
      data,
      '-p',
      String(port),
      ...settings.flatMap((s) => ['-c', s]),
    ];
    const child = spawn('setpriv', args, { stdio: ['ignore', out, out] });
    fs.closeSync(out);
    const cluster = new PgCluster(dir, port, child, log);
    await cluster.waitReady();
    return cluster;
  }

  private async waitReady(timeoutMs = 30_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      if (this.child.exitCode !== null) throw new Error(`postgres exited: ${this.logText()}`);
      try {
        (await PgClient.connect('127.0.0.1', this.port)).close();
        return;
      } catch (e) {
        if (Date.now() > end) throw new Error(`postgres not ready: ${(e as Error).message}\n${this.logText()}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  connect(host = '127.0.0.1'): Promise<PgClient> {
    return PgClient.connect(host, this.port);
  }

  logText(): string {
    try {
      return fs.readFileSync(this.log, 'utf8');
    } catch {
      return '';
    }
  }

  /** Fast shutdown, then removes the data directory. */
  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const exited = new Promise((r) => this.child.once('exit', r));
      this.child.kill('SIGINT');
      await exited;
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Builds the LD_PRELOAD shim that gives listening sockets an application TOS. */
export function buildTosPreload(repoRoot: string, outDir: string): string {
  const so = path.join(outDir, 'guest-tos-preload.so');
  execFileSync('gcc', [
    '-shared',
    '-fPIC',
    '-O2',
    '-o',
    so,
    path.join(repoRoot, 'test/support/guest-tos-preload.c'),
    '-ldl',
  ]);
  fs.chmodSync(so, 0o755);
  return so;
}

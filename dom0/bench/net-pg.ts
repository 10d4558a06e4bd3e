// net-pg: a throwaway PostgreSQL server in the benchmark's guest namespace, and pgbench in
// its client namespace. The cluster lives in a fixed directory (so a crashed earlier run's
// server is found and stopped first), is created with initdb as user postgres, trusts the
// test bed's subnet, and listens on the guest address only. fsync is off: the benchmark
// measures network output commit, not the disk. pgbench runs asynchronously (the engine
// checkpoints on this process's event loop while it runs).
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ErrorCode, RemusError } from '../errors';
import { quantile } from './multi-bench';

export const PG_DIR = '/tmp/remusdb-netbench-pg';
const PG_VERSION = 15;

export interface PgPaths {
  bin: string;
  pgbench: string;
}

/** Where PostgreSQL 15 lives, or why it cannot be used. */
export function findPostgres(binDir?: string): PgPaths | string {
  const bin = binDir ?? `/usr/lib/postgresql/${PG_VERSION}/bin`;
  for (const tool of ['initdb', 'pg_ctl', 'postgres']) {
    if (!fs.existsSync(path.join(bin, tool)))
      return `${path.join(bin, tool)} missing (apt-get install postgresql-${PG_VERSION})`;
  }
  const pgbench = [path.join(bin, 'pgbench'), `/usr/lib/postgresql/${PG_VERSION}/bin/pgbench`].find((p) =>
    fs.existsSync(p),
  );
  if (!pgbench) return `pgbench missing (apt-get install postgresql-client-${PG_VERSION})`;
  if (spawnSync('id', ['-u', 'postgres'], { stdio: 'ignore' }).status !== 0)
    return 'no user postgres (the postgresql package creates it)';
  if (spawnSync('runuser', ['--help'], { stdio: 'ignore' }).error) return 'runuser missing (util-linux)';
  return { bin, pgbench };
}

function run(argv: string[], what: string, timeoutMs = 300_000): string {
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', timeout: timeoutMs });
  if (r.status !== 0) {
    throw new RemusError(
      ErrorCode.IO,
      `${what} failed (${r.error?.message ?? `exit ${r.status}`}): ${(r.stderr || r.stdout).trim().slice(-800)}`,
    );
  }
  return r.stdout;
}

/** CPUs the guest's PostgreSQL and the client's pgbench run on (null: any), see pinGuestAndClient. */
let guestCpus: string | null = null;
const pinned = (argv: string[]): string[] => (guestCpus === null ? argv : ['taskset', '-c', guestCpus, ...argv]);

/**
 * Models a Xen host where dom0 has its own CPUs: this process (the engine and the net
 * buffer's reader, all threads) runs on dom0Cpus, PostgreSQL and pgbench on the others.
 */
export function pinGuestAndClient(dom0Cpus: number[]): void {
  const all = os.cpus().map((_, i) => i);
  const rest = all.filter((c) => !dom0Cpus.includes(c));
  if (!dom0Cpus.length || dom0Cpus.some((c) => !all.includes(c)) || !rest.length) {
    throw new RemusError(
      ErrorCode.BAD_ARGUMENT,
      `--dom0-cpus ${dom0Cpus.join(',')}: name some of CPUs ${all.join(',')} and leave at least one for the guest`,
    );
  }
  const r = spawnSync('taskset', ['-a', '-p', '-c', dom0Cpus.join(','), String(process.pid)], { encoding: 'utf8' });
  if (r.status !== 0) throw new RemusError(ErrorCode.IO, `taskset: ${(r.stderr || r.error?.message || '').trim()}`);
  guestCpus = rest.join(',');
}

const asPostgres = (ns: string, argv: string[]): string[] => [
  'ip',
  'netns',
  'exec',
  ns,
  ...pinned(['runuser', '-u', 'postgres', '--', ...argv]),
];

/** Stops a server a previous run left in PG_DIR (any namespace) and removes the directory. */
export function cleanupStaleCluster(bin: string): void {
  if (fs.existsSync(path.join(PG_DIR, 'postmaster.pid'))) {
    spawnSync(
      'runuser',
      ['-u', 'postgres', '--', path.join(bin, 'pg_ctl'), '-D', PG_DIR, 'stop', '-m', 'immediate', '-w'],
      { stdio: 'ignore', timeout: 60_000 },
    );
  }
  fs.rmSync(PG_DIR, { recursive: true, force: true });
}

export interface PgServer {
  stop(): void;
}

/** A fresh cluster in PG_DIR (initdb as postgres), trusting `subnet` over TCP. */
export function initCluster(bin: string, subnet: string): void {
  cleanupStaleCluster(bin);
  fs.mkdirSync(PG_DIR, { mode: 0o700 });
  run(['chown', 'postgres:postgres', PG_DIR], 'chown');
  run(
    [
      'runuser',
      '-u',
      'postgres',
      '--',
      path.join(bin, 'initdb'),
      '-D',
      PG_DIR,
      '-A',
      'trust',
      '-U',
      'postgres',
      '--no-sync',
    ],
    'initdb',
  );
  fs.appendFileSync(
    path.join(PG_DIR, 'pg_hba.conf'),
    `host all all ${subnet} trust\nhost replication all ${subnet} trust\n`,
  );
}

/** pg_ctl start of the cluster in dir (its log there) with server options opts, waiting up to 60 s. */
function pgCtlStart(bin: string, dir: string, opts: string[]): string[] {
  const log = path.join(dir, 'server.log');
  return [path.join(bin, 'pg_ctl'), '-D', dir, '-l', log, '-o', opts.join(' '), '-w', '-t', '60', 'start'];
}

/** Starts the server binaries of `bin` on PG_DIR inside `ns`, listening on `address`:5432. */
export function startServer(bin: string, ns: string, address: string): PgServer {
  const opts = [
    `-c listen_addresses=${address}`,
    '-c port=5432',
    `-c unix_socket_directories=${PG_DIR}`,
    '-c fsync=off',
    '-c full_page_writes=off',
    '-c shared_buffers=128MB',
    '-c max_connections=300',
    '-c ssl=off',
  ];
  run(asPostgres(ns, pgCtlStart(bin, PG_DIR, opts)), 'pg_ctl start');
  let stopped = false;
  return {
    stop: () => {
      if (stopped) return;
      stopped = true;
      spawnSync(
        'runuser',
        ['-u', 'postgres', '--', path.join(bin, 'pg_ctl'), '-D', PG_DIR, 'stop', '-m', 'fast', '-w'],
        { stdio: 'ignore', timeout: 60_000 },
      );
    },
  };
}

/** pgbench -i (TPC-B-like tables) from the client namespace. */
export function initPgbench(pgbench: string, ns: string, host: string, scale: number): void {
  run(
    ['ip', 'netns', 'exec', ns, pgbench, '-i', '-q', '-s', String(scale), '-h', host, '-U', 'postgres', 'postgres'],
    'pgbench -i',
    900_000,
  );
}

/**
 * What pgbench itself does before a run unless told `-n`: vacuum the two small, contended tables
 * and empty the history. Run before each point, outside any buffering, so that every point
 * starts from the same tables: without it, 256 clients' updates of the 10 branch rows left
 * each later point slower (none: 200, 132, 94 tps over three rounds, 2026-12-07).
 */
export function resetPgbenchTables(bin: string, ns: string, host: string): void {
  const psql = path.join(bin, 'psql');
  for (const sql of ['VACUUM pgbench_branches, pgbench_tellers', 'TRUNCATE pgbench_history', 'CHECKPOINT'])
    run(
      ['ip', 'netns', 'exec', ns, psql, '-X', '-q', '-h', host, '-U', 'postgres', '-c', sql, 'postgres'],
      sql,
      120_000,
    );
}

/**
 * pgbench built-in scripts: TPC-B-like (7 statements, updates branches and tellers: contended) or without those two
 * updates.
 */
export type PgbenchScript = 'tpcb-like' | 'simple-update';

export interface PgbenchResult {
  tps: number;
  /** pgbench's own average, and the median and 99th percentile of its per-transaction log. */
  latencyMs: number;
  latencyP50Ms: number;
  latencyP99Ms: number;
  transactions: number;
}

/**
 * Percentiles of the latencies (µs, the third field) in pgbench's per-transaction logs (-l):
 * one file per thread, "client transaction latency_us script epoch_s epoch_us" per line.
 */
export function pgbenchLogLatencies(files: string[]): { p50Ms: number; p99Ms: number } {
  const us: number[] = [];
  for (const f of files) {
    for (const line of fs.readFileSync(f, 'utf8').split('\n')) {
      const v = Number(line.split(' ')[2]);
      if (line && Number.isFinite(v)) us.push(v);
    }
  }
  return { p50Ms: quantile(us, 0.5) / 1000, p99Ms: quantile(us, 0.99) / 1000 };
}

/** One timed pgbench run (-n: no vacuum), asynchronous. */
export function runPgbench(
  pgbench: string,
  ns: string,
  host: string,
  o: { clients: number; threads: number; seconds: number; script: PgbenchScript },
): Promise<PgbenchResult> {
  const logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'remusdb-pgbench-'));
  const argv = [
    'netns',
    'exec',
    ns,
    ...pinned([pgbench]),
    '-n',
    '-b',
    o.script,
    '-c',
    String(o.clients),
    '-j',
    String(o.threads),
    '-T',
    String(o.seconds),
    '-h',
    host,
    '-U',
    'postgres',
    '-l',
    `--log-prefix=${path.join(logDir, 'tx')}`,
    'postgres',
  ];
  return new Promise<PgbenchResult>((resolve, reject) => {
    const child = spawn('ip', argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '',
      err = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
    });
    const killer = setTimeout(() => child.kill('SIGKILL'), (o.seconds + 120) * 1000);
    child.on('close', (code) => {
      clearTimeout(killer);
      const tps = /tps = ([\d.]+) \(without initial connection time\)/.exec(out);
      const lat = /latency average = ([\d.]+) ms/.exec(out);
      const n = /number of transactions actually processed: (\d+)/.exec(out);
      if (code === 0 && n && Number(n[1]) === 0) {
        // every client still connecting when -T ran out
        resolve({ tps: 0, latencyMs: NaN, latencyP50Ms: NaN, latencyP99Ms: NaN, transactions: 0 });
        return;
      }
      if (code !== 0 || !tps || !lat) {
        reject(new RemusError(ErrorCode.IO, `pgbench failed (exit ${code}): ${(err + out).trim().slice(-800)}`));
        return;
      }
      const logs = fs.readdirSync(logDir).map((f) => path.join(logDir, f));
      const { p50Ms, p99Ms } = pgbenchLogLatencies(logs);
      const transactions = Number(n?.[1] ?? 0);
      resolve({
        tps: Number(tps[1]),
        latencyMs: Number(lat[1]),
        latencyP50Ms: p50Ms,
        latencyP99Ms: p99Ms,
        transactions,
      });
    });
  }).finally(() => fs.rmSync(logDir, { recursive: true, force: true }));
}

/** The streaming standby's cluster (bench net's pg_sync_rep series). */
export const STANDBY_DIR = `${PG_DIR}-standby`;

/**
 * A streaming standby of the guest's server: pg_basebackup from `primary` into STANDBY_DIR
 * (-R: it starts as a standby of that server), started in `ns` on `address`:5432, on `cpus`
 * (the other host's: dom0's CPUs when the bench pins them; null: any).
 */
export function startStandby(bin: string, ns: string, address: string, primary: string, cpus: string | null): PgServer {
  stopStandby(bin);
  fs.mkdirSync(STANDBY_DIR, { mode: 0o700 });
  run(['chown', 'postgres:postgres', STANDBY_DIR], 'chown');
  const conn = `host=${primary} port=5432 user=postgres application_name=remusdb_bench_standby`;
  const onCpus = (argv: string[]): string[] => (cpus === null ? argv : ['taskset', '-c', cpus, ...argv]);
  const asPg = (argv: string[]): string[] => [
    'ip',
    'netns',
    'exec',
    ns,
    ...onCpus(['runuser', '-u', 'postgres', '--', ...argv]),
  ];
  run(
    asPg([
      path.join(bin, 'pg_basebackup'),
      '-d',
      conn,
      '-D',
      STANDBY_DIR,
      '-R',
      '-X',
      'stream',
      '-c',
      'fast',
      '--no-sync',
    ]),
    'pg_basebackup',
    900_000,
  );
  // The primary's socket lock and log were copied with its directory.
  for (const f of ['.s.PGSQL.5432.lock', 'server.log']) fs.rmSync(path.join(STANDBY_DIR, f), { force: true });
  const opts = [
    `-c listen_addresses=${address}`,
    '-c port=5432',
    `-c unix_socket_directories=${STANDBY_DIR}`,
    '-c fsync=off',
    '-c hot_standby=on',
    '-c max_connections=300', // not below the primary's (a standby refuses to start)
  ];
  run(asPg(pgCtlStart(bin, STANDBY_DIR, opts)), 'pg_ctl start (standby)');
  return { stop: () => stopStandby(bin) };
}

function stopStandby(bin: string): void {
  if (fs.existsSync(path.join(STANDBY_DIR, 'postmaster.pid'))) {
    spawnSync(
      'runuser',
      ['-u', 'postgres', '--', path.join(bin, 'pg_ctl'), '-D', STANDBY_DIR, 'stop', '-m', 'immediate', '-w'],
      {
        stdio: 'ignore',
        timeout: 60_000,
      },
    );
  }
  fs.rmSync(STANDBY_DIR, { recursive: true, force: true });
}

/**
 * Makes every commit of the guest's server wait for the standby (synchronous_commit=on with
 * synchronous_standby_names='*'), or no commit wait for it; with `on` it returns once the
 * standby streams as the synchronous one.
 */
export async function setSynchronousStandby(psql: string, ns: string, host: string, on: boolean): Promise<void> {
  const sql = (q: string): string =>
    run(
      ['ip', 'netns', 'exec', ns, psql, '-h', host, '-U', 'postgres', '-At', '-c', q, 'postgres'],
      `psql ${q}`,
    ).trim();
  sql(on ? "ALTER SYSTEM SET synchronous_standby_names = '*'" : 'ALTER SYSTEM RESET synchronous_standby_names');
  sql('SELECT pg_reload_conf()');
  if (!on) return;
  const end = Date.now() + 120_000;
  while (sql("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'") !== '1') {
    if (Date.now() > end) throw new RemusError(ErrorCode.IO, 'the standby did not become synchronous within 120 s');
    await new Promise((r) => setTimeout(r, 200));
  }
}

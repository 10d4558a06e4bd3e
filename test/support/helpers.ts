// helpers: shared test utilities — temporary directories, page builders, the CLI runner.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync, type ChildProcess } from 'node:child_process';
import * as net from 'node:net';
import { Prng } from '../../dom0/util/prng';
import { DB_PAGE, DbMemoryModel } from '../../dom0/trace/db-memory-model';
import type { GuestMemory } from '../../dom0/memory/guest-memory';
import { controlRequest } from '../../dom0/service/control';
import { remusdbRunner } from '../../dom0/util/remusdb-process';

export const PAGE = 4096;
export const ROOT = path.join(__dirname, '..', '..', '..');

export function tmpDir(tag: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `remusdb-${tag}-`));
}

export function randomPages(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n * PAGE);
  new Prng(seed).fill(b);
  return b;
}

/** n pages of a warmed-up database server's memory (slotted pages, tables, text). */
export function dbPages(n: number, seed: number): Uint8Array {
  const mem = new Uint8Array(Math.max(64, n) * DB_PAGE);
  new DbMemoryModel(mem, new Prng(seed)).initialise();
  return mem.slice(0, n * DB_PAGE);
}

export function pfnRange(n: number, start = 0): BigUint64Array {
  return BigUint64Array.from({ length: n }, (_, i) => BigInt(start + i));
}

export interface CliResult {
  status: number;
  stdout: string;
  stderr: string;
}

export function runCli(args: string[], timeoutMs = 120000, env: NodeJS.ProcessEnv = process.env): CliResult {
  const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'remusdb'), ...args], {
    encoding: 'utf8',
    timeout: timeoutMs,
    env,
  });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(p));
    });
  });
}

/** Polls f every 100 ms until it returns something truthy; throws after ms. */
export async function until<T>(f: () => Promise<T | null | undefined | false>, ms: number, what: string): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f().catch(() => null);
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** Starts remusdb processes with their output in dir/<log>; kids collects them for the after hook. */
export { remusdbRunner as remusdbStarter } from '../../dom0/util/remusdb-process';

/** A small guest memory as one buffer (a copy; tests of guests ≤ 2^32 bytes). */
export function flat(m: GuestMemory): Uint8Array {
  return Uint8Array.from(Buffer.concat(m.segments));
}

/**
 * One test file's remusdb processes: a fresh run directory and its environment, a starter
 * whose children are SIGKILLed after the file's tests, and a status query by socket name.
 * Call it inside describe (it registers the after hook).
 */
export function processWorld(tag: string): {
  dir: string;
  env: NodeJS.ProcessEnv;
  kids: ChildProcess[];
  start: ReturnType<typeof remusdbRunner>;
  status: (sock: string) => Promise<Record<string, unknown>>;
} {
  const dir = tmpDir(tag);
  const env = { ...process.env, REMUSDB_RUN_DIR: dir };
  const kids: ChildProcess[] = [];
  after(() => {
    for (const k of kids) k.kill('SIGKILL');
  });
  const status = (sock: string): Promise<Record<string, unknown>> =>
    controlRequest(path.join(dir, sock), { cmd: 'status' });
  return { dir, env, kids, start: remusdbRunner(dir, env, kids), status };
}

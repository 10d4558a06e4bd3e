// nbd-device: the kernel NBD client, as the Xen disk path uses it. QEMU's qdisk and blkback
// open block devices, not NBD URLs, so a remusdb NBD export is attached at /dev/nbdN with
// `nbd-client` (Debian package nbd-client; module nbd). Here: find a free device (sysfs),
// attach / detach one (bounded), and flush one's page cache from the thread pool.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ErrorCode, RemusError } from '../../errors';

export const NBD_DEVICE = /^\/dev\/nbd(\d+)$/;
const NBD_CLIENT_TIMEOUT_MS = 30_000;

/** The first NBD device with no connection (no pid, size 0), skipping the ones in except. */
export function freeNbdDevice(sysBlock = '/sys/block', except: string[] = []): string {
  let names: string[];
  try {
    names = fs.readdirSync(sysBlock).filter((n) => /^nbd\d+$/.test(n));
  } catch {
    names = [];
  }
  names.sort((a, b) => Number(a.slice(3)) - Number(b.slice(3)));
  for (const n of names) {
    const dev = `/dev/${n}`;
    if (except.includes(dev) || fs.existsSync(path.join(sysBlock, n, 'pid'))) continue;
    const size = Number(readText(path.join(sysBlock, n, 'size')) ?? '1');
    if (size === 0) return dev;
  }
  throw new RemusError(
    ErrorCode.IO,
    names.length
      ? `all ${names.length} NBD devices are in use (modprobe nbd nbds_max=N for more)`
      : 'no NBD devices: load the kernel module (modprobe nbd)',
  );
}

function readText(p: string): string | null {
  try {
    return fs.readFileSync(p, 'utf8').trim();
  } catch {
    return null;
  }
}

/** Runs a command to its end (bounded); rejects with its stderr on a failure. */
function run(argv: string[], timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr!.on('data', (d: Buffer) => {
      if (err.length < 4096) err += d.toString('utf8');
    });
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('error', (e) => {
      clearTimeout(timer);
      reject(new RemusError(ErrorCode.IO, `${argv[0]}: ${e.message}`, {}, { cause: e }));
    });
    p.on('exit', (code, sig) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else
        reject(
          new RemusError(
            ErrorCode.IO,
            `${argv.join(' ')} failed (${sig ?? `code ${code}`}): ${err.trim().split('\n').slice(-3).join(' | ')}`,
          ),
        );
    });
  });
}

/** Connects the kernel NBD client: device shows our export at 127.0.0.1:port. */
export async function nbdAttach(port: number, device: string, exportName = 'remusdb'): Promise<void> {
  if (!NBD_DEVICE.test(device))
    throw new RemusError(ErrorCode.BAD_ARGUMENT, `${device} is not an NBD device (/dev/nbdN)`);
  if (!fs.existsSync(device)) await run(['modprobe', 'nbd'], NBD_CLIENT_TIMEOUT_MS).catch(() => undefined);
  await run(['nbd-client', '127.0.0.1', String(port), device, '-N', exportName, '-b', '4096'], NBD_CLIENT_TIMEOUT_MS);
}

/** Disconnects device (best effort). */
export async function nbdDetach(device: string): Promise<void> {
  await run(['nbd-client', '-d', device], NBD_CLIENT_TIMEOUT_MS).catch(() => undefined);
}

/** fdatasync of a block device from the thread pool (our NBD server answers meanwhile). */
export function deviceFlusher(device: string): { flush(): Promise<void>; close(): Promise<void> } {
  let fh: fs.promises.FileHandle | null = null;
  return {
    flush: async () => {
      fh ??= await fs.promises.open(device, 'r').catch((e: Error) => {
        throw new RemusError(ErrorCode.IO, `cannot open ${device} to flush it: ${e.message}`, {}, { cause: e });
      });
      await fh.datasync().catch((e: Error) => {
        throw new RemusError(ErrorCode.IO, `flushing ${device}: ${e.message}`, {}, { cause: e });
      });
    },
    close: async () => {
      await fh?.close();
      fh = null;
    },
  };
}

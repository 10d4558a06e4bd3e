// nbd-bench: throughput of our NBD server against qemu-nbd serving the same file in the same
// run (issue 4 target: ratio ≥ 0.8). Clients: `qemu-img bench` for sequential 1 MiB reads and
// writes and for 4 KiB reads/writes at a large prime stride (pseudo-random: qemu-img bench
// wraps offsets modulo the image size, and has no random mode). Median of `runs` per cell.
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { ErrorCode, RemusError } from '../dom0/errors';
import { serveDisk } from './serve';

export interface NbdBenchOptions {
  imageBytes?: number;
  runs?: number;
  log?: (line: string) => void;
}

export interface NbdBenchRow {
  name: string;
  oursMBs: number;
  qemuMBs: number;
  ratio: number;
}

interface Workload {
  name: string;
  args: string[];
  count: number;
  blockBytes: number;
}

const MiB = 1024 * 1024;

function workloads(imageBytes: number): Workload[] {
  const seqCount = Math.floor((imageBytes / MiB) * 4);
  const rndStep = 4096 * 4093; // prime number of 4 KiB blocks: visits every block before repeating
  return [
    { name: 'seq read 1M', args: ['-s', '1M', '-d', '8'], count: seqCount, blockBytes: MiB },
    { name: 'seq write 1M', args: ['-w', '-s', '1M', '-d', '8'], count: seqCount, blockBytes: MiB },
    // Depth 1: at depth 16 qemu-nbd 7.2 on loopback stalls (~400 ops/s, a TCP ack/Nagle pathology
    // on its side), which would make any ratio meaningless; depth 1 measures per-request latency.
    { name: 'rand read 4k', args: ['-s', '4k', '-S', String(rndStep), '-d', '1'], count: 20000, blockBytes: 4096 },
    {
      name: 'rand write 4k',
      args: ['-w', '-s', '4k', '-S', String(rndStep), '-d', '1'],
      count: 20000,
      blockBytes: 4096,
    },
  ];
}

function runQemuImgBench(uri: string, w: Workload): Promise<number> {
  return new Promise((resolve, reject) => {
    const p = spawn('qemu-img', ['bench', '-f', 'raw', '-c', String(w.count), ...w.args, uri], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    p.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    p.stderr.on('data', (d: Buffer) => {
      out += d.toString();
    });
    p.on('error', (e) => reject(new RemusError(ErrorCode.IO, `qemu-img bench: ${e.message}`, {}, { cause: e })));
    p.on('close', (code) => {
      const m = /Run completed in ([\d.]+) seconds/.exec(out);
      if (code !== 0 || !m) {
        reject(new RemusError(ErrorCode.IO, `qemu-img bench failed (${code}): ${out.trim()}`));
        return;
      }
      resolve((w.count * w.blockBytes) / MiB / Number(m[1]));
    });
  });
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
    s.on('error', reject);
  });
}

async function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    const ok = await new Promise<boolean>((r) => {
      const c = net.connect(port, '127.0.0.1', () => {
        c.destroy();
        r(true);
      });
      c.on('error', () => r(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new RemusError(ErrorCode.IO, `qemu-nbd did not listen on ${port} within ${timeoutMs} ms`);
}

/** Starts qemu-nbd on the image (persistent, writeback cache like ours); returns its URI and a stop(). */
async function startQemuNbd(image: string): Promise<{ uri: string; stop: () => Promise<void> }> {
  const port = await freePort();
  const p = spawn(
    'qemu-nbd',
    [
      '-f',
      'raw',
      '-x',
      'remusdb',
      '-b',
      '127.0.0.1',
      '-p',
      String(port),
      '-t',
      '--cache=writeback',
      '--aio=threads',
      image,
    ],
    { stdio: 'ignore' },
  );
  await waitForPort(port, 5000);
  return {
    uri: `nbd://127.0.0.1:${port}/remusdb`,
    stop: () =>
      new Promise((r) => {
        p.once('exit', () => r());
        p.kill('SIGTERM');
      }),
  };
}

/** Runs every workload `runs` times against both servers (alternating), returns medians and ratios. */
export async function benchNbd(o: NbdBenchOptions = {}): Promise<NbdBenchRow[]> {
  const imageBytes = o.imageBytes ?? 128 * MiB;
  const runs = o.runs ?? 3;
  const log =
    o.log ??
    ((l: string) => {
      console.log(l);
    });
  if (spawnSync('qemu-img', ['--version']).status !== 0)
    throw new RemusError(ErrorCode.IO, 'qemu-img not found (Debian package qemu-utils)');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'remusdb-nbdbench-'));
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, Buffer.alloc(0));
  fs.truncateSync(image, imageBytes);
  spawnSync('dd', [
    `if=/dev/urandom`,
    `of=${image}`,
    'bs=1M',
    `count=${imageBytes / MiB}`,
    'conv=notrunc',
    'status=none',
  ]);
  const ours = await serveDisk({ image, host: '127.0.0.1', port: 0 });
  const qemu = await startQemuNbd(image);
  const rows: NbdBenchRow[] = [];
  try {
    for (const w of workloads(imageBytes)) {
      const a: number[] = [];
      const b: number[] = [];
      for (let i = 0; i < runs; i++) {
        a.push(await runQemuImgBench(`nbd://127.0.0.1:${ours.port}/remusdb`, w));
        b.push(await runQemuImgBench(qemu.uri, w));
      }
      const row = { name: w.name, oursMBs: median(a), qemuMBs: median(b), ratio: median(a) / median(b) };
      rows.push(row);
      log(
        `${row.name.padEnd(14)} ours ${row.oursMBs.toFixed(1).padStart(8)} MB/s  ` +
          `qemu-nbd ${row.qemuMBs.toFixed(1).padStart(8)} MB/s  ratio ${row.ratio.toFixed(2)}`,
      );
    }
  } finally {
    await qemu.stop();
    await ours.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}

if (require.main === module) {
  const runs = Number(process.argv[2] ?? 3);
  benchNbd({ runs }).catch((e: unknown) => {
    console.error(e);
    process.exitCode = 1;
  });
}

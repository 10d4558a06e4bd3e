// reprotect-bench: `npm run bench:reprotect` — reprotection after a failover, with real
// processes on this host: protect sim:<name> (oltp, with a disk), SIGKILL the primary, let
// the backup fail over and run the domain a while, then reprotect it twice — once towards
// the old host's disk (backup --reuse-disk: only changed blocks travel) and once towards an
// empty backup (a full copy) — and compare bytes copied and time to "protected and disks
// verified equal". Changed blocks are the issue's definition — blocks written since the
// failover plus those of the epochs the backup discarded (the resync bitmap when
// reprotection starts) — and, as a lower bound, the blocks where the two images differ
// then (the simulated guest is deterministic: after failover it rewrites much of what the
// old primary wrote, byte for byte, so fewer blocks differ than were written).
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { controlRequest } from '../service/control';

const BIN = path.join(__dirname, '..', '..', '..', 'bin', 'remusdb');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface ReprotectRun {
  mode: 'changed-blocks' | 'full-copy';
  disk_bytes: number;
  changed_bytes: number;
  differing_bytes: number;
  copied_bytes: number;
  /** What the copies had to cover when their sessions connected: the changed blocks, plus what the guest wrote
   *  between the reprotect command and the connection. */
  planned_bytes: number;
  copied_vs_changed: number;
  copied_vs_differing: number;
  seconds_to_protected: number;
  verified_epoch: number;
  /** The reprotection ran the adaptive interval (--interval auto): its model showed in status. */
  interval_auto: boolean;
  /** The new backup's log: a disk check found the disks different (ERR_DISK_DIVERGED), and what is copied again. */
  diverged: string | null;
}

async function until<T>(f: () => Promise<T | null>, ms: number, what: string): Promise<T> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const v = await f().catch(() => null);
    if (v !== null) return v;
    await sleep(50);
  }
  throw new Error(`reprotect bench: ${what} within ${ms} ms`);
}

/** 4 KiB blocks that differ between two images of the same size, in bytes. */
export function differingBytes(a: string, b: string): number {
  const fa = fs.openSync(a, 'r'),
    fb = fs.openSync(b, 'r');
  const ba = Buffer.alloc(1 << 20),
    bb = Buffer.alloc(1 << 20);
  let diff = 0;
  for (let off = 0; ; off += ba.length) {
    const na = fs.readSync(fa, ba, 0, ba.length, off),
      nb = fs.readSync(fb, bb, 0, bb.length, off);
    if (na === 0 && nb === 0) break;
    for (let i = 0; i < Math.max(na, nb); i += 4096) if (ba.compare(bb, i, i + 4096, i, i + 4096) !== 0) diff += 4096;
  }
  fs.closeSync(fa);
  fs.closeSync(fb);
  return diff;
}

/** Flips a byte in each of these 4 KiB blocks of an image. */
function changeBlocks(image: string, blocks: number[]): void {
  const fd = fs.openSync(image, 'r+');
  const b = Buffer.alloc(1);
  for (const block of blocks) {
    fs.readSync(fd, b, 0, 1, block * 4096 + 100);
    b[0] ^= 0xff;
    fs.writeSync(fd, b, 0, 1, block * 4096 + 100);
  }
  fs.closeSync(fd);
}

export async function runReprotect(o: {
  diskMiB: number;
  runSeconds: number;
  afterFailoverSeconds: number;
  reuse: boolean;
  heartbeatTimeoutMs?: number;
  /** Reprotect with --interval auto (loss window 100 ms) instead of 50 ms. */
  intervalAuto?: boolean;
  /**
   * Blocks of the old primary's disk to change after its crash, as writes it made but never
   * forwarded would (no bitmap knows them: the new backup's first disk check finds them).
   */
  unforwardedBlocks?: number[];
}): Promise<ReprotectRun> {
  const hb = String(o.heartbeatTimeoutMs ?? 200);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rdb-reprotect-'));
  const env = { ...process.env, REMUSDB_RUN_DIR: dir };
  const kids: ChildProcess[] = [];
  const run = (args: string[], log: string): ChildProcess => {
    const c = spawn(process.execPath, [BIN, ...args], {
      env,
      stdio: ['ignore', fs.openSync(path.join(dir, log), 'w'), fs.openSync(path.join(dir, log), 'a')],
    });
    kids.push(c);
    return c;
  };
  const base = 7700 + (process.pid % 200) * 2;
  try {
    run(['backup', '--listen', `127.0.0.1:${base}`, '--insecure'], 'b1.log');
    const b1 = path.join(dir, `backup-${base}.sock`);
    await until(async () => (fs.existsSync(b1) ? true : null), 10000, 'backup 1 did not start');
    const p = run(
      [
        'protect',
        'sim:rp',
        `127.0.0.1:${base}`,
        '--insecure',
        '--memory',
        '64MiB',
        '--disk',
        `${o.diskMiB}MiB`,
        '--heartbeat-timeout',
        hb,
      ],
      'p.log',
    );
    await until(
      async () => {
        const s = await controlRequest(b1, { cmd: 'status' });
        return Number(s.committedEpoch ?? 0) >= 2 ? true : null;
      },
      30000,
      'no checkpoint committed',
    );
    await sleep(o.runSeconds * 1000);
    p.kill('SIGKILL');
    await until(
      async () => {
        const s = await controlRequest(b1, { cmd: 'status' });
        return s.state === 'failed-over' ? true : null;
      },
      10000,
      'no failover',
    );
    await sleep(o.afterFailoverSeconds * 1000);
    const oldDisk = path.join(dir, 'sim-rp.primary.disk'),
      liveDisk = path.join(dir, 'sim-rp.backup.disk');
    if (o.unforwardedBlocks?.length) changeBlocks(oldDisk, o.unforwardedBlocks);
    run(
      [
        'backup',
        '--listen',
        `127.0.0.1:${base + 1}`,
        '--insecure',
        ...(o.reuse ? ['--reuse-disk', oldDisk] : ['--disk-dir', path.join(dir, 'fresh')]),
      ],
      'b2.log',
    );
    const b2 = path.join(dir, `backup-${base + 1}.sock`);
    await until(async () => (fs.existsSync(b2) ? true : null), 10000, 'backup 2 did not start');
    const differing = o.reuse ? differingBytes(oldDisk, liveDisk) : o.diskMiB * 2 ** 20;
    const t0 = Date.now();
    const r = await controlRequest(b1, {
      cmd: 'reprotect',
      backup: `127.0.0.1:${base + 1}`,
      insecure: true,
      intervalMs: o.intervalAuto ? 100 : 50,
      intervalAuto: o.intervalAuto === true,
      heartbeatTimeoutMs: Number(hb),
    });
    if (r.error) throw new Error(`reprotect refused: ${JSON.stringify(r.error)}`);
    const st = await until(
      async () => {
        const s = await controlRequest(b1, { cmd: 'status' });
        const pr = s.reprotecting as Record<string, unknown> | null;
        return pr && pr.state === 'protected' && Number(pr.diskVerifiedEpoch ?? 0) > 0 ? pr : null;
      },
      60000,
      'not protected again',
    );
    const secs = (Date.now() - t0) / 1000;
    const disk = st.disk as { resyncCopiedBytes: number; resyncPlannedBytes: number };
    const copied = Number(disk.resyncCopiedBytes);
    return {
      mode: o.reuse ? 'changed-blocks' : 'full-copy',
      disk_bytes: o.diskMiB * 2 ** 20,
      changed_bytes: Number(r.resyncBytes),
      differing_bytes: differing,
      copied_bytes: copied,
      planned_bytes: Number(disk.resyncPlannedBytes),
      copied_vs_changed: copied / Math.max(1, Number(r.resyncBytes)),
      copied_vs_differing: copied / Math.max(1, differing),
      seconds_to_protected: secs,
      verified_epoch: Number(st.diskVerifiedEpoch),
      interval_auto: st.interval === 'auto' && st.intervalModel != null,
      diverged:
        /the disks differ \(the next session copies [^)]*\)/.exec(
          fs.readFileSync(path.join(dir, 'b2.log'), 'utf8'),
        )?.[0] ?? null,
    };
  } finally {
    for (const k of kids) k.kill('SIGKILL');
    await sleep(200);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (require.main === module) {
  void (async () => {
    const runs = Number(process.argv[2] ?? 3),
      diskMiB = Number(process.argv[3] ?? 256);
    const rows: ReprotectRun[] = [];
    for (let i = 0; i < runs; i++) {
      rows.push(await runReprotect({ diskMiB, runSeconds: 3, afterFailoverSeconds: 2, reuse: true }));
      rows.push(await runReprotect({ diskMiB, runSeconds: 3, afterFailoverSeconds: 2, reuse: false }));
    }
    const med = (xs: number[]): number => {
      const s = [...xs].sort((a, b) => a - b);
      return s[Math.floor(s.length / 2)];
    };
    console.log(`reprotection, sim 64 MiB guest (oltp), ${diskMiB} MiB disk, ${runs} runs each`);
    console.log(
      'mode            changed MiB  differing MiB  copied MiB  copied/changed  copied/differing  seconds  verified@',
    );
    for (const r of rows)
      console.log(
        `${r.mode.padEnd(15)} ${(r.changed_bytes / 2 ** 20).toFixed(2).padStart(11)} ` +
          `${(r.differing_bytes / 2 ** 20).toFixed(2).padStart(14)} ` +
          `${(r.copied_bytes / 2 ** 20).toFixed(2).padStart(11)} ${r.copied_vs_changed.toFixed(3).padStart(15)} ` +
          `${r.copied_vs_differing.toFixed(3).padStart(17)} ${r.seconds_to_protected.toFixed(2).padStart(8)} ` +
          `${String(r.verified_epoch).padStart(10)}`,
      );
    const cb = rows.filter((r) => r.mode === 'changed-blocks'),
      fc = rows.filter((r) => r.mode === 'full-copy');
    const summary = {
      copied_vs_changed_median: med(cb.map((r) => r.copied_vs_changed)),
      copied_vs_differing_median: med(cb.map((r) => r.copied_vs_differing)),
      time_vs_full_copy_median: med(cb.map((r) => r.seconds_to_protected)) / med(fc.map((r) => r.seconds_to_protected)),
      bytes_vs_full_copy_median: med(cb.map((r) => r.copied_bytes)) / med(fc.map((r) => r.copied_bytes)),
    };
    console.log(
      `copied/changed median ${summary.copied_vs_changed_median.toFixed(3)} (target ≤ 1.05); ` +
        `copied/differing ${summary.copied_vs_differing_median.toFixed(3)}; time vs full copy ` +
        `${summary.time_vs_full_copy_median.toFixed(2)}; bytes vs full copy ` +
        `${summary.bytes_vs_full_copy_median.toFixed(3)}`,
    );
    console.log(JSON.stringify({ ...summary, rows }));
  })();
}

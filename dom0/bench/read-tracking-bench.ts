// read-tracking-bench: `npm run bench:rt` — what read tracking saves on the `scan` workload
// (buffer-pool refills from disk, RemusDB §5.3.2). The same seeded guest is protected twice
// against a real in-process backup over the real channel, once with read tracking and once
// without; the figure is replication bytes per dirty page, as a ratio between the two runs
// of the same machine. The backup verifies every disk reference (CRC of its own block at
// that checkpoint), so a run also proves that no reference was wrong.
import { BackupService } from '../service/backup-service';
import { protectSimInProcess } from './bench-protect';

export interface RtRow {
  read_tracking: boolean;
  epochs: number;
  dirty_pages: number;
  ref_pages: number;
  wire_bytes: number;
  wire_bytes_per_page: number;
  backup_committed: number;
  protocol_errors: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? 0;
};

async function run(readTracking: boolean, seconds: number, workload: 'scan' | 'oltp'): Promise<RtRow> {
  const backup = new BackupService({
    host: '127.0.0.1',
    port: 0,
    security: { insecure: true },
    pageCountMax: 1 << 20,
    batchPagesMax: 1024,
    log: () => {},
  });
  await backup.start();
  const memoryBytes = 128 * 2 ** 20,
    intervalMs = 50;
  const svc = await protectSimInProcess({
    name: `rt-${readTracking ? 'on' : 'off'}-${process.pid}`,
    backup: { host: '127.0.0.1', port: backup.port },
    intervalMs,
    readTracking,
    guest: { memoryBytes, workload, seed: 7, stepsPerSec: 1000, diskBytes: 64 * 2 ** 20 },
  });
  // Measure after the full copy: from the first acknowledged incremental checkpoint on.
  while (Number(svc.status().ackedEpoch ?? 0) < 2) await sleep(20);
  const a = svc.status();
  await sleep(seconds * 1000);
  const b = svc.status();
  await svc.stop();
  const st = backup.status();
  await backup.stop();
  const d = (k: string): number => Number(b[k] ?? 0) - Number(a[k] ?? 0);
  return {
    read_tracking: readTracking,
    epochs: d('epoch'),
    dirty_pages: d('dirtyPages'),
    ref_pages: d('diskRefPages'),
    wire_bytes: d('wireBytes'),
    wire_bytes_per_page: d('wireBytes') / Math.max(1, d('dirtyPages')),
    backup_committed: Number(st.committedEpoch ?? 0),
    protocol_errors: Number(st.protocolErrors ?? 0),
  };
}

export async function benchReadTracking(
  seconds: number,
  runs: number,
  workload: 'scan' | 'oltp' = 'scan',
): Promise<{ rows: RtRow[]; saved_median: number }> {
  const rows: RtRow[] = [];
  const saved: number[] = [];
  for (let i = 0; i < runs; i++) {
    const off = await run(false, seconds, workload),
      on = await run(true, seconds, workload);
    rows.push(off, on);
    saved.push(1 - on.wire_bytes_per_page / off.wire_bytes_per_page);
  }
  return { rows, saved_median: median(saved) };
}

if (require.main === module) {
  const runs = Number(process.argv[2] ?? 3),
    seconds = Number(process.argv[3] ?? 4);
  const workload = (process.argv[4] ?? 'scan') as 'scan' | 'oltp';
  void benchReadTracking(seconds, runs, workload).then((r) => {
    console.log(
      `read tracking, sim ${workload} workload, 128 MiB guest, 64 MiB disk, 50 ms epochs, ${seconds} s per ` +
        `run, ${runs} runs each way`,
    );
    console.log('RT   epochs  dirty pages  as refs   wire MB  bytes/page  backup errors');
    for (const x of r.rows) {
      console.log(
        `${(x.read_tracking ? 'on' : 'off').padEnd(4)} ${String(x.epochs).padStart(6)} ` +
          `${String(x.dirty_pages).padStart(12)} ${String(x.ref_pages).padStart(8)} ` +
          `${(x.wire_bytes / 1e6).toFixed(2).padStart(9)} ${x.wire_bytes_per_page.toFixed(0).padStart(11)} ` +
          `${String(x.protocol_errors).padStart(14)}`,
      );
    }
    console.log(
      `replication bytes per dirty page saved by read tracking: ${(r.saved_median * 100).toFixed(1)}% (median ` +
        `of ${runs}; ratio on/off ${(1 - r.saved_median).toFixed(3)})`,
    );
    console.log(JSON.stringify({ read_tracking_saved_fraction: r.saved_median, rows: r.rows }));
  });
}

// bench-protect: a simulated domain protected inside the benchmark's own process, assembled
// as `remusdb protect` assembles it (driver, engine options, protect service).
import { simDriver, type SimOpenOptions } from '../hypervisor/sim/sim-driver';
import { DEFAULT_CACHE } from '../memory/cache-size';
import { engineOptions } from '../service/engine-options';
import { DISK_BUFFER_BYTES_DEFAULT } from '../limits';
import { ProtectService } from '../service/protect-service';

export interface BenchProtect {
  name: string;
  backup: { host: string; port: number } | 'blackhole';
  intervalMs: number;
  readTracking: boolean;
  guest: Omit<SimOpenOptions, 'client'>;
  /** As a driver reports it: the pid of a protect that died without stopping (tests). */
  crashedRunPid?: number | null;
  log?: (line: string) => void;
}

export async function protectSimInProcess(b: BenchProtect): Promise<ProtectService> {
  const log = b.log ?? ((): void => {});
  const opened = await simDriver.open({
    name: b.name,
    diskBufferBytesMax: DISK_BUFFER_BYTES_DEFAULT,
    readTracking: b.readTracking,
    sim: { ...b.guest, client: null },
    log,
  });
  const svc = await ProtectService.create({
    opened: b.crashedRunPid === undefined ? opened : { ...opened, crashedRunPid: b.crashedRunPid },
    backup: b.backup,
    security: { insecure: true },
    net: null,
    holdOutputs: true,
    journal: null,
    engine: engineOptions(simDriver, opened.domain.pageCount, {
      intervalMs: b.intervalMs,
      compressor: 'zstd',
      cache: DEFAULT_CACHE,
      maxInFlight: 2,
      diskBufferBytesMax: DISK_BUFFER_BYTES_DEFAULT,
      verifyDisk: false,
    }),
    metrics: null,
    ownsMetrics: true,
    log,
  });
  svc.start();
  return svc;
}

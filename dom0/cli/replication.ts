// replication: `remusdb protect`, `backup`, `reprotect`, `failover`, `status` and `keygen`.
// Every value is checked as the command line is parsed (options.ts, path-options.ts), and the
// key is read before anything listens, attaches or creates a file.
import { addCoordinationOptions, type CoordinationCliOptions } from './coordination-options';
import { claimOwnership } from '../coordination/etcd-ownership';
import type { Ownership } from '../ports';
import { PARTITION_WARNING, type ProtectConfig } from '../service/protect-service';
import { tuneReplicationProcess } from '../service/process-tuning';
import { SIM_GUEST_BYTES_MAX } from '../hypervisor/sim/guest-size';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import { ErrorCode, errorCodeOf, RemusError } from '../errors';
import { DEFAULT_CACHE } from '../memory/cache-size';
import { WORKLOADS, GUEST_PAGES_MIN, type Workload } from '../hypervisor/sim/guest-program';
import { DRIVERS, resolveDomain } from '../hypervisor/registry';
import { type DomainDriver, requireFeature } from '../hypervisor/driver';
import type { SimOpenOptions } from '../hypervisor/sim/sim-driver';
import type { XenOpenOptions } from '../hypervisor/xen/xen-driver';
import { engineOptions } from '../service/engine-options';
import { newPsk, parseHostPort, readPskFile, type Security } from '../protocol/channel';
import { ProtectService } from '../service/protect-service';
import { BackupService } from '../service/backup-service';
import { controlRequest, listSockets, socketPath } from '../service/control';
import {
  badValue,
  bytesOption,
  cacheOption,
  choiceOption,
  fractionOption,
  hostPortOption,
  intOption,
  specified,
} from './options';
import { checkPath, nbdDeviceOption, pathOption } from './path-options';
import { roundedSize } from './units';
import { addNetOptions, maxInFlightOf, netPlan, netPreflight, type NetCliOptions, triggerOf } from './net-options';
import { TRIGGERS } from '../engine/pacing';
import { MAX_IN_FLIGHT_MAX } from '../net/net-buffers';
import { untilStopped } from './until-stopped';
import { addIntervalOptions, intervalChoice, type IntervalCliOptions } from './interval-options';
import {
  BATCH_PAGES_MAX_DEFAULT,
  DEFAULT_NBD_PORT,
  DEFAULT_REPLICATION_PORT,
  DISK_BUFFER_BYTES_DEFAULT,
  DISK_VERIFY_WARN_BYTES,
  MAX_PAUSE_SHARE_DEFAULT,
  PAGE_BYTES,
  PAUSE_SHARE_WINDOW_MS,
  REPROTECT_START_TIMEOUT_MS,
} from '../limits';
import { METRICS_PATH, MetricsExporter } from '../service/metrics';

/** Guest memory: a multiple of 4 KiB from the smallest simulated guest to 64 GiB. */
export function memoryOption(name: string): (v: string) => number {
  const min = GUEST_PAGES_MIN * PAGE_BYTES;
  return bytesOption(name, { min, max: SIM_GUEST_BYTES_MAX, pageMultiple: true, example: '256MiB' });
}

export const DISK_BUFFER = { min: 2 ** 20, max: 2 ** 36, pageMultiple: true, example: '256MiB' };
const WORKLOAD_CHOICES = WORKLOADS.filter((w) => w !== 'trace');

/** --workload: a built-in workload, or trace:<file> replaying an existing trace. */
const workloadOption = specified(
  (v: string): string => {
    if (v.startsWith('trace:')) checkPath('--workload', v, v.slice('trace:'.length), 'input');
    else if (!(WORKLOAD_CHOICES as readonly string[]).includes(v)) {
      throw badValue('--workload', v, `one of ${WORKLOAD_CHOICES.join(', ')} or trace:<file.rdt>`);
    }
    return v;
  },
  { name: '--workload', kind: 'workload', choices: WORKLOAD_CHOICES },
);

/** --psk-file and --insecure, the same on protect, backup and reprotect. */
export function addSecurityOptions(cmd: Command): Command {
  return cmd
    .option('--psk-file <file>', 'pre-shared key of the channel (remusdb keygen)', pathOption('--psk-file', 'input'))
    .option('--insecure', 'plain TCP, no authentication or encryption (labs only)');
}

/** Where a backup keeps replica disks, and how many unacknowledged writes it buffers (backup, agent). */
export function addReplicaDiskOptions(cmd: Command): Command {
  return cmd
    .option(
      '--disk-dir <dir>',
      'where replica disks are kept (default: the run directory)',
      pathOption('--disk-dir', 'dir-or-new'),
    )
    .option(
      '--disk-buffer <size>',
      'most unacknowledged disk writes buffered per primary',
      bytesOption('--disk-buffer', DISK_BUFFER),
      DISK_BUFFER_BYTES_DEFAULT,
    );
}

/** --heartbeat-timeout, --max-in-flight and --trigger, the same on protect and reprotect. */
function addPacingOptions(cmd: Command): Command {
  return cmd
    .option(
      '--heartbeat-timeout <ms>',
      'silence that means the peer is gone (default 2 x interval + 100)',
      intOption('--heartbeat-timeout', 10, 600000),
    )
    .option(
      '--max-in-flight <n>',
      'checkpoints taken but not yet acknowledged (default 2; 1 with --net-buffer plug)',
      intOption('--max-in-flight', 1, MAX_IN_FLIGHT_MAX),
    )
    .option(
      '--trigger <what>',
      'what starts a checkpoint besides the interval: output (a held output starts one at once; the interval ' +
        'is the longest wait; default) or timer (the interval alone; the default with --net-buffer plug)',
      choiceOption('--trigger', TRIGGERS),
    );
}

/** --metrics, the same on protect and backup (a reprotecting primary shows on its backup's). */
export function addMetricsOption(cmd: Command): Command {
  return cmd.option(
    '--metrics <addr:port>',
    `serve Prometheus metrics over HTTP at addr:port${METRICS_PATH} (docs/operations.md)`,
    hostPortOption('--metrics', null),
  );
}

/** The exporter of --metrics, listening (ERR_LISTEN when it cannot), or null without the option. */
export async function openMetrics(spec: string | undefined): Promise<MetricsExporter | null> {
  if (!spec) return null;
  const { host, port } = parseHostPort(spec, 0);
  const m = await MetricsExporter.listen(host, port);
  log(`metrics on http://${spec.trim()}${METRICS_PATH}`);
  return m;
}

/** Runs make with the exporter; if it throws, the exporter is closed before the error goes on. */
async function closingOnError<T>(metrics: MetricsExporter | null, make: () => T | Promise<T>): Promise<T> {
  try {
    return await make();
  } catch (e) {
    await metrics?.close();
    throw e;
  }
}

export function security(o: { pskFile?: string; insecure?: boolean }, log: (l: string) => void): Security {
  if (o.insecure) {
    log(
      'WARNING: --insecure: the replication channel is NOT authenticated or encrypted; anyone who can reach the port ' +
        'can read guest memory or inject checkpoints. Labs only.',
    );
    return { insecure: true };
  }
  if (!o.pskFile) {
    throw new RemusError(
      ErrorCode.AUTH,
      'the replication channel needs a pre-shared key: --psk-file FILE (make one with `remusdb keygen --out FILE` ' +
        'and copy it to both hosts), or --insecure for a lab',
    );
  }
  return { psk: readPskFile(o.pskFile) };
}

export const log = (line: string): void => {
  console.error(`${new Date().toISOString()} ${line}`);
};

interface ProtectOpts extends NetCliOptions, CoordinationCliOptions, IntervalCliOptions {
  cache: string;
  compress: boolean;
  compressor: 'zstd' | 'lz4';
  readTracking: boolean;
  blackhole?: boolean;
  unsafe?: boolean;
  pskFile?: string;
  insecure?: boolean;
  memory: number;
  workload: string;
  seed: number;
  rate: number;
  client?: string;
  heartbeatTimeout?: number;
  journal?: string;
  seconds?: number;
  disk: number;
  diskBuffer: number;
  verifyDisk: boolean;
  /** --disk-scrub: the disks checked range by range in the background instead. */
  diskScrub?: boolean;
  /** Xen: the domU's disk image, served over NBD here and replicated (docs/xen-adapter.md, "Disk"). */
  diskImage?: string;
  diskListen: string;
  diskDevice?: string;
  waitDomain: number;
  metrics?: string;
  maxPauseShare: number;
}

export function registerReplication(program: Command): void {
  registerProtect(program);
  registerBackup(program);
  registerReprotect(program);
  registerFailoverAndStatus(program);
  program
    .command('keygen')
    .description('write a new pre-shared key for the replication channel (copy it to both hosts)')
    .requiredOption('--out <file>', 'key file to create (mode 0600)', pathOption('--out', 'new-output'))
    .action((o: { out: string }) => {
      try {
        fs.writeFileSync(o.out, `${newPsk()}\n`, { mode: 0o600, flag: 'wx' });
      } catch (e) {
        throw new RemusError(ErrorCode.IO, `cannot create ${o.out}: ${(e as Error).message}`, {}, { cause: e });
      }
      console.log(`wrote ${o.out}`);
    });
}

function registerProtect(program: Command): void {
  const protect = addIntervalOptions(
    program
      .command('protect')
      .description('protect a domain with checkpoints to a backup host (backup = host[:port], default port 7400)')
      .argument('<domain>', "sim:<name>, or a Xen domain's name or id")
      .argument('[backup]', "the backup's host[:port]", hostPortOption('backup', DEFAULT_REPLICATION_PORT)),
    { share: '--max-pause-share' },
  )
    .option('--cache <size>', 'page cache: percent of guest memory or bytes', cacheOption, DEFAULT_CACHE)
    .option(
      '--compressor <c>',
      'zstd (whole batch) or lz4 (per page)',
      choiceOption('--compressor', ['zstd', 'lz4'] as const),
      'zstd',
    )
    .option('-u, --no-compress', 'send pages raw, keep no cache (plain Remus; xl remus -u)')
    .option(
      '--no-read-tracking',
      'do not send pages that equal a block the guest read from disk as references to that block',
    )
    .option(
      '-b, --blackhole',
      'replicate to nowhere: checkpoints are taken, encoded and acknowledged locally (xl remus -b)',
    )
    .option('-F, --unsafe', 'allow unsafe configurations (xl remus -F)');
  addPacingOptions(addSecurityOptions(protect)).option(
    '--max-pause-share <fraction>',
    `--trigger output: checkpoints a held output starts keep the guest paused at most this share of ` +
      `every ${PAUSE_SHARE_WINDOW_MS} ms (the interval's own checkpoints are not held back); ` +
      '--interval auto: the share its interval is chosen for',
    fractionOption('--max-pause-share', 0, 1),
    MAX_PAUSE_SHARE_DEFAULT,
  );
  addSimGuestOptions(protect)
    .option(
      '--disk-buffer <size>',
      'unacknowledged disk writes the backup may buffer (the session resyncs past it)',
      bytesOption('--disk-buffer', DISK_BUFFER),
      DISK_BUFFER_BYTES_DEFAULT,
    )
    .option(
      '--disk-scrub',
      'verify the disks equal in the background, a few 1 MiB ranges with each checkpoint, instead of a ' +
        'whole-disk check at each session\'s first (no pause, no held ACK; docs/disk.md, "Scrub")',
    )
    .option('--journal <file>', 'append one JSON line per checkpoint and event', pathOption('--journal', 'output'));
  addXenDiskOptions(protect).option(
    '--seconds <n>',
    'stop after n seconds (GOODBYE: no failover)',
    intOption('--seconds', 1, 1e7),
  );
  addMetricsOption(protect);
  addCoordinationOptions(protect);
  addNetOptions(protect).action(
    async (domainArg: string, backupArg: string | undefined, o: ProtectOpts, cmd: Command) =>
      runProtect(domainArg, backupArg, o, cmd),
  );
}

/** protect's options for a simulated domain (sim:<name>). */
function addSimGuestOptions(protect: Command): Command {
  return protect
    .option('--memory <size>', 'sim: guest memory', memoryOption('--memory'), 256 * 2 ** 20)
    .option(
      '--workload <w>',
      'sim: oltp, scan, idle or trace:<file.rdt> (replays an RDTRACE1 trace, one epoch per step)',
      workloadOption,
      'oltp',
    )
    .option('--seed <n>', 'sim: workload seed', intOption('--seed', 0, 2 ** 32 - 1), 1)
    .option('--rate <n>', 'sim: guest steps (transactions) per second', intOption('--rate', 0, 1e7), 2000)
    .option('--client <host:port>', 'sim: where the guest sends its outputs', hostPortOption('--client', null, false))
    .option(
      '--disk <size>',
      "sim: the guest's disk (oltp and scan write their WAL and pages there, and read refills); 0: none",
      bytesOption('--disk', { min: 256 * 1024, max: 2 ** 40, zero: true, pageMultiple: true, example: '16MiB' }),
      16 * 2 ** 20,
    )
    .option(
      '--no-verify-disk',
      'skip the whole-disk checksum at the first checkpoint after each disk copy (it lengthens that pause)',
    );
}

/** protect's options for a Xen domain's disk, served over NBD by the protect process. */
function addXenDiskOptions(protect: Command): Command {
  return protect
    .option(
      '--disk-image <file>',
      "xen: the domU's raw disk image, served over NBD by this process and replicated " +
        '(start the domU once it listens)',
      pathOption('--disk-image', 'rw-input'),
    )
    .option(
      '--disk-listen <addr:port>',
      'xen: where --disk-image is served',
      hostPortOption('--disk-listen', DEFAULT_NBD_PORT),
      `127.0.0.1:${DEFAULT_NBD_PORT}`,
    )
    .option(
      '--disk-device <dev>',
      "xen: attach --disk-image to this /dev/nbdN (nbd-client), the device the domU's disk names",
      nbdDeviceOption('--disk-device'),
    )
    .option(
      '--wait-domain <s>',
      'xen: with --disk-image, how long to wait for the domain to be created',
      intOption('--wait-domain', 1, 86400),
      600,
    );
}

interface BackupOpts extends CoordinationCliOptions {
  listen: string;
  pskFile?: string;
  insecure?: boolean;
  maxMemory: number;
  diskDir?: string;
  diskBuffer: number;
  reuseDisk?: string;
  checksumOnFailover?: boolean;
  metrics?: string;
}

function registerBackup(program: Command): void {
  const backup = program
    .command('backup')
    .description('receive checkpoints and take over when the primary fails')
    .option(
      '--listen <addr:port>',
      'address to listen on',
      hostPortOption('--listen', DEFAULT_REPLICATION_PORT),
      `0.0.0.0:${DEFAULT_REPLICATION_PORT}`,
    );
  addReplicaDiskOptions(addSecurityOptions(backup))
    .option('--max-memory <size>', 'largest guest accepted', memoryOption('--max-memory'), 64 * 2 ** 30)
    .option(
      '--reuse-disk <image>',
      "this host's existing copy of the domain's disk (the old primary's, for remusdb " +
        'reprotect): only blocks that differ are copied',
      pathOption('--reuse-disk', 'rw-input'),
    )
    .option(
      '--checksum-on-failover',
      'sim: CRC32C the resumed memory before the guest runs, for verification ' +
        '(adds ~150 ms per GiB to the failover)',
    );
  addCoordinationOptions(backup);
  addMetricsOption(backup).action(async (o: BackupOpts) => {
    const { host, port } = parseHostPort(o.listen, DEFAULT_REPLICATION_PORT);
    const sec = security(o, log);
    tuneReplicationProcess(log);
    const metrics = await openMetrics(o.metrics);
    const svc = await closingOnError(metrics, async () => {
      const b = new BackupService({
        host,
        port,
        security: sec,
        pageCountMax: o.maxMemory / PAGE_BYTES,
        batchPagesMax: BATCH_PAGES_MAX_DEFAULT,
        diskDir: o.diskDir,
        diskBufferBytesMax: o.diskBuffer,
        reuseDisk: o.reuseDisk,
        checksumOnFailover: o.checksumOnFailover === true,
        metrics,
        coordination: o.coordination ? { endpoints: o.coordination, ttlSeconds: o.ownerTtl } : null,
        log,
      });
      await b.start();
      return b;
    });
    log(`backup listening on ${host}:${svc.port} (control ${socketPath('backup', String(svc.port))})`);
    await untilStopped(async () => svc.stop(), { log });
  });
}

interface ReprotectOpts extends IntervalCliOptions, NetCliOptions {
  unsafe?: boolean;
  pskFile?: string;
  insecure?: boolean;
  heartbeatTimeout?: number;
  wait: boolean;
  timeout: number;
  diskScrub?: boolean;
}

/** The network options as the backup's reprotect request carries them (net/net-plan.ts netChoiceOf). */
function netChoiceOfOptions(o: NetCliOptions): NetCliOptions {
  const { netBuffer, vif, routed, commitProtection, dscp, dscpInKernel, pgwireInKernel, pgPort, queue } = o;
  const { maxInFlight, trigger } = o;
  return {
    netBuffer,
    vif,
    routed,
    commitProtection,
    dscp,
    dscpInKernel,
    pgwireInKernel,
    pgPort,
    queue,
    maxInFlight,
    trigger,
  };
}

function registerReprotect(program: Command): void {
  const reprotect = program
    .command('reprotect')
    .description(
      'after a failover, protect the domain again, with the old host as the new backup ' +
        '(start `remusdb backup --reuse-disk <its old disk image>` there first)',
    )
    .argument('<domain>', "the domain this host's backup took over")
    .argument('<new-backup>', "the new backup's host[:port]", hostPortOption('new-backup', DEFAULT_REPLICATION_PORT));
  addPacingOptions(addNetOptions(addIntervalOptions(addSecurityOptions(reprotect))))
    .option('-F, --unsafe', 'allow unsafe configurations (--no-net-buffer)')
    .option(
      '--disk-scrub',
      'verify the disks equal in the background, a few 1 MiB ranges with each checkpoint, instead of a ' +
        'whole-disk check at each session\'s first (no pause, no held ACK; docs/disk.md, "Scrub")',
    )
    .option(
      '--timeout <s>',
      'give up waiting for protection after s seconds (reprotection goes on)',
      intOption('--timeout', 1, 86400),
      600,
    )
    .option(
      '--no-wait',
      'return once reprotection started (default: show progress until protected and the disks are verified equal)',
    )
    .action(async (domain: string, newBackup: string, o: ReprotectOpts) => {
      if (!o.insecure && !o.pskFile)
        throw new RemusError(ErrorCode.BAD_ARGUMENT, 'give --psk-file (or --insecure for a lab)');
      refuseUnbuffered(o);
      const interval = intervalChoice(o);
      const sock = await backupHolding(domain);
      const r = await controlRequest(
        sock,
        {
          cmd: 'reprotect',
          domain,
          backup: newBackup,
          pskFile: o.pskFile ? path.resolve(o.pskFile) : undefined,
          insecure: o.insecure === true,
          intervalMs: interval.intervalMs,
          intervalAuto: interval.intervalAuto,
          heartbeatTimeoutMs: o.heartbeatTimeout,
          diskScrub: o.diskScrub === true,
          net: netChoiceOfOptions(o),
        },
        REPROTECT_START_TIMEOUT_MS,
      );
      throwControlError(r);
      console.log(
        `reprotecting ${domain} → ${newBackup}: ${roundedSize(Number(r.resyncBytes ?? 0))} of its ` +
          `${roundedSize(Number(r.diskBytes ?? 0))} disk to copy, then a full memory copy`,
      );
      if (o.wait) await showReprotectProgress(sock, o.timeout * 1000);
    });
}

function registerFailoverAndStatus(program: Command): void {
  program
    .command('failover <domain>')
    .description('promote the backup of a domain now (manual failover)')
    .action(async (domain: string) => {
      const r = await controlRequest(await backupHolding(domain), { cmd: 'failover', domain });
      throwControlError(r);
      console.log(`failed over ${domain}: resumed from epoch ${String(r.epoch)}`);
    });
  program
    .command('status [domain]')
    .description('state of the protect and backup processes on this host')
    .option('--json', 'one JSON object')
    .action(async (domain: string | undefined, o: { json?: boolean }) => {
      const all = [];
      for (const s of listSockets()) {
        const st = await controlRequest(s, { cmd: 'status' }).catch(() => null);
        if (st && (!domain || st.domain === domain || st.domain === `sim:${domain}`)) all.push(st);
      }
      if (o.json) {
        console.log(JSON.stringify({ processes: all }));
        return;
      }
      if (!all.length) {
        console.log('no remusdb protect or backup process is running on this host');
        return;
      }
      for (const st of all) console.log(formatStatus(st));
    });
}

/** A control request's error answer, thrown as the RemusError it was (an unknown code kept in details). */
function throwControlError(r: Record<string, unknown>): void {
  const e = r.error as { code: unknown; message: unknown } | undefined;
  if (e) throw new RemusError(errorCodeOf(e.code, ErrorCode.CONTROL), String(e.message), { remoteCode: e.code });
}

async function runProtect(
  domainArg: string,
  backupArg: string | undefined,
  o: ProtectOpts,
  cmd: Command,
): Promise<void> {
  const { driver, name } = resolveDomain(domainArg);
  checkProtectChoices(driver, backupArg, o, cmd);
  const backup = o.blackhole ? ('blackhole' as const) : parseHostPort(backupArg!, DEFAULT_REPLICATION_PORT);
  const sec = o.blackhole ? ({ insecure: true } as const) : security(o, log); // a bad key fails before anything opens
  netPreflight(o, driver); // before the domain (and a Xen domain's disk) is opened
  tuneReplicationProcess(log);
  const metrics = await openMetrics(o.metrics); // and a port in use too
  const ownership = await closingOnError(metrics, () => claimAsPrimary(o, name));
  const svc = await closingOnError(metrics, () =>
    releasingOnError(ownership, () => openProtect(o, driver, name, backup, sec, metrics, ownership)),
  );
  svc.start();
  warnDiskVerifyPause(svc, o.verifyDisk && o.diskScrub !== true);
  const held = o.netBuffer === false ? '; outputs NOT buffered (-n)' : netLine(svc.netPlan);
  log(
    `protecting ${svc.opened.label} (${svc.opened.summary}) every ${intervalLine(svc)}${paceLine(svc)} ` +
      `→ ${o.blackhole ? 'blackhole' : backupArg}${held}`,
  );
  await runUntilStopped(svc, o.seconds);
}

/**
 * --verify-disk checksums the whole disk at each session's first checkpoint: read ahead while
 * the guest runs, but what it wrote since is read with it paused, and the backup reads its
 * whole copy before it acknowledges (docs/disk.md): past DISK_VERIFY_WARN_BYTES the operator is told.
 */
function warnDiskVerifyPause(svc: ProtectService, verifyDisk: boolean): void {
  const bytes = svc.opened.disk?.sizeBytes ?? 0;
  if (!verifyDisk || bytes < DISK_VERIFY_WARN_BYTES) return;
  log(
    `WARNING: --verify-disk: the first checkpoint of every session checksums the whole ${roundedSize(bytes)} ` +
      'disk; what the guest wrote since the read-ahead is read with the guest paused, and outputs wait while ' +
      'the backup reads its copy (seconds for disks of GiBs; docs/disk.md, "Verification"); --no-verify-disk ' +
      'skips that check',
  );
}

/** --coordination: this process must own the domain's key before it opens the domain (else the warning). */
async function claimAsPrimary(o: ProtectOpts, name: string): Promise<Ownership | null> {
  if (!o.coordination) {
    log(`WARNING: ${PARTITION_WARNING}`);
    return null;
  }
  const own = await claimOwnership({
    endpoints: o.coordination,
    domain: name,
    role: 'primary',
    ttlSeconds: o.ownerTtl,
    waitFreeMs: o.ownerTtl * 1000 + 2000, // a restarted protect waits for its own last lease to end
    log,
  });
  log(`owner of ${name} in etcd (${own.key}, lease ${o.ownerTtl} s)`);
  return own;
}

async function releasingOnError<T>(own: Ownership | null, f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    await own?.release();
    throw e;
  }
}

async function openProtect(
  o: ProtectOpts,
  driver: DomainDriver,
  name: string,
  backup: ProtectConfig['backup'],
  sec: Security,
  metrics: MetricsExporter | null,
  ownership: Ownership | null,
): Promise<ProtectService> {
  const opened = await driver.open({
    name,
    diskBufferBytesMax: o.diskBuffer,
    readTracking: o.readTracking && o.compress && driver.features.readTracking === true,
    sim: simOpenOptions(o),
    xen: xenOpenOptions(o),
    log,
  });
  let net: ReturnType<typeof netPlan>;
  try {
    net = netPlan(o, {
      driver,
      tag: opened.label.replace(':', '-'),
      label: opened.label,
      domid: opened.domid,
      defaultInterfaces: () => opened.defaultInterfaces(),
    });
  } catch (e) {
    await opened.close();
    throw e;
  }
  return ProtectService.create({
    opened,
    backup,
    security: sec,
    net,
    holdOutputs: o.netBuffer !== false,
    journal: o.journal ?? null,
    engine: engineOptions(driver, opened.domain.pageCount, {
      ...intervalChoice(o),
      compressor: o.compress ? o.compressor : 'none',
      cache: o.cache,
      maxInFlight: maxInFlightOf(o, net),
      heartbeatTimeoutMs: o.heartbeatTimeout,
      diskBufferBytesMax: o.diskBuffer,
      verifyDisk: o.verifyDisk,
      diskScrub: o.diskScrub === true,
      trigger: triggerOf(o, net),
      maxPauseShare: o.maxPauseShare,
    }),
    metrics,
    ownsMetrics: true,
    ownership,
    log,
  });
}

/** "50 ms", or under --interval auto "5–100 ms as checkpoints cost (paused at most 10 %)". */
function intervalLine(svc: ProtectService): string {
  const m = svc.primary.stats().intervalModel;
  if (!m) return `${svc.primary.opts.intervalMs} ms`;
  return `${m.minMs}–${m.maxMs} ms as checkpoints cost (paused at most ${(100 * m.maxShare).toFixed(0)} %)`;
}

/** ", or sooner when an output waits (paused at most 10 %)" under --trigger output. */
function paceLine(svc: ProtectService): string {
  const e = svc.primary.opts;
  if (e.trigger !== 'output') return '';
  return `, or sooner when an output waits (paused at most ${(100 * (e.maxPauseShare ?? 0)).toFixed(0)} %)`;
}

/** -n releases outputs that a failover may lose: only with --unsafe. */
function refuseUnbuffered(o: { netBuffer?: unknown; unsafe?: boolean }): void {
  if (o.netBuffer === false && !o.unsafe) {
    throw new RemusError(
      ErrorCode.BAD_ARGUMENT,
      '--no-net-buffer lets clients see state that a failover would lose: add --unsafe (-F) to really do it',
    );
  }
}

/** Refusals before anything opens: unsafe choices, features the driver lacks, another driver's options. */
function checkProtectChoices(driver: DomainDriver, backupArg: string | undefined, o: ProtectOpts, cmd: Command): void {
  refuseUnbuffered(o);
  if (o.trigger === 'timer' && o.interval !== 'auto' && cmd.getOptionValueSource('maxPauseShare') === 'cli') {
    throw new RemusError(
      ErrorCode.BAD_ARGUMENT,
      '--max-pause-share bounds the checkpoints held outputs start, or the pauses --interval auto allows: ' +
        'it goes with --trigger output or --interval auto',
    );
  }
  intervalChoice(o); // refuses a loss window with a fixed interval
  if (!o.blackhole && !backupArg)
    throw new RemusError(ErrorCode.BAD_ARGUMENT, 'name the backup host (host[:port]) or use --blackhole');
  requireFeature(driver, o.blackhole ? 'blackhole' : 'backupHost');
  if (o.journal) requireFeature(driver, 'journal');
  if (o.metrics) requireFeature(driver, 'metrics');
  for (const other of DRIVERS.filter((d) => d !== driver)) {
    for (const opt of other.ownOptions) {
      if (driver.ownOptions.includes(opt) || cmd.getOptionValueSource(opt) !== 'cli') continue;
      const flag = `--${opt.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
      throw new RemusError(
        ErrorCode.BAD_ARGUMENT,
        `${flag} is for ${other.kind} domains, not ${driver.kind} ones` +
          (driver.kind === 'sim' && opt.startsWith('disk') ? ": a simulated domain's disk is --disk <size>" : ''),
      );
    }
  }
}

function simOpenOptions(o: ProtectOpts): SimOpenOptions {
  const trace = o.workload.startsWith('trace:');
  return {
    memoryBytes: o.memory,
    workload: trace ? 'trace' : (o.workload as Workload),
    tracePath: trace ? o.workload.slice(6) : undefined,
    seed: o.seed,
    stepsPerSec: o.rate,
    client: o.client ?? null,
    diskBytes: o.disk,
  };
}

function xenOpenOptions(o: ProtectOpts): XenOpenOptions {
  return {
    diskImage: o.diskImage ?? null,
    diskListen: parseHostPort(o.diskListen, DEFAULT_NBD_PORT),
    diskDevice: o.diskDevice ?? null,
    waitDomainMs: o.waitDomain * 1000,
  };
}

function netLine(net: ReturnType<typeof netPlan>): string {
  if (!net) return '';
  const cp = net.commitProtection === 'off' ? '' : ` (commit protection ${net.commitProtection})`;
  return `; ${net.driver} buffers ${net.ifaces.join(', ')}${cp}`;
}

/** Under --trigger output: how many checkpoints held outputs started, and the bound on the paused share. */
function earlyOf(s: Record<string, unknown>): string {
  if (s.trigger !== 'output') return '';
  const bound = s.max_pause_share === undefined ? '' : ` of at most ${(100 * Number(s.max_pause_share)).toFixed(0)}%`;
  return `${bound}, ${Number(s.earlyCheckpoints ?? 0)} started by outputs`;
}

/** " | interval 12 ms (auto: fixed 0.4 ms + 2.1 us/page, 830 pages/s)" under --interval auto. */
function intervalOf(s: Record<string, unknown>): string {
  const m = s.intervalModel as import('../engine/adaptive-interval').IntervalModel | null | undefined;
  if (!m) return '';
  const model = m.samples
    ? `fixed ${m.fixedMs.toFixed(2)} ms + ${(1000 * m.perPageMs).toFixed(1)} us/page, ` +
      `${(1000 * m.dirtyPagesPerMs).toFixed(0)} dirty pages/s`
    : 'no sample yet';
  return ` | interval ${m.intervalMs.toFixed(0)} ms (auto, ${m.minMs}–${m.maxMs}: ${model})`;
}

function progressLine(s: Record<string, unknown>): string {
  const n = (k: string): number => Number(s[k] ?? 0);
  const ratio = n('wireBytes') ? (n('rawBytes') / n('wireBytes')).toFixed(1) : '-';
  const d = s.disk as
    | { resyncPendingBytes: number; resyncCopiedBytes: number; forwardedBytes: number }
    | null
    | undefined;
  const disk = !d
    ? ''
    : s.state === 'syncing'
      ? ` | disk copy ${(d.resyncCopiedBytes / 2 ** 20).toFixed(1)} ` +
        `of ${((d.resyncCopiedBytes + d.resyncPendingBytes) / 2 ** 20).toFixed(1)} MiB`
      : ` | disk ${(d.forwardedBytes / 2 ** 20).toFixed(1)} MiB written, refs ${n('diskRefPages')}`;
  return (
    `${String(s.state)} epoch ${n('epoch')} acked ${n('ackedEpoch')}${disk} | pause ` +
    `p50 ${n('pauseMsP50').toFixed(2)} ms p99 ${n('pauseMsP99').toFixed(2)} ms, ` +
    `${(100 * n('pauseShare')).toFixed(1)}% of the time${earlyOf(s)}${intervalOf(s)} ` +
    `| dirty ${n('dirtyPagesLast')} pages ` +
    `| wire ${(n('wireBytes') / 1e6).toFixed(1)} MB ratio ${ratio}x | held ${n('outputsHeld')} | last ack ` +
    `${n('lastAckAgeMs').toFixed(0)} ms ago`
  );
}

function formatStatus(s: Record<string, unknown>): string {
  const coord = coordinationLine((s.coordination ?? {}) as Record<string, unknown>);
  if (s.role === 'primary') return `primary ${String(s.domain)}: ${progressLine(s)}\n  ${coord}`;
  if (s.role === 'agent') return agentLines(s);
  const r = s.resumed as { epoch: number } | null;
  return (
    `backup ${String(s.listen)}: ${String(s.state)} ${s.domain ? String(s.domain) : '(no domain yet)'} ` +
    `committed epoch ${String(s.committedEpoch)} checkpoints ${String(s.checkpoints)}${
      r ? ` — resumed from epoch ${r.epoch}` : ''
    }\n  ${coord}`
  );
}

/** The agent: its pool as it sees it, and each domain it protects again (backup chosen, why, state). */
function agentLines(s: Record<string, unknown>): string {
  const pool = (s.pool ?? []) as Array<{ host: string; slots: string[] }>;
  const lines = [`agent ${String(s.host)} (${String(s.address)}): pool of ${pool.length} hosts`];
  for (const h of pool) lines.push(`  ${h.host}: ${h.slots.join(' ')}`);
  for (const r of (s.reprotections ?? []) as Array<Record<string, unknown>>) {
    const b = r.backup as { host: string; address: string } | null;
    const p = (r.progress ?? {}) as Record<string, unknown>;
    const to = b ? `→ ${b.host} (${b.address}) ${String(p.state ?? '')}` : '→ no backup yet';
    lines.push(`  ${String(r.domain)} runs here ${to}: ${String(r.why)}`);
  }
  return lines.join('\n');
}

/** "coordination: etcd, owner (proven 3.2 s more)" or the two-node warning. */
function coordinationLine(c: Record<string, unknown> = {}): string {
  if (c.mode !== 'etcd') return `coordination: none — WARNING: ${String(c.warning ?? 'partitions are not covered')}`;
  if (c.key !== undefined) {
    const proven =
      c.owned === true
        ? `owner, proven ${(Number(c.owned_for_ms) / 1000).toFixed(1)} s more`
        : 'NOT provably the owner';
    const waiting = c.outputs_waiting_for_ownership === true ? '; outputs wait for ownership' : '';
    return `coordination: etcd ${String(c.key)}: ${proven}${waiting}`;
  }
  return `coordination: etcd${c.owner_key ? `, owner of ${String(c.owner_key)}` : ''}`;
}

/** The control socket of the backup process on this host that holds domain. */
async function backupHolding(domain: string): Promise<string> {
  const socks = listSockets().filter((s) => /\/backup-[^/]+\.sock$/.test(s));
  for (const s of socks) {
    const st = await controlRequest(s, { cmd: 'status' }).catch(() => null);
    if (st && (st.domain === domain || st.domain === `sim:${domain}`)) return s;
  }
  throw new RemusError(
    ErrorCode.NO_DOMAIN,
    `no backup on this host holds ${domain} (looked at ${socks.length} backup control sockets)`,
  );
}

/** Progress bar (bytes copied, rate, ETA) until protected with the disks verified equal. */
async function showReprotectProgress(sock: string, timeoutMs: number): Promise<void> {
  const t0 = Date.now();
  let lastLine = '';
  for (;;) {
    const st = await controlRequest(sock, { cmd: 'status' });
    const p = (st.reprotecting ?? {}) as Record<string, unknown>;
    const d = (p.disk ?? null) as { resyncCopiedBytes: number; resyncPendingBytes: number; sizeBytes: number } | null;
    const copied = d?.resyncCopiedBytes ?? 0,
      pending = d?.resyncPendingBytes ?? 0;
    const secs = (Date.now() - t0) / 1000,
      rate = copied / Math.max(secs, 0.001);
    const frac = copied + pending > 0 ? copied / (copied + pending) : 1;
    const bar = '#'.repeat(Math.round(frac * 30)).padEnd(30, '.');
    const eta = pending > 0 && rate > 0 ? `ETA ${(pending / rate).toFixed(1)} s` : '';
    const line =
      `[${bar}] ${roundedSize(copied)} / ${roundedSize(copied + pending)} ${roundedSize(rate)}/s ${eta} ` +
      `| ${String(p.state)} epoch ${String(p.ackedEpoch ?? 0)}`;
    if (process.stdout.isTTY) process.stdout.write(`\r${line}   `);
    else if (line !== lastLine && Date.now() % 1000 < 250) console.log(line);
    lastLine = line;
    const verified = !d || Number(p.diskVerifiedEpoch ?? 0) > 0;
    if (p.state === 'protected' && verified) {
      if (process.stdout.isTTY) process.stdout.write('\n');
      const verifiedAt = d ? `, disks verified equal at checkpoint ${String(p.diskVerifiedEpoch)}` : '';
      console.log(`protected again after ${secs.toFixed(1)} s: copied ${roundedSize(copied)} of disk${verifiedAt}`);
      return;
    }
    if (Date.now() - t0 > timeoutMs) {
      if (process.stdout.isTTY) process.stdout.write('\n');
      throw new RemusError(
        ErrorCode.PEER_GONE,
        `not protected after ${timeoutMs / 1000} s (state ${String(p.state)}; is the new backup reachable?): ` +
          `reprotection goes on in the background — see remusdb status`,
      );
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Live progress on a terminal until SIGINT/SIGTERM (or `seconds`, or the service ends itself), then a clean stop. */
async function runUntilStopped(
  svc: { status(): Record<string, unknown>; stop(): Promise<void>; ended?: Promise<string> },
  seconds: number | undefined,
): Promise<void> {
  const live = process.stdout.isTTY
    ? setInterval(() => process.stdout.write(`\r${progressLine(svc.status())}   `), 1000)
    : null;
  const stopAfter = seconds ? setTimeout(() => process.kill(process.pid, 'SIGTERM'), seconds * 1000) : null;
  await untilStopped(
    async () => {
      if (live) {
        clearInterval(live);
        process.stdout.write('\n');
      }
      if (stopAfter) clearTimeout(stopAfter);
      await svc.stop();
    },
    { ended: svc.ended, log },
  );
}

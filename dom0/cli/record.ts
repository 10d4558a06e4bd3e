// record: `remusdb record <domain> --out F.rdt` — traces a running Xen domain's dirty pages
// (log-dirty + read-only foreign mapping, dom0/hypervisor/xen/xen-record.ts) into an RDTRACE1
// file that `remusdb bench trace` replays, for capacity planning before protecting it.
import type { Command } from 'commander';
import { ErrorCode, RemusError, isRemusError } from '../errors';
import { resolveDomain } from '../hypervisor/registry';
import { xenLogdirtyAddon } from '../hypervisor/xen/xen-addon';
import { recordDomain, type RecordResult } from '../hypervisor/xen/xen-record';
import { bytesOption, intOption } from './options';
import { pathOption } from './path-options';
import { HostLock } from '../service/host-lock';
import { protectLockPath } from '../service/control';

const DEFAULT_BYTES_MAX = 2 * 2 ** 30;

interface RecordOpts {
  out: string;
  interval: number;
  seconds: number;
  maxBytes: number;
  json?: boolean;
}

export function registerRecord(program: Command): void {
  program
    .command('record <domain>')
    .description("record a running Xen domain's dirty pages as an RDTRACE1 trace (for `remusdb bench trace`)")
    .requiredOption('--out <file>', 'trace file to write (.rdt, or .rdt.gz to compress)', pathOption('--out', 'output'))
    .option(
      '--interval <ms>',
      'epoch length: how often the dirty bitmap is read',
      intOption('--interval', 10, 60000),
      50,
    )
    .option(
      '--seconds <n>',
      'how long to record after the first full copy (Ctrl-C stops earlier)',
      intOption('--seconds', 1, 86400),
      10,
    )
    .option(
      '--max-bytes <size>',
      'stop before the trace passes this size (records before gzip)',
      bytesOption('--max-bytes', { min: 2 ** 20, max: 2 ** 40, example: '2GiB' }),
      DEFAULT_BYTES_MAX,
    )
    .option('--json', 'print the summary as one JSON object on stdout')
    .action(async (domain: string, o: RecordOpts) => {
      const spec = resolveForRecord(domain);
      if (spec.driver.wireKind !== 'xen') {
        throw new RemusError(
          ErrorCode.BAD_ARGUMENT,
          `${domain}: record traces Xen domains; for a simulated workload write a trace with \`remusdb trace synth\``,
        );
      }
      const addon = xenLogdirtyAddon();
      const ac = new AbortController();
      const stop = (): void => ac.abort();
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      try {
        const r = await recordDomain({
          domain: spec.name,
          out: o.out,
          intervalMs: o.interval,
          seconds: o.seconds,
          bytesMax: o.maxBytes,
          addon,
          signal: ac.signal,
          log: (l) => console.error(l),
          lockDomain: (name) =>
            HostLock.acquire(protectLockPath('xen', name), `dirty tracking of ${name} (remusdb record or protect)`),
        });
        if (o.json) console.log(JSON.stringify(r));
        else console.error(summary(o.out, r));
      } finally {
        process.removeListener('SIGINT', stop);
        process.removeListener('SIGTERM', stop);
      }
    });
}

/** The domain argument; off Xen the NO_XEN error says what record needs and what to use instead. */
function resolveForRecord(domain: string): ReturnType<typeof resolveDomain> {
  try {
    return resolveDomain(domain);
  } catch (e) {
    if (!isRemusError(e, ErrorCode.NO_XEN)) throw e;
    throw new RemusError(
      ErrorCode.NO_XEN,
      `record reads a running Xen domain's memory, but this host has no Xen (/dev/xen/privcmd is absent): run it in ` +
        `the dom0 that hosts ${JSON.stringify(domain)}; without Xen, plan with a synthetic trace: \`remusdb trace ` +
        `synth ` +
        `--out t.rdt\` then \`remusdb bench trace t.rdt\``,
      {},
      { cause: e },
    );
  }
}

function summary(out: string, r: RecordResult): string {
  return [
    `wrote ${out}: ${r.epochs} epochs (${r.firstEpochPages} pages in the first, of ${r.totalPages}), ${r.pages} page ` +
      `records, ${r.fileBytes} bytes`,
    `dirty pages per epoch: p50 ${r.dirtyP50}, p99 ${r.dirtyP99}, max ${r.dirtyMax}; unreadable ${r.pagesUnreadable}`,
    `stopped by ${r.stoppedBy} after ${(r.durationMs / 1000).toFixed(1)} s (first epoch ${r.firstEpochMs.toFixed(0)} ` +
      `ms); next: remusdb bench trace ${out}`,
  ].join('\n');
}

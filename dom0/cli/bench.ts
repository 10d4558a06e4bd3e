// bench: `remusdb bench trace <file>` (trace replay through the codec, verified),
// `remusdb bench codec` (codec throughput against memcpy, measured in the same run),
// `remusdb bench net` (PostgreSQL TPS behind the network buffer: none / remus / commit
// protection, per checkpoint interval; root), `remusdb bench scale` (guest sizes) and
// `remusdb bench multi` (several domains sharing one backup host, against one alone). Paths
// (the trace, --pg-bin, --svg) are checked as the command line is parsed: a bad --svg fails
// at once, not after the whole benchmark.
import type { Command } from 'commander';
import { DEFAULT_CACHE } from '../memory/cache-size';
import { benchTrace, type TraceBenchResult } from '../bench/trace-bench';
import { benchCodec, formatCodecBench } from '../bench/codec-bench';
import { benchEngine, formatEngineBench } from '../bench/engine-bench';
import { benchNet, formatNetBench } from '../bench/net-bench';
import { bytesOption, cacheOption, choiceOption, fractionOption, intListOption, intOption } from './options';
import { TRIGGERS, type Trigger } from '../engine/pacing';
import { MAX_PAUSE_SHARE_DEFAULT } from '../limits';
import { pathOption } from './path-options';
import { SCALE_SIZES_DEFAULT, benchScale, formatScaleBench, scaleSvg } from '../bench/scale-bench';
import { writeFigure } from '../bench/net-svg';
import { benchMulti, formatMultiBench } from '../bench/multi-bench';
import { memoryOption } from './replication';
import { ErrorCode, RemusError } from '../errors';

export function registerBench(program: Command): void {
  const bench = program.command('bench').description('benchmarks');
  bench
    .command('trace')
    .description('replay a trace through the encoder and a verifying backup decoder')
    .argument('<file>', 'an RDTRACE1 trace (.rdt or .rdt.gz)', pathOption('trace', 'input'))
    .option('--cache <size>', 'page cache: percent of guest memory or bytes', cacheOption, DEFAULT_CACHE)
    .option(
      '--compressor <c>',
      'zstd (records zstd-packed per batch), lz4 (per page)',
      choiceOption('--compressor', ['zstd', 'lz4'] as const),
      'zstd',
    )
    .option('--no-compress', 'plain Remus: send every page raw')
    .option(
      '--impl <impl>',
      'native or ref (TypeScript reference codec)',
      choiceOption('--impl', ['native', 'ref'] as const),
      'native',
    )
    .option('--json', 'print one JSON object on stdout')
    .action(
      async (
        file: string,
        o: { cache: string; compressor: 'zstd' | 'lz4'; compress: boolean; impl: 'native' | 'ref'; json?: boolean },
      ) => {
        const live = !o.json && process.stderr.isTTY;
        const r = await benchTrace(file, {
          cache: o.cache,
          compressor: o.compress ? o.compressor : 'none',
          impl: o.impl,
          onEpoch: live
            ? (e, x) => process.stderr.write(`\repoch ${e}  ratio ${x.ratio_incremental.toFixed(1)}x  `)
            : undefined,
        });
        if (live) process.stderr.write('\n');
        console.log(o.json ? JSON.stringify(r) : formatTraceBench(r));
      },
    );
  registerEngineBench(bench);
  registerNetBench(bench);
  registerScaleBench(bench);
  registerMultiBench(bench);
  bench
    .command('codec')
    .description('encode/decode throughput against memcpy of the same bytes (ratios, medians)')
    .option('--runs <n>', 'runs per figure (the median is reported)', intOption('--runs', 1, 101), 7)
    .option('--json', 'print one JSON object on stdout')
    .action((o: { runs: number; json?: boolean }) => {
      const r = benchCodec({ runs: o.runs });
      console.log(o.json ? JSON.stringify(r) : formatCodecBench(r));
    });
}

export function registerEngineBench(bench: Command): void {
  bench
    .command('engine')
    .description('checkpoint pause against memcpy of the dirty pages, and failover time (medians)')
    .option('--seconds <n>', 'seconds per dirty rate', intOption('--seconds', 1, 600), 4)
    .option('--runs <n>', 'failover runs per signal', intOption('--runs', 1, 21), 3)
    .option('--json', 'print one JSON object on stdout')
    .action(async (o: { seconds: number; runs: number; json?: boolean }) => {
      const r = await benchEngine(o);
      console.log(o.json ? JSON.stringify(r) : formatEngineBench(r));
    });
}

export function registerNetBench(bench: Command): void {
  bench
    .command('net')
    .description(
      'PostgreSQL pgbench TPS behind the network buffer per interval: none, remus, cp_dscp(_kernel), ' +
        'cp_pgwire(_kernel), pg_sync_rep (root)',
    )
    .option('--seconds <n>', 'pgbench -T per run', intOption('--seconds', 1, 3600), 10)
    .option('--runs <n>', 'runs per point (the median is reported)', intOption('--runs', 1, 21), 3)
    .option(
      '--intervals <list>',
      'checkpoint intervals in ms, comma-separated',
      intListOption('--intervals', 1, 10_000, 16),
      [25, 50, 100, 250],
    )
    .option('--scale <n>', 'pgbench -s', intOption('--scale', 1, 1000), 10)
    .option('--clients <n>', 'pgbench -c', intOption('--clients', 1, 256), 8)
    .option('--threads <n>', 'pgbench -j', intOption('--threads', 1, 32), 2)
    .option(
      '--script <name>',
      'pgbench built-in: tpcb-like or simple-update (no branch/teller updates: less lock contention)',
      choiceOption('--script', ['tpcb-like', 'simple-update'] as const),
      'tpcb-like',
    )
    .option(
      '--pg-bin <dir>',
      'bin directory of a PostgreSQL 15 with the commit protection patch ' +
        '(enables cp_dscp; default $REMUSDB_PG_PATCHED_BIN)',
      pathOption('--pg-bin', 'dir'),
    )
    .option('--svg <path>', 'write the TPS plot (SVG) there', pathOption('--svg', 'output'))
    .option(
      '--diagnostic',
      'also measure the queue alone (everything released at once; 128-byte and whole-segment copies)',
    )
    .option(
      '--dom0-cpus <list>',
      'run the engine and the net buffer on these CPUs and PostgreSQL + pgbench on the others (a Xen dom0 ' +
        'has its own CPUs)',
      intListOption('--dom0-cpus', 0, 1023, 1024),
    )
    .option(
      '--trigger <what>',
      'what starts a checkpoint besides the interval: output (a held packet; default, as protect) or timer',
      choiceOption('--trigger', TRIGGERS),
      'output',
    )
    .option(
      '--max-pause-share <fraction>',
      'with --trigger output: the guest is paused at most this share of the time by early checkpoints; ' +
        'with --interval-auto, the share its interval is chosen for',
      fractionOption('--max-pause-share', 0, 1),
      MAX_PAUSE_SHARE_DEFAULT,
    )
    .option(
      '--interval-auto',
      'protect --interval auto: each interval listed is the longest it may choose (--max-loss-window)',
    )
    .option('--json', 'print one JSON object as the last line of stdout')
    .action(
      async (o: {
        intervalAuto?: boolean;
        trigger: Trigger;
        maxPauseShare: number;
        dom0Cpus?: number[];
        seconds: number;
        runs: number;
        intervals: number[];
        diagnostic?: boolean;
        scale: number;
        clients: number;
        threads: number;
        script: 'tpcb-like' | 'simple-update';
        pgBin?: string;
        svg?: string;
        json?: boolean;
      }) => {
        const r = await benchNet({
          seconds: o.seconds,
          runs: o.runs,
          intervalsMs: o.intervals,
          scale: o.scale,
          clients: o.clients,
          threads: o.threads,
          script: o.script,
          diagnostic: o.diagnostic,
          dom0Cpus: o.dom0Cpus,
          trigger: o.trigger,
          maxPauseShare: o.maxPauseShare,
          intervalAuto: o.intervalAuto === true,
          patchedBin: o.pgBin ?? (process.env.REMUSDB_PG_PATCHED_BIN || undefined),
          svg: o.svg,
          log: (line) => process.stderr.write(`${line}\n`),
        });
        console.log(o.json ? JSON.stringify(r) : formatNetBench(r));
      },
    );
}

function formatTraceBench(r: TraceBenchResult): string {
  const mb = (b: number): string => `${(b / 1e6).toFixed(1)} MB`;
  return [
    `trace            ${r.trace}`,
    `compressor       ${r.compressor}`,
    `epochs           ${r.epochs} (${r.pages} pages, guest ${r.total_pages} pages)`,
    `cache            ${r.cache_pages} pages (${mb(r.cache_bytes)}), hit ` +
      `rate ${(100 * r.hit_rate_incremental).toFixed(1)}% after epoch 0`,
    `raw → sent       ${mb(r.raw_bytes)} → ${mb(r.sent_bytes)}  (ratio ${r.ratio.toFixed(2)}x)`,
    `incremental      ${mb(r.raw_bytes_incremental)} → ${mb(r.sent_bytes_incremental)}  ` +
      `(ratio ${r.ratio_incremental.toFixed(2)}x)`,
    `encode / decode  ${r.encode_mb_s.toFixed(0)} / ${r.decode_mb_s.toFixed(0)} MB/s of page data`,
    `encodings        ${Object.entries(r.encodings)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}`,
    `verified         ${r.verified ? 'yes: the backup image matched the trace after every epoch' : 'NO'}`,
  ].join('\n');
}

interface ScaleCliOptions {
  min: number;
  max: number;
  keepLogs?: boolean;
  seconds: number;
  disk?: number;
  verifyDisk: boolean;
  diskScrub?: boolean;
  svg?: string;
  json?: boolean;
}

export function registerScaleBench(bench: Command): void {
  bench
    .command('scale')
    .description(
      'protect sim guests of 256 MiB to 8 GiB (backup and primary as processes): initial sync, pauses, ' +
        'output holds, memory',
    )
    .option(
      '--min <size>',
      'smallest guest size to run',
      bytesOption('--min', { min: 256 * 2 ** 20, max: 64 * 2 ** 30, example: '2GiB' }),
      256 * 2 ** 20,
    )
    .option(
      '--max <size>',
      'largest guest size to run (sizes are 256 MiB, 1, 2, 4, 8 GiB)',
      bytesOption('--max', { min: 256 * 2 ** 20, max: 64 * 2 ** 30, example: '2GiB' }),
      8 * 2 ** 30,
    )
    .option('--seconds <n>', 'steady-state seconds per size', intOption('--seconds', 1, 3600), 10)
    .option(
      '--disk <size>',
      "each guest's disk (default: the sim's, 16 MiB)",
      bytesOption('--disk', { min: 2 ** 20, max: 2 ** 40, pageMultiple: true, example: '2GiB' }),
    )
    .option('--no-verify-disk', "protect's --no-verify-disk (no whole-disk checksum at the first checkpoint)")
    .option('--disk-scrub', "protect's --disk-scrub (the disks checked range by range in the background)")
    .option('--svg <path>', 'write the plot (SVG) there', pathOption('--svg', 'output'))
    .option('--keep-logs', "keep each size's run directory (both processes' logs: REMUSDB_STALL_LOG_MS lines)")
    .option('--json', 'print one JSON object on the last line')
    .action(async (o: ScaleCliOptions) => {
      const sizes = SCALE_SIZES_DEFAULT.filter((b) => b >= o.min && b <= o.max);
      if (sizes.length === 0) throw new RemusError(ErrorCode.BAD_ARGUMENT, 'no guest size between --min and --max');
      const opts = {
        sizes,
        keepLogs: o.keepLogs === true,
        seconds: o.seconds,
        intervalMs: 50,
        rate: 2000,
        diskBytes: o.disk,
        verifyDisk: o.verifyDisk,
        diskScrub: o.diskScrub === true,
        log: (l: string) => process.stderr.write(`${l}\n`),
      };
      const rows = await benchScale(opts);
      const result = {
        bench: 'scale',
        interval_ms: opts.intervalMs,
        rate: opts.rate,
        seconds: o.seconds,
        disk_bytes: o.disk ?? null,
        verify_disk: o.verifyDisk,
        disk_scrub: o.diskScrub === true,
        rows,
      };
      if (o.svg) writeFigure(o.svg, scaleSvg(rows), result);
      if (!o.json) console.log(formatScaleBench(rows, opts));
      console.log(JSON.stringify(result));
    });
}

export function registerMultiBench(bench: Command): void {
  bench
    .command('multi')
    .description(
      'several sim domains protected at once, each to its own backup process on this host (a shared backup ' +
        'host): pauses, output holds and compression against one domain alone (medians)',
    )
    .option('--domains <n>', 'domains protected at once', intOption('--domains', 2, 16), 4)
    .option('--memory <size>', 'guest memory of each domain', memoryOption('--memory'), 64 * 2 ** 20)
    .option('--rate <n>', "each guest's transactions per second (protect --rate)", intOption('--rate', 1, 1e6), 2000)
    .option('--seconds <n>', 'measured seconds per series', intOption('--seconds', 1, 600), 10)
    .option('--runs <n>', 'runs, each alone then shared (the median is reported)', intOption('--runs', 1, 21), 3)
    .option('--interval <ms>', 'checkpoint interval', intOption('--interval', 1, 60000), 50)
    .option(
      '--trigger <what>',
      'what starts a checkpoint besides the interval: output (a held output; default, as protect) or timer',
      choiceOption('--trigger', TRIGGERS),
      'output',
    )
    .option(
      '--heartbeat-timeout <ms>',
      'silence that means the peer is gone (generous: a busy host is not a lost backup)',
      intOption('--heartbeat-timeout', 10, 600000),
      2000,
    )
    .option(
      '--warmup <ms>',
      'after every domain is protected, run this long before measuring',
      intOption('--warmup', 0, 600000),
      2000,
    )
    .option('--json', 'print one JSON object on stdout')
    .action(
      async (o: {
        domains: number;
        memory: number;
        rate: number;
        seconds: number;
        runs: number;
        interval: number;
        trigger: Trigger;
        heartbeatTimeout: number;
        warmup: number;
        json?: boolean;
      }) => {
        const r = await benchMulti({
          domains: o.domains,
          memoryBytes: o.memory,
          rate: o.rate,
          seconds: o.seconds,
          runs: o.runs,
          intervalMs: o.interval,
          trigger: o.trigger,
          heartbeatTimeoutMs: o.heartbeatTimeout,
          warmupMs: o.warmup,
          log: (l) => process.stderr.write(`${l}\n`),
        });
        console.log(o.json ? JSON.stringify(r) : formatMultiBench(r));
      },
    );
}

// trace: `remusdb trace synth` — writes a seeded synthetic database-like RDTRACE1 trace.
import type { Command } from 'commander';
import { OLTP_RATES, SCAN_RATES } from '../trace/db-memory-model';
import { synthTrace } from '../trace/synth';
import { choiceOption, intOption } from './options';
import { pathOption } from './path-options';

export function registerTrace(program: Command): void {
  const trace = program.command('trace').description('dirty-page traces (RDTRACE1)');
  trace
    .command('synth')
    .description('write a seeded synthetic database-like trace (.gz to compress)')
    .requiredOption('--out <file>', 'trace file to write (.rdt or .rdt.gz)', pathOption('--out', 'output'))
    .option('--pages <n>', 'guest memory in 4 KiB pages', intOption('--pages', 64, 2 ** 26), 16384)
    .option('--epochs <n>', 'epochs, the first being the full copy', intOption('--epochs', 1, 1e7), 200)
    .option('--seed <n>', 'seed of the workload', intOption('--seed', 0, 2 ** 32 - 1), 1)
    .option(
      '--workload <w>',
      'oltp (small updates) or scan (read-heavy)',
      choiceOption('--workload', ['oltp', 'scan'] as const),
      'oltp',
    )
    .action((o: { out: string; pages: number; epochs: number; seed: number; workload: 'oltp' | 'scan' }) => {
      const r = synthTrace({
        out: o.out,
        pages: o.pages,
        epochs: o.epochs,
        seed: o.seed,
        rates: o.workload === 'scan' ? SCAN_RATES : OLTP_RATES,
      });
      console.error(`wrote ${o.out}: ${r.epochs} epochs, ${r.pages} pages, ${r.pageRecords} page records`);
    });
}

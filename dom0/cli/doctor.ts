// doctor: `remusdb doctor [--json]` — prints what this host supports and why not, per domain
// driver too; `--features` prints the feature × driver table README carries.
import type { Command } from 'commander';
import { probeCapabilities } from '../doctor/capabilities';
import { featureTable } from '../hypervisor/feature-table';

export function registerDoctor(program: Command): void {
  program
    .command('doctor')
    .description('show which capabilities this host has (addon parts, Xen, NFQUEUE, sch_plug, dirty tracking, liblz4)')
    .option('--json', 'print one JSON object')
    .option('--features', 'print which feature each domain driver has (a Markdown table)')
    .action((opts: { json?: boolean; features?: boolean }) => {
      if (opts.features) {
        console.log(featureTable());
        return;
      }
      const caps = probeCapabilities();
      if (opts.json) {
        console.log(JSON.stringify({ capabilities: caps }));
        return;
      }
      const w = Math.max(...caps.map((c) => c.name.length));
      for (const c of caps) console.log(`${c.available ? 'yes' : 'no '}  ${c.name.padEnd(w)}  ${c.reason}`);
    });
}

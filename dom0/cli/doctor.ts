// doctor: `remusdb doctor [--json]` — prints what this host supports and why not.
import type { Command } from 'commander';
import { probeCapabilities } from '../doctor/capabilities';

export function registerDoctor(program: Command): void {
  program.command('doctor')
    .description('show which capabilities this host has (addon parts, Xen, NFQUEUE, sch_plug, dirty tracking, liblz4)')
    .option('--json', 'print one JSON object')
    .action((opts: { json?: boolean }) => {
      const caps = probeCapabilities();
      if (opts.json) {
        console.log(JSON.stringify({ capabilities: caps }));
        return;
      }
      const w = Math.max(...caps.map((c) => c.name.length));
      for (const c of caps) console.log(`${c.available ? 'yes' : 'no '}  ${c.name.padEnd(w)}  ${c.reason}`);
    });
}

// replot: draws a benchmark figure again from the data written beside it, without running
// the benchmark: `node dist/scripts/replot.js docs/figures/x.json` writes docs/figures/x.svg.
// The data is what `remusdb bench net --svg` or `bench scale --svg` saved (writeFigure).
import * as fs from 'node:fs';
import { netBenchSvg, type NetBenchResult } from '../dom0/bench/net-bench';
import { scaleSvg, type ScaleRow } from '../dom0/bench/scale-bench';

function main(files: string[]): number {
  if (files.length === 0) {
    process.stderr.write('usage: replot <figure.json>...\n');
    return 2;
  }
  for (const file of files) {
    const data = JSON.parse(fs.readFileSync(file, 'utf8')) as { bench?: string; rows?: ScaleRow[]; tps?: unknown };
    let svg: string;
    if (data.bench === 'scale' && Array.isArray(data.rows)) svg = scaleSvg(data.rows);
    else if (data.tps && typeof data.tps === 'object') svg = netBenchSvg(data as unknown as NetBenchResult);
    else {
      process.stderr.write(`${file}: neither a bench net nor a bench scale result\n`);
      return 1;
    }
    const out = file.replace(/\.json$/i, '') + '.svg';
    fs.writeFileSync(out, svg);
    process.stderr.write(`wrote ${out}\n`);
  }
  return 0;
}

process.exitCode = main(process.argv.slice(2));

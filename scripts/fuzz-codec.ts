// fuzz-codec: `npm run fuzz [-- ITERATIONS [SEED]]` — millions of random and mutated page
// records through the native decoder (see dom0/memory/codec-fuzz.ts); prints the count and
// exits 1 on any violation. A crash kills the process, which the exit status shows.
import { fuzzDecoder } from '../dom0/memory/codec-fuzz';

const iterations = Number(process.argv[2] ?? 2_000_000);
const seed = Number(process.argv[3] ?? Date.now() % 2 ** 31);
const chunk = 100_000;
let done = 0,
  accepted = 0,
  rejected = 0;
const t0 = Date.now();
for (let s = seed; done < iterations; s++) {
  const r = fuzzDecoder(Math.min(chunk, iterations - done), s, 'native');
  done += r.iterations;
  accepted += r.accepted;
  rejected += r.rejected;
  if (r.violations.length) {
    console.error(`violations with seed ${s}:\n${r.violations.join('\n')}`);
    process.exit(1);
  }
  process.stderr.write(`\r${done} batches`);
}
console.log(
  `\nfuzz: ${done} batches (seed ${seed}), ${accepted} accepted, ${rejected} rejected, 0 crashes, 0 ` +
    `violations, ${((Date.now() - t0) / 1000).toFixed(1)} s`,
);

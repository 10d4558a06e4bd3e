// seeds: what the seeded simulators (test 40, test 73) share — the seeds a run covers and the
// one failure message naming the first seeds that broke an invariant, each with its fault.
import { strict as assert } from 'node:assert';

export interface SeedRun {
  seed: number;
  fault: unknown;
  violations: string[];
}

/** The seeds to run: the one named by the environment variable, or 1..count. */
export function seedsFrom(env: string | undefined, count: number): number[] {
  return env ? [Number(env)] : Array.from({ length: count }, (_, i) => i + 1);
}

/** Fails with the first five seeds that broke an invariant (reproduce one with its variable). */
export function assertNoViolations(failures: SeedRun[], seedCount: number): void {
  const show = failures.slice(0, 5).map((f) => `seed ${f.seed} ${JSON.stringify(f.fault)}: ${f.violations.join('; ')}`);
  assert.equal(failures.length, 0, `${failures.length} of ${seedCount} seeds broke an invariant:\n${show.join('\n')}`);
}

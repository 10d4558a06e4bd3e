// assert: programmer-error checks. A failed assertion is a bug in remusdb, not an
// operating condition: it throws AssertionError and is never caught to continue.
import { AssertionError } from 'node:assert';

export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new AssertionError({ message: `remusdb bug: ${message}` });
}

export function assertInt(value: number, min: number, max: number, what: string): void {
  assert(
    Number.isSafeInteger(value) && value >= min && value <= max,
    `${what} must be an integer in [${min}, ${max}], got ${value}`,
  );
}

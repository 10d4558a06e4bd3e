// options: parsers for command-line values that fail with RemusError ERR_BAD_ARGUMENT and a
// message naming the option, so a typo never becomes a silent default.
import { ErrorCode, RemusError } from '../errors';

export function intOption(name: string, min: number, max: number): (v: string) => number {
  return (v: string): number => {
    const n = Number(v);
    if (!/^\s*-?\d+\s*$/.test(v) || !Number.isSafeInteger(n) || n < min || n > max) {
      throw new RemusError(ErrorCode.BAD_ARGUMENT, `${name} ${JSON.stringify(v)}: expected an integer from ${min} to ${max}`);
    }
    return n;
  };
}

export function choiceOption<T extends string>(name: string, choices: readonly T[]): (v: string) => T {
  return (v: string): T => {
    if (!(choices as readonly string[]).includes(v)) {
      throw new RemusError(ErrorCode.BAD_ARGUMENT, `${name} ${JSON.stringify(v)}: expected one of ${choices.join(', ')}`);
    }
    return v as T;
  };
}

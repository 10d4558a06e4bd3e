// cache-size: parses `--cache` — a percentage of guest memory ("10%") or a byte size
// ("64MiB", "512M", "1048576") — into a page count, with a clear error for bad input.
import { ErrorCode, RemusError } from '../errors';
import { PAGE_BYTES } from '../limits';

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 2 ** 10,
  kb: 2 ** 10,
  kib: 2 ** 10,
  m: 2 ** 20,
  mb: 2 ** 20,
  mib: 2 ** 20,
  g: 2 ** 30,
  gb: 2 ** 30,
  gib: 2 ** 30,
};

export const DEFAULT_CACHE = '10%';

export function parseCachePages(spec: string, guestPages: number): number {
  const s = spec.trim().toLowerCase();
  const pct = /^(\d+(?:\.\d+)?)%$/.exec(s);
  let pages: number;
  if (pct) {
    const p = Number(pct[1]);
    if (p <= 0 || p > 100) throw bad(spec, 'a percentage must be in (0, 100]');
    pages = Math.floor((guestPages * p) / 100);
  } else {
    const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/.exec(s);
    if (!m || UNITS[m[2]] === undefined) throw bad(spec, 'use a percentage like 10% or a size like 64MiB');
    pages = Math.floor((Number(m[1]) * UNITS[m[2]]) / PAGE_BYTES);
  }
  if (pages < 1) throw bad(spec, 'that is less than one 4 KiB page');
  return Math.min(pages, Math.max(1, guestPages));
}

function bad(spec: string, why: string): RemusError {
  return new RemusError(ErrorCode.BAD_ARGUMENT, `--cache ${JSON.stringify(spec)}: ${why}`);
}

/** Checks the syntax of a --cache value before any guest is known (commander parser). */
export function cacheSpecOption(spec: string): string {
  parseCachePages(spec, 2 ** 40);
  return spec;
}

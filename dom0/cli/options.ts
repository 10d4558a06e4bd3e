// options: parsers for command-line values that fail with RemusError ERR_BAD_ARGUMENT and a
// message naming the option and what it expects, so a typo never becomes a silent default.
// Each parser carries its ValueSpec (valueSpec(parser)): what it accepts, so tests and help
// can enumerate every option's bad values without a hand-kept list. Paths: path-options.ts.
import { isIP } from 'node:net';
import { ErrorCode, RemusError } from '../errors';
import { parseHostPort } from '../protocol/channel';
import { cacheSpecOption } from '../memory/cache-size';
import type { PathRole } from './path-options';
import { exactSize, parseBytes } from './units';

/** What a parser accepts; name is the flag (or argument label) its messages start with. */
export type ValueSpec = { name: string } & (
  | { kind: 'int'; min: number; max: number; words?: readonly string[] }
  | { kind: 'int-list'; min: number; max: number; countMax: number }
  | { kind: 'fraction'; min: number; max: number }
  | { kind: 'bytes'; min: number; max: number; zero: boolean; pageMultiple: boolean }
  | { kind: 'choice'; choices: readonly string[] }
  | { kind: 'workload'; choices: readonly string[] }
  | { kind: 'path'; role: PathRole }
  | { kind: 'host-port'; portRequired: boolean; ipv6: boolean }
  | { kind: 'cache' | 'iface' | 'export-name' | 'nbd-device' | 'etcd-endpoints' | 'host-id' | 'address' }
);

type Parser = (v: string, previous?: never) => unknown;
const SPECS = new WeakMap<Parser, ValueSpec>();

/** parse, registered with its spec. */
export function specified<F extends Parser>(parse: F, spec: ValueSpec): F {
  SPECS.set(parse, spec);
  return parse;
}

/** The spec of a parser made here (undefined: a plain string option, or a parser without one). */
export function valueSpec(parse: unknown): ValueSpec | undefined {
  return typeof parse === 'function' ? SPECS.get(parse as Parser) : undefined;
}

/** ERR_BAD_ARGUMENT: `--name "value": [why; ]expected ...`. */
export function badValue(name: string, v: string, expected: string, why?: string): RemusError {
  const because = why ? `${why}; ` : '';
  return new RemusError(ErrorCode.BAD_ARGUMENT, `${name} ${JSON.stringify(v)}: ${because}expected ${expected}`);
}

/** A value that starts with "-" is most likely the next option, taken because this one's value was left out. */
export function refuseOptionLike(name: string, v: string, expected: string): void {
  if (v.startsWith('-')) throw badValue(name, v, `${expected} (this looks like an option: was the value left out?)`);
}

const INT = /^\s*-?\d+\s*$/;
const isIntIn = (v: string, min: number, max: number): boolean =>
  INT.test(v) && Number.isSafeInteger(Number(v)) && Number(v) >= min && Number(v) <= max;

export function intOption(name: string, min: number, max: number): (v: string) => number {
  return specified(
    (v: string): number => {
      if (!isIntIn(v, min, max)) throw badValue(name, v, `an integer from ${min} to ${max}`);
      return Number(v);
    },
    { name, kind: 'int', min, max },
  );
}

/** An integer in [min, max], or one of words (like --interval's "auto"). */
export function intOrWordOption<W extends string>(
  name: string,
  min: number,
  max: number,
  words: readonly W[],
): (v: string) => number | W {
  return specified(
    (v: string): number | W => {
      const word = words.find((w) => w === v.trim());
      if (word !== undefined) return word;
      if (!isIntIn(v, min, max)) throw badValue(name, v, `an integer from ${min} to ${max} or ${words.join(', ')}`);
      return Number(v);
    },
    { name, kind: 'int', min, max, words },
  );
}

const DECIMAL = /^\s*\d*\.?\d+\s*$/;

/** A decimal fraction in (min, max] like 0.1 (no exponent, no sign, no percent). */
export function fractionOption(name: string, min: number, max: number): (v: string) => number {
  return specified(
    (v: string): number => {
      const x = Number(v);
      if (!DECIMAL.test(v) || !(x > min && x <= max))
        throw badValue(name, v, `a decimal number above ${min} and at most ${max}, like 0.1`);
      return x;
    },
    { name, kind: 'fraction', min, max },
  );
}

/** Comma-separated integers in [min, max], 1 to countMax of them. */
export function intListOption(name: string, min: number, max: number, countMax: number): (v: string) => number[] {
  return specified(
    (v: string): number[] => {
      const parts = v.split(',');
      if (parts.length > countMax || !parts.every((p) => isIntIn(p, min, max))) {
        throw badValue(name, v, `1 to ${countMax} comma-separated integers from ${min} to ${max}, like ${min},${max}`);
      }
      return parts.map(Number);
    },
    { name, kind: 'int-list', min, max, countMax },
  );
}

export function choiceOption<T extends string>(name: string, choices: readonly T[]): (v: string) => T {
  return specified(
    (v: string): T => {
      if (!(choices as readonly string[]).includes(v)) throw badValue(name, v, `one of ${choices.join(', ')}`);
      return v as T;
    },
    { name, kind: 'choice', choices },
  );
}

export interface BytesLimits {
  min: number;
  max: number;
  zero?: boolean;
  pageMultiple?: boolean;
  example: string;
}

/** A byte size like 16MiB (parseBytes) in [min, max]; 0 too when zero; a multiple of 4 KiB when pageMultiple. */
export function bytesOption(name: string, l: BytesLimits): (v: string) => number {
  const zero = l.zero === true,
    pageMultiple = l.pageMultiple === true;
  const range = `a size from ${exactSize(l.min)} to ${exactSize(l.max)}${pageMultiple ? ', a multiple of 4 KiB' : ''}`;
  const expected = `${zero ? '0 or ' : ''}${range}, like ${l.example}`;
  return specified(
    (v: string): number => {
      const bytes = parseBytes(v);
      if (zero && bytes === 0) return 0;
      if (!(bytes >= l.min && bytes <= l.max) || (pageMultiple && bytes % 4096 !== 0))
        throw badValue(name, v, expected);
      return bytes;
    },
    { name, kind: 'bytes', min: l.min, max: l.max, zero, pageMultiple },
  );
}

/** --cache: a percentage of guest memory or a byte size (dom0/memory/cache-size.ts parses it). */
export const cacheOption = specified(
  (v: string): string => {
    try {
      return cacheSpecOption(v);
    } catch (e) {
      if (!(e instanceof RemusError)) throw e;
      throw badValue(
        '--cache',
        v,
        'a percentage of guest memory in (0, 100], like 10%, or a size of at least 4 KiB, ' + 'like 64MiB',
      );
    }
  },
  { name: '--cache', kind: 'cache' },
);

/**
 * host[:port] (IPv6 in brackets when ipv6), checked as the command will parse it (parseHostPort);
 * the value is returned as given. The port is required when defaultPort is null. A host is a
 * name or an address: "::1" or "h:abc" is refused, not read as host ":" port 1 or a host "h:abc".
 */
export function hostPortOption(name: string, defaultPort: number | null, ipv6 = true): (v: string) => string {
  const port = defaultPort === null ? ':port' : '[:port]';
  const v6 = ipv6 ? ` or [fd00::2]:${defaultPort ?? 7000}` : ' (IPv4 or a name)';
  const expected = `host${port} with a port from 1 to 65535, like 10.0.0.2:${defaultPort ?? 7000}${v6}`;
  return specified(
    (v: string): string => {
      refuseOptionLike(name, v, expected);
      let host: string;
      try {
        host = parseHostPort(v, defaultPort ?? 0).host;
      } catch {
        throw badValue(name, v, expected);
      }
      const bracketed = /^\s*\[[^\]]*\]/.test(v);
      const fits = bracketed ? ipv6 && isIP(host) === 6 : /^[A-Za-z0-9._-]+$/.test(host);
      if (!fits) throw badValue(name, v, expected);
      return v;
    },
    { name, kind: 'host-port', portRequired: defaultPort === null, ipv6 },
  );
}

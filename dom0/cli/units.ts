// units: byte sizes as the command line reads and prints them — "256MiB", "2G", "1048576" in,
// "2 GiB", "1.5 MiB" out — in double arithmetic only: a 32-bit shift or bit-or would turn
// 2 GiB into -2048 MiB and 4 GiB into 0.

const UNIT: Record<string, number> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };
const NAMES: ReadonlyArray<[number, string]> = [
  [2 ** 40, 'TiB'],
  [2 ** 30, 'GiB'],
  [2 ** 20, 'MiB'],
  [2 ** 10, 'KiB'],
];

/** Bytes of `<digits>[k|kib|m|mib|g|gib|t|tib]` (any case); NaN when malformed or not a safe integer. */
export function parseBytes(v: string): number {
  const m = /^(\d+)\s*(?:([kmgt])(?:ib)?)?$/i.exec(v.trim());
  const bytes = m ? Number(m[1]) * UNIT[(m[2] ?? '').toLowerCase()] : NaN;
  return Number.isSafeInteger(bytes) ? bytes : NaN;
}

/** The largest unit that divides bytes exactly: 2 GiB, 516 KiB, 1000 bytes. */
export function exactSize(bytes: number): string {
  const unit = NAMES.find(([n]) => bytes >= n && bytes % n === 0);
  return unit ? `${bytes / unit[0]} ${unit[1]}` : `${bytes} bytes`;
}

/** A rounded size for progress lines: 1.50 GiB, 12.3 MiB, 40 KiB. */
export function roundedSize(bytes: number): string {
  if (bytes >= 2 ** 30) return `${(bytes / 2 ** 30).toFixed(2)} GiB`;
  return bytes >= 2 ** 20 ? `${(bytes / 2 ** 20).toFixed(1)} MiB` : `${(bytes / 2 ** 10).toFixed(0)} KiB`;
}

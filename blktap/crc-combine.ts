// crc-combine: CRC32C of a concatenation from the CRCs of its parts. With A's CRC, B's CRC and
// B's length, crc(A‖B) = (crc(A) · x^(8·|B|)) mod P xor crc(B): the initial and final
// inversions cancel out in that sum. Polynomials are in the reflected bit order of CRC32C
// (bit 31 is x^0), so multiplying walks the bits of one factor from the top while the other
// is multiplied by x each step (one shift right, the polynomial added back on a carry out).
// What range-crcs.ts uses to checksum a whole disk from per-range CRCs.

/** CRC32C's polynomial, reflected (RFC 3720). */
const POLY_REFLECTED = 0x82f63b78;
/** x^0 in reflected order. */
const ONE = 0x80000000;

/** a · b mod P, both reflected. */
function mulModP(a: number, b: number): number {
  if (a === 0) return 0;
  let product = 0;
  let m = ONE;
  for (;;) {
    if (a & m) {
      product ^= b;
      if ((a & (m - 1)) === 0) break;
    }
    m >>>= 1;
    b = b & 1 ? (b >>> 1) ^ POLY_REFLECTED : b >>> 1;
  }
  return product >>> 0;
}

/** x^(2^k) mod P for k = 0…63: squaring the previous one. */
const X_POW_2K: number[] = (() => {
  const t = [ONE >>> 1]; // x^1
  for (let k = 1; k < 64; k++) t.push(mulModP(t[k - 1], t[k - 1]));
  return t;
})();

/** x^(8·bytes) mod P. */
export function shiftFor(bytes: number): number {
  let p = ONE;
  let n = bytes * 8;
  for (let k = 0; n > 0; k++, n = Math.floor(n / 2)) if (n % 2 === 1) p = mulModP(X_POW_2K[k], p);
  return p;
}

/** crc(A‖B) from crc(A), crc(B) and shiftFor(|B|). */
export function crc32cCombine(crcA: number, crcB: number, shiftB: number): number {
  return (mulModP(shiftB, crcA) ^ crcB) >>> 0;
}

/**
 * CRC32C of a disk from the CRCs of its ranges, in order: every range rangeBytes long but the
 * last, which holds what is left of sizeBytes (range-crcs.ts, replica-range-crcs.ts).
 */
export function combineRangeCrcs(crcs: Uint32Array, rangeBytes: number, sizeBytes: number): number {
  const ranges = Math.ceil(sizeBytes / rangeBytes);
  const shiftFull = shiftFor(rangeBytes);
  const lastBytes = sizeBytes - (ranges - 1) * rangeBytes;
  let crc = crcs[0];
  for (let r = 1; r < ranges; r++) {
    crc = crc32cCombine(crc, crcs[r], r === ranges - 1 && lastBytes !== rangeBytes ? shiftFor(lastBytes) : shiftFull);
  }
  return crc;
}

/**
 * The same table in ranges `factor` times longer (each the combined CRC of its parts, the last
 * holding what is left of sizeBytes): a table small enough to send for a very large disk.
 */
export function coarsenRangeCrcs(
  crcs: Uint32Array,
  rangeBytes: number,
  sizeBytes: number,
  factor: number,
): Uint32Array {
  const wide = rangeBytes * factor;
  const out = new Uint32Array(Math.ceil(sizeBytes / wide));
  for (let t = 0; t < out.length; t++) {
    const len = Math.min(wide, sizeBytes - t * wide);
    out[t] = combineRangeCrcs(crcs.subarray(t * factor, (t + 1) * factor), rangeBytes, len);
  }
  return out;
}

// lz4-block: a decoder of the LZ4 block format in TypeScript, for the reference codec.
// It checks every length and offset against its input and its one-page output and throws
// (never reads or writes out of bounds); the format is LZ4's published block format.

/** Decodes src into dst; returns the number of bytes produced, or a reason string. */
export function lz4DecodeBlock(src: Uint8Array, dst: Uint8Array): number | string {
  let ip = 0,
    op = 0;
  for (;;) {
    if (ip >= src.length) return 'LZ4 block ends before its last sequence';
    const token = src[ip++];
    let lit = token >>> 4;
    if (lit === 15) {
      for (;;) {
        if (ip >= src.length) return 'LZ4 literal length cut short';
        const b = src[ip++];
        lit += b;
        if (b !== 255) break;
      }
    }
    if (lit > src.length - ip) return 'LZ4 literals run past the end of the block';
    if (lit > dst.length - op) return 'LZ4 literals run past the end of the page';
    dst.set(src.subarray(ip, ip + lit), op);
    ip += lit;
    op += lit;
    if (ip === src.length) return op; // the last sequence has literals only
    if (src.length - ip < 2) return 'LZ4 match offset cut short';
    const offset = src[ip] | (src[ip + 1] << 8);
    ip += 2;
    if (offset === 0 || offset > op) return 'LZ4 match offset points before the page';
    let len = (token & 15) + 4;
    if ((token & 15) === 15) {
      for (;;) {
        if (ip >= src.length) return 'LZ4 match length cut short';
        const b = src[ip++];
        len += b;
        if (b !== 255) break;
      }
    }
    if (len > dst.length - op) return 'LZ4 match runs past the end of the page';
    for (let k = 0; k < len; k++, op++) dst[op] = dst[op - offset];
  }
}

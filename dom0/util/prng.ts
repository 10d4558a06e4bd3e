// prng: a small seeded generator (sfc32) so that synthetic traces, simulated workloads and
// the fault simulator reproduce exactly from a seed. Not for cryptography.
export class Prng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    this.a = 0x9e3779b9;
    this.b = 0x243f6a88;
    this.c = 0xb7e15162;
    this.d = seed >>> 0;
    for (let i = 0; i < 15; i++) this.u32();
  }

  /** The generator's state, to keep in guest memory (so a resumed guest continues exactly). */
  save(dv: DataView, offset: number): void {
    dv.setUint32(offset, this.a, true);
    dv.setUint32(offset + 4, this.b, true);
    dv.setUint32(offset + 8, this.c, true);
    dv.setUint32(offset + 12, this.d, true);
  }

  load(dv: DataView, offset: number): void {
    this.a = dv.getUint32(offset, true) | 0;
    this.b = dv.getUint32(offset + 4, true) | 0;
    this.c = dv.getUint32(offset + 8, true) | 0;
    this.d = dv.getUint32(offset + 12, true) | 0;
  }

  /** Uniform 32-bit unsigned integer. */
  u32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }

  /** Uniform integer in [0, n). */
  below(n: number): number {
    return Math.floor((this.u32() / 4294967296) * n);
  }

  /** Uniform float in [0, 1). */
  float(): number {
    return this.u32() / 4294967296;
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.float() < p;
  }

  /** Skewed index in [0, n): small indexes are hot (about 80% of picks hit the first 20%). */
  skewed(n: number): number {
    return Math.min(n - 1, Math.floor(n * this.float() ** 3.3));
  }

  fill(dst: Uint8Array): void {
    for (let i = 0; i + 4 <= dst.length; i += 4) {
      const v = this.u32();
      dst[i] = v;
      dst[i + 1] = v >>> 8;
      dst[i + 2] = v >>> 16;
      dst[i + 3] = v >>> 24;
    }
  }
}

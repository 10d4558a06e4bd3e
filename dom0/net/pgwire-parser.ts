// pgwire-parser: follows one PostgreSQL server→client byte stream (protocol 3.0) and says,
// per TCP segment, whether it carries a commit acknowledgement — the bytes that must wait
// for the checkpoint under commit protection. Only message framing is parsed (type byte +
// 32-bit length); bodies are skipped except the first bytes of CommandComplete (its tag)
// and ReadyForQuery's status byte, so state per stream is a few dozen bytes, whatever the
// message sizes. Rules (docs/commit-protection.md):
//   * a "cycle" is everything up to and including a ReadyForQuery (Z);
//   * a cycle acknowledges a commit when its Z has status 'I' and the cycle holds a
//     CommandComplete (autocommit statements, COMMIT, END, PREPARE TRANSACTION, ...), or
//     when it holds a CommandComplete with tag COMMIT (COMMIT AND CHAIN leaves status 'T');
//   * a segment is held when it carries any byte of the C or Z messages of such a cycle, or
//     bytes of a C/Z whose cycle does not end inside the segment (not known yet: held);
//   * connection start: single-byte answers 'N' to SSLRequest/GSSENCRequest are skipped;
//     'S' / 'G' (TLS / GSSAPI encryption accepted) or a TLS record (0x16, direct SSL) make
//     the stream opaque: it cannot be read, so every later segment is held (plain Remus);
//   * an unknown message type, a bad length or a ReadyForQuery that is not 5 bytes with
//     status I/T/E also make the stream opaque (never guess: held is late, not wrong).

const Z = 0x5a,
  C = 0x43;
const START_NO = 0x4e,
  START_SSL = 0x53,
  START_GSS = 0x47,
  TLS_RECORD = 0x16;
/** Backend message types of protocol 3.0 (PostgreSQL 15–17). */
const BACKEND_TYPES = new Set('RKSZCDTENAGHWdc123nIstvV'.split('').map((c) => c.charCodeAt(0)));
const COMMIT_TAG = [0x43, 0x4f, 0x4d, 0x4d, 0x49, 0x54, 0x00]; // "COMMIT\0"
/** Largest message accepted (the server's own limit is 1 GiB per allocation). */
const MESSAGE_BYTES_MAX = 0x7fffffff;

export type PgStreamMode = 'start' | 'messages' | 'opaque';

export class PgwireParser {
  mode: PgStreamMode = 'start';
  opaqueReason = '';
  private readonly hdr = new Uint8Array(5);
  private hdrLen = 0;
  private bodyLeft = 0;
  private type = 0;
  private tagMatch = 0; // bytes of the C tag matching "COMMIT\0" so far (-1: no match)
  private status = 0;
  private cycleHadComplete = false;
  private cycleCommitTag = false;
  private touched = false; // this segment carried bytes of the open cycle's C or Z
  /** Cycles ended by a ReadyForQuery, and how many of them acknowledged a commit. */
  cycles = 0;
  commits = 0;

  /** Parses one segment's new payload bytes in stream order; true: hold the segment. */
  segment(p: Uint8Array): boolean {
    let hold = false;
    this.touched = false;
    let i = 0;
    while (i < p.length) {
      if (this.opaque) return true;
      if (this.mode === 'start' && this.hdrLen === 0) {
        const b = p[i];
        if (b === START_NO) {
          i++;
          continue;
        }
        if (b === START_SSL || b === START_GSS || b === TLS_RECORD) {
          this.toOpaque('encrypted stream (TLS or GSSAPI)');
          return true;
        }
        this.mode = 'messages';
      }
      if (this.hdrLen < 5) {
        const first = this.hdrLen === 0;
        const n = Math.min(5 - this.hdrLen, p.length - i);
        this.hdr.set(p.subarray(i, i + n), this.hdrLen);
        this.hdrLen += n;
        i += n;
        if (first && !BACKEND_TYPES.has(this.hdr[0])) {
          this.toOpaque(`unknown message type 0x${this.hdr[0].toString(16)}`);
          return true;
        }
        if (this.hdr[0] === C || this.hdr[0] === Z) this.touched = true;
        if (this.hdrLen === 5 && !this.beginBody()) return true;
        if (this.hdrLen === 5 && this.bodyLeft === 0 && this.endMessage()) hold = true;
        continue;
      }
      const n = Math.min(this.bodyLeft, p.length - i);
      if (this.type === C) this.matchTag(p, i, n);
      else if (this.type === Z) this.status = p[i];
      if (this.type === C || this.type === Z) this.touched = true;
      i += n;
      this.bodyLeft -= n;
      if (this.bodyLeft === 0 && this.endMessage()) hold = true;
      if (this.opaque) return true;
    }
    return hold || this.touched;
  }

  private beginBody(): boolean {
    const len = ((this.hdr[1] << 24) | (this.hdr[2] << 16) | (this.hdr[3] << 8) | this.hdr[4]) >>> 0;
    this.type = this.hdr[0];
    if (len < 4 || len > MESSAGE_BYTES_MAX) {
      this.toOpaque(`bad message length ${len}`);
      return false;
    }
    if (this.type === Z && len !== 5) {
      this.toOpaque(`ReadyForQuery of length ${len}`);
      return false;
    }
    this.bodyLeft = len - 4;
    this.tagMatch = 0;
    return true;
  }

  private matchTag(p: Uint8Array, at: number, n: number): void {
    for (let k = 0; k < n && this.tagMatch >= 0 && this.tagMatch < COMMIT_TAG.length; k++) {
      this.tagMatch = p[at + k] === COMMIT_TAG[this.tagMatch] ? this.tagMatch + 1 : -1;
    }
  }

  /** A message ended. Returns true when it ends a cycle that must be held in this segment. */
  private endMessage(): boolean {
    this.hdrLen = 0;
    if (this.type === C) {
      this.cycleHadComplete = true;
      if (this.tagMatch === COMMIT_TAG.length) this.cycleCommitTag = true;
      return false;
    }
    if (this.type !== Z) return false;
    const s = String.fromCharCode(this.status);
    if (s !== 'I' && s !== 'T' && s !== 'E') {
      this.toOpaque(`ReadyForQuery status 0x${this.status.toString(16)}`);
      return true;
    }
    const commit = (s === 'I' && this.cycleHadComplete) || this.cycleCommitTag;
    const hold = commit && this.touched;
    this.cycles++;
    if (commit) this.commits++;
    this.cycleHadComplete = false;
    this.cycleCommitTag = false;
    this.touched = false;
    return hold;
  }

  /** A method, not a field test, so that type narrowing does not hide changes made by calls. */
  get opaque(): boolean {
    return this.mode === 'opaque';
  }

  toOpaque(reason: string): void {
    if (this.mode === 'opaque') return;
    this.mode = 'opaque';
    this.opaqueReason = reason;
  }
}

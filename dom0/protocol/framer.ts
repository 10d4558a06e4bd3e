// framer: turns records into bytes and a byte stream back into records. The decoder takes
// chunks as they arrive, checks the header before buffering a body (oversize is rejected
// at once), verifies CRC32C, skips unknown OPTIONAL records and fails on unknown mandatory
// ones. After an error it refuses further input: the connection is to be dropped.
import { assert } from '../assert';
import { loadAddon } from '../native';
import { FLAG_OPTIONAL, RECORD_BODY_MAX, RECORD_HEADER, REC_NAMES, protocolError, type RawRecord } from './records';

export function encodeRecord(type: number, body: Uint8Array, flags = 0): Buffer {
  assert(body.length <= RECORD_BODY_MAX, `record body of ${body.length} octets exceeds RECORD_BODY_MAX`);
  const frame = Buffer.allocUnsafe(RECORD_HEADER + body.length); // every octet is written below
  frame.writeUInt32LE(type, 0);
  frame.writeUInt32LE(flags, 4);
  frame.writeUInt32LE(body.length, 8);
  frame.set(body, RECORD_HEADER);
  const addon = loadAddon();
  frame.writeUInt32LE(addon.crc32c(body, addon.crc32c(frame.subarray(0, 12))), 12);
  return frame;
}

export class RecordDecoder {
  private chunks: Buffer[] = [];
  private have = 0;
  private failed = false;

  constructor(private readonly knownTypes: ReadonlySet<number>) {}

  /** Feeds bytes; returns the complete records they finish. Throws ERR_PROTOCOL. */
  push(chunk: Buffer): RawRecord[] {
    if (this.failed) throw protocolError('stream already failed');
    this.chunks.push(chunk);
    this.have += chunk.length;
    const out: RawRecord[] = [];
    try {
      for (;;) {
        const r = this.next();
        if (r === null) break;
        if (r !== 'skip') out.push(r);
      }
    } catch (e) {
      this.failed = true;
      throw e;
    }
    return out;
  }

  /** The first n octets (n ≤ have), without consuming them; a header split across chunks is joined. */
  private peek(n: number): Buffer {
    if (this.chunks[0].length < n) {
      let k = 0;
      for (let got = 0; got < n; k++) got += this.chunks[k].length;
      this.chunks.splice(0, k, Buffer.concat(this.chunks.slice(0, k)));
    }
    return this.chunks[0].subarray(0, n);
  }

  /** The next n octets as a buffer of their own, copied once from the chunks they span. */
  private consume(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const c = this.chunks[0];
      const take = Math.min(c.length, n - at);
      c.copy(out, at, 0, take);
      at += take;
      if (take === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(take);
    }
    this.have -= n;
    return out;
  }

  private next(): RawRecord | 'skip' | null {
    if (this.have < RECORD_HEADER) return null;
    const h = this.peek(RECORD_HEADER);
    const type = h.readUInt32LE(0),
      flags = h.readUInt32LE(4),
      length = h.readUInt32LE(8);
    if (length > RECORD_BODY_MAX)
      throw protocolError(`record of ${length} octets exceeds the ${RECORD_BODY_MAX}-octet limit`);
    if ((flags & ~FLAG_OPTIONAL) !== 0)
      throw protocolError(`record type ${type} has unknown flags 0x${flags.toString(16)}`);
    if (this.have < RECORD_HEADER + length) return null;
    const whole = this.consume(RECORD_HEADER + length);
    const body = whole.subarray(RECORD_HEADER);
    const addon = loadAddon();
    const crc = addon.crc32c(body, addon.crc32c(whole.subarray(0, 12)));
    if (crc !== whole.readUInt32LE(12))
      throw protocolError(`CRC32C mismatch on ${REC_NAMES[type] ?? `record type ${type}`}`);
    if (!this.knownTypes.has(type)) {
      if (flags & FLAG_OPTIONAL) return 'skip';
      throw protocolError(`unknown mandatory record type ${type}`);
    }
    return { type, flags, body };
  }
}

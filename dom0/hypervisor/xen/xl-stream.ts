// xl-stream: the bytes `xl migrate-receive -r -e` expects around libxenguest's stream
// (docs/xen-adapter.md "The xl stream around libxc's"; Xen's libxl migration stream format):
// the receiver's banner, the xl savefile header with the domain's JSON configuration, the
// libxl v2 stream header, and libxl records (LIBXC_CONTEXT before the libxc stream,
// CHECKPOINT_END after each libxc CHECKPOINT record).
import { assert } from '../../assert';

export const RECEIVER_BANNER = 'xl migration receiver ready, send binary domain data.\n';
const XL_MAGIC = 'Xen saved domain, xl format\n \0 \r';
const XL_FLAG_JSON = 1,
  XL_FLAG_STREAMV2 = 2;
export const LIBXL_REC_LIBXC_CONTEXT = 1,
  LIBXL_REC_CHECKPOINT_END = 4;

/** xl savefile header + optional data (u32 length + JSON with its NUL), host byte order. */
export function xlSavefileHeader(configJson: string): Buffer {
  const json = Buffer.concat([Buffer.from(configJson, 'utf8'), Buffer.from([0])]);
  const h = Buffer.alloc(32 + 16 + 4);
  assert(Buffer.byteLength(XL_MAGIC, 'latin1') === 32, 'xl magic is 32 octets');
  h.write(XL_MAGIC, 0, 'latin1');
  h.writeUInt32LE(0x01020304, 32); // byte order marker
  h.writeUInt32LE(XL_FLAG_STREAMV2 | XL_FLAG_JSON, 36); // mandatory flags
  h.writeUInt32LE(0, 40); // optional flags
  h.writeUInt32LE(4 + json.length, 44); // optional data length
  h.writeUInt32LE(json.length, 48);
  return Buffer.concat([h, json]);
}

/** libxl migration stream v2 header: "LibxlFmt", version 2, options 0 (big-endian). */
export function libxlStreamHeader(): Buffer {
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(0x4c6962786c466d74n, 0);
  h.writeUInt32BE(2, 8);
  h.writeUInt32BE(0, 12);
  return h;
}

/** A libxl record with an empty body (type, length 0), host byte order. */
export function libxlEmptyRecord(type: number): Buffer {
  const r = Buffer.alloc(8);
  r.writeUInt32LE(type, 0);
  return r;
}

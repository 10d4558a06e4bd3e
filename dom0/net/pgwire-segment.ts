// pgwire-segment: reads the IPv4/IPv6 + TCP headers of a packet copy as NFQUEUE hands it
// over (the first copyBytes of the IP packet, zero-padded), for the pgwire classifier and
// the failover reset tracker. Sequence numbers are 32-bit and wrap: compare with seqDiff.
// A copy shorter than the IP packet is reported as `truncated` (its payload is a prefix).

export const TCP_FIN = 0x01,
  TCP_SYN = 0x02,
  TCP_RST = 0x04,
  TCP_ACK = 0x10;

export interface TcpSegment {
  v6: boolean;
  /** Raw address bytes (4 or 16) of source and destination. */
  src: Uint8Array;
  dst: Uint8Array;
  sport: number;
  dport: number;
  seq: number;
  ack: number;
  flags: number;
  window: number;
  /** Payload bytes present in the copy (a prefix when truncated). */
  payload: Uint8Array;
  /** Payload length according to the IP header. */
  payloadLen: number;
  truncated: boolean;
  /** Connection key for this direction: "v/src/sport/dst/dport" (IPv4 addresses as numbers, IPv6 in hex). */
  key: string;
}

export type ParsedPacket =
  | { kind: 'tcp'; seg: TcpSegment }
  /** IP but not a parseable TCP segment: UDP, ICMP, fragments, IPv6 extension headers. */
  | { kind: 'other-ip' }
  /** Not an IP packet we could read (short header, bad version). */
  | { kind: 'bad' };

/** a − b in 32-bit sequence space (positive: a is after b). */
export function seqDiff(a: number, b: number): number {
  return (a - b) | 0;
}
export const seqAdd = (a: number, n: number): number => (a + n) >>> 0;

function u16(h: Uint8Array, at: number): number {
  return (h[at] << 8) | h[at + 1];
}
function u32(h: Uint8Array, at: number): number {
  return ((h[at] << 24) | (h[at + 1] << 16) | (h[at + 2] << 8) | h[at + 3]) >>> 0;
}

export function parsePacket(h: Uint8Array): ParsedPacket {
  if (h.length < 1) return { kind: 'bad' };
  const version = h[0] >> 4;
  let ipHeaderLen: number, ipTotal: number, v6: boolean;
  if (version === 4) {
    if (h.length < 20) return { kind: 'bad' };
    ipHeaderLen = (h[0] & 15) * 4;
    ipTotal = u16(h, 2);
    if (ipHeaderLen < 20 || ipTotal < ipHeaderLen) return { kind: 'bad' };
    const fragment = (h[6] & 0x20) !== 0 || (((h[6] & 0x1f) << 8) | h[7]) !== 0;
    if (h[9] !== 6 || fragment) return { kind: 'other-ip' };
    v6 = false;
  } else if (version === 6) {
    if (h.length < 40) return { kind: 'bad' };
    if (h[6] !== 6) return { kind: 'other-ip' };
    ipHeaderLen = 40;
    ipTotal = 40 + u16(h, 4);
    v6 = true;
  } else {
    return { kind: 'bad' };
  }
  const t = ipHeaderLen;
  if (h.length < t + 20) return { kind: 'bad' };
  const dataOffset = (h[t + 12] >> 4) * 4;
  if (dataOffset < 20 || ipTotal < t + dataOffset || h.length < t + dataOffset) return { kind: 'bad' };
  const payloadLen = ipTotal - t - dataOffset;
  const present = Math.max(0, Math.min(payloadLen, h.length - t - dataOffset));
  const alen = v6 ? 16 : 4;
  const src = h.subarray(v6 ? 8 : 12, (v6 ? 8 : 12) + alen);
  const dst = h.subarray(v6 ? 24 : 16, (v6 ? 24 : 16) + alen);
  const sport = u16(h, t),
    dport = u16(h, t + 2);
  return {
    kind: 'tcp',
    seg: {
      v6,
      src,
      dst,
      sport,
      dport,
      seq: u32(h, t + 4),
      ack: u32(h, t + 8),
      flags: h[t + 13],
      window: u16(h, t + 14),
      payload: h.subarray(t + dataOffset, t + dataOffset + present),
      payloadLen,
      truncated: present < payloadLen,
      key: v6 ? `6/${hex(src)}/${sport}/${hex(dst)}/${dport}` : `4/${u32(src, 0)}/${sport}/${u32(dst, 0)}/${dport}`,
    },
  };
}

/** Sequence space a segment occupies: payload, plus one each for SYN and FIN. */
export function seqLength(s: TcpSegment): number {
  return s.payloadLen + (s.flags & TCP_SYN ? 1 : 0) + (s.flags & TCP_FIN ? 1 : 0);
}

export function hex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.length).toString('hex');
}

export function addressText(b: Uint8Array): string {
  if (b.length === 4) return Array.from(b).join('.');
  const words: string[] = [];
  for (let i = 0; i < 16; i += 2) words.push(((b[i] << 8) | b[i + 1]).toString(16));
  return words.join(':');
}

// pg-packets: hand-built IPv4/IPv6 + TCP packets and PostgreSQL backend messages for the
// commit protection tests (classifiers see the first copyBytes of an IP packet; these
// builders make exactly such byte strings, padded to a copy size like NFQUEUE's copy).

export const TCP_FIN = 0x01,
  TCP_SYN = 0x02,
  TCP_RST = 0x04,
  TCP_PSH = 0x08,
  TCP_ACK = 0x10;

export interface TcpSpec {
  src?: string;
  dst?: string;
  sport?: number;
  dport?: number;
  seq: number;
  ack?: number;
  flags?: number;
  payload?: Uint8Array;
  /** DSCP for the TOS byte / traffic class (default 0). */
  dscp?: number;
  v6?: boolean;
}

function v4bytes(a: string): number[] {
  return a.split('.').map(Number);
}
function v6bytes(a: string): number[] {
  const [head, tail] = a.split('::');
  const h = head ? head.split(':') : [],
    t = tail !== undefined && tail !== '' ? tail.split(':') : [];
  const words = [...h, ...Array(8 - h.length - t.length).fill('0'), ...t].map((w) => parseInt(w, 16));
  return words.flatMap((w) => [w >> 8, w & 255]);
}

/** One IP packet carrying a TCP segment (checksums left zero: classifiers never check them). */
export function tcpPacket(s: TcpSpec): Uint8Array {
  const payload = s.payload ?? new Uint8Array(0);
  const tcp = new Uint8Array(20 + payload.length);
  const dv = new DataView(tcp.buffer);
  dv.setUint16(0, s.sport ?? 5432);
  dv.setUint16(2, s.dport ?? 40000);
  dv.setUint32(4, s.seq >>> 0);
  dv.setUint32(8, (s.ack ?? 0) >>> 0);
  tcp[12] = 5 << 4;
  tcp[13] = s.flags ?? TCP_ACK | TCP_PSH;
  dv.setUint16(14, 65535);
  tcp.set(payload, 20);
  const dscp = s.dscp ?? 0;
  if (s.v6) {
    const ip = new Uint8Array(40 + tcp.length);
    const tc = dscp << 2;
    ip[0] = 0x60 | (tc >> 4);
    ip[1] = (tc & 15) << 4;
    new DataView(ip.buffer).setUint16(4, tcp.length);
    ip[6] = 6;
    ip[7] = 64;
    ip.set(v6bytes(s.src ?? 'fd60::2'), 8);
    ip.set(v6bytes(s.dst ?? 'fd60::3'), 24);
    ip.set(tcp, 40);
    return ip;
  }
  const ip = new Uint8Array(20 + tcp.length);
  ip[0] = 0x45;
  ip[1] = dscp << 2;
  new DataView(ip.buffer).setUint16(2, ip.length);
  ip[8] = 64;
  ip[9] = 6;
  ip.set(v4bytes(s.src ?? '127.60.0.2'), 12);
  ip.set(v4bytes(s.dst ?? '127.60.0.3'), 16);
  ip.set(tcp, 20);
  return ip;
}

export function udpPacket(dscp: number, v6 = false): Uint8Array {
  const p = tcpPacket({ seq: 0, dscp, v6 });
  if (v6) p[6] = 17;
  else p[9] = 17;
  return p;
}

/** The packet as NFQUEUE would copy it: at most copyBytes, zero-padded to copyBytes. */
export function asCopy(packet: Uint8Array, copyBytes: number): Uint8Array {
  const out = new Uint8Array(copyBytes);
  out.set(packet.subarray(0, copyBytes));
  return out;
}

// ---- PostgreSQL backend messages ----

export function msg(type: string, body: Uint8Array | string = new Uint8Array(0)): Uint8Array {
  const b = typeof body === 'string' ? new TextEncoder().encode(body) : body;
  const out = new Uint8Array(5 + b.length);
  out[0] = type.charCodeAt(0);
  new DataView(out.buffer).setUint32(1, 4 + b.length);
  out.set(b, 5);
  return out;
}
export const rfq = (status: 'I' | 'T' | 'E'): Uint8Array => msg('Z', status);
export const commandComplete = (tag: string): Uint8Array => msg('C', `${tag}\0`);
export const dataRow = (n: number): Uint8Array => msg('D', new Uint8Array(n));
export const authOk = (): Uint8Array => msg('R', new Uint8Array([0, 0, 0, 0]));
export const paramStatus = (k: string, v: string): Uint8Array => msg('S', `${k}\0${v}\0`);
export const backendKey = (): Uint8Array => msg('K', new Uint8Array(8));
export const errorResponse = (): Uint8Array => msg('E', 'SERROR\0C42P01\0Mno such table\0\0');
export const notice = (): Uint8Array => msg('N', 'SNOTICE\0Mhello\0\0');

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** The startup reply of a server after trust authentication. */
export function startupReply(): Uint8Array {
  return concat(authOk(), paramStatus('server_version', '15.0'), backendKey(), rfq('I'));
}

/**
 * A server→client TCP stream: hands out consecutive segments (by sequence number) from a
 * base ISN, remembering each segment so it can be "retransmitted".
 */
export class ServerStream {
  next: number;
  readonly sent: Array<{ seq: number; payload: Uint8Array; flags: number }> = [];
  constructor(
    readonly isn: number,
    readonly opts: Partial<TcpSpec> = {},
  ) {
    this.next = (isn + 1) >>> 0;
  }
  synAck(): Uint8Array {
    return tcpPacket({ ...this.opts, seq: this.isn, ack: 1, flags: TCP_SYN | TCP_ACK });
  }
  segment(payload: Uint8Array, flags = TCP_ACK | TCP_PSH): Uint8Array {
    const seq = this.next;
    this.sent.push({ seq, payload, flags });
    this.next = (this.next + payload.length + (flags & TCP_FIN ? 1 : 0)) >>> 0;
    return tcpPacket({ ...this.opts, seq, ack: 1, flags, payload });
  }
  retransmit(i: number): Uint8Array {
    const s = this.sent[i];
    return tcpPacket({ ...this.opts, seq: s.seq, ack: 1, flags: s.flags, payload: s.payload });
  }
  /** A coalesced retransmission of segments i..j (inclusive). */
  retransmitRange(i: number, j: number): Uint8Array {
    const payload = concat(...this.sent.slice(i, j + 1).map((s) => s.payload));
    return tcpPacket({ ...this.opts, seq: this.sent[i].seq, ack: 1, payload });
  }
  pureAck(): Uint8Array {
    return tcpPacket({ ...this.opts, seq: this.next, ack: 1, flags: TCP_ACK });
  }
}

// guest-pcap: capture TCP segments with tcpdump and read the pcap file back, for the
// guest-patch tests: each segment with its IP header (what dom0's classifier sees), its
// DSCP, ports, sequence number and payload. Reads classic pcap (µs or ns timestamps, either
// byte order) with Ethernet, Linux cooked (v1/v2) or raw-IP link types.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { ETH_P_IP, ETH_P_IPV6, dscpOf } from '../../dom0/net/classify-dscp';

export interface Segment {
  ip: Uint8Array; // from the IP header on
  hwProtocol: number; // ETH_P_IP / ETH_P_IPV6
  dscp: number;
  srcPort: number;
  dstPort: number;
  seq: number;
  payload: Buffer;
}

const PACKETS_MAX = 200_000;

export function whyNoTcpdump(): string | null {
  return spawnSync('tcpdump', ['--version'], { stdio: 'ignore' }).error ? 'tcpdump is not installed' : null;
}

/** Where the IP header starts and the hardware protocol, per pcap link type. */
function linkOffset(linkType: number, frame: Buffer): [number, number] | null {
  if (linkType === 1) return [14, frame.readUInt16BE(12)]; // Ethernet
  if (linkType === 113) return [16, frame.readUInt16BE(14)]; // Linux cooked v1
  if (linkType === 276) return [20, frame.readUInt16BE(0)]; // Linux cooked v2
  if (linkType === 101 || linkType === 12) {
    // raw IP
    return [0, frame[0] >> 4 === 6 ? ETH_P_IPV6 : ETH_P_IP];
  }
  return null;
}

function tcpSegment(ip: Buffer, hwProtocol: number): Segment | null {
  let l4: number;
  let end: number;
  if (hwProtocol === ETH_P_IP) {
    if (ip.length < 20 || ip[9] !== 6) return null;
    l4 = (ip[0] & 0x0f) * 4;
    end = Math.min(ip.length, ip.readUInt16BE(2));
  } else if (hwProtocol === ETH_P_IPV6) {
    if (ip.length < 40 || ip[6] !== 6) return null;
    l4 = 40;
    end = Math.min(ip.length, 40 + ip.readUInt16BE(4));
  } else return null;
  if (end < l4 + 20) return null;
  const dataOff = (ip[l4 + 12] >> 4) * 4;
  return {
    ip: new Uint8Array(ip),
    hwProtocol,
    dscp: dscpOf(ip),
    srcPort: ip.readUInt16BE(l4),
    dstPort: ip.readUInt16BE(l4 + 2),
    seq: ip.readUInt32BE(l4 + 4),
    payload: Buffer.from(ip.subarray(l4 + dataOff, end)),
  };
}

/** Every TCP segment in a pcap file, in capture order. */
export function readPcap(file: string): Segment[] {
  const b = fs.readFileSync(file);
  if (b.length < 24) return [];
  const magic = b.readUInt32LE(0);
  const le = magic === 0xa1b2c3d4 || magic === 0xa1b23c4d;
  if (!le && b.readUInt32BE(0) !== 0xa1b2c3d4 && b.readUInt32BE(0) !== 0xa1b23c4d)
    throw new Error(`${file}: not a pcap file`);
  const u32 = (o: number): number => (le ? b.readUInt32LE(o) : b.readUInt32BE(o));
  const linkType = u32(20) & 0xffff;
  const out: Segment[] = [];
  for (let o = 24; o + 16 <= b.length && out.length < PACKETS_MAX; ) {
    const caplen = u32(o + 8);
    const frame = b.subarray(o + 16, o + 16 + caplen);
    o += 16 + caplen;
    const link = linkOffset(linkType, frame);
    if (!link) continue;
    const seg = tcpSegment(frame.subarray(link[0]), link[1]);
    if (seg) out.push(seg);
  }
  return out;
}

/** tcpdump writing every matching packet to a file, flushed per packet (-U). */
export class Capture {
  private readonly child: ChildProcess;
  private stderr = '';
  private constructor(
    readonly file: string,
    iface: string,
    filter: string,
  ) {
    this.child = spawn('tcpdump', ['-i', iface, '-n', '-U', '--immediate-mode', '-s', '0', '-w', file, filter], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    this.child.stderr!.on('data', (d: Buffer) => {
      this.stderr += d.toString();
    });
  }

  static async start(file: string, iface: string, filter: string, timeoutMs = 10_000): Promise<Capture> {
    const c = new Capture(file, iface, filter);
    const end = Date.now() + timeoutMs;
    while (!c.stderr.includes('listening on')) {
      if (c.child.exitCode !== null || Date.now() > end) throw new Error(`tcpdump did not start: ${c.stderr.trim()}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    return c;
  }

  /** Stops tcpdump (after a short grace so the last packets are written) and reads the file. */
  async stop(graceMs = 200): Promise<Segment[]> {
    await new Promise((r) => setTimeout(r, graceMs));
    if (this.child.exitCode === null) {
      const exited = new Promise((r) => this.child.once('exit', r));
      this.child.kill('SIGINT');
      await exited;
    }
    return readPcap(this.file);
  }
}

/** Segments from `fromPort` to `toPort` that carry data, each sequence number once. */
export function dataSegments(segs: Segment[], fromPort: number, toPort: number): Segment[] {
  const seen = new Set<string>();
  return segs.filter((s) => {
    if (s.srcPort !== fromPort || s.dstPort !== toPort || s.payload.length === 0) return false;
    const key = `${s.seq}:${s.payload.length}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

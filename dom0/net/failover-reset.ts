// failover-reset: after a failover under commit protection, the TCP connections whose
// unprotected bytes (or acknowledgements) reached the client beyond the checkpoint the
// backup resumed from are inconsistent: the resumed guest does not remember sending what
// the client already holds, so the connection would stall until a timeout (RemusDB §5.4
// leaves this open). This module finds those connections and resets them towards both
// ends with forged TCP RSTs, so clients learn at once; every other connection continues.
//   ExposureTracker (a LedgerObserver) follows, per guest→client flow, the guest's send
//   state at the end of each epoch (highest sequence end, highest ACK) and the highest
//   sequence end / ACK that left unprotected (at once, behind their flow, or in
//   pass-through). A flow is inconsistent for checkpoint C when what left unprotected goes
//   beyond the guest's state at C (or the flow did not exist at C).
//   The backup, on another host, learns the same per flow from NET_EXPOSURE records
//   (exportChanged() on the primary at each checkpoint, importFlows() on the backup), so
//   the process that fails over computes the resets itself (docs/commit-protection.md).
//   rstPacket() builds the RSTs (checksummed IPv4/IPv6); sendResets() sends them through a
//   raw socket in dom0's network namespace (addon sendRawIp).
// RST to the client: seq = the highest sequence end released to it (its rcv_nxt when
// nothing is in flight: RFC 5961 resets only at exactly rcv_nxt). RST to the guest (sent
// once the resumed guest runs): seq = its ACK at C. When either guess is off, the peer
// answers with a challenge ACK, which the already reset end answers with a RST at exactly
// the right sequence — so resetting one end well suffices.
import { assertInt } from '../assert';
import { ErrorCode, RemusError } from '../errors';
import { requirePart } from '../native';
import type { LedgerObserver, PacketOutcome, PacketVerdict } from './packet-ledger';
import { addressText, parsePacket, seqAdd, seqDiff, seqLength, TCP_ACK } from './pgwire-segment';
import { netnsPathOf } from './nfqueue-buffer';

interface Mark {
  epoch: number;
  seqEnd: number;
  ack: number | null;
}

interface FlowTrack {
  v6: boolean;
  guest: Uint8Array;
  client: Uint8Array;
  guestPort: number;
  clientPort: number;
  /** Guest send state after each epoch, ascending; the first may be a committed baseline. */
  marks: Mark[];
  exposedEnd: number | null;
  exposedAck: number | null;
}

export interface ResetTarget {
  v6: boolean;
  guest: string;
  client: string;
  guestPort: number;
  clientPort: number;
  /** What left unprotected beyond the checkpoint ('seq', 'ack' or 'new-flow'). */
  why: string;
  toClient: { seq: number; ack: number };
  /** null when the flow did not exist at the checkpoint (the resumed guest knows nothing of it). */
  toGuest: { seq: number; ack: number } | null;
  guestAddr: Uint8Array;
  clientAddr: Uint8Array;
}

const maxSeq = (a: number, b: number): number => (seqDiff(a, b) >= 0 ? a : b);
const maxAck = (a: number | null, b: number | null): number | null => (a === null ? b : b === null ? a : maxSeq(a, b));

/**
 * A packet of `epoch` raises the guest's send state after that epoch and after every later
 * one. Packets come in epoch order from the queue; a packet that left in the kernel is read
 * from its ring at the next barrier (kernel-classifier.ts), possibly after later ones.
 */
function raiseMarks(marks: Mark[], epoch: number, seqEnd: number, ack: number | null): void {
  let at = marks.length;
  while (at > 0 && marks[at - 1].epoch > epoch) at--;
  const before = marks[at - 1];
  if (before?.epoch === epoch) {
    before.seqEnd = maxSeq(before.seqEnd, seqEnd);
    before.ack = maxAck(before.ack, ack);
  } else {
    const mark = {
      epoch,
      seqEnd: before ? maxSeq(before.seqEnd, seqEnd) : seqEnd,
      ack: maxAck(before?.ack ?? null, ack),
    };
    marks.splice(at, 0, mark);
    at++;
  }
  for (let i = at; i < marks.length; i++) {
    marks[i].seqEnd = maxSeq(marks[i].seqEnd, seqEnd);
    marks[i].ack = maxAck(marks[i].ack, ack);
  }
}

/** One flow as NET_EXPOSURE carries it (addresses in hex, marks as [epoch, seqEnd, ack|-1]). */
export interface FlowExport {
  v6: boolean;
  g: string;
  c: string;
  gp: number;
  cp: number;
  marks: Array<[number, number, number]>;
  xe: number | null;
  xa: number | null;
}

/** Flows per NET_EXPOSURE record (about 120 octets each in JSON). */
export const EXPOSURE_FLOWS_PER_RECORD_MAX = 4096;

export class ExposureTracker implements LedgerObserver {
  private readonly flows = new Map<string, FlowTrack>();
  private readonly changed = new Set<string>();
  private released = 0;
  private exposedSinceFlush = false;
  evicted = 0;
  /** Called before the verdicts that let unprotected packets out (the primary ships NET_EXPOSURE). */
  onExposed: (() => void) | null = null;

  constructor(private readonly flowsMax = 16384) {
    assertInt(flowsMax, 1, 1 << 22, 'flowsMax');
  }

  get flowCount(): number {
    return this.flows.size;
  }
  get releasedEpoch(): number {
    return this.released;
  }

  packet(header: Uint8Array, verdict: PacketVerdict, outcome: PacketOutcome, epoch: number): void {
    const parsed = parsePacket(header);
    if (parsed.kind !== 'tcp') return;
    const s = parsed.seg;
    let f = this.flows.get(s.key);
    if (f === undefined) {
      if (this.flows.size >= this.flowsMax) this.evictOldest();
      f = {
        v6: s.v6,
        guest: s.src.slice(),
        client: s.dst.slice(),
        guestPort: s.sport,
        clientPort: s.dport,
        marks: [],
        exposedEnd: null,
        exposedAck: null,
      };
      this.flows.set(s.key, f);
    }
    this.changed.add(s.key);
    const seqEnd = seqAdd(s.seq, seqLength(s));
    const ack = s.flags & TCP_ACK ? s.ack : null;
    raiseMarks(f.marks, epoch, seqEnd, ack);
    const leftUnprotected = outcome === 'accept' || outcome === 'pass' || (outcome === 'held' && verdict === 'release');
    if (leftUnprotected) {
      this.exposedSinceFlush = true;
      f.exposedEnd = f.exposedEnd === null ? seqEnd : maxSeq(f.exposedEnd, seqEnd);
      f.exposedAck = maxAck(f.exposedAck, ack);
    }
  }

  beforeVerdicts(): void {
    if (!this.exposedSinceFlush) return;
    this.exposedSinceFlush = false;
    this.onExposed?.();
  }

  barrier(): void {
    /* epochs are read from the packets */
  }

  /** Epochs ≤ epoch are committed: only the newest mark ≤ epoch is still needed per flow. */
  release(epoch: number): void {
    this.released = Math.max(this.released, epoch);
    for (const f of this.flows.values()) {
      let keepFrom = 0;
      while (keepFrom + 1 < f.marks.length && f.marks[keepFrom + 1].epoch <= epoch) keepFrom++;
      if (keepFrom > 0) f.marks.splice(0, keepFrom);
    }
  }

  /** The connections to reset when the backup resumes from checkpoint `committed`. */
  inconsistent(committed: number): ResetTarget[] {
    assertInt(committed, this.released, Number.MAX_SAFE_INTEGER, 'committed epoch (≥ the last released one)');
    const out: ResetTarget[] = [];
    for (const f of this.flows.values()) {
      if (f.exposedEnd === null) continue;
      const at = stateAt(f, committed);
      let why = '';
      if (at === null) why = 'new-flow';
      else if (seqDiff(f.exposedEnd, at.seqEnd) > 0) why = 'seq';
      else if (f.exposedAck !== null && (at.ack === null || seqDiff(f.exposedAck, at.ack) > 0)) why = 'ack';
      if (!why) continue;
      const releasedAt = stateAt(f, this.released);
      const clientNext = releasedAt ? maxSeq(f.exposedEnd, releasedAt.seqEnd) : f.exposedEnd;
      const lastAck = maxAck(f.exposedAck, f.marks[f.marks.length - 1].ack) ?? 0;
      out.push({
        v6: f.v6,
        guest: addressText(f.guest),
        client: addressText(f.client),
        guestPort: f.guestPort,
        clientPort: f.clientPort,
        why,
        guestAddr: f.guest,
        clientAddr: f.client,
        toClient: { seq: clientNext, ack: lastAck },
        toGuest: at === null || at.ack === null ? null : { seq: at.ack, ack: at.seqEnd },
      });
    }
    return out;
  }

  /** Primary: the flows that changed since the last export (at most flowsMax; the rest next time). */
  exportChanged(flowsMax = EXPOSURE_FLOWS_PER_RECORD_MAX, all = false): { released: number; flows: FlowExport[] } {
    if (all) for (const key of this.flows.keys()) this.changed.add(key);
    const flows: FlowExport[] = [];
    for (const key of this.changed) {
      if (flows.length >= flowsMax) break;
      this.changed.delete(key);
      const f = this.flows.get(key);
      if (!f || f.exposedEnd === null) continue; // evicted, or nothing left unprotected yet
      flows.push({
        v6: f.v6,
        g: hex(f.guest),
        c: hex(f.client),
        gp: f.guestPort,
        cp: f.clientPort,
        marks: f.marks.map((m) => [m.epoch, m.seqEnd, m.ack ?? -1]),
        xe: f.exposedEnd,
        xa: f.exposedAck,
      });
    }
    return { released: this.released, flows };
  }

  /** Backup: takes the primary's view of these flows (replacing what it had of them). */
  importFlows(released: number, flows: FlowExport[]): void {
    this.released = Math.max(this.released, released);
    for (const x of flows) {
      const f: FlowTrack = {
        v6: x.v6,
        guest: unhex(x.g),
        client: unhex(x.c),
        guestPort: x.gp,
        clientPort: x.cp,
        marks: x.marks.map(([epoch, seqEnd, ack]) => ({ epoch, seqEnd, ack: ack < 0 ? null : ack })),
        exposedEnd: x.xe,
        exposedAck: x.xa,
      };
      const key = `${x.v6 ? 6 : 4}|${x.g}|${x.gp}|${x.c}|${x.cp}`;
      this.flows.delete(key);
      if (this.flows.size >= this.flowsMax) this.evictOldest();
      this.flows.set(key, f);
    }
  }

  private evictOldest(): void {
    const first = this.flows.keys().next();
    if (!first.done) {
      this.flows.delete(first.value);
      this.evicted++;
    }
  }
}

const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
const unhex = (h: string): Uint8Array => new Uint8Array(Buffer.from(h, 'hex'));

/** Checks a NET_EXPOSURE body's flows (hostile input: the backup fails the session, never crashes). */
export function parseFlowExports(v: unknown): { released: number; flows: FlowExport[] } | string {
  const o = v as { released?: unknown; flows?: unknown };
  if (!o || typeof o !== 'object' || !Number.isSafeInteger(o.released) || !Array.isArray(o.flows))
    return 'not {released, flows}';
  if (o.flows.length > EXPOSURE_FLOWS_PER_RECORD_MAX)
    return `${o.flows.length} flows (at most ${EXPOSURE_FLOWS_PER_RECORD_MAX})`;
  const u32 = (n: unknown): boolean => Number.isInteger(n) && (n as number) >= 0 && (n as number) <= 0xffffffff;
  const port = (n: unknown): boolean => Number.isInteger(n) && (n as number) >= 0 && (n as number) <= 0xffff;
  for (const x of o.flows as FlowExport[]) {
    const alen = x?.v6 ? 32 : 8;
    if (
      typeof x !== 'object' ||
      typeof x.v6 !== 'boolean' ||
      typeof x.g !== 'string' ||
      typeof x.c !== 'string' ||
      !/^[0-9a-f]*$/.test(x.g + x.c) ||
      x.g.length !== alen ||
      x.c.length !== alen ||
      !port(x.gp) ||
      !port(x.cp) ||
      !Array.isArray(x.marks) ||
      x.marks.length > 1024 ||
      !(x.xe === null || u32(x.xe)) ||
      !(x.xa === null || u32(x.xa))
    )
      return 'a malformed flow';
    for (const m of x.marks) {
      if (
        !Array.isArray(m) ||
        m.length !== 3 ||
        !Number.isSafeInteger(m[0]) ||
        !u32(m[1]) ||
        !(m[2] === -1 || u32(m[2]))
      )
        return 'a malformed mark';
    }
  }
  return { released: o.released as number, flows: o.flows as FlowExport[] };
}

function stateAt(f: FlowTrack, epoch: number): Mark | null {
  let at: Mark | null = null;
  for (const m of f.marks) {
    if (m.epoch <= epoch) at = m;
    else break;
  }
  return at;
}

/** A TCP RST|ACK from `src`:`sport` to `dst`:`dport` with the given numbers, checksummed. */
export function rstPacket(
  v6: boolean,
  src: Uint8Array,
  dst: Uint8Array,
  sport: number,
  dport: number,
  seq: number,
  ack: number,
): Uint8Array {
  const tcp = new Uint8Array(20);
  const t = new DataView(tcp.buffer);
  t.setUint16(0, sport);
  t.setUint16(2, dport);
  t.setUint32(4, seq >>> 0);
  t.setUint32(8, ack >>> 0);
  tcp[12] = 5 << 4;
  tcp[13] = 0x04 | 0x10;
  const pseudo = v6 ? [...src, ...dst, 0, 0, 0, 20, 0, 0, 0, 6] : [...src, ...dst, 0, 6, 0, 20];
  t.setUint16(16, checksum(Uint8Array.from([...pseudo, ...tcp])));
  if (v6) {
    const ip = new Uint8Array(60);
    ip[0] = 0x60;
    new DataView(ip.buffer).setUint16(4, 20);
    ip[6] = 6;
    ip[7] = 64;
    ip.set(src, 8);
    ip.set(dst, 24);
    ip.set(tcp, 40);
    return ip;
  }
  const ip = new Uint8Array(40);
  const d = new DataView(ip.buffer);
  ip[0] = 0x45;
  d.setUint16(2, 40);
  ip[6] = 0x40;
  ip[8] = 64;
  ip[9] = 6;
  ip.set(src, 12);
  ip.set(dst, 16);
  d.setUint16(10, checksum(ip.subarray(0, 20)));
  ip.set(tcp, 20);
  return ip;
}

/** The Internet checksum (RFC 1071). */
export function checksum(b: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i + 1 < b.length; i += 2) sum += (b[i] << 8) | b[i + 1];
  if (b.length & 1) sum += b[b.length - 1] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

export interface ResetOptions {
  /** Namespace to send from (tests); default: ours (dom0). */
  netns?: string;
  /** Send the guest-side RSTs too (only once the resumed guest runs). */
  toGuest: boolean;
  /** Send the client-side RSTs (default true; false when they went out already). */
  toClient?: boolean;
}

/** Sends the RSTs; returns how many packets went out. */
export function sendResets(targets: ResetTarget[], o: ResetOptions): number {
  const addon = requirePart('nfqueue') as unknown as { sendRawIp?: (p: Uint8Array, netnsPath?: string) => void };
  if (!addon.sendRawIp)
    throw new RemusError(ErrorCode.ADDON_PART_MISSING, 'the addon lacks sendRawIp: run `npm install`');
  const netnsPath = o.netns === undefined ? undefined : netnsPathOf(o.netns);
  let sent = 0;
  for (const t of targets) {
    if (o.toClient !== false) {
      addon.sendRawIp(
        rstPacket(t.v6, t.guestAddr, t.clientAddr, t.guestPort, t.clientPort, t.toClient.seq, t.toClient.ack),
        netnsPath,
      );
      sent++;
    }
    if (o.toGuest && t.toGuest) {
      addon.sendRawIp(
        rstPacket(t.v6, t.clientAddr, t.guestAddr, t.clientPort, t.guestPort, t.toGuest.seq, t.toGuest.ack),
        netnsPath,
      );
      sent++;
    }
  }
  return sent;
}

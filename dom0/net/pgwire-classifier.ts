// pgwire-classifier: the `pgwire` commit protection classifier — commit protection with no
// change to the guest. It follows each PostgreSQL connection the guest serves (TCP from the
// server ports, default 5432) by sequence number and holds only the segments that carry a
// commit acknowledgement (pgwire-parser.ts); everything else of those connections leaves at
// once. All other guest traffic is held (plain Remus). Decisions per packet:
//   not IP (ARP...)                               release (as in dscp mode)
//   IP but not TCP from a server port             hold
//   SYN(-ACK) from the server                     release; a new stream starts at ISN + 1
//   RST                                           release; the flow ends
//   data at the expected sequence                 parse; hold iff the parser says so
//   data before the expected sequence (a          the same verdict as the first time: hold
//     retransmission, maybe coalesced)            iff it overlaps a held range (or lies
//                                                 below what is remembered); its new bytes,
//                                                 if any, are parsed
//   data after the expected sequence (a gap),     the flow becomes opaque: every later
//     a truncated copy, an unknown flow (no SYN    packet of it is held
//     seen: started before us, or evicted), TLS
//   pure ACK / window update                      release (opaque flows: hold)
//   FIN                                           the verdict of its data; the flow ends
//   pure ACK / FIN of a flow that ended (the       release, as while it lived (the key is
//     last ACKs after the FINs, a retransmit)      remembered, bounded: no opaque entry)
// Per-flow state is bounded (held ranges kept per flow; past that, older bytes are held on
// retransmission) and so is the table (flowsMax; idle flows evicted first, then the least
// recently used).
import { assertInt } from '../assert';
import { isIpPacket } from './classify-dscp';
import type { PacketVerdict } from './packet-ledger';
import { PgwireParser } from './pgwire-parser';
import { parsePacket, seqAdd, seqDiff, TCP_FIN, TCP_RST, TCP_SYN, type TcpSegment } from './pgwire-segment';

export interface PgwireOptions {
  /** Server ports whose connections are parsed (default [5432]). */
  ports?: number[];
  flowsMax?: number;
  /** A flow with no packet for this long is evicted first when the table is full. */
  idleMs?: number;
  /** Held sequence ranges remembered per flow (for retransmissions). */
  heldRangesMax?: number;
  nowMs?: () => number;
}

export const PGWIRE_DEFAULTS = { ports: [5432], flowsMax: 4096, idleMs: 600_000, heldRangesMax: 64 } as const;

interface Flow {
  parser: PgwireParser;
  /** Next stream byte expected (32-bit sequence number). */
  next: number;
  /** Bytes before this sequence number are no longer described by `held`: hold them. */
  floor: number;
  /** Held [start, end) sequence ranges, oldest first. */
  held: Array<[number, number]>;
  lastMs: number;
}

export interface PgwireStats {
  flows: number;
  flowsOpened: number;
  flowsEnded: number;
  flowsEvicted: number;
  opaqueFlows: number;
  segmentsHeld: number;
  segmentsReleased: number;
  retransmissions: number;
  commits: number;
  otherHeld: number;
  unsyncedPackets: number;
  /** Pure ACKs (or FINs) of flows that had ended, released as while they lived. */
  afterEnd: number;
}

export class PgwireClassifier {
  private readonly flows = new Map<string, Flow>();
  private readonly ports: Set<number>;
  private readonly o: Required<Omit<PgwireOptions, 'ports'>>;
  readonly stats: PgwireStats = {
    flows: 0,
    flowsOpened: 0,
    flowsEnded: 0,
    flowsEvicted: 0,
    opaqueFlows: 0,
    segmentsHeld: 0,
    segmentsReleased: 0,
    retransmissions: 0,
    commits: 0,
    otherHeld: 0,
    unsyncedPackets: 0,
    afterEnd: 0,
  };
  /** Why flows went opaque (last few), for `describe()`. */
  readonly opaqueReasons: string[] = [];

  constructor(opts: PgwireOptions = {}) {
    this.ports = new Set(opts.ports ?? PGWIRE_DEFAULTS.ports);
    for (const p of this.ports) assertInt(p, 1, 65535, 'pgwire port');
    this.o = {
      flowsMax: opts.flowsMax ?? PGWIRE_DEFAULTS.flowsMax,
      idleMs: opts.idleMs ?? PGWIRE_DEFAULTS.idleMs,
      heldRangesMax: opts.heldRangesMax ?? PGWIRE_DEFAULTS.heldRangesMax,
      nowMs: opts.nowMs ?? Date.now,
    };
    assertInt(this.o.flowsMax, 1, 1 << 20, 'flowsMax');
    assertInt(this.o.heldRangesMax, 1, 1 << 16, 'heldRangesMax');
  }

  /** The Classifier the ledger calls (bound: pass it as is). */
  readonly classify = (header: Uint8Array, hwProtocol: number): PacketVerdict => {
    if (!isIpPacket(header, hwProtocol)) return 'release';
    const parsed = parsePacket(header);
    if (parsed.kind !== 'tcp' || !this.ports.has(parsed.seg.sport)) {
      this.stats.otherHeld++;
      return 'hold';
    }
    const hold = this.onSegment(parsed.seg);
    if (hold) this.stats.segmentsHeld++;
    else this.stats.segmentsReleased++;
    return hold ? 'hold' : 'release';
  };

  get flowCount(): number {
    return this.flows.size;
  }

  /** Mode of a flow by its key (tests, describe): undefined when not tracked. */
  flowMode(key: string): string | undefined {
    return this.flows.get(key)?.parser.mode;
  }

  private onSegment(s: TcpSegment): boolean {
    if (s.flags & TCP_RST) {
      this.end(s.key);
      return false;
    }
    if (s.flags & TCP_SYN) {
      this.open(s.key, seqAdd(s.seq, 1));
      return false;
    }
    let f = this.flows.get(s.key);
    if (f === undefined && s.payloadLen === 0 && this.ended.has(s.key)) {
      this.stats.afterEnd++;
      return false;
    }
    if (f === undefined) {
      f = this.open(s.key, s.seq);
      this.toOpaque(f, 'flow not seen from its SYN (started earlier, or evicted)');
    } else {
      this.touch(s.key, f);
    }
    const hold = this.segmentVerdict(f, s);
    if (s.flags & TCP_FIN) this.end(s.key);
    return hold;
  }

  private segmentVerdict(f: Flow, s: TcpSegment): boolean {
    if (f.parser.opaque) {
      this.stats.unsyncedPackets++;
      return true;
    }
    if (s.payloadLen === 0) return false;
    if (s.truncated) {
      this.toOpaque(f, 'packet larger than the NFQUEUE copy range');
      return true;
    }
    const start = s.seq,
      end = seqAdd(s.seq, s.payloadLen);
    const ahead = seqDiff(start, f.next);
    if (ahead > 0) {
      this.toOpaque(f, `gap of ${ahead} bytes in the stream`);
      return true;
    }
    let hold = false;
    if (ahead < 0) {
      this.stats.retransmissions++;
      const oldEnd = seqDiff(end, f.next) < 0 ? end : f.next;
      hold = this.wasHeld(f, start, oldEnd);
    }
    if (seqDiff(end, f.next) > 0) {
      const fresh = s.payload.subarray(seqDiff(f.next, start));
      if (f.parser.segment(fresh)) hold = true;
      this.stats.commits += f.parser.commits;
      f.parser.commits = 0;
      if (f.parser.opaque) this.noteOpaque(f.parser.opaqueReason);
      f.next = end;
    }
    if (hold) this.remember(f, start, end);
    return hold;
  }

  private wasHeld(f: Flow, start: number, end: number): boolean {
    if (seqDiff(start, f.floor) < 0) return true;
    for (const [a, b] of f.held) if (seqDiff(start, b) < 0 && seqDiff(a, end) < 0) return true;
    return false;
  }

  private remember(f: Flow, start: number, end: number): void {
    const last = f.held[f.held.length - 1];
    if (last && seqDiff(start, last[1]) <= 0 && seqDiff(end, last[1]) > 0) {
      last[1] = end;
      return;
    }
    if (last && seqDiff(end, last[1]) <= 0) return;
    f.held.push([start, end]);
    if (f.held.length > this.o.heldRangesMax) f.floor = f.held.shift()![1];
  }

  private open(key: string, next: number): Flow {
    this.flows.delete(key);
    this.ended.delete(key);
    this.makeRoom();
    const f: Flow = { parser: new PgwireParser(), next, floor: next, held: [], lastMs: this.o.nowMs() };
    this.flows.set(key, f);
    this.stats.flowsOpened++;
    this.stats.flows = this.flows.size;
    return f;
  }

  private touch(key: string, f: Flow): void {
    f.lastMs = this.o.nowMs();
    this.flows.delete(key); // Map order = least recently used first
    this.flows.set(key, f);
  }

  private makeRoom(): void {
    const now = this.o.nowMs();
    for (const [key, f] of this.flows) {
      if (this.flows.size < this.o.flowsMax && now - f.lastMs < this.o.idleMs) break;
      this.flows.delete(key);
      this.stats.flowsEvicted++;
    }
  }

  private end(key: string): void {
    if (this.flows.delete(key)) this.stats.flowsEnded++;
    this.stats.flows = this.flows.size;
    this.ended.delete(key);
    this.ended.add(key); // Set order = oldest first
    if (this.ended.size > this.o.flowsMax) this.ended.delete(this.ended.values().next().value!);
  }
  /** Keys of flows that ended (FIN or RST), at most flowsMax, oldest first: their last ACKs pass. */
  private readonly ended = new Set<string>();

  private toOpaque(f: Flow, reason: string): void {
    f.parser.toOpaque(reason);
    this.noteOpaque(reason);
  }

  private noteOpaque(reason: string): void {
    this.stats.opaqueFlows++;
    this.opaqueReasons.push(reason);
    if (this.opaqueReasons.length > 8) this.opaqueReasons.shift();
  }
}

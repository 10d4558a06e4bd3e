// packet-ledger: the rules of the nfqueue output buffer (docs/netbuffer.md), free of
// sockets so they can be unit-tested. Packets are known by their kernel queue id; the
// ledger decides which verdict each gets and when:
//   barrier(N)  drain what the kernel already queued (the domain is suspended: all epoch N),
//               then close epoch N;
//   release(N)  per closed epoch ≤ N, in order: verdictUpTo(last held id) — the kernel
//               accepts every queued id ≤ it, in id order — then individual verdicts for
//               the packets that waited behind their flow with a later id;
//   a packet classified 'release' leaves at once only if nothing earlier of its flow is
//   held, otherwise it waits behind them (per-flow order);
//   setPassThrough(true) accepts everything read so far, then each packet on arrival;
//   discard() drops everything held. Bounded: past heldMax / heldBytesMax a new packet is
//   dropped at once and counted, never released early.
// A stateful classifier (pgwire) also sees the packets that pass through unprotected, so
// that it follows every stream from its start; an observer (failover-reset.ts) sees every
// packet with its outcome and the epoch it belongs to. watchHeld's callback hears, once per
// batch, that packets classified 'hold' were held in the open epoch (output-triggered
// checkpoints); packets that only wait behind their flow ride an epoch already held.
import { assert } from '../assert';
import type { OutputGate } from '../ports';

export type PacketVerdict = 'hold' | 'release';
/**
 * header: the first copyBytes of the IP packet; hwProtocol: 0x0800 IPv4, 0x86dd IPv6; mark: the
 * packet's skb mark (0 when the batch has none), set by an in-kernel classifier (kernel-classifier.ts).
 */
export type Classifier = (header: Uint8Array, hwProtocol: number, mark?: number) => PacketVerdict;

/** What happened to a packet when it was read. 'pass': pass-through (unprotected). */
export type PacketOutcome = 'accept' | 'held' | 'drop' | 'pass';

/** Watches the ledger (the failover reset tracker): every packet, barriers, releases. */
export interface LedgerObserver {
  packet(header: Uint8Array, verdict: PacketVerdict, outcome: PacketOutcome, epoch: number): void;
  /** Called after a batch's packet() calls, before its verdicts let packets out. */
  beforeVerdicts?(): void;
  barrier(epoch: number): void;
  release(epoch: number): void;
}

/** Where verdicts go (the native queue) and how to pull what the kernel already holds. */
export interface VerdictSink {
  verdictUpTo(id: number, accept: boolean): void;
  verdictEach(ids: Uint32Array, count: number, accept: boolean): void;
  /** Synchronously reads packets already queued in the kernel (they come back via ingest). */
  drain(): void;
}

/** One batch of packets as the native reader hands them over (shared typed arrays). */
export interface PacketBatch {
  count: number;
  ids: Uint32Array;
  ipLens: Uint32Array;
  protos: Uint16Array;
  headers: Uint8Array;
  copyBytes: number;
  /** Bytes actually copied per packet (≤ copyBytes); without it the whole slot is passed. */
  capLens?: Uint16Array;
  /** Each packet's skb mark; without it every mark is 0. */
  marks?: Uint32Array;
}

export interface LedgerLimits {
  heldMax: number;
  heldBytesMax: number;
}

export interface LedgerStats {
  received: number;
  held: number;
  heldBytes: number;
  released: number;
  /** Classified 'release' and accepted at once. */
  releasedAtOnce: number;
  /** Classified 'release' but queued behind an earlier held packet of its flow. */
  waitedBehindFlow: number;
  passedThrough: number;
  /** Dropped at arrival because a bound was reached. */
  droppedOverLimit: number;
  /** Dropped by discard() (fenced). */
  discarded: number;
  /** The longest an epoch's first held packet waited, from when it was read to its release (ms). */
  holdMsMax: number;
}

interface EpochRecord {
  epoch: number;
  /** Highest id held in this epoch by classification (-1: none). */
  lastBaseId: number;
  /** Ids of 'release' packets that wait behind their flow; released after the batch. */
  riders: number[];
  count: number;
  bytes: number;
  flows: string[];
  /** When its first packet was held (the clock's ms); meaningless while count is 0. */
  since: number;
}

/** a after b in 32-bit id space (the kernel's ids wrap). */
export function idAfter(a: number, b: number): boolean {
  return ((a - b) | 0) > 0;
}

export class PacketLedger implements OutputGate {
  private readonly closed: EpochRecord[] = [];
  private current: EpochRecord;
  private passThrough = false;
  private lastReadId = -1;
  /** flow key → epoch that holds the flow's last held packet. */
  private readonly flows = new Map<string, number>();
  private readonly scratch: Uint32Array;
  readonly stats: LedgerStats = {
    received: 0,
    held: 0,
    heldBytes: 0,
    released: 0,
    releasedAtOnce: 0,
    waitedBehindFlow: 0,
    passedThrough: 0,
    droppedOverLimit: 0,
    discarded: 0,
    holdMsMax: 0,
  };
  /** Told, per released epoch that held packets, how long its first one waited (ms): the metrics. */
  onHoldMs: ((ms: number, epoch: number) => void) | null = null;

  constructor(
    private readonly sink: VerdictSink,
    private readonly limits: LedgerLimits,
    private readonly classify: Classifier | null = null,
    batchMax = 65536,
    private readonly observer: LedgerObserver | null = null,
    private readonly nowMs: () => number = () => performance.now(),
  ) {
    assert(limits.heldMax >= 1 && limits.heldBytesMax >= 1, 'ledger limits must be positive');
    this.current = newEpoch(1);
    this.scratch = new Uint32Array(batchMax * 2);
  }

  get held(): number {
    return this.stats.held;
  }
  private onHeld: (() => void) | null = null;
  watchHeld(onHeld: (() => void) | null): void {
    this.onHeld = onHeld;
  }
  get nextEpoch(): number {
    return this.current.epoch;
  }
  get isPassThrough(): boolean {
    return this.passThrough;
  }

  /** Packets the native reader just read from the queue, in kernel id order. */
  ingest(b: PacketBatch): void {
    if (b.count === 0) return;
    assert(b.count * 2 <= this.scratch.length, 'batch larger than the ledger was sized for');
    this.stats.received += b.count;
    if (this.passThrough) {
      if (this.classify || this.observer) this.observePassing(b);
      this.observer?.beforeVerdicts?.();
      this.lastReadId = b.ids[b.count - 1];
      this.sink.verdictUpTo(this.lastReadId, true);
      this.stats.passedThrough += b.count;
      return;
    }
    const accept = this.scratch.subarray(0, b.count);
    const drop = this.scratch.subarray(b.count, 2 * b.count);
    let nAccept = 0,
      nDrop = 0,
      protectedHeld = false;
    for (let i = 0; i < b.count; i++) {
      const id = b.ids[i];
      this.lastReadId = id;
      const header = headerOf(b, i);
      const verdict = this.classify ? this.classify(header, b.protos[i], b.marks?.[i] ?? 0) : 'hold';
      const key = this.classify ? flowKey(header) : null;
      const outcome = this.place(id, b.ipLens[i], verdict, key);
      this.observer?.packet(header, verdict, outcome, this.current.epoch);
      if (outcome === 'accept') accept[nAccept++] = id;
      else if (outcome === 'drop') drop[nDrop++] = id;
      else if (verdict === 'hold') protectedHeld = true;
    }
    if (nAccept) this.observer?.beforeVerdicts?.();
    if (nAccept) this.sink.verdictEach(accept, nAccept, true);
    if (nDrop) this.sink.verdictEach(drop, nDrop, false);
    if (protectedHeld) this.onHeld?.();
  }

  /** Pass-through: the classifier still follows the streams; the observer sees each packet. */
  private observePassing(b: PacketBatch): void {
    for (let i = 0; i < b.count; i++) {
      const header = headerOf(b, i);
      const verdict = this.classify ? this.classify(header, b.protos[i], b.marks?.[i] ?? 0) : 'hold';
      this.observer?.packet(header, verdict, 'pass', this.current.epoch);
    }
  }

  private place(id: number, bytes: number, verdict: PacketVerdict, key: string | null): 'accept' | 'drop' | 'held' {
    const waitsOn = key === null ? undefined : this.flows.get(key);
    if (verdict === 'release' && waitsOn === undefined) {
      this.stats.releasedAtOnce++;
      return 'accept';
    }
    if (this.stats.held >= this.limits.heldMax || this.stats.heldBytes + bytes > this.limits.heldBytesMax) {
      this.stats.droppedOverLimit++;
      return 'drop';
    }
    let rec = this.current;
    if (verdict === 'release') {
      rec = this.record(waitsOn!);
      rec.riders.push(id);
      this.stats.waitedBehindFlow++;
    } else {
      rec.lastBaseId = id;
      if (key !== null) {
        if (waitsOn !== rec.epoch) rec.flows.push(key);
        this.flows.set(key, rec.epoch);
      }
    }
    if (rec.count === 0) rec.since = this.nowMs();
    rec.count++;
    rec.bytes += bytes;
    this.stats.held++;
    this.stats.heldBytes += bytes;
    return 'held';
  }

  private record(epoch: number): EpochRecord {
    if (epoch === this.current.epoch) return this.current;
    const rec = this.closed[epoch - this.closed[0].epoch];
    assert(rec !== undefined && rec.epoch === epoch, `flow points at epoch ${epoch} which is not held`);
    return rec;
  }

  barrier(epoch: number): void {
    assert(epoch === this.current.epoch, `barrier ${epoch} out of order (expected ${this.current.epoch})`);
    this.sink.drain();
    this.closed.push(this.current);
    this.current = newEpoch(epoch + 1);
    this.observer?.barrier(epoch);
  }

  release(epoch: number): void {
    while (this.closed.length && this.closed[0].epoch <= epoch) this.releaseRecord(this.closed.shift()!);
    this.observer?.release(epoch);
  }

  private releaseRecord(rec: EpochRecord): void {
    if (rec.lastBaseId >= 0) this.sink.verdictUpTo(rec.lastBaseId, true);
    const late = rec.riders.filter((id) => rec.lastBaseId < 0 || idAfter(id, rec.lastBaseId));
    if (late.length) this.sink.verdictEach(Uint32Array.from(late), late.length, true);
    for (const key of rec.flows) if ((this.flows.get(key) ?? Infinity) <= rec.epoch) this.flows.delete(key);
    this.stats.held -= rec.count;
    this.stats.heldBytes -= rec.bytes;
    this.stats.released += rec.count;
    if (rec.count === 0) return;
    const ms = this.nowMs() - rec.since;
    this.stats.holdMsMax = Math.max(this.stats.holdMsMax, ms);
    this.onHoldMs?.(ms, rec.epoch);
  }

  setPassThrough(on: boolean): void {
    if (on && !this.passThrough && this.stats.held > 0) {
      this.sink.verdictUpTo(this.lastReadId, true); // everything read so far, in id order
      this.stats.released += this.stats.held;
      this.forget();
    }
    this.passThrough = on;
  }

  discard(): void {
    if (this.stats.held > 0) this.sink.verdictUpTo(this.lastReadId, false);
    this.stats.discarded += this.stats.held;
    this.forget();
  }

  private forget(): void {
    const next = this.current.epoch;
    this.closed.length = 0;
    this.current = newEpoch(next);
    this.flows.clear();
    this.stats.held = 0;
    this.stats.heldBytes = 0;
  }
}

/** Packet i's copy: the bytes copied (capLens), else its whole slot. */
function headerOf(b: PacketBatch, i: number): Uint8Array {
  const at = i * b.copyBytes;
  return b.headers.subarray(at, at + (b.capLens ? b.capLens[i] : b.copyBytes));
}

function newEpoch(epoch: number): EpochRecord {
  return { epoch, lastBaseId: -1, riders: [], count: 0, bytes: 0, flows: [], since: 0 };
}

/**
 * Flow of an IP packet: protocol, addresses and, for TCP/UDP that is not a fragment, ports.
 * null when the header is not IPv4/IPv6 (such packets have no flow: never reordered
 * against anything because they are held or released on their own).
 */
export function flowKey(h: Uint8Array): string | null {
  const version = h[0] >> 4;
  if (version === 4 && h.length >= 20) {
    const ihl = (h[0] & 15) * 4;
    const proto = h[9];
    const fragment = (((h[6] & 0x3f) << 8) | h[7]) !== 0 || (h[6] & 0x20) !== 0;
    const addrs = hex(h, 12, 20);
    if ((proto === 6 || proto === 17) && !fragment && h.length >= ihl + 4) {
      return `4/${proto}/${addrs}/${hex(h, ihl, ihl + 4)}`;
    }
    return `4/${proto}/${addrs}`;
  }
  if (version === 6 && h.length >= 40) {
    const next = h[6];
    const addrs = hex(h, 8, 40);
    if ((next === 6 || next === 17) && h.length >= 44) return `6/${next}/${addrs}/${hex(h, 40, 44)}`;
    return `6/${next}/${addrs}`;
  }
  return null;
}

function hex(h: Uint8Array, from: number, to: number): string {
  return Buffer.from(h.buffer, h.byteOffset + from, to - from).toString('hex');
}

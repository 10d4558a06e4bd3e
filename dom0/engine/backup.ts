// backup: the standby side. It accepts one primary at a time, stages each checkpoint whole
// and commits it (memory, then device state) only at CHECKPOINT_END, then acknowledges.
// Silence past the heartbeat timeout, or a broken connection without GOODBYE, means the
// primary failed: the staged checkpoint is discarded and the domain resumes from the last
// committed one. A protocol error is not a failover: the connection is dropped and the
// primary must reconnect (and start again with a full copy). A new session invalidates
// the previous committed state until its first full checkpoint commits: the primary ran
// unprotected in between, so the old image is no longer a safe place to resume from.
import { ErrorCode, RemusError } from '../errors';
import { PageDecoder } from '../memory/page-codec';
import { PAGE_SIZE } from '../memory/page-cache';
import {
  PROTOCOL_VERSION, Rec, ackBody, heartbeatBody, jsonBody, parseCheckpointBegin, parseCheckpointEnd,
  parseHeartbeat, parseJson, parseWithEpoch, protocolError, epochBody, parseDiskWrite, parseDiskSync, parseDiskSyncEnd, parseDiskRefs, parseDiskVerify,
} from '../protocol/records';
import type { Clock, Link, Replica } from './ports';
import { Staging } from './staging';
import { EpochBuffer } from '../disk/epoch-buffer';
import { diskChecksumAsync } from '../disk/replicator';

export interface HelloInfo {
  kind: string;
  domain: string; pageCount: number; pageSize: number; compressor: string; intervalMs: number;
  heartbeatTimeoutMs: number; deviceStateMax: number; sessionId: string;
  /** Size of the replicated disk (0: the domain has none), and the write buffer it asks for. */
  diskBytes: number; diskBufferBytesMax: number;
}

export interface BackupOptions {
  /** Largest guest this backup accepts, in pages. */
  pageCountMax: number;
  /** Most this backup buffers of unacknowledged disk writes, whatever the primary asks. */
  diskBufferBytesMax?: number;
  batchPagesMax: number;
  /** Makes (or reuses) the replica for a primary's HELLO. Throws RemusError to refuse. */
  replicaFor(hello: HelloInfo): Replica;
}

export interface BackupHooks {
  commit?(epoch: number, replica: Replica): void;
  event?(name: string, detail: Record<string, unknown>): void;
  /** Phases for the fault simulator: 'record', 'pre-commit', 'post-commit', 'post-ack'. */
  phase?(phase: string, epoch: number): void;
  /**
   * NET_EXPOSURE: the primary's flows that clients saw unprotected (JSON, checked by the
   * hook). Taken at once, not at commit: what clients saw is a fact whichever checkpoint
   * the backup resumes from. A string return is a protocol error naming what is wrong.
   */
  netExposure?(epoch: number, value: Record<string, unknown>): string | null;
}

export type BackupState = 'waiting' | 'receiving' | 'failed-over';

interface Open { epoch: number; full: boolean; pages: number; deviceState: Uint8Array | null; diskCrc: number | null; }

export class Backup {
  private link: Link | null = null;
  private hello: HelloInfo | null = null;
  private replica: Replica | null = null;
  private staging: Staging | null = null;
  private open: Open | null = null;
  private committed: number | null = null;
  private lastHeard = 0;
  private lastSent = 0;
  private timer: unknown = null;
  state: BackupState = 'waiting';
  private readonly decoder: PageDecoder;
  readonly counters = {
    checkpoints: 0, pages: 0, wireBytes: 0, sessions: 0, protocolErrors: 0,
    diskWrites: 0, diskBytesApplied: 0, diskSyncBytes: 0, diskDiscardedWrites: 0, diskRefPages: 0, diskVerifiedEpoch: 0,
  };
  private diskSuspect = false;
  /** A commit waits for the disk check: records are held here meanwhile. */
  private paused = false;
  private queued: Array<[number, Buffer]> = [];
  private queuedBytes = 0;
  private diskBuffer: EpochBuffer | null = null;
  private diskSync: { bytes: number; done: boolean } = { bytes: 0, done: true };
  resumedFrom: { epoch: number; info: Record<string, unknown>; reason: string; atMs: number } | null = null;

  constructor(private readonly clock: Clock, private readonly opts: BackupOptions, private readonly hooks: BackupHooks = {}) {
    this.decoder = new PageDecoder('native', opts.batchPagesMax);
  }

  get committedEpoch(): number | null { return this.committed; }
  get attached(): boolean { return this.link !== null; }
  get domain(): string | null { return this.hello?.domain ?? null; }
  get replicaImage(): Uint8Array | null { return this.replica?.image ?? null; }

  /** A primary connected (already authenticated). Only one at a time. */
  attach(link: Link): void {
    if (this.state === 'failed-over') {
      // A primary that comes back after we resumed must stop its copy (fencing).
      link.send(Rec.TAKEOVER, epochBody(this.resumedFrom!.epoch));
      link.close();
      return;
    }
    if (this.link) {
      link.send(Rec.ERROR, jsonBody({ code: ErrorCode.HANDSHAKE, message: 'this backup already serves a primary' }));
      link.close();
      return;
    }
    this.sessionOpen = false;
    this.link = link;
    this.lastHeard = this.clock.now();
    this.state = 'receiving';
    link.onRecord((type, body) => {
      if (!this.paused) { this.guard(link, () => this.onRecord(type, body)); return; }
      this.lastHeard = this.clock.now();
      this.queuedBytes += body.length;
      this.queued.push([type, body]);
      if (this.queuedBytes > QUEUED_BYTES_MAX) this.guard(link, () => { throw protocolError(`more than ${QUEUED_BYTES_MAX} octets arrived during the disk check`); });
    });
    link.onClose((err) => { if (this.link === link) this.onLinkClosed(err); });
    this.arm();
  }

  /** Manual promotion (`remusdb failover`): resume now from the last committed checkpoint. */
  failover(reason = 'manual failover'): { epoch: number; info: Record<string, unknown> } | null {
    if (this.state === 'failed-over') return this.resumedFrom;
    this.open = null;
    this.staging?.clear();
    this.queued = [];
    this.queuedBytes = 0;
    const lostDiskRanges = this.diskBuffer?.discard() ?? [];
    this.counters.diskDiscardedWrites += lostDiskRanges.length;
    const link = this.link;
    this.link = null;
    this.disarm();
    if (this.committed === null || !this.replica) {
      this.state = 'waiting';
      this.hooks.event?.('no-checkpoint', { reason });
      link?.close();
      return null;
    }
    this.replica.disk?.flush(); // writes the guest saw durable are durable here before it resumes
    const resumed = this.replica.resume({ lostDiskRanges });
    const info = resumed instanceof Promise ? { resuming: true } : resumed;
    this.state = 'failed-over';
    const from = this.resumedFrom = { epoch: this.committed, info, reason, atMs: this.clock.now() };
    if (resumed instanceof Promise) {
      resumed.then((i) => { from.info = i; this.hooks.event?.('resumed', { epoch: from.epoch, ...i }); },
        (e: Error) => this.hooks.event?.('resume-failed', { epoch: from.epoch, message: e.message }));
    }
    if (link) {
      try { link.send(Rec.TAKEOVER, epochBody(this.committed)); } catch { /* best effort */ }
      link.close();
    }
    this.hooks.event?.('failover', { epoch: this.committed, reason, ...info });
    return this.resumedFrom;
  }

  /** Stops waiting (shutdown). Idempotent. */
  close(): void {
    this.disarm();
    const l = this.link;
    this.link = null;
    l?.close();
  }

  private onRecord(type: number, body: Buffer): void {
    this.lastHeard = this.clock.now();
    this.hooks.phase?.('record', this.open?.epoch ?? -1);
    switch (type) {
      case Rec.HELLO: return this.onHello(body);
      case Rec.CHECKPOINT_BEGIN: return this.onBegin(body);
      case Rec.PAGE_BATCH: return this.onBatch(body);
      case Rec.DEVICE_STATE: return this.onDeviceState(body);
      case Rec.CHECKPOINT_END: return this.onEnd(body);
      case Rec.DISK_WRITE: return this.onDiskWrite(body);
      case Rec.DISK_SYNC: return this.onDiskSync(body);
      case Rec.DISK_SYNC_END: return this.onDiskSyncEnd(body);
      case Rec.DISK_REFS: return this.onDiskRefs(body);
      case Rec.DISK_VERIFY: return this.onDiskVerify(body);
      case Rec.NET_EXPOSURE: return this.onNetExposure(body);
      case Rec.HEARTBEAT: parseHeartbeat(body); return;
      case Rec.GOODBYE: return this.onGoodbye();
      case Rec.ERROR: {
        const { value } = parseJson(type, body, false);
        throw protocolError(`primary reported ${String(value.code)}: ${String(value.message)}`);
      }
      default: throw protocolError(`unexpected record type ${type} at the backup`);
    }
  }

  private onHello(body: Buffer): void {
    if (this.sessionOpen) throw protocolError('HELLO twice in one session');
    const { version, value } = parseJson(Rec.HELLO, body, true);
    if (version !== PROTOCOL_VERSION) throw new RemusError(ErrorCode.HANDSHAKE, `protocol version ${version} is not ${PROTOCOL_VERSION}`);
    const h = validateHello(value, this.opts.pageCountMax);
    if (this.hello && (this.hello.domain !== h.domain || this.hello.pageCount !== h.pageCount)) {
      throw new RemusError(ErrorCode.HANDSHAKE, `this backup holds ${this.hello.domain} (${this.hello.pageCount} pages), not ${h.domain} (${h.pageCount} pages)`);
    }
    // The disk continues an earlier session only when this process kept it (same replica).
    const hadReplica = this.replica !== null;
    this.replica = this.replica ?? this.opts.replicaFor(h);
    const diskContinues = h.diskBytes > 0 && !this.diskSuspect && (hadReplica || this.replica.diskContinues === true);
    this.diskSuspect = false;
    const diskBytes = this.replica.disk?.sizeBytes ?? 0;
    if (h.diskBytes !== diskBytes) {
      throw new RemusError(ErrorCode.HANDSHAKE, h.diskBytes === 0 ? `this backup keeps a ${diskBytes}-byte disk but ${h.domain} has none`
        : `${h.domain} has a ${h.diskBytes}-byte disk but this backup's is ${diskBytes ? `${diskBytes} bytes` : 'absent (give the backup --disk)'}`);
    }
    this.hello = h;
    const bufferMax = Math.min(h.diskBufferBytesMax, this.opts.diskBufferBytesMax ?? h.diskBufferBytesMax);
    if (!this.diskBuffer || this.diskBuffer.bytesMax !== bufferMax) this.diskBuffer = new EpochBuffer(bufferMax);
    this.diskBuffer.discard(); // writes of a session that never committed them: the primary resyncs those blocks
    this.diskSync = { bytes: 0, done: h.diskBytes === 0 };
    this.staging = this.staging ?? new Staging(h.pageCount, this.decoder, this.opts.batchPagesMax);
    this.committed = null; // the primary ran unprotected: the old image is stale until FULL commits
    this.open = null;
    this.sessionOpen = true;
    this.counters.sessions++;
    this.send(Rec.HELLO_ACK, jsonBody({ accepted: true, backup: 'remusdb', diskContinues }));
    this.arm();
    this.hooks.event?.('session', { domain: h.domain, pages: h.pageCount, session: h.sessionId });
  }

  private sessionOpen = false;

  private needSession(): HelloInfo {
    if (!this.hello || !this.sessionOpen) throw protocolError('checkpoint record before HELLO');
    return this.hello;
  }

  private onBegin(body: Buffer): void {
    this.needSession();
    const { epoch, full } = parseCheckpointBegin(body);
    if (this.open) throw protocolError(`CHECKPOINT_BEGIN ${epoch} while ${this.open.epoch} is open`);
    if (!full && this.committed === null) throw protocolError('the first checkpoint of a session must be FULL');
    if (!full && epoch !== this.committed! + 1) throw protocolError(`checkpoint ${epoch} does not follow ${this.committed}`);
    if (!this.diskSync.done) throw protocolError(`checkpoint ${epoch} began before the disk copy ended (DISK_SYNC_END)`);
    this.open = { epoch, full, pages: 0, deviceState: null, diskCrc: null };
  }

  private openFor(type: number, epoch: number): Open {
    if (!this.open) throw protocolError(`record type ${type} outside a checkpoint`);
    if (epoch !== this.open.epoch) throw protocolError(`record for epoch ${epoch} inside checkpoint ${this.open.epoch}`);
    return this.open;
  }

  private onBatch(body: Buffer): void {
    const { epoch, payload } = parseWithEpoch(Rec.PAGE_BATCH, body);
    const o = this.openFor(Rec.PAGE_BATCH, epoch);
    this.counters.wireBytes += body.length + 16;
    if (o.full) {
      // A full checkpoint replaces every page and nothing committed is at stake: decode in place.
      const records = this.decoder.unpack(payload);
      o.pages += this.decoder.applyInPlace(records, this.replica!.image);
    } else {
      o.pages += this.staging!.add(payload, this.replica!.image);
    }
  }

  private onNetExposure(body: Buffer): void {
    this.needSession();
    const { epoch, payload } = parseWithEpoch(Rec.NET_EXPOSURE, body);
    const { value } = parseJson(Rec.NET_EXPOSURE, payload, false);
    const bad = this.hooks.netExposure ? this.hooks.netExposure(epoch, value) : null;
    if (bad) throw protocolError(`NET_EXPOSURE of checkpoint ${epoch}: ${bad}`);
  }

  private onDeviceState(body: Buffer): void {
    const { epoch, payload } = parseWithEpoch(Rec.DEVICE_STATE, body);
    const o = this.openFor(Rec.DEVICE_STATE, epoch);
    if (o.deviceState) throw protocolError('two DEVICE_STATE records in one checkpoint');
    if (payload.length > this.hello!.deviceStateMax) throw protocolError(`device state of ${payload.length} octets exceeds ${this.hello!.deviceStateMax}`);
    o.deviceState = Uint8Array.from(payload);
  }

  private onEnd(body: Buffer): void {
    const { epoch, pages } = parseCheckpointEnd(body);
    const o = this.openFor(Rec.CHECKPOINT_END, epoch);
    if (pages !== o.pages) throw protocolError(`checkpoint ${epoch} announced ${pages} pages but carried ${o.pages}`);
    if (!o.deviceState) throw protocolError(`checkpoint ${epoch} has no DEVICE_STATE`);
    if (o.full && o.pages !== this.hello!.pageCount) throw protocolError(`FULL checkpoint ${epoch} carried ${o.pages} of ${this.hello!.pageCount} pages`);
    this.hooks.phase?.('pre-commit', epoch);
    // Disk first: if it fails nothing of this checkpoint reached memory; either way the
    // replica no longer equals a checkpoint, so nothing is committed until a new FULL one.
    this.committing(() => {
      const disk = this.replica!.disk ? this.diskBuffer!.commit(epoch, this.replica!.disk) : null;
      if (disk) { this.counters.diskWrites += disk.writes; this.counters.diskBytesApplied += disk.bytes; }
    });
    if (o.diskCrc === null) return this.finishCommit(o);
    // The disk check reads the whole disk: a few MiB per turn, heartbeats going on, and the
    // records that arrive meanwhile wait their turn (held, in order).
    const link = this.link!, expected = o.diskCrc;
    this.paused = true;
    diskChecksumAsync(this.replica!.disk!, this.clock).then((ours) => ours, (e: Error) => e).then((r) => {
      this.paused = false;
      if (this.link !== link || this.open !== o) { if (this.link) this.drainQueued(this.link); return; }
      this.guard(link, () => {
        this.committing(() => {
          if (r instanceof Error) throw r;
          if (r !== expected) {
            throw new RemusError(ErrorCode.DISK_DIVERGED, `at checkpoint ${epoch} the backup's disk has CRC32C ${r.toString(16)}, the primary's ${expected.toString(16)}: the disks differ (the next session copies the disk whole)`);
          }
          this.counters.diskVerifiedEpoch = epoch;
          this.hooks.event?.('disk-verified', { epoch, crc32c: r });
        });
        this.finishCommit(o);
      });
      this.drainQueued(link);
    });
  }

  /** Memory (staged pages, then disk references), device state; then the ACK. */
  private finishCommit(o: Open): void {
    const epoch = o.epoch;
    this.committing(() => {
      const refs = this.staging!.refs;
      const refPages = refs.length ? this.staging!.resolveRefs(this.replica!.disk!) : null;
      const changed = o.full ? allPfns(this.hello!.pageCount) : this.staging!.applyTo(this.replica!.image);
      if (refPages) {
        refs.forEach((r, i) => this.replica!.image.set(refPages.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE), r.pfn * PAGE_SIZE));
        this.counters.diskRefPages += refs.length;
      }
      if (o.full) this.staging!.clear();
      this.replica!.commitDeviceState(o.deviceState!, changed);
    });
    this.committed = epoch;
    this.open = null;
    this.counters.checkpoints++;
    this.counters.pages += o.pages;
    this.hooks.commit?.(epoch, this.replica!);
    this.hooks.phase?.('post-commit', epoch);
    this.send(Rec.ACK, ackBody(epoch));
    this.hooks.phase?.('post-ack', epoch);
  }

  /** A step of a commit: if it fails, the replica is no checkpoint any more. */
  private committing(f: () => void): void {
    try { f(); } catch (e) {
      this.committed = null;
      this.staging!.clear();
      // A disk reference that did not match means our disk diverged: the next session copies it whole.
      if (e instanceof RemusError && (e.code === ErrorCode.DISK_REF_MISMATCH || e.code === ErrorCode.DISK_DIVERGED)) this.diskSuspect = true;
      throw e;
    }
  }

  /** Records that arrived while a commit waited for the disk check, in order. */
  private drainQueued(link: Link): void {
    while (this.queued.length > 0 && !this.paused && this.link === link) {
      const [type, body] = this.queued.shift()!;
      this.queuedBytes -= body.length;
      this.guard(link, () => this.onRecord(type, body));
    }
  }

  /** Pages sent as disk blocks: staged, resolved from our disk at commit (after its writes). */
  private onDiskRefs(body: Buffer): void {
    const h = this.needSession();
    if (h.diskBytes === 0) throw protocolError('DISK_REFS for a domain without a disk');
    const { epoch, refs } = parseDiskRefs(body, h.pageCount, h.diskBytes);
    const o = this.openFor(Rec.DISK_REFS, epoch);
    this.counters.wireBytes += body.length + 16;
    o.pages += this.staging!.addRefs(refs);
  }

  /** The primary's disk checksum at this checkpoint: checked at its commit, before the ACK. */
  private onDiskVerify(body: Buffer): void {
    const h = this.needSession();
    const { epoch, crc32c } = parseDiskVerify(body);
    const o = this.openFor(Rec.DISK_VERIFY, epoch);
    if (h.diskBytes === 0 || o.diskCrc !== null) throw protocolError(`DISK_VERIFY for checkpoint ${epoch} without a disk, or twice`);
    o.diskCrc = crc32c;
  }

  private onDiskWrite(body: Buffer): void {
    const h = this.needSession();
    if (h.diskBytes === 0) throw protocolError('DISK_WRITE for a domain without a disk');
    this.diskBuffer!.add(parseDiskWrite(body, h.diskBytes), this.committed);
  }

  /** Resync copy: applied at once — nothing is committed in this session until it ends. */
  private onDiskSync(body: Buffer): void {
    const h = this.needSession();
    if (this.diskSync.done || this.committed !== null || this.open) throw protocolError('DISK_SYNC outside the disk copy that opens a session');
    const { offsetBytes, data } = parseDiskSync(body, h.diskBytes);
    this.replica!.disk!.write(offsetBytes, data);
    this.diskSync.bytes += data.length;
    this.counters.diskSyncBytes += data.length;
  }

  private onDiskSyncEnd(body: Buffer): void {
    this.needSession();
    if (this.diskSync.done) throw protocolError('DISK_SYNC_END outside the disk copy');
    const bytes = parseDiskSyncEnd(body);
    if (bytes !== this.diskSync.bytes) throw protocolError(`DISK_SYNC_END says ${bytes} octets were copied; ${this.diskSync.bytes} arrived`);
    if (bytes > 0) { const d = this.replica!.disk!; (d.flushSoon ?? d.flush).call(d); }
    this.diskSync.done = true;
    this.hooks.event?.('disk-synced', { bytes });
  }

  private onGoodbye(): void {
    this.hooks.event?.('goodbye', { epoch: this.committed });
    this.sessionOpen = false;
    this.drop();
  }

  private onLinkClosed(err: Error | null): void {
    if (err instanceof RemusError && err.code === ErrorCode.PROTOCOL) {
      const link = this.link!;
      this.guard(link, () => { throw err; }); // a bad stream is not a dead primary
      return;
    }
    this.failover(err ? `connection broke: ${err.message}` : 'connection closed without GOODBYE');
  }

  /** Drop the connection without failing over; discard any open checkpoint. */
  private drop(): void {
    this.open = null;
    this.staging?.clear();
    this.queued = [];
    this.queuedBytes = 0;
    const l = this.link;
    this.link = null;
    this.disarm();
    if (this.state !== 'failed-over') this.state = 'waiting';
    l?.close();
  }

  private guard(link: Link, f: () => void): void {
    if (this.link !== link) return;
    try { f(); } catch (e) {
      if (!(e instanceof RemusError)) throw e;
      this.counters.protocolErrors++;
      this.hooks.event?.('protocol-error', { code: e.code, message: e.message });
      try { link.send(Rec.ERROR, jsonBody({ code: e.code, message: e.message })); } catch { /* closing */ }
      this.sessionOpen = false;
      this.drop();
    }
  }

  private timeoutMs(): number { return this.hello?.heartbeatTimeoutMs ?? 10_000; }

  private arm(): void {
    this.disarm();
    // Check for silence 8 times per timeout (failover ≤ timeout × 9/8); heartbeat every 1/4.
    const every = Math.max(5, Math.floor(this.timeoutMs() / 8));
    this.timer = this.clock.setTimer(every, () => this.onTimer());
  }

  private disarm(): void {
    if (this.timer !== null) this.clock.clearTimer(this.timer);
    this.timer = null;
  }

  private onTimer(): void {
    this.timer = null;
    if (!this.link) return;
    const now = this.clock.now();
    if (now - this.lastHeard > this.timeoutMs()) {
      // Confirm after pending input was read: a stall of our own loop is not the primary's silence.
      const link = this.link;
      this.timer = this.clock.setTimer(1, () => {
        this.timer = null;
        if (this.link !== link) return;
        const silent = this.clock.now() - this.lastHeard;
        if (silent > this.timeoutMs()) this.failover(`primary silent for ${silent.toFixed(0)} ms`); else this.arm();
      });
      return;
    }
    if (this.sessionOpen && now - this.lastSent >= this.timeoutMs() / 4) this.send(Rec.HEARTBEAT, heartbeatBody(this.committed ?? 0, now));
    this.arm();
  }

  private send(type: number, body: Uint8Array): void {
    if (!this.link) return;
    this.lastSent = this.clock.now();
    this.link.send(type, body);
  }
}

/** What may arrive while a commit waits for its disk check (then the session is dropped). */
const QUEUED_BYTES_MAX = 512 * 1024 * 1024;

function allPfns(pageCount: number): Uint32Array {
  const a = new Uint32Array(pageCount);
  for (let i = 0; i < pageCount; i++) a[i] = i;
  return a;
}

function validateHello(v: Record<string, unknown>, pageCountMax: number): HelloInfo {
  const num = (k: string, min: number, max: number): number => {
    const x = v[k];
    if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < min || x > max) {
      throw new RemusError(ErrorCode.HANDSHAKE, `HELLO ${k} ${JSON.stringify(x)} is not an integer in [${min}, ${max}]`);
    }
    return x;
  };
  const str = (k: string): string => {
    const x = v[k];
    if (typeof x !== 'string' || x.length === 0 || x.length > 256) throw new RemusError(ErrorCode.HANDSHAKE, `HELLO ${k} is missing or too long`);
    return x;
  };
  if (v.pageSize !== PAGE_SIZE) throw new RemusError(ErrorCode.HANDSHAKE, `page size ${String(v.pageSize)} is not ${PAGE_SIZE}`);
  return {
    kind: str('kind'), domain: str('domain'), pageCount: num('pageCount', 1, pageCountMax), pageSize: PAGE_SIZE,
    compressor: str('compressor'), intervalMs: num('intervalMs', 1, 60_000),
    heartbeatTimeoutMs: num('heartbeatTimeoutMs', 10, 600_000), deviceStateMax: num('deviceStateMax', 0, 1 << 20),
    diskBytes: v.diskBytes === undefined ? 0 : num('diskBytes', 0, Number.MAX_SAFE_INTEGER),
    diskBufferBytesMax: v.diskBufferBytesMax === undefined ? 0 : num('diskBufferBytesMax', 0, 2 ** 40),
    sessionId: str('sessionId'),
  };
}

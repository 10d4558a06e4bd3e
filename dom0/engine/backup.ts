// backup: the standby side. It accepts one primary at a time, stages each checkpoint whole
// and commits it (memory, then device state) only at CHECKPOINT_END, then acknowledges.
// Failover happens on exactly these triggers (docs/protocol.md, "Failure"): the connection
// of a live session — HELLO accepted, a checkpoint of it committed, no GOODBYE — breaks or
// goes silent past the heartbeat timeout, or the operator says so. Then the staged
// checkpoint is discarded and the domain resumes from the last committed one. Nothing
// else fails over: a connection that never sent a valid HELLO, one that committed nothing,
// a protocol error (the connection is dropped; the primary reconnects with a full copy) or
// a session ended by GOODBYE. A new session invalidates the previous committed state until
// its first checkpoint commits: the primary ran unprotected in between. That checkpoint is
// FULL, or — when the backup kept the image of the primary's lineage (`kept`) at an epoch the
// primary can continue from — the pages written since, verified by region digests before
// it commits (docs/protocol.md "Reconnect"). A connection that arrives while a session is
// open and says HELLO with that session's lineage is the same primary reconnecting: it
// replaces the session, without a failover. Every handler of peer input runs inside one
// error boundary (guard): the process never dies of it.
import { assert } from '../assert';
import { ErrorCode, RemusError } from '../errors';
import { PageDecoder } from '../memory/page-codec';
import { BACKUP_INTAKE_BYTES_HIGH, DISK_DIFFERING_RUNS_MAX, PAGE_BYTES } from '../limits';
import type { GuestMemory } from '../memory/guest-memory';
import {
  DW_AT_ONCE,
  PROTOCOL_VERSION,
  Rec,
  ackBody,
  heartbeatBody,
  jsonBody,
  parseCheckpointBegin,
  parseCheckpointEnd,
  parseHeartbeat,
  parseJson,
  parseWithEpoch,
  protocolError,
  epochBody,
  parseDiskWrite,
  parseDiskSync,
  parseDiskSyncEnd,
  parseDiskRefs,
  parseDiskScrub,
  parseDiskVerify,
  parseMemoryVerify,
} from '../protocol/records';
import { ImageCrcs } from './image-crcs';
import type {
  Clock,
  CrcsReadAhead,
  DiskChecksum,
  DiskRange,
  Link,
  MaybePromise,
  Ownership,
  OwnershipClaimer,
  Replica,
  ScrubPick,
} from '../ports';
import { Staging } from './staging';
import { validateHello, type HelloInfo } from './hello';
import { COPY_SILENCE_MS } from './primary';

export type { HelloInfo } from './hello';

export interface BackupOptions {
  /** Largest guest this backup accepts, in pages. */
  pageCountMax: number;
  /** Most this backup buffers of unacknowledged disk writes, whatever the primary asks. */
  diskBufferBytesMax?: number;
  batchPagesMax: number;
  /** Makes (or reuses) the replica for a primary's HELLO. Throws RemusError to refuse. */
  replicaFor(hello: HelloInfo): Replica;
  /** The backup lets go of a replica it made (another domain came, or nothing of it committed). */
  releaseReplica?(replica: Replica): void;
  /** Silence before a HELLO that drops a connection (no failover: it never was a session). */
  handshakeTimeoutMs?: number;
  /** Silence tolerated from a session that has committed nothing yet (default COPY_SILENCE_MS). */
  copySilenceMs?: number;
  /**
   * Coordination: a lost live session fails over only once this claims the domain's key
   * (state 'claiming' meanwhile; the same primary reconnecting cancels the claim). Absent:
   * the two-node rule, a lost live session fails over at once.
   */
  claimer?: OwnershipClaimer;
  /** Flow control: intake (queued records + pending disk writes) past which the link is not read (tests). */
  intakeBytesHigh?: number;
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

/** 'claiming': a live session was lost, the image is kept, and the domain's key is being claimed. */
export type BackupState = 'waiting' | 'receiving' | 'claiming' | 'failed-over';

/** Before a HELLO, a connection is dropped after this much silence (no failover). */
export const HANDSHAKE_TIMEOUT_MS = 10_000;

interface Open {
  epoch: number;
  full: boolean;
  /**
   * Decoded into the image as its batches come, a pfn possibly more than once (the later wins):
   * a FULL checkpoint, or a continued session's first (its pages may come in live rounds before
   * the primary's pause). Invariant: inPlace ⇒ nothing of this session is committed (its epoch
   * is the session's first), so no image a failover resumes is written.
   */
  inPlace: boolean;
  pages: number;
  deviceState: Uint8Array | null;
  /** The primary's disk checksum at this checkpoint (DISK_VERIFY), checked at its commit. */
  diskSum: DiskChecksum | null;
  /** DISK_SCRUB: ranges' CRCs at this checkpoint, compared with our disk at its commit. */
  scrub: ScrubPick | null;
  /** Our disk's CRCs of those ranges, read as DISK_SCRUB came (used if nothing changed them by the commit). */
  scrubAhead: CrcsReadAhead | null;
  /** MEMORY_VERIFY of a continued session's first checkpoint: checked before it commits. */
  memDigests: { regionPages: number; digests: Uint32Array } | null;
}

/**
 * The connection of one would-be primary; the backup has at most one. Its loss (close or
 * silence) is a failover only when it is live: phase 'open' (its HELLO was accepted) and a
 * checkpoint of it committed (Backup.committed is reset at every HELLO). GOODBYE ends it
 * without one.
 */
interface Session {
  readonly link: Link;
  /** 'handshake': no HELLO accepted (losing it changes nothing); 'open': hello is set. */
  phase: 'handshake' | 'open';
  hello: HelloInfo | null;
  lastHeard: number;
  lastSent: number;
  timer: unknown;
  open: Open | null;
  /** A commit waits for the disk check: records are held here meanwhile (in order). */
  paused: boolean;
  queued: Array<[number, Buffer]>;
  queuedBytes: number;
  /** We stopped reading the link (limitIntake): queued records and pending disk writes past the bound. */
  readingHeld: boolean;
  /** limitIntake waits for the disk's pending writes to fall under its low-water mark (one watch). */
  intakeWatch: boolean;
  /** The kept epoch this session continues from (its HELLO_ACK said so), until it commits; else null. */
  continuing: number | null;
  /** The disk copy that opens a session (DISK_SYNC … DISK_SYNC_END): octets so far, and whether it ended. */
  diskSync: { bytes: number; done: boolean };
  /**
   * The epoch of this session's AT_ONCE disk writes (its first checkpoint's), or null before
   * one. Invariant: non-null ⇒ no checkpoint of this session committed when it was set.
   */
  atOnceEpoch: number | null;
  /**
   * This session's scrub pass: its range width, the ranges received (each once per pass), and
   * how many of them a commit compared equal; the pass verifies the disk when all have.
   */
  scrub: { rangeBytes: number; received: Set<number>; checked: number } | null;
}

/** Where a failover resumed from; info is the replica's once it runs ({ resuming: true } until then). */
interface ResumedFrom {
  epoch: number;
  info: Record<string, unknown>;
  reason: string;
  atMs: number;
}

/** The domain this backup keeps a replica of, between and across sessions. */
interface Held {
  hello: HelloInfo;
  replica: Replica;
  staging: Staging;
  /** The CRC of every page of replica.image, for MEMORY_VERIFY (image-crcs.ts). */
  crcs: ImageCrcs;
}

export class Backup {
  private session: Session | null = null;
  /** Invariant: committed !== null ⇒ held !== null, and it is a checkpoint of held's domain. */
  private held: Held | null = null;
  private committed: number | null = null;
  /**
   * The checkpoint the replica's image holds and the lineage of the primary that made it, kept
   * across sessions as the base a continued session builds on. Cleared whenever the image stops
   * being exactly that checkpoint (a FULL decodes in place, a failed commit, a continued one
   * applied but not yet verified). Invariant: committed !== null ⇒ kept.epoch === committed.
   */
  private kept: { epoch: number; lineage: string | null } | null = null;
  /** A connection that arrived while a session was open, before its HELLO (see challenge). */
  private challenger: Link | null = null;
  /** How the last session began (status): continued from a kept epoch, or full and why. */
  lastSessionStart: { kind: 'continued' | 'full'; reason: string; keptEpoch?: number } | null = null;
  state: BackupState = 'waiting';
  private readonly decoder: PageDecoder;
  readonly counters = {
    checkpoints: 0,
    pages: 0,
    wireBytes: 0,
    sessions: 0,
    protocolErrors: 0,
    refusedPeers: 0,
    internalErrors: 0,
    diskWrites: 0,
    diskBytesApplied: 0,
    diskSyncBytes: 0,
    diskDiscardedWrites: 0,
    /** Commits that waited for the disk's queued writes (off the event loop). */
    diskWriteWaits: 0,
    /** Times the backup stopped reading the link because its intake passed BACKUP_INTAKE_BYTES_HIGH. */
    intakeHolds: 0,
    diskRefPages: 0,
    diskVerifiedEpoch: 0,
    /** Scrub checks whose read, begun as DISK_SCRUB came, was still valid at the commit. */
    scrubReadsAhead: 0,
    continuedSessions: 0,
    memoryVerifiedEpoch: 0,
    memoryDiverged: 0,
    replacedSessions: 0,
  };
  /**
   * Where our disk is known to differ from the primary's, for the next session: nothing known
   * (null), everywhere (a disk reference that did not match, or a check whose tables could not
   * be compared: the whole disk is copied), or the ranges a disk check found different (copied
   * with the resync bitmap's blocks). Kept until a session commits: its HELLO_ACK reached the primary.
   */
  private diskDiffers: readonly DiskRange[] | 'whole' | null = null;
  /** Released replicas whose disk still has a write under way: sessions' records wait meanwhile. */
  private releasing = 0;
  resumedFrom: ResumedFrom | null = null;
  /**
   * A takeover waiting for the domain's key (coordination): why the session was lost, and how
   * to cancel the claim. Invariant: non-null ⇒ a checkpoint is committed; state 'claiming' ⇔
   * non-null with no session (a connection may arrive meanwhile: only the lost primary's
   * lineage is accepted, and its HELLO cancels the claim).
   */
  private claiming: { why: string; cancel: () => void } | null = null;
  /** The domain's key, once a claim won (the resumed domain's outputs are gated by it). */
  owned: Ownership | null = null;

  constructor(
    private readonly clock: Clock,
    private readonly opts: BackupOptions,
    private readonly hooks: BackupHooks = {},
  ) {
    this.decoder = new PageDecoder('native', opts.batchPagesMax);
  }

  get committedEpoch(): number | null {
    return this.committed;
  }
  get attached(): boolean {
    return this.session !== null;
  }
  get domain(): string | null {
    return this.held?.hello.domain ?? null;
  }
  get replicaImage(): GuestMemory | null {
    return this.held?.replica.image ?? null;
  }
  /** A session whose loss means the primary is gone: open, and a checkpoint of it committed. */
  get live(): boolean {
    return this.session?.phase === 'open' && this.committed !== null;
  }

  /** A primary connected (already authenticated). Only one at a time. */
  attach(link: Link): void {
    if (this.state === 'failed-over') {
      // A primary that comes back after we resumed must stop its copy (fencing).
      this.quietly(() => link.send(Rec.TAKEOVER, epochBody(this.resumedFrom!.epoch)));
      link.close();
      return;
    }
    if (this.session?.phase === 'handshake') {
      // It sent no valid HELLO (a scan, an idle socket): the newer connection replaces it,
      // so that no idle peer keeps a genuine primary out for the handshake timeout.
      this.peerLeft(this.session, 'replaced by a newer connection before its HELLO');
    }
    if (this.session) {
      this.challenge(link);
      return;
    }
    const now = this.clock.now();
    const s: Session = {
      link,
      phase: 'handshake',
      hello: null,
      lastHeard: now,
      lastSent: now,
      timer: null,
      open: null,
      paused: false,
      queued: [],
      queuedBytes: 0,
      readingHeld: false,
      intakeWatch: false,
      continuing: null,
      diskSync: { bytes: 0, done: true },
      atOnceEpoch: null,
      scrub: null,
    };
    this.session = s;
    this.state = 'receiving';
    link.onRecord((type, body) => {
      if (!s.paused && this.releasing === 0) {
        this.guard(s, () => this.onRecord(s, type, body));
        this.limitIntake(s);
        return;
      }
      s.lastHeard = this.clock.now();
      s.queuedBytes += body.length;
      s.queued.push([type, body]);
      if (s.queuedBytes > QUEUED_BYTES_MAX)
        this.guard(s, () => {
          throw protocolError(`more than ${QUEUED_BYTES_MAX} octets arrived while a commit or a disk waited`);
        });
      this.limitIntake(s);
    });
    link.onClose((err) => this.guard(s, () => this.onLinkClosed(s, err)));
    this.arm(s);
    this.checkInvariants();
  }

  /**
   * A connection while a session is open: the same primary reconnecting after the old
   * connection broke on its side only (a reset, a silence it noticed first), or anyone else.
   * Its HELLO decides: with the open session's lineage it replaces that session — no failover,
   * the primary is here — and the new session may continue the image; anything else is refused
   * as ever ("already serves a primary"). One at a time: a newer one replaces an older one.
   */
  private challenge(link: Link): void {
    const older = this.challenger;
    this.challenger = link;
    older?.close();
    const timer = this.clock.setTimer(this.opts.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS, () => {
      if (this.challenger === link) this.refuseChallenger(link, 'no HELLO in time');
    });
    link.onRecord((type, body) => {
      this.clock.clearTimer(timer);
      this.onChallenger(link, type, body);
    });
    link.onClose(() => {
      this.clock.clearTimer(timer);
      if (this.challenger === link) this.challenger = null;
    });
  }

  private onChallenger(link: Link, type: number, body: Buffer): void {
    if (this.challenger !== link) return; // refused already: what follows is ignored
    this.challenger = null;
    const s = this.session;
    const lineage = s?.phase === 'open' ? s.hello!.lineage : null;
    if (lineage === null || type !== Rec.HELLO || this.helloLineage(body, s!.hello!) !== lineage) {
      return this.refuseChallenger(link, 'this backup already serves a primary');
    }
    this.counters.replacedSessions++;
    this.hooks.event?.('session-replaced', { domain: s!.hello!.domain, committed: this.committed });
    this.endSession(s!); // not a failover: the primary of that session is on the new connection
    s!.link.close();
    this.state = 'waiting';
    this.attach(link);
    const n = this.session!;
    this.guard(n, () => this.onRecord(n, type, body));
    this.checkInvariants();
  }

  /** The lineage of a valid HELLO for the same domain and size as open; null for anything else. */
  private helloLineage(body: Buffer, open: HelloInfo): string | null {
    try {
      const { version, value } = parseJson(Rec.HELLO, body, true);
      const h = version === PROTOCOL_VERSION ? validateHello(value, this.opts.pageCountMax) : null;
      return h && h.domain === open.domain && h.pageCount === open.pageCount && h.kind === open.kind ? h.lineage : null;
    } catch {
      return null;
    }
  }

  private refuseChallenger(link: Link, why: string): void {
    if (this.challenger === link) this.challenger = null;
    this.counters.refusedPeers++;
    this.quietly(() => link.send(Rec.ERROR, jsonBody({ code: ErrorCode.HANDSHAKE, message: why })));
    link.close();
  }

  /**
   * Resume now from the last committed checkpoint: the primary of a live session is gone,
   * or the operator said so (`remusdb failover`). Never throws: a resume that fails is
   * reported ('resume-failed') and the backup waits for a primary again.
   */
  failover(reason = 'manual failover'): { epoch: number; info: Record<string, unknown> } | null {
    if (this.state === 'failed-over') return this.resumedFrom;
    this.cancelClaim(`failover: ${reason}`); // the operator's (a won claim has ended already)
    const s = this.session;
    if (s) this.endSession(s);
    const held = this.held;
    const lostDiskRanges = held?.replica.disk?.discard() ?? [];
    this.counters.diskDiscardedWrites += lostDiskRanges.length;
    if (this.committed === null || !held) {
      this.state = 'waiting';
      this.hooks.event?.('no-checkpoint', { reason });
      s?.link.close();
      this.checkInvariants();
      return null;
    }
    let resumed: ReturnType<Replica['resume']>;
    try {
      held.replica.disk?.flush(); // writes the guest saw durable are durable here before it resumes
      resumed = held.replica.resume({ lostDiskRanges });
    } catch (e) {
      return this.resumeFailed(reason, s, e);
    }
    const info = resumed instanceof Promise ? { resuming: true } : resumed;
    this.state = 'failed-over';
    const from = (this.resumedFrom = { epoch: this.committed, info, reason, atMs: this.clock.now() });
    if (resumed instanceof Promise) {
      resumed.then(
        (i) => {
          from.info = i;
          this.hooks.event?.('resumed', { epoch: from.epoch, ...i });
        },
        (e: Error) => this.hooks.event?.('resume-failed', { epoch: from.epoch, message: e.message }),
      );
    }
    if (s) {
      this.quietly(() => s.link.send(Rec.TAKEOVER, epochBody(from.epoch)));
      s.link.close();
    }
    this.hooks.event?.('failover', { epoch: from.epoch, reason, ...info });
    this.checkInvariants();
    return this.resumedFrom;
  }

  /** The replica did not start: nothing runs here, so nothing is fenced; a primary may come again. */
  private resumeFailed(reason: string, s: Session | null, e: unknown): null {
    const message = (e as Error)?.message ?? String(e);
    this.hooks.event?.('resume-failed', { epoch: this.committed, reason, message });
    this.state = 'waiting';
    this.committed = null;
    this.release(); // and what it kept
    s?.link.close();
    this.checkInvariants();
    return null;
  }

  /** Stops waiting (shutdown). Idempotent. */
  close(): void {
    this.cancelClaim('shutdown');
    const s = this.session;
    if (!s) return;
    this.endSession(s);
    this.state = 'waiting';
    s.link.close();
    this.checkInvariants();
  }

  // ---- records -------------------------------------------------------------------------

  private onRecord(s: Session, type: number, body: Buffer): void {
    const now = (s.lastHeard = this.clock.now());
    // A stream of records can starve our timers (a large copy): the heartbeat goes out from here too.
    if (s.phase === 'open' && now - s.lastSent >= this.heartbeatEveryMs(s))
      this.send(s, Rec.HEARTBEAT, heartbeatBody(this.committed ?? 0, now));
    this.hooks.phase?.('record', s.open?.epoch ?? -1);
    if (s.phase === 'handshake' && type !== Rec.HELLO && type !== Rec.ERROR) {
      throw protocolError(`record type ${type} before HELLO`);
    }
    switch (type) {
      case Rec.HELLO:
        return this.onHello(s, body);
      case Rec.CHECKPOINT_BEGIN:
        return this.onBegin(s, body);
      case Rec.PAGE_BATCH:
        return this.onBatch(s, body);
      case Rec.DEVICE_STATE:
        return this.onDeviceState(s, body);
      case Rec.CHECKPOINT_END:
        return this.onEnd(s, body);
      case Rec.DISK_WRITE:
        return this.onDiskWrite(s, body);
      case Rec.DISK_SYNC:
        return this.onDiskSync(s, body);
      case Rec.DISK_SYNC_END:
        return this.onDiskSyncEnd(s, body);
      case Rec.DISK_REFS:
        return this.onDiskRefs(s, body);
      case Rec.DISK_VERIFY:
        return this.onDiskVerify(s, body);
      case Rec.DISK_SCRUB:
        return this.onDiskScrub(s, body);
      case Rec.NET_EXPOSURE:
        return this.onNetExposure(body);
      case Rec.OWNERSHIP:
        return this.onOwnership(s, body);
      case Rec.MEMORY_VERIFY:
        return this.onMemoryVerify(s, body);
      case Rec.HEARTBEAT:
        parseHeartbeat(body);
        return;
      case Rec.GOODBYE:
        return this.onGoodbye(s);
      case Rec.ERROR: {
        const { value } = parseJson(type, body, false);
        throw protocolError(
          `primary reported ${String(value.code).slice(0, 64)}: ${String(value.message).slice(0, 512)}`,
        );
      }
      default:
        throw protocolError(`unexpected record type ${type} at the backup`);
    }
  }

  private onHello(s: Session, body: Buffer): void {
    if (s.phase !== 'handshake') throw protocolError('HELLO twice in one session');
    const { version, value } = parseJson(Rec.HELLO, body, true);
    if (version !== PROTOCOL_VERSION)
      throw new RemusError(ErrorCode.HANDSHAKE, `protocol version ${version} is not ${PROTOCOL_VERSION}`);
    const h = validateHello(value, this.opts.pageCountMax);
    if (this.claiming) {
      // Taking over: only the lost primary may come back (it lives, so no takeover).
      if (h.lineage === null || h.lineage !== this.kept?.lineage) {
        throw new RemusError(ErrorCode.HANDSHAKE, `this backup is taking over ${this.held!.hello.domain}`);
      }
      this.cancelClaim('the primary reconnected');
    }
    // A backup serving nobody accepts any valid primary: another domain replaces what it held.
    if (this.held && (this.held.hello.domain !== h.domain || this.held.hello.pageCount !== h.pageCount)) {
      this.hooks.event?.('replica-replaced', { from: this.held.hello.domain, to: h.domain, epoch: this.committed });
      this.committed = null;
      this.release();
    }
    // The disk continues an earlier session only when this process kept it (same replica).
    const kept = this.held !== null;
    const held = this.held ?? this.hold(h);
    const diskContinues =
      h.diskBytes > 0 && this.diskDiffers !== 'whole' && (kept || held.replica.diskContinues === true);
    const differs = this.diskDiffers;
    const diskDiffers = diskContinues && differs !== null && differs !== 'whole' ? differs : [];
    const diskBytes = held.replica.disk?.sizeBytes ?? 0;
    if (h.diskBytes !== diskBytes) {
      if (!kept) this.release();
      throw new RemusError(
        ErrorCode.HANDSHAKE,
        h.diskBytes === 0
          ? `this backup keeps a ${diskBytes}-byte disk but ${h.domain} has none`
          : `${h.domain} has a ${h.diskBytes}-byte disk but this backup's is ${
              diskBytes ? `${diskBytes} bytes` : 'absent (give the backup --disk)'
            }`,
      );
    }
    const cont = this.continuation(h);
    held.hello = h;
    const bufferMax = Math.min(h.diskBufferBytesMax, this.opts.diskBufferBytesMax ?? h.diskBufferBytesMax);
    // Writes held for a session that never committed them go: the primary resyncs those blocks.
    held.replica.disk?.holdFrom(bufferMax);
    s.diskSync = { bytes: 0, done: h.diskBytes === 0 };
    s.atOnceEpoch = null;
    // The primary ran unprotected: nothing is resumable until this session's first checkpoint
    // commits. A continued session keeps the image as its base; a full one overwrites it.
    this.committed = null;
    if (cont.epoch === null) this.kept = null;
    s.phase = 'open';
    s.hello = h;
    s.open = null;
    s.continuing = cont.epoch;
    this.counters.sessions++;
    if (cont.epoch !== null) this.counters.continuedSessions++;
    this.lastSessionStart =
      cont.epoch !== null
        ? { kind: 'continued', reason: cont.reason, keptEpoch: cont.epoch }
        : { kind: 'full', reason: cont.reason };
    this.send(
      s,
      Rec.HELLO_ACK,
      jsonBody({
        accepted: true,
        backup: 'remusdb',
        diskContinues,
        ...(diskDiffers.length > 0 ? { diskDiffers: diskDiffers.map((r) => [r.offsetBytes, r.lengthBytes]) } : {}),
        continues: cont.epoch !== null,
        reason: cont.reason,
        ...(cont.epoch !== null ? { epoch: cont.epoch } : {}),
      }),
    );
    this.arm(s);
    this.hooks.event?.('session', {
      domain: h.domain,
      pages: h.pageCount,
      session: h.sessionId,
      ...this.lastSessionStart,
    });
    this.checkInvariants();
  }

  /**
   * Whether this HELLO continues the kept image: same lineage, kept at an epoch between the
   * primary's last acknowledged one and its last one (the primary resends every page written
   * since the acknowledged one, which covers the later ones too). The reason either way.
   */
  private continuation(h: HelloInfo): { epoch: number | null; reason: string } {
    const k = this.kept,
      c = h.continueFrom;
    const full = (reason: string): { epoch: null; reason: string } => ({ epoch: null, reason });
    if (!c) return full(h.lineage ? 'the primary has no acknowledged checkpoint' : 'the primary never continues');
    if (!k) return full(`this backup keeps no checkpoint of ${h.domain} to continue`);
    if (k.lineage !== h.lineage) return full(`this backup's checkpoint ${k.epoch} of ${h.domain} is another primary's`);
    if (k.epoch < c.ackedEpoch || k.epoch > c.lastEpoch) {
      return full(`this backup keeps checkpoint ${k.epoch}, not one in ${c.ackedEpoch}..${c.lastEpoch}`);
    }
    return {
      epoch: k.epoch,
      reason: `continues checkpoint ${k.epoch} (the primary's last acknowledged is ${c.ackedEpoch})`,
    };
  }

  /** Makes the replica for a HELLO (the service may refuse: RemusError). */
  private hold(h: HelloInfo): Held {
    const replica = this.opts.replicaFor(h);
    const staging = new Staging(h.pageCount, this.decoder, this.opts.batchPagesMax);
    this.held = { hello: h, replica, staging, crcs: new ImageCrcs(h.pageCount) };
    return this.held;
  }

  /** Lets go of the replica (nothing committed refers to it any more). */
  private release(): void {
    const held = this.held;
    this.kept = null;
    if (!held) return;
    this.held = null;
    const disk = held.replica.disk;
    disk?.discard();
    const letGo = (): void => this.quietly(() => this.opts.releaseReplica?.(held.replica));
    if (!disk || disk.pendingBytes === 0) return letGo();
    // A write under way would land after the next replica's (the same image, or a closed fd's
    // number reused): the next session's records wait for it (releasing > 0).
    this.releasing++;
    disk.abandonWrites(() => {
      this.releasing--;
      letGo();
      const s = this.session;
      if (s) this.guard(s, () => this.drainQueued(s));
    });
  }

  private needSession(s: Session): Held {
    if (s.phase !== 'open' || !this.held) throw protocolError('checkpoint record before HELLO');
    return this.held;
  }

  private onBegin(s: Session, body: Buffer): void {
    this.needSession(s);
    const { epoch, full } = parseCheckpointBegin(body);
    if (s.open) throw protocolError(`CHECKPOINT_BEGIN ${epoch} while ${s.open.epoch} is open`);
    const first = this.committed === null,
      from = s.continuing;
    if (!full && first && from === null) {
      throw protocolError('the first checkpoint of a session must be FULL (its HELLO_ACK did not continue)');
    }
    // A FULL checkpoint decodes in place: after a commit it would overwrite what failover resumes.
    if (full && !first) throw protocolError(`FULL checkpoint ${epoch} after checkpoint ${this.committed} committed`);
    if (!full && !first && epoch !== this.committed! + 1)
      throw protocolError(`checkpoint ${epoch} does not follow ${this.committed}`);
    if (!full && first && epoch <= from!) {
      throw protocolError(`continued checkpoint ${epoch} does not follow the kept checkpoint ${from}`);
    }
    if (!s.diskSync.done) throw protocolError(`checkpoint ${epoch} began before the disk copy ended (DISK_SYNC_END)`);
    if (first && s.atOnceEpoch !== null && epoch !== s.atOnceEpoch)
      throw protocolError(`the first checkpoint ${epoch} is not the epoch ${s.atOnceEpoch} of its AT_ONCE writes`);
    if (full) {
      this.kept = null;
      s.continuing = null;
      this.held!.crcs.beginFull();
    } // the image is overwritten in place from here
    s.open = {
      epoch,
      full,
      inPlace: first,
      pages: 0,
      deviceState: null,
      diskSum: null,
      scrub: null,
      scrubAhead: null,
      memDigests: null,
    };
  }

  private openFor(s: Session, type: number, epoch: number): Open {
    if (!s.open) throw protocolError(`record type ${type} outside a checkpoint`);
    if (epoch !== s.open.epoch) throw protocolError(`record for epoch ${epoch} inside checkpoint ${s.open.epoch}`);
    return s.open;
  }

  private onBatch(s: Session, body: Buffer): void {
    const held = this.needSession(s);
    const { epoch, payload } = parseWithEpoch(Rec.PAGE_BATCH, body);
    const o = this.openFor(s, Rec.PAGE_BATCH, epoch);
    this.counters.wireBytes += body.length + 16;
    if (!o.inPlace) {
      o.pages += held.staging.add(payload, held.replica.image);
      return;
    }
    // Nothing committed in this session is at stake: decode in place (a pfn may come again).
    const records = this.decoder.unpack(payload);
    const pfns = held.staging.markRecords(records);
    if (!o.full) held.replica.beforeImageWrite?.(pfns);
    o.pages += this.decoder.applyInPlace(records, held.replica.image);
    held.crcs.readPages(held.replica.image, pfns); // as they land: no pass over the image later
  }

  private onNetExposure(body: Buffer): void {
    const { epoch, payload } = parseWithEpoch(Rec.NET_EXPOSURE, body);
    const { value } = parseJson(Rec.NET_EXPOSURE, payload, false);
    const bad = this.hooks.netExposure ? this.hooks.netExposure(epoch, value) : null;
    if (bad) throw protocolError(`NET_EXPOSURE of checkpoint ${epoch}: ${bad}`);
  }

  private onDeviceState(s: Session, body: Buffer): void {
    const { epoch, payload } = parseWithEpoch(Rec.DEVICE_STATE, body);
    const o = this.openFor(s, Rec.DEVICE_STATE, epoch);
    if (o.deviceState) throw protocolError('two DEVICE_STATE records in one checkpoint');
    if (payload.length > s.hello!.deviceStateMax)
      throw protocolError(`device state of ${payload.length} octets exceeds ${s.hello!.deviceStateMax}`);
    o.deviceState = Uint8Array.from(payload);
  }

  private onEnd(s: Session, body: Buffer): void {
    const held = this.needSession(s);
    const { epoch, pages } = parseCheckpointEnd(body);
    const o = this.openFor(s, Rec.CHECKPOINT_END, epoch);
    if (pages !== o.pages) throw protocolError(`checkpoint ${epoch} announced ${pages} pages but carried ${o.pages}`);
    if (!o.deviceState) throw protocolError(`checkpoint ${epoch} has no DEVICE_STATE`);
    const distinct = held.staging.distinctPages;
    if (o.full && distinct !== held.hello.pageCount)
      throw protocolError(`FULL checkpoint ${epoch} carried ${distinct} of ${held.hello.pageCount} pages`);
    if (!o.full && this.committed === null && !o.memDigests) {
      throw protocolError(`continued checkpoint ${epoch} carries no MEMORY_VERIFY`);
    }
    this.hooks.phase?.('pre-commit', epoch);
    // The resync's writes (a session's first checkpoint) are on the disk first; then the rest of
    // the commit runs in one turn, so no failover can find it half done.
    this.afterDiskWrites(s, o, () => {
      // Disk first: if it fails nothing of this checkpoint reached memory; either way the
      // replica no longer equals a checkpoint, so nothing is committed until a new FULL one.
      this.committing(held, () => {
        const disk = held.replica.disk?.commit(epoch);
        if (disk) {
          this.counters.diskWrites += disk.writes;
          this.counters.diskBytesApplied += disk.bytes;
        }
      });
      if (o.diskSum === null && o.scrub === null) return this.finishCommit(s, o);
      this.checkDiskThenFinish(s, o, epoch);
    });
  }

  /**
   * then() once the disk has every write queued so far (the resync's and those applied before
   * the first commit; blktap/disk-io-queue.ts: a file is written on libuv's pool) — at once
   * when nothing is pending; else the session's records wait in order meanwhile, and the loop
   * stays free for heartbeats. A write that failed fails this commit.
   */
  private afterDiskWrites(s: Session, o: Open, then: () => void): void {
    const held = this.held!;
    s.paused = true; // before: a broken queue answers at once
    const waits = held.replica.disk?.afterWrites((e) => {
      s.paused = false;
      if (this.session !== s || s.open !== o) return;
      this.guard(s, () => {
        this.committing(held, () => {
          if (e) throw e;
        });
        then();
      });
      this.drainQueued(s);
    });
    if (waits) return void this.counters.diskWriteWaits++;
    s.paused = false;
    then();
  }

  /**
   * The disk checks of this checkpoint (DISK_VERIFY's whole disk, DISK_SCRUB's ranges), then
   * the rest of its commit. They read off the event loop (a file); the records that arrive
   * meanwhile wait their turn (held, in order).
   */
  private checkDiskThenFinish(s: Session, o: Open, epoch: number): void {
    const held = this.held!;
    s.paused = true;
    const checked = (e: Error | null): void => {
      s.paused = false;
      if (this.session !== s || s.open !== o) return;
      this.guard(s, () => {
        this.committing(held, () => {
          if (e) throw e;
        });
        this.finishCommit(s, o);
      });
      this.drainQueued(s);
    };
    // A disk in memory (the simulator's) answers in this turn: its clock runs no promise continuations.
    let check: MaybePromise<void>;
    try {
      check = this.checkDisk(s, held, o, epoch);
    } catch (e) {
      return checked(e as Error);
    }
    if (!(check instanceof Promise)) checked(null);
    else
      check.then(
        () => checked(null),
        (e: Error) => checked(e),
      );
  }

  /** The whole-disk CRC against DISK_VERIFY's (replica-range-crcs.ts: what changed is read), then the scrub's. */
  private checkDisk(s: Session, held: Held, o: Open, epoch: number): MaybePromise<void> {
    const disk = held.replica.disk!;
    const expected = o.diskSum;
    const then = (ours: number | null): MaybePromise<void> => {
      if (expected && ours !== null) {
        if (ours !== expected.crc32c) this.diskDiverged(held, epoch, ours, expected);
        this.counters.diskVerifiedEpoch = epoch;
        this.hooks.event?.('disk-verified', { epoch, crc32c: ours });
      }
      const scrub = o.scrub;
      if (!scrub) return;
      const ahead = o.scrubAhead?.stillValid() ? o.scrubAhead : null;
      this.counters.scrubReadsAhead += ahead ? 1 : 0;
      const crcs = ahead ? ahead.crcs : disk.readCrcs(scrub.ranges);
      if (crcs instanceof Promise) return crcs.then((c) => this.scrubChecked(s, held, epoch, scrub, c));
      this.scrubChecked(s, held, epoch, scrub, crcs);
    };
    if (!expected) return then(null);
    const sum = disk.checksum();
    return sum instanceof Promise ? sum.then(then) : then(sum);
  }

  /**
   * The scrub's ranges as our disk holds them at this commit: a range that differs is named
   * for the next session (diskDiffers) and fails the commit; the pass's last verifies the disk.
   */
  private scrubChecked(s: Session, held: Held, epoch: number, scrub: ScrubPick, ours: number[]): void {
    assert(ours.length === scrub.ranges.length && s.scrub !== null, 'a CRC per scrubbed range, in a pass');
    const differ = scrub.ranges.filter((r, i) => ours[i] !== r.crc32c);
    if (differ.length > 0) {
      this.diskDiffers = differ.map((r) => ({ offsetBytes: r.offsetBytes, lengthBytes: r.lengthBytes }));
      const bytes = differ.reduce((n, r) => n + r.lengthBytes, 0);
      this.hooks.event?.('disk-diverged', { epoch, runs: differ.length, bytes, scrub: true });
      throw new RemusError(
        ErrorCode.DISK_DIVERGED,
        `at checkpoint ${epoch} the scrub found ${differ.length} range(s) of the backup's disk different from ` +
          `the primary's (first at ${differ[0].offsetBytes}): the next session copies them`,
      );
    }
    const pass = s.scrub;
    pass.checked += scrub.ranges.length;
    if (!scrub.passEnd) return;
    const ranges = Math.ceil(held.hello.diskBytes / pass.rangeBytes);
    if (pass.checked !== ranges) throw protocolError(`a scrub pass ended with ${pass.checked} of ${ranges} ranges`);
    s.scrub = null;
    this.counters.diskVerifiedEpoch = epoch;
    this.hooks.event?.('disk-verified', { epoch, scrub: true });
  }

  /**
   * Memory (staged pages, then disk references), device state; then the ACK. A continued
   * session's first checkpoint is checked between memory and device state: its region digests
   * must equal the primary's (MEMORY_VERIFY), computed from the table of page CRCs the commits
   * and in-place decodes keep (image-crcs.ts: whole, since the session continues a committed
   * image); a mismatch drops the session and the image.
   */
  private finishCommit(s: Session, o: Open): void {
    const held = this.held!;
    this.committing(held, () => this.applyMemory(held, o));
    const want = o.memDigests;
    if (want) {
      this.kept = null; // the image is neither the kept checkpoint nor, until verified, this one
      this.verifyMemory(held, o, want);
    }
    this.completeCommit(s, o);
  }

  /** A continued checkpoint's region digests against ours (its table is whole: it continues a commit). */
  private verifyMemory(held: Held, o: Open, want: NonNullable<Open['memDigests']>): void {
    const r = held.crcs.digests(want.regionPages);
    const bad = r.findIndex((d, i) => d !== want.digests[i]);
    if (bad >= 0) {
      this.counters.memoryDiverged++;
      const last = Math.min(held.hello.pageCount, (bad + 1) * want.regionPages) - 1;
      throw new RemusError(
        ErrorCode.MEMORY_DIVERGED,
        `after continued checkpoint ${o.epoch} the backup's memory ` +
          `region ${bad} (pages ${bad * want.regionPages}..${last}) has digest ${r[bad].toString(16)}, ` +
          `the primary's ${want.digests[bad].toString(16)}: the images differ (the next session copies all memory)`,
      );
    }
    this.counters.memoryVerifiedEpoch = o.epoch;
    this.hooks.event?.('memory-verified', { epoch: o.epoch, regions: r.length });
  }

  /** The checkpoint's pages into the image (a full one's are there already: decoded in place). */
  private applyMemory(held: Held, o: Open): void {
    const staging = held.staging,
      image = held.replica.image;
    const refs = staging.refs;
    const refPages = refs.length ? staging.resolveRefs(held.replica.disk!) : null;
    if (!o.inPlace) {
      held.replica.beforeImageWrite?.(staging.pfns);
      staging.applyTo(image, held.crcs);
    }
    if (refPages) {
      refs.forEach((r, i) => image.setPage(r.pfn, refPages.subarray(i * PAGE_BYTES, (i + 1) * PAGE_BYTES)));
      held.crcs.update(
        refs.map((r) => r.pfn),
        refs.length,
        refPages,
      );
      this.counters.diskRefPages += refs.length;
    }
    if (o.inPlace) staging.clear();
  }

  private completeCommit(s: Session, o: Open): void {
    const held = this.held!;
    const epoch = o.epoch;
    this.committing(held, () => held.replica.commitDeviceState(o.deviceState!));
    this.checkCommitFollows(s, epoch);
    if (o.full) held.crcs.fullCommitted(); // every page was read back as it landed
    this.committed = epoch;
    this.kept = { epoch, lineage: s.hello!.lineage };
    this.diskDiffers = null; // this session's HELLO_ACK named them, and its copy covered them
    s.continuing = null;
    s.open = null;
    this.counters.checkpoints++;
    this.counters.pages += o.pages;
    this.checkInvariants();
    this.hooks.commit?.(epoch, held.replica);
    this.hooks.phase?.('post-commit', epoch);
    this.send(s, Rec.ACK, ackBody(epoch));
    this.hooks.phase?.('post-ack', epoch);
  }

  /**
   * The disk check failed: find the ranges that differ (our table is complete right after the
   * checksum) for the next session to copy, or the whole disk when the tables cannot be
   * compared or differ in too many places; then fail the commit.
   */
  private diskDiverged(held: Held, epoch: number, ours: number, theirs: DiskChecksum): never {
    const runs = held.replica.disk!.differingRanges(theirs);
    const copy = runs === null || runs.length > DISK_DIFFERING_RUNS_MAX ? 'whole' : runs;
    this.diskDiffers = copy;
    const bytes = copy === 'whole' ? held.hello.diskBytes : copy.reduce((n, r) => n + r.lengthBytes, 0);
    this.hooks.event?.('disk-diverged', { epoch, runs: runs?.length ?? null, bytes });
    throw new RemusError(
      ErrorCode.DISK_DIVERGED,
      `at checkpoint ${epoch} the backup's disk has CRC32C ${ours.toString(16)}, the primary's ` +
        `${theirs.crc32c.toString(16)}: the disks differ (the next session copies ${
          copy === 'whole' ? 'the disk whole' : `the ${copy.length} runs of ${bytes} octets that differ`
        })`,
    );
  }

  /** A step of a commit: if it fails, the replica is no checkpoint any more. */
  private committing(held: Held, f: () => void): void {
    try {
      f();
    } catch (e) {
      this.committed = null;
      this.kept = null;
      held.staging.clear();
      // A disk reference that did not match means our disk diverged: the next session copies it
      // whole; a failed disk check said where (diskDiverged), or could not.
      if (e instanceof RemusError && e.code === ErrorCode.DISK_REF_MISMATCH) this.diskDiffers = 'whole';
      if (e instanceof RemusError && e.code === ErrorCode.DISK_DIVERGED) this.diskDiffers ??= 'whole';
      throw e;
    }
  }

  /** Records that arrived while a commit waited for the disk check, in order. */
  private drainQueued(s: Session): void {
    while (s.queued.length > 0 && !s.paused && this.releasing === 0 && this.session === s) {
      const [type, body] = s.queued.shift()!;
      s.queuedBytes -= body.length;
      this.guard(s, () => this.onRecord(s, type, body));
    }
    this.limitIntake(s);
  }

  /**
   * Flow control: past BACKUP_INTAKE_BYTES_HIGH of records queued behind a commit plus disk
   * writes not on the disk yet, stop reading the link (TCP pushes back; the primary paces its
   * copies by its send backlog) until both are under half of it. Our own backlog is no
   * silence of the primary's: lastHeard does not age while reading is held.
   */
  private limitIntake(s: Session): void {
    if (this.session !== s) return;
    const disk = this.held?.replica.disk;
    const intake = s.queuedBytes + (disk?.pendingBytes ?? 0),
      high = this.opts.intakeBytesHigh ?? BACKUP_INTAKE_BYTES_HIGH;
    if (!s.readingHeld && intake > high) {
      s.readingHeld = true;
      s.link.holdReading?.(true);
      this.counters.intakeHolds++;
    } else if (s.readingHeld && intake <= high / 2) {
      s.readingHeld = false;
      s.lastHeard = this.clock.now();
      s.link.holdReading?.(false);
      return;
    }
    // Look again once the disk is under the low-water mark (records queued behind a commit: at its drain).
    if (!s.readingHeld || !disk || s.intakeWatch) return;
    const low = Math.max(0, high / 2 - s.queuedBytes);
    s.intakeWatch = disk.whenPendingAtMost(low, () => {
      s.intakeWatch = false;
      this.limitIntake(s);
    });
  }

  /** Pages sent as disk blocks: staged, resolved from our disk at commit (after its writes). */
  private onDiskRefs(s: Session, body: Buffer): void {
    const held = this.needSession(s);
    const h = held.hello;
    if (h.diskBytes === 0) throw protocolError('DISK_REFS for a domain without a disk');
    const { epoch, refs } = parseDiskRefs(body, h.pageCount, h.diskBytes);
    const o = this.openFor(s, Rec.DISK_REFS, epoch);
    this.counters.wireBytes += body.length + 16;
    o.pages += held.staging.addRefs(refs, o.inPlace);
  }

  /** A continued session's first checkpoint: the primary's region digests of memory at it. */
  private onMemoryVerify(s: Session, body: Buffer): void {
    const held = this.needSession(s);
    const v = parseMemoryVerify(body, held.hello.pageCount);
    const o = this.openFor(s, Rec.MEMORY_VERIFY, v.epoch);
    if (o.full || this.committed !== null || s.continuing === null || o.memDigests) {
      throw protocolError(
        `MEMORY_VERIFY for checkpoint ${v.epoch} outside a continued session's first checkpoint, ` + 'or twice',
      );
    }
    o.memDigests = { regionPages: v.regionPages, digests: v.digests };
  }

  /** The primary's disk checksum at this checkpoint: checked at its commit, before the ACK. */
  private onDiskVerify(s: Session, body: Buffer): void {
    const h = this.needSession(s).hello;
    if (h.diskBytes === 0) throw protocolError('DISK_VERIFY for a domain without a disk');
    const { epoch, ...sum } = parseDiskVerify(body, h.diskBytes);
    const o = this.openFor(s, Rec.DISK_VERIFY, epoch);
    if (o.diskSum !== null) throw protocolError(`DISK_VERIFY for checkpoint ${epoch} twice`);
    o.diskSum = sum;
  }

  /** A scrub's ranges at this checkpoint: checked at its commit, each range once per pass, of one width. */
  private onDiskScrub(s: Session, body: Buffer): void {
    const h = this.needSession(s).hello;
    if (h.diskBytes === 0) throw protocolError('DISK_SCRUB for a domain without a disk');
    const { epoch, ...pick } = parseDiskScrub(body, h.diskBytes);
    const o = this.openFor(s, Rec.DISK_SCRUB, epoch);
    if (o.scrub !== null) throw protocolError(`DISK_SCRUB for checkpoint ${epoch} twice`);
    const pass = (s.scrub ??= { rangeBytes: pick.rangeBytes, received: new Set(), checked: 0 });
    if (pick.rangeBytes !== pass.rangeBytes)
      throw protocolError(`DISK_SCRUB ranges of ${pick.rangeBytes} octets in a pass of ${pass.rangeBytes}`);
    for (const r of pick.ranges) {
      if (pass.received.has(r.offsetBytes)) throw protocolError(`DISK_SCRUB range at ${r.offsetBytes} twice in a pass`);
      pass.received.add(r.offsetBytes);
    }
    o.scrub = pick;
    o.scrubAhead = this.held!.replica.disk!.readCrcsAhead?.(pick.ranges) ?? null;
  }

  /**
   * Held until its checkpoint commits, unless the primary flags it AT_ONCE: a write of the
   * session's first checkpoint, before that commits. Nothing committed is at stake then (a
   * session resumes nothing before its first commit), and a disk copy, a pre-copy or a
   * continued session's preparation can last long enough to fill any buffer: those writes are
   * applied as they arrive, in link order with the disk copy, and the first commit has no backlog.
   */
  private onDiskWrite(s: Session, body: Buffer): void {
    const held = this.needSession(s),
      h = held.hello;
    if (h.diskBytes === 0) throw protocolError('DISK_WRITE for a domain without a disk');
    const w = parseDiskWrite(body, h.diskBytes);
    const disk = held.replica.disk!;
    if ((w.flags & DW_AT_ONCE) === 0) {
      if (!s.diskSync.done) throw protocolError(`DISK_WRITE for epoch ${w.epoch} during the disk copy is not AT_ONCE`);
      if (this.committed === null && s.atOnceEpoch !== null && w.epoch <= s.atOnceEpoch)
        throw protocolError(`DISK_WRITE for epoch ${w.epoch} is held, but that epoch's writes went at once`);
      return disk.hold(w, this.committed);
    }
    this.checkAtOnce(s, w.epoch);
    s.atOnceEpoch = w.epoch;
    disk.apply(w); // after any held before it, in order
    this.counters.diskWrites++;
    this.counters.diskBytesApplied += w.lengthBytes;
  }

  /** An AT_ONCE write is of the session's first checkpoint (one epoch), before any commit. */
  private checkAtOnce(s: Session, epoch: number): void {
    if (this.committed !== null)
      throw protocolError(`AT_ONCE DISK_WRITE for epoch ${epoch} after checkpoint ${this.committed} committed`);
    if (s.atOnceEpoch !== null && s.atOnceEpoch !== epoch)
      throw protocolError(`AT_ONCE DISK_WRITE for epoch ${epoch} after one for epoch ${s.atOnceEpoch}`);
    if (s.open && s.open.epoch !== epoch)
      throw protocolError(`AT_ONCE DISK_WRITE for epoch ${epoch} while checkpoint ${s.open.epoch} is open`);
  }

  /** Resync copy: applied at once — nothing is committed in this session until it ends. */
  private onDiskSync(s: Session, body: Buffer): void {
    const held = this.needSession(s);
    if (s.diskSync.done || this.committed !== null || s.open)
      throw protocolError('DISK_SYNC outside the disk copy that opens a session');
    const { offsetBytes, lengthBytes, data } = parseDiskSync(body, held.hello.diskBytes);
    if (data) held.replica.disk!.write(offsetBytes, data);
    else held.replica.disk!.zeroSync(offsetBytes, lengthBytes);
    s.diskSync.bytes += lengthBytes;
    this.counters.diskSyncBytes += lengthBytes;
  }

  private onDiskSyncEnd(s: Session, body: Buffer): void {
    this.needSession(s);
    if (s.diskSync.done) throw protocolError('DISK_SYNC_END outside the disk copy');
    const bytes = parseDiskSyncEnd(body);
    if (bytes !== s.diskSync.bytes) {
      throw protocolError(`DISK_SYNC_END says ${bytes} octets were copied; ${s.diskSync.bytes} arrived`);
    }
    if (bytes > 0) this.held!.replica.disk!.flushSoon();
    s.diskSync.done = true;
    this.hooks.event?.('disk-synced', { bytes });
  }

  private onGoodbye(s: Session): void {
    this.hooks.event?.('goodbye', { epoch: this.committed });
    this.drop(s);
  }

  // ---- the end of a session --------------------------------------------------------------

  /** The connection ended under us: a failover only if the session was live. */
  private onLinkClosed(s: Session, err: Error | null): void {
    if (err instanceof RemusError && err.code === ErrorCode.PROTOCOL) throw err; // a bad stream is not a dead primary
    this.lost(s, err ? `connection broke: ${err.message}` : 'connection closed without GOODBYE');
  }

  /** The one failover rule: losing a live session fails over; losing any other connection does not. */
  private lost(s: Session, why: string): void {
    if (!this.live) return this.peerLeft(s, why);
    if (this.opts.claimer) return this.claimThenFailover(s, why);
    this.failover(why);
  }

  /** Coordination: the session ends and its image stays; failover once the domain's key is ours. */
  private claimThenFailover(s: Session, why: string): void {
    const domain = s.hello!.domain;
    this.endSession(s);
    s.link.close();
    this.state = 'claiming';
    if (this.claiming)
      this.claiming.why = why; // claiming already (the primary said it cannot prove ownership)
    else this.startClaim(domain, why);
    this.checkInvariants();
  }

  private startClaim(domain: string, why: string): void {
    this.hooks.event?.('claiming', { domain, reason: why, epoch: this.committed });
    const claim = { why, cancel: () => {} };
    this.claiming = claim;
    claim.cancel = this.opts.claimer!.claim(domain, (won, whyNot) => this.claimEnded(claim, won, whyNot));
  }

  /**
   * OWNERSHIP from the live primary: it cannot prove it owns the domain (no etcd quorum on its
   * side). Claim while the session goes on: the claim wins only if its lease really ended, and
   * then the failover fences it (TAKEOVER on this very link). Provable again: no claim.
   */
  private onOwnership(s: Session, body: Buffer): void {
    const { value } = parseJson(Rec.OWNERSHIP, body, false);
    if (typeof value.provable !== 'boolean') throw protocolError('OWNERSHIP without a boolean "provable"');
    if (!this.opts.claimer || s.phase !== 'open') return; // nothing to claim with, or nothing to take over yet
    if (value.provable) return this.cancelClaim('the primary proves its ownership again');
    if (!this.claiming && this.committed !== null) {
      this.startClaim(s.hello!.domain, 'the primary cannot prove it owns the domain');
    }
  }

  private claimEnded(claim: { why: string }, won: Ownership | null, whyNot: string): void {
    // (a claim started on OWNERSHIP may win while the session is still open: failover ends it)
    if (this.claiming !== claim) return; // cancelled meanwhile
    this.claiming = null;
    if (this.state === 'claiming') this.state = 'waiting';
    if (!won) {
      this.hooks.event?.('claim-failed', { reason: whyNot, epoch: this.committed });
      this.checkInvariants();
      return;
    }
    this.owned = won;
    this.failover(`${claim.why}; the domain's key in the coordination service is ours`);
  }

  /** A claim in progress stops: the primary came back (or the process ends). */
  private cancelClaim(why: string): void {
    const c = this.claiming;
    if (!c) return;
    this.claiming = null;
    if (this.state === 'claiming') this.state = 'waiting';
    c.cancel();
    this.hooks.event?.('claim-cancelled', { reason: why });
  }

  private peerLeft(s: Session, why: string): void {
    this.hooks.event?.('peer-left', { reason: why, phase: s.phase });
    this.drop(s);
  }

  /** Ends the session's bookkeeping: timers, open checkpoint, queued records. */
  private endSession(s: Session): void {
    if (s.timer !== null) this.clock.clearTimer(s.timer);
    s.timer = null;
    s.open = null;
    s.paused = false;
    s.queued = [];
    s.queuedBytes = 0;
    this.held?.staging.clear();
    if (this.session === s) this.session = null;
  }

  /**
   * Drop the connection without failing over; discard any open checkpoint. A session that
   * committed nothing leaves nothing behind (no replica, no binding to its domain), but a disk
   * a check found different in known ranges (the next session of that domain copies them).
   */
  private drop(s: Session): void {
    if (this.session !== s) return;
    this.endSession(s);
    // A kept image waits for a continued session; a disk whose differing ranges are known, for
    // the session that copies them (releasing it would make the next one copy the disk whole).
    const diskRepairs = this.diskDiffers !== null && this.diskDiffers !== 'whole';
    if (this.committed === null && this.kept === null && !diskRepairs) this.release();
    if (this.state !== 'failed-over') this.state = this.claiming ? 'claiming' : 'waiting';
    s.link.close();
    this.checkInvariants();
  }

  /**
   * The one error boundary of everything a peer's input or a session's timer runs. A
   * RemusError drops the session (no failover) and is reported; anything else is a bug met
   * on peer input: reported as ERR_INTERNAL with its cause, and the process goes on.
   */
  private guard(s: Session, f: () => void): void {
    if (this.session !== s) return;
    try {
      f();
    } catch (e) {
      this.failed(s, e);
    }
    this.checkInvariants();
  }

  /** A handler of the session's input threw: report it, tell the primary, drop the session. */
  private failed(s: Session, e: unknown): void {
    const err =
      e instanceof RemusError
        ? e
        : new RemusError(
            ErrorCode.INTERNAL,
            `internal error on the primary's input: ${(e as Error)?.message ?? String(e)}`,
            {},
            { cause: e },
          );
    const internal = err.code === ErrorCode.INTERNAL;
    if (internal) this.counters.internalErrors++;
    else this.counters.protocolErrors++;
    this.hooks.event?.(internal ? 'internal-error' : 'protocol-error', { code: err.code, message: err.message });
    if (this.session !== s) return;
    this.quietly(() => s.link.send(Rec.ERROR, jsonBody({ code: err.code, message: err.message })));
    this.drop(s);
  }

  /** Best effort on a connection that may be closing. */
  private quietly(f: () => void): void {
    try {
      f();
    } catch {
      /* closing anyway */
    }
  }

  /**
   * What holds whenever a handler returns (guard, attach, failover, drop, close): the replica
   * and what it keeps, the state and the session, and the session's own fields.
   */
  private checkInvariants(): void {
    assert(this.committed === null || this.held !== null, 'a committed checkpoint without a replica');
    assert(this.kept === null || this.held?.crcs.complete === true, 'a kept image whose page CRCs are not whole');
    const k = this.kept;
    const c = this.committed;
    assert(k === null ? c === null : this.held !== null && (c === null || k.epoch === c), 'committed is not kept');
    assert(
      (this.state === 'receiving') === (this.session !== null),
      `state ${this.state} with session ${this.session !== null}`,
    );
    assert(this.state !== 'failed-over' || this.resumedFrom !== null, 'failed over without a checkpoint');
    assert(this.claiming === null || this.committed !== null, 'a takeover claim without a committed checkpoint');
    // Writes are queued for the disk only before a session's first commit, which waits for them:
    // a failover (from a committed checkpoint) never finds one on its way.
    const pending = this.held?.replica.disk?.pendingBytes ?? 0;
    assert(c === null || pending === 0, `checkpoint ${c} committed with ${pending} disk bytes still queued`);
    assert(
      (this.state === 'claiming') === (this.claiming !== null && this.session === null),
      `state ${this.state} with a claim ${this.claiming !== null}`,
    );
    if (this.session) this.checkSession(this.session);
  }

  private checkSession(s: Session): void {
    assert((s.phase === 'open') === (s.hello !== null), `session phase ${s.phase} with hello ${s.hello !== null}`);
    assert(
      s.phase === 'open' || (s.open === null && s.continuing === null),
      'a checkpoint or continuation before HELLO',
    );
    assert(s.continuing === null || this.committed === null, 'a session continues although it committed');
    assert(!s.paused || s.open !== null, 'records held without a checkpoint to commit');
    assert(s.queued.length > 0 || s.queuedBytes === 0, `${s.queuedBytes} octets queued in no record`);
    assert(s.diskSync.done || (s.open === null && this.committed === null), 'a checkpoint during the disk copy');
    const a = s.atOnceEpoch;
    assert(a === null || this.committed === null || a <= this.committed, `AT_ONCE epoch ${a} after a commit`);
  }

  /** A commit follows the last one in this session, or the kept epoch a continued session builds on. */
  private checkCommitFollows(s: Session, epoch: number): void {
    const last = this.committed ?? s.continuing;
    assert(last === null || epoch > last, `checkpoint ${epoch} commits after ${last}`);
    assert(
      this.committed === null || epoch === this.committed + 1,
      `checkpoint ${epoch} skips after ${this.committed}`,
    );
  }

  // ---- liveness --------------------------------------------------------------------------

  /**
   * Silence that ends a session: its heartbeat timeout once live; before its first commit (a
   * long first copy on a busy host) at least copySilenceMs, since losing it changes nothing.
   */
  private timeoutMs(s: Session): number {
    if (!s.hello) return this.opts.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS;
    const t = s.hello.heartbeatTimeoutMs;
    return this.live ? t : Math.max(t, this.opts.copySilenceMs ?? COPY_SILENCE_MS);
  }

  /** How often our heartbeats go out: a quarter of the primary's heartbeat timeout. */
  private heartbeatEveryMs(s: Session): number {
    return (s.hello?.heartbeatTimeoutMs ?? HANDSHAKE_TIMEOUT_MS) / 4;
  }

  private arm(s: Session): void {
    if (s.timer !== null) this.clock.clearTimer(s.timer);
    // Check for silence 8 times per timeout (failover ≤ timeout × 9/8); heartbeat every 1/4.
    const every = Math.max(5, Math.floor(Math.min(this.timeoutMs(s) / 8, this.heartbeatEveryMs(s))));
    s.timer = this.clock.setTimer(every, () => {
      s.timer = null;
      this.guard(s, () => this.onTimer(s));
    });
  }

  private onTimer(s: Session): void {
    const now = this.clock.now();
    if (s.readingHeld) s.lastHeard = now; // we are the one not reading
    if (now - s.lastHeard <= this.timeoutMs(s)) {
      if (s.phase === 'open' && now - s.lastSent >= this.heartbeatEveryMs(s))
        this.send(s, Rec.HEARTBEAT, heartbeatBody(this.committed ?? 0, now));
      this.arm(s);
      return;
    }
    // Confirm after pending input was read: a stall of our own loop is not the primary's silence.
    s.timer = this.clock.setTimer(1, () => {
      s.timer = null;
      this.guard(s, () => {
        const silent = this.clock.now() - s.lastHeard;
        if (silent <= this.timeoutMs(s)) {
          this.arm(s);
          return;
        }
        this.lost(s, `primary silent for ${silent.toFixed(0)} ms`);
      });
    });
  }

  private send(s: Session, type: number, body: Uint8Array): void {
    if (this.session !== s) return;
    s.lastSent = this.clock.now();
    s.link.send(type, body);
  }
}

/** What may arrive while a commit waits for its disk check (then the session is dropped). */
const QUEUED_BYTES_MAX = 512 * 1024 * 1024;

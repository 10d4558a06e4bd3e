// xen-domain: the engine's Domain port for a Xen domain, over libxenguest's checkpointed
// (Remus) save loop. libxc owns its loop and writes its stream into a pipe we read:
//   [live pre-copy rounds] suspend() callback → dirty pages + device records → CHECKPOINT
//   record → postcopy() callback → checkpoint() callback → (next checkpoint) suspend() ...
// The engine drives it: our suspend() lets the held checkpoint() callback return 1 (or starts
// the save), then suspends the guest inside libxc's suspend() callback; capture() waits for
// the checkpoint's CHECKPOINT record and hands over its pages and skeleton
// (xen-checkpoint.ts); resume() resumes the guest inside postcopy(). The checkpoint()
// callback is then held until the next suspend(). A full capture on a save that already
// took a checkpoint (a new backup session) ends that save (checkpoint() returns 0) and starts
// a fresh one, whose first checkpoint carries every page: simpler and exact, at the cost of
// one more live pre-copy (the guest runs meanwhile; outputs of that time are held one epoch
// longer than needed, which is safe). A dying or destroyed domain fails every wait at once
// (RemusError NO_DOMAIN). A protect that crashed mid-checkpoint leaves its guest suspended
// (shut down for suspend, no save left to resume it): open() takes it as it is, and it stays
// suspended until a session's first save resumes it — or for good, paused, if the backup took
// over and fences this copy (docs/operations.md, a restart after a crash).
import * as fs from 'node:fs';
import * as net from 'node:net';
import { ErrorCode, RemusError } from '../../errors';
import type { Capture, Domain } from '../../ports';
import { CheckpointCollector, type CollectedCheckpoint } from './xen-checkpoint';
import { RecordSplitter, type RawRecord } from './libxc-stream';
import { Mailbox } from './mailbox';
import {
  configGuestType,
  configName,
  domainPageCount,
  xenAddon,
  type XenAddon,
  type XenDomainInfo,
  type XenGuestType,
} from './xen-addon';
import { LIBXL_REC_LIBXC_CONTEXT, libxlEmptyRecord, libxlStreamHeader, xlSavefileHeader } from './xl-stream';
import { StreamRecorder } from './stream-recorder';

export interface XenDomainOptions {
  /**
   * Bound on the guest taking a suspend request, and again on its suspending once taken (the
   * native side waits up to twice this). libxl waits 60 s for each; a guest under heavy I/O
   * (PostgreSQL in the lab) took more than 10 s to freeze its tasks.
   */
  suspendTimeoutMs: number;
  /** Bound on a save's first checkpoint (live pre-copy of all memory, then the first stop). */
  firstCheckpointTimeoutMs: number;
  /** Bound on every other wait for libxc (a checkpoint's records, a callback). */
  stepTimeoutMs: number;
  /** Record the raw libxc stream (headers, device records, checkpoints 2..n) for test fixtures. */
  recordPath?: string;
  recordCheckpoints?: number;
  log?: (line: string) => void;
}

export const XEN_DOMAIN_DEFAULTS: XenDomainOptions = {
  suspendTimeoutMs: 60_000,
  firstCheckpointTimeoutMs: 600_000,
  stepTimeoutMs: 30_000,
};

type CallbackKind = 'suspend' | 'postcopy' | 'checkpoint';
interface Callback {
  kind: CallbackKind;
  done: (rc: number) => void;
}

/** One xc_domain_save: its pipe, its reader, and what it produced so far. */
class SaveRun {
  readonly callbacks: Mailbox<Callback>;
  readonly checkpoints: Mailbox<CollectedCheckpoint>;
  fresh = true;
  ending = false;
  ended = false;
  readonly result: Promise<{ rc: number; message: string }>;
  private readonly socket: net.Socket;

  constructor(
    x: XenAddon,
    domid: number,
    pageCount: number,
    xlPreamble: Buffer,
    dispatch: (run: SaveRun, cb: Callback) => void,
    recorder: StreamRecorder | null,
  ) {
    this.callbacks = new Mailbox(`libxc callbacks of domain ${domid}`, 4);
    this.checkpoints = new Mailbox(`checkpoints of domain ${domid}`, 4);
    const collector = new CheckpointCollector(pageCount);
    const [rfd, wfd] = x.makePipe();
    const splitter = new RecordSplitter(
      (h) => {
        collector.startSave(Buffer.concat([xlPreamble, h]));
        recorder?.headers(h);
      },
      (r: RawRecord) => {
        recorder?.record(r);
        const done = collector.add(r);
        if (done) this.checkpoints.put(done);
      },
    );
    this.socket = new net.Socket({ fd: rfd, readable: true, writable: false });
    this.socket.on('data', (chunk: Buffer) => {
      if (this.checkpoints.failed) return;
      try {
        splitter.push(chunk);
      } catch (e) {
        this.fail(e as Error);
      }
    });
    this.socket.on('error', (e) =>
      this.fail(new RemusError(ErrorCode.XEN, `reading libxc's stream: ${e.message}`, {}, { cause: e })),
    );
    this.result = x
      .xenSaveCheckpointed(domid, wfd, (kind, done) => dispatch(this, { kind, done }))
      .then((r) => {
        this.ended = true;
        fs.closeSync(wfd); // the reader sees the end of the stream
        if (!this.ending)
          this.fail(
            new RemusError(ErrorCode.XEN, `libxc's save loop of domain ${domid} ended: ${r.message} (rc ${r.rc})`),
          );
        return r;
      });
  }

  /** Leaves this save: its callbacks get 0 from now on, every wait on it fails with e. */
  abandon(e: Error): void {
    this.ending = true;
    this.fail(e);
  }

  fail(e: Error): void {
    this.callbacks.fail(e);
    this.checkpoints.fail(e);
  }

  close(): void {
    this.socket.destroy();
  }
}

/** struct domain's shutdown code for a suspend (xen/include/public/sched.h SHUTDOWN_suspend). */
export const SHUTDOWN_SUSPEND = 2;

export class XenDomain implements Domain {
  readonly kind = 'xen' as const;
  readonly pageCount: number;
  private run: SaveRun | null = null;
  private fenced = false;
  private closing = false;
  private suspended = false;
  /** When the guest was last asked to suspend (performance.now), and the stop that ended at its resume. */
  private suspendedAt = 0;
  pausedMsLast = 0;
  private readonly stats = {
    saves: 0,
    checkpoints: 0,
    rawBytesLast: 0,
    rawBytesTotal: 0,
    skeletonBytesLast: 0,
    pagesLast: 0,
    suspendMsLast: 0,
  };

  private constructor(
    private readonly x: XenAddon,
    readonly domid: number,
    readonly name: string,
    /** PV, or PVH (an HVM container without a device model: libxc's HVM save ops, no EMULATOR records). */
    readonly guestType: 'pv' | 'pvh',
    pageCount: number,
    private readonly opts: XenDomainOptions,
  ) {
    this.pageCount = pageCount;
  }

  /**
   * Found suspended with no save of ours running (adoptLeftSuspended): a crashed protect's
   * checkpoint. Cleared when the guest is resumed (startRun, close); a fence leaves it set.
   */
  private leftSuspended = false;

  /** Finds a running domain by name or id, or a suspended one (adoptLeftSuspended tells which). */
  static open(arg: string, opts: Partial<XenDomainOptions> = {}, x: XenAddon = xenAddon()): XenDomain {
    const info = x.xenDomainInfo(/^\d+$/.test(arg) ? Number(arg) : arg);
    if (info.domid === 0) throw new RemusError(ErrorCode.NO_DOMAIN, 'domain 0 (dom0) cannot be protected');
    const leftSuspended = !info.dying && info.shutdown && info.shutdownReason === SHUTDOWN_SUSPEND;
    if (info.dying || (info.shutdown && !leftSuspended))
      throw new RemusError(
        ErrorCode.NO_DOMAIN,
        `domain ${arg} (id ${info.domid}) is not running (${info.dying ? 'dying' : 'shut down'})`,
      );
    const json = x.xenDomainConfigJson(info.domid);
    // libxl's configuration says; the hvm flag only when it does not (a PVH guest showed hvm clear in the lab).
    const guestType: XenGuestType = configGuestType(json, info.hvm ? undefined : 'pv');
    if (guestType === 'hvm') {
      throw new RemusError(
        ErrorCode.XEN,
        `domain ${arg} is an HVM guest: remusdb protects PV and PVH guests so far ` +
          "(an HVM checkpoint needs the device model's state, EMULATOR records, which are not carried yet)",
      );
    }
    const name = configName(json);
    const recordPath = process.env.REMUSDB_XEN_RECORD || undefined; // lab: fixture recording
    const o = { ...XEN_DOMAIN_DEFAULTS, recordPath, ...opts };
    return new XenDomain(x, info.domid, name, guestType, domainPageCount(info), o);
  }

  /**
   * Called once this process holds the domain's host lock, so no other protect runs a save of
   * it: a guest found suspended now was left so by a protect that crashed mid-checkpoint. It
   * stays suspended until a session's first save resumes it (or close() does); a fence leaves
   * it suspended and paused. Returns whether it was.
   */
  adoptLeftSuspended(): boolean {
    const info = this.x.xenDomainInfo(this.domid);
    if (this.run || !info.shutdown || info.shutdownReason !== SHUTDOWN_SUSPEND) return false;
    this.leftSuspended = true;
    this.opts.log?.(
      `xen: ${this.name} (id ${this.domid}) is suspended with no save running (a protect that crashed ` +
        'mid-checkpoint): it stays suspended until the backup answers, or until no backup answered ' +
        'while outputs were held (then it runs unprotected)',
    );
    return true;
  }

  async suspend(): Promise<void> {
    if (this.fenced || this.closing)
      throw new RemusError(ErrorCode.NO_DOMAIN, `domain ${this.name} is ${this.fenced ? 'fenced' : 'being released'}`);
    let run = this.run;
    if (run && !run.callbacks.failed) {
      const cb = await this.take(run, 'checkpoint', this.opts.stepTimeoutMs);
      cb.done(1);
    } else {
      run = this.startRun();
    }
    await this.suspendIn(run, run.fresh ? this.opts.firstCheckpointTimeoutMs : this.opts.stepTimeoutMs);
  }

  async capture(full: boolean): Promise<Capture> {
    let run = this.need();
    if (full && !run.fresh) run = await this.restart(run);
    if (!full && run.fresh) {
      throw new RemusError(
        ErrorCode.XEN,
        `libxc's save of ${this.name} started over (the previous one failed): the backup needs a full checkpoint`,
      );
    }
    const ck = await this.guard(
      run.checkpoints.take(run.fresh ? this.opts.firstCheckpointTimeoutMs : this.opts.stepTimeoutMs),
    );
    run.fresh = false;
    this.stats.checkpoints++;
    this.stats.rawBytesLast = ck.rawBytes;
    this.stats.rawBytesTotal += ck.rawBytes;
    this.stats.skeletonBytesLast = ck.capture.deviceState.length;
    this.stats.pagesLast = ck.capture.count;
    return ck.capture;
  }

  async resume(): Promise<void> {
    const run = this.need();
    const cb = await this.take(run, 'postcopy', this.opts.stepTimeoutMs);
    this.resumeIn(cb, 1);
  }

  describe(): Record<string, unknown> {
    return {
      domid: this.domid,
      name: this.name,
      guestType: this.guestType,
      pageCount: this.pageCount,
      suspended: this.suspended,
      leftSuspended: this.leftSuspended,
      ...this.stats,
    };
  }

  /** The backup took over: end the save and pause this copy for good. */
  fence(): void {
    this.fenced = true;
    this.endRun();
    try {
      this.x.xenPause?.(this.domid);
    } catch (e) {
      this.opts.log?.(`fencing: could not pause domain ${this.domid}: ${(e as Error).message}`);
    }
  }

  /** No backup answered while outputs were held: a guest left suspended runs again (unless fenced). */
  runUnprotected(): void {
    if (!this.fenced) this.resumeLeftSuspended('no backup answered while its outputs were held: it runs unprotected');
  }

  /** Ends protection: the save loop stops, the guest keeps running (or runs again, if left suspended). */
  async close(): Promise<void> {
    this.closing = true;
    if (!this.fenced) this.resumeLeftSuspended('protection ends');
    const run = this.run;
    this.endRun();
    if (run && !run.ended)
      await Promise.race([run.result, new Promise((r) => setTimeout(r, this.opts.stepTimeoutMs).unref())]);
    run?.close();
  }

  // ---- the save loop -----------------------------------------------------------------

  private startRun(): SaveRun {
    this.checkAlive();
    this.resumeLeftSuspended('a session starts');
    this.run?.close();
    const json = this.x.xenDomainConfigJson(this.domid);
    const preamble = Buffer.concat([
      xlSavefileHeader(json),
      libxlStreamHeader(),
      libxlEmptyRecord(LIBXL_REC_LIBXC_CONTEXT),
    ]);
    const recorder =
      this.opts.recordPath && this.stats.saves === 0
        ? new StreamRecorder(this.opts.recordPath, this.opts.recordCheckpoints ?? 4)
        : null;
    this.stats.saves++;
    this.run = new SaveRun(this.x, this.domid, this.pageCount, preamble, (run, cb) => this.dispatch(run, cb), recorder);
    this.opts.log?.(
      `xen: save ${this.stats.saves} of ${this.name} (id ${this.domid}, ${this.pageCount} pages) started`,
    );
    return this.run;
  }

  /** A guest a crashed protect left suspended runs again (fast resume: its suspend returns "cancelled"). */
  private resumeLeftSuspended(why: string): void {
    if (!this.leftSuspended) return;
    this.x.xenResume(this.domid);
    this.leftSuspended = false;
    this.opts.log?.(`xen: resumed ${this.name} (id ${this.domid}), which a crashed protect had left suspended: ${why}`);
  }

  /** Ends the current save at its next callback (guest resumed, loop left without END). */
  private endRun(): void {
    const run = this.run;
    if (!run) return;
    run.ending = true;
    for (const cb of run.callbacks.drain()) this.answerEnding(cb);
    run.abandon(new RemusError(ErrorCode.XEN, `the save of ${this.name} was ended`));
  }

  private dispatch(run: SaveRun, cb: Callback): void {
    if (run.ending || run !== this.run) {
      this.answerEnding(cb);
      return;
    }
    run.callbacks.put(cb);
    if (run.callbacks.failed) this.answerEnding(cb);
  }

  /** A callback of a save we are leaving: never leave the guest suspended. */
  private answerEnding(cb: Callback): void {
    if (cb.kind === 'postcopy') {
      this.resumeIn(cb, 0);
      return;
    }
    cb.done(0);
  }

  /** New backup session on a save that is past its first checkpoint: finish this one, start afresh. */
  private async restart(run: SaveRun): Promise<SaveRun> {
    await this.guard(run.checkpoints.take(this.opts.stepTimeoutMs)); // this checkpoint's records: not needed
    this.resumeIn(await this.take(run, 'postcopy', this.opts.stepTimeoutMs), 1);
    const cb = await this.take(run, 'checkpoint', this.opts.stepTimeoutMs);
    run.ending = true;
    cb.done(0);
    const r = await run.result;
    run.close();
    if (r.rc !== 0) this.opts.log?.(`xen: ending save ${this.stats.saves}: ${r.message}`);
    const next = this.startRun();
    await this.suspendIn(next, this.opts.firstCheckpointTimeoutMs);
    return next;
  }

  private async suspendIn(run: SaveRun, timeoutMs: number): Promise<void> {
    const cb = await this.take(run, 'suspend', timeoutMs);
    const t0 = (this.suspendedAt = performance.now());
    try {
      await this.x.xenSuspendAsync(this.domid, this.opts.suspendTimeoutMs);
    } catch (e) {
      cb.done(0);
      const err = this.explain(e as Error);
      run.abandon(err);
      throw err;
    }
    if (run.ending || run !== this.run) {
      // fenced or closed while the guest was suspending
      if (!this.fenced) this.resumeQuietly(); // close(): the guest runs on here
      cb.done(0);
      throw new RemusError(ErrorCode.XEN, `the save of ${this.name} was ended during a suspend`);
    }
    this.suspended = true;
    this.stats.suspendMsLast = performance.now() - t0;
    cb.done(1);
  }

  private resumeQuietly(): void {
    try {
      this.x.xenResume(this.domid);
    } catch (e) {
      this.opts.log?.(`xen: resuming ${this.name} after an ended save: ${(e as Error).message}`);
    }
  }

  private resumeIn(cb: Callback, rc: number): void {
    try {
      this.x.xenResume(this.domid);
      this.suspended = false;
      this.pausedMsLast = performance.now() - this.suspendedAt;
    } catch (e) {
      cb.done(0);
      throw this.explain(e as Error);
    }
    cb.done(rc);
  }

  private async take(run: SaveRun, kind: CallbackKind, timeoutMs: number): Promise<Callback> {
    const cb = await this.guard(run.callbacks.take(timeoutMs));
    if (cb.kind !== kind) {
      this.answerEnding(cb);
      const err = new RemusError(ErrorCode.XEN, `libxc called ${cb.kind}() where the adapter expected ${kind}()`);
      run.abandon(err);
      throw err;
    }
    return cb;
  }

  private need(): SaveRun {
    if (!this.run)
      throw new RemusError(ErrorCode.XEN, `no save of ${this.name} is running (capture/resume before suspend)`);
    return this.run;
  }

  /** A failed wait: say NO_DOMAIN when the domain is gone or dying, whatever libxc said. */
  private async guard<T>(p: Promise<T>): Promise<T> {
    try {
      return await p;
    } catch (e) {
      throw this.explain(e as Error);
    }
  }

  private explain(e: Error): Error {
    try {
      this.checkAlive();
    } catch (gone) {
      return gone as Error;
    }
    return e;
  }

  private checkAlive(): void {
    let info: XenDomainInfo;
    try {
      info = this.x.xenDomainInfo(this.domid);
    } catch {
      throw new RemusError(ErrorCode.NO_DOMAIN, `domain ${this.name} (id ${this.domid}) no longer exists`);
    }
    if (info.dying)
      throw new RemusError(ErrorCode.NO_DOMAIN, `domain ${this.name} (id ${this.domid}) is dying (destroyed)`);
    if (info.shutdown && info.shutdownReason !== SHUTDOWN_SUSPEND)
      throw new RemusError(
        ErrorCode.NO_DOMAIN,
        `domain ${this.name} (id ${this.domid}) shut down (reason ${info.shutdownReason})`,
      );
  }
}

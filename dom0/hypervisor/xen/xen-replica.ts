// xen-replica: the backup's Replica port for a Xen domain. It keeps the committed memory
// image (the whole guest memory in this process: pageCount × 4 KiB, on top of the memory of
// the backup domain that xl builds) and, at each commit, rebuilds the checkpoint's exact
// libxc bytes (skeleton + image pages, xen-checkpoint.ts), adds libxl's CHECKPOINT_END and
// writes the checkpoint to the stdin of a stock `xl migrate-receive -r -e`, which buffers
// each checkpoint and applies it when it is complete. Checkpoints are written a record at a
// time while the receiver keeps up (at most FEED_HIGH_BYTES queued in the pipe, at most
// FEED_TURN_BYTES per event-loop turn): a first checkpoint of many GiB neither stalls the
// backup nor makes a second copy of the guest; failover waits until all are written. Pages
// are read from the image as they go out; before a later commit rewrites one that an
// unwritten checkpoint still needs, that checkpoint keeps a copy (beforeImageWrite): libxc
// checks PV page tables against their checkpoint's types, so content must not run ahead. Failover (resume) = write what
// is committed, close the stream: xl restores the last complete checkpoint, renames
// "<name>--incoming" to "<name>" (when that name is free) and unpauses it. A new session
// (its first checkpoint carries a fresh preamble) replaces the receiver and its
// half-built domain. With a replicated disk (xen-disk.ts), the configuration in the preamble
// is rewritten so the domain's /dev/nbdN disk names a free NBD device of this host, and at
// failover — after the engine applied the committed disk writes, before the stream ends
// and xl creates the devices — the replica disk is served over NBD on 127.0.0.1 (on its own
// thread, as on a primary) and attached to that device. From then on this host runs the
// domain unprotected: the disk's writes reach a replicator with no backup, which records
// them, with the blocks of the epochs discarded at failover, in its resync bitmap, so
// `remusdb reprotect` (xen-driver.ts adopt) copies exactly those blocks to a backup that
// keeps the old disk (backup --reuse-disk), and the whole disk to a new one.
import { spawn, type ChildProcess } from 'node:child_process';
import { ErrorCode, RemusError } from '../../errors';
import type { ReplicaDisk } from '../../ports';
import type { DriverReplica } from '../driver';
import { announceFailover } from './failover-notice';
import { GuestMemory } from '../../memory/guest-memory';
import { planCheckpoint, type CheckpointPlan } from './xen-checkpoint';
import { DISK_BUFFER_BYTES_DEFAULT, PAGE_BYTES } from '../../limits';
import { LIBXL_REC_CHECKPOINT_END, RECEIVER_BANNER, libxlEmptyRecord } from './xl-stream';
import { xenAddon, type XenAddon, type XenDomainInfo } from './xen-addon';
import type { BlockFile } from '../../../blktap/block-file';
import { DEFAULT_EXPORT_NAME } from '../../../blktap/serve';
import { EpochHeldDisk } from '../../../blktap/replica-disk';
import { DiskReplicator } from '../../../blktap/replicator';
import { realClock } from '../../engine/clock';
import { DrainingDiskPort, type TapFeed, WorkerServedDisk } from './disk-worker';
import type { DiskRange } from '../../ports';
import { retargetPreamble } from './xen-disk';
import { freeNbdDevice, nbdAttach } from './nbd-device';

/** The replica disk served at failover: its NBD export and the writes the guest completes on it. */
export interface ServedReplicaDisk extends TapFeed {
  readonly port: number;
  readonly exportName: string;
  close(): Promise<void>;
}

/** How the replica disk reaches xl at failover (tests replace it). */
export interface ReplicaDiskAccess {
  freeDevice(): string;
  serve(image: string): Promise<ServedReplicaDisk>;
  attach(port: number, device: string, exportName: string): Promise<void>;
}

const realDiskAccess: ReplicaDiskAccess = {
  freeDevice: () => freeNbdDevice(),
  serve: (image) => WorkerServedDisk.start({ image, host: '127.0.0.1', port: 0, exportName: DEFAULT_EXPORT_NAME }),
  attach: (port, device, exportName) => nbdAttach(port, device, exportName),
};

export interface XenReplicaOptions {
  /** The receiver command (argv); default xl migrate-receive -r -e. */
  receiver: string[];
  /** Most octets queued for the receiver; past it the commit fails (receiver too slow). */
  queueBytesMax: number;
  /** Bound on the failover: stream flushed, domain running. */
  resumeTimeoutMs: number;
  log: (line: string) => void;
  /** For tests: the Xen calls (default: the addon). */
  addon?: Pick<XenAddon, 'xenDomainInfo'>;
  /** The backup's copy of the domain's replicated disk (none: the domain has no such disk). */
  disk?: BlockFile | null;
  /** The disk is this host's old copy (backup --reuse-disk): the session continues it. */
  diskContinues?: boolean;
  /** After failover: unacknowledged writes a reprotection may forward (the new backup's bound). */
  diskBufferBytesMax: number;
  diskAccess?: ReplicaDiskAccess;
}

/** The domain this replica resumed, as a reprotection adopts it. */
export interface ResumedXenDomain {
  readonly domid: number;
  /** Its disk's writes since the failover (null: no replicated disk). */
  readonly disk: DrainingDiskPort | null;
  /** The NBD device its disk is attached to, or null. */
  readonly device: string | null;
}

const STDERR_LINES_MAX = 40;
/** Octets queued in the receiver's pipe before the feed waits for it to drain. */
const FEED_HIGH_BYTES = 16 * 2 ** 20;
/** Octets the feed writes per event-loop turn (then it yields to the engine's records). */
const FEED_TURN_BYTES = 8 * 2 ** 20;

export class XenReplica implements DriverReplica {
  readonly image: GuestMemory;
  /** The replica disk as the backup engine sees it (the file, with the writes it holds per epoch). */
  readonly disk: ReplicaDisk | null;
  readonly diskFile: BlockFile | null;
  readonly diskContinues: boolean;
  /** The NBD device the backup domain's disk names (chosen at the first preamble). */
  private nbdDevice: string | null = null;
  /** After failover: the disk's server and the port recording its writes (set together). */
  private served: ServedReplicaDisk | null = null;
  private resumedDisk: DrainingDiskPort | null = null;
  /** The running domain once resume() returned; null before. */
  private resumedDomid: number | null = null;
  private rx: ChildProcess | null = null;
  private rxExit: string | null = null;
  private rxErr: string[] = [];
  private checkpoints = 0;
  /** Committed checkpoints not yet written to the receiver, oldest first, and their octets. */
  private feed: Array<{ plan: CheckpointPlan; records: Iterator<Buffer> }> = [];
  private feedBytes = 0;
  private pumping = false;
  private feedWaiters: Array<() => void> = [];
  private domid: number | null = null;
  private resumed = false;
  private readonly opts: XenReplicaOptions;
  readonly stats = { checkpointsWritten: 0, bytesWritten: 0, bytesLast: 0, receivers: 0 };

  constructor(
    readonly name: string,
    readonly pageCount: number,
    opts: Partial<XenReplicaOptions> = {},
  ) {
    this.opts = {
      receiver: ['xl', 'migrate-receive', '-r', '-e'],
      queueBytesMax: Math.max(256 * 2 ** 20, 2 * pageCount * PAGE_BYTES),
      resumeTimeoutMs: 60_000,
      diskBufferBytesMax: DISK_BUFFER_BYTES_DEFAULT,
      log: () => {},
      ...opts,
    };
    this.image = GuestMemory.allocate(pageCount);
    this.diskFile = opts.disk ?? null;
    this.disk = this.diskFile ? new EpochHeldDisk(this.diskFile) : null;
    this.diskContinues = this.diskFile !== null && opts.diskContinues === true;
  }

  commitDeviceState(state: Uint8Array): void {
    const plan = planCheckpoint(state, this.image);
    const { preamble: original, bytes, endsWithCheckpoint } = plan;
    const preamble = original && this.disk ? this.retarget(original) : original;
    if (!endsWithCheckpoint)
      throw new RemusError(ErrorCode.XEN, "a Xen checkpoint must end with libxc's CHECKPOINT record");
    if (preamble) this.newReceiver();
    else if (this.checkpoints === 0)
      throw new RemusError(ErrorCode.XEN, 'the first Xen checkpoint of a session carries no stream preamble');
    const rx = this.live();
    const total = bytes + (preamble?.length ?? 0) + 8;
    const behind = rx.stdin!.writableLength + this.feedBytes;
    if (behind + total > this.opts.queueBytesMax) {
      throw new RemusError(
        ErrorCode.XEN,
        `xl migrate-receive is ${behind} octets behind (limit ${this.opts.queueBytesMax}): the ` +
          `checkpoint is not written`,
      );
    }
    const parts = plan.parts();
    this.feed.push({
      plan,
      records: (function* (): Generator<Buffer> {
        if (preamble) yield preamble;
        yield* parts;
        yield libxlEmptyRecord(LIBXL_REC_CHECKPOINT_END);
      })(),
    });
    this.feedBytes += total;
    this.pump(rx);
    this.checkpoints++;
    this.backupDomid();
    this.stats.checkpointsWritten++;
    this.stats.bytesWritten += total;
    this.stats.bytesLast = total;
  }

  async resume(lost: { lostDiskRanges: DiskRange[] } = { lostDiskRanges: [] }): Promise<Record<string, unknown>> {
    const rx = this.live();
    this.resumed = true;
    if (this.checkpoints === 0)
      throw new RemusError(ErrorCode.NO_DOMAIN, `no checkpoint of ${this.name} reached the receiver`);
    const t0 = Date.now(),
      deadline = t0 + this.opts.resumeTimeoutMs;
    await this.exposeDisk(lost.lostDiskRanges);
    await this.fed(rx);
    const diskMs = Date.now() - t0;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () =>
          reject(
            new RemusError(
              ErrorCode.XEN,
              `xl migrate-receive did not take the last checkpoint within ${this.opts.resumeTimeoutMs} ms`,
            ),
          ),
        this.opts.resumeTimeoutMs,
      );
      rx.stdin!.end(() => {
        clearTimeout(timer);
        resolve();
      });
    });
    const flushedMs = Date.now() - t0 - diskMs;
    for (;;) {
      const domid = this.backupDomid();
      const info = domid === null ? null : this.lookup(domid);
      if (info && !info.paused && !info.dying && !info.shutdown) {
        this.opts.log(
          `xen: ${this.name} (id ${info.domid}) runs on the backup, ${Date.now() - t0} ms after the stream ended`,
        );
        this.resumedDomid = info.domid;
        return {
          domid: info.domid,
          name: this.name,
          flushedMs,
          runningMs: Date.now() - t0,
          checkpoints: this.checkpoints,
          diskMs,
          diskDevice: this.served ? this.nbdDevice : null,
          lostDiskBlocks: this.resumedDisk?.replicator.bitmap.count ?? 0,
        };
      }
      if (this.rxExit && (!info || info.dying || info.shutdown))
        throw new RemusError(
          ErrorCode.XEN,
          `xl migrate-receive ${this.rxExit} without resuming ${this.name}: ${this.rxErr.slice(-5).join(' | ')}`,
        );
      if (Date.now() > deadline)
        throw new RemusError(
          ErrorCode.XEN,
          `${this.name} was not running ${this.opts.resumeTimeoutMs} ms after the stream ` +
            `ended: ${this.rxErr.slice(-5).join(' | ')}`,
        );
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Ends the receiver without failing over (the backup stops), and its half-built domain. */
  close(): void {
    if (!this.resumed) this.dropReceiver();
    void this.served?.close();
    this.served = null;
    this.diskFile?.close();
  }

  /** The backup stops: a resumed domain stays with xl; the receiver and disk server go. */
  async stop(): Promise<void> {
    this.close();
  }

  /** What `remusdb status` shows of this replica on the backup. */
  status(): Record<string, unknown> {
    const f = this.diskFile;
    return {
      xen: this.stats,
      guest: null,
      outputs: null,
      disk: f ? { path: f.path, sizeBytes: f.sizeBytes, ...this.resumedDisk?.stats() } : null,
    };
  }

  /** The domain resumed here and its disk's port, for a reprotection; null before the failover. */
  resumedDomain(): ResumedXenDomain | null {
    if (this.resumedDomid === null) return null;
    return { domid: this.resumedDomid, disk: this.resumedDisk, device: this.resumedDisk ? this.nbdDevice : null };
  }

  /** The resumed guest learns it is the failed-over copy (its agent starts database recovery). */
  afterResume(detail: Record<string, unknown>): void {
    if (typeof detail.domid === 'number') announceFailover(detail.domid, Number(detail.epoch), this.opts.log);
  }

  // ---- the replicated disk ------------------------------------------------------------

  private access(): ReplicaDiskAccess {
    return this.opts.diskAccess ?? realDiskAccess;
  }

  /** The preamble with the configuration's NBD disk on this host's device. */
  private retarget(preamble: Buffer): Buffer {
    this.nbdDevice ??= this.access().freeDevice();
    const r = retargetPreamble(preamble, this.nbdDevice);
    this.opts.log(`xen: the backup domain's disk ${r.vdev} will be ${this.nbdDevice} (the primary's is ${r.from})`);
    return r.preamble;
  }

  /**
   * Failover: the committed replica disk, served and attached before xl creates the devices;
   * its writes from then on, and the blocks of the discarded epochs, go to a resync bitmap.
   */
  private async exposeDisk(lost: readonly DiskRange[]): Promise<void> {
    if (!this.diskFile || this.served) return;
    if (!this.nbdDevice) throw new RemusError(ErrorCode.XEN, 'no NBD device was chosen for the replica disk');
    const served = await this.access().serve(this.diskFile.path);
    try {
      await this.access().attach(served.port, this.nbdDevice, served.exportName);
    } catch (e) {
      await served.close();
      throw e;
    }
    const replicator = new DiskReplicator(this.diskFile, realClock, {
      unackedBytesMax: this.opts.diskBufferBytesMax,
      inSync: true,
      readTrackingBlocksMax: 0, // a Xen checkpoint's pages travel inside libxc's records
      backendMovesGenerations: false, // the NBD worker's writes reach the replicator after the fact
    });
    for (const l of lost) replicator.bitmap.markRange(l.offsetBytes, l.lengthBytes);
    this.served = served;
    this.resumedDisk = new DrainingDiskPort(replicator, served);
    this.opts.log(
      `xen: replica disk ${this.diskFile.path} served on 127.0.0.1:${served.port} as ${this.nbdDevice} ` +
        `(${replicator.bitmap.count} blocks of discarded epochs to copy back at reprotection)`,
    );
  }

  // ---- the feed: committed checkpoints, written as the receiver takes them ------------

  /** The next commit rewrites these pages: checkpoints not yet written keep their contents. */
  beforeImageWrite(pfns: Iterable<number>): void {
    for (const f of this.feed) f.plan.preserve(pfns);
  }

  /** Writes queued checkpoints while the pipe has room, a bounded amount per turn. */
  private pump(rx: ChildProcess): void {
    if (this.pumping || this.rx !== rx) return;
    const stdin = rx.stdin!;
    for (let budget = FEED_TURN_BYTES; this.feed.length > 0; ) {
      if (stdin.writableLength >= FEED_HIGH_BYTES) {
        this.wait(rx, () => stdin.once('drain', () => this.resumePump(rx)));
        return;
      }
      if (budget <= 0) {
        this.wait(rx, () => setImmediate(() => this.resumePump(rx)));
        return;
      }
      const next = this.feed[0].records.next();
      if (next.done) {
        this.feed.shift();
        continue;
      }
      stdin.write(next.value);
      this.feedBytes -= next.value.length;
      budget -= next.value.length;
    }
    for (const done of this.feedWaiters.splice(0)) done();
  }

  private wait(rx: ChildProcess, later: () => void): void {
    this.pumping = true;
    if (this.rx === rx && !this.rxExit) later();
  }

  private resumePump(rx: ChildProcess): void {
    this.pumping = false;
    this.pump(rx);
  }

  /** Resolves once every committed checkpoint is written to rx (or rx is gone). */
  private fed(rx: ChildProcess): Promise<void> {
    if (this.feed.length === 0 || this.rx !== rx || this.rxExit) return Promise.resolve();
    return new Promise((resolve) => this.feedWaiters.push(resolve));
  }

  // ---- the receiver ------------------------------------------------------------------

  private newReceiver(): void {
    this.dropReceiver();
    this.feed = []; // checkpoints of the old receiver's stream
    this.feedBytes = 0;
    this.pumping = false;
    for (const done of this.feedWaiters.splice(0)) done();
    const [cmd, ...args] = this.opts.receiver;
    const rx = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.rx = rx;
    this.rxExit = null;
    this.rxErr = [];
    this.checkpoints = 0;
    this.domid = null;
    this.stats.receivers++;
    let banner = '';
    rx.stdout!.on('data', (d: Buffer) => {
      if (banner.length >= RECEIVER_BANNER.length) return;
      banner += d.toString('latin1');
      if (banner.length >= RECEIVER_BANNER.length && !banner.startsWith(RECEIVER_BANNER) && this.rx === rx) {
        this.rxExit = `answered ${JSON.stringify(banner.slice(0, 80))} instead of its banner`;
        rx.kill('SIGKILL');
      }
    });
    let tail = '';
    rx.stderr!.on('data', (d: Buffer) => {
      tail += d.toString('utf8');
      const lines = tail.split('\n');
      tail = lines.pop()!;
      for (const l of lines) {
        this.opts.log(`xl: ${l}`);
        this.rxErr.push(l);
        if (this.rxErr.length > STDERR_LINES_MAX) this.rxErr.shift();
      }
    });
    rx.stdin!.on('error', () => {
      /* EPIPE: reported by the exit */
    });
    rx.on('error', (e) => {
      if (this.rx === rx) this.rxExit = `could not start (${e.message})`;
    });
    rx.on('exit', (code, sig) => {
      if (this.rx !== rx) return;
      this.rxExit = this.rxExit ?? `exited (${sig ?? `code ${code}`})`;
      for (const done of this.feedWaiters.splice(0)) done(); // resume() reports the exit
    });
  }

  private live(): ChildProcess {
    if (!this.rx || this.rxExit) {
      throw new RemusError(
        ErrorCode.XEN,
        this.rx
          ? `xl migrate-receive ${this.rxExit}: ${this.rxErr.slice(-3).join(' | ')}`
          : 'no receiver: the first checkpoint has not arrived',
      );
    }
    return this.rx;
  }

  /** Kills the receiver (no failover) and destroys the domain it was building. */
  private dropReceiver(): void {
    const rx = this.rx;
    if (!rx) return;
    this.rx = null;
    if (!this.rxExit) rx.kill('SIGKILL');
    const domid = this.backupDomid();
    this.domid = null;
    if (domid !== null) {
      this.opts.log(`xen: destroying the half-built backup domain ${this.name}--incoming (id ${domid})`);
      spawn('xl', ['destroy', String(domid)], { stdio: 'ignore' }).on('error', () => {});
    }
  }

  private addon(): Pick<XenAddon, 'xenDomainInfo'> {
    return this.opts.addon ?? xenAddon();
  }

  private lookup(d: string | number): XenDomainInfo | null {
    try {
      return this.addon().xenDomainInfo(d);
    } catch {
      return null;
    }
  }

  private incoming(): XenDomainInfo | null {
    return this.lookup(`${this.name}--incoming`);
  }

  /** The backup domain (xl names it "<name>--incoming" until the failover renames it). */
  private backupDomid(): number | null {
    if (this.domid === null) this.domid = this.incoming()?.domid ?? null;
    return this.domid;
  }
}

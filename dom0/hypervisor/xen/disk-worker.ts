// disk-worker: the Xen primary's NBD server on its own thread. A Linux PV guest suspends
// only once its in-flight disk requests completed (it freezes its tasks first), so the
// server must answer while the protect process waits for a suspend — and while its main
// thread is busy with anything else (a full-copy encode, a long GC): it runs in a worker.
// (The first lab run deadlocked when the suspend wait blocked the main thread; the adapter
// now waits on a pool thread, xenSuspendAsync, but the server stays independent of it.)
// Its tap does not replicate: it posts each completed write (before the reply) on a
// MessagePort; the main thread feeds the DiskReplicator from that port as messages come,
// and drains it synchronously (receiveMessageOnPort) before the disk barrier. A write the
// guest could see complete before the barrier is therefore tagged with that checkpoint.
import {
  MessageChannel,
  type MessagePort,
  Worker,
  isMainThread,
  parentPort,
  receiveMessageOnPort,
  workerData,
} from 'node:worker_threads';
import { ErrorCode, RemusError } from '../../errors';
import type { BackupDisk, DiskChecksum, DiskLink, DiskPort, MaybePromise, ScrubPick } from '../../ports';
import type { DiskReplicator, ReplicatorStats } from '../../../blktap/replicator';
import { NbdServer } from '../../../blktap/nbd-server';
import type { DiskTap } from '../../../blktap/disk-tap';

export type TapEvent =
  | { k: 'w'; off: number; data: Uint8Array; fua: boolean }
  | { k: 'f' }
  | { k: 'z'; off: number; len: number; fua: boolean };

interface WorkerArgs {
  remusdbDiskWorker: true;
  image: string;
  host: string;
  port: number;
  exportName: string;
  tap: MessagePort;
}

const START_TIMEOUT_MS = 30_000;

/** The server side of a worker-served disk, as the main thread sees it. */
export class WorkerServedDisk {
  private closed = false;

  private constructor(
    private readonly worker: Worker,
    private readonly tapRx: MessagePort,
    readonly port: number,
    readonly sizeBytes: number,
    readonly exportName: string,
  ) {}

  /** Starts the worker's server; tap events go to `apply` (in order) from now on. */
  static async start(o: { image: string; host: string; port: number; exportName: string }): Promise<WorkerServedDisk> {
    const ch = new MessageChannel();
    const args: WorkerArgs = { remusdbDiskWorker: true, ...o, tap: ch.port2 };
    const worker = new Worker(__filename, { workerData: args, transferList: [ch.port2] });
    const ready = await new Promise<{ port: number; sizeBytes: number }>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new RemusError(ErrorCode.IO, `the disk worker did not listen within ${START_TIMEOUT_MS} ms`)),
        START_TIMEOUT_MS,
      );
      worker.once('message', (m: { port?: number; sizeBytes?: number; error?: string }) => {
        clearTimeout(timer);
        if (m.error) reject(new RemusError(ErrorCode.IO, m.error));
        else resolve({ port: m.port!, sizeBytes: m.sizeBytes! });
      });
      worker.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    }).catch(async (e: unknown) => {
      await worker.terminate();
      throw e;
    });
    return new WorkerServedDisk(worker, ch.port1, ready.port, ready.sizeBytes, o.exportName);
  }

  /** Delivers tap events as they come, and synchronously on drain(). */
  feed(apply: (e: TapEvent) => void): { drain(): void } {
    this.tapRx.on('message', apply);
    return {
      drain: () => {
        for (let m = receiveMessageOnPort(this.tapRx); m; m = receiveMessageOnPort(this.tapRx))
          apply(m.message as TapEvent);
      },
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const done = new Promise<void>((resolve) => {
      this.worker.once('exit', () => resolve());
    });
    this.worker.postMessage('close');
    await Promise.race([done, new Promise((r) => setTimeout(r, 10_000).unref())]);
    await this.worker.terminate();
    this.tapRx.close();
  }
}

/** Where the writes a served disk completed come from, in order (a WorkerServedDisk). */
export interface TapFeed {
  feed(apply: (e: TapEvent) => void): { drain(): void };
}

/**
 * The engine's DiskPort over a replicator fed from a worker's tap: every call first takes
 * the writes the worker completed so far, so the barrier tags them with this checkpoint.
 */
export class DrainingDiskPort implements DiskPort {
  private readonly drain: () => void;

  constructor(
    readonly replicator: DiskReplicator,
    served: TapFeed,
  ) {
    this.drain = served.feed((e) => {
      if (e.k === 'w') replicator.onWrite(e.off, e.data, e.fua);
      else if (e.k === 'f') replicator.onFlush();
      else replicator.onWriteZeroes(e.off, e.len, e.fua);
    }).drain;
  }

  get sizeBytes(): number {
    return this.replicator.sizeBytes;
  }
  barrier(epoch: number): void {
    this.drain();
    this.replicator.barrier(epoch);
  }
  acked(epoch: number): void {
    this.drain();
    this.replicator.acked(epoch);
  }
  connect(
    link: DiskLink,
    nextEpoch: number,
    backup: BackupDisk,
    ready: () => void,
    overflow: (reason: string) => void,
  ) {
    this.drain();
    this.replicator.connect(link, nextEpoch, backup, ready, overflow);
  }
  disconnect(): void {
    this.drain();
    this.replicator.disconnect();
  }
  scrubStart(): void {
    this.replicator.scrubStart();
  }
  scrubPick(): ScrubPick | null {
    this.drain();
    return this.replicator.scrubPick();
  }
  checksum(): MaybePromise<DiskChecksum> {
    this.drain();
    return this.replicator.checksum();
  }
  stats(): ReplicatorStats {
    return this.replicator.stats();
  }
}

// ---- inside the worker ---------------------------------------------------------------

function postingTap(port: MessagePort): DiskTap {
  return {
    onWrite: (off, data, fua) => {
      const copy = new Uint8Array(data);
      port.postMessage({ k: 'w', off, data: copy, fua }, [copy.buffer]);
    },
    onRead: () => undefined,
    onFlush: () => {
      port.postMessage({ k: 'f' });
    },
    onTrim: (off, len, fua) => {
      port.postMessage({ k: 'z', off, len, fua });
    },
    onWriteZeroes: (off, len, fua) => {
      port.postMessage({ k: 'z', off, len, fua });
    },
  };
}

async function runWorker(a: WorkerArgs): Promise<void> {
  let server: NbdServer | null = null;
  try {
    server = await NbdServer.open({
      imagePath: a.image,
      exportName: a.exportName,
      readOnly: false,
      tap: postingTap(a.tap),
      log: (m) => console.error(m),
    });
    const port = await server.listen(a.host, a.port);
    parentPort!.postMessage({ port, sizeBytes: server.sizeBytes });
  } catch (e) {
    await server?.close();
    parentPort!.postMessage({ error: (e as Error).message });
    return;
  }
  parentPort!.once('message', () => {
    void server!.close().finally(() => {
      a.tap.close();
      parentPort!.close();
    });
  });
}

if (!isMainThread && (workerData as Partial<WorkerArgs> | null)?.remusdbDiskWorker === true)
  void runWorker(workerData as WorkerArgs);

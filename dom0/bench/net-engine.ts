// net-engine: the checkpoint engine as the network benchmark drives it — a Primary
// protecting a small simulated domain, an in-process Backup, and an in-memory Link between
// them (records handed over on the next turn of the event loop, as a socket would). The
// benchmark's output gate is the guest network buffer, so every barrier and release the
// gate sees comes from a real checkpoint and a real acknowledgement.
import { assert } from '../assert';
import { Backup } from '../engine/backup';
import { realClock } from '../engine/clock';
import type { Link, OutputGate } from '../ports';
import { Primary } from '../engine/primary';
import type { Trigger } from '../engine/pacing';
import { SimDomain } from '../hypervisor/sim/sim-domain';
import { SimReplica } from '../hypervisor/sim/sim-replica';
import { BATCH_PAGES_MAX_DEFAULT, SIM_DEVICE_STATE_BYTES_MAX } from '../limits';

/** Records queued in one direction before the link counts as broken (a bound, not a tuning). */
const LINK_QUEUE_MAX = 100_000;

class MemoryLink implements Link {
  peer!: MemoryLink;
  private recordCb: (type: number, body: Buffer) => void = () => {};
  private closeCb: (e: Error | null) => void = () => {};
  private closed = false;
  private queued = 0;
  readonly backlogBytes = 0;
  constructor(readonly remote: string) {}

  send(type: number, body: Uint8Array): void {
    if (this.closed) return;
    assert(this.queued < LINK_QUEUE_MAX, 'in-memory link queue overflow');
    const copy = Buffer.from(body);
    this.queued++;
    setImmediate(() => {
      this.queued--;
      this.peer.deliver(type, copy);
    });
  }
  private deliver(type: number, body: Buffer): void {
    if (!this.closed) this.recordCb(type, body);
  }
  close(): void {
    if (this.closed) return;
    this.closed = true;
    setImmediate(() => this.peer.ended());
  }
  private ended(): void {
    if (this.closed) return;
    this.closed = true;
    this.closeCb(null);
  }
  onRecord(cb: (type: number, body: Buffer) => void): void {
    this.recordCb = cb;
  }
  onClose(cb: (e: Error | null) => void): void {
    this.closeCb = cb;
  }
}

export function memoryLinkPair(): [Link, Link] {
  const a = new MemoryLink('backup (in-process)'),
    b = new MemoryLink('primary (in-process)');
  a.peer = b;
  b.peer = a;
  return [a, b];
}

export interface BenchEngine {
  /**
   * Resolves once the first (full) checkpoint is acknowledged: outputs are protected. (Never rejects: callers time
   * out.)
   */
  protectedAt: Promise<void>;
  stats(): Record<string, unknown>;
  /** The guest's paused milliseconds so far, and the checkpoints that paused it. */
  pausedMs(): number;
  checkpoints(): number;
  stop(): void;
}

/** One domain for the whole benchmark; per measured point a Primary and a fresh Backup. */
export class EngineRig {
  private readonly domain: SimDomain;
  private replica: SimReplica | null = null;
  private backup: Backup | null = null;
  /** Backup events that should not happen in a benchmark (failover on silence, protocol errors). */
  readonly incidents: string[] = [];

  constructor(memoryBytes: number, stepsPerSec: number) {
    this.domain = SimDomain.boot(memoryBytes, 'oltp', 7, { name: 'netbench', stepsPerSec });
  }

  private newBackup(): Backup {
    return new Backup(
      realClock,
      {
        pageCountMax: this.domain.pageCount,
        batchPagesMax: BATCH_PAGES_MAX_DEFAULT,
        replicaFor: (h) => (this.replica ??= new SimReplica(h.domain, h.pageCount)),
      },
      {
        event: (name, d) => {
          if (name === 'failover' || name === 'protocol-error')
            this.incidents.push(`${name}: ${JSON.stringify(d).slice(0, 200)}`);
        },
      },
    );
  }

  /**
   * Starts protecting with `gate` as the domain's output gate, every intervalMs and, with
   * trigger 'output', whenever the gate holds a protected packet (once the backup has let go
   * of the previous primary: its GOODBYE arrives on a later turn).
   */
  async protect(
    gate: OutputGate,
    intervalMs: number,
    pacing: { trigger: Trigger; maxPauseShare: number; intervalAuto?: boolean },
  ): Promise<BenchEngine> {
    for (let i = 0; this.backup?.attached; i++) {
      assert(i < 1000, 'the backup still serves the previous primary');
      await new Promise((r) => setTimeout(r, 5));
    }
    this.backup?.close();
    const backup = (this.backup = this.newBackup());
    const primary = new Primary(this.domain, gate, realClock, {
      intervalMs,
      intervalAuto: pacing.intervalAuto === true,
      compressor: 'zstd',
      cachePages: Math.floor(this.domain.pageCount / 10),
      maxInFlight: 2,
      // Generous: a benchmark on shared cores must not fail over because the loop stalled.
      heartbeatTimeoutMs: 2 * intervalMs + 10_000,
      batchPagesMax: BATCH_PAGES_MAX_DEFAULT,
      deviceStateMax: SIM_DEVICE_STATE_BYTES_MAX,
      trigger: pacing.trigger,
      maxPauseShare: pacing.maxPauseShare,
    });
    const [toBackup, toPrimary] = memoryLinkPair();
    primary.start();
    backup.attach(toPrimary);
    primary.attach(toBackup);
    const protectedAt = new Promise<void>((resolve) => {
      const poll = setInterval(() => {
        if (primary.stats().ackedEpoch >= 1) {
          clearInterval(poll);
          resolve();
        }
      }, 5);
      poll.unref();
    });
    return {
      protectedAt,
      stats: () => primary.stats() as unknown as Record<string, unknown>,
      pausedMs: () => primary.stats().pausedMsTotal,
      checkpoints: () => primary.stats().checkpoints,
      stop: () => primary.stop(),
    };
  }

  async close(): Promise<void> {
    this.backup?.close();
    await this.domain.destroy();
  }
}

// sim-replica: a backup's copy of a simulated domain — a native arena as the committed
// memory image, the committed device state and, when the domain has one, the replica disk.
// resume() starts the guest on that very memory (no copy). From then on this host runs the
// domain unprotected and is ready to be promoted (`remusdb reprotect`): its outputs pass an
// output buffer (pass-through until a Primary takes it), and its disk writes go to a
// replicator without a backup — which records them, with the writes discarded at failover,
// in the resync bitmap, so reprotection copies exactly those blocks.
// A primary's guest larger than SIM_GUEST_BYTES_MAX (guest-size.ts) is refused with
// ERR_HANDSHAKE before any memory is mapped; the replica owns its disk from the constructor
// on, so a refused or failed construction closes it.
import { ErrorCode, RemusError } from '../../errors';
import type { DriverReplica } from '../driver';
import { OutputBuffer } from '../../engine/output-buffer';
import { realClock } from '../../engine/clock';
import { PAGE_BYTES } from '../../limits';
import { GuestMemory } from '../../memory/guest-memory';
import { loadAddon, type NativeArena } from '../../native';
import { parseHostPort } from '../../protocol/channel';
import type { BlockFile } from '../../../blktap/block-file';
import { DiskReplicator } from '../../../blktap/replicator';
import { EpochHeldDisk } from '../../../blktap/replica-disk';
import { checkSimGuestFitsHost } from './guest-size';
import { OutputSink } from './output-sink';
import { SimDomain, type SimOutput } from './sim-domain';

/** Read blocks remembered for read tracking (1 GiB of disk; about 100 bytes each). */
export const READ_TRACKING_BLOCKS_MAX = 262_144;

export class SimReplica implements DriverReplica {
  readonly image: GuestMemory;
  private readonly arena: NativeArena;
  private deviceState: Record<string, unknown> = {};
  domain: SimDomain | null = null;
  sink: OutputSink | null = null;
  /** After resume: the domain's outputs (pass-through until reprotection) and its disk's replicator. */
  gate: OutputBuffer<SimOutput> | null = null;
  replicator: DiskReplicator | null = null;
  /** The replica disk as the backup engine sees it (the file, with the writes it holds per epoch). */
  readonly disk: EpochHeldDisk | null;

  /**
   * checksumImage: at failover, CRC32C the committed image before the guest runs (verification
   * by replay: the demo and tests). It delays the resume by ~150 ms per GiB, so it is opt-in.
   */
  constructor(
    readonly name: string,
    readonly pageCount: number,
    readonly diskFile: BlockFile | null = null,
    readonly diskContinues = false,
    private readonly checksumImage = false,
  ) {
    let arena: NativeArena | null = null;
    try {
      checkSimGuestFitsHost(pageCount * PAGE_BYTES, `replica of sim:${name} (${pageCount} pages)`, ErrorCode.HANDSHAKE);
      arena = new (loadAddon().Arena)(pageCount * PAGE_BYTES, { hugePages: true });
      this.image = GuestMemory.ofArena(arena);
      this.arena = arena;
    } catch (e) {
      arena?.close();
      diskFile?.close();
      throw e;
    }
    this.disk = diskFile ? new EpochHeldDisk(diskFile) : null;
  }

  commitDeviceState(state: Uint8Array): void {
    let v: unknown;
    try {
      v = JSON.parse(Buffer.from(state).toString('utf8'));
    } catch {
      throw new RemusError(ErrorCode.PROTOCOL, 'sim device state is not JSON');
    }
    if (typeof v !== 'object' || v === null || (v as { kind?: unknown }).kind !== 'sim') {
      throw new RemusError(ErrorCode.PROTOCOL, "device state is not a simulated domain's");
    }
    this.deviceState = v as Record<string, unknown>;
  }

  /**
   * The backup let go of this replica (another domain came, or nothing of it committed):
   * its disk closes, its memory goes. Not for a resumed replica (its domain runs on it).
   */
  close(): void {
    if (this.domain) return;
    this.diskFile?.close();
    this.arena.close();
  }

  /** The backup stops: the resumed guest (if any) stops, its outputs and disk close. */
  async stop(): Promise<void> {
    this.sink?.close();
    await this.domain?.destroy();
    this.diskFile?.close();
    if (!this.domain) this.arena.close();
  }

  /** What `remusdb status` shows of this replica on the backup. */
  status(): Record<string, unknown> {
    return {
      guest: this.domain?.describe() ?? null,
      outputs: this.sink?.stats ?? null,
      disk: this.diskFile
        ? { path: this.diskFile.path, sizeBytes: this.diskFile.sizeBytes, ...this.replicator?.stats() }
        : null,
    };
  }

  get stepsPerSec(): number {
    return Number(this.deviceState.stepsPerSec ?? 1000);
  }
  get client(): string | null {
    return typeof this.deviceState.client === 'string' ? this.deviceState.client : null;
  }

  resume(
    lost: { lostDiskRanges: Array<{ offsetBytes: number; lengthBytes: number }> } = { lostDiskRanges: [] },
  ): Record<string, unknown> {
    const t0 = performance.now();
    const imageCrc32c = this.checksumImage ? this.image.crc32c() : null;
    const imageChecksumMs = this.checksumImage ? performance.now() - t0 : 0;
    // From the replica's range table: only ranges changed since the last check are read.
    const disk =
      this.diskFile && this.disk ? { diskCrc32c: this.disk.checksumNow(), diskPath: this.diskFile.path } : {};
    const client = this.client ? parseHostPort(this.client, 0) : null;
    const sink = (this.sink = new OutputSink(client));
    const gate = (this.gate = new OutputBuffer<SimOutput>((o) => sink.deliver(o)));
    gate.setPassThrough(true);
    if (this.diskFile) {
      const r = (this.replicator = new DiskReplicator(this.diskFile, realClock, {
        unackedBytesMax: 256 * 2 ** 20,
        inSync: true,
        readTrackingBlocksMax: READ_TRACKING_BLOCKS_MAX,
      }));
      for (const l of lost.lostDiskRanges) r.bitmap.markRange(l.offsetBytes, l.lengthBytes);
    }
    const r = this.replicator;
    this.domain = SimDomain.resume(
      this.arena,
      {
        name: this.name,
        stepsPerSec: this.stepsPerSec,
        onOutput: (o) => gate.push(o),
        deviceInfo: this.client ? { client: this.client } : {},
        diskPath: this.diskFile?.path,
        disk: r
          ? {
              generations: r.generations,
              write: (off, data, durable) => r.onWrite(off, data, durable),
              read: (b, crc, gen) => r.onBlockRead(b, crc, gen),
            }
          : undefined,
      },
      this.image,
    );
    return {
      ...this.domain.describe(),
      imageCrc32c,
      imageChecksumMs,
      ...disk,
      client: this.client,
      lostDiskBlocks: r?.bitmap.count ?? 0,
    };
  }
}

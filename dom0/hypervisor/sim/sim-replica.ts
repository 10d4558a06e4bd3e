// sim-replica: a backup's copy of a simulated domain — a native arena as the committed
// memory image plus the committed device state. resume() starts the guest on that very
// memory (no copy) and sends its outputs to the client named in the device state.
import { ErrorCode, RemusError } from '../../errors';
import type { Replica } from '../../engine/ports';
import { PAGE_SIZE } from '../../memory/page-cache';
import { loadAddon, type NativeArena } from '../../native';
import { parseHostPort } from '../../protocol/channel';
import { OutputSink } from './output-sink';
import { SimDomain } from './sim-domain';
import type { BlockFile } from '../../disk/block-file';

export class SimReplica implements Replica {
  readonly image: Uint8Array;
  private readonly arena: NativeArena;
  private deviceState: Record<string, unknown> = {};
  domain: SimDomain | null = null;
  sink: OutputSink | null = null;

  constructor(readonly name: string, readonly pageCount: number, readonly disk: BlockFile | null = null) {
    this.arena = new (loadAddon().Arena)(pageCount * PAGE_SIZE);
    this.image = new Uint8Array(this.arena.buffer);
  }

  commitDeviceState(state: Uint8Array): void {
    let v: unknown;
    try { v = JSON.parse(Buffer.from(state).toString('utf8')); } catch {
      throw new RemusError(ErrorCode.PROTOCOL, 'sim device state is not JSON');
    }
    if (typeof v !== 'object' || v === null || (v as { kind?: unknown }).kind !== 'sim') {
      throw new RemusError(ErrorCode.PROTOCOL, 'device state is not a simulated domain\'s');
    }
    this.deviceState = v as Record<string, unknown>;
  }

  resume(): Record<string, unknown> {
    const imageCrc32c = loadAddon().crc32c(this.image);
    const disk = this.disk ? { diskCrc32c: diskCrc32c(this.disk), diskPath: this.disk.path } : {};
    const client = typeof this.deviceState.client === 'string' ? parseHostPort(this.deviceState.client, 0) : null;
    this.sink = new OutputSink(client);
    const sink = this.sink;
    this.domain = SimDomain.resume(this.arena, {
      name: this.name, stepsPerSec: Number(this.deviceState.stepsPerSec ?? 1000), onOutput: (o) => sink.deliver(o),
      diskPath: this.disk?.path,
    });
    return { ...this.domain.describe(), imageCrc32c, ...disk, client: this.deviceState.client ?? null };
  }
}

/** CRC32C of a whole disk image, read in 1 MiB pieces (the failover report and checks). */
export function diskCrc32c(file: BlockFile): number {
  const buf = new Uint8Array(1024 * 1024);
  let crc = 0;
  for (let off = 0; off < file.sizeBytes; off += buf.length) {
    const piece = buf.subarray(0, Math.min(buf.length, file.sizeBytes - off));
    file.read(off, piece);
    crc = loadAddon().crc32c(piece, crc);
  }
  return crc;
}

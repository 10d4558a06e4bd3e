// disk-session: a backup's session driven by hand (tests 41, 51): the HELLO of a 128-page sim
// guest (with a disk, or not), and a good FULL checkpoint 1 of it.
import { GuestProgram } from '../../dom0/hypervisor/sim/guest-program';
import { PageEncoder } from '../../dom0/memory/page-codec';
import {
  PROTOCOL_VERSION,
  Rec,
  checkpointBegin,
  checkpointEnd,
  jsonBody,
  withEpoch,
} from '../../dom0/protocol/records';
import type { TapLink } from './tap-link';

export const guestImage = (): Uint8Array => {
  const m = new Uint8Array(128 * 4096);
  GuestProgram.boot(m, 'idle', 1);
  return m;
};

/** The HELLO of a 128-page sim guest 't' (session 's'), with more fields. */
export const simHello = (more: Record<string, unknown> = {}): Buffer =>
  jsonBody(
    {
      kind: 'sim',
      domain: 't',
      pageCount: 128,
      pageSize: 4096,
      compressor: 'zstd',
      intervalMs: 20,
      heartbeatTimeoutMs: 100,
      deviceStateMax: 1024,
      sessionId: 's',
      ...more,
    },
    PROTOCOL_VERSION,
  );

export const diskHello = (diskBytes: number): Buffer => simHello({ diskBytes, diskBufferBytesMax: 1 << 20 });

/** A good FULL checkpoint 1 of a 128-page guest; inside: records sent after its BEGIN (a DISK_VERIFY). */
export const fullCheckpoint = (link: TapLink, inside?: () => void): void => {
  const enc = new PageEncoder({ cachePages: 16, compressor: 'zstd', batchPagesMax: 256 });
  const all = Array.from({ length: 128 }, (_, i) => i);
  link.rec(Rec.CHECKPOINT_BEGIN, checkpointBegin(1, true));
  inside?.();
  link.rec(
    Rec.PAGE_BATCH,
    withEpoch(1, Buffer.from(enc.encode(guestImage(), BigUint64Array.from(all.map(BigInt))).container)),
  );
  link.rec(Rec.DEVICE_STATE, withEpoch(1, Buffer.from('{}')));
  link.rec(Rec.CHECKPOINT_END, checkpointEnd(1, 128));
};

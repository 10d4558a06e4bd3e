// serve: the entry point of `remusdb disk serve` — opens the image and listens, returning
// the bound port and a close() that drains in-flight requests; the server's limits
// (NBD_LIMITS) can be overridden. No replication there; serveReplicatedDisk is the protected
// domain's disk: the same server with the replicator as its tap, 512-byte sectors as its
// minimum block (replication forwards whole sectors) and write generations for read tracking.
import type { Clock } from '../dom0/ports';
import { BlockFile } from './block-file';
import type { DiskTap } from './disk-tap';
import { NbdServer, type NbdLimits } from './nbd-server';
import { SECTOR } from '../dom0/protocol/records';
import { DiskReplicator, type ReplicatorOptions } from './replicator';

export interface ServeDiskOptions {
  image: string;
  host: string;
  /** 0 picks a free port. */
  port: number;
  /** Default "remusdb"; "" is always accepted too. */
  exportName?: string;
  readOnly?: boolean;
  tap?: DiskTap;
  generations?: import('./block-generations').BlockGenerations;
  /** Overrides of NBD_LIMITS (nbd-server.ts; docs/nbd.md "Limits"). */
  limits?: Partial<NbdLimits>;
  /** Advertised and enforced minimum block; default 512 with a tap, else 1 (nbd-server.ts). */
  minBlockBytes?: number;
  log?: (message: string) => void;
}

export interface ServedDisk {
  port: number;
  sizeBytes: number;
  exportName: string;
  close(): Promise<void>;
}

export const DEFAULT_EXPORT_NAME = 'remusdb';

export async function serveDisk(o: ServeDiskOptions): Promise<ServedDisk> {
  const exportName = o.exportName ?? DEFAULT_EXPORT_NAME;
  const server = await NbdServer.open({
    imagePath: o.image,
    exportName,
    readOnly: o.readOnly ?? false,
    tap: o.tap,
    generations: o.generations,
    minBlockBytes: o.minBlockBytes,
    limits: o.limits,
    log: o.log,
  });
  let port: number;
  try {
    port = await server.listen(o.host, o.port);
  } catch (e) {
    await server.close();
    throw e;
  }
  return { port, sizeBytes: server.sizeBytes, exportName, close: () => server.close() };
}

export interface ReplicatedDisk extends ServedDisk {
  replicator: DiskReplicator;
}

/** A guest disk served over NBD whose writes (and reads) go through a replicator. */
export async function serveReplicatedDisk(
  o: Omit<ServeDiskOptions, 'tap' | 'generations' | 'readOnly'> & { clock: Clock; replication: ReplicatorOptions },
): Promise<ReplicatedDisk> {
  const source = BlockFile.open(o.image);
  const replicator = new DiskReplicator(source, o.clock, o.replication);
  let served: ServedDisk;
  try {
    served = await serveDisk({ ...o, tap: replicator, generations: replicator.generations, minBlockBytes: SECTOR });
  } catch (e) {
    source.close();
    throw e;
  }
  return {
    ...served,
    replicator,
    close: async () => {
      await served.close();
      source.close();
    },
  };
}

// serve: the entry point of `remusdb disk serve` — opens the image and listens, returning
// the bound port and a close() that drains in-flight requests. No replication here; the
// replicated backend passes its own DiskTap.
import type { DiskTap } from './disk-tap';
import { NbdServer } from './nbd-server';

export interface ServeDiskOptions {
  image: string;
  host: string;
  /** 0 picks a free port. */
  port: number;
  /** Default "remusdb"; "" is always accepted too. */
  exportName?: string;
  readOnly?: boolean;
  tap?: DiskTap;
  log?: (message: string) => void;
}

export interface ServedDisk {
  port: number;
  sizeBytes: number;
  exportName: string;
  close(): Promise<void>;
}

export const DEFAULT_EXPORT_NAME = 'remusdb';
export const DEFAULT_NBD_PORT = 10809;

export async function serveDisk(o: ServeDiskOptions): Promise<ServedDisk> {
  const exportName = o.exportName ?? DEFAULT_EXPORT_NAME;
  const server = await NbdServer.open({
    imagePath: o.image, exportName, readOnly: o.readOnly ?? false, tap: o.tap, log: o.log,
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

// replica-disk-file: the disk file a backup's replica keeps, for every driver: a new file at
// the place the backup service chose, or this host's old copy of the domain's disk (backup
// --reuse-disk: the old primary's, when this host comes back as the backup), whose size must
// be the domain's. The caller owns the file it gets (and closes it if its replica fails).
import { BlockFile } from '../../blktap/block-file';
import { ErrorCode, RemusError } from '../errors';
import type { ReplicaRequest } from './driver';

export function replicaDiskFile(req: ReplicaRequest): { file: BlockFile | null; reused: boolean } {
  const h = req.hello;
  if (h.diskBytes > 0 && req.reuseDisk) {
    const disk = BlockFile.open(req.reuseDisk);
    if (disk.sizeBytes !== h.diskBytes) {
      disk.close();
      throw new RemusError(
        ErrorCode.HANDSHAKE,
        `--reuse-disk ${req.reuseDisk} holds ${disk.sizeBytes} bytes; ${h.domain}'s disk has ${h.diskBytes}`,
      );
    }
    return { file: disk, reused: true };
  }
  return { file: req.diskFile ? BlockFile.create(req.diskFile, h.diskBytes) : null, reused: false };
}

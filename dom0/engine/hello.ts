// hello: the backup's check of a primary's HELLO (docs/protocol.md, "HELLO"). The body comes
// from the network, so every field is checked against a stated bound before anything is
// made from it; the domain name in particular names files on the backup (its replica disk),
// so it follows the one rule every domain name in remusdb follows (DOMAIN_NAME_RULE) and can
// never be a path. A HELLO that fails is ERR_HANDSHAKE with a message naming the field.
import { ErrorCode, RemusError } from '../errors';
import { COMPRESSORS } from '../memory/encodings';
import { DEVICE_STATE_BYTES_MAX, DISK_BLOCK_BYTES, DISK_DIFFERING_RUNS_MAX, PAGE_BYTES } from '../limits';
import type { BackupDisk, DiskRange } from '../ports';

/** Letters, digits, '.', '_', '-'; first a letter or digit; at most 64: never '.', '..' or a path. */
export const DOMAIN_NAME_RULE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
export const DOMAIN_NAME_RULE_TEXT = 'letters, digits, . _ - (first a letter or digit, at most 64)';

/** Kinds of domain a primary may announce (the backup's service refuses those it cannot run). */
export const DOMAIN_KINDS = ['sim', 'xen'] as const;

/** Largest replicated disk a HELLO may announce: 16 TiB (sector-aligned, as every disk offset is). */
export const DISK_BYTES_MAX = 2 ** 44;
export const DISK_SECTOR_BYTES = 512;
/** Largest write buffer a primary may ask for (the backup caps it with its own --disk-buffer). */
export const DISK_BUFFER_BYTES_MAX = 2 ** 40;
export const INTERVAL_MS_MAX = 60_000;
export const HEARTBEAT_TIMEOUT_MS_MIN = 10;
export const HEARTBEAT_TIMEOUT_MS_MAX = 600_000;
/** Longest string field (sessionId). */
export const HELLO_STRING_CHARS_MAX = 256;

export interface HelloInfo {
  kind: (typeof DOMAIN_KINDS)[number];
  domain: string;
  pageCount: number;
  pageSize: number;
  compressor: string;
  intervalMs: number;
  heartbeatTimeoutMs: number;
  deviceStateMax: number;
  sessionId: string;
  /** Size of the replicated disk (0: the domain has none), and the write buffer it asks for. */
  diskBytes: number;
  diskBufferBytesMax: number;
  /** The primary's lineage (docs/protocol.md "Reconnect"), or null: it never continues a session. */
  lineage: string | null;
  /**
   * What the primary can continue from, or null (it asks for a full copy): the last epoch
   * the backup acknowledged in its lineage, and its own last epoch.
   */
  continueFrom: ContinueFrom | null;
}

export interface ContinueFrom {
  ackedEpoch: number;
  lastEpoch: number;
}

/** A lineage id: 8 to 64 of a-z 0-9 and '-'. */
export const LINEAGE_RULE = /^[a-z0-9-]{8,64}$/;

function refuse(message: string): never {
  throw new RemusError(ErrorCode.HANDSHAKE, message);
}

/** Checks a HELLO's JSON object; pageCountMax is the largest guest this backup accepts. */
export function validateHello(v: Record<string, unknown>, pageCountMax: number): HelloInfo {
  const num = (k: string, min: number, max: number): number => {
    const x = v[k];
    if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < min || x > max) {
      refuse(`HELLO ${k} ${JSON.stringify(x) ?? 'missing'} is not an integer in [${min}, ${max}]`);
    }
    return x;
  };
  const optionalNum = (k: string, max: number): number => (v[k] === undefined ? 0 : num(k, 0, max));
  const oneOf = <T extends string>(k: string, choices: readonly T[]): T => {
    const x = v[k];
    if (typeof x !== 'string' || !(choices as readonly string[]).includes(x))
      refuse(`HELLO ${k} ${JSON.stringify(x) ?? 'missing'} is not one of ${choices.join(', ')}`);
    return x as T;
  };
  const domain = v.domain;
  if (typeof domain !== 'string' || !DOMAIN_NAME_RULE.test(domain)) {
    refuse(
      `HELLO domain ${JSON.stringify(domain)?.slice(0, 80) ?? 'missing'} is not a domain name ` +
        `(${DOMAIN_NAME_RULE_TEXT})`,
    );
  }
  const sessionId = v.sessionId;
  if (typeof sessionId !== 'string' || sessionId.length === 0 || sessionId.length > HELLO_STRING_CHARS_MAX) {
    refuse(`HELLO sessionId is missing or longer than ${HELLO_STRING_CHARS_MAX} characters`);
  }
  if (v.pageSize !== PAGE_BYTES)
    refuse(`HELLO page size ${JSON.stringify(v.pageSize) ?? 'missing'} is not ${PAGE_BYTES}`);
  const diskBytes = optionalNum('diskBytes', DISK_BYTES_MAX);
  const lineage = v.lineage === undefined ? null : v.lineage;
  if (lineage !== null && (typeof lineage !== 'string' || !LINEAGE_RULE.test(lineage))) {
    refuse(`HELLO lineage ${JSON.stringify(lineage)?.slice(0, 80)} is not 8 to 64 of a-z 0-9 -`);
  }
  const continueFrom = v.ackedEpoch === undefined && v.lastEpoch === undefined ? null : continueFromOf(v, lineage);
  if (diskBytes % DISK_SECTOR_BYTES !== 0)
    refuse(`HELLO diskBytes ${diskBytes} is not a multiple of ${DISK_SECTOR_BYTES}`);
  return {
    kind: oneOf('kind', DOMAIN_KINDS),
    domain,
    pageCount: num('pageCount', 1, pageCountMax),
    pageSize: PAGE_BYTES,
    compressor: oneOf('compressor', COMPRESSORS),
    intervalMs: num('intervalMs', 1, INTERVAL_MS_MAX),
    heartbeatTimeoutMs: num('heartbeatTimeoutMs', HEARTBEAT_TIMEOUT_MS_MIN, HEARTBEAT_TIMEOUT_MS_MAX),
    deviceStateMax: num('deviceStateMax', 0, DEVICE_STATE_BYTES_MAX),
    diskBytes,
    diskBufferBytesMax: optionalNum('diskBufferBytesMax', DISK_BUFFER_BYTES_MAX),
    sessionId,
    lineage,
    continueFrom,
  };
}

/** ackedEpoch ≤ lastEpoch, both or none, and only with a lineage. */
function continueFromOf(v: Record<string, unknown>, lineage: string | null): ContinueFrom {
  const { ackedEpoch, lastEpoch } = v;
  if (lineage === null) refuse('HELLO ackedEpoch and lastEpoch without a lineage');
  const epoch = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x >= 1;
  if (!epoch(ackedEpoch) || !epoch(lastEpoch) || ackedEpoch > lastEpoch) {
    refuse(
      `HELLO ackedEpoch ${JSON.stringify(ackedEpoch)} and lastEpoch ${JSON.stringify(lastEpoch)} ` +
        'are not epochs with acked ≤ last',
    );
  }
  return { ackedEpoch, lastEpoch };
}

/**
 * The primary's reading of a HELLO_ACK's disk fields: whether the backup's disk continues, and
 * the runs a failed disk check found different (diskDiffers: [[offset, length], …], whole
 * blocks inside the disk, at most DISK_DIFFERING_RUNS_MAX). Anything else is a protocol error.
 */
export function backupDiskOf(ack: Record<string, unknown>, diskBytes: number): BackupDisk {
  if (ack.diskContinues !== true) return { continues: false };
  const runs = ack.diskDiffers ?? [];
  if (!Array.isArray(runs) || runs.length > DISK_DIFFERING_RUNS_MAX)
    throw new RemusError(
      ErrorCode.PROTOCOL,
      `HELLO_ACK's diskDiffers is not a list of at most ${DISK_DIFFERING_RUNS_MAX}`,
    );
  const differing: DiskRange[] = runs.map((r: unknown) => {
    const [offsetBytes, lengthBytes] = Array.isArray(r) && r.length === 2 ? r : [];
    const whole = (n: unknown): n is number =>
      Number.isSafeInteger(n) && (n as number) >= 0 && (n as number) % DISK_BLOCK_BYTES === 0;
    if (!whole(offsetBytes) || !whole(lengthBytes) || lengthBytes <= 0 || offsetBytes + lengthBytes > diskBytes)
      throw new RemusError(
        ErrorCode.PROTOCOL,
        `HELLO_ACK's diskDiffers run ${JSON.stringify(r)} is not blocks of the disk`,
      );
    return { offsetBytes, lengthBytes };
  });
  return { continues: true, differing };
}

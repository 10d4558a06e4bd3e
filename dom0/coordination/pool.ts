// pool: the hosts that can take a backup, as each `remusdb agent` describes itself in etcd, and
// the choice of a backup for a domain that just failed over. Why: after a failover the domain
// runs with no backup; a new one must come from somewhere without an operator. How: every
// agent publishes one record — its address, its free memory and disk, which domains it keeps
// an old disk copy of, and its backup slots (free, backing up a domain, or running one) —
// bound to its own etcd lease, so a dead host leaves the pool when its lease ends. The choice
// is a pure function of those records: a free slot on another host with room for the domain,
// preferring a host that keeps a copy of the domain's disk (only changed blocks are copied),
// then the most free memory, then the host id (every agent would choose the same). A record is
// another host's input: it is parsed field by field, and a bad one is skipped, not trusted.
import { POOL_RECORD_BYTES_MAX, POOL_SLOTS_MAX } from '../limits';

export type SlotState = 'free' | 'backup' | 'running';

export interface PoolSlot {
  /** The replication port of this slot's backup service (on the host's address). */
  port: number;
  state: SlotState;
  /** The domain it backs up or runs (null: free). */
  domain: string | null;
}

export interface PoolHost {
  hostId: string;
  /** Where other hosts reach this one (an address or name, no port). */
  address: string;
  /** Guest memory this host accepts in all, and what its replicas and domains leave of it. */
  memoryBytesMax: number;
  memoryBytesFree: number;
  /** Free space where its replica disks go. */
  diskBytesFree: number;
  /** Domains this host keeps an earlier copy of the disk of (a reprotection copies only changes). */
  images: string[];
  slots: PoolSlot[];
}

/** What a domain needs of its new backup. */
export interface BackupNeed {
  domain: string;
  /** The host choosing (never chosen itself). */
  selfId: string;
  memoryBytes: number;
  diskBytes: number;
  /** hostId/port slots reserved by other domains' reprotections, and hosts not to choose again. */
  reserved: ReadonlySet<string>;
  excluded: ReadonlySet<string>;
}

export interface BackupChoice {
  hostId: string;
  address: string;
  port: number;
  /** It keeps an earlier copy of the domain's disk. */
  reusesDisk: boolean;
  /** One sentence: why this host. */
  why: string;
}

export function slotKey(hostId: string, port: number): string {
  return `${hostId}/${port}`;
}

/** The backup for need among hosts, or a sentence saying why there is none. */
export function chooseBackup(hosts: readonly PoolHost[], need: BackupNeed): BackupChoice | string {
  const why: string[] = [];
  const fits = hosts.flatMap((h) => {
    if (h.hostId === need.selfId) return [];
    const slot = h.slots.find((s) => s.state === 'free' && !need.reserved.has(slotKey(h.hostId, s.port)));
    if (need.excluded.has(h.hostId)) why.push(`${h.hostId}: tried already`);
    else if (!slot) why.push(`${h.hostId}: no free slot`);
    else if (h.memoryBytesFree < need.memoryBytes) why.push(`${h.hostId}: ${h.memoryBytesFree} bytes of memory free`);
    else if (h.diskBytesFree < need.diskBytes) why.push(`${h.hostId}: ${h.diskBytesFree} bytes of disk free`);
    else return [{ h, slot, reuses: h.images.includes(need.domain) }];
    return [];
  });
  if (fits.length === 0) {
    return `no host in the pool can take ${need.domain} (${why.length ? why.join('; ') : 'no other host'})`;
  }
  fits.sort(
    (a, b) =>
      Number(b.reuses) - Number(a.reuses) ||
      b.h.memoryBytesFree - a.h.memoryBytesFree ||
      (a.h.hostId < b.h.hostId ? -1 : 1),
  );
  const { h, slot, reuses } = fits[0];
  const free = `${(h.memoryBytesFree / 2 ** 30).toFixed(1)} GiB free`;
  return {
    hostId: h.hostId,
    address: h.address,
    port: slot.port,
    reusesDisk: reuses,
    why: reuses ? `it keeps a copy of ${need.domain}'s disk (${free})` : `most memory free (${free})`,
  };
}

const HOST_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
const ADDRESS = /^[A-Za-z0-9.:[\]-]{1,255}$/;
const DOMAIN = /^[A-Za-z0-9:_.-]{1,128}$/;

/** Another host's record as read from etcd; null when it is not one (too long, a field missing or off). */
export function parsePoolHost(text: string): PoolHost | null {
  if (text.length > POOL_RECORD_BYTES_MAX) return null;
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return null;
  }
  const o = v as Record<string, unknown>;
  if (typeof o !== 'object' || o === null) return null;
  const bytes = (x: unknown): x is number => Number.isSafeInteger(x) && (x as number) >= 0;
  if (typeof o.hostId !== 'string' || !HOST_ID.test(o.hostId)) return null;
  if (typeof o.address !== 'string' || !ADDRESS.test(o.address)) return null;
  if (!bytes(o.memoryBytesMax) || !bytes(o.memoryBytesFree) || !bytes(o.diskBytesFree)) return null;
  if (!Array.isArray(o.images) || !o.images.every((d) => typeof d === 'string' && DOMAIN.test(d))) return null;
  if (!Array.isArray(o.slots) || o.slots.length > POOL_SLOTS_MAX) return null;
  const slots = o.slots.map(parseSlot);
  if (slots.some((s) => s === null)) return null;
  return {
    hostId: o.hostId,
    address: o.address,
    memoryBytesMax: o.memoryBytesMax,
    memoryBytesFree: o.memoryBytesFree,
    diskBytesFree: o.diskBytesFree,
    images: o.images as string[],
    slots: slots as PoolSlot[],
  };
}

function parseSlot(v: unknown): PoolSlot | null {
  const s = v as Record<string, unknown>;
  if (typeof s !== 'object' || s === null) return null;
  if (!Number.isInteger(s.port) || (s.port as number) < 1 || (s.port as number) > 65535) return null;
  if (s.state !== 'free' && s.state !== 'backup' && s.state !== 'running') return null;
  if (s.domain !== null && (typeof s.domain !== 'string' || !DOMAIN.test(s.domain))) return null;
  if ((s.state === 'free') !== (s.domain === null)) return null;
  return { port: s.port as number, state: s.state, domain: s.domain as string | null };
}

/** An address other hosts reach an agent at: an IP address or a host name, without a port. */
export function validAddress(a: string): boolean {
  return ADDRESS.test(a) && !/^\d+$/.test(a) && (a.match(/:/g)?.length ?? 0) !== 1;
}

/** A host id for this host: its name, made safe for a key. */
export function validHostId(id: string): boolean {
  return HOST_ID.test(id);
}

// xen-addon: the typed surface of the native addon's Xen part (native-xc/src/xen_save.cc)
// and the domain facts the adapter derives from it (name, page count).
import { ErrorCode, RemusError } from '../../errors';
import { requirePart } from '../../native';

export interface XenDomainInfo {
  domid: number;
  dying: boolean;
  shutdown: boolean;
  shutdownReason: number;
  paused: boolean;
  hvm: boolean;
  maxMemKb: number;
  pages: number;
  vcpus: number;
  maxGpfn?: number;
}

export type SaveDispatch = (kind: 'suspend' | 'postcopy' | 'checkpoint', done: (rc: number) => void) => void;

export interface XenAddon {
  xenDomainInfo(d: string | number): XenDomainInfo;
  xenDomainConfigJson(domid: number): string;
  /** Suspends the guest; the wait runs on a pool thread, this thread keeps running meanwhile. */
  xenSuspendAsync(domid: number, timeoutMs: number): Promise<void>;
  xenResume(domid: number): void;
  xenPause?(domid: number): void;
  xenSaveCheckpointed(
    domid: number,
    fd: number,
    dispatch: SaveDispatch,
  ): Promise<{ rc: number; errno: number; message: string }>;
  makePipe(): [number, number];
}

export function xenAddon(): XenAddon {
  return requirePart('xen') as unknown as XenAddon;
}

/** Log-dirty and foreign-mapping bindings (native-xc/src/xen_logdirty.cc), for `remusdb record`. */
export interface XenLogdirtyAddon {
  xenDomainInfo(d: string | number): XenDomainInfo;
  /** libxl's configuration of the domain as JSON (its name, c_info.name); absent in unit tests' fakes. */
  xenDomainConfigJson?(domid: number): string;
  /** Throws ERR_XEN with details.errno (EINVAL: already on; EOPNOTSUPP: no log-dirty support). */
  xenLogdirtyEnable(domid: number): void;
  xenLogdirtyDisable(domid: number): void;
  /**
   * Copies the dirty bitmap (bit i = pfn i) into bitmap and clears it in Xen (clean = false:
   * leaves it; all zero while log-dirty is off); returns the bits set.
   */
  xenLogdirtyPeekClean(domid: number, bitmap: Buffer, clean?: boolean): number;
  /** Reads ≤ 1024 pages read-only into out (page i at i × 4096); errs[i] = 0 or its errno. Returns pages read. */
  xenMapRead(domid: number, pfns: Uint32Array | BigUint64Array, out: Buffer, errs: Int32Array): number;
  /** Drops the cached p2m mapping and the foreign-memory handle. */
  xenMapRelease(): void;
}

export function xenLogdirtyAddon(): XenLogdirtyAddon {
  const a = requirePart('xen') as unknown as Partial<XenLogdirtyAddon>;
  if (typeof a.xenLogdirtyPeekClean !== 'function' || typeof a.xenMapRead !== 'function') {
    throw new RemusError(
      ErrorCode.ADDON_PART_MISSING,
      'the native addon was built without the log-dirty bindings (native-xc/src/xen_logdirty.cc): rebuild it with ' +
        '`npm run install`',
    );
  }
  return a as XenLogdirtyAddon;
}

/** Largest guest the adapter takes (the backup keeps a whole image in memory). */
export const XEN_PAGES_MAX = (16 * 2 ** 30) / 4096;

/**
 * Pages the replica must hold: every pfn libxc may send. For PV that is the guest's p2m
 * size (maximum gpfn + 1); at least the memory it may balloon up to.
 */
export function domainPageCount(info: XenDomainInfo): number {
  const byMem = Math.ceil(info.maxMemKb / 4);
  const byGpfn = info.maxGpfn !== undefined ? info.maxGpfn + 1 : 0;
  const n = Math.max(byMem, byGpfn, info.pages);
  if (n > XEN_PAGES_MAX)
    throw new RemusError(
      ErrorCode.XEN,
      `domain ${info.domid} has ${n} pages; the Xen adapter takes at most ${XEN_PAGES_MAX} (16 GiB)`,
    );
  return n;
}

/** Guest types as libxl names them (c_info.type). */
export type XenGuestType = 'pv' | 'pvh' | 'hvm';

/**
 * The domain's guest type from its libxl configuration JSON (c_info.type); when the
 * configuration does not say, `fallback` (the hypervisor's hvm flag: pv when clear).
 */
export function configGuestType(json: string, fallback?: XenGuestType): XenGuestType {
  const t = (parseConfig(json) as { c_info?: { type?: unknown } }).c_info?.type;
  if (t === 'pv' || t === 'pvh' || t === 'hvm') return t;
  if (t === undefined && fallback) return fallback;
  throw new RemusError(
    ErrorCode.XEN,
    `the domain configuration's c_info.type is ${JSON.stringify(t)}, not pv, pvh or hvm`,
  );
}

function parseConfig(json: string): unknown {
  try {
    return JSON.parse(json);
  } catch (e) {
    throw new RemusError(ErrorCode.XEN, 'libxl returned a domain configuration that is not JSON', {}, { cause: e });
  }
}

/** The domain's name from its libxl configuration JSON (c_info.name). */
export function configName(json: string): string {
  const v = parseConfig(json);
  const name = (v as { c_info?: { name?: unknown } }).c_info?.name;
  if (typeof name !== 'string' || !name)
    throw new RemusError(ErrorCode.XEN, 'the domain configuration has no c_info.name');
  return name;
}

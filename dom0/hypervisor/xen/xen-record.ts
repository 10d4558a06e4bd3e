// xen-record: `remusdb record` — a real dirty-page trace of a running Xen domain, written as
// RDTRACE1 (docs/rdtrace.md) for capacity planning with `remusdb bench trace`.
//
// The loop: switch the domain's log-dirty mode on; clean the bitmap once; epoch 0 reads
// every page of the guest; then every interval, read-and-clear the dirty bitmap (Xen's CLEAN
// op), map the dirty pages read-only and write them as one epoch; stop after `seconds`
// (counted after epoch 0), on abort (SIGINT), or when the next epoch would pass the byte or
// epoch bound; log-dirty is switched off in a finally, also on errors.
//
// The guest is not paused. Its pages are read while it runs, which is what a live pre-copy
// (and Remus's own copy outside the short checkpoint pause) sees: a page the guest changes
// after its bit was collected, even while we copy it, has its bit set again and is carried
// by the next epoch. So the dirty page counts per interval are exactly the set Remus would
// send at that interval (pausing changes when the guest runs, not which pages it wrote), and
// the contents are real guest data with real compressibility; only the very last epoch may
// hold a page newer than its bitmap. That is the right input for capacity planning (wire
// bytes, codec ratios, cache hit rates) and it costs the guest nothing but log-dirty faults.
//
// Pages that cannot be mapped (a PV hole or ballooned-out pfn: no frame) are left out of
// their epoch and counted in `pagesUnreadable`; epoch 0 therefore holds every readable page.
import * as fs from 'node:fs';
import { ErrorCode, RemusError } from '../../errors';
import { assert } from '../../assert';
import { HEADER_SIZE, TraceWriter } from '../../trace/rdtrace';
import { configName, domainPageCount, type XenDomainInfo, type XenLogdirtyAddon } from './xen-addon';
import { PAGE_BYTES } from '../../limits';

/** Pages per foreign mapping (the binding's limit). */
export const MAP_BATCH_PAGES = 1024;
/** Epochs per trace at most (the per-epoch counts are kept for the summary). */
export const EPOCHS_MAX = 1_000_000;
const PAGE_RECORD_BYTES = 8 + 8 + PAGE_BYTES;
const EPOCH_END_BYTES = 8 + 16;
const EINVAL = 22,
  EOPNOTSUPP = 95,
  ESRCH = 3;

export interface RecordOptions {
  /** Domain name or id (not dom0). */
  domain: string;
  out: string;
  intervalMs: number;
  /** Seconds of incremental epochs after the full epoch 0. */
  seconds: number;
  /** Trace bytes (uncompressed records) at most; the next epoch that would pass it is not taken. */
  bytesMax: number;
  addon: XenLogdirtyAddon;
  signal?: AbortSignal;
  log?: (line: string) => void;
  onEpoch?: (epoch: number, pages: number) => void;
  /**
   * Takes this host's lock on the domain's dirty tracking (the one `protect` of it takes) before
   * log-dirty goes on, released at the end: a second remusdb record or protect of the domain is
   * refused at once with ERR_LOCKED. The bitmap peek alone cannot tell reliably: a recorder that
   * just cleared it leaves it empty until the guest writes again.
   */
  lockDomain?: (name: string) => { release(): void };
}

export type StopReason = 'time' | 'signal' | 'bytes' | 'epochs';

export interface RecordResult {
  domid: number;
  totalPages: number;
  epochs: number;
  /** PAGE records written (epoch 0 included). */
  pages: number;
  firstEpochPages: number;
  pagesUnreadable: number;
  dirtyP50: number;
  dirtyP99: number;
  dirtyMax: number;
  /** Record bytes before gzip (what --max-bytes bounds) and the file's size. */
  traceBytes: number;
  fileBytes: number;
  firstEpochMs: number;
  durationMs: number;
  stoppedBy: StopReason;
}

/** Bytes an epoch of n pages adds to the trace. */
export function epochBytes(pages: number): number {
  return pages * PAGE_RECORD_BYTES + EPOCH_END_BYTES;
}

export function domidOf(addon: XenLogdirtyAddon, domain: string): XenDomainInfo {
  const info = addon.xenDomainInfo(/^\d+$/.test(domain) ? Number(domain) : domain);
  if (info.domid === 0) throw new RemusError(ErrorCode.BAD_ARGUMENT, 'record traces a guest domain, not dom0');
  if (info.dying || info.shutdown) {
    throw new RemusError(
      ErrorCode.XEN,
      `domain ${domain} (id ${info.domid}) is ${info.dying ? 'dying' : 'shut down'}: nothing to record`,
    );
  }
  return info;
}

const ALREADY_ON =
  'log-dirty mode is already on — another tool is tracking its dirty pages (remusdb protect, another remusdb ' +
  'record, ' +
  "xl migrate or xl remus; for HVM possibly QEMU's VRAM tracking); record cannot share it (each reader clears the " +
  'bitmap for the other): stop that first';

/**
 * Turns log-dirty on, or says clearly why not. Xen does not reliably refuse a second ENABLE
 * (the lab's 4.17 let a second recorder in), so the bitmap is peeked first without clearing
 * it: while log-dirty is off it is all zero; bits there mean someone else is tracking.
 */
export function enableLogdirty(addon: XenLogdirtyAddon, domid: number, name: string, bitmap: Buffer): void {
  let pending = 0;
  try {
    pending = addon.xenLogdirtyPeekClean(domid, bitmap, false);
  } catch {
    /* no bitmap to peek: not on */
  }
  if (pending > 0) {
    throw new RemusError(
      ErrorCode.XEN,
      `domain ${name} (id ${domid}): ${ALREADY_ON} (${pending} dirty pages are pending in its bitmap)`,
      { domid, pending },
    );
  }
  try {
    addon.xenLogdirtyEnable(domid);
  } catch (e) {
    const errno = (e as RemusError).details?.errno;
    if (errno === EINVAL) {
      throw new RemusError(
        ErrorCode.XEN,
        `domain ${name} (id ${domid}): ${ALREADY_ON}, or it has passthrough devices (${(e as Error).message})`,
        { domid, errno },
        { cause: e },
      );
    }
    if (errno === EOPNOTSUPP) {
      throw new RemusError(
        ErrorCode.XEN,
        `domain ${name} (id ${domid}): this hypervisor cannot track its dirty pages (PV guests need shadow paging; ` +
          `Debian's 4.17.7 hypervisor is built without it — see README "The Xen lab"; HVM/PVH guests use HAP) ` +
          `(${(e as Error).message})`,
        { domid, errno },
        { cause: e },
      );
    }
    throw e;
  }
}

/** pfns whose bit is set, below totalPages, into out; returns how many. */
export function bitmapPfns(bitmap: Buffer, totalPages: number, out: Uint32Array): number {
  let n = 0;
  const bytes = Math.min(bitmap.length, Math.ceil(totalPages / 8));
  for (let i = 0; i < bytes; i++) {
    let b = bitmap[i];
    while (b !== 0) {
      const bit = 31 - Math.clz32(b & -b);
      const pfn = i * 8 + bit;
      if (pfn < totalPages) out[n++] = pfn;
      b &= b - 1;
    }
  }
  return n;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (ms <= 0 || signal?.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}

function percentile(sorted: Uint32Array, q: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : 0;
}

/** The state of one recording: the writer, buffers, counters. */
class Recorder {
  readonly writer: TraceWriter;
  readonly pages = Buffer.alloc(MAP_BATCH_PAGES * PAGE_BYTES);
  readonly errs = new Int32Array(MAP_BATCH_PAGES);
  pagesWritten = 0;
  pagesUnreadable = 0;
  traceBytes = HEADER_SIZE;
  epochs = 0;
  private inEpoch = false;
  private written = 0;
  private readonly t0 = performance.now();

  constructor(
    readonly o: RecordOptions,
    readonly domid: number,
    readonly totalPages: number,
  ) {
    this.writer = new TraceWriter(o.out, { pageSize: PAGE_BYTES, totalPages });
  }

  /** Reads pfns[0..n) in batches, writes the readable ones, ends the epoch; pages written. */
  epoch(pfns: Uint32Array, n: number): number {
    this.inEpoch = true;
    this.written = 0;
    for (let at = 0; at < n; at += MAP_BATCH_PAGES) {
      const batch = pfns.subarray(at, Math.min(n, at + MAP_BATCH_PAGES));
      this.o.addon.xenMapRead(this.domid, batch, this.pages, this.errs);
      for (let i = 0; i < batch.length; i++) {
        if (this.errs[i] !== 0) {
          this.pagesUnreadable++;
          continue;
        }
        this.writer.page(batch[i], this.pages.subarray(i * PAGE_BYTES, (i + 1) * PAGE_BYTES));
        this.written++;
      }
    }
    const written = this.written;
    this.endEpoch();
    return written;
  }

  private endEpoch(): void {
    this.writer.endEpoch(BigInt(Math.round((performance.now() - this.t0) * 1000)));
    this.traceBytes += epochBytes(this.written);
    this.pagesWritten += this.written;
    this.epochs++;
    this.inEpoch = false;
  }

  /** Closes the trace; an epoch cut by an error is ended with the pages it has. */
  close(): void {
    if (this.inEpoch) this.endEpoch();
    this.writer.close();
  }
}

export async function recordDomain(o: RecordOptions): Promise<RecordResult> {
  assert(o.intervalMs >= 1 && o.seconds >= 0 && o.bytesMax > HEADER_SIZE, 'record options');
  const log = o.log ?? ((): void => undefined);
  const info = domidOf(o.addon, o.domain);
  const { domid } = info;
  const name = o.addon.xenDomainConfigJson ? configName(o.addon.xenDomainConfigJson(domid)) : String(domid);
  const lock = o.lockDomain?.(name) ?? null;
  try {
    return await recordLocked(o, info, log);
  } finally {
    lock?.release();
  }
}

async function recordLocked(o: RecordOptions, info: XenDomainInfo, log: (l: string) => void): Promise<RecordResult> {
  const { domid } = info;
  const totalPages = domainPageCount(info);
  if (HEADER_SIZE + epochBytes(totalPages) > o.bytesMax) {
    throw new RemusError(
      ErrorCode.BAD_ARGUMENT,
      `--max-bytes ${o.bytesMax} cannot hold the first epoch of domain ${o.domain} (${totalPages} pages ` +
        `= ${HEADER_SIZE + epochBytes(totalPages)} bytes)`,
    );
  }
  const bitmap = Buffer.alloc(Math.ceil(totalPages / 64) * 8);
  const pfns = new Uint32Array(totalPages);
  let dirtyCounts = new Uint32Array(1 << 12); // incremental epochs' dirty pages, grown ×2
  enableLogdirty(o.addon, domid, o.domain, bitmap);
  log(
    `recording domain ${o.domain} (id ${domid}, ${info.hvm ? 'HVM' : 'PV'}, ${totalPages} pages) ` +
      `every ${o.intervalMs} ms for ${o.seconds} s → ${o.out}`,
  );
  let rec: Recorder | undefined;
  const tStart = performance.now();
  try {
    rec = new Recorder(o, domid, totalPages);
    o.addon.xenLogdirtyPeekClean(domid, bitmap); // from here on every write is caught
    for (let i = 0; i < totalPages; i++) pfns[i] = i;
    const firstEpochPages = rec.epoch(pfns, totalPages);
    o.onEpoch?.(0, firstEpochPages);
    const firstEpochMs = performance.now() - tStart;
    log(`epoch 0: ${firstEpochPages} pages (${rec.pagesUnreadable} unreadable) in ${firstEpochMs.toFixed(0)} ms`);
    const deadline = performance.now() + o.seconds * 1000;
    let stoppedBy: StopReason = 'time';
    let nDirty = 0;
    let last = performance.now();
    for (;;) {
      await sleep(Math.min(o.intervalMs - (performance.now() - last), deadline - performance.now()), o.signal);
      if (o.signal?.aborted) {
        stoppedBy = 'signal';
        break;
      }
      if (performance.now() >= deadline) break;
      if (rec.epochs >= EPOCHS_MAX) {
        stoppedBy = 'epochs';
        break;
      }
      last = performance.now();
      o.addon.xenLogdirtyPeekClean(domid, bitmap);
      const n = bitmapPfns(bitmap, totalPages, pfns);
      if (rec.traceBytes + epochBytes(n) > o.bytesMax) {
        stoppedBy = 'bytes';
        break;
      }
      const written = rec.epoch(pfns, n);
      if (nDirty === dirtyCounts.length) {
        const grown = new Uint32Array(Math.min(EPOCHS_MAX, dirtyCounts.length * 2));
        grown.set(dirtyCounts);
        dirtyCounts = grown;
      }
      dirtyCounts[nDirty++] = n;
      o.onEpoch?.(rec.epochs - 1, written);
    }
    rec.close();
    const sorted = dirtyCounts.slice(0, nDirty).sort();
    return {
      domid,
      totalPages,
      epochs: rec.epochs,
      pages: rec.pagesWritten,
      firstEpochPages,
      pagesUnreadable: rec.pagesUnreadable,
      dirtyP50: percentile(sorted, 0.5),
      dirtyP99: percentile(sorted, 0.99),
      dirtyMax: nDirty ? sorted[nDirty - 1] : 0,
      traceBytes: rec.traceBytes,
      fileBytes: fs.statSync(o.out).size,
      firstEpochMs,
      durationMs: performance.now() - tStart,
      stoppedBy,
    };
  } finally {
    try {
      rec?.close();
    } catch {
      /* the error being thrown matters more */
    }
    disableQuietly(o.addon, domid, log);
  }
}

/** Log-dirty off (a destroyed domain needs nothing); the cached p2m mapping released. */
function disableQuietly(addon: XenLogdirtyAddon, domid: number, log: (l: string) => void): void {
  try {
    addon.xenLogdirtyDisable(domid);
    log(`log-dirty mode of domain ${domid} switched off`);
  } catch (e) {
    if ((e as RemusError).details?.errno !== ESRCH)
      log(`warning: could not switch log-dirty off for domain ${domid}: ${(e as Error).message}`);
  }
  try {
    addon.xenMapRelease();
  } catch {
    /* nothing held */
  }
}

// precopy: live pre-copy of a session's first checkpoint, as Xen's save loop does before it
// enters checkpoint mode. The first checkpoint of a session must carry every page; copying
// all of a multi-GiB guest while it is suspended would be an outage of seconds to minutes
// (and the backup would hear nothing meanwhile). Instead, with dirty tracking armed and the
// guest running (its outputs flow: it is not protected yet), every page is read and sent,
// then the pages written meanwhile, in rounds, until what remains is small, stops
// shrinking, or the rounds run out; the first checkpoint then suspends the guest and copies
// only what remains (an ordinary stop-and-copy). All of it travels as one FULL checkpoint
// whose later records of a pfn replace earlier ones (docs/protocol.md, "Pre-copy").
//
// Why it is right: a round first collects (and re-arms) the dirty set, then reads those
// pages; round 0 arms each range before it reads that range's pages. A page written after
// the collect is marked again and is sent by a later round or by the final capture (which
// collects what was written since the last round), so the last copy of every page the
// backup applies is its content at the final suspend. A round's collect may walk the guest
// a range per turn (a whole walk is O(guest)): each range is re-armed when it is collected,
// so a write after that is caught by the next collect, and the pages it lists are read only
// after it, as before.
import { assert } from '../assert';
import { PAGE_BYTES } from '../limits';
import type { Capture } from '../ports';
import { capturedPages } from './captured-pages';
import type { ResidentBuffer } from './resident-buffer';

/** What a domain offers for pre-copy: reads while it runs, and a re-arming dirty collect. */
export interface LiveMemory {
  readonly pageCount: number;
  /** Copies pages pfns[0..count) into `into` while the guest runs (torn pages are fine). */
  readLive(pfns: Uint32Array, count: number, into: Uint8Array): void;
  /**
   * Writes the pfns of [firstPfn, endPfn) (default: all) written since that range was last
   * collected (or captured) into `into`, ascending, and re-arms the range; returns how many.
   */
  collectDirtyLive(into: Uint32Array, firstPfn?: number, endPfn?: number): number;
}

/** Most rounds after the first full pass (Xen's live migration stops after a handful, too). */
export const PRECOPY_ROUNDS_MAX = 5;
/**
 * Stop the rounds once at most this many pages remain: the final pause copies them. Small,
 * since the pause reads them with the guest suspended: at 4096 the final set was 850–3300
 * pages and the capture 4–21 ms on the 2-core test VM, at 256 it was 270–420 pages and
 * 2–9 ms (docs/scale.md). A round over a few hundred pages takes milliseconds, and the
 * rounds still stop when the set stops shrinking or PRECOPY_ROUNDS_MAX have run.
 */
export const PRECOPY_REMAINING_PAGES_MIN = 256;
/**
 * Octets queued on the channel past which the pre-copy waits (the backlog never balloons).
 * Small: when the connection drains, Node hands everything queued to TLS in one call, and
 * encrypting 32 MiB at once stalled the primary's event loop 150–450 ms (2-core host);
 * 4 MiB is ~25 ms there, and the kernel's socket buffer keeps the link busy meanwhile.
 */
export const PRECOPY_BACKLOG_BYTES_MAX = 4 * 1024 * 1024;

/**
 * Pages read, encoded and queued per event-loop turn. A turn is the primary's (and, once
 * decoded, the backup's) longest stall: 1024 pages (4 MiB) kept the loop busy 40–80 ms on a
 * 2-core host shared with the guest and the backup (17 stalls over 40 ms in a 1 GiB pre-copy,
 * max 79); 256 pages brought that to 2–3, max 44–55, at the same throughput (201–252 MB/s
 * either way, noise included).
 */
export const PRECOPY_BATCH_PAGES_MAX = 256;

/**
 * Pages whose dirty state one turn collects at the end of a round. A collect walks every
 * page's entry (the sim's page tables: ~37 ms at 8 GiB on the 2-core host, one stall of the
 * primary's loop per round; docs/scale.md); a quarter of a million pages is ~5 ms a turn.
 */
export const LIVE_COLLECT_PAGES_PER_TURN = 262_144;

export interface PrecopyProgress {
  round: number;
  /** Pages sent so far (with repeats: a page sent in two rounds counts twice). */
  sentPages: number;
  /** Pages still to send in this round, and the time that takes at the rate so far (ms). */
  roundRemainingPages: number;
  etaMs: number;
  /** Pages the last collect found dirty (what the next round, or the final pause, copies). */
  dirtyPagesLast: number;
  mbPerSec: number;
  elapsedMs: number;
}

/**
 * One turn of a walk over the guest's dirty state: collects pfns [at, at + perTurn) into
 * `into`; returns how many, and where the next turn starts (pageCount: the walk is done).
 */
export function collectRange(
  mem: LiveMemory,
  into: Uint32Array,
  at: number,
  perTurn: number,
): { count: number; end: number } {
  const end = Math.min(mem.pageCount, at + perTurn);
  return { count: mem.collectDirtyLive(into, at, end), end };
}

/** The pre-copy's bounds (defaults: the PRECOPY_* constants above). */
export interface PrecopyLimits {
  remainingPagesMin?: number;
  roundsMax?: number;
  collectPagesPerTurn?: number;
}

/** A continued session's pre-copy (primary.ts): what round 0 sends, and who hears of each collect. */
export interface PrecopyStart {
  /**
   * Round 0's pfns (the pages written since the backup's last acknowledgement, each once),
   * already armed; absent: every page, armed a range ahead of its reads.
   */
  round0?: Uint32Array;
  /** Each range a round's collect found written (pfns valid during the call). */
  onCollect?: (pfns: Uint32Array, count: number) => void;
}

export class Precopy {
  round = 0;
  sentPages = 0;
  /** Round 0 sends every pfn in order (todo is null then) or a given list; later rounds send todo[0, todoCount). */
  private todo: Uint32Array | null = null;
  private todoCount: number;
  private next = 0;
  private dirtyLast = 0;
  /** Where the end of the round collects into; holds `collected` pfns, ascending, of [0, collectAt). */
  private scratch: Uint32Array;
  private collectAt = 0;
  private collected = 0;
  /** Round 0 has armed dirty tracking for pfns [0, armedTo): it reads only pages armed before. */
  private armedTo = 0;
  private readonly pages: Uint8Array;
  private readonly pfns: Uint32Array;
  private readonly remainingPagesMin: number;
  private readonly roundsMax: number;
  private readonly collectPagesPerTurn: number;

  private readonly onCollect: PrecopyStart['onCollect'];

  constructor(
    private readonly mem: LiveMemory,
    private readonly batchPagesMax: number,
    private readonly startedAtMs: number,
    limits: PrecopyLimits = {},
    start: PrecopyStart = {},
  ) {
    this.remainingPagesMin = limits.remainingPagesMin ?? PRECOPY_REMAINING_PAGES_MIN;
    this.roundsMax = limits.roundsMax ?? PRECOPY_ROUNDS_MAX;
    this.collectPagesPerTurn = limits.collectPagesPerTurn ?? LIVE_COLLECT_PAGES_PER_TURN;
    assert(batchPagesMax >= 1 && mem.pageCount >= 1 && this.collectPagesPerTurn >= 1, 'pre-copy sizes');
    this.scratch = new Uint32Array(mem.pageCount);
    this.todoCount = mem.pageCount;
    this.onCollect = start.onCollect;
    if (start.round0) {
      assert(start.round0.length <= mem.pageCount, 'round 0 lists each page once');
      this.todo = start.round0;
      this.todoCount = start.round0.length;
      this.armedTo = mem.pageCount; // the pages were collected (re-armed) before
    }
    this.pages = new Uint8Array(batchPagesMax * PAGE_BYTES);
    this.pfns = new Uint32Array(batchPagesMax);
  }

  /** The next batch of this round, read live; null once the round has sent everything. */
  nextBatch(): { pfns: Uint32Array; pages: Uint8Array } | null {
    const n = Math.min(this.batchPagesMax, this.todoCount - this.next);
    if (n <= 0) return null;
    let pfns: Uint32Array;
    if (this.todo) pfns = this.todo.subarray(this.next, this.next + n);
    else {
      this.armUpTo(this.next + n);
      pfns = this.pfns.subarray(0, n);
      for (let i = 0; i < n; i++) pfns[i] = this.next + i;
    }
    const pages = this.pages.subarray(0, n * PAGE_BYTES);
    this.mem.readLive(pfns, n, pages);
    this.next += n;
    this.sentPages += n;
    return { pfns, pages };
  }

  /**
   * Round 0 arms dirty tracking a range ahead of its reads (a collect whose list is dropped):
   * what is written from then on is sent again. A whole walk at once is O(guest): ~60 ms at
   * 8 GiB once the guest's memory is mapped (a second session's pre-copy).
   */
  private armUpTo(endPfn: number): void {
    while (this.armedTo < endPfn)
      this.armedTo = collectRange(this.mem, this.scratch, this.armedTo, this.collectPagesPerTurn).end;
  }

  /**
   * After the round's last batch: collects one range of the pages written meanwhile (a bounded
   * walk per turn). True once the whole guest is collected: then endRound.
   */
  collectSome(): boolean {
    assert(this.next === this.todoCount, 'a round collects after all its pages');
    assert(this.armedTo === this.mem.pageCount, 'round 0 armed every page before it read it');
    const into = this.scratch.subarray(this.collected);
    const r = collectRange(this.mem, into, this.collectAt, this.collectPagesPerTurn);
    this.onCollect?.(into, r.count);
    this.collected += r.count;
    this.collectAt = r.end;
    assert(this.collected <= this.collectAt, 'a range yields each of its pfns at most once');
    return this.collectAt === this.mem.pageCount;
  }

  /**
   * Ends a round once collectSome has walked the guest. True when another round is worth it
   * (more remains than the final pause should copy, it shrank, and rounds are left).
   */
  endRound(): boolean {
    assert(this.next === this.todoCount && this.collectAt === this.mem.pageCount, 'a round ends after its collect');
    const before = this.todoCount;
    const dirty = this.scratch;
    const n = this.collected;
    this.collectAt = 0;
    this.collected = 0;
    this.dirtyLast = n;
    const again = this.round < this.roundsMax && n > this.remainingPagesMin && (this.round === 0 || n < before);
    if (!again) {
      // These pages stay unsent: the final capture must carry them, so they count as dirty there.
      this.pending = dirty.subarray(0, n);
      return false;
    }
    this.round++;
    // The finished round's list becomes the next scratch (allocated once, after round 0; a
    // given round 0's list is shorter than the guest).
    const reuse = this.todo !== null && this.todo.length === this.mem.pageCount;
    this.scratch = reuse ? this.todo! : new Uint32Array(this.mem.pageCount);
    this.todo = dirty;
    this.todoCount = n;
    this.next = 0;
    return true;
  }

  /** Pages collected by the last round but not sent: the final checkpoint sends them too. */
  pending: Uint32Array = new Uint32Array(0);

  /**
   * The final stop-and-copy (the guest is suspended): the capture's dirty pages plus those the
   * last round collected but did not send, read now (into `into`, prepared before the pause).
   * Each pfn once.
   */
  finalCapture(cap: Capture, into?: ResidentBuffer): Capture {
    return withPagesRead(cap, notIn(this.pending, cap.pfns.subarray(0, cap.count)), this.mem, into);
  }

  progress(nowMs: number): PrecopyProgress {
    const elapsedMs = Math.max(1, nowMs - this.startedAtMs);
    const remaining = this.todoCount - this.next;
    return {
      round: this.round,
      sentPages: this.sentPages,
      roundRemainingPages: remaining,
      etaMs: this.sentPages > 0 ? Math.round((remaining * elapsedMs) / this.sentPages) : -1,
      dirtyPagesLast: this.dirtyLast,
      mbPerSec: (this.sentPages * PAGE_BYTES) / 1e6 / (elapsedMs / 1000),
      elapsedMs,
    };
  }
}

/**
 * The capture plus pages extra (none of them in it), read now from mem: the domain is
 * suspended, so they hold their content at this checkpoint. Each pfn once.
 */
export function withPagesRead(cap: Capture, extra: Uint32Array, mem: LiveMemory, into?: ResidentBuffer): Capture {
  if (extra.length === 0) return cap;
  const bytes = (cap.count + extra.length) * PAGE_BYTES;
  const pages = into ? into.take(bytes) : new Uint8Array(bytes);
  pages.set(capturedPages(cap, 0, cap.count));
  mem.readLive(extra, extra.length, pages.subarray(cap.count * PAGE_BYTES));
  const pfns = new Uint32Array(cap.count + extra.length);
  pfns.set(cap.pfns.subarray(0, cap.count));
  pfns.set(extra, cap.count);
  return { pfns, count: pfns.length, pages, deviceState: cap.deviceState };
}

/**
 * The pfns of `list` that are not in `except`, in list's order. Both come from dirty collects,
 * ascending: then one merge pass (a Set of a large final set cost milliseconds of the pause).
 */
export function notIn(list: Uint32Array, except: Uint32Array): Uint32Array {
  if (!ascending(list) || !ascending(except)) {
    const inExcept = new Set(except);
    return list.filter((p) => !inExcept.has(p));
  }
  const out = new Uint32Array(list.length);
  let n = 0,
    j = 0;
  for (const p of list) {
    while (j < except.length && except[j] < p) j++;
    if (j < except.length && except[j] === p) continue;
    out[n++] = p;
  }
  return out.subarray(0, n);
}

function ascending(a: Uint32Array): boolean {
  for (let i = 1; i < a.length; i++) if (a[i] <= a[i - 1]) return false;
  return true;
}

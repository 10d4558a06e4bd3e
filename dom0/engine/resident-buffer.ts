// resident-buffer: memory for a pause, faulted in before the pause.
//
// Why: the first write to fresh memory is a page fault, and on a virtualised dom0 a fault can
// cost far more than the copy it serves. On the 2-core test VM (its host takes freed memory
// back), copying 3000 guest pages into a new buffer took 38–40 ms, into a buffer written
// before 1.0–1.9 ms (docs/scale.md, "Fresh memory"). The pages a session's first checkpoint
// reads with the guest suspended (what the pre-copy's last round left, or what the backup
// has not acknowledged) are known before the suspend, so the buffer they go to is allocated
// and written while the guest still runs; the pause then only copies.
//
// How: prepare(bytes) grows the buffer to at least `bytes` and writes every page of it (the
// guest runs meanwhile); take(bytes) hands out its first `bytes` if they fit, else a fresh
// allocation (counted: freshTakes says the headroom was short). A buffer taken is given away
// with its capture (which may stay queued for a while): the next prepare() allocates anew.
import { assert } from '../assert';
import { PAGE_BYTES } from '../limits';

/**
 * The pages a prepared buffer holds for a known set of `known` pages: those, and room for what
 * the capture itself finds written between the last collect and the suspend — as many again
 * (the last pre-copy round wrote `known` while it ran; the suspend follows at once), at least
 * PAUSE_BUFFER_HEADROOM_PAGES_MIN. Not more: preparing is itself fresh memory written, a loop
 * stall of its own (16 MiB of headroom stalled the primary 61 ms on the test VM). A take that
 * needs more allocates, and counts it in freshTakes.
 */
export function pauseBufferPages(known: number): number {
  return known + Math.max(PAUSE_BUFFER_HEADROOM_PAGES_MIN, known);
}
export const PAUSE_BUFFER_HEADROOM_PAGES_MIN = 256;

/**
 * The pages a continued checkpoint's buffer holds: the `known` pages it reads in its pause
 * (unacknowledged, and those collected from dirty tracking just before) and room for what the
 * guest writes between that collect and the suspend, a few intervals' worth: not as many
 * again, since preparing is fresh memory written, a loop stall of its own (as many again took
 * the primary's loop 180–370 ms after a 2 s cut at 2000 tx/s, docs/scale.md).
 */
export function continuedPauseBufferPages(known: number): number {
  return known + CONTINUED_HEADROOM_PAGES;
}
export const CONTINUED_HEADROOM_PAGES = 1024;

/**
 * What a continued session writes of its pause buffer per turn before its checkpoints start
 * (8 MiB: ~20 ms of first touches on the test VM).
 */
export const PAUSE_BUFFER_STEP_BYTES = 8 * 1024 * 1024;

export class ResidentBuffer {
  /** Written in full by prepare(), not yet given to a capture (empty once taken). */
  private buf = new Uint8Array(0);
  /** buf[0, writtenBytes) has been written (so it is resident); wantBytes: what reserve() asked for. */
  private writtenBytes = 0;
  private wantBytes = 0;
  /** take() calls that found no prepared buffer large enough and allocated fresh memory. */
  freshTakes = 0;

  /** Grows to at least `bytes` (whole pages) and writes them all: outside the pause. */
  prepare(bytes: number): void {
    this.reserve(bytes);
    this.prepareSome(Number.POSITIVE_INFINITY);
  }

  /** Grows to at least `bytes` (whole pages) without writing them: prepareSome() does, a piece at a time. */
  reserve(bytes: number): void {
    assert(Number.isSafeInteger(bytes) && bytes >= 0, 'a size in bytes');
    const want = Math.ceil(bytes / PAGE_BYTES) * PAGE_BYTES;
    if (this.buf.length < want) {
      this.buf = new Uint8Array(want);
      this.writtenBytes = 0;
    }
    this.wantBytes = want;
  }

  /** Writes up to maxBytes more of what reserve() asked for; true once all of it is written. */
  prepareSome(maxBytes: number): boolean {
    const to = Math.min(this.wantBytes, this.writtenBytes + maxBytes);
    // each page written now, so that none faults in the pause
    if (to > this.writtenBytes) this.buf.fill(0, this.writtenBytes, to);
    this.writtenBytes = Math.max(this.writtenBytes, to);
    return this.writtenBytes >= this.wantBytes;
  }

  /** `bytes` for a capture: the prepared buffer when it is large enough (given away), else fresh. */
  take(bytes: number): Uint8Array {
    assert(Number.isSafeInteger(bytes) && bytes >= 0, 'a size in bytes');
    if (bytes > 0 && bytes <= this.buf.length) {
      const given = this.buf.subarray(0, bytes);
      this.release();
      return given;
    }
    this.freshTakes++;
    return new Uint8Array(bytes);
  }

  /** Lets a prepared buffer go (its session ended before the pause). */
  release(): void {
    this.buf = new Uint8Array(0);
    this.writtenBytes = this.wantBytes = 0;
  }

  get preparedBytes(): number {
    return this.buf.length;
  }
}

// image-crcs: the backup's CRC32C of every page of its image, kept up to date as it commits
// checkpoints, so that a continued session's MEMORY_VERIFY costs a pass over 4 octets per
// page instead of a read of the whole image. Read in full, the image held the session (and so
// every output of the primary) ~2.6 s at 8 GiB after each reconnect: its records waited while
// the backup digested 8 GiB at ~3 GB/s (docs/scale.md).
//
// How: an incremental commit computes the CRCs of the pages it writes, from the buffer it
// writes them from. A FULL checkpoint decodes in place, page by page, and may carry a pfn
// more than once; so the table is stale from its first batch, and once it commits a pass of
// fillSome() reads the image a few pages per turn (IMAGE_DIGEST_STEP_PAGES) to fill it. A
// commit during the pass sets what it writes, and the pass reads the image as it is then:
// either way an entry is the CRC of what its page holds. A verify before the pass ends
// finishes it first.
//
// What it checks: that the backup's image is what the primary sent, as the primary's own
// table (PageCrcTable) says it sent it. It does not re-read the image, so it would not see
// the image changed behind the engine's back after a commit (there is no memory scrub).
import { assert } from '../assert';
import type { GuestMemory } from '../memory/guest-memory';
import { IMAGE_DIGEST_STEP_PAGES, PageCrcTable } from './continuation';

/**
 * The background pass takes a step (IMAGE_DIGEST_STEP_PAGES, ~3 ms) this often: ~400 MB/s, 21 s
 * for 8 GiB, ~15 % of a core. A step every turn took most of a core for the first ~3 s of
 * protection at 8 GiB on the 2-core test VM, where the guest, the primary and the backup
 * already share two cores. A verify that comes first finishes the pass a step per turn.
 */
export const IMAGE_CRCS_FILL_PERIOD_MS = 20;

/**
 * The primary's PageCrcTable, on the backup: update() is what a commit wrote; the pass fills
 * what a FULL checkpoint decoded in place.
 */
export class ImageCrcs extends PageCrcTable {
  /** Pages [0, filledTo) were read by the pass since the last FULL checkpoint began; pageCount: all current. */
  private filledTo = 0; // a new image: its first checkpoint is FULL

  constructor(pageCount: number) {
    assert(Number.isSafeInteger(pageCount) && pageCount >= 1, 'image pages');
    super(pageCount);
  }

  get complete(): boolean {
    return this.filledTo === this.pageCount;
  }

  /** A FULL checkpoint rewrites the image in place: every entry is stale until the pass has read it. */
  invalidate(): void {
    this.filledTo = 0;
  }

  /** One step of the pass: the CRCs of up to stepPages more pages, read from image. True once complete. */
  fillSome(image: GuestMemory, stepPages = IMAGE_DIGEST_STEP_PAGES): boolean {
    assert(image.pageCount === this.pageCount && stepPages >= 1, 'the pass reads this image');
    const end = Math.min(this.pageCount, this.filledTo + stepPages);
    image.pageCrcs(this.filledTo, this.crcs.subarray(this.filledTo, end));
    this.filledTo = end;
    return this.complete;
  }

  /** Region digests as the primary computes them; only once the pass has filled the table. */
  override digests(regionPages: number): Uint32Array {
    assert(this.complete, 'digests of a table the pass has filled');
    return super.digests(regionPages);
  }
}

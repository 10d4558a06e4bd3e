// image-crcs: the backup's CRC32C of every page of its image, kept up to date as it commits
// checkpoints, so that a continued session's MEMORY_VERIFY costs a pass over 4 octets per
// page instead of a read of the whole image. Read in full, the image held the session (and so
// every output of the primary) ~2.6 s at 8 GiB after each reconnect: its records waited while
// the backup digested 8 GiB at ~3 GB/s (docs/scale.md).
//
// How: an incremental commit computes the CRCs of the pages it writes, from the buffer it
// writes them from. A checkpoint decoded in place (FULL, or a continued session's first) may
// carry a pfn more than once: each batch's pages are read back from the image as they land,
// so an entry is always the CRC of what its page holds, and the table is whole once a FULL
// checkpoint commits.
//
// What it checks: that the backup's image is what the primary sent, as the primary's own
// table (PageCrcTable) says it sent it. It does not re-read the image, so it would not see
// the image changed behind the engine's back after a commit (there is no memory scrub).
import { assert } from '../assert';
import type { GuestMemory } from '../memory/guest-memory';
import { PageCrcTable } from './continuation';

/**
 * The primary's PageCrcTable, on the backup: update() is what a commit wrote, readPages() what
 * a checkpoint decoded in place (a FULL one, a continued session's first) — read back from the
 * image as each batch lands, so a FULL copy leaves the table whole at its commit. A pass over
 * the image after the copy instead (21 s at 8 GiB in the background) put what was left of it
 * into the first hold of a continued session that came during it: 0.5–1 s at 8 GiB.
 */
export class ImageCrcs extends PageCrcTable {
  /**
   * Every entry is its page's CRC as the image holds it. False from a FULL checkpoint's BEGIN
   * (and for a new image) until that checkpoint commits: it carried every page (CHECKPOINT_END
   * checks), each read back here as it was decoded, its disk references at the commit.
   */
  private whole = false;

  constructor(pageCount: number) {
    assert(Number.isSafeInteger(pageCount) && pageCount >= 1, 'image pages');
    super(pageCount);
  }

  get complete(): boolean {
    return this.whole;
  }

  /** A FULL checkpoint begins: it rewrites the image in place, and the table with it. */
  beginFull(): void {
    this.whole = false;
  }

  /** That FULL checkpoint committed: every page was read back as it was decoded. */
  fullCommitted(): void {
    this.whole = true;
  }

  /** Pages just decoded into the image in place: their CRCs, read from it a run of pfns at a time. */
  readPages(image: GuestMemory, pfns: Uint32Array): void {
    assert(image.pageCount === this.pageCount, 'the table of this image');
    for (let i = 0; i < pfns.length; ) {
      let j = i + 1;
      while (j < pfns.length && pfns[j] === pfns[j - 1] + 1) j++;
      image.pageCrcs(pfns[i], this.crcs.subarray(pfns[i], pfns[i] + (j - i)));
      i = j;
    }
  }

  /** Region digests as the primary computes them; only of a whole table. */
  override digests(regionPages: number): Uint32Array {
    assert(this.whole, 'digests of a whole table');
    return super.digests(regionPages);
  }
}

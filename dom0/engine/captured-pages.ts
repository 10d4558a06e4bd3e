// captured-pages: entries first..first+n-1 of a capture as one buffer, whichever form the
// capture's pages take (one buffer, or guest memory in segments for a full capture).
import { assert } from '../assert';
import { PAGE_BYTES } from '../limits';
import type { Capture } from '../ports';

export function capturedPages(cap: Capture, first: number, n: number): Uint8Array {
  assert(Number.isInteger(first) && first >= 0 && n >= 0 && first + n <= cap.count, 'entries inside the capture');
  if (cap.pages instanceof Uint8Array) return cap.pages.subarray(first * PAGE_BYTES, (first + n) * PAGE_BYTES);
  if (n === 0) return new Uint8Array(0);
  assert(cap.pfns[first] === first, 'a capture in guest memory lists every pfn in order');
  return cap.pages.range(first, n);
}

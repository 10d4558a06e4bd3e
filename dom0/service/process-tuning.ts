// process-tuning.ts: what a long-running replication process (protect, backup) sets once at
// start. Large transient buffers stay in the heap (native-xc/src/malloc_tuning.cc says why);
// bounded by MALLOC_TRIM_THRESHOLD_BYTES of free heap kept resident.
import { assert } from '../assert';
import { MALLOC_MMAP_THRESHOLD_BYTES, MALLOC_TRIM_THRESHOLD_BYTES } from '../limits';
import { loadAddon } from '../native';
import { RECORD_BODY_MAX } from '../protocol/records';

export function tuneReplicationProcess(log: (line: string) => void): void {
  assert(MALLOC_MMAP_THRESHOLD_BYTES > RECORD_BODY_MAX, 'a record of the largest size stays in the heap');
  assert(MALLOC_TRIM_THRESHOLD_BYTES >= MALLOC_MMAP_THRESHOLD_BYTES, 'a freed large buffer is kept for reuse');
  if (!loadAddon().keepLargeBuffersResident(MALLOC_MMAP_THRESHOLD_BYTES, MALLOC_TRIM_THRESHOLD_BYTES)) {
    log('warning: malloc tuning refused: large buffers come from fresh mappings (slower copies)');
  }
}

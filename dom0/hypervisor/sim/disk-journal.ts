// disk-journal: how the simulated vCPU's disk writes reach dom0's replicator. The vCPU
// (a worker thread) writes its disk image itself — a blkback-like backend in the guest's
// thread — and appends each completed write, with a copy of its data, to this shared ring.
// The main thread drains the ring every few milliseconds and, at suspend, after the vCPU has
// stopped: so every write the guest saw complete before a checkpoint's suspend is drained
// (and tagged with that epoch) before the engine's disk barrier. A full ring makes the vCPU
// wait (back-pressure), never drops a write.
//
//   words: [head, tail]; slot i: u32 kind (1 write, 2 durable write), u32 block, then 4096 octets
import { assert } from '../../assert';
import { DB_PAGE, type ModelDisk } from '../../trace/db-memory-model';
import type { BlockFile } from '../../disk/block-file';

export const JOURNAL_SLOTS = 128;
const HEADER_WORDS = 4, SLOT_BYTES = 8 + DB_PAGE;
const J_HEAD = 0, J_TAIL = 1;

export function makeJournal(): SharedArrayBuffer {
  return new SharedArrayBuffer(HEADER_WORDS * 4 + JOURNAL_SLOTS * SLOT_BYTES);
}

/** The vCPU's disk: its image file, with each write journaled for replication. */
export class JournaledDisk implements ModelDisk {
  private readonly words: Int32Array;
  private readonly bytes: Uint8Array;
  private readonly dv: DataView;
  readonly blocks: number;

  constructor(private readonly file: BlockFile, sab: SharedArrayBuffer) {
    this.words = new Int32Array(sab, 0, HEADER_WORDS);
    this.bytes = new Uint8Array(sab);
    this.dv = new DataView(sab);
    this.blocks = Math.floor(file.sizeBytes / DB_PAGE);
  }

  read(block: number, into: Uint8Array): void { this.file.read(block * DB_PAGE, into); }

  write(block: number, from: Uint8Array, durable: boolean): void {
    assert(from.length === DB_PAGE && block >= 0 && block < this.blocks, 'journaled write');
    this.file.write(block * DB_PAGE, from);
    for (;;) {
      const tail = Atomics.load(this.words, J_TAIL), head = Atomics.load(this.words, J_HEAD);
      if (tail - head < JOURNAL_SLOTS) {
        const at = HEADER_WORDS * 4 + (tail % JOURNAL_SLOTS) * SLOT_BYTES;
        this.dv.setUint32(at, durable ? 2 : 1, true);
        this.dv.setUint32(at + 4, block, true);
        this.bytes.set(from, at + 8);
        Atomics.store(this.words, J_TAIL, tail + 1);
        return;
      }
      Atomics.wait(this.words, J_HEAD, head, 5); // full: wait for the main thread to drain
    }
  }
}

/** Main thread: hands every journaled write, in order, to onWrite. Returns how many. */
export function drainJournal(sab: SharedArrayBuffer, onWrite: (offsetBytes: number, data: Buffer, durable: boolean) => void): number {
  const words = new Int32Array(sab, 0, HEADER_WORDS), dv = new DataView(sab);
  const tail = Atomics.load(words, J_TAIL);
  let head = Atomics.load(words, J_HEAD), n = 0;
  for (; head < tail; head++, n++) {
    const at = HEADER_WORDS * 4 + (head % JOURNAL_SLOTS) * SLOT_BYTES;
    const kind = dv.getUint32(at, true), block = dv.getUint32(at + 4, true);
    onWrite(block * DB_PAGE, Buffer.from(new Uint8Array(sab, at + 8, DB_PAGE)), kind === 2);
  }
  Atomics.store(words, J_HEAD, head);
  Atomics.notify(words, J_HEAD);
  return n;
}

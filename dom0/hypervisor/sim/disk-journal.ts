// disk-journal: how the simulated vCPU's disk writes reach dom0's replicator. The vCPU
// (a worker thread) writes its disk image itself — a blkback-like backend in the guest's
// thread — and appends each completed write, with a copy of its data, to this shared ring.
// The main thread drains the ring every few milliseconds and, at suspend, after the vCPU has
// stopped: so every write the guest saw complete before a checkpoint's suspend is drained
// (and tagged with that epoch) before the engine's disk barrier. A full ring makes the vCPU
// wait (back-pressure), never drops a write.
//
// Reads are journaled too (read tracking): the block, its content CRC and its write
// generation, when that generation was even and unchanged across the read.
//
//   words: [head, tail]; slot i: u32 kind (1 write, 2 durable write, 3 read), u32 block,
//   u32 generation, u32 crc32c, then 4096 octets (writes only)
import { assert } from '../../assert';
import { DB_PAGE, type ModelDisk } from '../../trace/db-memory-model';
import type { BlockFile } from '../../../blktap/block-file';
import type { BlockGenerations } from '../../../blktap/block-generations';
import { loadAddon } from '../../native';

export const JOURNAL_SLOTS = 128;
const HEADER_WORDS = 4,
  SLOT_HEAD = 16,
  SLOT_BYTES = SLOT_HEAD + DB_PAGE;
const K_WRITE = 1,
  K_DURABLE = 2,
  K_READ = 3;
const J_HEAD = 0,
  J_TAIL = 1;

export function makeJournal(): SharedArrayBuffer {
  return new SharedArrayBuffer(HEADER_WORDS * 4 + JOURNAL_SLOTS * SLOT_BYTES);
}

/** The vCPU's disk: its image file, with each write journaled for replication. */
export class JournaledDisk implements ModelDisk {
  private readonly words: Int32Array;
  private readonly bytes: Uint8Array;
  private readonly dv: DataView;
  readonly blocks: number;

  constructor(
    private readonly file: BlockFile,
    sab: SharedArrayBuffer,
    private readonly gens: BlockGenerations,
  ) {
    this.words = new Int32Array(sab, 0, HEADER_WORDS);
    this.bytes = new Uint8Array(sab);
    this.dv = new DataView(sab);
    this.blocks = Math.floor(file.sizeBytes / DB_PAGE);
  }

  read(block: number, into: Uint8Array): void {
    const before = this.gens.get(block);
    this.file.read(block * DB_PAGE, into);
    if ((before & 1) === 0 && this.gens.get(block) === before)
      this.append(K_READ, block, before, loadAddon().crc32c(into), null);
  }

  write(block: number, from: Uint8Array, durable: boolean): void {
    assert(from.length === DB_PAGE && block >= 0 && block < this.blocks, 'journaled write');
    this.gens.beginWrite(block * DB_PAGE, DB_PAGE); // the main thread ends it after forwarding
    this.file.write(block * DB_PAGE, from);
    this.append(durable ? K_DURABLE : K_WRITE, block, 0, 0, from);
  }

  private append(kind: number, block: number, gen: number, crc: number, data: Uint8Array | null): void {
    for (;;) {
      const tail = Atomics.load(this.words, J_TAIL),
        head = Atomics.load(this.words, J_HEAD);
      if (tail - head < JOURNAL_SLOTS) {
        const at = HEADER_WORDS * 4 + (tail % JOURNAL_SLOTS) * SLOT_BYTES;
        this.dv.setUint32(at, kind, true);
        this.dv.setUint32(at + 4, block, true);
        this.dv.setUint32(at + 8, gen, true);
        this.dv.setUint32(at + 12, crc, true);
        if (data) this.bytes.set(data, at + SLOT_HEAD);
        Atomics.store(this.words, J_TAIL, tail + 1);
        return;
      }
      Atomics.wait(this.words, J_HEAD, head, 5); // full: wait for the main thread to drain
    }
  }
}

/** What the main thread does with journal entries, in the order the vCPU made them. */
export interface JournalSink {
  write(offsetBytes: number, data: Buffer, durable: boolean): void;
  read(block: number, crc: number, gen: number): void;
}

/** Main thread: hands every journaled entry, in order, to the sink. Returns how many. */
export function drainJournal(sab: SharedArrayBuffer, sink: JournalSink): number {
  const words = new Int32Array(sab, 0, HEADER_WORDS),
    dv = new DataView(sab);
  const tail = Atomics.load(words, J_TAIL);
  let head = Atomics.load(words, J_HEAD),
    n = 0;
  for (; head < tail; head++, n++) {
    const at = HEADER_WORDS * 4 + (head % JOURNAL_SLOTS) * SLOT_BYTES;
    const kind = dv.getUint32(at, true),
      block = dv.getUint32(at + 4, true);
    if (kind === K_READ) sink.read(block, dv.getUint32(at + 12, true), dv.getUint32(at + 8, true));
    else sink.write(block * DB_PAGE, Buffer.from(new Uint8Array(sab, at + SLOT_HEAD, DB_PAGE)), kind === K_DURABLE);
  }
  Atomics.store(words, J_HEAD, head);
  Atomics.notify(words, J_HEAD);
  return n;
}

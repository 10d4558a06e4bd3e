// vcpu-worker: the vCPU of a simulated domain (a worker thread). It attaches to the guest
// memory arena, runs guest steps at the configured rate and appends each step's output to
// the shared ring; between steps it honours suspend requests (vcpu-control.ts).
import { workerData } from 'node:worker_threads';
import { loadAddon } from '../../native';
import { GuestMemory } from '../../memory/guest-memory';
import { BlockFile } from '../../../blktap/block-file';
import { BlockGenerations } from '../../../blktap/block-generations';
import { JournaledDisk } from './disk-journal';
import { GuestProgram } from './guest-program';
import { C_HEAD, C_STATE, C_STEPS_PER_SEC, C_TAIL, PAUSED, PAUSE_REQ, RING_SLOTS, STOP, views } from './vcpu-control';

interface VcpuInit {
  arenaId: number;
  sab: SharedArrayBuffer;
  disk: { path: string; journal: SharedArrayBuffer; generations: SharedArrayBuffer } | null;
}

function main(init: VcpuInit): void {
  const arena = new (loadAddon().Arena)(0, init.arenaId);
  const mem = GuestMemory.ofArena(arena);
  const { control, ring } = views(init.sab);
  const file = init.disk ? BlockFile.open(init.disk.path) : null;
  const guest = GuestProgram.attach(
    mem,
    file
      ? new JournaledDisk(file, init.disk!.journal, new BlockGenerations(file.sizeBytes, init.disk!.generations))
      : undefined,
  );
  const emit = (seq: number, value: number): void => {
    for (;;) {
      const tail = Atomics.load(control, C_TAIL),
        head = Atomics.load(control, C_HEAD);
      if (tail - head < RING_SLOTS) {
        const slot = (tail % RING_SLOTS) * 2;
        ring[slot] = seq;
        ring[slot + 1] = value;
        Atomics.store(control, C_TAIL, tail + 1);
        return;
      }
      Atomics.wait(control, C_STATE, Atomics.load(control, C_STATE), 1); // ring full: back-pressure
    }
  };
  let started = performance.now(),
    done = 0;
  for (;;) {
    const state = Atomics.load(control, C_STATE);
    if (state === STOP) break;
    if (state === PAUSE_REQ || state === PAUSED) {
      // Only a request still standing pauses us: main may withdraw it (suspend timed out).
      if (state === PAUSE_REQ && Atomics.compareExchange(control, C_STATE, PAUSE_REQ, PAUSED) !== PAUSE_REQ) continue;
      Atomics.notify(control, C_STATE);
      while (Atomics.load(control, C_STATE) === PAUSED) Atomics.wait(control, C_STATE, PAUSED, 1000);
      started = performance.now();
      done = 0; // do not catch up on time spent suspended
      continue;
    }
    const rate = Atomics.load(control, C_STEPS_PER_SEC);
    const due = rate > 0 ? Math.floor(((performance.now() - started) * rate) / 1000) : done + 1;
    if (done >= due) {
      Atomics.wait(control, C_STATE, state, Math.max(0.2, 1000 / Math.max(rate, 1)));
      continue;
    }
    guest.step(emit);
    done++;
  }
  arena.close();
  file?.close();
}

main(workerData as VcpuInit);

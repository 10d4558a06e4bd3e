// vcpu-control: the shared-memory words between the main thread and a simulated domain's
// vCPU worker. The vCPU only stops at a safe point (between two guest steps, with all guest
// state saved in guest memory), the way a suspend request waits for the guest to ack.
//
//   main: suspend  → state = PAUSE_REQ, notify; wait until state == PAUSED
//   vcpu: at a safe point CAS PAUSE_REQ → PAUSED, notify; wait while PAUSED
//   main: resume   → state = RUN, notify
//   main: suspend timed out → CAS PAUSE_REQ → RUN (withdrawn: the guest runs on; finding
//         PAUSED instead means the vCPU stopped just in time, and the suspend succeeds)
//
// Outputs go through a ring in the same shared buffer: the vCPU appends (seq, value) and
// advances `tail`; the main thread consumes up to `tail` and advances `head`.
export const RUN = 0,
  PAUSE_REQ = 1,
  PAUSED = 2,
  STOP = 3;
export const C_STATE = 0,
  C_HEAD = 1,
  C_TAIL = 2,
  C_STEPS_PER_SEC = 3;
const CONTROL_WORDS = 8;
export const RING_SLOTS = 1 << 16;

export interface VcpuShared {
  control: Int32Array;
  ring: Float64Array;
  sab: SharedArrayBuffer;
}

export function makeShared(): VcpuShared {
  const sab = new SharedArrayBuffer(CONTROL_WORDS * 4 + RING_SLOTS * 2 * 8);
  return views(sab);
}

export function views(sab: SharedArrayBuffer): VcpuShared {
  return {
    sab,
    control: new Int32Array(sab, 0, CONTROL_WORDS),
    ring: new Float64Array(sab, CONTROL_WORDS * 4, RING_SLOTS * 2),
  };
}

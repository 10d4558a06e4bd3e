// ports: the interfaces the checkpoint engine talks to. Adapters implement them for the
// built-in simulated domain, for Xen (later), and for the seeded fault simulator's test
// doubles. The engine never touches sockets, threads or timers directly.

/** Time and scheduling. Real: timers and setImmediate; simulator: virtual time. */
export interface Clock {
  now(): number;
  setTimer(ms: number, fn: () => void): unknown;
  clearTimer(handle: unknown): void;
  /** Runs fn soon, after the current work: the asynchronous stages of a checkpoint. */
  defer(fn: () => void): void;
}

/** One checkpoint's memory and device state, copied while the domain was suspended. */
export interface Capture {
  pfns: Uint32Array;
  count: number;
  /** count × 4096 octets, page i for pfns[i]. */
  pages: Uint8Array;
  deviceState: Uint8Array;
}

/** A domain the primary protects. */
export interface Domain {
  readonly kind: 'sim' | 'xen';
  readonly name: string;
  readonly pageCount: number;
  /** Stops the vCPUs at a safe point; returns when they are stopped. */
  suspend(): void;
  resume(): void;
  /** Pages written since the last capture (every page when full), and the device state. */
  capture(full: boolean): Capture;
  /** Summary of guest state for logs and checks (sim: steps, seq, hash). */
  describe(): Record<string, unknown>;
  /** Fencing: the backup took over; stop this copy for good. */
  fence(): void;
}

/** Where a backup keeps the replica and how it resumes it. */
export interface Replica {
  readonly pageCount: number;
  /** The committed memory image (decode base). */
  readonly image: Uint8Array;
  /** Installs device state at commit (memory was already applied). */
  commitDeviceState(state: Uint8Array): void;
  /** Starts the domain from the committed image and device state (failover). */
  resume(): Record<string, unknown>;
}

/** Outputs of the domain (network packets, disk completions), held per epoch. */
export interface OutputGate {
  /** Outputs produced from now on belong to epoch + 1. Called with the domain suspended. */
  barrier(epoch: number): void;
  /** The backup acknowledged epoch: release its outputs (and all earlier ones). */
  release(epoch: number): void;
  /** Unprotected: outputs pass straight through (and everything held is released). */
  setPassThrough(on: boolean): void;
  /** Fenced: drop everything held (it was speculative and a backup runs the domain now). */
  discard(): void;
  readonly held: number;
}

/** A connected, authenticated replication channel carrying whole records. */
export interface Link {
  send(type: number, body: Uint8Array): void;
  /** Ends the connection (idempotent). */
  close(): void;
  onRecord(cb: (type: number, body: Buffer) => void): void;
  /** Called once when the channel ends; error when it broke. */
  onClose(cb: (error: Error | null) => void): void;
  readonly remote: string;
}

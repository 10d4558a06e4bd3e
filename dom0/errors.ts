// errors: the one error class of remusdb and its stable codes. Operating errors (a peer
// gone, a bad stream, no Xen, bad user input) are RemusError with a code from ErrorCode and
// a message a person can act on; the native addon throws the same class (injected at load).
// Programmer errors are assertions (dom0/assert.ts), never RemusError.
//
// Codes are branded: a RemusError takes an ErrorCodeValue, which only ErrorCode's members
// (and errorCodeOf, for a code that arrives as text) produce, so a mistyped 'ERR_...' literal
// does not compile. The addon's codes are checked against this list when it loads (native.ts).

const CODES = {
  /** A page record in a replication stream or trace is malformed. */
  BAD_PAGE_RECORD: 'ERR_BAD_PAGE_RECORD',
  /** The replication stream broke its rules (CRC, unknown mandatory record, order, size). */
  PROTOCOL: 'ERR_PROTOCOL',
  /** The peer closed the connection or went silent past the heartbeat timeout. */
  PEER_GONE: 'ERR_PEER_GONE',
  /** The peer could not be authenticated (TLS PSK mismatch, no TLS) or refused us. */
  AUTH: 'ERR_AUTH',
  /** The handshake failed: version, domain or memory size mismatch. */
  HANDSHAKE: 'ERR_HANDSHAKE',
  /** A domain name did not resolve to something this host can run or protect. */
  NO_DOMAIN: 'ERR_NO_DOMAIN',
  /** Xen is not available on this host. */
  NO_XEN: 'ERR_NO_XEN',
  /** Kernel dirty tracking failed. */
  DIRTY_TRACKING: 'ERR_DIRTY_TRACKING',
  /** The simulated guest's vCPU did not stop or start in time. */
  VCPU: 'ERR_VCPU',
  /** The local control socket could not be reached or answered an error. */
  CONTROL: 'ERR_CONTROL',
  /** A page batch container (plain or zstd) is malformed or too large. */
  BAD_PAGE_BATCH: 'ERR_BAD_PAGE_BATCH',
  /** An RDTRACE1 file is malformed (magic, record type, length, truncation, pfn). */
  BAD_TRACE: 'ERR_BAD_TRACE',
  /** A command-line option or argument is invalid. */
  BAD_ARGUMENT: 'ERR_BAD_ARGUMENT',
  /** A file could not be read or written. */
  IO: 'ERR_IO',
  /** The native addon is missing or lacks a part this operation needs. */
  ADDON_PART_MISSING: 'ERR_ADDON_PART_MISSING',
  /** Memory for a buffer or cache could not be reserved. */
  OUT_OF_MEMORY: 'ERR_OUT_OF_MEMORY',
  /** The network output buffer failed: queue bind, verdict send, iptables rules, br_netfilter. */
  NETBUF: 'ERR_NETBUF',
  /** A Xen call failed (the message names the function and errno). */
  XEN: 'ERR_XEN',
  /** A benchmark's backup image diverged from the source: the codec is wrong. */
  VERIFY_FAILED: 'ERR_VERIFY_FAILED',
  /** The backup's buffer of unacknowledged disk writes is full: the primary resynchronises. */
  DISK_BUFFER_FULL: 'ERR_DISK_BUFFER_FULL',
  /** A disk reference's block did not rebuild the page it promised (replica divergence). */
  DISK_REF_MISMATCH: 'ERR_DISK_REF_MISMATCH',
  /** The backup's disk is not the primary's at a verified checkpoint: the next session copies it whole. */
  DISK_DIVERGED: 'ERR_DISK_DIVERGED',
  /**
   * The primary ended a session it cannot go on with (the backup fell silent, a checkpoint
   * failed): it lives and reconnects, so the backup keeps its image and does not fail over.
   */
  SESSION_ENDED: 'ERR_SESSION_ENDED',
  /** A continued session's memory digest differs from the primary's: the next session copies memory whole. */
  MEMORY_DIVERGED: 'ERR_MEMORY_DIVERGED',
  /** An NBD client broke the protocol or a limit of the server (docs/nbd.md): its connection is dropped. */
  NBD_CLIENT: 'ERR_NBD_CLIENT',
  /**
   * A bug met while handling a peer's input (an exception that is not a RemusError): the
   * session is dropped and the process goes on; the original error is the `cause`.
   */
  INTERNAL: 'ERR_INTERNAL',
  /** Another process already holds this domain (or this file) on this host: one per domain. */
  LOCKED: 'ERR_LOCKED',
  /** An address could not be listened on: the port is in use, the address is not this host's, or not permitted. */
  LISTEN: 'ERR_LISTEN',
  /** The coordination service (etcd) could not be reached or answered an error. */
  COORDINATION: 'ERR_COORDINATION',
  /** Another host owns this domain in the coordination service: this one may not run it. */
  NOT_OWNER: 'ERR_NOT_OWNER',
} as const;

declare const errorCodeBrand: unique symbol;
/** Each code keeps its literal type and gains a brand that a bare string literal lacks. */
type Branded<T> = { readonly [K in keyof T]: T[K] & { readonly [errorCodeBrand]: true } };

export const ErrorCode = CODES as Branded<typeof CODES>;

export type ErrorCodeValue = (typeof ErrorCode)[keyof typeof ErrorCode];

const KNOWN_CODES: ReadonlySet<string> = new Set(Object.values(CODES));

export function isErrorCode(s: unknown): s is ErrorCodeValue {
  return typeof s === 'string' && KNOWN_CODES.has(s);
}

/**
 * A code that arrived as text (a control-socket answer, a peer's ERROR record) as an
 * ErrorCodeValue; `fallback` for a code this build does not know (an older or newer peer).
 */
export function errorCodeOf(s: unknown, fallback: ErrorCodeValue = ErrorCode.INTERNAL): ErrorCodeValue {
  return isErrorCode(s) ? s : fallback;
}

/** The strings in `codes` that are not ErrorCode values (the addon's list is checked with this). */
export function unknownErrorCodes(codes: readonly string[]): string[] {
  return codes.filter((c) => !isErrorCode(c));
}

export class RemusError extends Error {
  readonly code: ErrorCodeValue;
  readonly details: Readonly<Record<string, unknown>>;

  /** cause: the error this one explains (a system call's, a peer's, a library's). */
  constructor(
    code: ErrorCodeValue,
    message: string,
    details: Record<string, unknown> = {},
    options: { cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'RemusError';
    this.code = code;
    this.details = details;
  }
}

export function isRemusError(e: unknown, code?: ErrorCodeValue): e is RemusError {
  return e instanceof RemusError && (code === undefined || e.code === code);
}

// guest-size: the largest guest memory a simulated domain (or a backup's SimReplica) can
// have, and the check that refuses larger ones before any memory is mapped. The guest's
// memory is one native arena that JavaScript reads through a single ArrayBuffer/Uint8Array
// (sim-domain.ts, sim-replica.ts, the vCPU worker), and a full checkpoint copies it into one
// Buffer; Node.js 20 caps each of those at 2^32 bytes (buffer.constants.MAX_LENGTH), and the
// addon's arena refuses longer views (arenaBufferBytesMax). Past the cap the arena used to
// abort the process (a double free in Node's refusal path) instead of failing; now every
// size either works or is refused here with a typed error that names the limit. Supporting
// larger guests needs windowed views of the arena: a separate change.
import { constants as bufferConstants } from 'node:buffer';
import { ErrorCode, RemusError, type ErrorCodeValue } from '../../errors';
import { PAGE_SIZE } from '../../memory/page-cache';

/**
 * Largest simulated guest, in bytes: 2^32 (4 GiB, 1,048,576 pages of 4 KiB) on 64-bit
 * Node.js 20, or less where the runtime's largest Buffer is smaller. Sizes up to and
 * including it work; larger ones are refused by checkSimGuestBytes (SimDomain.boot and the
 * SimReplica constructor call it). Check it before creating either, e.g. when parsing an
 * option or accepting a HELLO.
 */
export const SIM_GUEST_BYTES_MAX = Math.min(2 ** 32, bufferConstants.MAX_LENGTH);

/** Largest simulated guest in 4 KiB pages (SIM_GUEST_BYTES_MAX / PAGE_SIZE). */
export const SIM_GUEST_PAGES_MAX = Math.floor(SIM_GUEST_BYTES_MAX / PAGE_SIZE);

/** Why a simulated guest cannot have `bytes` of memory, or null when it can (size only). */
export function simGuestBytesProblem(bytes: number): string | null {
  if (!Number.isSafeInteger(bytes) || bytes <= 0 || bytes % PAGE_SIZE !== 0) {
    return `${String(bytes)} bytes is not a positive multiple of ${PAGE_SIZE}`;
  }
  if (bytes > SIM_GUEST_BYTES_MAX) {
    return `${bytes} bytes (${fmtSize(bytes)}) of guest memory is more than a simulated guest can have: ` +
      `at most ${SIM_GUEST_BYTES_MAX} bytes (${fmtSize(SIM_GUEST_BYTES_MAX)}, SIM_GUEST_BYTES_MAX), because its ` +
      `memory is one ArrayBuffer and Node.js ${process.versions.node} allows at most ` +
      `${bufferConstants.MAX_LENGTH} bytes per buffer`;
  }
  return null;
}

/**
 * Throws RemusError(code) naming the limit when a simulated guest cannot have `bytes` of
 * memory. `what` opens the message (the domain: "sim:big"). The code is the caller's: bad
 * user input (ERR_BAD_ARGUMENT, the default) or a primary's HELLO (ERR_HANDSHAKE).
 */
export function checkSimGuestBytes(bytes: number, what: string, code: ErrorCodeValue = ErrorCode.BAD_ARGUMENT): void {
  const problem = simGuestBytesProblem(bytes);
  if (problem) throw new RemusError(code, `${what}: ${problem}`, { bytes, bytesMax: SIM_GUEST_BYTES_MAX });
}

/** 4 GiB, 4100 MiB, 4194308 KiB: the largest unit that divides bytes exactly. */
function fmtSize(bytes: number): string {
  if (bytes % 2 ** 30 === 0) return `${bytes / 2 ** 30} GiB`;
  return bytes % 2 ** 20 === 0 ? `${bytes / 2 ** 20} MiB` : `${bytes / 2 ** 10} KiB`;
}

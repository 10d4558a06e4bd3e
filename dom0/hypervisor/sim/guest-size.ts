// guest-size: the largest guest memory a simulated domain (or a backup's SimReplica) can
// have, and the checks that refuse larger ones before any memory is mapped. The guest's
// memory is one native arena (up to 64 GiB, the addon's mapping limit) that JavaScript sees
// in 1 GiB windows (dom0/memory/guest-memory.ts): Node.js 20 caps each buffer at 2^32
// bytes, so no code path holds the whole guest in one buffer. Past the limit — or past what
// this host's RAM holds, since a simulated guest is resident memory of this process — every
// size is refused with a typed error that names the limit.
import * as os from 'node:os';
import { ErrorCode, RemusError, type ErrorCodeValue } from '../../errors';
import { GUEST_PAGES_MAX } from '../../memory/guest-memory';
import { PAGE_BYTES } from '../../limits';

/**
 * Largest simulated guest, in bytes: 2^36 (64 GiB, 16,777,216 pages of 4 KiB), the arena's
 * mapping limit (native-xc/src/arena.cc) and GuestMemory's. Sizes up to and including it
 * work where the host has the RAM; larger ones are refused by checkSimGuestBytes.
 */
export const SIM_GUEST_BYTES_MAX = GUEST_PAGES_MAX * PAGE_BYTES;

/** Largest simulated guest in 4 KiB pages (SIM_GUEST_BYTES_MAX / PAGE_BYTES). */
export const SIM_GUEST_PAGES_MAX = GUEST_PAGES_MAX;

/** Why a simulated guest cannot have `bytes` of memory, or null when it can (size only). */
export function simGuestBytesProblem(bytes: number): string | null {
  if (!Number.isSafeInteger(bytes) || bytes <= 0 || bytes % PAGE_BYTES !== 0) {
    return `${String(bytes)} bytes is not a positive multiple of ${PAGE_BYTES}`;
  }
  if (bytes > SIM_GUEST_BYTES_MAX) {
    return (
      `${bytes} bytes (${fmtSize(bytes)}) of guest memory is more than a simulated guest can have: ` +
      `at most ${SIM_GUEST_BYTES_MAX} bytes (${fmtSize(SIM_GUEST_BYTES_MAX)}, SIM_GUEST_BYTES_MAX), the guest ` +
      "memory arena's mapping limit"
    );
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

/**
 * Throws RemusError(code) when a simulated guest of `bytes` cannot be resident on this host
 * (more than its RAM): the kernel would kill the process part way through the boot or copy.
 */
export function checkSimGuestFitsHost(
  bytes: number,
  what: string,
  code: ErrorCodeValue = ErrorCode.BAD_ARGUMENT,
): void {
  checkSimGuestBytes(bytes, what, code);
  const ram = os.totalmem();
  if (bytes > ram) {
    throw new RemusError(
      code,
      `${what}: ${fmtSize(bytes)} of guest memory is more than this host's ${fmtSize(ram)} of RAM`,
      { bytes, hostBytes: ram },
    );
  }
}

/** 4 GiB, 4100 MiB, 4194308 KiB: the largest unit that divides bytes exactly. */
function fmtSize(bytes: number): string {
  if (bytes % 2 ** 30 === 0) return `${bytes / 2 ** 30} GiB`;
  return bytes % 2 ** 20 === 0 ? `${bytes / 2 ** 20} MiB` : `${bytes / 2 ** 10} KiB`;
}

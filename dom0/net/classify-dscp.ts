// classify-dscp: the `dscp` commit protection classifier (RemusDB §5.4 with a marking
// instead of a new socket state). A guest whose database was patched marks the packets
// that must wait for the checkpoint (commit acknowledgements) with DSCP 59 (TOS byte
// 0xEC, ECN bits free; IPv6 traffic class likewise); the nfqueue output buffer holds
// exactly those and releases every other packet at once (keeping per-flow order, see
// packet-ledger.ts). Decisions (docs/commit-protection.md):
//   IPv4 / IPv6 with DSCP == dscp           → hold
//   IPv4 / IPv6 with any other DSCP         → release
//   claims to be IP but the header is short → hold (fail-safe: late, never early)
//   not IP (ARP, LLDP, ...)                 → release: it carries no database state and
//                                             delaying address resolution would delay the
//                                             unprotected traffic that depends on it.
import { assertInt } from '../assert';
import type { Classifier, PacketVerdict } from './packet-ledger';

/** The code point the guest patches use for protected packets (0b111011). */
export const PROTECTED_DSCP = 59;

export const ETH_P_IP = 0x0800;
export const ETH_P_IPV6 = 0x86dd;

/** DSCP of an IP packet, or -1 when the bytes are not a complete enough IPv4/IPv6 header. */
export function dscpOf(header: Uint8Array): number {
  if (header.length < 2) return -1;
  const version = header[0] >> 4;
  if (version === 4) return header.length >= 20 ? header[1] >> 2 : -1;
  if (version === 6) {
    if (header.length < 40) return -1;
    const trafficClass = ((header[0] & 0x0f) << 4) | (header[1] >> 4);
    return trafficClass >> 2;
  }
  return -1;
}

/** Is this packet IP by its hardware protocol (0: unknown, then by the version nibble)? */
export function isIpPacket(header: Uint8Array, hwProtocol: number): boolean {
  if (hwProtocol === ETH_P_IP || hwProtocol === ETH_P_IPV6) return true;
  if (hwProtocol !== 0 || header.length === 0) return false;
  const version = header[0] >> 4;
  return version === 4 || version === 6;
}

/** Holds the packets marked with `dscp`, releases the rest (see the header comment). */
export function dscpClassifier(dscp: number = PROTECTED_DSCP): Classifier {
  assertInt(dscp, 0, 63, 'dscp');
  return (header: Uint8Array, hwProtocol: number): PacketVerdict => {
    if (!isIpPacket(header, hwProtocol)) return 'release';
    const got = dscpOf(header);
    if (got < 0) return 'hold';
    return got === dscp ? 'hold' : 'release';
  };
}

// rtnetlink: the few rtnetlink messages the `plug` output buffer sends — create, change
// and delete a queueing discipline — built byte for byte here and sent by the addon's
// netlinkRoute (one request, one acknowledgement). Layouts: linux/netlink.h (nlmsghdr,
// 16 octets), linux/rtnetlink.h (tcmsg, 20 octets; rtattr: u16 len, u16 type, data padded
// to 4), linux/pkt_sched.h (tc_plug_qopt: i32 action, u32 limit). Host byte order.
import * as fs from 'node:fs';
import * as os from 'node:os';
import { assert } from '../assert';
import { ErrorCode, RemusError } from '../errors';
import { loadAddon } from '../native';

export const RTM_NEWQDISC = 36,
  RTM_DELQDISC = 37;
export const NLM_F_REQUEST = 0x1,
  NLM_F_ACK = 0x4,
  NLM_F_REPLACE = 0x100,
  NLM_F_EXCL = 0x200,
  NLM_F_CREATE = 0x400;
export const TCA_KIND = 1,
  TCA_OPTIONS = 2;
export const TC_H_ROOT = 0xffffffff;
const NLMSG_HDR = 16,
  TCMSG = 20;
const LE = os.endianness() === 'LE';

export interface QdiscRequest {
  type: typeof RTM_NEWQDISC | typeof RTM_DELQDISC;
  flags: number;
  ifindex: number;
  handle: number;
  parent: number;
  kind: string;
  options: Uint8Array | null;
}

function attr(type: number, data: Uint8Array): Buffer {
  const len = 4 + data.length;
  const b = Buffer.alloc((len + 3) & ~3);
  u16(b, 0, len);
  u16(b, 2, type);
  b.set(data, 4);
  return b;
}

function u16(b: Buffer, at: number, v: number): void {
  if (LE) b.writeUInt16LE(v, at);
  else b.writeUInt16BE(v, at);
}
function u32(b: Buffer, at: number, v: number): void {
  if (LE) b.writeUInt32LE(v >>> 0, at);
  else b.writeUInt32BE(v >>> 0, at);
}
function i32(b: Buffer, at: number, v: number): void {
  if (LE) b.writeInt32LE(v, at);
  else b.writeInt32BE(v, at);
}

/** nlmsghdr + tcmsg + TCA_KIND (+ TCA_OPTIONS). The sequence number is stamped by the addon. */
export function qdiscMessage(r: QdiscRequest): Buffer {
  assert(r.ifindex > 0 && /^[a-z_]{1,15}$/.test(r.kind), 'qdisc request');
  const attrs = [attr(TCA_KIND, Buffer.from(`${r.kind}\0`, 'latin1'))];
  if (r.options) attrs.push(attr(TCA_OPTIONS, r.options));
  const body = Buffer.concat(attrs);
  const m = Buffer.alloc(NLMSG_HDR + TCMSG + body.length);
  u32(m, 0, m.length);
  u16(m, 4, r.type);
  u16(m, 6, r.flags | NLM_F_REQUEST | NLM_F_ACK);
  // nlmsg_seq (8) and nlmsg_pid (12) stay 0; tcmsg: family 0 (AF_UNSPEC), pads, ifindex, handle, parent, info.
  i32(m, NLMSG_HDR + 4, r.ifindex);
  u32(m, NLMSG_HDR + 8, r.handle);
  u32(m, NLMSG_HDR + 12, r.parent);
  m.set(body, NLMSG_HDR + TCMSG);
  return m;
}

/** struct tc_plug_qopt. */
export const TCQ_PLUG_BUFFER = 0,
  TCQ_PLUG_RELEASE_ONE = 1,
  TCQ_PLUG_RELEASE_INDEFINITE = 2,
  TCQ_PLUG_LIMIT = 3;
export function plugOptions(action: number, limitBytes = 0): Buffer {
  const b = Buffer.alloc(8);
  i32(b, 0, action);
  u32(b, 4, limitBytes);
  return b;
}

export function ifindexOf(ifname: string): number {
  assert(/^[A-Za-z0-9_.:-]{1,15}$/.test(ifname), 'interface name');
  try {
    return Number(fs.readFileSync(`/sys/class/net/${ifname}/ifindex`, 'utf8').trim());
  } catch {
    throw new RemusError(ErrorCode.NETBUF, `no network interface ${ifname}`);
  }
}

/** Sends one qdisc request; a negative errno becomes ERR_NETBUF naming what was asked. */
export function qdiscRequest(r: QdiscRequest, what: string): void {
  const rc = loadAddon().netlinkRoute(qdiscMessage(r));
  if (rc !== 0) throw qdiscError(r, -rc, what);
}

function qdiscError(r: QdiscRequest, errno: number, what: string): RemusError {
  const name = Object.entries(os.constants.errno).find(([, v]) => v === errno)?.[0] ?? `errno ${errno}`;
  const hint =
    r.kind === 'plug' && errno === os.constants.errno.ENOENT
      ? ' (this kernel has no sch_plug: modprobe sch_plug, or use --net-buffer nfqueue)'
      : '';
  return new RemusError(ErrorCode.NETBUF, `${what}: ${name}${hint}`);
}

/** The handles a root qdisc of ours takes, in turn (1: and 2:), so that a new one can replace the old. */
export const ROOT_QDISC_HANDLES = [0x10000, 0x20000] as const;

/**
 * Puts a new qdisc at the device's root in one step and returns its handle. The kernel grafts
 * it in place of the one there (NLM_F_REPLACE) and destroys that one with what it held; while
 * it swaps them the device's queue is noop_qdisc, which drops. So no packet passes unqueued,
 * as it would between a delete and an add. The new qdisc takes the handle the old one does not
 * have: asked for the handle it has, with NLM_F_EXCL, the kernel refuses (EEXIST) instead of
 * changing the old qdisc's parameters.
 */
export function replaceRootQdisc(ifindex: number, kind: string, options: Uint8Array | null, what: string): number {
  const flags = NLM_F_CREATE | NLM_F_REPLACE | NLM_F_EXCL;
  let refused: RemusError | null = null;
  for (const handle of ROOT_QDISC_HANDLES) {
    const r: QdiscRequest = { type: RTM_NEWQDISC, flags, ifindex, handle, parent: TC_H_ROOT, kind, options };
    const rc = loadAddon().netlinkRoute(qdiscMessage(r));
    if (rc === 0) return handle;
    refused = qdiscError(r, -rc, what);
    if (-rc !== os.constants.errno.EEXIST) throw refused;
  }
  throw refused!; // both handles taken: not ours to replace
}

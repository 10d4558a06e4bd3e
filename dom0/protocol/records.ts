// records: the replication protocol's record types and their fixed body layouts
// (docs/protocol.md). Encoders assert their inputs (programmer errors); decoders treat the
// body as hostile and throw ERR_PROTOCOL naming the record and what is wrong.
import { ErrorCode, RemusError } from '../errors';
import { assert } from '../assert';

export const PROTOCOL_VERSION = 1;
export const RECORD_HEADER = 16;
export const RECORD_BODY_MAX = 16 * 1024 * 1024;
export const FLAG_OPTIONAL = 1;

export const Rec = {
  HELLO: 1, HELLO_ACK: 2, CHECKPOINT_BEGIN: 3, PAGE_BATCH: 4, DEVICE_STATE: 5,
  CHECKPOINT_END: 6, ACK: 7, HEARTBEAT: 8, TAKEOVER: 9, GOODBYE: 10, ERROR: 11,
} as const;
export type RecType = (typeof Rec)[keyof typeof Rec];
export const REC_NAMES: Record<number, string> = Object.fromEntries(Object.entries(Rec).map(([k, v]) => [v, k]));

export interface RawRecord { type: number; flags: number; body: Buffer; }

export function protocolError(message: string): RemusError {
  return new RemusError(ErrorCode.PROTOCOL, message);
}

export const CKPT_FULL = 1;

export function epochBody(epoch: number, extra = 0): Buffer {
  assert(Number.isSafeInteger(epoch) && epoch >= 0, 'epoch');
  const b = Buffer.alloc(8 + extra);
  b.writeBigUInt64LE(BigInt(epoch), 0);
  return b;
}

function readEpoch(type: number, body: Buffer, min: number, exact?: number): number {
  if (body.length < min || (exact !== undefined && body.length !== exact)) {
    throw protocolError(`${REC_NAMES[type]} body of ${body.length} octets is malformed`);
  }
  const e = body.readBigUInt64LE(0);
  if (e > BigInt(Number.MAX_SAFE_INTEGER)) throw protocolError(`${REC_NAMES[type]} epoch ${e} is out of range`);
  return Number(e);
}

export const checkpointBegin = (epoch: number, full: boolean): Buffer => {
  const b = epochBody(epoch, 8);
  b.writeUInt32LE(full ? CKPT_FULL : 0, 8);
  return b;
};
export function parseCheckpointBegin(body: Buffer): { epoch: number; full: boolean } {
  const epoch = readEpoch(Rec.CHECKPOINT_BEGIN, body, 16, 16);
  const flags = body.readUInt32LE(8);
  if ((flags & ~CKPT_FULL) !== 0 || body.readUInt32LE(12) !== 0) throw protocolError('CHECKPOINT_BEGIN has unknown flags');
  return { epoch, full: (flags & CKPT_FULL) !== 0 };
}

export const checkpointEnd = (epoch: number, pages: number): Buffer => {
  const b = epochBody(epoch, 8);
  b.writeUInt32LE(pages, 8);
  return b;
};
export function parseCheckpointEnd(body: Buffer): { epoch: number; pages: number } {
  const epoch = readEpoch(Rec.CHECKPOINT_END, body, 16, 16);
  if (body.readUInt32LE(12) !== 0) throw protocolError('CHECKPOINT_END reserved field is not 0');
  return { epoch, pages: body.readUInt32LE(8) };
}

export const withEpoch = (epoch: number, payload: Uint8Array): Buffer => {
  const b = epochBody(epoch, payload.length);
  b.set(payload, 8);
  return b;
};
export function parseWithEpoch(type: number, body: Buffer): { epoch: number; payload: Buffer } {
  return { epoch: readEpoch(type, body, 8), payload: body.subarray(8) };
}

export const ackBody = (epoch: number): Buffer => epochBody(epoch);
export const parseAck = (body: Buffer): number => readEpoch(Rec.ACK, body, 8, 8);
export const parseTakeover = (body: Buffer): number => readEpoch(Rec.TAKEOVER, body, 8, 8);

export const heartbeatBody = (epoch: number, nowMs: number): Buffer => {
  const b = epochBody(epoch, 8);
  b.writeBigUInt64LE(BigInt(Math.max(0, Math.floor(nowMs))), 8);
  return b;
};
export const parseHeartbeat = (body: Buffer): number => readEpoch(Rec.HEARTBEAT, body, 16, 16);

export function jsonBody(obj: unknown, version?: number): Buffer {
  const json = Buffer.from(JSON.stringify(obj), 'utf8');
  if (version === undefined) return json;
  const b = Buffer.alloc(4 + json.length);
  b.writeUInt32LE(version, 0);
  json.copy(b, 4);
  return b;
}

export function parseJson(type: number, body: Buffer, versioned: boolean): { version: number; value: Record<string, unknown> } {
  let version = 0, json = body;
  if (versioned) {
    if (body.length < 4) throw protocolError(`${REC_NAMES[type]} is too short`);
    version = body.readUInt32LE(0);
    json = body.subarray(4);
  }
  let value: unknown;
  try { value = JSON.parse(json.toString('utf8')); } catch {
    throw protocolError(`${REC_NAMES[type]} does not carry valid JSON`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw protocolError(`${REC_NAMES[type]} JSON is not an object`);
  }
  return { version, value: value as Record<string, unknown> };
}

// 41 hostile peer: a structured adversary written from docs/protocol.md, run against the
// real Backup engine in virtual time. It speaks the protocol through the real framer: every
// HELLO field at and past its bounds, every record type in every session state, FULL and
// incremental checkpoints against every rule the doc states, and sessions that end in every
// way. After each case: nothing escaped the engine (the process would have died), no bug
// was met (ERR_INTERNAL), a failover happened exactly when the rules allow one, a committed
// checkpoint was never changed by a refused one, and a genuine primary then gets protected.
import { strict as assert } from 'node:assert';
import { DEVICE_STATE_BYTES_MAX } from '../dom0/limits';
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { controlRequest } from '../dom0/service/control';
import { ChangeLog } from '../dom0/service/change-log';
import { HostLock } from '../dom0/service/host-lock';
import type { RemusError } from '../dom0/errors';
import { ErrorCode } from '../dom0/errors';
import { spawnSync } from 'node:child_process';
import { RECONNECT_DELAY_MS_MAX, Reconnector, unreachableReason } from '../dom0/service/reconnector';
import { encodeRecord } from '../dom0/protocol/framer';
import { freePort, remusdbStarter, runCli, sleep, tmpDir, until } from './support/helpers';
import { Backup, type BackupState } from '../dom0/engine/backup';
import { Primary } from '../dom0/engine/primary';
import { OutputBuffer } from '../dom0/engine/output-buffer';
import type { Replica } from '../dom0/ports';
import { PageEncoder } from '../dom0/memory/page-codec';
import { loadAddon } from '../dom0/native';
import {
  PROTOCOL_VERSION,
  Rec,
  ackBody,
  checkpointBegin,
  checkpointEnd,
  diskRefsBody,
  diskSyncBody,
  diskSyncEndBody,
  diskScrubBody,
  diskVerifyBody,
  diskWriteBody,
  epochBody,
  heartbeatBody,
  jsonBody,
  memoryVerifyBody,
  withEpoch,
} from '../dom0/protocol/records';
import { regionDigests } from '../dom0/engine/continuation';
import { Prng } from '../dom0/util/prng';
import { MemDiskTarget, type MemLink, MemReplica, Net, StepDomain, VirtualClock } from './support/sim-world';

const PAGE = 4096;
const ADV_PAGES = 16;
const PAGE_COUNT_MAX = 4096;
const CASE_MS = 1500;

/** What the adversary's scripted peer can say; one action per 5 ms of virtual time. */
class Adversary {
  readonly got: Array<{ type: number; body: Buffer }> = [];
  readonly mem = new Uint8Array(ADV_PAGES * PAGE);
  private readonly encoder = new PageEncoder({ cachePages: 0, compressor: 'zstd', batchPagesMax: 64 });

  constructor(
    readonly link: MemLink,
    seed: number,
  ) {
    new Prng(seed).fill(this.mem);
    link.onRecord((type, body) => this.got.push({ type, body }));
  }

  hello(fields: Record<string, unknown> = {}, version = PROTOCOL_VERSION): void {
    this.link.send(Rec.HELLO, jsonBody({ ...HELLO_OK, ...fields }, version));
  }
  begin(epoch: number, full: boolean): void {
    this.link.send(Rec.CHECKPOINT_BEGIN, checkpointBegin(epoch, full));
  }
  batch(epoch: number, pfns: number[]): void {
    const pages = new Uint8Array(pfns.length * PAGE);
    pfns.forEach((p, i) => pages.set(this.mem.subarray(p * PAGE, (p + 1) * PAGE), i * PAGE));
    const { container } = this.encoder.encode(pages, BigUint64Array.from(pfns.map(BigInt)));
    this.link.send(Rec.PAGE_BATCH, withEpoch(epoch, Uint8Array.from(container)));
  }
  device(epoch: number, bytes = 16): void {
    this.link.send(Rec.DEVICE_STATE, withEpoch(epoch, new Uint8Array(bytes)));
  }
  end(epoch: number, pages: number): void {
    this.link.send(Rec.CHECKPOINT_END, checkpointEnd(epoch, pages));
  }
  /** The adversary's memory as of each whole checkpoint it sent (CRC32C). */
  readonly snapshots = new Map<number, number>();
  /** A whole, valid checkpoint (FULL: every page; else one page changed). */
  checkpoint(epoch: number, full: boolean, pfns = full ? allPages() : [epoch % ADV_PAGES]): void {
    if (!full) for (const p of pfns) this.mem[p * PAGE] ^= 0x5a;
    if (!this.snapshots.has(epoch)) this.snapshots.set(epoch, loadAddon().crc32c(this.mem));
    this.begin(epoch, full);
    this.batch(epoch, pfns);
    this.device(epoch);
    this.end(epoch, pfns.length);
  }
  /** MEMORY_VERIFY of its memory now, in regions of 4 pages (wrong: one digest off). */
  memVerify(epoch: number, wrong = false): void {
    const crcs = new Uint32Array(ADV_PAGES);
    loadAddon().crc32cPages(this.mem, crcs);
    const d = regionDigests(crcs, 4);
    if (wrong) d[1] ^= 1;
    this.link.send(Rec.MEMORY_VERIFY, memoryVerifyBody(epoch, 4, d));
  }
  /** A continued session's first checkpoint: one page changed, with its digests (or none, or wrong ones). */
  continued(epoch: number, verify: 'right' | 'wrong' | 'none' = 'right'): void {
    const pfn = epoch % ADV_PAGES;
    this.mem[pfn * PAGE] ^= 0x5a;
    this.snapshots.set(epoch, loadAddon().crc32c(this.mem));
    this.begin(epoch, false);
    if (verify !== 'none') this.memVerify(epoch, verify === 'wrong');
    this.batch(epoch, [pfn]);
    this.device(epoch);
    this.end(epoch, 1);
  }
  /**
   * A continued checkpoint sent in live rounds: page pfn twice (written between), then, after
   * the pause, its digests; decoded in place. lose: the link goes after the first round.
   */
  liveContinued(epoch: number, pfn: number, lose = false): void {
    this.mem[pfn * PAGE] ^= 0x11;
    this.begin(epoch, false);
    this.batch(epoch, [pfn]);
    if (lose) return;
    this.mem[pfn * PAGE + 1] ^= 0x22;
    this.batch(epoch, [pfn]);
    this.snapshots.set(epoch, loadAddon().crc32c(this.mem));
    this.memVerify(epoch);
    this.device(epoch);
    this.end(epoch, 2);
  }
  errors(): string[] {
    return this.got.filter((r) => r.type === Rec.ERROR).map((r) => String(JSON.parse(r.body.toString('utf8')).code));
  }
  acked(): number[] {
    return this.got.filter((r) => r.type === Rec.ACK).map((r) => Number(r.body.readBigUInt64LE(0)));
  }
}

const HELLO_OK = {
  kind: 'sim',
  domain: 'adv',
  pageCount: ADV_PAGES,
  pageSize: PAGE,
  compressor: 'zstd',
  intervalMs: 20,
  heartbeatTimeoutMs: 100,
  deviceStateMax: 4096,
  sessionId: 'adv-1',
};
const allPages = (): number[] => Array.from({ length: ADV_PAGES }, (_, i) => i);

type Step = (a: Adversary) => void;
interface Case {
  name: string;
  steps: Step[];
  /** The rules allow (and require) a failover: a live session's connection was lost. */
  failover?: boolean;
  /** The replica's resume throws (the image does not start). */
  resumeThrows?: boolean;
  disk?: boolean;
  /** What the last connection must have heard (a HELLO_ACK that continues, an ACK): null when it did. */
  heard?: (a: Adversary) => string | null;
}

interface Outcome {
  failovers: number;
  internal: string[];
  state: BackupState;
  committed: number | null;
  genuine: string;
  errors: string[];
  imageOk: boolean;
  heard: string | null;
}

/** Runs one case against a fresh backup, then checks that a genuine primary gets protected. */
function runCase(c: Case, seed: number): Outcome {
  const clock = new VirtualClock();
  const net = new Net(clock, new Prng(seed), 1);
  const events: Array<{ name: string; d: Record<string, unknown> }> = [];
  const replicaFor = (h: { pageCount: number; diskBytes: number }): Replica => {
    const r = new MemReplica(h.pageCount, h.diskBytes ? new MemDiskTarget(h.diskBytes) : null);
    // The adversary's memory is no guest: its resume either throws (as a real one would) or is taken on trust.
    r.resume = c.resumeThrows
      ? () => {
          throw new TypeError('not a bootable guest');
        }
      : () => ({ resumed: true });
    return r;
  };
  const backup = new Backup(
    clock,
    { pageCountMax: PAGE_COUNT_MAX, batchPagesMax: 64, handshakeTimeoutMs: 200, copySilenceMs: 200, replicaFor },
    {
      event: (name, d) => {
        events.push({ name, d });
        if (process.env.HOSTILE_DEBUG) console.log(name, JSON.stringify(d));
      },
    },
  );
  const [b, p] = net.pair();
  backup.attach(b);
  const adv = new Adversary(p, seed);
  let link = p;
  const again = (): Adversary => {
    // a later connection of the same adversary
    const [b2, p2] = net.pair();
    backup.attach(b2);
    link = p2;
    return new Adversary(p2, seed);
  };
  let current = adv;
  c.steps.forEach((step, i) =>
    clock.setTimer(5 + i * 5, () => {
      if (step === NEW_CONNECTION) {
        current = again();
        return;
      }
      step(current);
    }),
  );
  clock.runUntil(CASE_MS);
  void link;
  const committed = backup.committedEpoch;
  const image = backup.replicaImage;
  const imageOk =
    committed === null ||
    backup.domain !== 'adv' ||
    image === null ||
    (adv.snapshots.get(committed) ?? current.snapshots.get(committed)) === image.crc32c();
  const heard = c.heard?.(current) ?? null;
  return {
    failovers: events.filter((e) => e.name === 'failover').length,
    internal: events.filter((e) => e.name === 'internal-error').map((e) => String(e.d.message)),
    state: backup.state,
    committed,
    errors: [...adv.errors(), ...(current === adv ? [] : current.errors())],
    imageOk,
    genuine: backup.state === 'failed-over' ? 'fenced by design' : genuinePrimary(clock, net, backup),
    heard,
  };
}

/** A step that opens a new connection; the steps after it speak on that one. */
const NEW_CONNECTION: Step = () => {};

/** A real primary attaches after the case: it must reach 'protected' with acked checkpoints. */
function genuinePrimary(clock: VirtualClock, net: Net, backup: Backup): string {
  const domain = new StepDomain(128, 7, clock, () => {});
  const primary = new Primary(domain, new OutputBuffer(() => {}), clock, {
    intervalMs: 20,
    compressor: 'zstd',
    cachePages: 16,
    maxInFlight: 2,
    heartbeatTimeoutMs: 100,
    batchPagesMax: 64,
    deviceStateMax: 4096,
  });
  primary.start();
  const [b, p] = net.pair();
  backup.attach(b);
  primary.attach(p);
  clock.runUntil(clock.now() + 1000);
  const s = primary.stats();
  primary.stop();
  clock.runUntil(clock.now() + 50);
  return s.state === 'protected' && s.ackedEpoch >= 3 ? 'protected' : `${s.state} (acked ${s.ackedEpoch})`;
}

// ---- the cases, from docs/protocol.md -------------------------------------------------------

const close: Step = (a) => a.link.close();
const goodbye: Step = (a) => a.link.send(Rec.GOODBYE, new Uint8Array(0));
const wait: Step = () => {};
const waits = (n: number): Step[] => Array.from({ length: n }, () => wait);
/** A session with its first (FULL) checkpoint committed: a live session from here on. */
const committedSession: Step[] = [(a) => a.hello(), (a) => a.checkpoint(1, true), ...waits(4)];

/** Every HELLO field at and past its bounds: [field, value, accepted]. */
const HELLO_VALUES: Array<[string, unknown, boolean]> = [
  ...[
    '',
    '.',
    '..',
    '../../../pwned',
    'a/b',
    '/etc/passwd',
    'x'.repeat(65),
    'a\u0000b',
    'ä',
    ' a',
    '-a',
    '.hidden',
    'a b',
    'a\nb',
    'a\\b',
    123,
    null,
    [],
    {},
  ].map((v): [string, unknown, boolean] => ['domain', v, false]),
  ['domain', 'a', true],
  ['domain', 'x'.repeat(64), true],
  ['domain', 'A.b_c-1', true],
  ...intBounds('pageCount', 1, PAGE_COUNT_MAX),
  ['pageCount', 2 ** 53, false],
  ['pageCount', 2 ** 32 + 1, false],
  ...intBounds('intervalMs', 1, 60_000),
  ...intBounds('heartbeatTimeoutMs', 10, 600_000),
  ...intBounds('deviceStateMax', 0, DEVICE_STATE_BYTES_MAX),
  ['diskBytes', -512, false],
  ['diskBytes', 1000, false],
  ['diskBytes', 2 ** 44 + 512, false],
  ['diskBytes', 0, true],
  ['diskBufferBytesMax', -1, false],
  ['diskBufferBytesMax', 2 ** 40 + 1, false],
  ['diskBufferBytesMax', 0, true],
  ['pageSize', 8192, false],
  ['pageSize', 0, false],
  ['pageSize', '4096', false],
  ['pageSize', undefined, false],
  ['kind', 'kvm', false],
  ['kind', '', false],
  ['kind', 1, false],
  ['kind', 'xen', true],
  ['compressor', 'gzip', false],
  ['compressor', null, false],
  ['compressor', 'lz4', true],
  ['compressor', 'none', true],
  ['sessionId', '', false],
  ['sessionId', 's'.repeat(257), false],
  ['sessionId', 7, false],
  ['sessionId', 's'.repeat(256), true],
  ['lineage', 'l-0123456789', true],
  ['lineage', 'short', false],
  ['lineage', 'Upper-Case-1', false],
  ['lineage', 'l/../../etc/x', false],
  ['lineage', 'l'.repeat(65), false],
  ['lineage', 7, false],
  ['ackedEpoch', 1, false],
  ['lastEpoch', 1, false],
];

function intBounds(field: string, min: number, max: number): Array<[string, unknown, boolean]> {
  return [
    [field, min, true],
    [field, max, true],
    [field, min - 1, false],
    [field, max + 1, false],
    [field, min + 0.5, false],
    [field, String(min), false],
    [field, null, false],
    [field, undefined, false],
    [field, [min], false],
    [field, 1e308, false],
  ];
}

const helloCases: Case[] = HELLO_VALUES.map(([field, value, ok]) => ({
  name: `HELLO ${field}=${JSON.stringify(value)?.slice(0, 24) ?? 'missing'} ${ok ? 'accepted' : 'refused'}`,
  steps: [
    (a) => a.hello({ [field]: value }),
    ...waits(2),
    (a) => {
      const refused = a.errors().includes(ErrorCode.HANDSHAKE),
        acked = a.got.some((r) => r.type === Rec.HELLO_ACK);
      if (refused === ok || acked !== ok)
        throw new Error(`HELLO ${field}=${JSON.stringify(value)}: accepted ${acked}, refused ${refused}`);
    },
    close,
  ],
}));

const helloBodies: Array<[string, Buffer]> = [
  ['empty', Buffer.alloc(0)],
  ['3 octets', Buffer.from([1, 0, 0])],
  ['version only', Buffer.from([1, 0, 0, 0])],
  ['not JSON', Buffer.concat([Buffer.from([1, 0, 0, 0]), Buffer.from('{domain')])],
  ['JSON array', jsonBody([1, 2], 1)],
  ['JSON null', jsonBody(null, 1)],
  ['JSON string', jsonBody('adv', 1)],
  ['nested 10000 deep', Buffer.concat([Buffer.from([1, 0, 0, 0]), Buffer.from('['.repeat(10000) + ']'.repeat(10000))])],
  ['1 MiB of JSON', jsonBody({ ...HELLO_OK, pad: 'x'.repeat(1 << 20) }, 1)],
  ['version 0', jsonBody(HELLO_OK, 0)],
  ['version 2', jsonBody(HELLO_OK, 2)],
  ['version 2^32-1', jsonBody(HELLO_OK, 2 ** 32 - 1)],
  ['invalid UTF-8', Buffer.concat([Buffer.from([1, 0, 0, 0]), Buffer.from([0xff, 0xfe, 0x7b, 0x7d])])],
];
const helloBodyCases: Case[] = helloBodies.map(([what, body]) => ({
  name: `HELLO body: ${what}`,
  steps: [(a) => a.link.send(Rec.HELLO, body), ...waits(2), close],
}));

/** A plausible body for each record type (right shape, epoch 1 or 2), and a malformed one. */
function bodiesFor(type: number): Array<[string, Buffer]> {
  const e = 2;
  const good: Record<number, Buffer> = {
    [Rec.HELLO]: jsonBody(HELLO_OK, 1),
    [Rec.HELLO_ACK]: jsonBody({ accepted: true }),
    [Rec.CHECKPOINT_BEGIN]: checkpointBegin(e, false),
    [Rec.PAGE_BATCH]: withEpoch(e, new Uint8Array(8)),
    [Rec.DEVICE_STATE]: withEpoch(e, new Uint8Array(4)),
    [Rec.CHECKPOINT_END]: checkpointEnd(e, 0),
    [Rec.ACK]: ackBody(e),
    [Rec.HEARTBEAT]: heartbeatBody(e, 5),
    [Rec.TAKEOVER]: epochBody(e),
    [Rec.GOODBYE]: Buffer.alloc(0),
    [Rec.ERROR]: jsonBody({ code: 'ERR_X', message: 'x'.repeat(5000) }),
    [Rec.DISK_WRITE]: diskWriteBody(e, 0, 512, 0, new Uint8Array(512)),
    [Rec.DISK_SYNC]: diskSyncBody(0, new Uint8Array(512)),
    [Rec.DISK_SYNC_END]: diskSyncEndBody(512),
    [Rec.DISK_REFS]: diskRefsBody(e, [{ pfn: 0, offsetBytes: 0, crc32c: 0 }]),
    [Rec.DISK_VERIFY]: diskVerifyBody(e, { crc32c: 0, rangeBytes: 4096, rangeCrcs: new Uint32Array(1) }),
    [Rec.DISK_SCRUB]: diskScrubBody(e, {
      ranges: [{ offsetBytes: 0, lengthBytes: 4096, crc32c: 0 }],
      passEnd: true,
      rangeBytes: 4096,
    }),
    [Rec.NET_EXPOSURE]: withEpoch(e, jsonBody({ released: 0, flows: [] })),
    [Rec.MEMORY_VERIFY]: memoryVerifyBody(e, 4, new Uint32Array(ADV_PAGES / 4)),
  };
  return [
    ['plausible', good[type] ?? Buffer.alloc(16)],
    ['1 octet', Buffer.alloc(1)],
    ['epoch 2^64-1', Buffer.alloc(24, 0xff)],
  ];
}

/** Session states, as the steps that reach them. */
const STATES: Array<[string, Step[]]> = [
  ['before HELLO', []],
  ['after HELLO', [(a) => a.hello(), wait]],
  ['inside the FULL checkpoint', [(a) => a.hello(), (a) => a.begin(1, true)]],
  ['after the first commit', committedSession],
  ['inside an incremental checkpoint', [...committedSession, (a) => a.begin(2, false)]],
  ['after GOODBYE, new connection', [...committedSession, goodbye, wait, NEW_CONNECTION]],
];
const TYPES = [...Object.values(Rec), 0x7ffe, 0xffff];
const recordCases: Case[] = STATES.flatMap(([state, reach]) =>
  TYPES.flatMap((type) =>
    bodiesFor(type).map(
      ([what, body]): Case => ({
        // Ended with GOODBYE: whatever the record did, no failover may follow.
        name: `type ${type} (${what}) ${state}`,
        steps: [...reach, (a) => a.link.send(type, body), wait, goodbye, wait, close],
      }),
    ),
  ),
);

/** Checkpoint rules (docs/protocol.md "Session", "Disk"): each breaks one; a protocol error, nothing applied. */
const RULES: Array<[string, Step[]]> = [
  ['first checkpoint not FULL', [(a) => a.hello(), (a) => a.checkpoint(1, false)]],
  ['FULL after a commit', [...committedSession, (a) => a.checkpoint(2, true)]],
  ['epoch skips', [...committedSession, (a) => a.checkpoint(3, false)]],
  ['epoch repeats', [...committedSession, (a) => a.checkpoint(1, false)]],
  ['BEGIN while one is open', [...committedSession, (a) => a.begin(2, false), (a) => a.begin(3, false)]],
  [
    'batch of another epoch',
    [...committedSession, (a) => a.begin(2, false), (a) => a.batch(3, [1]), (a) => a.device(2), (a) => a.end(2, 1)],
  ],
  [
    'pfn twice (incremental)',
    [...committedSession, (a) => a.begin(2, false), (a) => a.batch(2, [1, 1]), (a) => a.device(2), (a) => a.end(2, 2)],
  ],
  [
    'pfn twice across batches',
    [
      ...committedSession,
      (a) => a.begin(2, false),
      (a) => a.batch(2, [1]),
      (a) => a.batch(2, [1]),
      (a) => a.device(2),
      (a) => a.end(2, 2),
    ],
  ],
  [
    'FULL repeats a page instead of another',
    [
      (a) => a.hello(),
      (a) => a.begin(1, true),
      (a) => a.batch(1, [...allPages().slice(1), 1]),
      (a) => a.device(1),
      (a) => a.end(1, ADV_PAGES),
    ],
  ],
  [
    'pfn past the guest',
    [
      ...committedSession,
      (a) => a.begin(2, false),
      (a) => a.batch(2, [ADV_PAGES]),
      (a) => a.device(2),
      (a) => a.end(2, 1),
    ],
  ],
  [
    'END counts fewer',
    [...committedSession, (a) => a.begin(2, false), (a) => a.batch(2, [1, 2]), (a) => a.device(2), (a) => a.end(2, 1)],
  ],
  [
    'END counts more',
    [...committedSession, (a) => a.begin(2, false), (a) => a.batch(2, [1]), (a) => a.device(2), (a) => a.end(2, 2)],
  ],
  ['no DEVICE_STATE', [...committedSession, (a) => a.begin(2, false), (a) => a.batch(2, [1]), (a) => a.end(2, 1)]],
  [
    'two DEVICE_STATE',
    [...committedSession, (a) => a.begin(2, false), (a) => a.device(2), (a) => a.device(2), (a) => a.end(2, 0)],
  ],
  [
    'DEVICE_STATE past deviceStateMax',
    [...committedSession, (a) => a.begin(2, false), (a) => a.device(2, 4097), (a) => a.end(2, 0)],
  ],
  [
    'FULL with fewer pages',
    [(a) => a.hello(), (a) => a.begin(1, true), (a) => a.batch(1, [0, 1]), (a) => a.device(1), (a) => a.end(1, 2)],
  ],
  [
    'garbage container',
    [
      ...committedSession,
      (a) => a.begin(2, false),
      (a) => a.link.send(Rec.PAGE_BATCH, withEpoch(2, Buffer.from('garbage!garbage!'))),
    ],
  ],
  [
    'truncated container',
    [
      ...committedSession,
      (a) => a.begin(2, false),
      (a) => a.link.send(Rec.PAGE_BATCH, withEpoch(2, new Uint8Array([1, 0, 0, 0, 200, 0, 0, 0]))),
    ],
  ],
  [
    'DISK_WRITE without a disk',
    [...committedSession, (a) => a.link.send(Rec.DISK_WRITE, diskWriteBody(2, 0, 512, 0, new Uint8Array(512)))],
  ],
  [
    'DISK_REFS without a disk',
    [
      ...committedSession,
      (a) => a.begin(2, false),
      (a) => a.link.send(Rec.DISK_REFS, diskRefsBody(2, [{ pfn: 1, offsetBytes: 0, crc32c: 0 }])),
    ],
  ],
  [
    'DISK_VERIFY without a disk',
    [
      ...committedSession,
      (a) => a.begin(2, false),
      (a) =>
        a.link.send(Rec.DISK_VERIFY, diskVerifyBody(2, { crc32c: 0, rangeBytes: 4096, rangeCrcs: new Uint32Array(1) })),
    ],
  ],
  [
    'ERROR from the primary',
    [...committedSession, (a) => a.link.send(Rec.ERROR, jsonBody({ code: 'ERR_X', message: 'bye' }))],
  ],
];
const ruleCases: Case[] = RULES.map(([name, steps]) => ({
  name: `rule: ${name}`,
  steps: [...steps, ...waits(3), close],
}));

const DISK = { diskBytes: 8192, diskBufferBytesMax: 1 << 20 };
const DISK_RULES: Array<[string, Step[]]> = [
  ['BEGIN before DISK_SYNC_END', [(a) => a.hello(DISK), (a) => a.checkpoint(1, true)]],
  [
    'DISK_SYNC_END miscounts',
    [
      (a) => a.hello(DISK),
      (a) => a.link.send(Rec.DISK_SYNC, diskSyncBody(0, new Uint8Array(512))),
      (a) => a.link.send(Rec.DISK_SYNC_END, diskSyncEndBody(1024)),
    ],
  ],
  [
    'DISK_SYNC past the disk',
    [(a) => a.hello(DISK), (a) => a.link.send(Rec.DISK_SYNC, diskSyncBody(8192, new Uint8Array(512)))],
  ],
  [
    'DISK_SYNC after the copy',
    [
      (a) => a.hello(DISK),
      (a) => a.link.send(Rec.DISK_SYNC_END, diskSyncEndBody(0)),
      (a) => a.link.send(Rec.DISK_SYNC, diskSyncBody(0, new Uint8Array(512))),
    ],
  ],
  [
    'DISK_WRITE past the disk',
    [
      (a) => a.hello(DISK),
      (a) => a.link.send(Rec.DISK_SYNC_END, diskSyncEndBody(0)),
      (a) => a.link.send(Rec.DISK_WRITE, diskWriteBody(1, 7680, 1024, 0, new Uint8Array(1024))),
    ],
  ],
  [
    'DISK_REFS pfn past the guest',
    [
      (a) => a.hello(DISK),
      (a) => a.link.send(Rec.DISK_SYNC_END, diskSyncEndBody(0)),
      (a) => a.begin(1, true),
      (a) => a.link.send(Rec.DISK_REFS, diskRefsBody(1, [{ pfn: ADV_PAGES, offsetBytes: 0, crc32c: 0 }])),
    ],
  ],
  [
    'DISK_REFS whose block does not match',
    [
      (a) => a.hello(DISK),
      (a) => a.link.send(Rec.DISK_SYNC_END, diskSyncEndBody(0)),
      (a) => a.begin(1, true),
      (a) => a.batch(1, allPages().slice(1)),
      (a) => a.link.send(Rec.DISK_REFS, diskRefsBody(1, [{ pfn: 0, offsetBytes: 0, crc32c: 1 }])),
      (a) => a.device(1),
      (a) => a.end(1, ADV_PAGES),
    ],
  ],
];
const diskRuleCases: Case[] = DISK_RULES.map(([name, steps]) => ({
  name: `disk rule: ${name}`,
  disk: true,
  steps: [...steps, ...waits(3), close],
}));

/** Sessions that end in every way; failover only where a live session was lost. */
const endingCases: Case[] = [
  { name: 'end: close before HELLO (a port scan)', steps: [close] },
  { name: 'end: silent before HELLO', steps: [...waits(80)] },
  { name: 'end: HELLO, then close', steps: [(a) => a.hello(), wait, close] },
  { name: 'end: HELLO, then silence', steps: [(a) => a.hello(), ...waits(80)] },
  {
    name: 'end: FULL begun, then close',
    steps: [(a) => a.hello(), (a) => a.begin(1, true), (a) => a.batch(1, [0]), close],
  },
  { name: 'end: committed, then close (primary gone)', failover: true, steps: [...committedSession, close] },
  { name: 'end: committed, then silence (primary gone)', failover: true, steps: [...committedSession, ...waits(80)] },
  {
    name: 'end: committed, incremental half sent, then close',
    failover: true,
    steps: [...committedSession, (a) => a.begin(2, false), (a) => a.batch(2, [3]), close],
  },
  {
    name: 'end: a FULL that repeats pages (a pre-copy) commits, then close',
    failover: true,
    steps: [
      (a) => a.hello(),
      (a) => a.begin(1, true),
      (a) => a.batch(1, allPages()),
      (a) => a.batch(1, [3, 0, 3]),
      (a) => {
        a.snapshots.set(1, loadAddon().crc32c(a.mem));
        a.device(1);
        a.end(1, ADV_PAGES + 3);
      },
      ...waits(4),
      close,
    ],
  },
  {
    name: 'end: committed twice, then close',
    failover: true,
    steps: [...committedSession, (a) => a.checkpoint(2, false), ...waits(4), close],
  },
  { name: 'end: committed, GOODBYE', steps: [...committedSession, goodbye, wait, close] },
  { name: 'end: GOODBYE, then a port scan', steps: [...committedSession, goodbye, wait, NEW_CONNECTION, close] },
  {
    name: 'end: GOODBYE, then an idle connection',
    steps: [...committedSession, goodbye, wait, NEW_CONNECTION, ...waits(80)],
  },
  {
    name: 'end: GOODBYE, then garbage',
    steps: [
      ...committedSession,
      goodbye,
      wait,
      NEW_CONNECTION,
      (a) => a.link.send(0x4745, Buffer.from('T / HTTP/1.1')),
      close,
    ],
  },
  {
    name: 'end: GOODBYE, then HELLO of the same domain and close',
    steps: [...committedSession, goodbye, wait, NEW_CONNECTION, (a) => a.hello(), wait, close],
  },
  {
    name: 'end: GOODBYE, then HELLO of the same domain and silence',
    steps: [...committedSession, goodbye, wait, NEW_CONNECTION, (a) => a.hello(), ...waits(80)],
  },
  {
    name: 'end: GOODBYE, then HELLO of another domain and close',
    steps: [
      ...committedSession,
      goodbye,
      wait,
      NEW_CONNECTION,
      (a) => a.hello({ domain: 'other', pageCount: 8 }),
      wait,
      close,
    ],
  },
  {
    name: 'end: committed, protocol error, then close',
    steps: [...committedSession, (a) => a.begin(5, false), wait, close],
  },
  {
    name: 'end: a second connection while a session is open',
    failover: true,
    steps: [...committedSession, NEW_CONNECTION, (a) => a.hello(), wait, close, ...waits(4), (a) => a.link.close()],
  },
  {
    name: 'end: committed, then close, and the image does not resume',
    resumeThrows: true,
    steps: [...committedSession, close],
  },
];

/**
 * docs/protocol.md "Reconnect": a primary with a lineage, a session of it committed, the ways to continue it and not.
 */
const LINEAGE = 'l-adversary-1';
const lineageSession: Step[] = [(a) => a.hello({ lineage: LINEAGE }), (a) => a.checkpoint(1, true), ...waits(4)];
const resume =
  (fields: Record<string, unknown> = {}): Step =>
  (a) =>
    a.hello({ lineage: LINEAGE, ackedEpoch: 1, lastEpoch: 1, ...fields });
// a protocol error: dropped, no failover
const broken: Step[] = [(a) => a.begin(5, false), wait, close, NEW_CONNECTION];
const helloAck = (a: Adversary): Record<string, unknown> => {
  const r = a.got.find((x) => x.type === Rec.HELLO_ACK);
  return r ? (JSON.parse(r.body.toString('utf8')) as Record<string, unknown>) : {};
};
const continuedAndAcked =
  (epoch: number) =>
  (a: Adversary): string | null =>
    helloAck(a).continues !== true
      ? `HELLO_ACK ${JSON.stringify(helloAck(a))} does not continue`
      : a.acked().includes(epoch)
        ? null
        : `checkpoint ${epoch} was not acknowledged (errors ${a.errors().join(',')})`;
const fullCopy = (a: Adversary): string | null =>
  helloAck(a).continues === false ? null : `HELLO_ACK ${JSON.stringify(helloAck(a))} continues`;
const reconnectCases: Case[] = [
  {
    name: 'reconnect: after a protocol error, the session continues (verified) and commits',
    heard: continuedAndAcked(2),
    steps: [...lineageSession, ...broken, resume(), wait, (a) => a.continued(2), ...waits(4), goodbye, wait, close],
  },
  {
    name: 'reconnect: continued, then close (live again: fails over)',
    failover: true,
    heard: continuedAndAcked(2),
    steps: [...lineageSession, ...broken, resume(), wait, (a) => a.continued(2), ...waits(4), close],
  },
  {
    name: 'reconnect: continued with digests that differ: nothing commits, no failover',
    heard: (a) => (a.errors().includes(ErrorCode.MEMORY_DIVERGED) ? null : 'no ERR_MEMORY_DIVERGED'),
    steps: [...lineageSession, ...broken, resume(), wait, (a) => a.continued(2, 'wrong'), ...waits(4), close],
  },
  {
    name: 'reconnect: continued without MEMORY_VERIFY is refused',
    heard: (a) => (a.errors().includes(ErrorCode.PROTOCOL) ? null : 'no ERR_PROTOCOL'),
    steps: [...lineageSession, ...broken, resume(), wait, (a) => a.continued(2, 'none'), ...waits(4), close],
  },
  {
    name: 'reconnect: a continued checkpoint in live rounds repeats a page: decoded in place, verified, acked',
    heard: continuedAndAcked(2),
    steps: [...lineageSession, ...broken, resume(), wait, (a) => a.liveContinued(2, 6), ...waits(4), goodbye, close],
  },
  ...[6, 7].map(
    (next): Case => ({
      // The next connection is a fresh adversary (its memory as at checkpoint 1): page 6 as the
      // lost round sent it is in the image, and only a continued checkpoint that sends it again verifies.
      name: `reconnect: lost after a live round decoded page 6 in place; the next sends page ${next}: ${
        next === 6 ? 'verified' : 'ERR_MEMORY_DIVERGED'
      }`,
      heard:
        next === 6
          ? continuedAndAcked(3)
          : (a) => (a.errors().includes(ErrorCode.MEMORY_DIVERGED) ? null : 'no ERR_MEMORY_DIVERGED'),
      steps: [
        ...lineageSession,
        ...broken,
        resume(),
        wait,
        (a) => a.liveContinued(2, 6, true),
        wait,
        close,
        NEW_CONNECTION,
        resume(),
        wait,
        (a) => a.liveContinued(3, next),
        ...waits(4),
        goodbye,
        close,
      ],
    }),
  ),
  {
    name: 'reconnect: a page twice in a checkpoint after the first commit is refused',
    heard: (a) => (a.errors().includes(ErrorCode.PROTOCOL) ? null : 'no ERR_PROTOCOL'),
    steps: [
      ...lineageSession,
      (a) => a.begin(2, false),
      (a) => a.batch(2, [6]),
      (a) => a.batch(2, [6]),
      ...waits(3),
      close,
    ],
  },
  {
    name: 'reconnect: continued, then lost before its commit (no failover)',
    steps: [...lineageSession, ...broken, resume(), wait, (a) => a.begin(2, false), close],
  },
  {
    name: 'reconnect: a continued epoch that does not follow the kept one',
    steps: [...lineageSession, ...broken, resume(), wait, (a) => a.continued(1), ...waits(3), close],
  },
  {
    name: 'reconnect: MEMORY_VERIFY in a FULL checkpoint',
    steps: [(a) => a.hello({ lineage: LINEAGE }), (a) => a.begin(1, true), (a) => a.memVerify(1), ...waits(3), close],
  },
  {
    name: 'reconnect: MEMORY_VERIFY of too few regions',
    steps: [
      ...lineageSession,
      ...broken,
      resume(),
      wait,
      (a) => a.begin(2, false),
      (a) => a.link.send(Rec.MEMORY_VERIFY, memoryVerifyBody(2, 4, new Uint32Array(3))),
      ...waits(3),
      close,
    ],
  },
  {
    name: 'reconnect: another lineage copies all',
    heard: fullCopy,
    steps: [
      ...lineageSession,
      ...broken,
      resume({ lineage: 'l-another-one' }),
      wait,
      (a) => a.continued(2),
      ...waits(3),
      close,
    ],
  },
  {
    name: 'reconnect: a kept epoch outside acked..last copies all',
    heard: fullCopy,
    steps: [...lineageSession, ...broken, resume({ ackedEpoch: 2, lastEpoch: 3 }), wait, close],
  },
  {
    name: 'reconnect: acked/last without a lineage is refused',
    heard: (a) => (a.errors().includes(ErrorCode.HANDSHAKE) ? null : 'no ERR_HANDSHAKE'),
    steps: [...lineageSession, ...broken, (a) => a.hello({ ackedEpoch: 1, lastEpoch: 1 }), wait, close],
  },
  {
    name: 'reconnect: the same lineage on a new connection replaces the live session (no failover)',
    heard: continuedAndAcked(2),
    steps: [
      ...lineageSession,
      NEW_CONNECTION,
      resume(),
      wait,
      (a) => a.continued(2),
      ...waits(4),
      goodbye,
      wait,
      close,
    ],
  },
  {
    name: 'reconnect: another lineage on a new connection is refused; the live session then goes silent',
    failover: true,
    heard: (a) => (a.errors().includes(ErrorCode.HANDSHAKE) ? null : 'no ERR_HANDSHAKE'),
    steps: [...lineageSession, NEW_CONNECTION, resume({ lineage: 'l-another-one' }), wait, close],
  },
];

describe('41 hostile peer (structured adversary from docs/protocol.md)', () => {
  const all = [
    ...helloCases,
    ...helloBodyCases,
    ...recordCases,
    ...ruleCases,
    ...diskRuleCases,
    ...endingCases,
    ...reconnectCases,
  ];

  it(
    `41.H1 ${all.length} cases: the backup lives, fails over only by the rules, keeps its committed image, serves a ` +
      `genuine primary`,
    function () {
      this.timeout(300_000);
      const broken: string[] = [];
      all.forEach((c, i) => {
        let o: Outcome;
        try {
          o = runCase(c, 1000 + i);
        } catch (e) {
          broken.push(`${c.name}: escaped the engine: ${(e as Error).message}`);
          return;
        }
        const problems: string[] = [];
        if (o.internal.length) problems.push(`met a bug: ${o.internal[0]}`);
        if (o.failovers > 0 !== (c.failover === true))
          problems.push(`${o.failovers} failovers (the rules allow ${c.failover ? 'one' : 'none'})`);
        if (!o.imageOk) problems.push(`committed epoch ${o.committed} is not the adversary's checkpoint`);
        if (o.state !== 'failed-over' && o.genuine !== 'protected')
          problems.push(`a genuine primary then ended ${o.genuine}`);
        if (c.resumeThrows && o.state !== 'waiting') problems.push(`after a failed resume the backup is ${o.state}`);
        if (o.heard) problems.push(o.heard);
        if (problems.length) broken.push(`${c.name}: ${problems.join('; ')}`);
      });
      assert.equal(
        broken.length,
        0,
        `${broken.length} of ${all.length} cases broke an invariant:\n${broken.slice(0, 15).join('\n')}`,
      );
      assert.ok(all.length > 450, `the campaign has ${all.length} cases`);
    },
  );

  it('41.H2 a refused checkpoint answers ERR_PROTOCOL and leaves the committed image as it was', () => {
    for (const c of ruleCases.filter((r) => r.name.includes('after') || r.name.includes('twice'))) {
      const o = runCase(c, 7);
      assert.ok(
        o.errors.some((e) => e === ErrorCode.PROTOCOL || e === ErrorCode.BAD_PAGE_BATCH),
        `${c.name}: errors ${o.errors.join(',')}`,
      );
      assert.ok(o.imageOk, c.name);
    }
  });
});

// ---- the same against real processes: a `remusdb backup` on a TCP port -----------------------

/** Connects, sends these records (already framed), waits, closes: what a scanner or a forger does. */
async function rawPeer(port: number, records: Buffer[], holdMs = 150): Promise<void> {
  const s = net.connect(port, '127.0.0.1');
  s.on('error', () => {});
  await new Promise<void>((r) => {
    s.once('connect', () => r());
    s.once('error', () => r());
  });
  for (const r of records) s.write(r);
  await sleep(holdMs);
  s.destroy();
}

const helloRecord = (fields: Record<string, unknown>): Buffer =>
  encodeRecord(Rec.HELLO, jsonBody({ ...HELLO_OK, sessionId: `forged-${Date.now()}`, ...fields }, PROTOCOL_VERSION));

describe('41 hostile peer against a real backup process', function () {
  this.timeout(180_000);
  const dir = tmpDir('hostile');
  const outside = path.dirname(dir);
  const env = { ...process.env, REMUSDB_RUN_DIR: path.join(dir, 'run') };
  const kids: ChildProcess[] = [];
  const start = remusdbStarter(dir, env, kids);
  const status = (sock: string): Promise<Record<string, unknown>> =>
    controlRequest(path.join(env.REMUSDB_RUN_DIR, sock), { cmd: 'status' });
  after(() => {
    for (const k of kids) k.kill('SIGKILL');
  });

  it(
    '41.P1 after GOODBYE: scans, a path as domain name, huge and forged HELLOs — no failover, no file outside, a ' +
      'primary still protected',
    async () => {
      const port = await freePort();
      const backup = start(['backup', '--listen', `127.0.0.1:${port}`, '--insecure'], 'backup.log');
      await until(async () => fs.existsSync(path.join(env.REMUSDB_RUN_DIR, `backup-${port}.sock`)), 15000, 'backup');
      const protect = [
        'protect',
        'sim:victim',
        `127.0.0.1:${port}`,
        '--insecure',
        '--memory',
        '16MiB',
        '--disk',
        '1MiB',
        '-i',
        '50',
      ];
      const first = start([...protect, '--seconds', '3'], 'primary-1.log');
      await new Promise((r) => first.once('exit', r));
      assert.equal(first.exitCode, 0, fs.readFileSync(path.join(dir, 'primary-1.log'), 'utf8').slice(-1500));
      const planted = path.join(outside, 'pwned.backup.disk');
      fs.writeFileSync(planted, 'keep me');
      for (let i = 0; i < 5; i++) await rawPeer(port, []); // a port scan
      await rawPeer(port, [Buffer.from('GET / HTTP/1.0\r\n\r\n')]);
      for (const domain of ['../pwned', '../../../pwned', '/tmp/pwned', '..']) {
        await rawPeer(port, [helloRecord({ domain, diskBytes: 1 << 20, diskBufferBytesMax: 1 << 20 })]);
      }
      await rawPeer(port, [helloRecord({ domain: 'huge', pageCount: 5 * 2 ** 18 })], 400); // 5 GiB
      await rawPeer(port, [helloRecord({ domain: 'over', pageCount: 2 ** 40 })]);
      await rawPeer(port, [helloRecord({ domain: 'victim', pageCount: 4096 })], 50); // valid HELLO, then gone
      await rawPeer(port, [], 1500); // idle past the old session's heartbeat timeout
      assert.equal(backup.exitCode, null, 'the backup process is alive');
      const st = await status(`backup-${port}.sock`);
      assert.notEqual(st.state, 'failed-over');
      assert.equal(fs.readFileSync(planted, 'utf8'), 'keep me', 'a file outside the directory was changed');
      fs.rmSync(planted);
      assert.deepEqual(
        fs.readdirSync(outside).filter((f) => f.includes('pwned')),
        [],
      );
      const log = fs.readFileSync(path.join(dir, 'backup.log'), 'utf8');
      assert.doesNotMatch(log, /FAILOVER/);
      assert.match(log, /is not a domain name/);
      assert.match(log, /\(the line above repeated \d+ more times\)/, 'the scans were said once, then counted');
      const second = start([...protect, '--seconds', '4'], 'primary-2.log');
      await until(
        async () => ((await status(`backup-${port}.sock`)).committedEpoch as number) > 2,
        20000,
        'a genuine primary protected',
      );
      await new Promise((r) => second.once('exit', r));
      assert.equal(second.exitCode, 0);
      backup.kill('SIGTERM');
    },
  );

  it('41.P2 a second protect of the same domain refuses and touches nothing', async () => {
    const first = start(['protect', 'sim:dup', '-b', '--memory', '16MiB', '--disk', '1MiB'], 'dup-1.log');
    const disk = path.join(env.REMUSDB_RUN_DIR, 'sim-dup.primary.disk');
    await until(async () => fs.existsSync(path.join(env.REMUSDB_RUN_DIR, 'primary-dup.sock')), 15000, 'first protect');
    await sleep(500);
    const before = fs.statSync(disk);
    const r = runCli(['protect', 'sim:dup', '-b', '--memory', '16MiB', '--disk', '1MiB'], 30000, env);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /held by process \d+/);
    assert.equal(first.exitCode, null, 'the first protect still runs');
    const st = await controlRequest(path.join(env.REMUSDB_RUN_DIR, 'primary-dup.sock'), { cmd: 'status' });
    assert.equal(st.role, 'primary');
    assert.equal(fs.statSync(disk).ino, before.ino, "the first run's disk was not recreated");
    first.kill('SIGTERM');
    await new Promise((res) => first.once('exit', res));
    const again = runCli(
      ['protect', 'sim:dup', '-b', '--memory', '16MiB', '--disk', '1MiB', '--seconds', '1'],
      30000,
      env,
    );
    assert.equal(again.status, 0, `after the first stopped, protect runs: ${again.stderr.slice(-500)}`);
  });
});

describe('41 refused primaries', () => {
  it(
    '41.R1 a backup that accepts connections but refuses the HELLO is retried with capped backoff, ' + 'said once',
    async function () {
      this.timeout(20_000);
      let connections = 0;
      const srv = net.createServer((s) => {
        connections++;
        s.destroy();
      });
      await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
      const port = (srv.address() as net.AddressInfo).port;
      const lines: string[] = [];
      let attached: { close(): void } | null = null;
      const rc: Reconnector = new Reconnector({
        backup: { host: '127.0.0.1', port },
        security: { insecure: true },
        log: (l) => lines.push(l),
        attached: () => attached !== null,
        attach: (link) => {
          attached = link;
          link.onClose(() => {
            attached = null;
            rc.lost('backup lost (the backup closed the connection before answering HELLO)');
          });
        },
      });
      rc.connect();
      await sleep(3000);
      rc.stop();
      srv.close();
      // 100, 200, 400, 800, 1000 ms apart: about 6 attempts in 3 s (it was one every 100 ms: 30).
      assert.ok(connections >= 3 && connections <= 7, `${connections} connections in 3 s`);
      assert.equal(lines.filter((l) => /backup lost/.test(l)).length, 1, lines.join('\n'));
      assert.equal(rc.nextDelayMs, RECONNECT_DELAY_MS_MAX, 'the backoff grew to its cap');
    },
  );

  it('41.R2 why a backup is unreachable is one plain sentence per reason', () => {
    const tls = { psk: Buffer.alloc(32) },
      plain = { insecure: true as const };
    assert.match(unreachableReason(new Error('connect ECONNREFUSED 127.0.0.1:1'), plain), /refused .*remusdb backup/);
    assert.match(unreachableReason(new Error('getaddrinfo ENOTFOUND nohost'), plain), /does not resolve/);
    assert.match(
      unreachableReason(
        new Error('Client network socket disconnected before secure TLS connection was established'),
        tls,
      ),
      /--insecure/,
    );
    const said: string[] = [];
    const log = new ChangeLog((l) => said.push(l));
    for (let i = 0; i < 5; i++) log.say(`a peer left (primary silent for ${200 + i} ms)`);
    log.say('something else');
    assert.deepEqual(said, [
      'a peer left (primary silent for 200 ms)',
      '(the line above repeated 4 more times)',
      'something else',
    ]);
  });
});

describe('41 host locks', () => {
  it(
    '41.L1 a lock held by a live process refuses; ' + 'one left by a dead process is taken over; release is idempotent',
    () => {
      const dir = tmpDir('lock');
      const file = path.join(dir, 'protect-sim-x.lock');
      fs.writeFileSync(file, `${process.ppid}\n`); // a live process that is not us
      assert.throws(
        () => HostLock.acquire(file, 'protection of sim:x'),
        (e: RemusError) => e.code === ErrorCode.LOCKED && /held by process \d+/.test(e.message),
      );
      assert.equal(fs.readFileSync(file, 'utf8').trim(), String(process.ppid), 'the refused lock is untouched');
      const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']);
      fs.writeFileSync(file, `${dead.stdout.toString()}\n`); // its owner has exited
      const lock = HostLock.acquire(file, 'protection of sim:x');
      assert.equal(fs.readFileSync(file, 'utf8').trim(), String(process.pid));
      assert.equal(lock.tookOverFrom, Number(dead.stdout.toString()), 'it says whose crashed run it took over');
      lock.release();
      lock.release();
      assert.equal(fs.existsSync(file), false);
      fs.symlinkSync(path.join(dir, 'elsewhere'), file); // a planted link is never followed: replaced by a real lock
      const again = HostLock.acquire(file, 'x');
      assert.equal(again.tookOverFrom, null, 'no crashed run before it');
      assert.ok(fs.lstatSync(file).isFile());
      assert.equal(fs.existsSync(path.join(dir, 'elsewhere')), false);
      again.release();
    },
  );
});

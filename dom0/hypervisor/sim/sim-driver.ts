// sim-driver: the built-in simulated domain (`sim:<name>`) as a domain driver. The guest runs
// in this process (a vCPU worker over a native arena, guest-program.ts); its outputs go
// through an output buffer held here and then to the client it names (--client); its disk
// is an image in the run directory whose completed writes reach a replicator directly.
// On the backup, the replica is an arena the size of the guest (sim-replica.ts), and after a
// failover the resumed domain can be protected again in the same process (adopt: reprotect).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BlockFile } from '../../../blktap/block-file';
import type { BlockGenerations } from '../../../blktap/block-generations';
import { DiskReplicator } from '../../../blktap/replicator';
import { realClock } from '../../engine/clock';
import { OutputBuffer } from '../../engine/output-buffer';
import { ErrorCode, RemusError } from '../../errors';
import { loadAddon } from '../../native';
import { SIM_DEVICE_STATE_BYTES_MAX } from '../../limits';
import { parseHostPort } from '../../protocol/channel';
import { protectLockPath, runtimeDir } from '../../service/control';
import { HostLock } from '../../service/host-lock';
import type { DomainDriver, HeldOutputs, OpenedDomain, OpenRequest, ReplicaRequest, StatusDiskPort } from '../driver';
import type { JournalSink } from './disk-journal';
import type { Workload } from './guest-program';
import { checkSimGuestFitsHost } from './guest-size';
import { OutputSink } from './output-sink';
import { SimDomain, type SimOutput } from './sim-domain';
import { READ_TRACKING_BLOCKS_MAX, SimReplica } from './sim-replica';
import { replicaDiskFile } from '../replica-disk-file';

/** protect's options for a simulated guest. */
export interface SimOpenOptions {
  memoryBytes: number;
  workload: Workload;
  /** workload trace: the RDTRACE1 file replayed. */
  tracePath?: string;
  seed: number;
  stepsPerSec: number;
  /** host:port the guest sends its outputs to, or null. */
  client: string | null;
  /** The guest's disk (0: none); its image lives in the run directory. */
  diskBytes: number;
}

export const simDriver: DomainDriver = {
  kind: 'sim',
  wireKind: 'sim',
  title: 'simulated guest in this process (sim:<name>)',
  features: {
    backupHost: true,
    blackhole: true,
    precopy: true,
    continuedSession: true,
    disk: true,
    readTracking: true,
    netBufferNfqueue: true,
    netBufferPlug: true,
    commitProtection: true,
    journal: true,
    metrics: true,
    reprotect: true,
    reuseDisk: true,
    checksumOnFailover: true,
  },
  defaults: {
    heartbeatTimeoutMs: (intervalMs) => 2 * intervalMs + 100,
    deviceStateBytesMax: () => SIM_DEVICE_STATE_BYTES_MAX,
    netBuffer: null,
  },
  ownOptions: ['memory', 'workload', 'seed', 'rate', 'client', 'disk'],
  probe() {
    try {
      loadAddon();
      return { available: true, reason: 'the addon loads (arena, vCPU worker, codecs)' };
    } catch (e) {
      return { available: false, reason: (e as Error).message };
    }
  },
  open: async (req) => openSim(req),
  replicaFor: (req) => simReplicaFor(req),
  adopt: (replica) => adoptSim(replica as SimReplica),
};

function openSim(req: OpenRequest): OpenedDomain {
  const o = req.sim;
  if (!o) throw new RemusError(ErrorCode.BAD_ARGUMENT, `sim:${req.name}: no guest options`);
  checkSimGuestFitsHost(o.memoryBytes, `sim:${req.name}`); // before the lock and the disk
  const lock = HostLock.acquire(protectLockPath('sim', req.name), `protection of sim:${req.name}`);
  const made: { source?: BlockFile; sink?: OutputSink } = {};
  try {
    const sink = (made.sink = new OutputSink(o.client ? parseHostPort(o.client, 0) : null));
    const gate = new OutputBuffer<SimOutput>((x) => sink.deliver(x));
    const disk = simDisk(req, made);
    const domain = SimDomain.boot(
      o.memoryBytes,
      o.workload,
      o.seed,
      {
        name: req.name,
        stepsPerSec: o.stepsPerSec,
        onOutput: (x) => gate.push(x),
        deviceInfo: o.client ? { client: o.client } : {},
        diskPath: disk?.path,
        disk: disk ? diskSink(disk.replicator) : undefined,
      },
      o.tracePath,
    );
    warnHashing(domain, req.log);
    let closed = false;
    return simOpened(req.name, o.workload, domain, gate, sink, disk, async () => {
      if (closed) return;
      closed = true;
      sink.close();
      try {
        await domain.destroy();
        made.source?.close();
      } finally {
        lock.release();
      }
    });
  } catch (e) {
    made.sink?.close();
    made.source?.close();
    lock.release();
    throw e;
  }
}

/** The guest's disk image in the run directory, and its replicator (none for idle and trace guests). */
function simDisk(req: OpenRequest, made: { source?: BlockFile }): { path: string; replicator: DiskReplicator } | null {
  const o = req.sim!;
  if (o.diskBytes <= 0 || (o.workload !== 'oltp' && o.workload !== 'scan')) return null;
  fs.mkdirSync(runtimeDir(), { recursive: true });
  const file = path.join(runtimeDir(), `sim-${req.name}.primary.disk`);
  const source = (made.source = BlockFile.create(file, o.diskBytes));
  const replicator = new DiskReplicator(source, realClock, {
    unackedBytesMax: req.diskBufferBytesMax,
    inSync: false,
    readTrackingBlocksMax: req.readTracking ? READ_TRACKING_BLOCKS_MAX : 0,
  });
  return { path: file, replicator };
}

function warnHashing(domain: SimDomain, log: (line: string) => void): void {
  if (domain.dirtyMode === 'uffd-wp' || domain.dirtyMode === 'off') return;
  log(`warning: kernel dirty tracking unavailable (${domain.dirtyReason}); hashing pages instead (slower)`);
}

/** The OpenedDomain of a simulated guest, booted here or adopted from a replica. */
function simOpened(
  name: string,
  workload: string,
  domain: SimDomain,
  gate: OutputBuffer<SimOutput>,
  sink: OutputSink,
  disk: { path: string; replicator: DiskReplicator } | null,
  close: () => Promise<void>,
): OpenedDomain {
  const outputs: HeldOutputs = {
    gate,
    get onHoldMs() {
      return gate.onHoldMs;
    },
    set onHoldMs(fn) {
      gate.onHoldMs = fn;
    },
    stats: () => ({ ...gate.stats, holdMsP99: gate.holdMsP99, ...sink.stats }),
  };
  const port: StatusDiskPort | null = disk?.replicator ?? null;
  return {
    driver: simDriver,
    label: `sim:${name}`,
    name,
    domid: 0,
    crashedRunPid: null, // this process boots the guest: nothing of it ran before
    domain,
    outputs,
    disk: port,
    summary: `${(domain.pageCount * 4096) / 2 ** 20} MiB, ${workload}`,
    defaultInterfaces: () => [],
    status: () => ({
      guest: domain.describe(),
      outputs: outputs.stats(),
      disk: disk ? { path: disk.path, sizeBytes: disk.replicator.sizeBytes, ...disk.replicator.stats() } : null,
    }),
    close,
  };
}

/** reprotect: the domain a replica resumed, with its outputs and disk; the backup process owns them. */
function adoptSim(r: SimReplica): OpenedDomain {
  if (!r.domain || !r.gate || !r.sink) {
    throw new RemusError(ErrorCode.NO_DOMAIN, `the replica of sim:${r.name} has not resumed: nothing to reprotect`);
  }
  const disk = r.replicator && r.diskFile ? { path: r.diskFile.path, replicator: r.replicator } : null;
  return simOpened(r.name, 'resumed after a failover', r.domain, r.gate, r.sink, disk, async () => {
    /* the backup process owns it */
  });
}

function diskSink(r: DiskReplicator): JournalSink & { generations: BlockGenerations } {
  return {
    generations: r.generations,
    write: (off, data, durable) => r.onWrite(off, data, durable),
    read: (block, crc, gen) => r.onBlockRead(block, crc, gen),
  };
}

/** The replica for a simulated primary's HELLO: its disk made new, or this host's old copy reused. */
function simReplicaFor(req: ReplicaRequest): SimReplica {
  const h = req.hello;
  checkSimGuestFitsHost(h.pageCount * 4096, `${h.domain}`, ErrorCode.HANDSHAKE);
  const { file, reused } = replicaDiskFile(req);
  return new SimReplica(h.domain, h.pageCount, file, reused, req.checksumOnFailover); // owns disk, also on throw
}

// driver: what the protect and backup services need of a kind of domain, and nothing more.
// Above the engine there is one protect service and one backup service; a domain driver
// (sim, xen-pv, xen-pvh; later xen-hvm) opens a domain from its name and hands over the
// engine's ports (Domain, the disk port), the outputs it holds itself, the interfaces whose
// packets are its outputs, its defaults and its features. On the backup it makes the replica
// for an accepted HELLO. The shape follows Xen's migration v2: one generic loop (the engine
// and the services), an ops table per guest type (a driver).
//
// Every feature of `remusdb protect` and `remusdb backup` either works for a driver or is
// refused by `requireFeature` with the driver's reason; README's feature × driver table is
// made from FEATURES and each driver's `features` (test/32-drivers.test.ts keeps it true).
import type { HelloInfo } from '../engine/hello';
import type { DiskPort, Domain, OutputGate, Replica } from '../ports';
import { ErrorCode, RemusError } from '../errors';

/** The registry's keys (dom0/hypervisor/registry.ts). */
export type DriverKind = 'sim' | 'xen-pv' | 'xen-pvh';

/** What HELLO calls the kind of domain (docs/protocol.md): one replica type per value. */
export type WireKind = HelloInfo['kind'];

/** The features of the two commands, in README's order. */
export const FEATURES = {
  backupHost: { title: 'checkpoints to a backup host', option: 'protect <domain> <host>' },
  blackhole: { title: 'checkpoints to nowhere', option: 'protect -b' },
  precopy: { title: 'first copy live (pre-copy)', option: '' },
  continuedSession: { title: 'reconnect without a full copy', option: '' },
  disk: { title: 'replicated disk', option: 'protect --disk / --disk-image' },
  readTracking: { title: 'read tracking (pages sent as disk references)', option: '' },
  netBufferNfqueue: { title: 'network buffer: nfqueue', option: '--net-buffer nfqueue' },
  netBufferPlug: { title: 'network buffer: sch_plug', option: '--net-buffer plug' },
  commitProtection: { title: 'commit protection', option: '--commit-protection dscp, pgwire' },
  journal: { title: 'checkpoint journal', option: 'protect --journal' },
  metrics: { title: 'Prometheus metrics', option: '--metrics' },
  reprotect: { title: 'reprotect after a failover', option: 'reprotect' },
  reuseDisk: { title: 'backup reuses an old disk copy', option: 'backup --reuse-disk' },
  checksumOnFailover: { title: 'memory checksum at failover', option: 'backup --checksum-on-failover' },
} as const;

export type Feature = keyof typeof FEATURES;

/** A feature a driver has, or why not (a sentence a person can act on). */
export type Support = true | { reason: string };

/** The engine defaults that differ between kinds of domain, with why. */
export interface DriverDefaults {
  /** Silence that means the peer is gone, given the interval (a Xen save can stall on libxc). */
  heartbeatTimeoutMs(intervalMs: number): number;
  /** Largest device-state record a checkpoint carries, for a domain of pageCount pages. */
  deviceStateBytesMax(pageCount: number): number;
  /** Network buffer when none is named (Xen: sch_plug on the vifs, as xl remus); null: none. */
  netBuffer: 'plug' | 'nfqueue' | null;
}

/** What a driver's open() gets: the protect command's options, the driver reads its own. */
export interface OpenRequest {
  /** The domain as its driver names it (sim: after `sim:`; Xen: a name or id). */
  name: string;
  /** What the backup may buffer of unacknowledged disk writes. */
  diskBufferBytesMax: number;
  readTracking: boolean;
  sim?: import('./sim/sim-driver').SimOpenOptions;
  xen?: import('./xen/xen-driver').XenOpenOptions;
  log: (line: string) => void;
}

/** A disk port with the figures `status` and the metrics show. */
export type StatusDiskPort = DiskPort & { stats(): object };

/** The domain's own outputs, held by this process (a simulated guest's), with their figures. */
export interface HeldOutputs {
  readonly gate: OutputGate;
  /** Called with each released output's hold time (the metrics' histogram). */
  onHoldMs: ((ms: number) => void) | null;
  stats(): Record<string, unknown>;
}

/** A domain a driver opened for protection: the engine's ports and what the service shows. */
export interface OpenedDomain {
  readonly driver: DomainDriver;
  /** How status, logs and metrics name it (sim:<name>, or the Xen domain's name). */
  readonly label: string;
  /** One line for the log: its size and what it runs. */
  readonly summary: string;
  /** Its plain name (control socket, packet rules). */
  readonly name: string;
  readonly domid: number;
  readonly domain: Domain;
  readonly outputs: HeldOutputs | null;
  readonly disk: StatusDiskPort | null;
  /**
   * The pid of a protect of this domain that died without stopping while the domain ran on
   * (its lock was left), else null: the backup may have taken over, so outputs start held.
   * Null for a domain this process creates (a simulated one): nothing of it ran before.
   */
  readonly crashedRunPid: number | null;
  /** Interfaces whose incoming packets are the guest's output, when none are named (Xen: its vifs). */
  defaultInterfaces(): string[];
  /** status's guest, disk and outputs fields. */
  status(): Record<string, unknown>;
  /** Releases what open() made (an adopted domain: nothing, its process owns it). Idempotent. */
  close(): Promise<void>;
}

/** What a backup passes a driver with an accepted HELLO. */
export interface ReplicaRequest {
  hello: HelloInfo;
  /** Where the replica disk goes, chosen and locked by the backup service; null: none or reused. */
  diskFile: string | null;
  /** backup --reuse-disk: this host's existing copy of the domain's disk. */
  reuseDisk: string | null;
  checksumOnFailover: boolean;
  diskBufferBytesMax: number;
  log: (line: string) => void;
}

/** A backup's replica as the backup service holds it. */
export interface DriverReplica extends Replica {
  readonly name: string;
  /** Frees what an unresumed replica holds (its memory, its disk). */
  close(): void;
  /** The backup stops: stop what runs since a failover, then close. */
  stop(): Promise<void>;
  /** status's guest, outputs and disk fields. */
  status(): Record<string, unknown>;
  /** After the engine reported the resumed domain (Xen: tell the guest it is the new copy). */
  afterResume?(detail: Record<string, unknown>): void;
}

export interface DomainDriver {
  readonly kind: DriverKind;
  readonly wireKind: WireKind;
  /** One line for `remusdb doctor` and the README table. */
  readonly title: string;
  /** Each feature, or why this driver lacks it. */
  readonly features: Readonly<Record<Feature, Support>>;
  readonly defaults: DriverDefaults;
  /** protect's options only this driver reads (another driver refuses them when given). */
  readonly ownOptions: readonly string[];
  /** Whether this host can run the driver, and why not. */
  probe(): { available: boolean; reason: string };
  open(req: OpenRequest): Promise<OpenedDomain>;
  replicaFor(req: ReplicaRequest): DriverReplica;
  /** reprotect: protect again the domain a replica of this driver resumed (feature reprotect). */
  adopt?(replica: DriverReplica, log: (line: string) => void): OpenedDomain;
}

/** Throws ERR_BAD_ARGUMENT naming the feature, the driver and its reason when it lacks one. */
export function requireFeature(driver: DomainDriver, feature: Feature): void {
  const s = driver.features[feature];
  if (s === true) return;
  const f = FEATURES[feature];
  throw new RemusError(
    ErrorCode.BAD_ARGUMENT,
    `${f.title}${f.option ? ` (${f.option})` : ''} is not available for ${driver.kind} domains: ${s.reason}`,
  );
}

// coord-world: the seeded world of sim-world with a coordination service — a primary whose
// outputs pass an OwnedGate over its owner lease, a backup that fails over only once it has
// claimed the domain's key, and partitions: the link cut while both reach etcd, the primary
// or the backup isolated from everything, etcd unreachable for a while, the primary crashed.
// The invariant above all: at no instant do two copies release outputs (every output the old
// primary lets out comes before the instant the backup owns the domain, and while the old
// primary provably owned it). Then, per fault, the side that must end up owning does.
import { Backup } from '../../dom0/engine/backup';
import { OwnedGate } from '../../dom0/coordination/owned-gate';
import { OutputBuffer } from '../../dom0/engine/output-buffer';
import { Primary } from '../../dom0/engine/primary';
import type { Ownership, OwnershipClaimer } from '../../dom0/ports';
import { Prng } from '../../dom0/util/prng';
import { LeaseService, ModelOwnership } from './lease-model';
import { MemReplica, Net, StepDomain, VirtualClock, actorClock, type MemLink, reconnector } from './sim-world';

export const COORD_TTL_MS = 300;
export const COORD_MARGIN_MS = 40;

export type CoordFault =
  | { kind: 'none' }
  /** The replication link is cut (both still reach etcd); healed after forMs, or never (null). */
  | { kind: 'cut-link'; atMs: number; forMs: number | null }
  /** The primary's host loses every network: the link and etcd. */
  | { kind: 'isolate-primary'; atMs: number }
  /** The backup's host loses every network. */
  | { kind: 'isolate-backup'; atMs: number }
  /** Neither host reaches etcd for forMs (the link works). */
  | { kind: 'etcd-down'; atMs: number; forMs: number }
  | { kind: 'crash-primary'; atMs: number; silent: boolean }
  /** Only the primary loses etcd (an etcd minority on its side); the link and the backup's etcd work. */
  | { kind: 'etcd-minority-primary'; atMs: number }
  /** The link is cut for good; later, once the primary runs unprotected (outputs pass), its host loses etcd too. */
  | { kind: 'cut-then-isolate'; atMs: number; isolateAfterMs: number };

export interface CoordResult {
  seed: number;
  fault: CoordFault;
  violations: string[];
  failedOverAt: number | null;
  primaryState: string;
  outputsReleased: number;
}

export function pickCoordFault(rng: Prng): CoordFault {
  const atMs = 400 + rng.below(600);
  switch (rng.below(8)) {
    case 0:
      return { kind: 'cut-link', atMs, forMs: rng.chance(0.5) ? null : 100 + rng.below(800) };
    case 1:
      return { kind: 'isolate-primary', atMs };
    case 2:
      return { kind: 'isolate-backup', atMs };
    case 3:
      return { kind: 'etcd-down', atMs, forMs: 50 + rng.below(2 * COORD_TTL_MS) };
    case 4:
      return { kind: 'crash-primary', atMs, silent: rng.chance(0.5) };
    case 5:
      return { kind: 'cut-then-isolate', atMs, isolateAfterMs: 800 + rng.below(400) };
    case 6:
      return { kind: 'etcd-minority-primary', atMs };
    default:
      return { kind: 'none' };
  }
}

/** The backup's claimer over the lease model: claims until it wins (or is cancelled). */
function modelClaimer(svc: LeaseService, owned: (o: ModelOwnership) => void): OwnershipClaimer {
  return {
    claim: (_domain, done) => {
      let cancelled = false;
      const o = new ModelOwnership(svc, 'backup', COORD_TTL_MS, COORD_MARGIN_MS);
      o.claim(Number.POSITIVE_INFINITY, (won) => {
        if (cancelled) return void o.release();
        if (!won) return done(null, 'gave up');
        owned(o);
        done(o, '');
      });
      return () => {
        cancelled = true;
      };
    },
  };
}

export function runCoordWorld(seed: number, durationMs = 4000): CoordResult {
  const rng = new Prng(seed);
  const fault = pickCoordFault(rng);
  const clock = new VirtualClock();
  const net = new Net(clock, rng, 1 + rng.below(3));
  const svc = new LeaseService(clock);
  svc.delayMs = 1 + rng.below(5);
  const violations: string[] = [];
  const violate = (v: string): void => {
    if (violations.length < 5) violations.push(v);
  };
  let primaryDead = false;
  const pclock = actorClock(clock, () => primaryDead);
  const primaryOwn = new ModelOwnership(svc, 'primary', COORD_TTL_MS, COORD_MARGIN_MS);
  let backupOwn: ModelOwnership | null = null;
  let failedOverAt: number | null = null;
  let released = 0;
  const buffer = new OutputBuffer<number>(() => {
    const now = clock.now();
    released++;
    if (!primaryOwn.validAt(now)) violate(`the primary released an output at ${now} without provable ownership`);
    if (failedOverAt !== null && now >= failedOverAt)
      violate(`the primary released an output at ${now}, after the backup owned the domain at ${failedOverAt}`);
  });
  const gate = new OwnedGate(buffer, primaryOwn as Ownership, pclock);
  const domain = new StepDomain(128, seed, pclock, (seq) => buffer.push(seq));
  const primary = new Primary(
    domain,
    gate,
    pclock,
    {
      intervalMs: 20,
      compressor: 'lz4',
      cachePages: 16,
      maxInFlight: 1 + rng.below(2),
      heartbeatTimeoutMs: 100,
      holdOnLossMs: 100 + rng.below(400),
      batchPagesMax: 32,
      deviceStateMax: 4096,
      copySilenceMs: 300,
    },
    { event: (name) => name === 'backup-lost' && scheduleReconnect() },
  );
  gate.onProvable = (provable) => primary.reportOwnership(provable);
  primaryOwn.onChange((e) => {
    if (e.kind === 'lost' && !primaryDead) primary.ownershipLost(e.reason);
  });
  const backup = new Backup(
    clock,
    {
      pageCountMax: 1 << 20,
      batchPagesMax: 64,
      handshakeTimeoutMs: 150,
      copySilenceMs: 300,
      replicaFor: (h) => new MemReplica(h.pageCount),
      claimer: modelClaimer(svc, (o) => (backupOwn = o)),
    },
    {
      event: (name) => {
        if (name !== 'failover') return;
        failedOverAt = clock.now();
        if (!backupOwn?.validAt(failedOverAt)) violate(`the backup failed over at ${failedOverAt} without owning`);
        if (primaryOwn.validAt(failedOverAt)) violate(`two owners at ${failedOverAt}`);
      },
    },
  );
  let links: [MemLink, MemLink] | null = null;
  let isolated: 'primary' | 'backup' | null = null;
  const connect = (): boolean => {
    if (primaryDead || primary.attached || net.cut || isolated) return false;
    links = net.pair();
    backup.attach(links[0]);
    primary.attach(links[1]);
    return true;
  };
  const scheduleReconnect = reconnector(
    pclock,
    () => primaryDead || ['fenced', 'stopped'].includes(primary.stats().state) || primary.attached,
    connect,
  );

  let claimed = false;
  primaryOwn.claim(100, (won) => {
    claimed = won;
    if (!won) return;
    primary.start();
    connect();
  });
  schedule(
    fault,
    clock,
    net,
    svc,
    () => {
      primaryDead = true;
      domain.fence();
      primaryOwn.stop(); // a dead process renews nothing (its lease runs out in etcd)
      if (links && fault.kind === 'crash-primary') links[1].die(fault.silent);
    },
    (who) => (isolated = who),
  );
  clock.runUntil(durationMs);
  if (!claimed) violate('the primary never owned the domain');
  expect(fault, failedOverAt, primaryDead ? 'dead' : primary.stats().state, violate);
  gate.close();
  return {
    seed,
    fault,
    violations,
    failedOverAt,
    primaryState: primaryDead ? 'dead' : primary.stats().state,
    outputsReleased: released,
  };
}

function schedule(
  f: CoordFault,
  clock: VirtualClock,
  net: Net,
  svc: LeaseService,
  crashPrimary: () => void,
  isolate: (who: 'primary' | 'backup') => void,
): void {
  if (f.kind === 'none') return;
  clock.setTimer(f.atMs, () => {
    if (f.kind === 'cut-link') net.cut = true;
    if (f.kind === 'isolate-primary' || f.kind === 'isolate-backup') {
      const who = f.kind === 'isolate-primary' ? 'primary' : 'backup';
      net.cut = true;
      svc.cut.add(who);
      isolate(who);
    }
    if (f.kind === 'etcd-down') {
      svc.cut.add('primary');
      svc.cut.add('backup');
    }
    if (f.kind === 'crash-primary') crashPrimary();
    if (f.kind === 'cut-then-isolate') net.cut = true;
    if (f.kind === 'etcd-minority-primary') svc.cut.add('primary');
  });
  if (f.kind === 'cut-then-isolate')
    clock.setTimer(f.atMs + f.isolateAfterMs, () => {
      svc.cut.add('primary');
      isolate('primary');
    });
  if (f.kind === 'cut-link' && f.forMs !== null) clock.setTimer(f.atMs + f.forMs, () => (net.cut = false));
  if (f.kind === 'etcd-down') clock.setTimer(f.atMs + f.forMs, () => svc.cut.clear());
}

/** Who must own the domain at the end, per fault. */
function expect(f: CoordFault, failedOverAt: number | null, primaryState: string, violate: (v: string) => void): void {
  const primaryKeeps = f.kind === 'none' || f.kind === 'cut-link' || f.kind === 'isolate-backup';
  if (primaryKeeps && failedOverAt !== null)
    violate(`the backup failed over after ${f.kind}, though the primary lived and owned`);
  if (primaryKeeps && primaryState === 'fenced') violate(`the primary fenced itself after ${f.kind}`);
  const backupTakes = ['isolate-primary', 'crash-primary', 'cut-then-isolate', 'etcd-minority-primary'];
  if (backupTakes.includes(f.kind) && failedOverAt === null) violate(`the backup never took over after ${f.kind}`);
  if (f.kind === 'etcd-minority-primary' && primaryState !== 'fenced')
    violate(`the primary without etcd ended ${primaryState}, not fenced by the takeover`);
  if (f.kind === 'etcd-down' && primaryState === 'fenced' && failedOverAt === null)
    violate('the primary lost its lease to an etcd outage and the backup never took over');
}

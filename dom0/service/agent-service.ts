// agent-service: the `remusdb agent` process — this host as a member of the pool. It runs
// `slots` backup services (ports basePort, basePort+1, …), each with --coordination so a
// takeover first claims the domain's owner key, and publishes the host in etcd (pool.ts) every
// POOL_TICK_MS. When a slot has failed over — its domain runs here now, unprotected — the agent
// chooses a backup from the pool (chooseBackup), reserves that slot in etcd and reprotects the
// domain there; a target that leaves the pool, or has no session with it for
// --backup-patience, is replaced by the next choice. A new backup copies only changed
// disk blocks when it keeps an earlier copy of the domain's disk (kept-images.ts). The choice
// and the reprotection's progress are in `remusdb status` (the agent's control socket).
// Invariants: at most one reservation per running domain; a reservation is held exactly while
// its reprotection targets it; the agent never chooses itself.
import * as fs from 'node:fs';
import { assert } from '../assert';
import { EtcdPool } from '../coordination/etcd-pool';
import { type BackupChoice, chooseBackup, type PoolHost, type PoolSlot } from '../coordination/pool';
import { ErrorCode, RemusError } from '../errors';
import { POOL_TICK_MS } from '../limits';
import type { Security } from '../protocol/channel';
import { BackupService } from './backup-service';
import { ChangeLog } from './change-log';
import type { MetricsExporter } from './metrics';
import { ControlServer, runtimeDir, socketPath } from './control';
import { type ImageDirs, keptImage, keptImageDomains } from './kept-images';

export interface AgentConfig {
  hostId: string;
  /** Where other hosts reach this one (no port). */
  address: string;
  listenHost: string;
  basePort: number;
  slots: number;
  security: Security;
  pageCountMax: number;
  batchPagesMax: number;
  memoryBytesMax: number;
  diskDir: string;
  diskBufferBytesMax: number;
  coordination: { endpoints: string[]; ttlSeconds: number };
  /** A chosen backup with no session for this long is replaced by the next choice (ms). */
  backupPatienceMs: number;
  /** Reprotections' checkpoint interval (with intervalAuto: the longest, the loss window) and heartbeat timeout. */
  intervalMs: number;
  intervalAuto?: boolean;
  heartbeatTimeoutMs?: number;
  /** Where the slots' metrics are served (--metrics); stop() closes it. */
  metrics: MetricsExporter | null;
  log: (line: string) => void;
}

/** One failed-over domain this agent protects again. */
interface Reprotection {
  domain: string;
  /** The backup chosen (reserved in etcd), or null while none could be. */
  choice: BackupChoice | null;
  /** Since when the current choice has had no session (ms, Date.now(); a copy under way is a session). */
  waitingSince: number;
  /** Hosts that reached no session in time: not chosen again for this domain until none is left. */
  readonly tried: Set<string>;
  /** Why no backup was chosen (the last time none could be). */
  why: string;
}

export class AgentService {
  private readonly slots: BackupService[] = [];
  private pool: EtcdPool | null = null;
  private control: ControlServer | null = null;
  private timer: NodeJS.Timeout | null = null;
  private ticking = false;
  private stopped = false;
  private readonly reprotections = new Map<number, Reprotection>();
  private readonly said: ChangeLog;
  private lastHosts: PoolHost[] = [];
  private readonly dirs: ImageDirs;

  constructor(private readonly cfg: AgentConfig) {
    assert(cfg.slots >= 1 && cfg.basePort + cfg.slots - 1 <= 65535, 'agent slots within the port range');
    this.said = new ChangeLog(cfg.log);
    this.dirs = { diskDir: cfg.diskDir, runDir: runtimeDir() };
  }

  async start(): Promise<void> {
    for (let i = 0; i < this.cfg.slots; i++) {
      const slot = new BackupService({
        host: this.cfg.listenHost,
        port: this.cfg.basePort + i,
        security: this.cfg.security,
        pageCountMax: this.cfg.pageCountMax,
        batchPagesMax: this.cfg.batchPagesMax,
        diskDir: this.cfg.diskDir,
        diskBufferBytesMax: this.cfg.diskBufferBytesMax,
        reuseDiskFor: (kind, name) => keptImage(kind, name, this.dirs),
        coordination: this.cfg.coordination,
        metrics: this.cfg.metrics,
        ownsMetrics: false,
        log: (line) => this.cfg.log(`[slot ${this.cfg.basePort + i}] ${line}`),
      });
      this.slots.push(slot);
      await slot.start();
    }
    this.pool = new EtcdPool(this.cfg.coordination.endpoints, this.cfg.coordination.ttlSeconds, this.cfg.log);
    this.control = new ControlServer(socketPath('agent', String(this.cfg.basePort)), (req) => this.onControl(req));
    this.cfg.log(
      `agent ${this.cfg.hostId} (${this.cfg.address}): ${this.cfg.slots} backup slots from port ` +
        `${this.cfg.basePort}, ${(this.cfg.memoryBytesMax / 2 ** 30).toFixed(1)} GiB of guest memory`,
    );
    this.timer = setInterval(() => void this.tick(), POOL_TICK_MS);
    await this.tick();
  }

  /** Leaves the pool and stops every slot (a running domain's protection ends with GOODBYE). Idempotent. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.control?.close();
    await this.pool?.close();
    for (const s of this.slots) await s.stop();
    await this.cfg.metrics?.close();
  }

  /** This host's record in the pool. */
  record(): PoolHost {
    const held = this.slots.map((s) => s.holding());
    const used = held.reduce((sum, h) => sum + (h?.memoryBytes ?? 0), 0);
    return {
      hostId: this.cfg.hostId,
      address: this.cfg.address,
      memoryBytesMax: this.cfg.memoryBytesMax,
      memoryBytesFree: Math.max(0, this.cfg.memoryBytesMax - used),
      diskBytesFree: diskBytesFree(this.cfg.diskDir),
      images: keptImageDomains(this.dirs),
      slots: this.slots.map((s, i): PoolSlot => {
        const h = held[i];
        if (!h) return { port: s.port, state: 'free', domain: null };
        return { port: s.port, state: h.state === 'failed-over' ? 'running' : 'backup', domain: h.domain };
      }),
    };
  }

  /** Publish, read the pool, and see to every slot that runs a domain. A failing etcd is said and retried. */
  private async tick(): Promise<void> {
    if (this.ticking || this.stopped || !this.pool) return;
    this.ticking = true;
    try {
      await this.pool.publish(this.record());
      const { hosts, reserved } = await this.pool.read();
      this.lastHosts = hosts;
      for (let i = 0; i < this.slots.length && !this.stopped; i++) await this.seeTo(i, hosts, reserved);
    } catch (e) {
      this.said.say(`${(e as Error).message}; retrying`);
    } finally {
      this.ticking = false;
    }
  }

  /** A slot that runs a failed-over domain gets a backup from the pool, or another one if its own is gone. */
  private async seeTo(i: number, hosts: PoolHost[], reserved: Map<string, string>): Promise<void> {
    const slot = this.slots[i],
      h = slot.holding();
    if (h?.state !== 'failed-over') return;
    let r = this.reprotections.get(i);
    if (!r) {
      r = { domain: h.domain, choice: null, waitingSince: Date.now(), tried: new Set(), why: '' };
      this.reprotections.set(i, r);
      this.cfg.log(`pool: ${h.domain} failed over to this host: choosing a backup for it`);
    }
    if (h.connected) {
      r.waitingSince = Date.now(); // a session runs (a copy of any length, or protection): nothing to do
      return;
    }
    if (r.choice && !(await this.keepChoice(r, hosts))) r.choice = null;
    if (r.choice) return;
    const taken = new Set([...reserved].filter(([, d]) => d !== r.domain).map(([k]) => k));
    const need = { domain: r.domain, selfId: this.cfg.hostId, memoryBytes: h.memoryBytes, diskBytes: h.diskBytes };
    let c = chooseBackup(hosts, { ...need, reserved: taken, excluded: r.tried });
    if (typeof c === 'string' && r.tried.size > 0) {
      r.tried.clear(); // every other host was tried: try them again rather than stay unprotected
      c = chooseBackup(hosts, { ...need, reserved: taken, excluded: r.tried });
    }
    if (typeof c === 'string') {
      r.why = c;
      this.said.say(`pool: ${c}; ${r.domain} runs unprotected meanwhile`);
      return;
    }
    if (!(await this.pool!.reserve(c.hostId, c.port, r.domain))) return; // another domain took it: next tick
    this.use(i, r, c);
  }

  /** Whether the current choice stays: its host is in the pool with the slot still ours, within patience. */
  private async keepChoice(r: Reprotection, hosts: PoolHost[]): Promise<boolean> {
    const c = r.choice!;
    const slot = hosts.find((x) => x.hostId === c.hostId)?.slots.find((s) => s.port === c.port);
    const present = slot !== undefined && (slot.state === 'free' || slot.domain === r.domain);
    const patient = Date.now() - r.waitingSince < this.cfg.backupPatienceMs;
    if (present && patient) return true;
    if (present) r.tried.add(c.hostId);
    const why = present ? `had no session for ${this.cfg.backupPatienceMs} ms` : 'left the pool';
    this.cfg.log(`pool: ${r.domain}'s backup ${c.hostId} ${why}: choosing another`);
    await this.pool!.unreserve(c.hostId, c.port);
    return false;
  }

  private use(i: number, r: Reprotection, c: BackupChoice): void {
    r.choice = c;
    r.waitingSince = Date.now();
    r.why = '';
    this.said.reset();
    const target = { host: c.address, port: c.port };
    this.cfg.log(`pool: ${r.domain} → backup ${c.hostId} (${c.address}:${c.port}): ${c.why}`);
    const slot = this.slots[i];
    if (slot.reprotecting) slot.retarget(target);
    else {
      slot.reprotectTo(target, this.cfg.security, {
        intervalMs: this.cfg.intervalMs,
        intervalAuto: this.cfg.intervalAuto === true,
        heartbeatTimeoutMs: this.cfg.heartbeatTimeoutMs,
      });
    }
  }

  status(): Record<string, unknown> {
    return {
      role: 'agent',
      host: this.cfg.hostId,
      address: this.cfg.address,
      record: this.record(),
      pool: this.lastHosts.map((h) => ({
        host: h.hostId,
        memoryBytesFree: h.memoryBytesFree,
        slots: h.slots.map((s) => `${s.port}:${s.state}${s.domain ? `:${s.domain}` : ''}`),
      })),
      reprotections: [...this.reprotections].map(([i, r]) => ({
        domain: r.domain,
        slot: this.slots[i].port,
        backup: r.choice ? { host: r.choice.hostId, address: `${r.choice.address}:${r.choice.port}` } : null,
        why: r.choice?.why ?? r.why,
        progress: this.slots[i].status().reprotecting ?? null,
      })),
      coordination: { mode: 'etcd' },
    };
  }

  private onControl(req: Record<string, unknown>): Record<string, unknown> {
    if (req.cmd === 'status') return this.status();
    throw new RemusError(ErrorCode.CONTROL, `the agent answers status only, not ${JSON.stringify(req.cmd)}`);
  }
}

/** Free bytes where replica disks go (0 when it cannot be read). */
function diskBytesFree(dir: string): number {
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const s = fs.statfsSync(dir);
    return s.bavail * s.bsize;
  } catch {
    return 0;
  }
}

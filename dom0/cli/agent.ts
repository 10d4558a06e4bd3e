// agent: `remusdb agent` — this host joins the pool of backups in etcd (docs/coordination.md
// "A pool of hosts"). It offers --slots backup services from the --listen port on, and a
// domain that fails over to it is protected again against a backup the agent chooses from the
// pool, with no operator. Every value is checked as the command line is parsed.
import * as os from 'node:os';
import type { Command } from 'commander';
import { validAddress, validHostId } from '../coordination/pool';
import { ErrorCode, RemusError } from '../errors';
import {
  BATCH_PAGES_MAX_DEFAULT,
  DEFAULT_REPLICATION_PORT,
  PAGE_BYTES,
  POOL_BACKUP_PATIENCE_MS_DEFAULT,
  POOL_SLOTS_DEFAULT,
  POOL_SLOTS_MAX,
} from '../limits';
import { parseHostPort } from '../protocol/channel';
import { AgentService } from '../service/agent-service';
import { runtimeDir } from '../service/control';
import { tuneReplicationProcess } from '../service/process-tuning';
import { addCoordinationOptions, type CoordinationCliOptions } from './coordination-options';
import { badValue, hostPortOption, intOption, refuseOptionLike, specified } from './options';
import {
  addMetricsOption,
  addReplicaDiskOptions,
  addSecurityOptions,
  log,
  memoryOption,
  openMetrics,
  security,
} from './replication';
import { untilStopped } from './until-stopped';
import { addIntervalOptions, intervalChoice, type IntervalCliOptions } from './interval-options';

interface AgentOpts extends CoordinationCliOptions, IntervalCliOptions {
  listen: string;
  advertise?: string;
  hostId: string;
  slots: number;
  maxMemory: number;
  diskDir?: string;
  diskBuffer: number;
  backupPatience: number;
  heartbeatTimeout?: number;
  pskFile?: string;
  insecure?: boolean;
  metrics?: string;
}

const hostIdOption = specified(
  (v: string): string => {
    refuseOptionLike('--host-id', v, 'a host name');
    if (!validHostId(v)) throw badValue('--host-id', v, 'letters, digits, ".", "_" and "-", at most 63');
    return v;
  },
  { name: '--host-id', kind: 'host-id' },
);

const advertiseOption = specified(
  (v: string): string => {
    refuseOptionLike('--advertise', v, 'an address');
    if (!validAddress(v) || v === '0.0.0.0' || v === '::') {
      throw badValue('--advertise', v, 'an IP address or host name others reach this host at, without a port');
    }
    return v;
  },
  { name: '--advertise', kind: 'address' },
);

export function registerAgent(program: Command): void {
  const agent = program
    .command('agent')
    .description('join the pool of backup hosts in etcd: back up domains, and protect again those that fail over here')
    .option(
      '--listen <addr:port>',
      'address of the first backup slot (the others take the next ports)',
      hostPortOption('--listen', DEFAULT_REPLICATION_PORT),
      `0.0.0.0:${DEFAULT_REPLICATION_PORT}`,
    )
    .option(
      '--advertise <host>',
      'the address other hosts reach this one at (default: the --listen address)',
      advertiseOption,
    )
    .option('--host-id <id>', "this host's name in the pool", hostIdOption, safeHostname())
    .option('--slots <n>', 'backup slots offered', intOption('--slots', 1, POOL_SLOTS_MAX), POOL_SLOTS_DEFAULT)
    .option('--max-memory <size>', 'guest memory this host takes in all', memoryOption('--max-memory'), 64 * 2 ** 30)
    .option(
      '--backup-patience <s>',
      'a chosen backup with no session for this long is replaced by another from the pool',
      intOption('--backup-patience', 1, 3600),
      POOL_BACKUP_PATIENCE_MS_DEFAULT / 1000,
    )
    .option(
      '--heartbeat-timeout <ms>',
      'their silence timeout (default 2 x interval + 100)',
      intOption('--heartbeat-timeout', 10, 600000),
    );
  addIntervalOptions(addReplicaDiskOptions(addSecurityOptions(agent)), {
    whose: ' of the domains this host protects again',
  });
  addMetricsOption(agent);
  addCoordinationOptions(agent).action(async (o: AgentOpts) => {
    if (!o.coordination) {
      throw new RemusError(ErrorCode.BAD_ARGUMENT, 'the pool lives in etcd: give --coordination etcd://host:port,…');
    }
    const interval = intervalChoice(o);
    const { host, port } = parseHostPort(o.listen, DEFAULT_REPLICATION_PORT);
    const address = o.advertise ?? host;
    if (address === '0.0.0.0' || address === '::') {
      throw new RemusError(
        ErrorCode.BAD_ARGUMENT,
        `--listen ${o.listen} names no address others can reach: give --advertise`,
      );
    }
    if (port + o.slots - 1 > 65535)
      throw badValue('--slots', String(o.slots), `at most ${65536 - port} from port ${port}`);
    const sec = security(o, log);
    tuneReplicationProcess(log);
    const metrics = await openMetrics(o.metrics);
    const svc = new AgentService({
      hostId: o.hostId,
      address,
      listenHost: host,
      basePort: port,
      slots: o.slots,
      security: sec,
      pageCountMax: o.maxMemory / PAGE_BYTES,
      batchPagesMax: BATCH_PAGES_MAX_DEFAULT,
      memoryBytesMax: o.maxMemory,
      diskDir: o.diskDir ?? runtimeDir(),
      diskBufferBytesMax: o.diskBuffer,
      coordination: { endpoints: o.coordination, ttlSeconds: o.ownerTtl },
      ...interval,
      backupPatienceMs: o.backupPatience * 1000,
      heartbeatTimeoutMs: o.heartbeatTimeout,
      metrics,
      log,
    });
    try {
      await svc.start();
    } catch (e) {
      await svc.stop();
      throw e;
    }
    await untilStopped(async () => svc.stop(), { log });
  });
}

/** This machine's name as a pool host id (cut to what a key takes). */
function safeHostname(): string {
  const h = os
    .hostname()
    .replace(/[^A-Za-z0-9._-]/g, '-')
    .slice(0, 63);
  return validHostId(h) ? h : 'host';
}

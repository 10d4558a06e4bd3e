// etcd.ts: a real etcd member for tests (Debian's etcd-server), on free ports in a temp dir.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { Etcd3 } from 'etcd3';
import { freePort, sleep, tmpDir } from './helpers';
import type { PartitionNet } from './partition-net';
import { whyNoNetns } from './pg-netns';

export interface EtcdMember {
  endpoint: string;
  proc: ChildProcess;
  /** Freezes (SIGSTOP) or thaws (SIGCONT) the member: etcd unreachable without closing connections. */
  freeze(on: boolean): void;
  /** SIGKILL (a member crash); restart() starts it again on its data directory. */
  kill(): Promise<void>;
  restart(): void;
  /** Kills it and removes its data. */
  stop(): Promise<void>;
}

export function haveEtcd(): boolean {
  return spawnSync('etcd', ['--version']).status === 0;
}

type Spawner = (argv: string[], log: number) => ChildProcess;
const onThisHost: Spawner = (argv, log) => spawn(argv[0], argv.slice(1), { stdio: ['ignore', log, log] });

export async function startEtcd(tag: string): Promise<EtcdMember> {
  const [client, peer] = [await freePort(), await freePort()];
  const local = '127.0.0.1';
  return startMember(tag, { ip: local, client, peer }, `${tag}=http://${local}:${peer}`, onThisHost);
}

/** A cluster with one member per host of a partition net (members named after their hosts, ports 2379/2380). */
export async function startEtcdClusterOn(
  hosts: Array<{ name: string; ip: string; spawn: Spawner }>,
): Promise<EtcdMember[]> {
  const initial = hosts.map((h) => `${h.name}=http://${h.ip}:2380`).join(',');
  return Promise.all(hosts.map((h) => startMember(h.name, { ip: h.ip, client: 2379, peer: 2380 }, initial, h.spawn)));
}

/** A cluster of n members on 127.0.0.1 (each its own process and data directory). */
export async function startEtcdCluster(tag: string, n: number): Promise<EtcdMember[]> {
  const ports = [];
  for (let i = 0; i < n; i++) ports.push([await freePort(), await freePort()]);
  const initial = ports.map(([, peer], i) => `${tag}${i}=http://127.0.0.1:${peer}`).join(',');
  return Promise.all(
    ports.map(([client, peer], i) => startMember(`${tag}${i}`, { ip: '127.0.0.1', client, peer }, initial, onThisHost)),
  );
}

async function startMember(
  tag: string,
  at: { ip: string; client: number; peer: number },
  initialCluster: string,
  spawnOn: Spawner,
): Promise<EtcdMember> {
  const dir = tmpDir(`etcd-${tag}`);
  const endpoint = `http://${at.ip}:${at.client}`;
  const peerUrl = `http://${at.ip}:${at.peer}`;
  const log = fs.openSync(`${dir}.log`, 'a');
  const args = [
    'etcd',
    `--name=${tag}`,
    `--data-dir=${dir}`,
    `--listen-client-urls=${endpoint}`,
    `--advertise-client-urls=${endpoint}`,
    `--listen-peer-urls=${peerUrl}`,
    `--initial-advertise-peer-urls=${peerUrl}`,
    `--initial-cluster=${initialCluster}`,
    '--heartbeat-interval=50',
    '--election-timeout=500',
  ];
  const m: EtcdMember = {
    endpoint,
    proc: spawnOn(args, log),
    freeze: (on) => m.proc.kill(on ? 'SIGSTOP' : 'SIGCONT'),
    kill: async () => {
      if (m.proc.exitCode !== null || m.proc.signalCode !== null) return;
      m.proc.kill('SIGCONT');
      m.proc.kill('SIGKILL');
      await new Promise((r) => m.proc.once('exit', r));
    },
    restart: () => {
      m.proc = spawnOn(args, log); // its data directory is kept
    },
    stop: async () => {
      await m.kill();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  const probe = new Etcd3({ hosts: endpoint, dialTimeout: 1000 });
  try {
    for (let i = 0; ; i++) {
      if (m.proc.exitCode !== null) throw new Error(`etcd exited ${m.proc.exitCode} (log ${dir}.log)`);
      if (
        await probe.get('/probe').then(
          () => true,
          () => false,
        )
      )
        break;
      if (i > 100) throw new Error(`etcd did not answer within 10 s (log ${dir}.log)`);
      await sleep(100);
    }
  } catch (e) {
    await m.stop();
    throw e;
  } finally {
    probe.close();
  }
  return m;
}

/** Why a test of etcd on a partition net cannot run here (null: it can). */
export function whyNoEtcdNet(): string | null {
  return whyNoNetns() ?? (haveEtcd() ? null : 'etcd is not installed');
}

/** One etcd member on each of the named hosts of a partition net, as one cluster. */
export function startEtcdOnNet(net: PartitionNet, hosts: string[]): Promise<EtcdMember[]> {
  return startEtcdClusterOn(
    hosts.map((h) => ({ name: h, ip: net.ip(h), spawn: (argv, log) => net.spawn(h, argv, log) })),
  );
}

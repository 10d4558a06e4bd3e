// etcd.ts: a real etcd member for tests (Debian's etcd-server), on free ports in a temp dir.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { Etcd3 } from 'etcd3';
import { freePort, sleep, tmpDir } from './helpers';

export interface EtcdMember {
  endpoint: string;
  proc: ChildProcess;
  /** Freezes (SIGSTOP) or thaws (SIGCONT) the member: etcd unreachable without closing connections. */
  freeze(on: boolean): void;
  stop(): Promise<void>;
}

export function haveEtcd(): boolean {
  return spawnSync('etcd', ['--version']).status === 0;
}

export async function startEtcd(tag: string): Promise<EtcdMember> {
  const dir = tmpDir(`etcd-${tag}`);
  const [client, peer] = [await freePort(), await freePort()];
  const endpoint = `http://127.0.0.1:${client}`;
  const peerUrl = `http://127.0.0.1:${peer}`;
  const log = fs.openSync(`${dir}.log`, 'a');
  const proc = spawn(
    'etcd',
    [
      `--name=${tag}`,
      `--data-dir=${dir}`,
      `--listen-client-urls=${endpoint}`,
      `--advertise-client-urls=${endpoint}`,
      `--listen-peer-urls=${peerUrl}`,
      `--initial-advertise-peer-urls=${peerUrl}`,
      `--initial-cluster=${tag}=${peerUrl}`,
    ],
    { stdio: ['ignore', log, log] },
  );
  const stop = async (): Promise<void> => {
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill('SIGCONT');
    proc.kill('SIGTERM');
    await new Promise((r) => proc.once('exit', r));
    fs.rmSync(dir, { recursive: true, force: true });
  };
  const probe = new Etcd3({ hosts: endpoint, dialTimeout: 1000 });
  try {
    for (let i = 0; ; i++) {
      if (proc.exitCode !== null) throw new Error(`etcd exited ${proc.exitCode} (log ${dir}.log)`);
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
    await stop();
    throw e;
  } finally {
    probe.close();
  }
  return { endpoint, proc, freeze: (on) => proc.kill(on ? 'SIGSTOP' : 'SIGCONT'), stop };
}

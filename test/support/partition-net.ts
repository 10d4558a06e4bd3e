// partition-net: hosts as network namespaces on one bridge, for partition tests. Host h is
// namespace `<prefix>-h` with eth0 = 10.<net>.0.<n>/24; cut(a, b) drops every packet between
// two hosts (iptables in both namespaces, a chain of our own), heal() removes every cut. The
// bridge does not pass its frames to the root namespace's iptables (nf_call_iptables 0); the
// root namespace is 10.<net>.0.1 on the bridge (the test's own view, never cut).
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';

export interface PartitionNet {
  ip(host: string): string;
  ns(host: string): string;
  cut(a: string, b: string): void;
  heal(): void;
  /** A process on host (its stdout and stderr appended to log). */
  spawn(host: string, argv: string[], log: number, env?: NodeJS.ProcessEnv): ChildProcess;
  destroy(): void;
}

function run(argv: string[]): void {
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${argv.join(' ')}: ${r.stderr || r.error?.message}`);
}

export function createPartitionNet(prefix: string, net: number, hosts: string[]): PartitionNet {
  const bridge = `${prefix}br`;
  const nsOf = (h: string): string => `${prefix}-${h}`;
  const ipOf = (h: string): string => `10.${net}.0.${hosts.indexOf(h) + 2}`;
  const destroy = (): void => {
    for (const h of hosts) {
      spawnSync('ip', ['link', 'del', `${prefix}-${h}`], { stdio: 'ignore' }); // the pair goes at once
      spawnSync('ip', ['netns', 'del', nsOf(h)], { stdio: 'ignore' });
    }
    spawnSync('ip', ['link', 'del', bridge], { stdio: 'ignore' });
  };
  destroy(); // what an earlier run left
  run(['ip', 'link', 'add', bridge, 'type', 'bridge', 'nf_call_iptables', '0']);
  run(['ip', 'addr', 'add', `10.${net}.0.1/24`, 'dev', bridge]); // this process reaches every host (not cut)
  run(['ip', 'link', 'set', bridge, 'up']);
  for (const h of hosts) {
    const ns = nsOf(h);
    run(['ip', 'netns', 'add', ns]);
    run(['ip', 'link', 'add', `${prefix}-${h}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
    run(['ip', 'link', 'set', `${prefix}-${h}`, 'master', bridge, 'up']);
    run(['ip', '-n', ns, 'addr', 'add', `${ipOf(h)}/24`, 'dev', 'eth0']);
    run(['ip', '-n', ns, 'link', 'set', 'eth0', 'up']);
    run(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
    for (const hook of ['INPUT', 'OUTPUT']) {
      run(['ip', 'netns', 'exec', ns, 'iptables', '-w', '-N', `CUT-${hook}`]);
      run(['ip', 'netns', 'exec', ns, 'iptables', '-w', '-A', hook, '-j', `CUT-${hook}`]);
    }
  }
  const ipt = (h: string, args: string[]): void => run(['ip', 'netns', 'exec', nsOf(h), 'iptables', '-w', ...args]);
  return {
    ip: ipOf,
    ns: nsOf,
    cut(a, b) {
      for (const [x, y] of [
        [a, b],
        [b, a],
      ]) {
        ipt(x, ['-A', 'CUT-INPUT', '-s', ipOf(y), '-j', 'DROP']);
        ipt(x, ['-A', 'CUT-OUTPUT', '-d', ipOf(y), '-j', 'DROP']);
      }
    },
    heal() {
      for (const h of hosts) for (const c of ['CUT-INPUT', 'CUT-OUTPUT']) ipt(h, ['-F', c]);
    },
    spawn(host, argv, log, env = process.env) {
      return spawn('ip', ['netns', 'exec', nsOf(host), ...argv], { stdio: ['ignore', log, log], env });
    },
    destroy,
  };
}

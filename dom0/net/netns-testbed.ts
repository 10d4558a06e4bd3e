// netns-testbed: a Xen-like network in three namespaces, for the network buffer's tests
// (docs/netbuffer.md "Test bed"). The guest's veth peer `vif1.0` and the client's `cl0` sit
// on bridge br0 in the "dom0" namespace, with br_netfilter's IP hooks on, so the very rule a
// Xen dom0 uses (`-m physdev --physdev-in vif1.0`) is what gets tested. Addresses are
// loopback-range IPv4 (route_localnet=1 makes 127/8 routable on veth) and ULA IPv6, and
// exist only inside these namespaces. Commands (teardown first, so reruns after a crash work):
//   ip netns del P-{guest,dom0,client};  ip netns add ...
//   ip -n P-dom0 link add br0 type bridge
//   ip link add vif1.0 netns P-dom0 type veth peer name eth0 netns P-guest   (and cl0 / P-client)
//   addresses 127.60.0.{2,3}/24 and fd60::{2,3}/64, sysctls, links up
import { execFileSync, spawnSync } from 'node:child_process';
import { ErrorCode, RemusError } from '../errors';

export interface Testbed {
  prefix: string;
  guest: string;
  dom0: string;
  client: string;
  guestIp4: string;
  clientIp4: string;
  guestIp6: string;
  clientIp6: string;
  vif: string;
}

function ip(args: string[]): void {
  try {
    execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (e) {
    const err = e as { stderr?: Buffer };
    throw new RemusError(
      ErrorCode.NETBUF,
      `ip ${args.join(' ')}: ${err.stderr?.toString().trim() ?? String(e)}`,
      {},
      { cause: e },
    );
  }
}

/** Writes key=value sysctls inside a namespace (through /proc/sys: no procps needed). */
export function sysctl(ns: string, settings: string[]): void {
  const script =
    // biome-ignore lint/suspicious/noTemplateCurlyInString: a shell script; ${kv%%=*} is sh parameter expansion
    'for kv; do k=${kv%%=*}; printf %s "${kv#*=}" > "/proc/sys/$(printf %s "$k" | tr . /)" || exit 1; done';
  const r = spawnSync('ip', ['netns', 'exec', ns, 'sh', '-c', script, 'sh', ...settings], { encoding: 'utf8' });
  if (r.status !== 0)
    throw new RemusError(ErrorCode.NETBUF, `sysctl ${settings.join(' ')} in ${ns}: ${r.stderr.trim()}`);
}

export function testbedNames(prefix: string): Testbed {
  return {
    prefix,
    guest: `${prefix}-guest`,
    dom0: `${prefix}-dom0`,
    client: `${prefix}-client`,
    guestIp4: '127.60.0.2',
    clientIp4: '127.60.0.3',
    guestIp6: 'fd60::2',
    clientIp6: 'fd60::3',
    vif: 'vif1.0',
  };
}

export function destroyTestbed(prefix: string): void {
  const t = testbedNames(prefix);
  for (const ns of [t.guest, t.dom0, t.client, `${prefix}-${EXTRA_HOST}`])
    spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
}

/** The name of the one extra host a bench may add (addTestbedHost), removed with the bed. */
const EXTRA_HOST = 'standby';

/**
 * Another host on the bridge, beside the client (namespace <prefix>-standby, 127.60.0.4 and
 * fd60::4): its traffic with the guest crosses the vif like the client's. Returns its namespace.
 */
export function addTestbedHost(t: Testbed): { ns: string; ip4: string } {
  const ns = `${t.prefix}-${EXTRA_HOST}`;
  ip(['netns', 'add', ns]);
  ip(['link', 'add', 'sb0', 'netns', t.dom0, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
  ip(['-n', t.dom0, 'link', 'set', 'sb0', 'master', 'br0', 'up']);
  bringUp(ns, '127.60.0.4', 'fd60::4');
  return { ns, ip4: '127.60.0.4' };
}

function bringUp(ns: string, v4: string, v6: string): void {
  sysctl(ns, [
    'net.ipv4.conf.all.route_localnet=1',
    'net.ipv4.conf.eth0.route_localnet=1',
    'net.ipv6.conf.eth0.accept_dad=0',
  ]);
  ip(['-n', ns, 'addr', 'add', `${v4}/24`, 'dev', 'eth0']);
  ip(['-n', ns, 'addr', 'add', `${v6}/64`, 'dev', 'eth0', 'nodad']);
  ip(['-n', ns, 'link', 'set', 'eth0', 'up']);
  ip(['-n', ns, 'link', 'set', 'lo', 'up']);
}

export function createTestbed(prefix: string): Testbed {
  const t = testbedNames(prefix);
  destroyTestbed(prefix);
  for (const ns of [t.guest, t.dom0, t.client]) ip(['netns', 'add', ns]);
  ip(['-n', t.dom0, 'link', 'add', 'br0', 'type', 'bridge']);
  ip(['link', 'add', t.vif, 'netns', t.dom0, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', t.guest]);
  ip(['link', 'add', 'cl0', 'netns', t.dom0, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', t.client]);
  for (const dev of [t.vif, 'cl0']) ip(['-n', t.dom0, 'link', 'set', dev, 'master', 'br0', 'up']);
  ip(['-n', t.dom0, 'link', 'set', 'br0', 'up']);
  sysctl(t.dom0, ['net.bridge.bridge-nf-call-iptables=1', 'net.bridge.bridge-nf-call-ip6tables=1']);
  const ends: Array<[string, string, string]> = [
    [t.guest, t.guestIp4, t.guestIp6],
    [t.client, t.clientIp4, t.clientIp6],
  ];
  for (const [ns, v4, v6] of ends) bringUp(ns, v4, v6);
  return t;
}

export function listTestbedNamespaces(prefix: string): string[] {
  const r = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  return r.stdout
    .split('\n')
    .map((l) => l.split(' ')[0])
    .filter((n) => n.startsWith(`${prefix}-`));
}

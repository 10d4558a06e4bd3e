// iptables-rules: diverts a protected domain's IPv4 and IPv6 packets into its NFQUEUE, and
// removes that again — idempotently, also after our own crash left rules behind
// (docs/netbuffer.md "Kernel rules"). One chain per domain in the mangle table, jumped to
// from PREROUTING:
//   teardown: every `-A PREROUTING ... -j REMUSDB-<name>` found by `iptables -S` is deleted;
//             then `-F REMUSDB-<name>`, `-X REMUSDB-<name>` (errors ignored)
//   install:  one `iptables-restore --noflush` transaction: `:REMUSDB-<name>` (created, or
//             flushed), `-D` of every jump found, `-A REMUSDB-<name> [-m dscp --dscp D] -j NFQUEUE
//             --queue-num Q` (no --queue-bypass: no listener = dropped; with D only packets
//             the guest marked are queued, the rest never leave the kernel; with marks, one
//             such rule per `-m mark --mark M/MASK`: what the in-kernel pgwire program marked);
//             `-I PREROUTING 1 <match> -j REMUSDB-<name>`; the packets of a crashed run's guest
//             go to a rule of the old set or of the new one, never to none
// for iptables and ip6tables (iptables-nft). ARP is not queued: arptables has no NFQUEUE.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { assertInt } from '../assert';
import { ErrorCode, RemusError } from '../errors';

/** Which packets are the guest's: a bridge port (Xen vif) or an interface. */
export type GuestMatch = { physdevIn: string } | { inIface: string };

export interface RuleSpec {
  /** Domain name (becomes the chain name REMUSDB-<name>). */
  domain: string;
  queueNum: number;
  match: GuestMatch;
  /** Network namespace (name under /run/netns) the rules go in; default: ours. */
  netns?: string;
  /** Queue only packets with this DSCP code point (commit protection classified in the kernel). */
  onlyDscp?: number;
  /** Queue only packets whose skb mark, under markMask, is one of these (kernel-classifier.ts). */
  onlyMarks?: number[];
  markMask?: number;
}

const TOOLS = ['iptables', 'ip6tables'] as const;
const IFNAME = /^[A-Za-z0-9_.-]{1,15}$/;

export function chainName(domain: string): string {
  const tag = domain.replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 20);
  if (!tag) throw new RemusError(ErrorCode.BAD_ARGUMENT, `domain name '${domain}' gives an empty chain name`);
  return `REMUSDB-${tag}`;
}

export function matchArgs(m: GuestMatch): string[] {
  const name = 'physdevIn' in m ? m.physdevIn : m.inIface;
  if (!IFNAME.test(name)) throw new RemusError(ErrorCode.BAD_ARGUMENT, `bad interface name '${name}'`);
  return 'physdevIn' in m ? ['-m', 'physdev', '--physdev-in', name] : ['-i', name];
}

interface Run {
  status: number;
  stdout: string;
  stderr: string;
}

function run(netns: string | undefined, tool: string, args: string[]): Run {
  const argv = netns === undefined ? [tool, '-w', ...args] : ['ip', 'netns', 'exec', netns, tool, '-w', ...args];
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', timeout: 30_000 });
  return {
    status: r.status ?? -1,
    stdout: r.stdout ?? '',
    stderr: (r.stderr ?? '') + (r.error ? String(r.error) : ''),
  };
}

/** Removes the domain's chain and every jump to it; safe to call when nothing is installed. */
export function removeRules(spec: Pick<RuleSpec, 'domain' | 'netns'>): void {
  const chain = chainName(spec.domain);
  for (const tool of TOOLS) {
    for (const jump of jumpsTo(spec.netns, tool, chain))
      run(spec.netns, tool, ['-t', 'mangle', '-D', ...jump.split(' ')]);
    run(spec.netns, tool, ['-t', 'mangle', '-F', chain]);
    run(spec.netns, tool, ['-t', 'mangle', '-X', chain]);
  }
}

/**
 * Installs the rules, replacing any an earlier run left, in one transaction per family
 * (`iptables-restore --noflush`: the chain's declaration flushes it, the old jumps go, the new
 * ones come, all committed at once). A crashed run's rules keep queueing to a queue nobody
 * reads, which drops: removing them first would let the guest's packets pass until the new
 * rules are in. Bind the queue first. A failed install leaves what was there before.
 */
export function installRules(spec: RuleSpec): void {
  assertInt(spec.queueNum, 0, 65535, 'queueNum');
  if (spec.onlyDscp !== undefined) assertInt(spec.onlyDscp, 0, 63, 'onlyDscp');
  const chain = chainName(spec.domain);
  const match = matchArgs(spec.match);
  if ('physdevIn' in spec.match) checkBridgeNetfilter(spec.netns);
  const hadRules = listRules(spec).length > 0;
  try {
    for (const tool of TOOLS) {
      const lines = ['*mangle', `:${chain} - [0:0]`, ...jumpsTo(spec.netns, tool, chain).map((j) => `-D ${j}`)];
      for (const only of queueMatches(spec))
        lines.push(`-A ${chain} ${[...only, '-j', 'NFQUEUE', '--queue-num', `${spec.queueNum}`].join(' ')}`);
      lines.push(`-I PREROUTING 1 ${[...match, '-j', chain].join(' ')}`, 'COMMIT', '');
      mustRestore(spec.netns, `${tool}-restore`, chain, lines.join('\n'));
    }
  } catch (e) {
    if (!hadRules) removeRules(spec);
    throw e;
  }
}

/** The jumps to chain in PREROUTING, as `-S` prints them without the leading `-A`. */
function jumpsTo(netns: string | undefined, tool: string, chain: string): string[] {
  const listing = run(netns, tool, ['-t', 'mangle', '-S', 'PREROUTING']);
  const jumps: string[] = [];
  for (const line of listing.stdout.split('\n')) {
    const words = line.trim().split(/\s+/);
    if (words[0] === '-A' && words[words.length - 1] === chain && words[words.length - 2] === '-j')
      jumps.push(words.slice(1).join(' '));
  }
  return jumps;
}

function mustRestore(netns: string | undefined, tool: string, chain: string, input: string): void {
  const argv =
    netns === undefined ? [tool, '-w', '--noflush'] : ['ip', 'netns', 'exec', netns, tool, '-w', '--noflush'];
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', timeout: 30_000, input });
  if (r.status !== 0) {
    const why = (r.stderr ?? '').trim() || (r.error ? String(r.error) : `exit ${r.status}`);
    throw new RemusError(ErrorCode.NETBUF, `${tool} of the rules of ${chain} failed: ${why}`);
  }
}

/** One NFQUEUE rule per match: every packet, the DSCP code point, or each of the marks. */
function queueMatches(spec: RuleSpec): string[][] {
  if (spec.onlyDscp !== undefined) return [['-m', 'dscp', '--dscp', String(spec.onlyDscp)]];
  if (spec.onlyMarks === undefined) return [[]];
  const mask = spec.markMask ?? 0xffffffff;
  assertInt(mask, 1, 0xffffffff, 'markMask');
  return spec.onlyMarks.map((m) => {
    assertInt(m, 1, 0xffffffff, 'mark');
    return ['-m', 'mark', '--mark', `0x${m.toString(16)}/0x${mask.toString(16)}`];
  });
}

/** The rules of the domain as `iptables -S` prints them (both families); empty when none. */
export function listRules(spec: Pick<RuleSpec, 'domain' | 'netns'>): string[] {
  const chain = chainName(spec.domain);
  const out: string[] = [];
  for (const tool of TOOLS) {
    const r = run(spec.netns, tool, ['-t', 'mangle', '-S']);
    for (const line of r.stdout.split('\n')) if (line.includes(chain)) out.push(`${tool}: ${line.trim()}`);
  }
  return out;
}

/** iptables and ip6tables are installed and answer (Debian: the iptables package, nft backend). */
export function checkIptablesTools(): void {
  for (const tool of TOOLS) {
    const r = spawnSync(tool, ['--version'], { encoding: 'utf8', timeout: 10_000 });
    if (r.status !== 0) {
      throw new RemusError(
        ErrorCode.NETBUF,
        `--net-buffer nfqueue installs its rules with ${tool}, which ${r.error ? 'is not installed' : 'failed'} ` +
          'here: install iptables (Debian: apt install iptables)',
        {},
        { cause: r.error ?? new Error(r.stderr.trim()) },
      );
    }
  }
}

/** physdev matching sees bridged packets only with br_netfilter's IP hooks enabled. */
export function checkBridgeNetfilter(netns: string | undefined): void {
  for (const key of ['bridge-nf-call-iptables', 'bridge-nf-call-ip6tables']) {
    const file = `/proc/sys/net/bridge/${key}`;
    let value: string;
    if (netns === undefined) {
      value = fs.existsSync(file) ? fs.readFileSync(file, 'utf8').trim() : '';
    } else {
      const r = spawnSync('ip', ['netns', 'exec', netns, 'cat', file], { encoding: 'utf8' });
      value = r.status === 0 ? r.stdout.trim() : '';
    }
    if (value !== '1') {
      throw new RemusError(
        ErrorCode.NETBUF,
        `net.bridge.${key} is ${value || 'missing'}: bridged guest packets would ` +
          `bypass the queue; run \`modprobe br_netfilter && sysctl -w net.bridge.${key}=1\``,
      );
    }
  }
}

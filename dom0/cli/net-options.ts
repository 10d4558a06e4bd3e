// net-options: the network output buffer options of `remusdb protect` and `remusdb
// reprotect` (the plan they make: net/net-plan.ts):
//   --net-buffer nfqueue|plug   Xen default plug (as xl remus); a simulated domain's own
//                               outputs are always buffered, this adds real interfaces
//   --vif IF (repeatable)       Xen default: all of the domain's vif<domid>.*; sim: required
//   --routed                    match -i IF instead of the bridge port (-m physdev)
//   --commit-protection off|dscp|pgwire, --dscp N (59), --pg-port P (5432, repeatable)
//   --dscp-in-kernel            dscp: the kernel queues only marked packets (fastest; failover
//                               resets only with the addon's bpf part: docs/commit-protection.md)
//   --pgwire-in-kernel          pgwire: a tc BPF program classifies, only what must wait is
//                               queued (docs/commit-protection.md "In the kernel")
//   --queue N                   nfqueue number of the first interface (7000 + domid)
import type { Command } from 'commander';
import { PROTECTED_DSCP } from '../net/classify-dscp';
import { DOMAIN_IFACES_MAX } from '../net/domain-net';
import { IFNAME, type NetChoice } from '../net/net-plan';
import { badValue, choiceOption, intOption, specified, valueSpec } from './options';

export { maxInFlightOf, netPlan, netPreflight, triggerOf } from '../net/net-plan';

/** The options as commander parses them (the same fields a reprotect request carries). */
export type NetCliOptions = NetChoice;

/** A repeatable option: each value parsed by parse (and described by its spec), collected in order. */
function collect<T>(parse: (v: string) => T): (v: string, prev: T[] | undefined) => T[] {
  const spec = valueSpec(parse);
  const all = (v: string, prev: T[] | undefined): T[] => [...(prev ?? []), parse(v)];
  return spec ? specified(all, spec) : all;
}

const ifaceOption = specified(
  (v: string): string => {
    if (!IFNAME.test(v)) {
      throw badValue('--vif', v, '1 to 15 letters, digits, _ . or - (not first)', 'not an interface name');
    }
    return v;
  },
  { name: '--vif', kind: 'iface' },
);

export function addNetOptions(cmd: Command): Command {
  return cmd
    .option(
      '--net-buffer <driver>',
      'network output buffer: plug (sch_plug, Xen default) or nfqueue (needed for commit protection)',
      choiceOption('--net-buffer', ['nfqueue', 'plug'] as const),
    )
    .option(
      '-n, --no-net-buffer',
      'release outputs at once (unsafe: clients may see state a failover loses; xl remus -n; needs --unsafe)',
    )
    .option(
      '--vif <iface>',
      "interface whose incoming packets are the guest's output (repeatable; Xen default: all vif<domid>.*)",
      collect(ifaceOption),
    )
    .option('--routed', 'the interfaces are not bridge ports (vif-route): match them as input interfaces')
    .option(
      '--commit-protection <mode>',
      'off (hold everything), dscp (hold packets the guest marks) or pgwire (hold PostgreSQL commit replies)',
      choiceOption('--commit-protection', ['off', 'dscp', 'pgwire'] as const),
      'off',
    )
    .option('--dscp <n>', 'dscp mode: the code point of protected packets', intOption('--dscp', 1, 63), PROTECTED_DSCP)
    .option(
      '--dscp-in-kernel',
      'dscp mode: only marked packets reach the queue, the rest never leave the kernel (a BPF program; without ' +
        "the addon's bpf part an iptables match, and then no failover resets)",
    )
    .option(
      '--pgwire-in-kernel',
      'pgwire mode: a BPF program on the guest interface parses the streams; only what must wait reaches the ' +
        'queue',
    )
    .option(
      '--pg-port <port>',
      'pgwire mode: a PostgreSQL server port in the guest (repeatable; default 5432)',
      collect(intOption('--pg-port', 1, 65535)),
    )
    .option(
      '--queue <n>',
      'nfqueue: queue number of the first interface (default 7000 + domid)',
      intOption('--queue', 0, 65535 - DOMAIN_IFACES_MAX),
    );
}

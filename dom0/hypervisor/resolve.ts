// resolve: what a domain argument names. `sim:<name>` is the built-in simulated domain;
// anything else is a Xen domain name or id, which needs a Xen dom0 (dom0/hypervisor/xen/).
import * as fs from 'node:fs';
import { ErrorCode, RemusError } from '../errors';

export type DomainSpec = { kind: 'sim'; name: string } | { kind: 'xen'; name: string };

export function resolveDomain(arg: string): DomainSpec {
  const m = /^sim:([A-Za-z0-9][A-Za-z0-9._-]{0,63})$/.exec(arg);
  if (m) return { kind: 'sim', name: m[1] };
  if (arg.startsWith('sim:')) {
    throw new RemusError(ErrorCode.BAD_ARGUMENT, `${JSON.stringify(arg)}: a simulated domain is sim:<name> with letters, digits, . _ - (at most 64)`);
  }
  if (!fs.existsSync('/dev/xen/privcmd')) {
    throw new RemusError(ErrorCode.NO_XEN, `${JSON.stringify(arg)} would be a Xen domain, but this host has no Xen (/dev/xen/privcmd is absent): run on a Xen dom0, or protect a simulated domain such as sim:demo`);
  }
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(arg)) {
    throw new RemusError(ErrorCode.BAD_ARGUMENT, `${JSON.stringify(arg)}: a Xen domain is a name or id (letters, digits, . _ -)`);
  }
  return { kind: 'xen', name: arg };
}

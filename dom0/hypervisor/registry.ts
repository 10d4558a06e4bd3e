// registry: the domain drivers, and which one a domain argument or a HELLO names.
// `sim:<name>` is the built-in simulated domain; anything else is a Xen domain's name or id,
// which needs a Xen dom0. Adding a guest type is one driver file and one line here.
import * as fs from 'node:fs';
import { DOMAIN_NAME_RULE } from '../engine/hello';
import { ErrorCode, RemusError } from '../errors';
import type { DomainDriver, DriverKind, WireKind } from './driver';
import { simDriver } from './sim/sim-driver';
import { xenDriverForDomain, xenPvDriver, xenPvhDriver } from './xen/xen-driver';

/** Every driver, in README's column order. */
export const DRIVERS: readonly DomainDriver[] = [simDriver, xenPvDriver, xenPvhDriver];

export function driverOf(kind: DriverKind): DomainDriver {
  const d = DRIVERS.find((x) => x.kind === kind);
  if (!d) throw new RemusError(ErrorCode.BAD_ARGUMENT, `no domain driver ${JSON.stringify(kind)}`);
  return d;
}

/** The driver and plain name a `protect` argument names (ERR_NO_XEN: a Xen name on a host without Xen). */
export function resolveDomain(arg: string): { driver: DomainDriver; name: string } {
  if (arg.startsWith('sim:')) {
    const name = arg.slice('sim:'.length);
    if (!DOMAIN_NAME_RULE.test(name)) {
      throw new RemusError(
        ErrorCode.BAD_ARGUMENT,
        `${JSON.stringify(arg)}: a simulated domain is sim:<name> with letters, digits, . _ - (at most 64)`,
      );
    }
    return { driver: simDriver, name };
  }
  if (!fs.existsSync('/dev/xen/privcmd')) {
    throw new RemusError(
      ErrorCode.NO_XEN,
      `${JSON.stringify(arg)} would be a Xen domain, but this host has no Xen ` +
        '(/dev/xen/privcmd is absent): run on a Xen dom0, or protect a simulated domain such as sim:demo',
    );
  }
  if (!DOMAIN_NAME_RULE.test(arg)) {
    throw new RemusError(
      ErrorCode.BAD_ARGUMENT,
      `${JSON.stringify(arg)}: a Xen domain is a name or id (letters, digits, . _ -)`,
    );
  }
  return { driver: xenDriverForDomain(arg), name: arg };
}

/**
 * The driver whose replicas serve a HELLO of this kind (validated by engine/hello.ts). The
 * Xen guest types share one replica (xl reads the type from the stream's configuration).
 */
export function driverForHello(kind: WireKind): DomainDriver {
  const d = DRIVERS.find((x) => x.wireKind === kind);
  if (!d) throw new RemusError(ErrorCode.HANDSHAKE, `no replica driver for domains of kind ${JSON.stringify(kind)}`);
  return d;
}

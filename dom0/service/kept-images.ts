// kept-images: the disk copies of domains an agent's host already holds, which a new backup
// session can continue instead of copying whole (`--reuse-disk` without an operator). Two kinds:
// a replica this host kept as a backup or ran the domain on after a failover
// (<diskDir>/<kind>-<name>.backup.disk), and the disk a `protect` on this host ran the domain on
// (<runDir>/<kind>-<name>.primary.disk) — the latter only while no live process protects it
// (a fenced primary's disk is never written under it). Only kinds whose driver continues a
// reused disk count. Whether a copy really continues the new primary's disk is not assumed:
// the session's first checkpoint verifies both disks equal, and a copy that is not gets a full
// copy (docs/disk.md "Verification").
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DOMAIN_KINDS } from '../engine/hello';
import { driverForHello } from '../hypervisor/registry';
import { protectLockPath } from './control';
import { HostLock } from './host-lock';

export interface ImageDirs {
  diskDir: string;
  runDir: string;
}

type Kind = (typeof DOMAIN_KINDS)[number];

/** The domain as status and the pool name it: sim:<name> for a simulated one. */
export function domainLabel(kind: string, name: string): string {
  return kind === 'sim' ? `sim:${name}` : name;
}

function reusable(kind: string): kind is Kind {
  return (DOMAIN_KINDS as readonly string[]).includes(kind) && driverForHello(kind as Kind).features.reuseDisk === true;
}

/** The copy of kind/name's disk this host keeps, or null. */
export function keptImage(kind: string, name: string, dirs: ImageDirs): string | null {
  if (!reusable(kind)) return null;
  const replica = path.join(dirs.diskDir, `${kind}-${name}.backup.disk`);
  if (fs.existsSync(replica)) return replica;
  const primary = path.join(dirs.runDir, `${kind}-${name}.primary.disk`);
  if (fs.existsSync(primary) && !HostLock.heldAt(protectLockPath(kind, name))) return primary;
  return null;
}

/** Every domain this host keeps a disk copy of, as domainLabel names it. */
export function keptImageDomains(dirs: ImageDirs): string[] {
  const found = new Set<string>();
  const scan = (dir: string, suffix: string): void => {
    let names: string[] = [];
    try {
      names = fs.readdirSync(dir);
    } catch {
      return; // not made yet
    }
    for (const f of names) {
      const m = /^([a-z]+)-(.+)$/.exec(f.endsWith(suffix) ? f.slice(0, -suffix.length) : '');
      if (m && keptImage(m[1], m[2], dirs) !== null) found.add(domainLabel(m[1], m[2]));
    }
  };
  scan(dirs.diskDir, '.backup.disk');
  scan(dirs.runDir, '.primary.disk');
  return [...found].sort();
}

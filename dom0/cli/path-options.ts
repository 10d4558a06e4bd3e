// path-options: command-line values that name files and directories, checked when the
// command line is parsed — before any service starts or any file is created — so a wrong
// path fails at once, naming the flag, instead of after a listener, a socket or a half-made
// disk exists (or never: a FIFO given as a key file blocks the read forever). Roles:
//   input       an existing readable regular file (a key, a trace, a disk image)
//   rw-input    the same, writable too (a disk image the command writes)
//   output      a file to write: a regular file or character device (/dev/null), or a new
//               file in an existing writable directory; not a directory, FIFO or dangling link
//   new-output  a new file in an existing writable directory (keygen never overwrites a key)
//   dir         an existing directory
//   dir-or-new  an existing writable directory, or a new one in an existing directory
// The checks are a courtesy at start, not a lock: the command still handles I/O errors later.
// Syntax (empty, looks like an option) is ERR_BAD_ARGUMENT; what the file system holds is
// ERR_IO. Each parser returns the value unchanged.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ErrorCode, RemusError } from '../errors';
import { NBD_DEVICE } from '../hypervisor/xen/nbd-device';
import { badValue, refuseOptionLike, specified } from './options';

export type PathRole = 'input' | 'rw-input' | 'output' | 'new-output' | 'dir' | 'dir-or-new';

const { R_OK, W_OK, X_OK } = fs.constants;
const ROLES: Record<PathRole, { verb: string; expected: string; access: number }> = {
  input: { verb: 'open', expected: 'an existing readable file', access: R_OK },
  'rw-input': { verb: 'open', expected: 'an existing readable and writable file', access: R_OK | W_OK },
  output: { verb: 'write', expected: 'a file to write in an existing directory', access: W_OK },
  'new-output': { verb: 'create', expected: 'a new file in an existing directory', access: W_OK },
  dir: { verb: 'use', expected: 'an existing directory', access: R_OK | X_OK },
  'dir-or-new': { verb: 'use', expected: 'a directory, or a new one in an existing directory', access: W_OK | X_OK },
};

/** A parser for a value naming a file or directory in role; label (the flag, or an argument) starts its errors. */
export function pathOption(label: string, role: PathRole): (v: string) => string {
  const parse = (v: string): string => {
    checkPath(label, v, v, role);
    return v;
  };
  return specified(parse, { name: label, kind: 'path', role });
}

/** Throws when path p, given on the command line as value, does not fit role. */
export function checkPath(label: string, value: string, p: string, role: PathRole): void {
  const r = ROLES[role];
  if (!p) throw badValue(label, value, `a path to ${r.expected}`);
  refuseOptionLike(label, value, `a path to ${r.expected}`);
  const why = problem(p, role);
  if (why) throw fileSystemError(`${r.verb} ${label}`, value, why, r.expected);
}

/** --disk-device: /dev/nbdN (nbd-client attaches it; the nbd module is loaded when it is absent). */
export function nbdDeviceOption(name: string): (v: string) => string {
  const expected = 'an NBD device, /dev/nbdN';
  return specified(
    (v: string): string => {
      if (!NBD_DEVICE.test(v)) throw badValue(name, v, expected);
      const st = statOrNull(v);
      if (st && !st.isBlockDevice()) throw fileSystemError(`use ${name}`, v, describe(st), expected);
      return v;
    },
    { name, kind: 'nbd-device' },
  );
}

function fileSystemError(what: string, value: string, why: string, expected: string): RemusError {
  return new RemusError(ErrorCode.IO, `cannot ${what} ${JSON.stringify(value)}: ${why}; expected ${expected}`);
}

function problem(p: string, role: PathRole): string | null {
  const found = look(p);
  if (found instanceof fs.Stats) return existingProblem(p, found, role);
  if (!found.absent) return found.why;
  return role === 'output' || role === 'new-output' || role === 'dir-or-new' ? parentProblem(p) : found.why;
}

function existingProblem(p: string, st: fs.Stats, role: PathRole): string | null {
  if (role === 'new-output') return 'it already exists';
  const fits =
    role === 'dir' || role === 'dir-or-new'
      ? st.isDirectory()
      : st.isFile() || (role === 'output' && st.isCharacterDevice());
  return fits ? accessProblem(p, ROLES[role].access) : describe(st);
}

/** The directory a new file or directory would go in must exist and take it. */
function parentProblem(p: string): string | null {
  const dir = path.dirname(path.resolve(p));
  const found = look(dir);
  if (!(found instanceof fs.Stats)) return `its directory ${dir} ${found.why}`;
  if (!found.isDirectory()) return `${dir} ${describe(found)}`;
  return accessProblem(dir, W_OK | X_OK);
}

function accessProblem(p: string, mode: number): string | null {
  try {
    fs.accessSync(p, mode);
    return null;
  } catch {
    return `${path.resolve(p)} may not be ${mode & W_OK ? 'written' : 'read'} by this user`;
  }
}

/** What is at p, following symbolic links, or why nothing usable is (absent: nothing at all is there). */
function look(p: string): fs.Stats | { absent: boolean; why: string } {
  try {
    return fs.statSync(p);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && lstatOrNull(p)?.isSymbolicLink()) {
      return { absent: false, why: `is a dangling symbolic link (to ${fs.readlinkSync(p)})` };
    }
    if (code === 'ENOENT') return { absent: true, why: 'does not exist' };
    if (code === 'ENOTDIR') return { absent: false, why: `cannot exist: ${fileAncestor(p)} is not a directory` };
    if (code === 'ELOOP') return { absent: false, why: 'is a loop of symbolic links' };
    if (code === 'EACCES') return { absent: false, why: 'cannot be reached (a directory on the way is closed)' };
    return { absent: false, why: (e as Error).message };
  }
}

function fileAncestor(p: string): string {
  for (let d = path.dirname(path.resolve(p)); d !== path.dirname(d); d = path.dirname(d)) {
    const st = statOrNull(d);
    if (st && !st.isDirectory()) return d;
  }
  return path.dirname(p);
}

function describe(st: fs.Stats): string {
  if (st.isDirectory()) return 'is a directory';
  if (st.isFile()) return 'is a regular file, not a directory';
  if (st.isFIFO()) return 'is a FIFO (named pipe)';
  if (st.isSocket()) return 'is a socket';
  return st.isBlockDevice() ? 'is a block device' : 'is a character device';
}

function statOrNull(p: string): fs.Stats | null {
  try {
    return fs.statSync(p);
  } catch {
    return null;
  }
}

function lstatOrNull(p: string): fs.Stats | null {
  try {
    return fs.lstatSync(p);
  } catch {
    return null;
  }
}

// host-lock: one process per protected domain (and per replica file) on a host. A lock is a
// file created exclusively (O_CREAT|O_EXCL|O_NOFOLLOW) holding its owner's pid; it is
// released by that owner (close, or its stop path), and one whose owner is no longer
// alive (a crashed run) is taken over. A second `remusdb protect` of the same domain thus
// refuses with ERR_LOCKED before it touches anything, instead of reformatting the first
// run's disk and taking over its control socket; a backup never truncates a replica disk
// that another backup process holds.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ErrorCode, RemusError } from '../errors';

export class HostLock {
  private held = true;

  /** tookOverFrom: the pid of a dead process whose lock this one took over (a crashed run), else null. */
  private constructor(
    readonly file: string,
    readonly tookOverFrom: number | null,
  ) {}

  /** Takes the lock at file for this process; what names the holder in the refusal. */
  static acquire(file: string, what: string): HostLock {
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    let dead: number | null = null;
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
        const fd = fs.openSync(file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
        fs.writeSync(fd, `${process.pid}\n`);
        fs.closeSync(fd);
        return new HostLock(file, dead);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') {
          throw new RemusError(
            ErrorCode.IO,
            `cannot create the lock ${file}: ${(e as Error).message}`,
            {},
            { cause: e },
          );
        }
      }
      const owner = ownerOf(file);
      if (owner !== null && owner !== process.pid && alive(owner)) {
        throw new RemusError(
          ErrorCode.LOCKED,
          `${what} is held by process ${owner} on this host (lock ${file}): ` +
            'stop that process first; nothing was changed',
          { pid: owner },
        );
      }
      if (owner !== null && owner !== process.pid) dead = owner;
      fs.rmSync(file, { force: true }); // its owner is gone (or it is ours from before): take it over
    }
    throw new RemusError(
      ErrorCode.LOCKED,
      `${what}: the lock ${file} keeps reappearing (another process races for it)`,
    );
  }

  /** Whether a live process (another, or this one) holds the lock at file now. */
  static heldAt(file: string): boolean {
    const owner = ownerOf(file);
    return owner !== null && alive(owner);
  }

  /** Removes the lock if it is still ours. Idempotent. */
  release(): void {
    if (!this.held) return;
    this.held = false;
    if (ownerOf(this.file) === process.pid) fs.rmSync(this.file, { force: true });
  }
}

function ownerOf(file: string): number | null {
  try {
    const pid = Number(fs.readFileSync(file, 'utf8').trim());
    return Number.isSafeInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

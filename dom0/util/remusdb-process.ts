// remusdb-process: runs this checkout's `remusdb` as a child process with its output in a
// log file of a directory (the demo, the scale benchmark and the tests start backups and
// primaries this way); the caller keeps the children to stop them.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export const REMUSDB_BIN = path.join(__dirname, '..', '..', '..', 'bin', 'remusdb');

export function remusdbRunner(
  dir: string,
  env: NodeJS.ProcessEnv,
  kids: ChildProcess[],
): (args: string[], log: string) => ChildProcess {
  return (args, log) => {
    const fd = fs.openSync(path.join(dir, log), 'a');
    const c = spawn(process.execPath, [...childNodeArgs(env), REMUSDB_BIN, ...args], {
      env,
      stdio: ['ignore', fd, fd],
    });
    kids.push(c);
    return c;
  };
}

/**
 * Node options for the children only (REMUSDB_CHILD_NODE_ARGS, words), e.g. `--cpu-prof
 * --cpu-prof-dir=/tmp/prof` to profile a benchmark's backup and primary (Node refuses
 * --cpu-prof in NODE_OPTIONS).
 */
function childNodeArgs(env: NodeJS.ProcessEnv): string[] {
  return (env.REMUSDB_CHILD_NODE_ARGS ?? '').split(/\s+/).filter((w) => w !== '');
}

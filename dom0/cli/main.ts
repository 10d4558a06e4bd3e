// main: the `remusdb` command line (commander). One file per command in this folder; value
// parsers in options.ts and path-options.ts. Operating errors print their code and message and
// exit 1, bad usage exits 2 (errorOutcome); buildProgram() is the whole tree, for tests too.
import { EXIT_FENCED } from './until-stopped';
import { Command, CommanderError } from 'commander';
import { ErrorCode, RemusError } from '../errors';
import { registerBench } from './bench';
import { registerDoctor } from './doctor';
import { registerTrace } from './trace';
import { registerReplication } from './replication';
import { registerDemo } from './demo';
import { registerDisk } from './disk';
import { registerRecord } from './record';
import { registerAgent } from './agent';

export function buildProgram(): Command {
  const program = new Command('remusdb')
    .description('High availability for database VMs on Xen (Remus + RemusDB optimizations)')
    .version(require('../../../package.json').version as string)
    .showHelpAfterError()
    .exitOverride();
  registerDoctor(program);
  registerTrace(program);
  registerBench(program);
  registerReplication(program);
  registerDemo(program);
  registerDisk(program);
  registerRecord(program);
  registerAgent(program);
  return program;
}

/** How an error ends the command: its exit status and the line to print (null: commander printed it). */
export function errorOutcome(e: unknown): { exitCode: number; line: string | null } | null {
  if (e instanceof CommanderError) return { exitCode: e.exitCode === 0 ? 0 : 2, line: null };
  if (e instanceof RemusError) {
    // Another host owns the domain (--coordination): as fenced, a restart would change nothing.
    const exitCode = e.code === ErrorCode.BAD_ARGUMENT ? 2 : e.code === ErrorCode.NOT_OWNER ? EXIT_FENCED : 1;
    return { exitCode, line: `remusdb: ${e.message} [${e.code}]` };
  }
  return null; // a bug: thrown on, with its stack
}

export async function main(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (e) {
    const out = errorOutcome(e);
    if (!out) throw e;
    if (out.line) console.error(out.line);
    process.exitCode = out.exitCode;
  }
}

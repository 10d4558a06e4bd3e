// main: the `remusdb` command line (commander). One file per command in this folder;
// operating errors print their code and message and exit 1, bad usage exits 2.
import { Command, CommanderError } from 'commander';
import { RemusError } from '../errors';
import { registerBench } from './bench';
import { registerDoctor } from './doctor';
import { registerTrace } from './trace';
import { registerReplication } from './replication';
import { registerDemo } from './demo';
import { registerDisk } from './disk';
import { registerRecord } from './record';

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
  return program;
}

export async function main(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      process.exitCode = e.exitCode === 0 ? 0 : 2;
      return;
    }
    if (e instanceof RemusError) {
      console.error(`remusdb: ${e.message} [${e.code}]`);
      process.exitCode = e.code === 'ERR_BAD_ARGUMENT' ? 2 : 1;
      return;
    }
    throw e;
  }
}

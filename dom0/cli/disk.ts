// disk: `remusdb disk serve <image>` — serves a raw disk image over NBD (docs/nbd.md),
// standalone, without replication, until SIGINT/SIGTERM (which drain in-flight requests).
// The image, --listen and --export are checked as the command line is parsed.
import type { Command } from 'commander';
import { parseHostPort } from '../protocol/channel';
import { DEFAULT_EXPORT_NAME, serveDisk } from '../../blktap/serve';
import { badValue, hostPortOption, refuseOptionLike, specified } from './options';
import { pathOption } from './path-options';
import { DEFAULT_NBD_PORT } from '../limits';

const EXPORT_NAME_BYTES_MAX = 4096; // NBD's limit on a name

/** --export: at most 4096 bytes of UTF-8 ("" is accepted: clients that send no name get the export). */
const exportNameOption = specified(
  (v: string): string => {
    const expected = `an export name of at most ${EXPORT_NAME_BYTES_MAX} bytes`;
    refuseOptionLike('--export', v, expected);
    const bytes = Buffer.byteLength(v, 'utf8');
    if (bytes > EXPORT_NAME_BYTES_MAX) throw badValue('--export', `${v.slice(0, 16)}…`, expected, `${bytes} bytes`);
    return v;
  },
  { name: '--export', kind: 'export-name' },
);

export function registerDisk(program: Command): void {
  const disk = program.command('disk').description('guest disks (NBD backend)');
  disk
    .command('serve')
    .description('serve a raw disk image over NBD (no replication)')
    .argument('<image>', 'raw image file', pathOption('disk image', 'input'))
    .option(
      '--listen <addr:port>',
      'address to listen on',
      hostPortOption('--listen', DEFAULT_NBD_PORT),
      `127.0.0.1:${DEFAULT_NBD_PORT}`,
    )
    .option('--export <name>', 'export name ("" is accepted as an alias)', exportNameOption, DEFAULT_EXPORT_NAME)
    .option('--read-only', 'refuse writes (EPERM)')
    .action(async (image: string, o: { listen: string; export: string; readOnly?: boolean }) => {
      const { host, port } = parseHostPort(o.listen, DEFAULT_NBD_PORT);
      const log = (m: string): void => {
        console.error(m);
      };
      const d = await serveDisk({ image, host, port, exportName: o.export, readOnly: !!o.readOnly, log });
      log(`serving ${image} (${d.sizeBytes} bytes) as NBD export ${JSON.stringify(d.exportName)} on ${host}:${d.port}`);
      await new Promise<void>((resolve) => {
        const stop = (): void => {
          process.off('SIGINT', stop);
          process.off('SIGTERM', stop);
          resolve();
        };
        process.on('SIGINT', stop);
        process.on('SIGTERM', stop);
      });
      await d.close();
      log('NBD server closed');
    });
}

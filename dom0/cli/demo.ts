// demo: `remusdb demo` — the main job on the built-in simulated domain. It starts a backup
// process and a primary process protecting sim:demo (oltp workload) with a real channel
// (TLS pre-shared key), shows live checkpoint stats, kills the primary with SIGKILL after
// N seconds, lets the backup fail over, and then checks what users rely on:
//  - no output was released ahead of its checkpoint (the client never saw a sequence
//    number beyond the one the resumed guest holds);
//  - the resumed guest's memory equals the guest's memory at a checkpoint boundary, byte
//    for byte (rebuilt by replaying the deterministic guest to the resumed step count), and
//    that checkpoint is at least the last one the primary saw acknowledged.
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Command } from 'commander';
import { ErrorCode, RemusError } from '../errors';
import { loadAddon } from '../native';
import { MemModelDisk, replayGuest, type Workload } from '../hypervisor/sim/guest-program';
import { freePort } from '../util/free-port';
import { remusdbRunner } from '../util/remusdb-process';
import { newPsk } from '../protocol/channel';
import { controlRequest } from '../service/control';
import { choiceOption, intOption } from './options';
import { memoryOption } from './replication';
import { exactSize } from './units';

interface DemoOpts {
  seconds: number;
  interval: number;
  memory: number;
  rate: number;
  json?: boolean;
  killSignal: 'SIGKILL' | 'SIGSTOP';
}

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('protect sim:demo against a local backup, show live stats, kill the primary, fail over, verify')
    .option(
      '--seconds <n>',
      'run protected for n seconds before killing the primary',
      intOption('--seconds', 1, 3600),
      10,
    )
    .option('-i, --interval <ms>', 'checkpoint interval', intOption('--interval', 5, 10000), 50)
    .option('--memory <size>', 'guest memory', memoryOption('--memory'), 256 * 2 ** 20)
    .option('--rate <n>', 'guest transactions per second', intOption('--rate', 1, 1e6), 2000)
    .option(
      '--kill-signal <sig>',
      'SIGKILL (the connection closes) or SIGSTOP (the primary goes silent: power-loss-like, the heartbeat ' +
        'timeout decides)',
      choiceOption('--kill-signal', ['SIGKILL', 'SIGSTOP'] as const),
      'SIGKILL',
    )
    .option('--json', 'print the summary as one JSON object on the last line')
    .action(async (o: DemoOpts) => {
      await runDemo(o);
    });
}

interface ClientLog {
  conns: Array<Map<number, number>>;
  firstAfterKillAt: number | null;
}

function startClient(log: ClientLog): Promise<net.Server> {
  return new Promise((resolve) => {
    const server = net
      .createServer((s) => {
        const seen = new Map<number, number>();
        log.conns.push(seen);
        let buf = '';
        s.on('data', (d) => {
          buf += d.toString('utf8');
          let nl: number;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const [seq, value] = buf.slice(0, nl).split(' ').map(Number);
            buf = buf.slice(nl + 1);
            seen.set(seq, value);
            if (log.conns.length > 1 && log.firstAfterKillAt === null) log.firstAfterKillAt = Date.now();
          }
        });
        s.on('error', () => {});
      })
      .listen(0, '127.0.0.1', () => resolve(server));
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function runDemo(o: DemoOpts): Promise<void> {
  const say = (line: string): void => {
    if (!o.json) console.log(line);
    else console.error(line);
  };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'remusdb-demo-'));
  const env = { ...process.env, REMUSDB_RUN_DIR: dir };
  const psk = path.join(dir, 'demo.psk');
  fs.writeFileSync(psk, `${newPsk()}\n`, { mode: 0o600 });
  const clientLog: ClientLog = { conns: [], firstAfterKillAt: null };
  const client = await startClient(clientLog);
  const clientAddr = `127.0.0.1:${(client.address() as net.AddressInfo).port}`;
  const port = await freePort();
  const journal = path.join(dir, 'primary.journal');
  const children: ChildProcess[] = [];
  const run = remusdbRunner(dir, env, children);
  try {
    run(['backup', '--listen', `127.0.0.1:${port}`, '--psk-file', psk, '--checksum-on-failover'], 'backup.log');
    const backupSock = path.join(dir, `backup-${port}.sock`);
    await waitFor(() => fs.existsSync(backupSock), 10000, 'the backup process did not start');
    const primary = run(
      [
        'protect',
        'sim:demo',
        `127.0.0.1:${port}`,
        '--psk-file',
        psk,
        '-i',
        String(o.interval),
        '--memory',
        String(o.memory),
        '--rate',
        String(o.rate),
        '--client',
        clientAddr,
        '--journal',
        journal,
      ],
      'primary.log',
    );
    const primarySock = path.join(dir, 'primary-demo.sock');
    say(
      `demo: backup on 127.0.0.1:${port}, primary protecting sim:demo (${exactSize(o.memory)}, oltp, ${o.rate} tx/s) ` +
        `every ${o.interval} ms; logs in ${dir}`,
    );
    let last: Record<string, unknown> = {};
    // Booting and the live pre-copy take time in proportion to memory: allow 20 s plus 32 MiB/s.
    const firstAckMs = 20_000 + Math.ceil(o.memory / (32 * 2 ** 20)) * 1000;
    let shown = 0;
    await waitFor(
      async () => {
        last = await controlRequest(primarySock, { cmd: 'status' }).catch(() => ({}));
        const pc = last.precopy as { round: number; sentPages: number; mbPerSec: number } | null | undefined;
        if (pc && !o.json && Date.now() - shown > 2000) {
          shown = Date.now();
          say(
            `demo: pre-copy round ${pc.round}: ${exactSize(pc.sentPages * 4096)} ` +
              `sent at ${pc.mbPerSec.toFixed(0)} MB/s`,
          );
        }
        return Number(last.ackedEpoch ?? 0) >= 1;
      },
      firstAckMs,
      'the primary never got its first checkpoint acknowledged',
    );
    const t0 = Date.now();
    while (Date.now() - t0 < o.seconds * 1000) {
      await sleep(500);
      last = await controlRequest(primarySock, { cmd: 'status' }).catch(() => last);
      // On a terminal one line updates in place; in a log, a line every 2 s.
      if (!o.json && process.stdout.isTTY) process.stdout.write(`\r${liveLine(last)}   `);
      else if (!o.json && (Date.now() - t0) % 2000 < 500) process.stdout.write(`${liveLine(last)}\n`);
    }
    if (!o.json && process.stdout.isTTY) process.stdout.write('\n');
    const ackedBeforeKill = Number(last.ackedEpoch);
    const tKill = Date.now();
    primary.kill(o.killSignal);
    say(
      `demo: killed the primary (${o.killSignal}) at epoch ${String(last.epoch)}, last acknowledged ${ackedBeforeKill}`,
    );
    let b: Record<string, unknown> = {};
    await waitFor(
      async () => {
        b = await controlRequest(backupSock, { cmd: 'status' }).catch(() => ({}));
        return b.state === 'failed-over';
      },
      15000,
      'the backup did not fail over',
    );
    await waitFor(() => clientLog.firstAfterKillAt !== null, 5000, 'the resumed guest sent no output').catch(() => {});
    const resumed = b.resumed as { epoch: number; info: Record<string, unknown> };
    const failoverEvent = (b.events as Array<Record<string, unknown>>).find((e) => e.name === 'failover');
    const summary: Record<string, unknown> = verify(o, last, resumed, clientLog, ackedBeforeKill, journal);
    const result: Record<string, unknown> = {
      ...summary,
      kill_signal: o.killSignal,
      failover_ms: failoverEvent ? Number(failoverEvent.at) - tKill : null,
      image_checksum_ms: Number(resumed.info.imageChecksumMs ?? 0), // part of failover_ms: the demo's verification
      service_restored_ms: clientLog.firstAfterKillAt ? clientLog.firstAfterKillAt - tKill : null,
      sessions: Number(last.sessions),
      initial_sync_ms: Number(last.initialSyncMs),
      max_output_hold_ms: Number((last.outputs as { holdMsMax?: number } | undefined)?.holdMsMax ?? NaN),
      primary_rss_bytes: Number(last.rss_bytes),
      backup_rss_bytes: Number(b.rss_bytes),
    };
    if (o.json) console.log(JSON.stringify(result));
    else printSummary(result);
    if (!result.state_verified || result.outputs_ahead_of_checkpoint !== 0) process.exitCode = 1;
  } finally {
    for (const c of children) c.kill(o.killSignal === 'SIGSTOP' ? 'SIGKILL' : 'SIGTERM');
    client.close();
    await sleep(200);
  }
}

function verify(
  o: DemoOpts,
  last: Record<string, unknown>,
  resumed: { epoch: number; info: Record<string, unknown> },
  clientLog: ClientLog,
  ackedBeforeKill: number,
  journal: string,
): Record<string, unknown> {
  const info = resumed.info;
  const resumedSeq = Number(info.seq),
    steps = Number(info.steps);
  const fromPrimary = clientLog.conns[0] ?? new Map<number, number>();
  let ahead = 0;
  for (const seq of fromPrimary.keys()) if (seq > resumedSeq) ahead++;
  const pages = o.memory / 4096;
  const diskBytes = Number((last.disk as { sizeBytes?: number } | null)?.sizeBytes ?? 0);
  const disk = diskBytes > 0 ? new MemModelDisk(diskBytes / 4096) : undefined;
  const expected = replayGuest(pages, info.workload as Workload, Number(info.seed), steps, undefined, disk);
  const imageMatches = expected.crc32c() === Number(info.imageCrc32c);
  const diskMatches = disk ? loadAddon().crc32c(disk.bytes) === Number(info.diskCrc32c) : null;
  const entry = fs
    .readFileSync(journal, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .find((e) => e.epoch === resumed.epoch && e.seq !== undefined);
  const journalMatches =
    !!entry && entry.seq === resumedSeq && entry.steps === steps && entry.stateHash === info.stateHash;
  const n = (k: string): number => Number(last[k] ?? 0);
  return {
    epochs: n('epoch'),
    interval_ms: o.interval,
    pause_ms_p50: n('pauseMsP50'),
    pause_ms_p99: n('pauseMsP99'),
    full_copy_pause_ms: n('fullPauseMs'),
    copy_ms_p50: n('copyMsP50'),
    dirty_pages_per_epoch: n('dirtyPages') / Math.max(1, n('checkpoints') - 1),
    wire_bytes: n('wireBytes'),
    raw_bytes: n('rawBytes'),
    ratio: n('wireBytes') ? n('rawBytes') / n('wireBytes') : 0,
    acked_epoch_before_kill: ackedBeforeKill,
    resumed_epoch: resumed.epoch,
    resumed_seq: resumedSeq,
    outputs_seen: fromPrimary.size,
    outputs_ahead_of_checkpoint: ahead,
    outputs_after_failover: clientLog.conns.slice(1).reduce((a, m) => a + m.size, 0),
    state_verified: imageMatches && journalMatches && diskMatches !== false && resumed.epoch >= ackedBeforeKill,
    image_matches_replay: imageMatches,
    journal_matches: journalMatches,
    disk_bytes: diskBytes,
    disk_matches_replay: diskMatches,
    disk_writes_replicated: Number((last.disk as { forwardedWrites?: number } | null)?.forwardedWrites ?? 0),
    dirty_tracking: String((last.guest as Record<string, unknown> | undefined)?.dirtyMode ?? 'unknown'),
  };
}

function liveLine(s: Record<string, unknown>): string {
  const n = (k: string): number => Number(s[k] ?? 0);
  return (
    `epoch ${n('epoch')} acked ${n('ackedEpoch')} | pause p50 ${n('pauseMsP50').toFixed(2)} ms ` +
    `p99 ${n('pauseMsP99').toFixed(2)} ms | dirty ${n('dirtyPagesLast')} pages/epoch | wire ` +
    `${(n('wireBytes') / 1e6).toFixed(1)} MB, ratio ${(n('rawBytes') / Math.max(1, n('wireBytes'))).toFixed(1)}x | ` +
    `outputs held ${n('outputsHeld')}`
  );
}

function printSummary(r: Record<string, unknown>): void {
  const rows: Array<[string, unknown]> = [
    ['checkpoints', r.epochs],
    ['interval', `${String(r.interval_ms)} ms`],
    [
      'pause p50 / p99',
      `${Number(r.pause_ms_p50).toFixed(2)} / ${Number(r.pause_ms_p99).toFixed(2)} ms (full ` +
        `copy ${Number(r.full_copy_pause_ms).toFixed(0)} ms)`,
    ],
    [
      'wire',
      `${(Number(r.wire_bytes) / 1e6).toFixed(1)} MB for ${(Number(r.raw_bytes) / 1e6).toFixed(1)} MB of pages ` +
        `(${Number(r.ratio).toFixed(1)}x)`,
    ],
    [
      'failover',
      `${String(r.failover_ms)} ms after SIGKILL, of which ${Number(r.image_checksum_ms).toFixed(0)} ms checksum for ` +
        `the ` +
        `verification (first output from the backup after ${String(r.service_restored_ms)} ms)`,
    ],
    [
      'resumed from',
      `epoch ${String(r.resumed_epoch)} (primary saw ${String(r.acked_epoch_before_kill)} acknowledged), guest ` +
        `seq ${String(r.resumed_seq)}`,
    ],
    [
      'outputs',
      `${String(r.outputs_seen)} seen by the client before the kill, ${String(r.outputs_ahead_of_checkpoint)} ahead ` +
        `of the checkpoint`,
    ],
    ['disk', r.disk_bytes ? diskLine(r) : 'none'],
    [
      'state verified',
      r.state_verified
        ? `yes: resumed memory${r.disk_bytes ? ' and disk' : ''} = replayed guest at that checkpoint, byte for byte`
        : 'NO',
    ],
  ];
  for (const [k, v] of rows) console.log(`${k.padEnd(16)} ${String(v)}`);
}

function diskLine(r: Record<string, unknown>): string {
  const same = r.disk_matches_replay ? "= replayed guest's disk at that checkpoint" : 'DIFFERS from the replay';
  const size = exactSize(Number(r.disk_bytes));
  return `${size}, ${String(r.disk_writes_replicated)} writes replicated; resumed disk ${same}`;
}

async function waitFor(cond: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return;
    await sleep(50);
  }
  throw new RemusError(ErrorCode.PEER_GONE, `demo: ${what} within ${ms} ms`);
}

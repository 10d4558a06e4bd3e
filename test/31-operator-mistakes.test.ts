// 31 operator mistakes: every command and every option that takes a value, enumerated from
// commander's own program (buildProgram), each fed the values an operator gets wrong — empty,
// negative, zero, past the maximum, not a number, 2^53, 1e400, bad units, left out; for paths
// a missing file, a directory for a file and the reverse, a path under a file, a dangling
// symbolic link, a FIFO, an unreadable file or directory (not as root: root reads anything).
// A new flag is covered the day it is added: its parser's ValueSpec (dom0/cli/options.ts) says
// which bad values to try, and a value option without one fails 31.1.
// Invariants per case: a non-zero exit status (not a signal); one error line, first, naming
// the flag and what it expects (no stack trace, no "undefined" or "NaN"); nothing changed on
// disk (the fixtures and the run, working and temporary directories). Every case is parsed
// in-process (31.2: the actions are replaced, so a value that gets through is reported, not
// run); the path cases and one case per command and kind of value also run as real processes
// (31.3), three at a time.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import type { Command } from 'commander';
import { buildProgram, errorOutcome } from '../dom0/cli/main';
import { valueSpec, type ValueSpec } from '../dom0/cli/options';
import { memoryOption } from '../dom0/cli/replication';
import { exactSize, roundedSize } from '../dom0/cli/units';
import { OLTP_RATES } from '../dom0/trace/db-memory-model';
import { synthTrace } from '../dom0/trace/synth';
import { ROOT, tmpDir } from './support/helpers';

const IS_ROOT = process.getuid?.() === 0;
const PARALLEL = 3;
const SPAWN_TIMEOUT_MS = 10_000;

// ---- fixtures: one scratch directory, filled before the cases run (the table only names paths)

const scratch = tmpDir('t31');
const runs = tmpDir('t31-runs');
const F = {
  file: path.join(scratch, 'file.txt'),
  dir: path.join(scratch, 'dir'),
  fifo: path.join(scratch, 'fifo'),
  dangling: path.join(scratch, 'dangling'),
  missing: path.join(scratch, 'missing'),
  inMissingDir: path.join(scratch, 'missing-dir', 'x'),
  underFile: path.join(scratch, 'file.txt', 'x'),
  unreadable: path.join(scratch, 'unreadable'),
  inReadOnlyDir: path.join(scratch, 'read-only-dir', 'x'),
  trace: path.join(scratch, 'good.rdt'),
  image: path.join(scratch, 'disk.img'),
  pgEmpty: path.join(scratch, 'pg-empty'),
};

function makeFixtures(): void {
  fs.writeFileSync(F.file, 'x\n');
  fs.mkdirSync(F.dir);
  fs.mkdirSync(F.pgEmpty);
  fs.symlinkSync(path.join(scratch, 'nowhere'), F.dangling);
  const fifo = spawnSync('mkfifo', [F.fifo]);
  assert.equal(fifo.status, 0, `mkfifo: ${String(fifo.stderr)}`);
  fs.writeFileSync(F.unreadable, 'x\n', { mode: 0o000 });
  fs.mkdirSync(path.dirname(F.inReadOnlyDir), { mode: 0o555 });
  synthTrace({ out: F.trace, pages: 64, epochs: 2, seed: 1, rates: OLTP_RATES });
  fs.writeFileSync(F.image, Buffer.alloc(2 ** 20));
}

// ---- the commands, from commander's program

interface Leaf {
  name: string;
  cmd: Command;
}

function leavesOf(c: Command, prefix: string[] = []): Leaf[] {
  return c.commands.flatMap((s) => {
    const name = [...prefix, s.name()];
    return s.commands.length ? leavesOf(s, name) : [{ name: name.join(' '), cmd: s }];
  });
}

function allCommands(c: Command): Command[] {
  return [c, ...c.commands.flatMap(allCommands)];
}

const LEAVES = leavesOf(buildProgram());

/** A valid, harmless invocation of each command, which each case then spoils. */
interface Base {
  args?: Record<string, string>;
  opts?: (busyPort: number) => string[];
}
const BASE: Record<string, Base> = {
  doctor: {},
  'trace synth': { opts: () => ['--out', 'synth.rdt', '--pages', '64', '--epochs', '1'] },
  'bench trace': { args: { file: F.trace } },
  'bench engine': { opts: () => ['--seconds', '1', '--runs', '1'] },
  'bench net': { opts: () => ['--seconds', '1', '--runs', '1'] },
  'bench scale': { opts: () => ['--max', '256MiB', '--seconds', '1'] },
  'bench multi': { opts: () => ['--domains', '2', '--seconds', '1', '--runs', '1'] },
  'bench codec': { opts: () => ['--runs', '1'] },
  protect: {
    args: { domain: 'sim:t31' },
    opts: () => ['--blackhole', '--memory', '16MiB', '--disk', '0', '--seconds', '1'],
  },
  backup: { opts: (p) => ['--insecure', '--listen', `127.0.0.1:${p}`] },
  agent: { opts: (p) => ['--insecure', '--listen', `127.0.0.1:${p}`, '--coordination', 'etcd://127.0.0.1:1'] },
  reprotect: { args: { domain: 'sim:t31', 'new-backup': '127.0.0.1:1' }, opts: () => ['--insecure', '--no-wait'] },
  failover: { args: { domain: 'sim:t31' } },
  status: {},
  keygen: { opts: () => ['--out', 'new.psk'] },
  demo: { opts: () => ['--seconds', '1', '--memory', '16MiB'] },
  'disk serve': { args: { image: F.image }, opts: (p) => ['--listen', `127.0.0.1:${p}`] },
  record: { args: { domain: 'sim:t31' }, opts: () => ['--out', 'rec.rdt'] },
};

// ---- the bad values of each kind of value

type Bad = [what: string, value: string];

const flipCase = (s: string): string => (s === s.toUpperCase() ? s.toLowerCase() : s.toUpperCase());
const when = (cond: boolean, ...bad: Bad[]): Bad[] => (cond ? bad : []);

function intValues(min: number, max: number): Bad[] {
  return [
    ['empty', ''],
    ['blank', '  '],
    ['not a number', 'abc'],
    ['trailing junk', '12abc'],
    ['fraction', '1.5'],
    ['hex', '0x10'],
    ['exponent', '1e3'],
    ['negative', '-1'],
    ...when(min > 0, ['zero', '0']),
    ...when(min > 1, ['below the minimum', String(min - 1)]),
    ['past the maximum', String(max + 1)],
    ['2^53', '9007199254740992'],
    ['1e400', '1e400'],
  ];
}

function fractionValues(min: number, max: number): Bad[] {
  return [
    ['empty', ''],
    ['blank', '  '],
    ['not a number', 'abc'],
    ['trailing junk', '0.1x'],
    ['a percentage', '10%'],
    ['exponent', '1e-1'],
    ['hex', '0x1'],
    ['negative', '-0.1'],
    ['Infinity', 'Infinity'],
    ['at the minimum', String(min)],
    ['past the maximum', String(max + 0.5)],
  ];
}

function intListValues(min: number, max: number, countMax: number): Bad[] {
  return [
    ['empty', ''],
    ['a lone comma', ','],
    ['an empty item', `${min},,${min}`],
    ['not a number', `${min},abc`],
    ['negative', '-1'],
    ['past the maximum', `${min},${max + 1}`],
    ['2^53', '9007199254740992'],
    ['1e400', '1e400'],
    [
      'too many',
      Array(countMax + 1)
        .fill(String(min))
        .join(','),
    ],
    ...when(min > 0, ['zero', '0']),
  ];
}

function bytesValues(s: Extract<ValueSpec, { kind: 'bytes' }>): Bad[] {
  return [
    ['empty', ''],
    ['not a number', 'abc'],
    ['negative', '-1'],
    ['fraction', '1.5G'],
    ['1e400', '1e400'],
    ['2^53 bytes', '9007199254740992'],
    ['an unknown unit', '256XB'],
    ['a unit typo', '256MiBs'],
    ['a unit alone', 'MiB'],
    ['past the maximum', String(s.max + 4096)],
    ['a huge count of a unit', '99999999T'],
    ...when(!s.zero, ['zero', '0']),
    ...when(s.min > 4096, ['below the minimum', String(s.min - 4096)]),
    ...when(s.pageMultiple, ['not a multiple of 4 KiB', String(s.min + 1)]),
  ];
}

function choiceValues(choices: readonly string[]): Bad[] {
  return [
    ['empty', ''],
    ['wrong case', flipCase(choices[0])],
    ['padded', ` ${choices[0]}`],
    ['a prefix', choices[0].slice(0, 2)],
    ['unknown', 'banana'],
  ];
}

const PATHS: Record<string, Bad> = {
  empty: ['empty', ''],
  dash: ['an option instead of a path', '--json'],
  missing: ['a missing file', F.missing],
  missingDir: ['in a missing directory', F.inMissingDir],
  dir: ['a directory', F.dir],
  file: ['a regular file', F.file],
  underFile: ['under a regular file', F.underFile],
  dangling: ['a dangling symbolic link', F.dangling],
  fifo: ['a FIFO', F.fifo],
  unreadable: ['an unreadable file', F.unreadable],
  readOnlyDir: ['in a read-only directory', F.inReadOnlyDir],
};

function pathValues(role: string): Bad[] {
  const asUser = (k: string): string[] => (IS_ROOT ? [] : [k]);
  const input = ['empty', 'dash', 'missing', 'dir', 'underFile', 'dangling', 'fifo', ...asUser('unreadable')];
  const output = ['empty', 'dash', 'missingDir', 'dir', 'underFile', 'dangling', 'fifo', ...asUser('readOnlyDir')];
  const keys: Record<string, string[]> = {
    input: input,
    'rw-input': input,
    output: output,
    'new-output': [...output, 'file'],
    dir: ['empty', 'dash', 'missing', 'file', 'underFile', 'dangling', 'fifo'],
    'dir-or-new': ['empty', 'dash', 'missingDir', 'file', 'underFile', 'dangling', 'fifo', ...asUser('readOnlyDir')],
  };
  return keys[role].map((k) => PATHS[k]);
}

function hostPortValues(s: Extract<ValueSpec, { kind: 'host-port' }>): Bad[] {
  return [
    ['empty', ''],
    ['a colon alone', ':'],
    ['a colon without port', 'localhost:'],
    ['port 0', 'localhost:0'],
    ['port past 65535', 'localhost:65536'],
    ['a negative port', 'localhost:-1'],
    ['a port not a number', 'localhost:abc'],
    ['port 2^53', 'localhost:9007199254740992'],
    ['IPv6 without brackets', '::1'],
    ['an unclosed bracket', '[::1'],
    ['a space in the host', 'local host:7000'],
    ['an option instead of an address', '--json'],
    ...when(s.portRequired, ['no port', 'localhost']),
    s.ipv6 ? ['a name in brackets', '[localhost]:7000'] : ['IPv6 (not supported here)', '[::1]:7000'],
  ];
}

function workloadValues(choices: readonly string[]): Bad[] {
  const traces = pathValues('input')
    .filter(([, v]) => v && !v.startsWith('-'))
    .map(([w, v]): Bad => [`trace: ${w}`, `trace:${v}`]);
  return [...choiceValues(choices), ['trace: without a file', 'trace:'], ['trace without colon', 'trace'], ...traces];
}

const CACHE: Bad[] = [
  ['empty', ''],
  ['0%', '0%'],
  ['past 100%', '101%'],
  ['a negative percentage', '-5%'],
  ['not a number', 'abc'],
  ['an unknown unit', '10XB'],
  ['1e400', '1e400'],
  ['zero bytes', '0'],
  ['a percent sign alone', '%'],
  ['less than a page', '100'],
];
const IFACE: Bad[] = [
  ['empty', ''],
  ['too long', 'x'.repeat(16)],
  ['a space', 'eth 0'],
  ['a slash', 'a/b'],
  ['an option instead of a name', '--json'],
];
const NBD_DEVICE: Bad[] = [
  ['empty', ''],
  ['not NBD', '/dev/sda'],
  ['without /dev', 'nbd0'],
  ['without a number', '/dev/nbd'],
  ['letters for the number', '/dev/nbdx'],
  ['a partition', '/dev/nbd0p1'],
  ['a regular file', F.file],
  ['an option instead of a device', '--json'],
];

const ETCD_ENDPOINTS: Bad[] = [
  ['empty', ''],
  ['without the scheme', '10.0.0.5:2379'],
  ['another scheme', 'http://10.0.0.5:2379'],
  ['a member without a port', 'etcd://10.0.0.5'],
  ['a port out of range', 'etcd://10.0.0.5:70000'],
  ['an empty member', 'etcd://10.0.0.5:2379,'],
  ['ten members', `etcd://${Array.from({ length: 10 }, (_, i) => `10.0.0.${i + 1}:2379`).join(',')}`],
  ['an option instead of endpoints', '--json'],
];

/** The bad values for a parser's spec. */
function badValues(s: ValueSpec): Bad[] {
  switch (s.kind) {
    case 'int':
      return intValues(s.min, s.max);
    case 'int-list':
      return intListValues(s.min, s.max, s.countMax);
    case 'fraction':
      return fractionValues(s.min, s.max);
    case 'bytes':
      return bytesValues(s);
    case 'choice':
      return choiceValues(s.choices);
    case 'workload':
      return workloadValues(s.choices);
    case 'path':
      return pathValues(s.role);
    case 'host-port':
      return hostPortValues(s);
    case 'cache':
      return CACHE;
    case 'iface':
      return IFACE;
    case 'export-name':
      return [
        ['past 4096 bytes', 'x'.repeat(4097)],
        ['an option instead of a name', '--json'],
      ];
    case 'nbd-device':
      return NBD_DEVICE;
    case 'etcd-endpoints':
      return ETCD_ENDPOINTS;
    case 'address':
      return [
        ['empty', ''],
        ['with a port', '10.0.0.5:7400'],
        ['the wildcard address', '0.0.0.0'],
        ['a space', 'a b'],
        ['an option instead of an address', '--json'],
      ];
    case 'host-id':
      return [
        ['empty', ''],
        ['a slash', 'a/b'],
        ['64 characters', 'h'.repeat(64)],
        ['an option instead of a name', '--json'],
      ];
  }
}

// ---- the table of cases

interface Case {
  id: string;
  command: string;
  target: string;
  what: string;
  value?: string;
  mention: string;
  spawn: boolean;
  /** argv after `remusdb`, given the busy port (a listener that makes a listening command fail at once). */
  argv: (busyPort: number) => string[];
}

/** The base invocation of leaf with arguments replaced (null: left out), an option dropped, options added. */
interface Spoil {
  args?: Record<string, string | null>;
  drop?: string;
  extra?: string[];
}

function argvOf(leaf: Leaf, o: Spoil): Case['argv'] {
  const base = BASE[leaf.name] ?? {};
  return (p) => {
    const positional: string[] = [];
    for (const a of leaf.cmd.registeredArguments) {
      const v = o.args && a.name() in o.args ? o.args[a.name()] : base.args?.[a.name()];
      if (v === null || v === undefined) break;
      positional.push(v);
    }
    const opts = base.opts?.(p) ?? [];
    const at = o.drop ? opts.indexOf(o.drop) : -1;
    if (at >= 0) opts.splice(at, 2);
    return [...leaf.name.split(' '), ...positional, ...opts, ...(o.extra ?? [])];
  };
}

const SPAWN_ALL = new Set(['path', 'workload', 'nbd-device']);

/** The mistakes a command's arguments and options take. */
function casesOf(leaf: Leaf): Array<Omit<Case, 'id'>> {
  const out: Array<Omit<Case, 'id'>> = [];
  const kindsSpawned = new Set<string>();
  type Add = (target: string, s: ValueSpec | null, what: string, value: string | undefined, argv: Case['argv']) => void;
  const add: Add = (target, s, what, value, argv) => {
    const kind = s?.kind ?? 'usage';
    out.push({
      command: leaf.name,
      target,
      what,
      value,
      argv,
      mention: s?.name ?? target,
      spawn: SPAWN_ALL.has(kind) || !kindsSpawned.has(kind),
    });
    kindsSpawned.add(kind);
  };
  add('--no-such-flag', null, 'an unknown option', undefined, argvOf(leaf, { extra: ['--no-such-flag'] }));
  const required = leaf.cmd.registeredArguments.find((a) => a.required);
  if (required) add(required.name(), null, 'left out', undefined, argvOf(leaf, { args: { [required.name()]: null } }));
  for (const a of leaf.cmd.registeredArguments) {
    const s = valueSpec(a.parseArg);
    const bad = s ? badValues(s).filter(([, v]) => !v.startsWith('-')) : []; // "-x" here is an option to commander
    for (const [what, v] of bad) add(a.name(), s!, what, v, argvOf(leaf, { args: { [a.name()]: v } }));
  }
  for (const o of leaf.cmd.options) {
    const flag = o.long!;
    if (o.mandatory) add(flag, null, 'left out (it is required)', undefined, argvOf(leaf, { drop: flag }));
    if (!o.required && !o.optional) {
      add(flag, null, 'given a value', 'yes', argvOf(leaf, { extra: [`${flag}=yes`] }));
      continue;
    }
    const s = valueSpec(o.parseArg);
    if (!s) continue; // 31.1 fails on it
    add(flag, s, 'its value left out', undefined, argvOf(leaf, { extra: [flag] }));
    for (const [what, v] of badValues(s)) add(flag, s, what, v, argvOf(leaf, { extra: [flag, v] }));
  }
  return out;
}

const CASES: Case[] = LEAVES.flatMap((leaf, i) => casesOf(leaf).map((c, j) => ({ ...c, id: `${i + 1}.${j + 1}` })));
const casesFor = (command: string): Case[] => CASES.filter((c) => c.command === command);
const ran = { inProcess: new Set<string>(), spawned: new Set<string>() };
const plural = (n: number, what: string): string => `${n} ${what}${n === 1 ? '' : 's'}`;

// ---- running a case, and what it must not do

interface Outcome {
  exitCode: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  actionRan: boolean;
}

/** Parses argv with the real program, every action replaced: a value that gets through is reported. */
async function parseInProcess(argv: string[]): Promise<Outcome> {
  const program = buildProgram();
  let stderr = '';
  let actionRan = false;
  for (const c of allCommands(program)) {
    c.configureOutput({
      writeOut: (s) => {
        stderr += s;
      },
      writeErr: (s) => {
        stderr += s;
      },
    });
    if (!c.commands.length)
      c.action(() => {
        actionRan = true;
      });
  }
  const out = (exitCode: number): Outcome => ({ exitCode, signal: null, stdout: '', stderr, actionRan });
  try {
    await program.parseAsync(['node', 'remusdb', ...argv]);
  } catch (e) {
    const o = errorOutcome(e);
    stderr += o ? (o.line ? `${o.line}\n` : '') : `${(e as Error).stack}\n`;
    return out(o?.exitCode ?? 1);
  }
  return out(0);
}

/**
 * Runs remusdb in dir (its own run, working and temporary directories). Should a bad value get
 * through, the command must not reach the host: PATH is an empty directory (no ip, iptables,
 * pg_ctl, nbd-client or modprobe) and bench net's patched PostgreSQL is an empty directory.
 */
function runSpawned(argv: string[], dir: string): Promise<Outcome> {
  const env = {
    ...process.env,
    REMUSDB_RUN_DIR: path.join(dir, 'run'),
    TMPDIR: path.join(dir, 'tmp'),
    PATH: path.join(dir, 'no-bin'),
    REMUSDB_PG_PATCHED_BIN: F.pgEmpty,
  };
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [path.join(ROOT, 'bin', 'remusdb'), ...argv], {
      cwd: path.join(dir, 'cwd'),
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    let stdout = '',
      stderr = '';
    child.stdout.on('data', (d) => {
      stdout += String(d);
    });
    child.stderr.on('data', (d) => {
      stderr += String(d);
    });
    const kill = (): void => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        /* gone */
      }
    };
    const timer = setTimeout(kill, SPAWN_TIMEOUT_MS);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ exitCode: code, signal, stdout, stderr, actionRan: false });
    });
  });
}

/** Every entry under the roots: type, size, mode and modification time. */
function snapshot(roots: string[]): Map<string, string> {
  const m = new Map<string, string>();
  const walk = (p: string): void => {
    const st = fs.lstatSync(p);
    m.set(p, `${st.isDirectory() ? 'd' : st.isSymbolicLink() ? 'l' : 'f'} ${st.size} ${st.mode} ${st.mtimeMs}`);
    if (st.isDirectory() && (st.mode & 0o500) === 0o500) for (const e of fs.readdirSync(p)) walk(path.join(p, e));
  };
  for (const r of roots) walk(r);
  return m;
}

function changes(before: Map<string, string>, after: Map<string, string>): string[] {
  const keys = new Set([...before.keys(), ...after.keys()]);
  return [...keys]
    .filter((k) => before.get(k) !== after.get(k))
    .map((k) => `${k}: ${before.has(k) ? (after.has(k) ? 'changed' : 'removed') : 'created'}`);
}

const quote = (s: string, n = 300): string => JSON.stringify(s.slice(0, n));

/** What the outcome of case c does wrong (nothing: []). */
function problems(c: Case, r: Outcome, changed: string[]): string[] {
  const p: string[] = [];
  if (r.actionRan) p.push('the value was accepted: the command ran');
  if (r.signal) p.push(`ended by ${r.signal} (still running after ${SPAWN_TIMEOUT_MS} ms?)`);
  else if (r.exitCode === 0) p.push('exit status 0');
  if (r.stdout) p.push(`printed on stdout: ${quote(r.stdout, 200)}`);
  const lines = r.stderr.split('\n').filter((l) => l.trim());
  const errors = lines.filter((l) => /^(remusdb:|error:)/.test(l));
  const line = errors[0] ?? '';
  if (errors.length !== 1 || lines[0] !== line) p.push(`not one error line, first: ${quote(r.stderr)}`);
  const ours = line.startsWith('remusdb:');
  if (ours && lines.length > 1) p.push(`more than the error line: ${quote(lines.slice(1).join('\n'))}`);
  if (/^\s+at |node:internal|^\w*Error\b/m.test(r.stderr)) p.push(`a stack trace: ${quote(r.stderr)}`);
  if (/undefined|NaN|\[object /.test(line)) p.push(`"undefined", "NaN" or an object in ${quote(line)}`);
  if (line && !line.includes(c.mention)) p.push(`the error does not name ${c.mention}: ${quote(line)}`);
  if (ours && !/expected/.test(line)) p.push(`the error does not say what is expected: ${quote(line)}`);
  if (changed.length) p.push(`changed on disk: ${changed.slice(0, 5).join(', ')}`);
  return p;
}

function label(c: Case): string {
  return `${c.id} ${c.command} ${c.target} ${c.what}${c.value === undefined ? '' : ` ${quote(c.value, 40)}`}`;
}

function assertNone(failures: string[], cases: number): void {
  assert.ok(failures.length === 0, `${failures.length} of ${cases} cases:\n${failures.sort().join('\n')}`);
}

async function pool<T>(items: T[], width: number, fn: (t: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) await fn(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(width, items.length) }, worker));
}

// ---- the tests

describe('31 operator mistakes', () => {
  const inProcessRunDir = path.join(runs, 'in-process');
  const savedRunDir = process.env.REMUSDB_RUN_DIR;
  let busy: net.Server;
  let busyPort = 0;
  before(async () => {
    makeFixtures();
    fs.mkdirSync(inProcessRunDir);
    process.env.REMUSDB_RUN_DIR = inProcessRunDir;
    busy = net.createServer();
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
    busyPort = (busy.address() as net.AddressInfo).port;
  });
  after(() => {
    busy?.close();
    if (savedRunDir === undefined) delete process.env.REMUSDB_RUN_DIR;
    else process.env.REMUSDB_RUN_DIR = savedRunDir;
    fs.chmodSync(path.dirname(F.inReadOnlyDir), 0o755);
    for (const d of [scratch, runs]) fs.rmSync(d, { recursive: true, force: true });
  });

  describe('31.1 the table', () => {
    it(`31.1.1 ${CASES.length} cases over ${LEAVES.length} commands: every value option has a typed parser`, () => {
      const names = LEAVES.map((l) => l.name).sort();
      assert.deepEqual(names, Object.keys(BASE).sort(), 'each command has a BASE invocation');
      const valueOptions = LEAVES.flatMap((l) =>
        l.cmd.options
          .filter((o) => o.required || o.optional)
          .map((o) => ({ at: `${l.name} ${o.long}`, long: o.long, spec: valueSpec(o.parseArg) })),
      );
      const untyped = valueOptions.filter((o) => !o.spec).map((o) => o.at);
      assert.deepEqual(untyped, [], 'options without a parser from dom0/cli/options.ts or path-options.ts');
      const misnamed = valueOptions
        .filter((o) => o.spec && o.spec.name !== o.long)
        .map((o) => `${o.at}: ${o.spec!.name}`);
      assert.deepEqual(misnamed, [], 'parsers whose messages name another flag');
      assert.ok(valueOptions.length >= 60, `${valueOptions.length} options take a value`);
      assert.equal(
        CASES.length,
        LEAVES.reduce((n, l) => n + casesOf(l).length, 0),
      );
      assert.equal(new Set(CASES.map((c) => c.id)).size, CASES.length, 'case ids are unique');
      for (const l of LEAVES)
        assert.ok(
          casesFor(l.name).some((c) => c.spawn),
          `${l.name} has a spawned case`,
        );
      assert.ok(CASES.length > 500, `${CASES.length} cases`);
    });
  });

  describe('31.2 parsed in-process: refused before the command runs', () => {
    LEAVES.forEach((leaf, i) => {
      const cases = casesFor(leaf.name);
      it(`31.2.${i + 1} ${leaf.name}: ${plural(cases.length, 'case')}`, async () => {
        const failures: string[] = [];
        for (const c of cases) {
          const before = snapshot([scratch, inProcessRunDir]);
          const r = await parseInProcess(c.argv(busyPort));
          const p = problems(c, r, changes(before, snapshot([scratch, inProcessRunDir])));
          if (p.length) failures.push(`${label(c)}: ${p.join('; ')}`);
          ran.inProcess.add(c.id);
        }
        assertNone(failures, cases.length);
      });
    });
  });

  describe(`31.3 spawned (${PARALLEL} at a time): the real process exits at once and leaves nothing`, () => {
    LEAVES.forEach((leaf, i) => {
      const cases = casesFor(leaf.name).filter((c) => c.spawn);
      it(`31.3.${i + 1} remusdb ${leaf.name}: ${plural(cases.length, 'case')}`, async () => {
        const failures: string[] = [];
        await pool(cases, PARALLEL, async (c) => {
          const dir = path.join(runs, c.id);
          for (const d of ['run', 'cwd', 'tmp', 'no-bin']) fs.mkdirSync(path.join(dir, d), { recursive: true });
          const before = snapshot([scratch, dir]);
          const r = await runSpawned(c.argv(busyPort), dir);
          const p = problems(c, r, changes(before, snapshot([scratch, dir])));
          if (p.length) failures.push(`${label(c)}: ${p.join('; ')}`);
          ran.spawned.add(c.id);
        });
        assertNone(failures, cases.length);
      });
    });
  });

  describe('31.4 sizes', () => {
    it('31.4.1 print right past 2 GiB; dom0/cli does no 32-bit shift or bit-or on a number', () => {
      const sizes = [
        ['2G', '2 GiB'],
        ['4G', '4 GiB'],
        ['64GiB', '64 GiB'],
        ['3145732KiB', '3145732 KiB'],
        ['512MiB', '512 MiB'],
      ];
      for (const [v, text] of sizes) assert.equal(exactSize(memoryOption('--memory')(v)), text, v);
      assert.equal(roundedSize(5 * 2 ** 30), '5.00 GiB');
      assert.equal(roundedSize(2 ** 32 + 2 ** 31), '6.00 GiB');
      const dir = path.join(ROOT, 'dom0', 'cli');
      const code = (f: string): string[][] =>
        fs
          .readFileSync(path.join(dir, f), 'utf8')
          .split('\n')
          .map((l, n) => [`${f}:${n + 1}`, l.replace(/\/\/.*$/, '')]);
      const offenders = fs
        .readdirSync(dir)
        .filter((f) => f.endsWith('.ts'))
        .flatMap(code)
        .filter(([, l]) => /(>>>?|<<)\s*\d|\|\s*0\b|~~/.test(l))
        .map(([at, l]) => `${at} ${l.trim()}`);
      assert.deepEqual(offenders, []);
    });
  });

  describe('31.5 good values', () => {
    it('31.5.1 pass every path check and kind, and the check creates nothing', async () => {
      const good: string[][] = [
        [
          'protect',
          'sim:t31',
          '127.0.0.1',
          '--psk-file',
          F.file,
          '--journal',
          path.join(F.dir, 'j'),
          '--journal',
          F.file,
          '--journal',
          '/dev/null',
          '--workload',
          `trace:${F.trace}`,
          '--disk-image',
          F.image,
          '--disk-device',
          '/dev/nbd0',
          '--client',
          'localhost:9',
          '--disk-listen',
          '[::1]:10809',
          '--memory',
          '4G',
          '--disk',
          '0',
          '--cache',
          '64MiB',
          '--vif',
          'vif1.0',
          '--pg-port',
          '5433',
        ],
        [
          'backup',
          '--disk-dir',
          F.dir,
          '--disk-dir',
          path.join(F.dir, 'new'),
          '--reuse-disk',
          F.image,
          '--listen',
          '[::]:7400',
        ],
        ['keygen', '--out', path.join(F.dir, 'new.psk')],
        [
          'bench',
          'net',
          '--pg-bin',
          F.pgEmpty,
          '--svg',
          path.join(F.dir, 'x.svg'),
          '--intervals',
          '25, 50',
          '--dom0-cpus',
          '0',
        ],
        ['bench', 'trace', F.trace],
        ['disk', 'serve', F.image, '--export', ''],
        ['record', 'sim:t31', '--out', path.join(F.dir, 'r.rdt.gz'), '--max-bytes', '1TiB'],
      ];
      for (const argv of good) {
        const before = snapshot([scratch]);
        const r = await parseInProcess(argv);
        assert.ok(r.actionRan, `${argv.join(' ')}: ${r.stderr}`);
        assert.deepEqual(changes(before, snapshot([scratch])), [], argv.join(' '));
      }
    });
  });

  describe('31.6 the count', () => {
    it('31.6.1 every case ran: in-process all of them, spawned the chosen ones', () => {
      assert.equal(ran.inProcess.size, CASES.length);
      assert.equal(ran.spawned.size, CASES.filter((c) => c.spawn).length);
    });
  });
});

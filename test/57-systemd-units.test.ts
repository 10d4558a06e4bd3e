// 57 systemd units: scripts/systemd/ holds remusdb-backup.service, remusdb-protect@.service and
// remusdb-agent.service (docs/operations.md, "systemd"). Checked here without booting them: `systemd-analyze verify`
// accepts all three (ExecStart pointed at this checkout), with not even a warning; each ExecStart,
// with its example environment file expanded as systemd expands it, is a command line the real
// program parses (every option exists: `remusdb <cmd> --help` lists them); and the restart
// policy says what the docs say — restart on failure, never after a fence (EXIT_FENCED) or a
// bad option, root kept (no User=), no device or JIT restriction that would break Xen or Node.
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import { buildProgram, errorOutcome } from '../dom0/cli/main';
import { EXIT_FENCED } from '../dom0/cli/until-stopped';
import { ROOT, runCli, tmpDir } from './support/helpers';

const UNITS = path.join(ROOT, 'scripts', 'systemd');
const INSTALLED_BIN = '/usr/local/bin/remusdb';
const UNIT_FILES = [
  { file: 'remusdb-backup.service', env: 'backup.env.example', instance: null, command: 'backup' },
  { file: 'remusdb-protect@.service', env: 'protect.env.example', instance: 'db1', command: 'protect' },
  { file: 'remusdb-agent.service', env: 'agent.env.example', instance: null, command: 'agent' },
] as const;

type Unit = Map<string, string[]>; // "Section.Key" → values in order

function parseUnit(text: string): Unit {
  const unit: Unit = new Map();
  let section = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const s = /^\[(\w+)\]$/.exec(line);
    if (s) {
      section = s[1];
      continue;
    }
    const kv = /^([A-Za-z]+)=(.*)$/.exec(line);
    assert.ok(kv && section, `a key in a section: ${line}`);
    const key = `${section}.${kv[1]}`;
    unit.set(key, [...(unit.get(key) ?? []), kv[2]]);
  }
  return unit;
}

function one(u: Unit, key: string): string {
  const v = u.get(key);
  assert.ok(v && v.length === 1, `${key} is set once`);
  return v[0];
}

/** KEY=VALUE lines of an environment file (no quoting, as the examples are written). */
function parseEnv(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^([A-Z_]+)=(.*)$/.exec(line.trim());
    if (m) env[m[1]] = m[2];
  }
  return env;
}

/** systemd's expansion of ExecStart: ${VAR} is one word, $VAR splits on whitespace (empty: no word). */
function expandExec(cmdline: string, env: Record<string, string>): string[] {
  return cmdline.split(/\s+/).flatMap((w) => {
    const whole = /^\$\{([A-Z_]+)\}$/.exec(w);
    if (whole) return [env[whole[1]] ?? ''];
    const split = /^\$([A-Z_]+)$/.exec(w);
    if (split) return (env[split[1]] ?? '').split(/\s+/).filter(Boolean);
    assert.doesNotMatch(w, /\$/, `a variable inside a word is not expanded by this test: ${w}`);
    return [w];
  });
}

/** Environment= defaults, then the example file, as systemd layers them. */
function environmentOf(u: Unit, envFile: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const v of u.get('Service.Environment') ?? []) {
    for (const kv of v.split(/\s+/)) {
      const [k, ...rest] = kv.split('=');
      env[k] = rest.join('=');
    }
  }
  return { ...env, ...parseEnv(fs.readFileSync(path.join(UNITS, envFile), 'utf8')) };
}

/** Parses argv with the real program, actions replaced: the exit status and what it printed. */
async function parses(argv: string[]): Promise<{ exitCode: number; stderr: string }> {
  const program = buildProgram();
  let stderr = '';
  const all = (c: Command): Command[] => [c, ...c.commands.flatMap(all)];
  for (const c of all(program)) {
    c.configureOutput({
      writeOut: (s) => {
        stderr += s;
      },
      writeErr: (s) => {
        stderr += s;
      },
    });
    if (!c.commands.length) c.action(() => {});
  }
  try {
    await program.parseAsync(['node', 'remusdb', ...argv]);
  } catch (e) {
    const o = errorOutcome(e);
    return { exitCode: o?.exitCode ?? 1, stderr: stderr + (o?.line ?? String(e)) };
  }
  return { exitCode: 0, stderr };
}

describe('57 systemd units', function () {
  this.timeout(60_000);
  const scratch = tmpDir('t57');
  const psk = path.join(scratch, 'key.psk');
  before(() => assert.equal(runCli(['keygen', '--out', psk]).status, 0));

  it('57.1 systemd-analyze verify accepts every unit without a warning (and flags a broken copy)', function () {
    if (spawnSync('systemd-analyze', ['--version']).status !== 0) this.skip();
    const dir = path.join(scratch, 'units');
    fs.mkdirSync(dir);
    for (const u of UNIT_FILES) {
      const text = fs.readFileSync(path.join(UNITS, u.file), 'utf8');
      assert.ok(text.includes(INSTALLED_BIN), `${u.file} runs ${INSTALLED_BIN}`);
      fs.writeFileSync(path.join(dir, u.file), text.replaceAll(INSTALLED_BIN, path.join(ROOT, 'bin', 'remusdb')));
    }
    const verify = (names: string[]): { status: number | null; out: string } => {
      const r = spawnSync('systemd-analyze', ['verify', '--man=no', ...names.map((n) => path.join(dir, n))], {
        encoding: 'utf8',
        cwd: dir,
      });
      return { status: r.status, out: `${r.stdout}${r.stderr}`.trim() };
    };
    const names = UNIT_FILES.map((u) => (u.instance ? u.file.replace('@.', `@${u.instance}.`) : u.file));
    const ok = verify(names);
    assert.equal(ok.status, 0, ok.out);
    assert.equal(ok.out, '', 'no warning');
    fs.appendFileSync(path.join(dir, UNIT_FILES[0].file), '[Service]\nRestart=sometimes\n');
    assert.match(
      verify([UNIT_FILES[0].file]).out,
      /restart specifier.*sometimes/,
      'a bad value is reported: the check can fail',
    );
  });

  for (const u of UNIT_FILES) {
    it(`57.2 ${u.file}: ExecStart with ${u.env} expanded is a command line remusdb accepts`, async () => {
      const unit = parseUnit(fs.readFileSync(path.join(UNITS, u.file), 'utf8'));
      const argv = expandExec(one(unit, 'Service.ExecStart'), { ...environmentOf(unit, u.env), PSK_FILE: psk });
      assert.equal(argv[0], INSTALLED_BIN);
      assert.equal(argv[1], u.command);
      const help = runCli([u.command, '--help']);
      assert.equal(help.status, 0, help.stderr);
      for (const flag of argv.filter((a) => a.startsWith('--'))) {
        const listed = help.stdout.includes(`${flag} `) || help.stdout.includes(`${flag}\n`);
        assert.ok(listed, `${u.command} --help lists ${flag}`);
      }
      assert.ok(argv.includes('--metrics'), 'the example serves metrics');
      const r = await parses(argv.slice(1));
      assert.equal(r.exitCode, 0, `${argv.join(' ')}: ${r.stderr}`);
      const bad = await parses([...argv.slice(1), '--metrics', '0.0.0.0']);
      assert.equal(bad.exitCode, 2, 'a bad value in the file is refused at parse (exit 2: not restarted)');
    });
  }

  it('57.3 restart on failure, never after a fence or bad usage; root, devices and JIT kept', () => {
    for (const u of UNIT_FILES) {
      const unit = parseUnit(fs.readFileSync(path.join(UNITS, u.file), 'utf8'));
      assert.equal(one(unit, 'Service.Restart'), 'on-failure', u.file);
      assert.match(one(unit, 'Service.RestartSec'), /^\d+s$/, u.file);
      const noRestart = one(unit, 'Service.RestartPreventExitStatus').split(/\s+/).map(Number);
      assert.ok(noRestart.includes(2), `${u.file}: a bad option (exit 2) is not retried`);
      if (u.command === 'protect') {
        assert.ok(noRestart.includes(EXIT_FENCED), `a fenced protect (exit ${EXIT_FENCED}) is not restarted`);
        assert.equal(one(unit, 'Service.EnvironmentFile'), '/etc/remusdb/protect-%i.env');
      }
      assert.equal(one(unit, 'Service.KillMode'), 'mixed', `${u.file}: SIGTERM reaches the stop path first`);
      for (const k of [
        'User',
        'DynamicUser',
        'PrivateDevices',
        'DeviceAllow',
        'MemoryDenyWriteExecute',
        'ProtectClock',
        'CapabilityBoundingSet',
        'PrivateNetwork',
      ]) {
        assert.ok(!unit.has(`Service.${k}`), `${u.file} sets no ${k} (root, /dev/xen, /dev/nbd*, netlink, Node's JIT)`);
      }
      assert.equal(one(unit, 'Service.NoNewPrivileges'), 'yes');
      assert.match(one(unit, 'Service.RestrictAddressFamilies'), /AF_NETLINK/, 'netlink: plug, IFB, NFQUEUE');
      assert.equal(one(unit, 'Install.WantedBy'), 'multi-user.target');
    }
  });
});

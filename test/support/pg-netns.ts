// pg-netns: helpers for the commit protection tests that run real TCP in network
// namespaces (test/63, test/64): a process inside a namespace with line-oriented output, a
// fake PostgreSQL server (guest side: answers each query line with CommandComplete +
// ReadyForQuery) and a client that reports every ReadyForQuery it receives.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { loadAddon } from '../../dom0/native';

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export async function waitFor(what: string, cond: () => boolean, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

export class NsProcess {
  readonly child: ChildProcess;
  readonly lines: string[] = [];
  constructor(ns: string, script: string, args: string[]) {
    // The child ends with its stdin (this process gone, even by a crash), and its stderr is
    // a pipe we forward: an orphan must never hold the test runner's output open.
    const prelude = "process.stdin.on('end', () => process.exit(0)); process.stdin.resume();\n";
    this.child = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', prelude + script, ...args], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.child.stderr!.on('data', (d: Buffer) => process.stderr.write(d));
    let rest = '';
    this.child.stdout!.on('data', (d: Buffer) => {
      const parts = (rest + d.toString()).split('\n');
      rest = parts.pop()!;
      this.lines.push(...parts);
    });
  }
  send(cmd: Record<string, unknown>): void {
    this.child.stdin!.write(`${JSON.stringify(cmd)}\n`);
  }
  has(prefix: string): boolean {
    return this.lines.some((l) => l.startsWith(prefix));
  }
  count(prefix: string): number {
    return this.lines.filter((l) => l.startsWith(prefix)).length;
  }
  kill(): void {
    this.child.kill('SIGKILL');
  }
}

/** Why the namespace tests cannot run here (null: they can). */
export function whyNoNetns(): string | null {
  if (process.getuid?.() !== 0) return 'needs root (network namespaces, iptables, NFQUEUE)';
  try {
    if (!loadAddon().parts.nfqueue) return 'addon built without libnetfilter-queue-dev';
  } catch (e) {
    return (e as Error).message;
  }
  for (const tool of ['ip', 'iptables', 'ip6tables']) {
    if (spawnSync(tool, ['--version'], { stdio: 'ignore' }).error) return `${tool} is not installed`;
  }
  return null;
}

// Guest: ports from argv; "Q\n" lines → CommandComplete(tag) + ReadyForQuery(status), where
// BEGIN → T, COMMIT → I, "T:<tag>" → T, anything else → I (autocommit).
export const FAKE_PG_SERVER =
  `
const net = require('net');
const [addr, ...ports] = process.argv.slice(1);
const m = (t, b) => { const body = Buffer.from(b, 'latin1'); const h = Buffer.alloc(5); h[0] = t.charCodeAt(0); ` +
  `h.writeUInt32BE(4 + body.length, 1); return Buffer.concat([h, body]); };
const startup = Buffer.concat([m('R', '\\0\\0\\0\\0'), m('S', 'server_version\\x0015\\0'), m('K', '\\0'.repeat(8)), ` +
  `m('Z', 'I')]);
let n = 0;
for (const port of ports) net.createServer((s) => {
  const id = n++; s.setNoDelay(true); s.write(startup); let buf = '';
  s.on('data', (d) => { buf += d; let i;
    while ((i = buf.indexOf('\\n')) >= 0) { const q = buf.slice(0, i); buf = buf.slice(i + 1);
      const st = q === 'BEGIN' || q.startsWith('T:') ? 'T' : 'I'; const tag = q.replace(/^T:/, '');
      s.write(Buffer.concat([m('C', tag + '\\0'), m('Z', st)])); } });
  s.on('error', (e) => process.stdout.write('serror ' + id + ' ' + e.code + '\\n'));
  s.on('close', () => process.stdout.write('sclose ' + id + '\\n'));
}).listen(Number(port), addr, () => process.stdout.write('ready ' + port + '\\n'));
`;

// Client: {"op":"connect","port":P} opens connection #k; {"op":"q","conn":k,"text":"..."}
// sends a query line. Prints "z <k> <status>", "error <k> <code>", "close <k>".
export const FAKE_PG_CLIENT =
  `
const net = require('net'), rl = require('readline');
const [addr] = process.argv.slice(1); const conns = [];
rl.createInterface({ input: process.stdin }).on('line', (l) => { const c = JSON.parse(l);
  if (c.op === 'connect') { const id = conns.length; const s = net.connect(c.port, addr); conns.push(s); ` +
  `s.setNoDelay(true);
    let buf = Buffer.alloc(0);
    s.on('data', (d) => { buf = Buffer.concat([buf, d]);
      while (buf.length >= 5) { const len = buf.readUInt32BE(1); if (buf.length < 1 + len) break;
        if (buf[0] === 0x5a) process.stdout.write('z ' + id + ' ' + String.fromCharCode(buf[5]) + '\\n');
        buf = buf.subarray(1 + len); } });
    s.on('error', (e) => process.stdout.write('error ' + id + ' ' + e.code + '\\n'));
    s.on('close', () => process.stdout.write('close ' + id + '\\n')); }
  if (c.op === 'q') conns[c.conn].write(c.text + '\\n');
});
`;

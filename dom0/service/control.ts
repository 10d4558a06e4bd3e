// control: the local control socket of a running `protect` or `backup` process — one
// JSON request per line, one JSON answer per line. `remusdb status` and `remusdb failover`
// are its clients. Sockets live in the runtime directory, one per process and domain.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { ErrorCode, isRemusError, RemusError } from '../errors';
import { CONTROL_ANSWER_TIMEOUT_MS } from '../limits';

export type Handler = (req: Record<string, unknown>) => Record<string, unknown> | Promise<Record<string, unknown>>;

export function runtimeDir(): string {
  if (process.env.REMUSDB_RUN_DIR) return process.env.REMUSDB_RUN_DIR;
  return process.getuid?.() === 0 ? '/run/remusdb' : path.join(os.tmpdir(), `remusdb-${process.getuid?.() ?? 'user'}`);
}

export function socketPath(role: 'primary' | 'backup' | 'agent', name: string): string {
  return path.join(runtimeDir(), `${role}-${name}.sock`);
}

/** The lock that makes one `protect` per domain per host (service/host-lock.ts). */
export function protectLockPath(kind: string, name: string): string {
  return path.join(runtimeDir(), `protect-${kind}-${name}.lock`);
}

export class ControlServer {
  private readonly server: net.Server;
  constructor(
    readonly file: string,
    handler: Handler,
  ) {
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    if (fs.existsSync(file)) {
      // A socket left by a crashed process: replace it (a live one answers, see inUse()).
      fs.rmSync(file, { force: true });
    }
    // allowHalfOpen: a client may send its request and shut its side (socat, nc -N); the answers
    // still go out, and the socket ends after the last one.
    this.server = net.createServer({ allowHalfOpen: true }, (s) => {
      let buf = '';
      let pending = 0;
      let clientEnded = false;
      const endIfDone = (): void => {
        if (clientEnded && pending === 0) s.end();
      };
      s.on('data', async (d) => {
        buf += d.toString('utf8');
        if (buf.length > CONTROL_REQUEST_BYTES_MAX) {
          s.destroy();
          return;
        }
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          pending++;
          const answer = await answerOf(handler, line);
          pending--;
          if (!s.destroyed && s.writable) s.write(`${JSON.stringify(answer)}\n`);
        }
        endIfDone();
      });
      s.on('end', () => {
        clientEnded = true;
        endIfDone();
      });
      s.on('error', () => {});
    });
    this.server.listen(file);
    this.server.unref();
  }
  close(): void {
    this.server.close();
    fs.rmSync(this.file, { force: true });
  }
}

/** The longest request line a control socket reads; a longer one closes the connection. */
const CONTROL_REQUEST_BYTES_MAX = 65536;

async function answerOf(handler: Handler, line: string): Promise<Record<string, unknown>> {
  try {
    return await handler(JSON.parse(line));
  } catch (e) {
    return { error: { code: isRemusError(e) ? e.code : ErrorCode.CONTROL, message: (e as Error).message } };
  }
}

export function controlRequest(
  file: string,
  req: Record<string, unknown>,
  timeoutMs = CONTROL_ANSWER_TIMEOUT_MS,
): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const s = net.connect(file);
    let buf = '';
    const t = setTimeout(() => {
      s.destroy();
      reject(new RemusError(ErrorCode.CONTROL, `${file} did not answer within ${timeoutMs} ms`));
    }, timeoutMs);
    s.on('connect', () => s.write(`${JSON.stringify(req)}\n`));
    s.on('data', (d) => {
      buf += d.toString('utf8');
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(t);
      s.end();
      try {
        resolve(JSON.parse(buf.slice(0, nl)));
      } catch {
        reject(new RemusError(ErrorCode.CONTROL, `${file} answered garbage`));
      }
    });
    s.on('error', (e) => {
      clearTimeout(t);
      reject(
        new RemusError(
          ErrorCode.CONTROL,
          `cannot reach ${file}: ${e.message} (is a remusdb process running for it?)`,
          {},
          { cause: e },
        ),
      );
    });
  });
}

export function listSockets(): string[] {
  const dir = runtimeDir();
  try {
    return fs
      .readdirSync(dir)
      .filter((f) => f.endsWith('.sock'))
      .map((f) => path.join(dir, f));
  } catch {
    return [];
  }
}

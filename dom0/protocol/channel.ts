// channel: the real replication Link — TCP with TLS 1.2 DHE-PSK with AES-256-GCM (forward
// secrecy, and both ends prove they hold the same 32-byte key; ECDHE-PSK with ChaCha20-Poly1305
// for a peer that offers only that), or plain TCP with --insecure for labs. Node's TLS 1.3
// cannot run PSK-only (no certificate), hence 1.2. Records are framed by framer.ts; a framing
// error is reported to the engine as ERR_PROTOCOL through onClose before the socket is closed.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { randomBytes } from 'node:crypto';
import { ErrorCode, RemusError } from '../errors';
import type { Link } from '../ports';
import { encodeRecord, RecordDecoder } from './framer';
import { Rec, type RawRecord } from './records';
import { LINK_TURN_MS_MAX } from '../limits';

export type Security = { psk: Buffer } | { insecure: true };

const PSK_IDENTITY = 'remusdb';
/**
 * Preference order, the server's (honorCipherOrder). AES-GCM first: with AES-NI it moves a
 * 1 GiB stream through Node's TLS at 1.8x less CPU than ChaCha20-Poly1305 (both ends, 2.7
 * against 4.8 s on the reference machine), and a pre-copy is bound by CPU. TLS 1.2 has no
 * ECDHE-PSK suite with GCM in OpenSSL, hence finite-field DHE (RFC 7919 groups, `dhparam: 'auto'`):
 * a handshake costs a few ms more, once per session.
 */
const CIPHERS =
  'DHE-PSK-AES256-GCM-SHA384:ECDHE-PSK-CHACHA20-POLY1305:ECDHE-PSK-AES256-CBC-SHA384:PSK-AES256-GCM-SHA384';
const KNOWN = new Set<number>(Object.values(Rec));
const WRITE_BACKLOG_MAX = 256 * 1024 * 1024;

/** Reads a key written by `remusdb keygen` (64 hex digits). */
export function readPskFile(file: string): Buffer {
  let text: string;
  try {
    if (!fs.statSync(file).isFile()) throw new Error('not a regular file'); // a FIFO would block the read for ever
    text = fs.readFileSync(file, 'utf8').trim();
  } catch (e) {
    throw new RemusError(
      ErrorCode.IO,
      `cannot read the pre-shared key ${file}: ${(e as Error).message}`,
      {},
      { cause: e },
    );
  }
  if (!/^[0-9a-fA-F]{64}$/.test(text)) {
    throw new RemusError(
      ErrorCode.AUTH,
      `${file} does not hold a 32-byte key as 64 hex digits (make one with \`remusdb keygen --out ${file}\`)`,
    );
  }
  return Buffer.from(text, 'hex');
}

export function newPsk(): string {
  return randomBytes(32).toString('hex');
}

/**
 * One connection. Records are handed to the engine in order, a bounded time per turn of the
 * event loop (LINK_TURN_MS_MAX): TLS decrypts everything the kernel holds in one go (MiBs,
 * hundreds of page batches during a copy), and applying it all at once would stall timers
 * (heartbeats, checkpoints) for longer than an interval. Past the budget the socket is
 * paused and the rest waits for the next turn; delivery always runs in a turn of its own
 * (setImmediate), so that at most one budget passes between two runs of the timers. The end
 * of the connection (close, error, a framing error) is reported after the records that
 * arrived before it.
 */
class SocketLink implements Link {
  private recordCb: (type: number, body: Buffer) => void = () => {};
  private closeCb: (e: Error | null) => void = () => {};
  private closed = false;
  private readonly decoder = new RecordDecoder(KNOWN);
  /** Records received, not yet handed to the engine; [queueHead, length) are pending. */
  private queue: RawRecord[] = [];
  private queueHead = 0;
  /** How the connection ended, once it has (reported when the queue is empty). */
  private ending: { error: Error | null } | null = null;
  /** A delivery turn is scheduled (setImmediate); the socket is paused while a queue waits. */
  private turnScheduled = false;
  readonly cipher?: string;

  constructor(
    private readonly socket: net.Socket,
    readonly remote: string,
  ) {
    if (socket instanceof tls.TLSSocket) this.cipher = socket.getCipher()?.name;
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 1000);
    socket.on('data', (chunk: Buffer) => {
      if (this.closed || this.ending) return;
      try {
        for (const r of this.decoder.push(chunk)) this.queue.push(r);
      } catch (e) {
        this.ending = { error: e as Error };
      }
      this.scheduleTurn();
    });
    socket.on('error', (e) =>
      this.endWith(new RemusError(ErrorCode.PEER_GONE, `connection to ${remote}: ${e.message}`, {}, { cause: e })),
    );
    socket.on('close', () => this.endWith(null));
  }

  private endWith(error: Error | null): void {
    this.ending ??= { error };
    this.scheduleTurn();
  }

  /** Delivery runs in its own turn (check phase), one budget per turn of the event loop. */
  private scheduleTurn(): void {
    if (this.turnScheduled) return;
    this.turnScheduled = true;
    setImmediate(() => {
      this.turnScheduled = false;
      if (!this.closed) this.deliver();
    });
  }

  /** Hands queued records to the engine until the turn's budget is spent; then the end, if any. */
  private deliver(): void {
    const started = performance.now();
    while (!this.closed && this.queueHead < this.queue.length) {
      if (performance.now() - started > LINK_TURN_MS_MAX) {
        this.socket.pause(); // resumed once the queue is empty
        return this.scheduleTurn();
      }
      const r = this.queue[this.queueHead++];
      this.recordCb(r.type, r.body);
    }
    this.queue = [];
    this.queueHead = 0;
    if (this.closed) return;
    if (this.ending) return this.finish(this.ending.error);
    if (!this.readingHeld) this.socket.resume();
  }

  /** The receiver's flow control (Link.holdReading). */
  holdReading(held: boolean): void {
    this.readingHeld = held;
    if (held) this.socket.pause();
    else if (!this.closed) this.scheduleTurn(); // resumes the socket once the queue is empty
  }
  private readingHeld = false;

  get backlogBytes(): number {
    return this.socket.writableLength;
  }
  queuedBytes = 0;
  get drainedBytes(): number {
    return this.queuedBytes - this.socket.writableLength;
  }

  send(type: number, body: Uint8Array): void {
    if (this.closed) return;
    if (this.socket.writableLength > WRITE_BACKLOG_MAX) {
      this.finish(
        new RemusError(
          ErrorCode.PEER_GONE,
          `${this.remote} is not reading (send backlog over ${WRITE_BACKLOG_MAX} bytes)`,
        ),
      );
      return;
    }
    const record = encodeRecord(type, body);
    this.queuedBytes += record.length;
    this.socket.write(record);
  }

  /** Our side ends the connection; onClose is not called for it. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }

  onRecord(cb: (type: number, body: Buffer) => void): void {
    this.recordCb = cb;
  }
  onClose(cb: (e: Error | null) => void): void {
    this.closeCb = cb;
  }

  /** The connection ended or broke under us: tell the engine once, then close. */
  private finish(e: Error | null): void {
    if (this.closed) return;
    const cb = this.closeCb;
    this.closeCb = () => {};
    cb(e); // the engine may still send ERROR (a protocol error) before we close
    this.close();
  }
}

export function parseHostPort(spec: string, defaultPort: number): { host: string; port: number } {
  const m = /^\[?([^\]]*?)\]?(?::(\d+))?$/.exec(spec.trim());
  const host = m?.[1] || '';
  const port = m?.[2] ? Number(m[2]) : defaultPort;
  if (!host || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new RemusError(ErrorCode.BAD_ARGUMENT, `${JSON.stringify(spec)} is not host[:port]`);
  }
  return { host, port };
}

export function connectLink(host: string, port: number, sec: Security, timeoutMs = 5000): Promise<Link> {
  return new Promise((resolve, reject) => {
    const remote = `${host}:${port}`;
    const fail = (e: Error): void => {
      const tlsFail = /alert|handshake|BAD_RECORD_MAC|decrypt/i.test(e.message);
      reject(
        new RemusError(
          tlsFail ? ErrorCode.AUTH : ErrorCode.PEER_GONE,
          tlsFail
            ? `TLS with ${remote} failed (different pre-shared keys?): ${e.message}`
            : `cannot reach backup ${remote}: ${e.message}`,
          {},
          { cause: e },
        ),
      );
    };
    const socket =
      'psk' in sec
        ? tls.connect({
            host,
            port,
            ciphers: CIPHERS,
            maxVersion: 'TLSv1.2',
            minVersion: 'TLSv1.2',
            pskCallback: () => ({ psk: sec.psk, identity: PSK_IDENTITY }),
            checkServerIdentity: () => undefined,
          })
        : net.connect({ host, port });
    const timer = setTimeout(() => {
      socket.destroy();
      fail(new Error(`no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('error', (e) => {
      clearTimeout(timer);
      fail(e);
    });
    socket.once('psk' in sec ? 'secureConnect' : 'connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      resolve(new SocketLink(socket, remote));
    });
  });
}

export interface Listener {
  close(): void;
  readonly port: number;
}

export function listenLinks(
  host: string,
  port: number,
  sec: Security,
  onLink: (l: Link) => void,
  onReject: (why: string) => void = () => {},
): Promise<Listener> {
  return new Promise((resolve, reject) => {
    const accept = (s: net.Socket): void => onLink(new SocketLink(s, `${s.remoteAddress}:${s.remotePort}`));
    const server =
      'psk' in sec
        ? tls.createServer(
            {
              ciphers: CIPHERS,
              honorCipherOrder: true,
              dhparam: 'auto',
              maxVersion: 'TLSv1.2',
              minVersion: 'TLSv1.2',
              pskCallback: (_s, identity) => (identity === PSK_IDENTITY ? sec.psk : null),
            },
            accept,
          )
        : net.createServer(accept);
    server.on('tlsClientError', (e: Error) =>
      onReject(`rejected a peer that failed TLS (wrong or no pre-shared key): ${e.message}`),
    );
    server.once('error', (e) =>
      reject(new RemusError(ErrorCode.IO, `cannot listen on ${host}:${port}: ${e.message}`, {}, { cause: e })),
    );
    server.listen(port, host, () => {
      const addr = server.address() as net.AddressInfo;
      resolve({ port: addr.port, close: () => server.close() });
    });
  });
}

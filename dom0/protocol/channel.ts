// channel: the real replication Link — TCP with TLS 1.2 ECDHE-PSK (ChaCha20-Poly1305 or
// AES-256-GCM: forward secrecy, and both ends prove they hold the same 32-byte key), or
// plain TCP with --insecure for labs. Node's TLS 1.3 cannot run PSK-only (no certificate),
// hence 1.2. Records are framed by framer.ts; a framing error is reported to the engine as
// ERR_PROTOCOL through onClose before the socket is closed.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { randomBytes } from 'node:crypto';
import { ErrorCode, RemusError } from '../errors';
import type { Link } from '../ports';
import { encodeRecord, RecordDecoder } from './framer';
import { Rec } from './records';

export type Security = { psk: Buffer } | { insecure: true };

const PSK_IDENTITY = 'remusdb';
const CIPHERS = 'ECDHE-PSK-CHACHA20-POLY1305:ECDHE-PSK-AES256-CBC-SHA384:PSK-AES256-GCM-SHA384';
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

class SocketLink implements Link {
  private recordCb: (type: number, body: Buffer) => void = () => {};
  private closeCb: (e: Error | null) => void = () => {};
  private closed = false;
  private readonly decoder = new RecordDecoder(KNOWN);

  constructor(
    private readonly socket: net.Socket,
    readonly remote: string,
  ) {
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 1000);
    socket.on('data', (chunk: Buffer) => {
      if (this.closed) return;
      let records: ReturnType<RecordDecoder['push']>;
      try {
        records = this.decoder.push(chunk);
      } catch (e) {
        this.finish(e as Error);
        return;
      }
      for (const r of records) {
        if (!this.closed) this.recordCb(r.type, r.body);
      }
    });
    socket.on('error', (e) =>
      this.finish(new RemusError(ErrorCode.PEER_GONE, `connection to ${remote}: ${e.message}`, {}, { cause: e })),
    );
    socket.on('close', () => this.finish(null));
  }

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

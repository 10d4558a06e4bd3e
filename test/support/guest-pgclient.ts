// guest-pgclient: the smallest PostgreSQL (protocol 3.0) client the guest-patch tests need:
// trust authentication, simple queries one at a time, and the raw reply messages of each
// query (so a test can find which TCP segments carried which message). No TLS, no
// extended protocol: psql would hide exactly the framing the tests look at.
import * as net from 'node:net';

export interface PgMessage {
  type: string;
  body: Buffer;
}

export interface QueryResult {
  messages: PgMessage[];
  /** ReadyForQuery status: I (idle), T (in a transaction block), E (failed block). */
  status: string;
  /** CommandComplete tags, in order. */
  tags: string[];
  /** ErrorResponse message texts (field M), in order. */
  errors: string[];
}

const MESSAGE_BYTES_MAX = 1 << 20;

function message(type: string, body: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head[0] = type.charCodeAt(0);
  head.writeUInt32BE(4 + body.length, 1);
  return Buffer.concat([head, body]);
}

function cstr(b: Buffer): string {
  const end = b.indexOf(0);
  return b.subarray(0, end < 0 ? b.length : end).toString('utf8');
}

function errorText(body: Buffer): string {
  for (let i = 0; i < body.length && body[i] !== 0; ) {
    const field = String.fromCharCode(body[i]);
    const end = body.indexOf(0, i + 1);
    if (field === 'M') return body.subarray(i + 1, end).toString('utf8');
    i = end + 1;
  }
  return '';
}

export class PgClient {
  private readonly socket: net.Socket;
  private buffered = Buffer.alloc(0);
  private pending: PgMessage[] = [];
  private waiter: ((r: QueryResult) => void) | null = null;
  private failer: ((e: Error) => void) | null = null;
  private closedError: Error | null = null;
  /** Local port of the client's socket (to find its flow in a capture); kept after close. */
  readonly localPort: number;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    this.localPort = socket.localPort ?? 0;
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => this.onData(d));
    const onGone = (e?: Error): void => {
      this.closedError ??= e ?? new Error('connection closed by the server');
      this.failer?.(this.closedError);
      this.waiter = null;
      this.failer = null;
    };
    socket.on('error', onGone);
    socket.on('close', () => onGone());
  }

  get closed(): boolean {
    return this.closedError !== null;
  }
  /** Errors the server sent outside any query (e.g. the FATAL before it closes). */
  unsolicitedErrors(): string[] {
    return this.pending.filter((m) => m.type === 'E').map((m) => errorText(m.body));
  }

  static async connect(host: string, port: number, user = 'postgres', database = 'postgres'): Promise<PgClient> {
    const socket = net.connect({ host, port });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const client = new PgClient(socket);
    const params = Buffer.from(`user\0${user}\0database\0${database}\0\0`, 'utf8');
    const body = Buffer.concat([Buffer.from([0, 3, 0, 0]), params]);
    const head = Buffer.alloc(4);
    head.writeUInt32BE(4 + body.length, 0);
    const ready = client.nextReady();
    socket.write(Buffer.concat([head, body]));
    const r = await ready;
    if (r.errors.length > 0) throw new Error(`startup failed: ${r.errors.join('; ')}`);
    return client;
  }

  /** Sends one simple query and resolves with every message up to its ReadyForQuery. */
  query(sql: string): Promise<QueryResult> {
    const ready = this.nextReady();
    this.socket.write(message('Q', Buffer.from(`${sql}\0`, 'utf8')));
    return ready;
  }

  close(): void {
    if (!this.closed) this.socket.end(message('X', Buffer.alloc(0)));
    this.socket.destroy();
  }

  private nextReady(): Promise<QueryResult> {
    if (this.closedError) return Promise.reject(this.closedError);
    if (this.waiter) throw new Error('PgClient: one query at a time');
    return new Promise((resolve, reject) => {
      this.waiter = resolve;
      this.failer = reject;
    });
  }

  private onData(d: Buffer): void {
    this.buffered = Buffer.concat([this.buffered, d]);
    while (this.buffered.length >= 5) {
      const len = this.buffered.readUInt32BE(1);
      if (len < 4 || len > MESSAGE_BYTES_MAX) {
        this.socket.destroy(new Error(`bad message length ${len}`));
        return;
      }
      if (this.buffered.length < 1 + len) return;
      const msg = {
        type: String.fromCharCode(this.buffered[0]),
        body: Buffer.from(this.buffered.subarray(5, 1 + len)),
      };
      this.buffered = this.buffered.subarray(1 + len);
      this.pending.push(msg);
      if (msg.type === 'Z') this.finish(String.fromCharCode(msg.body[0]));
    }
  }

  private finish(status: string): void {
    const messages = this.pending;
    this.pending = [];
    const tags = messages.filter((m) => m.type === 'C').map((m) => cstr(m.body));
    const errors = messages.filter((m) => m.type === 'E').map((m) => errorText(m.body));
    const resolve = this.waiter;
    this.waiter = null;
    this.failer = null;
    resolve?.({ messages, status, tags, errors });
  }
}

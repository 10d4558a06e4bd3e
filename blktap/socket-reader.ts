// socket-reader: exact-length reads from a TCP socket as promises (`read(n)` resolves with
// exactly n bytes, or rejects when the peer goes away), with bounded buffering: the socket
// is paused while more than `highWaterBytes` sit unread and nobody is waiting for them.
import type { Socket } from 'node:net';
import { ErrorCode, RemusError } from '../dom0/errors';

interface Waiter {
  n: number;
  resolve: (b: Buffer) => void;
  reject: (e: Error) => void;
}

export class SocketReader {
  private chunks: Buffer[] = [];
  private bufferedBytes = 0;
  private waiter: Waiter | null = null;
  private closedError: Error | null = null;

  constructor(
    private readonly socket: Socket,
    private readonly highWaterBytes: number,
  ) {
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('end', () => this.fail('peer closed the connection'));
    socket.on('close', () => this.fail('connection closed'));
    socket.on('error', (e) => this.fail(`socket error: ${e.message}`));
  }

  read(n: number): Promise<Buffer> {
    if (this.closedError && this.bufferedBytes < n) return Promise.reject(this.closedError);
    if (this.bufferedBytes >= n) return Promise.resolve(this.take(n));
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
      this.socket.resume();
    });
  }

  private onData(d: Buffer): void {
    this.chunks.push(d);
    this.bufferedBytes += d.length;
    const w = this.waiter;
    if (w && this.bufferedBytes >= w.n) {
      this.waiter = null;
      w.resolve(this.take(w.n));
    }
    if (this.bufferedBytes > this.highWaterBytes && (!this.waiter || this.bufferedBytes >= this.waiter.n)) {
      this.socket.pause();
    }
  }

  private take(n: number): Buffer {
    let out: Buffer;
    const first = this.chunks[0];
    if (first !== undefined && first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let filled = 0;
      while (filled < n) {
        const c = this.chunks[0]!;
        const k = Math.min(c.length, n - filled);
        c.copy(out, filled, 0, k);
        filled += k;
        if (k === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(k);
      }
    }
    this.bufferedBytes -= n;
    if (this.bufferedBytes <= this.highWaterBytes && this.socket.isPaused()) this.socket.resume();
    return out;
  }

  private fail(why: string): void {
    if (this.closedError) return;
    this.closedError = new RemusError(ErrorCode.PEER_GONE, `NBD client: ${why}`);
    const w = this.waiter;
    this.waiter = null;
    if (w) w.reject(this.closedError);
  }
}

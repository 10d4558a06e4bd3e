// output-sink: where a simulated domain's released outputs go — its "network": one line
// `seq value` per output over TCP to a client address (the demo's client), reconnecting if
// the client restarts. Without a client, outputs are only counted. The queue is bounded:
// past sinkQueueMax lines, new ones are dropped and counted (as a full NIC would).
import * as net from 'node:net';
import type { SimOutput } from './sim-domain';

export class OutputSink {
  private socket: net.Socket | null = null;
  private connecting = false;
  private queue: string[] = [];
  readonly stats = { delivered: 0, dropped: 0, lastSeq: 0 };
  private closed = false;

  constructor(
    private readonly client: { host: string; port: number } | null,
    private readonly queueMax = 100_000,
  ) {}

  deliver(o: SimOutput): void {
    this.stats.lastSeq = o.seq;
    if (!this.client) {
      this.stats.delivered++;
      return;
    }
    if (this.queue.length >= this.queueMax) {
      this.stats.dropped++;
      return;
    }
    this.queue.push(`${o.seq} ${o.value}\n`);
    this.flush();
  }

  private flush(): void {
    if (this.closed || !this.client) return;
    if (!this.socket) {
      this.connect();
      return;
    }
    if (this.queue.length === 0) return;
    const n = this.queue.length;
    this.socket.write(this.queue.join(''));
    this.stats.delivered += n;
    this.queue = [];
  }

  private connect(): void {
    if (this.connecting || !this.client) return;
    this.connecting = true;
    const s = net.connect(this.client.port, this.client.host);
    s.setNoDelay(true);
    s.once('connect', () => {
      this.connecting = false;
      this.socket = s;
      this.flush();
    });
    s.on('error', () => {
      /* close follows */
    });
    s.once('close', () => {
      this.connecting = false;
      if (this.socket === s) this.socket = null;
      if (!this.closed) setTimeout(() => this.flush(), 100).unref();
    });
  }

  close(): void {
    this.closed = true;
    this.socket?.end();
  }
}

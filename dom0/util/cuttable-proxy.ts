// cuttable-proxy: a TCP relay on 127.0.0.1 whose link can be cut the way a middlebox reset
// cuts it — the client's connection is reset and new ones are refused for a while, while the
// target's connection stays open and unread (half-open, its peer hears nothing). The test of
// reconnection (test 55) and `remusdb bench scale` put it between a primary and its backup.
import * as net from 'node:net';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A TCP relay to target whose link can be cut: the client side reset, the target side left open and unread. */
export class CuttableProxy {
  private server: net.Server | null = null;
  private refusing = false;
  private readonly pairs: Array<{ client: net.Socket; up: net.Socket; cut: boolean }> = [];
  port = 0;

  constructor(private readonly targetPort: number) {}

  async listen(): Promise<void> {
    this.server = net.createServer((client) => this.relay(client));
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as net.AddressInfo).port;
  }

  private relay(client: net.Socket): void {
    client.on('error', () => {});
    if (this.refusing) {
      client.destroy();
      return;
    }
    const up = net.connect(this.targetPort, '127.0.0.1');
    up.on('error', () => {});
    const pair = { client, up, cut: false };
    this.pairs.push(pair);
    client.pipe(up, { end: false });
    up.pipe(client, { end: false });
    client.on('close', () => {
      if (!pair.cut) up.destroy();
    });
    up.on('close', () => client.destroy());
  }

  /** For ms: every client connection is reset, new ones too; the target's connections stay open, unread. */
  async cut(ms: number): Promise<void> {
    this.refusing = true;
    for (const p of this.pairs) {
      p.cut = true;
      p.up.unpipe(p.client);
      p.up.pause();
      p.client.destroy();
    }
    await sleep(ms);
    this.refusing = false;
  }

  close(): void {
    for (const p of this.pairs) {
      p.client.destroy();
      p.up.destroy();
    }
    this.server?.close();
  }
}

// blackhole-link: `protect --blackhole` (xl remus -b): a backup that acknowledges every
// checkpoint at once and keeps nothing. Checkpoints are taken and encoded as for a real
// backup, so it measures what protection costs the guest without a second host.
import type { Link } from '../ports';
import { Rec, ackBody, heartbeatBody, jsonBody, parseCheckpointEnd } from '../protocol/records';

/** How often the blackhole says it is alive (a live backup does so during a long copy too). */
const BLACKHOLE_HEARTBEAT_MS = 10;

export class BlackholeLink implements Link {
  readonly remote = 'blackhole';
  readonly backlogBytes = 0;
  private cb: (type: number, body: Buffer) => void = () => {};
  private closed = false;
  private readonly heartbeat = setInterval(() => {
    if (!this.closed) this.cb(Rec.HEARTBEAT, heartbeatBody(0, Date.now()));
  }, BLACKHOLE_HEARTBEAT_MS);

  send(type: number, body: Uint8Array): void {
    if (this.closed) return;
    const reply = (t: number, b: Buffer): void => {
      setImmediate(() => {
        if (!this.closed) this.cb(t, b);
      });
    };
    if (type === Rec.HELLO) reply(Rec.HELLO_ACK, jsonBody({ accepted: true, backup: 'blackhole' }));
    if (type === Rec.CHECKPOINT_END) reply(Rec.ACK, ackBody(parseCheckpointEnd(Buffer.from(body)).epoch));
  }

  close(): void {
    this.closed = true;
    clearInterval(this.heartbeat);
  }
  onRecord(cb: (type: number, body: Buffer) => void): void {
    this.cb = cb;
  }
  onClose(): void {
    /* a blackhole never closes by itself */
  }
}

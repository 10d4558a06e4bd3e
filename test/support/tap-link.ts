// tap-link: a Link for tests that records what an engine sends and lets the test deliver
// records to it by hand (rec), as if they came from the peer.
import type { Link } from '../../dom0/ports';

export class TapLink implements Link {
  readonly remote = 'test';
  readonly backlogBytes = 0;
  sent: Array<{ type: number; body: Buffer }> = [];
  closed = false;
  rec: (t: number, b: Buffer) => void = () => {};
  send(type: number, body: Uint8Array): void {
    this.sent.push({ type, body: Buffer.from(body) });
  }
  close(): void {
    this.closed = true;
  }
  onRecord(cb: (t: number, b: Buffer) => void): void {
    this.rec = cb;
  }
  onClose(): void {
    /* not used */
  }
  /** Link.holdReading's calls, in order (the engine's flow control). */
  holds: boolean[] = [];
  holdReading(held: boolean): void {
    this.holds.push(held);
  }
}

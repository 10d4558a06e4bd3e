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
  private closedBy: ((error: Error | null) => void) | null = null;
  onClose(cb: (error: Error | null) => void): void {
    this.closedBy = cb;
  }
  /** The peer's end closes: the engine hears it as a broken connection. */
  peerClosed(error: Error | null = new Error('closed by the test')): void {
    this.closedBy?.(error);
  }
  /** Link.holdReading's calls, in order (the engine's flow control). */
  holds: boolean[] = [];
  holdReading(held: boolean): void {
    this.holds.push(held);
  }
}

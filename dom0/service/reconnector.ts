// reconnector: how a protect process (simulated or Xen domain) keeps reaching its backup —
// connect over the replication channel, hand the link to the engine, and after a failed
// attempt or a lost backup try again with exponential backoff (100 ms doubling to 5 s,
// reset by a success). Authentication failures are logged (a wrong key never heals by
// itself, but the operator may fix the backup's key file); other failures are silent
// retries. stop() ends it; a link that arrives after stop() is closed at once.
import { ErrorCode, type RemusError } from '../errors';
import type { Link } from '../engine/ports';
import { connectLink, type Security } from '../protocol/channel';

export const RECONNECT_DELAY_MS_MIN = 100;
export const RECONNECT_DELAY_MS_MAX = 5000;

export interface ReconnectTarget {
  backup: { host: string; port: number };
  security: Security;
  /** True while the engine has a link (nothing to do). */
  attached(): boolean;
  attach(link: Link): void;
  log(line: string): void;
}

export class Reconnector {
  private delayMs = RECONNECT_DELAY_MS_MIN;
  private stopped = false;
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly t: ReconnectTarget) {}

  connect(): void {
    if (this.stopped || this.t.attached()) return;
    const b = this.t.backup;
    connectLink(b.host, b.port, this.t.security).then((link) => {
      if (this.stopped) { link.close(); return; }
      this.delayMs = RECONNECT_DELAY_MS_MIN;
      this.t.attach(link);
    }, (e: Error) => {
      if ((e as RemusError).code === ErrorCode.AUTH) this.t.log(`backup ${b.host}:${b.port}: ${e.message}`);
      this.schedule();
    });
  }

  /** Tries again after the current backoff delay (then doubles it). */
  schedule(): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => { this.timer = null; this.connect(); }, this.delayMs).unref();
    this.delayMs = Math.min(RECONNECT_DELAY_MS_MAX, this.delayMs * 2);
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}

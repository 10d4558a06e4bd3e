// reconnector: how a protect process (simulated or Xen domain) keeps reaching its backup —
// connect over the replication channel, hand the link to the engine, and after a failed
// attempt or a lost backup try again with exponential backoff (100 ms doubling to 1 s). The
// backoff is reset only when a session is established (the engine reports 'protected'), not
// when a connection merely opens: a backup that accepts connections but refuses our HELLO
// (it serves another primary, a size or disk mismatch) is retried at the capped rate, not at
// 10 Hz. Why the backup is unreachable — DNS, refused, no answer, TLS failure (different
// keys, or one side --insecure), refused HELLO — is said once per change of reason.
// retarget() moves it to another backup (a pool agent's new choice): the next attempt goes
// there at once. stop() ends it; a link that arrives after stop() is closed at once.
import { ErrorCode, type RemusError } from '../errors';
import type { Link } from '../ports';
import { connectLink, type Security } from '../protocol/channel';
import { ChangeLog } from './change-log';

export const RECONNECT_DELAY_MS_MIN = 100;
/**
 * The backoff's cap. A protect process is unprotected until it reconnects, so it retries at
 * least once a second: with 5 s, a 2 s cut of an 8 GiB guest's link left it unprotected 1.1 s
 * past the link's return (bench scale, 2026-12-08); a refused attempt costs the backup a TLS
 * handshake a second.
 */
export const RECONNECT_DELAY_MS_MAX = 1000;

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
  private readonly said: ChangeLog;
  /** Where the next attempt goes (the target's backup until retarget()). */
  private backup: { host: string; port: number };
  /** Connection attempts started, and those that failed before a link (status, metrics); failed ≤ started. */
  readonly attempts = { started: 0, failed: 0 };

  constructor(private readonly t: ReconnectTarget) {
    this.said = new ChangeLog(t.log);
    this.backup = t.backup;
  }

  /** The backup attempts go to now. */
  get target(): { host: string; port: number } {
    return { ...this.backup };
  }

  /** Attempts go to b from now on, the first at once (no effect on a session that runs). */
  retarget(b: { host: string; port: number }): void {
    this.backup = { ...b };
    this.delayMs = RECONNECT_DELAY_MS_MIN;
    this.said.reset();
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.connect();
  }

  /** The delay before the next attempt (for status and tests). */
  get nextDelayMs(): number {
    return this.delayMs;
  }

  connect(): void {
    if (this.stopped || this.t.attached()) return;
    const b = this.backup;
    this.attempts.started++;
    connectLink(b.host, b.port, this.t.security).then(
      (link) => {
        if (this.stopped || b !== this.backup) {
          link.close(); // stopped, or retargeted while it connected
          if (!this.stopped && !this.t.attached() && !this.timer) this.connect();
          return;
        }
        this.t.attach(link);
      },
      (e: Error) => {
        this.attempts.failed++;
        this.said.say(`backup ${b.host}:${b.port} unreachable: ${unreachableReason(e, this.t.security)}; retrying`);
        this.schedule();
      },
    );
  }

  /** The engine lost its backup (or was refused): say why once, then try again later. */
  lost(why: string): void {
    this.said.say(why);
    this.schedule();
  }

  /** A session is established: the next loss retries fast again, and its reason is said anew. */
  established(): void {
    this.delayMs = RECONNECT_DELAY_MS_MIN;
    this.said.reset();
  }

  /** Tries again after the current backoff delay (then doubles it). */
  schedule(): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.connect();
    }, this.delayMs).unref();
    this.delayMs = Math.min(RECONNECT_DELAY_MS_MAX, this.delayMs * 2);
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}

/** One plain sentence for why a connection attempt failed. */
export function unreachableReason(e: Error, sec: Security): string {
  const m = e.message;
  if ((e as RemusError).code === ErrorCode.AUTH) return m;
  if (/ENOTFOUND|EAI_AGAIN|EAI_NONAME/.test(m)) return `its name does not resolve (${m})`;
  if (/ECONNREFUSED/.test(m)) return 'connection refused (is `remusdb backup` running there, on that port?)';
  if (/EHOSTUNREACH|ENETUNREACH/.test(m)) return `no route to it (${m})`;
  if (/no answer within/.test(m)) return m;
  if ('psk' in sec && /ECONNRESET|socket disconnected|before secure TLS/i.test(m)) {
    return (
      'it closed the connection during the TLS handshake ' + '(does it run --insecure, plain TCP? or hold another key?)'
    );
  }
  return m;
}

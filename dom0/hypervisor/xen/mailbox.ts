// mailbox: a bounded FIFO between a producer that runs on its own schedule (libxc's save
// thread calling back, the stream reader) and the engine's awaits. take() waits with a
// bound; fail() rejects every pending and future take with the same error, so a dead save
// loop or a destroyed domain ends every wait at once instead of hanging.
import { ErrorCode, RemusError } from '../../errors';

export class Mailbox<T> {
  private items: T[] = [];
  private waiters: Array<{ resolve: (v: T) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }> = [];
  private error: Error | null = null;

  constructor(
    private readonly what: string,
    private readonly itemsMax: number,
  ) {}

  get failed(): Error | null {
    return this.error;
  }
  get length(): number {
    return this.items.length;
  }

  put(item: T): void {
    if (this.error) return;
    const w = this.waiters.shift();
    if (w) {
      clearTimeout(w.timer);
      w.resolve(item);
      return;
    }
    if (this.items.length >= this.itemsMax) {
      this.fail(
        new RemusError(
          ErrorCode.XEN,
          `${this.what}: more than ${this.itemsMax} waiting (the engine stopped taking them)`,
        ),
      );
      return;
    }
    this.items.push(item);
  }

  take(timeoutMs: number): Promise<T> {
    if (this.items.length > 0) return Promise.resolve(this.items.shift()!);
    if (this.error) return Promise.reject(this.error);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w.timer !== timer);
        reject(new RemusError(ErrorCode.XEN, `${this.what}: nothing within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.push({ resolve, reject, timer });
    });
  }

  /** Items not taken yet (for cleanup), emptying the box. */
  drain(): T[] {
    const i = this.items;
    this.items = [];
    return i;
  }

  fail(e: Error): void {
    if (this.error) return;
    this.error = e;
    for (const w of this.waiters) {
      clearTimeout(w.timer);
      w.reject(e);
    }
    this.waiters = [];
  }
}

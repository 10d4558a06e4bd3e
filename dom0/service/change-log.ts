// change-log: log a recurring condition once per change, not once per occurrence. A refused
// primary retrying, a port scanner or a wrong key would otherwise write a line per attempt;
// here the first line of a kind is written, repeats are counted, and the count is written
// when the condition changes (a line of another kind, or reset()). Lines that differ only in
// their numbers (timings, ports) are the same kind.
export class ChangeLog {
  private kind: string | null = null;
  private repeats = 0;

  constructor(private readonly log: (line: string) => void) {}

  say(line: string): void {
    const kind = line.replace(/\d+/g, '#');
    if (kind === this.kind) {
      this.repeats++;
      return;
    }
    this.flush();
    this.kind = kind;
    this.log(line);
  }

  /** The condition ended (e.g. a primary connected): the next line is written again. */
  reset(): void {
    this.flush();
    this.kind = null;
  }

  private flush(): void {
    if (this.repeats > 0) this.log(`(the line above repeated ${this.repeats} more times)`);
    this.repeats = 0;
  }
}

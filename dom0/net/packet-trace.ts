// packet-trace: a line per packet the nfqueue buffer reads (when, which epoch, the
// classifier's verdict and what the ledger did with it, the TCP header) and per barrier and
// release, written to a file — to see, after a run, why a client waited. Off unless
// REMUSDB_NET_TRACE names a file (labs: `protect` under run.sh). Bounded by
// NET_TRACE_LINES_MAX; lines are buffered and appended at each barrier/release, so a
// SIGKILLed process loses at most one epoch of them. Diagnostics only: the appends are
// synchronous, on the thread that reads the queue.
import { appendFileSync } from 'node:fs';
import { NET_TRACE_FLUSH_LINES, NET_TRACE_LINES_MAX } from '../limits';
import type { LedgerObserver, PacketOutcome, PacketVerdict } from './packet-ledger';
import { addressText, parsePacket, TCP_FIN, TCP_RST, TCP_SYN } from './pgwire-segment';

const FLAG_NAMES: Array<[number, string]> = [
  [TCP_SYN, 'S'],
  [TCP_FIN, 'F'],
  [TCP_RST, 'R'],
  [0x08, 'P'],
  [0x10, '.'],
];

export class PacketTrace implements LedgerObserver {
  private readonly startMs = performance.now();
  private lines: string[] = [];
  private written = 0;

  /** flowMode: the classifier's state of a flow (pgwire), for the line. */
  constructor(
    private readonly path: string,
    private readonly flowMode: (key: string) => string | undefined = () => undefined,
  ) {
    appendFileSync(path, `# remusdb packet trace ${new Date().toISOString()} pid ${process.pid}\n`);
  }

  packet(header: Uint8Array, verdict: PacketVerdict, outcome: PacketOutcome, epoch: number): void {
    const p = parsePacket(header);
    let what: string;
    if (p.kind !== 'tcp') what = `${p.kind} proto=${header[0] >> 4 === 4 ? header[9] : header[6]}`;
    else {
      const s = p.seg;
      const flags = FLAG_NAMES.filter(([bit]) => s.flags & bit)
        .map(([, n]) => n)
        .join('');
      const mode = this.flowMode(s.key) ?? '-';
      what =
        `${addressText(s.src)}:${s.sport}>${addressText(s.dst)}:${s.dport} ${flags} ` +
        `seq=${s.seq} ack=${s.ack} len=${s.payloadLen} mode=${mode}`;
    }
    this.add(`e${epoch} ${verdict} ${outcome} ${what}`);
  }

  barrier(epoch: number): void {
    this.add(`barrier e${epoch}`);
    this.flush();
  }

  release(epoch: number): void {
    this.add(`release e${epoch}`);
    this.flush();
  }

  private add(line: string): void {
    if (this.written + this.lines.length >= NET_TRACE_LINES_MAX) return;
    this.lines.push(`${(performance.now() - this.startMs).toFixed(1)} ${line}`);
    if (this.lines.length >= NET_TRACE_FLUSH_LINES) this.flush();
  }

  flush(): void {
    if (this.lines.length === 0) return;
    const text = `${this.lines.join('\n')}\n`;
    this.written += this.lines.length;
    this.lines = [];
    try {
      appendFileSync(this.path, text);
    } catch {
      this.written = NET_TRACE_LINES_MAX; // a trace that cannot be written stops; the buffer goes on
    }
  }
}

/** Calls each observer in turn (the failover reset tracker and a trace). */
export function teeObservers(observers: LedgerObserver[]): LedgerObserver | undefined {
  if (observers.length <= 1) return observers[0];
  return {
    packet: (h, v, o, e) => {
      for (const x of observers) x.packet(h, v, o, e);
    },
    beforeVerdicts: () => {
      for (const x of observers) x.beforeVerdicts?.();
    },
    barrier: (e) => {
      for (const x of observers) x.barrier(e);
    },
    release: (e) => {
      for (const x of observers) x.release(e);
    },
  };
}

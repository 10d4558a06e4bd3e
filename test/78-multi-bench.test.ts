// 78 bench multi, its pure parts with made-up samples: quantiles and medians, the worst of
// several domains in the direction that matters, the verdict at the tolerance's edges, a
// window's figures from differences of cumulative counters, the summary of runs (ratios to
// alone paired within each run, targets apart from context figures) and the report; and the
// timed window a primary keeps its pauses and holds in (what `samples` answers from).
import { strict as assert } from 'node:assert';
import {
  type DomainSample,
  type MultiResult,
  type RunSample,
  formatMultiBench,
  median,
  quantile,
  summarize,
  verdict,
  windowSample,
  worst,
} from '../dom0/bench/multi-bench';
import { TimedWindow } from '../dom0/engine/stats';

const BASE: DomainSample = {
  pause_ms_p50: 1,
  pause_ms_p99: 5,
  hold_ms_p50: 4,
  hold_ms_p99: 60,
  ratio: 10,
  checkpoints_per_s: 70,
  guest_tx_per_s: 2000,
  wire_mb_per_s: 0.6,
};
const ds = (over: Partial<DomainSample> = {}): DomainSample => ({ ...BASE, ...over });
const cpu = (ours: number, host: number) => ({ ours, host });

/** Three runs of two shared domains: pause p50 near alone within each run, m2 compressing worse. */
function threeRuns(m2Ratio: [number, number, number], m2Checkpoints = 70): RunSample[] {
  const alone = [1, 2, 4];
  const shared: Array<[number, number]> = [
    [1.05, 1.08],
    [2.1, 2.3],
    [4.0, 4.2],
  ];
  return alone.map((a, r) => ({
    alone: { domains: [ds({ pause_ms_p50: a })], cpu_cores: cpu(0.5 + r / 10, 1.5) },
    shared: {
      domains: [
        ds({ pause_ms_p50: shared[r][0], ratio: 9.5 + r / 10 }),
        ds({ pause_ms_p50: shared[r][1], ratio: m2Ratio[r], checkpoints_per_s: m2Checkpoints }),
      ],
      cpu_cores: cpu(1.8, 1.9 + r / 100),
    },
  }));
}

describe('78 bench multi (pure parts)', () => {
  it('78.1 quantile as the engine takes it; median of odd and even counts; NaN for none or a NaN', () => {
    assert.equal(quantile([5, 1, 3, 2, 4], 0.5), 3);
    assert.equal(quantile([5, 1, 3, 2, 4], 0.99), 5);
    assert.equal(quantile([5, 1, 3, 2, 4], 0), 1);
    assert.ok(Number.isNaN(quantile([], 0.5)));
    assert.equal(median([3, 1, 2]), 2);
    assert.equal(median([4, 1, 3, 2]), 2.5);
    assert.ok(Number.isNaN(median([])));
    assert.ok(Number.isNaN(median([1, Number.NaN, 3])));
  });

  it('78.2 the worst domain and the verdict, in the direction that is worse, at the edges', () => {
    assert.equal(worst([1, 3, 2], 'lower'), 3);
    assert.equal(worst([1, 3, 2], 'higher'), 1);
    assert.equal(verdict(1.1, 'lower'), 'within 10%');
    assert.equal(verdict(1.1001, 'lower'), 'not within 10%');
    assert.equal(verdict(0.5, 'lower'), 'within 10%', 'shorter pauses shared are no failure');
    assert.equal(verdict(0.9, 'higher'), 'within 10%');
    assert.equal(verdict(0.8999, 'higher'), 'not within 10%');
    assert.equal(verdict(1.5, 'higher'), 'within 10%');
    assert.equal(verdict(1.06, 'lower', 0.05), 'not within 5%');
    assert.equal(verdict(Number.NaN, 'lower'), 'no data');
    assert.equal(verdict(Number.POSITIVE_INFINITY, 'higher'), 'no data');
    assert.equal(verdict(3, null), '-');
  });

  it("78.3 a window's figures: counters differenced (the first full copy left out), samples as quantiles", () => {
    const MiB = 2 ** 20;
    const s = windowSample({
      seconds: 10,
      start: { rawBytes: 64 * MiB, wireBytes: 20e6, checkpoints: 10, guest: { steps: 1000 } },
      end: { rawBytes: 64 * MiB + 4e6, wireBytes: 21e6, checkpoints: 410, guest: { steps: 21_000 } },
      pauses: [3, 1, 2, 9],
      holds: [],
    });
    assert.equal(s.ratio, 4, 'window bytes only: the cumulative ratio would be about 3.4');
    assert.equal(s.checkpoints_per_s, 40);
    assert.equal(s.guest_tx_per_s, 2000);
    assert.equal(s.wire_mb_per_s, 0.1);
    assert.equal(s.pause_ms_p50, 3);
    assert.equal(s.pause_ms_p99, 9);
    assert.ok(Number.isNaN(s.hold_ms_p50) && Number.isNaN(s.hold_ms_p99), 'no output held: no hold figure');
    const idle = windowSample({ seconds: 1, start: { wireBytes: 5 }, end: { wireBytes: 5 }, pauses: [], holds: [] });
    assert.ok(Number.isNaN(idle.ratio), 'nothing sent: no ratio');
  });

  it('78.4 summary: medians over runs, ratios to alone paired per run, the worst domain decides', () => {
    const r = summarize(threeRuns([8.0, 8.5, 8.9]));
    assert.equal(r.alone.pause_ms_p50, 2);
    assert.deepEqual(r.shared.pause_ms_p50.domains, [2.1, 2.3]);
    assert.equal(r.shared.pause_ms_p50.worst, 2.3);
    // Paired: worst/alone per run is 1.08, 1.15, 1.05 (median 1.08); unpaired 2.3 / 2 would be 1.15.
    assert.ok(Math.abs(r.ratio.pause_ms_p50.worst - 1.08) < 1e-9, String(r.ratio.pause_ms_p50.worst));
    assert.ok(Math.abs(r.ratio.pause_ms_p50.domains[0] - 1.05) < 1e-9, String(r.ratio.pause_ms_p50.domains[0]));
    assert.equal(r.verdict.pause_ms_p50, 'within 10%');
    assert.deepEqual(r.shared.ratio.domains, [9.6, 8.5]);
    assert.equal(r.shared.ratio.worst, 8.5, 'the lowest compression is the worst');
    assert.ok(Math.abs(r.ratio.ratio.worst - 0.85) < 1e-9, String(r.ratio.ratio.worst));
    assert.equal(r.verdict.ratio, 'not within 10%');
    assert.equal(r.verdict.hold_ms_p99, 'within 10%');
    assert.equal(r.verdict.wire_mb_per_s, '-');
    assert.equal(r.target_met, false, 'compression 15% lower on m2');
    assert.deepEqual(r.cpu_cores.alone, { ours: 0.6, host: 1.5 });
    assert.deepEqual(r.cpu_cores.shared, { ours: 1.8, host: 1.91 });
  });

  it('78.5 a context figure out of tolerance does not fail the target; a target figure does', () => {
    const ok = summarize(threeRuns([9.2, 9.5, 9.9], 35));
    assert.equal(ok.verdict.ratio, 'within 10%');
    assert.equal(ok.verdict.checkpoints_per_s, 'not within 10%');
    assert.equal(ok.target_met, true);
    const slow = threeRuns([9.2, 9.5, 9.9]);
    for (const run of slow) run.shared.domains[1].hold_ms_p99 = 67; // 60 alone: 1.117
    const r = summarize(slow);
    assert.equal(r.verdict.hold_ms_p99, 'not within 10%');
    assert.equal(r.target_met, false);
  });

  it('78.6 the report: every figure, every domain, the verdicts and whether the target is met', () => {
    const runs = threeRuns([8.0, 8.5, 8.9]);
    const result: MultiResult = {
      bench: 'multi',
      date: '2026-01-01T00:00:00.000Z',
      domains: 2,
      memory_bytes: 64 * 2 ** 20,
      rate: 2000,
      seconds: 10,
      warmup_s: 2,
      runs: 3,
      interval_ms: 50,
      trigger: 'output',
      heartbeat_timeout_ms: 2000,
      tolerance: 0.1,
      cpus: 2,
      load_before: [1, 2, 3],
      load_after: null,
      ...summarize(runs),
      samples: runs,
    };
    const text = formatMultiBench(result);
    const line = (label: string): string => text.split('\n').find((l) => l.startsWith(label)) ?? '';
    assert.match(line('figure'), /alone\s+m1\s+m2\s+worst\s+worst\/alone/);
    assert.match(line('compression'), /10\.00\s+9\.60\s+8\.50\s+8\.50\s+0\.850\s+not within 10%$/);
    assert.match(line('pause p50 ms'), /2\.00\s+2\.10\s+2\.30\s+2\.30\s+1\.080\s+within 10%$/);
    assert.match(line('wire MB/s'), /- \(context\)$/);
    assert.match(text, /50 ms interval, trigger output\n/);
    assert.match(text, /before 1\.00 2\.00 3\.00, after -/);
    assert.match(text, /: NOT met$/);
    assert.match(formatMultiBench({ ...result, target_met: true }), /: met$/);
  });

  it('78.7 the timed window: samples of a span, oldest first; incomplete once one of them was pushed out', () => {
    const w = new TimedWindow(4);
    for (let t = 100; t <= 105; t++) w.add(t, t - 100);
    assert.deepEqual(w.between(102, 105), { at: [102, 103, 104], values: [2, 3, 4], complete: true });
    assert.deepEqual(w.between(0, Number.POSITIVE_INFINITY).values, [2, 3, 4, 5]);
    assert.equal(w.between(0, 200).complete, false, 'the samples at 100 and 101 are gone');
    assert.equal(w.between(101, 200).complete, false, 'the sample at 101 is gone');
    assert.equal(w.between(101.5, 200).complete, true);
    assert.deepEqual(new TimedWindow(4).between(0, 10), { at: [], values: [], complete: true });
  });
});

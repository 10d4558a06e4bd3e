// 58 output-triggered checkpoints (--trigger output, engine/pacing.ts): the pause share
// window and its admission rule; the engine taking a checkpoint when a protected output is
// held instead of at the next tick, carrying what arrives meanwhile in the next one (as soon
// as maxInFlight allows), never past the pause share bound, the timer still firing at the
// interval; which gates tell of held outputs (nfqueue's ledger, a guest's own buffer, sets of
// them) and the refusals (sch_plug, a gate that cannot tell); the CLI and status.
import { strict as assert } from 'node:assert';
import { spawn, spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { Backup } from '../dom0/engine/backup';
import { OutputBuffer } from '../dom0/engine/output-buffer';
import { PauseShare, type PaceCause, type Trigger } from '../dom0/engine/pacing';
import { AdaptiveInterval } from '../dom0/engine/adaptive-interval';
import { Primary } from '../dom0/engine/primary';
import { ErrorCode, RemusError } from '../dom0/errors';
import { fractionOption, intOrWordOption } from '../dom0/cli/options';
import { GateSet } from '../dom0/net/domain-net';
import { NET_BUFFERS, triggerFor } from '../dom0/net/net-buffers';
import { NoGate } from '../dom0/net/net-device';
import { PacketLedger, type Classifier, type VerdictSink } from '../dom0/net/packet-ledger';
import type { OutputGate } from '../dom0/ports';
import { Prng } from '../dom0/util/prng';
import { MemReplica, Net, StepDomain, VirtualClock } from './support/sim-world';
import { protectLogLine } from '../dom0/service/protect-log';
import { ROOT, runCli, sleep, tmpDir } from './support/helpers';

const isBadArgument = (e: unknown): boolean => e instanceof RemusError && e.code === ErrorCode.BAD_ARGUMENT;

interface RigOptions {
  trigger: Trigger;
  maxInFlight?: number;
  intervalMs?: number;
  /** Virtual ms each capture takes (the guest's pause), or that as a function of the pages captured. */
  pauseMs?: number | ((pages: number) => number);
  /** --interval auto: intervalMs is then the longest interval. */
  intervalAuto?: boolean;
  maxPauseShare?: number;
  windowMs?: number;
  /** One-way link latency, ms (plus 0–2). */
  latencyMs?: number;
}

/** A primary and a backup in virtual time over a framed in-memory link; outputs pushed by the test. */
function rig(o: RigOptions) {
  const clock = new VirtualClock();
  const net = new Net(clock, new Prng(58), o.latencyMs ?? 1);
  const released: Array<{ seq: number; pushedAt: number; releasedAt: number; epoch: number }> = [];
  const gate = new OutputBuffer<{ seq: number; pushedAt: number }>((x, epoch, held) => {
    if (held) released.push({ ...x, releasedAt: clock.now(), epoch });
  });
  const domain = new StepDomain(128, 1, clock, () => {});
  const pauses: Array<[number, number]> = [];
  const cost = o.pauseMs;
  if (cost)
    domain.pauseCost = { ms: (n) => (typeof cost === 'number' ? cost : cost(n)), advance: (ms) => clock.advance(ms) };
  domain.onPause = (a, b) => pauses.push([a, b]);
  const paced: Array<{ epoch: number; cause: PaceCause; at: number }> = [];
  const acks: Array<{ epoch: number; at: number }> = [];
  const events: Array<{ name: string; detail: Record<string, unknown> }> = [];
  const primary = new Primary(
    domain,
    gate,
    clock,
    {
      intervalMs: o.intervalMs ?? 50,
      intervalAuto: o.intervalAuto,
      compressor: 'lz4',
      cachePages: 16,
      maxInFlight: o.maxInFlight ?? 2,
      heartbeatTimeoutMs: 1000,
      batchPagesMax: 64,
      deviceStateMax: 4096,
      precopy: false,
      trigger: o.trigger,
      maxPauseShare: o.maxPauseShare,
      pauseShareWindowMs: o.windowMs,
    },
    {
      paced: (epoch, cause) => paced.push({ epoch, cause, at: clock.now() }),
      event: (name, detail) => events.push({ name, detail }),
      phase: (phase, epoch) => {
        if (phase === 'ack') acks.push({ epoch, at: clock.now() });
      },
    },
  );
  const backup = new Backup(
    clock,
    { pageCountMax: 1 << 20, batchPagesMax: 64, replicaFor: (h) => new MemReplica(h.pageCount) },
    {},
  );
  primary.start();
  const [b, p] = net.pair();
  backup.attach(b);
  primary.attach(p);
  clock.runUntil(300); // the first (full) checkpoint is acknowledged: outputs are protected
  assert.equal(primary.stats().state, 'protected');
  let seq = 0;
  const pushAt = (at: number): void => {
    clock.setTimer(at - clock.now(), () => gate.push({ seq: ++seq, pushedAt: clock.now() }));
  };
  return { clock, gate, primary, released, pauses, paced, acks, pushAt, events };
}

const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;

describe('58 output-triggered checkpoints', () => {
  it('58.1 the pause share window: sliding sums, the prediction, when the next pause fits', () => {
    const s = new PauseShare(0.1, 100); // 10 ms of every 100
    s.add(10, 4, true); // a full copy: counted, not predicted from
    assert.equal(s.predictMs(), 0);
    s.add(30, 2, false);
    s.add(50, 3, false);
    assert.equal(s.pausedIn(0, 100), 9);
    assert.equal(s.pausedIn(7, 29), 4); // [6,10] and [28,30] overlap it by 3 and 1
    assert.ok(Math.abs(s.share(100) - 0.09) < 1e-9);
    assert.ok(Math.abs(s.share(108) - 0.07) < 1e-9, "the full copy's [6, 10] is half outside");
    assert.equal(s.predictMs(), 3, 'the longest recent incremental pause');
    // At 50: 9 ms paused in the window, a 3 ms pause would make 12 > 10: wait until [6,10] left.
    assert.equal(s.earliestStart(50), 10 + 100 - 3);
    assert.equal(s.earliestStart(120), 120, 'at 120 only 5 ms remain in the window');
    const tight = new PauseShare(0.02, 100);
    tight.add(1, 3, false);
    assert.equal(tight.earliestStart(500), Infinity, 'one pause alone is over the bound: only the timer');
    const clip = new PauseShare(0.5, 100);
    clip.add(10, 5, false);
    clip.add(12, 5, false); // reaches back into the first: the guest was not paused twice at once
    assert.equal(clip.pausedIn(0, 100), 7);
    assert.throws(() => new PauseShare(0, 100), /max pause share/);
    assert.throws(() => s.add(40, 1, false), /before the last one/);
  });

  it('58.2 a held output starts a checkpoint at once (trigger output), at the next tick (timer)', () => {
    const latency = (trigger: Trigger): { ms: number[]; causes: PaceCause[] } => {
      const r = rig({ trigger });
      for (let i = 0; i < 20; i++) r.pushAt(310 + 37 * i);
      r.clock.runUntil(1200);
      assert.equal(r.released.length, 20, `${trigger}: every output released`);
      return { ms: r.released.map((x) => x.releasedAt - x.pushedAt), causes: r.paced.map((p) => p.cause) };
    };
    const out = latency('output'),
      timer = latency('timer');
    // Output: the checkpoint starts on the next turn; the wait is the round trip to the backup (2–6 ms).
    assert.ok(Math.max(...out.ms) <= 8, `output-triggered waits ${out.ms.join(',')}`);
    assert.ok(out.causes.includes('output'));
    assert.ok(!timer.causes.includes('output'));
    assert.ok(mean(timer.ms) > 3 * mean(out.ms), `timer ${mean(timer.ms)} ms vs output ${mean(out.ms)} ms`);
  });

  it('58.3 outputs arriving during an in-flight checkpoint ride the next one, started when the pipeline allows', () => {
    for (const maxInFlight of [1, 2]) {
      const r = rig({ trigger: 'output', maxInFlight, latencyMs: 8, intervalMs: 200 }); // no tick in 300..390
      r.pushAt(313); // A: starts checkpoint N at once
      r.pushAt(315); // B: N is in flight (unacknowledged)
      r.clock.runUntil(390);
      const [a, b] = r.released;
      assert.ok(a && b, 'both released');
      assert.ok(b.epoch > a.epoch, 'B is not released with the checkpoint that was in flight when it arrived');
      const n = r.paced.find((p) => p.at >= 313)!;
      const next = r.paced.find((p) => p.epoch === n.epoch + 1)!;
      assert.equal(n.cause, 'output');
      assert.equal(next.cause, 'output');
      if (maxInFlight === 2) assert.equal(next.at, 315, 'a second checkpoint may be in flight: it starts at once');
      else {
        const ackN = r.acks.find((x) => x.epoch === n.epoch)!;
        assert.equal(next.at, ackN.at, 'one in flight at most: the next starts with the ack that frees the pipeline');
      }
      assert.equal(b.releasedAt, r.acks.find((x) => x.epoch === next.epoch)!.at);
    }
  });

  it('58.4 a flood of outputs: the paused share stays under the bound, the timer still fires at the interval', () => {
    const windowMs = 200,
      bound = 0.1,
      pauseMs = 2;
    const r = rig({ trigger: 'output', pauseMs, maxPauseShare: bound, windowMs, maxInFlight: 2 });
    for (let t = 301; t < 2300; t += 1) r.pushAt(t);
    r.clock.runUntil(2300);
    const ps = r.pauses.filter(([a]) => a >= 300);
    for (const [, end] of ps) {
      let paused = 0;
      for (const [a, b] of r.pauses) paused += Math.max(0, Math.min(b, end) - Math.max(a, end - windowMs));
      assert.ok(paused <= bound * windowMs + 1e-6, `${paused} ms paused in the ${windowMs} ms before ${end}`);
    }
    const st = r.primary.stats();
    assert.ok(st.checkpointsHeldBack > 0, 'the bound held checkpoints back');
    assert.ok(st.pauseShare <= bound + 1e-9 && st.pauseShare > bound / 2, `status pauseShare ${st.pauseShare}`);
    // 2 s at 2 ms a pause under 10 %: ~100 checkpoints, five times the timer's 40.
    assert.ok(ps.length > 80, `${ps.length} checkpoints`);
    const starts = r.paced.filter((p) => p.at >= 300).map((p) => p.at);
    for (let i = 1; i < starts.length; i++)
      assert.ok(starts[i] - starts[i - 1] <= 50 + pauseMs + 1e-6, 'a gap > interval');
    // A pause that alone is over the bound: no early checkpoint, the timer paces.
    const slow = rig({ trigger: 'output', pauseMs: 30, maxPauseShare: 0.1, windowMs: 200 });
    for (let t = 301; t < 800; t += 3) slow.pushAt(t);
    slow.clock.runUntil(800);
    assert.ok(slow.paced.filter((p) => p.at > 400).every((p) => p.cause === 'timer'));
  });

  it('58.5 which gates tell of held outputs, and the refusals', () => {
    const plain: OutputGate = { held: 0, barrier() {}, release() {}, setPassThrough() {}, discard() {} };
    const domain = new StepDomain(128, 1, new VirtualClock(), () => {});
    const opts = {
      intervalMs: 50,
      compressor: 'lz4' as const,
      cachePages: 0,
      maxInFlight: 1,
      heartbeatTimeoutMs: 100,
      batchPagesMax: 16,
      deviceStateMax: 4096,
    };
    const clock = new VirtualClock();
    assert.throws(() => new Primary(domain, plain, clock, { ...opts, trigger: 'output' }), isBadArgument);
    assert.doesNotThrow(() => new Primary(domain, plain, clock, { ...opts, trigger: 'timer' }));
    // sch_plug holds packets unseen: refused, and its default is the timer.
    assert.throws(() => NET_BUFFERS.plug.validate({ commitProtection: 'off', trigger: 'output' }), isBadArgument);
    assert.doesNotThrow(() => NET_BUFFERS.nfqueue.validate({ commitProtection: 'pgwire', trigger: 'output' }));
    assert.equal(triggerFor({ commitProtection: 'off' }, NET_BUFFERS.plug), 'timer');
    assert.equal(triggerFor({ commitProtection: 'off' }, NET_BUFFERS.nfqueue), 'output');
    assert.equal(triggerFor({ commitProtection: 'off' }, null), 'output');
    assert.equal(triggerFor({ commitProtection: 'off', trigger: 'timer' }, NET_BUFFERS.nfqueue), 'timer');
    // A set tells only when every gate can; it forwards to all.
    assert.equal(new GateSet([new NoGate(), plain]).watchHeld, undefined);
    const own = new OutputBuffer<number>(() => {});
    let heard = 0;
    new GateSet([own, new NoGate()]).watchHeld!(() => heard++);
    own.push(1);
    assert.equal(heard, 1);
    own.setPassThrough(true);
    own.push(2);
    assert.equal(heard, 1, 'an output that passes through waits for nothing');
  });

  it('58.6 the nfqueue ledger tells of packets held as protected, once per batch, not of the others', () => {
    const sink: VerdictSink = { verdictUpTo() {}, verdictEach() {}, drain() {} };
    const byMark: Classifier = (h) => (h[1] === 1 ? 'hold' : 'release');
    const ledger = new PacketLedger(sink, { heldMax: 100, heldBytesMax: 1 << 20 }, byMark, 64);
    let heard = 0;
    ledger.watchHeld(() => heard++);
    let id = 0;
    const batch = (marks: number[], flows: number[]): void => {
      const headers = new Uint8Array(marks.length * 64);
      marks.forEach((m, i) => {
        const h = headers.subarray(i * 64, (i + 1) * 64);
        h.set([0x45, m], 0);
        h[9] = 6;
        h.set([127, 0, 0, 2, 127, 0, 0, 3], 12);
        h[23] = flows[i];
      });
      ledger.ingest({
        count: marks.length,
        ids: Uint32Array.from(marks, () => ++id),
        ipLens: new Uint32Array(marks.length).fill(60),
        protos: new Uint16Array(marks.length).fill(0x0800),
        headers,
        copyBytes: 64,
      });
    };
    batch([0, 0], [1, 2]);
    assert.equal(heard, 0, 'released at once');
    batch([1, 1, 0], [1, 2, 3]);
    assert.equal(heard, 1, 'two protected packets, one signal');
    ledger.barrier(1);
    batch([0], [1]);
    assert.equal(ledger.stats.waitedBehindFlow, 1);
    assert.equal(heard, 1, 'a packet that waits behind its flow rides a held epoch');
    ledger.setPassThrough(true);
    batch([1], [4]);
    assert.equal(heard, 1, 'pass-through holds nothing');
    ledger.watchHeld(null);
    ledger.setPassThrough(false);
    batch([1], [5]);
    assert.equal(heard, 1, 'stopped');
  });

  it('58.7 --trigger and --max-pause-share on the command line; status --json shows the pacing', async function () {
    this.timeout(60_000);
    const share = fractionOption('--max-pause-share', 0, 1);
    assert.equal(share('0.1'), 0.1);
    assert.equal(share('.5'), 0.5);
    assert.equal(share('1'), 1);
    for (const bad of ['0', '10%', '1e-1', '1.5', '-0.1', ''])
      assert.throws(() => share(bad), isBadArgument, `--max-pause-share ${bad}`);
    const timer = runCli(['protect', 'sim:t58', '-b', '--trigger', 'timer', '--max-pause-share', '0.2'], 20_000);
    assert.notEqual(timer.status, 0);
    assert.match(timer.stderr, /--max-pause-share .*--trigger output/);
    const plug = runCli(
      ['protect', 'sim:t58', '-b', '--memory', '16MiB', '--net-buffer', 'plug', '--vif', 'x', '--trigger', 'output'],
      20_000,
    );
    assert.notEqual(plug.status, 0);
    assert.match(plug.stderr, /sch_plug holds packets in the kernel/);
    const env = { ...process.env, REMUSDB_RUN_DIR: tmpDir('t58') };
    const bin = path.join(ROOT, 'bin', 'remusdb');
    const args = ['protect', 'sim:t58', '-b', '--memory', '16MiB', '--disk', '0', '--rate', '500', '--seconds', '20'];
    const p = spawn(process.execPath, [bin, ...args, '--max-pause-share', '0.25'], { env, stdio: 'ignore' });
    try {
      let st: Record<string, unknown> | undefined;
      for (let i = 0; i < 100 && !(Number(st?.earlyCheckpoints) > 0); i++) {
        await sleep(200);
        const r = spawnSync(process.execPath, [bin, 'status', '--json'], { env, encoding: 'utf8' });
        st = (JSON.parse(r.stdout || '{"processes":[]}').processes as Array<Record<string, unknown>>)[0];
      }
      assert.ok(st, 'status answered');
      assert.equal(st.trigger, 'output', 'the default where outputs signal');
      assert.equal(st.max_pause_share, 0.25);
      assert.equal(st.pause_share_window_ms, 1000);
      assert.ok(Number(st.earlyCheckpoints) > 0, 'held outputs started checkpoints');
      assert.ok(typeof st.pauseShare === 'number' && st.pauseShare >= 0 && st.pauseShare <= 1);
    } finally {
      p.kill('SIGTERM');
      await new Promise((r) => p.once('exit', r));
    }
  });
  /**
   * A guest whose dirtied pages grow less than linearly with the interval (a working set of W
   * pages written at r pages/ms), a pause of fixedMs + perPageMs × pages with ±30 % noise (a
   * tenth of samples ±150 %); the adaptive interval is fed what each of its choices costs.
   */
  const feed = (o: { W: number; r: number; fixedMs: number; perPageMs: number; share: number; maxMs: number }) => {
    const ai = new AdaptiveInterval(5, o.maxMs, o.share);
    const rng = new Prng(58);
    const chosen: number[] = [];
    let paused = 0,
      ran = 0;
    for (let k = 0; k < 300; k++) {
      const i = ai.intervalMs,
        pages = o.W * (1 - Math.exp((-o.r * i) / o.W));
      const noise = 0.3 * (2 * rng.float() - 1) * (rng.chance(0.1) ? 5 : 1);
      const pause = Math.max(0, (o.fixedMs + o.perPageMs * pages) * (1 + noise));
      ai.observe(pause, pages, i);
      assert.ok(ai.intervalMs >= 5 && ai.intervalMs <= o.maxMs, `interval ${ai.intervalMs} out of [5, ${o.maxMs}]`);
      if (k < 100) continue; // settling
      paused += pause;
      ran += i;
      chosen.push(i);
    }
    chosen.sort((a, b) => a - b);
    return { share: paused / ran, p50: chosen[150], model: ai.model() };
  };
  /** The shortest interval whose noiseless share is within the bound (what the choice should find). */
  const best = (o: { W: number; r: number; fixedMs: number; perPageMs: number; share: number; maxMs: number }) => {
    for (let i = 5; i <= o.maxMs; i += 0.25)
      if ((o.fixedMs + o.perPageMs * o.W * (1 - Math.exp((-o.r * i) / o.W))) / i <= o.share) return i;
    return o.maxMs;
  };

  it('58.8 --interval auto: the shortest interval within the pause share, from the fixed and per-page costs', () => {
    const cases = [
      { W: 1e9, r: 5, fixedMs: 2, perPageMs: 0.01, share: 0.1, maxMs: 1000 }, // linear: 2 / (0.1 − 0.05) = 40
      { W: 3000, r: 20, fixedMs: 1, perPageMs: 0.002, share: 0.1, maxMs: 100 },
      { W: 20000, r: 50, fixedMs: 0.5, perPageMs: 0.004, share: 0.1, maxMs: 2000 }, // per-page part alone at 0.2
      { W: 3000, r: 20, fixedMs: 1, perPageMs: 0.002, share: 0.25, maxMs: 100 },
    ];
    for (const c of cases) {
      const got = feed(c),
        want = best(c);
      const what =
        `${JSON.stringify(c)}: median ${got.p50.toFixed(1)} ms, best ${want} ms, ` + `share ${got.share.toFixed(3)}`;
      assert.ok(Math.abs(got.p50 - want) <= 0.2 * want, what);
      assert.ok(got.share <= c.share * 1.1, what);
    }
    assert.ok(Math.abs(feed(cases[0]).model.fixedMs - 2) < 0.5, 'the fixed part is found');
    // Nothing fixed: the shortest allowed; per-page part alone over the share: the longest (the loss window).
    assert.equal(feed({ W: 1e9, r: 1, fixedMs: 0, perPageMs: 0.01, share: 0.1, maxMs: 100 }).p50, 5);
    assert.equal(feed({ W: 1e9, r: 50, fixedMs: 0.3, perPageMs: 0.01, share: 0.1, maxMs: 100 }).p50, 100);
    assert.throws(() => new AdaptiveInterval(10, 5, 0.1), /interval bounds/);
    assert.throws(() => new AdaptiveInterval(5, 100, 0), /max pause share/);
  });

  it('58.9 --interval auto in the engine: the timer follows the pause cost, within its bounds and the share', () => {
    const settle = (pauseMs: number | ((pages: number) => number)) => {
      const r = rig({ trigger: 'timer', intervalAuto: true, intervalMs: 100, pauseMs, maxPauseShare: 0.1 });
      r.clock.runUntil(3000);
      const starts = r.paced.filter((p) => p.at >= 2000).map((p) => p.at);
      const gaps = starts.slice(1).map((t, i) => t - starts[i]);
      let paused = 0;
      for (const [a, b] of r.pauses) paused += Math.max(0, Math.min(b, 3000) - Math.max(a, 2000));
      const st = r.primary.stats();
      assert.ok(st.intervalModel, 'status carries the model');
      assert.equal(st.intervalMs, Math.round(st.intervalModel.intervalMs));
      return { gap: mean(gaps), share: paused / 1000, interval: st.intervalMs };
    };
    const fixed3 = settle(3); // 3 ms / 0.1 = 30 ms
    assert.ok(Math.abs(fixed3.gap - 30) <= 6, `3 ms pauses: checkpoints every ${fixed3.gap} ms (want ~30)`);
    assert.ok(fixed3.share <= 0.11, `paused ${fixed3.share}`);
    const cheap = settle(0.2);
    assert.equal(cheap.interval, 5, 'cheap pauses: the shortest interval');
    const dear = settle((n) => 0.5 + n * 0.5); // half a ms per page: no interval keeps 10 %
    assert.equal(dear.interval, 100, 'the per-page part alone over the share: the loss window');
    const fixedTimer = rig({ trigger: 'timer', intervalMs: 50, pauseMs: 3 });
    fixedTimer.clock.runUntil(1000);
    assert.equal(fixedTimer.primary.stats().intervalModel, null);
    assert.equal(fixedTimer.primary.stats().intervalMs, 50);
  });

  it('58.10 --interval auto and --max-loss-window on the command line; status shows the choice', async function () {
    this.timeout(60_000);
    const interval = intOrWordOption('--interval', 1, 60000, ['auto'] as const);
    assert.equal(interval('auto'), 'auto');
    assert.equal(interval('40'), 40);
    for (const bad of ['Auto', 'auto1', '0', ''])
      assert.throws(() => interval(bad), isBadArgument, `--interval ${bad}`);
    const window = runCli(['protect', 'sim:t58', '-b', '--max-loss-window', '200'], 20_000);
    assert.notEqual(window.status, 0);
    assert.match(window.stderr, /--max-loss-window bounds the interval --interval auto chooses/);
    const agent = runCli(
      ['agent', '--coordination', 'etcd://127.0.0.1:1', '--insecure', '-i', '20', '--max-loss-window', '80'],
      20_000,
    );
    assert.equal(agent.status, 2, agent.stderr);
    assert.match(agent.stderr, /--max-loss-window bounds the interval --interval auto chooses/);
    const env = { ...process.env, REMUSDB_RUN_DIR: tmpDir('t58a') };
    const bin = path.join(ROOT, 'bin', 'remusdb');
    const args = ['protect', 'sim:t58', '-b', '--memory', '16MiB', '--disk', '0', '--rate', '500', '--seconds', '20'];
    const auto = ['--interval', 'auto', '--max-loss-window', '80', '--trigger', 'timer', '--max-pause-share', '0.2'];
    const p = spawn(process.execPath, [bin, ...args, ...auto], { env, stdio: 'ignore' });
    try {
      let st: Record<string, unknown> | undefined;
      const model = (): Record<string, number> | undefined => st?.intervalModel as Record<string, number> | undefined;
      for (let i = 0; i < 100 && !(Number(model()?.samples) >= 16); i++) {
        await sleep(200);
        const r = spawnSync(process.execPath, [bin, 'status', '--json'], { env, encoding: 'utf8' });
        st = (JSON.parse(r.stdout || '{"processes":[]}').processes as Array<Record<string, unknown>>)[0];
      }
      assert.ok(st && model(), 'status answered with the model');
      assert.equal(st.interval, 'auto');
      assert.equal(st.max_loss_window_ms, 80);
      assert.equal(model()!.maxShare, 0.2);
      const ms = Number(st.interval_ms);
      assert.ok(ms >= 5 && ms <= 80, `interval_ms ${ms}`);
      const text = spawnSync(process.execPath, [bin, 'status'], { env, encoding: 'utf8' }).stdout;
      assert.match(text, /interval \d+ ms \(auto, 5–80: /);
    } finally {
      p.kill('SIGTERM');
      await new Promise((r) => p.once('exit', r));
    }
  });
  it('58.11 checkpoints as long as the interval: one warning that the guest is starved, not one per checkpoint', () => {
    const starved = (r: ReturnType<typeof rig>) => r.events.filter((e) => e.name === 'guest-starved');
    const slow = rig({ trigger: 'timer', intervalMs: 50, pauseMs: 80 }); // longer than the interval
    slow.clock.runUntil(3000);
    assert.equal(starved(slow).length, 1, 'said once, not per checkpoint');
    const d = starved(slow)[0].detail;
    assert.ok(Number(d.share) >= 0.5 && Number(d.pauseMs) >= 80 && d.intervalMs === 50, JSON.stringify(d));
    const line = protectLogLine('db', 'guest-starved', d, null) ?? '';
    assert.match(line, /^WARNING: db was paused \d+% of the last second: .* 80 ms.*50 ms.*raise --interval$/);
    const fine = rig({ trigger: 'timer', intervalMs: 50, pauseMs: 3 });
    fine.clock.runUntil(3000);
    assert.equal(starved(fine).length, 0, '3 ms pauses every 50 ms: nothing to say');
  });
  it("58.11b a full copy's long pause is not starvation; under --interval auto the advice is the loss window", () => {
    const starved = (r: ReturnType<typeof rig>) => r.events.filter((e) => e.name === 'guest-starved');
    // The first checkpoint copies all 128 pages and pauses 3 s (the lab's emulated Xen); the rest pause 3 ms.
    const firstLong = rig({ trigger: 'timer', intervalMs: 50, pauseMs: (n) => (n >= 128 ? 3000 : 3) });
    firstLong.clock.runUntil(6000);
    assert.ok(firstLong.acks.length > 20, `${firstLong.acks.length} checkpoints acknowledged`);
    assert.deepEqual(starved(firstLong), [], 'no warning for the full copy');
    const auto = rig({ trigger: 'timer', intervalAuto: true, intervalMs: 100, pauseMs: (n) => (n >= 128 ? 5 : 150) });
    auto.clock.runUntil(4000);
    assert.equal(starved(auto).length, 1, 'pauses longer than the loss window: said once');
    const line = protectLogLine('db', 'guest-starved', starved(auto)[0].detail, null) ?? '';
    assert.match(line, /150 ms.*--interval auto is at its longest \(the loss window\): raise --max-loss-window$/);
  });
});

// 65 net bench: `remusdb bench net` in quick mode (one 50 ms interval, short pgbench runs,
// small scale) — the JSON shape (arrays aligned with intervals_ms, cp_dscp null without a
// patched PostgreSQL), remus slower than no buffering, commit protection (pgwire, in
// userspace and in the kernel) faster than remus and holding far fewer packets, the SVG
// written. Root + PostgreSQL 15 only.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { roundOrder, whyNoNetBench } from '../dom0/bench/net-bench';
import { pgbenchLogLatencies } from '../dom0/bench/net-pg';
import { listTestbedNamespaces } from '../dom0/net/netns-testbed';
import { loadAddon } from '../dom0/native';
import { runCli } from './support/helpers';

describe('65 net bench: pgbench logs', () => {
  it('65.0 latency percentiles from pgbench per-transaction logs (one file per thread)', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'remusdb-65-'));
    // client transaction latency_us script epoch_s epoch_us
    fs.writeFileSync(path.join(dir, 'tx.1'), '0 0 1000 0 1 2\nnot a transaction\n0 1 3000 0 1 3\n'); // skipped
    const lines = Array.from({ length: 98 }, (_, i) => `1 ${i} ${2000 + i} 0 1 4`).join('\n');
    fs.writeFileSync(path.join(dir, 'tx.1.1'), `${lines}\n1 98 900000 0 1 5\n`);
    const r = pgbenchLogLatencies(fs.readdirSync(dir).map((f) => path.join(dir, f)));
    assert.equal(r.p50Ms, 2.049, 'the median of 101 latencies, across both files');
    assert.equal(r.p99Ms, 3, 'the 99th percentile: the one outlier (900 ms) is above it');
    assert.deepEqual(pgbenchLogLatencies([]), { p50Ms: Number.NaN, p99Ms: Number.NaN });
    fs.rmSync(dir, { recursive: true });
  });

  it('65.0b each round starts one series later: every series runs first once in as many rounds', () => {
    const modes = ['none', 'remus', 'cp_pgwire'];
    assert.deepEqual(roundOrder(modes, 1), modes);
    assert.deepEqual(roundOrder(modes, 2), ['remus', 'cp_pgwire', 'none']);
    assert.deepEqual(roundOrder(modes, 4), modes, 'the rotation repeats after one per series');
    const firsts = [1, 2, 3].map((r) => roundOrder(modes, r)[0]);
    assert.deepEqual([...firsts].sort(), [...modes].sort());
    assert.deepEqual(roundOrder([], 3), []);
  });
});

describe('65 net bench (root, PostgreSQL 15)', () => {
  before(function () {
    const why = whyNoNetBench();
    if (why) {
      console.log(`      skipped: ${why}`);
      this.skip();
    }
  });

  it('65.1 quick mode: JSON shape; remus < none; cp_pgwire, pg_sync_rep > remus; pgwire holds fewer', function () {
    this.timeout(600_000);
    const svg = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'remusdb-65-')), 'net.svg');
    const env = { ...process.env, REMUSDB_PG_PATCHED_BIN: '' };
    const r = runCli(
      ['bench', 'net', '--seconds', '4', '--runs', '1', '--intervals', '50', '--scale', '2', '--svg', svg, '--json'],
      600_000,
      env,
    );
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout.trim().split('\n').pop()!);
    assert.deepEqual(j.intervals_ms, [50]);
    const keys = ['tps', 'latency_ms', 'latency_p50_ms', 'latency_p99_ms', 'held_pct'];
    for (const key of [...keys, 'dom0_cpu_us_per_packet', 'net_buffer_us_per_packet']) {
      assert.deepEqual(Object.keys(j[key]).sort(), [
        'cp_dscp',
        'cp_dscp_kernel',
        'cp_pgwire',
        'cp_pgwire_kernel',
        'none',
        'pg_sync_rep',
        'remus',
      ]);
      assert.equal(j[key].cp_dscp, null, 'no patched PostgreSQL given');
      assert.equal(j[key].cp_dscp_kernel, null, 'no patched PostgreSQL given');
      const measured = [
        'none',
        'remus',
        'cp_pgwire',
        'pg_sync_rep',
        ...(loadAddon().parts.bpf ? ['cp_pgwire_kernel'] : []),
      ];
      for (const m of measured) assert.equal(j[key][m].length, 1, `${key}.${m}`);
    }
    const [none, remus, pgwire] = [j.tps.none[0], j.tps.remus[0], j.tps.cp_pgwire[0]];
    assert.ok(none > 0 && pgwire > 0, JSON.stringify(j.tps));
    assert.ok(remus < none, `remus ${remus} < none ${none}`);
    assert.ok(pgwire > remus, `cp_pgwire ${pgwire} > remus ${remus}`);
    const syncRep = j.tps.pg_sync_rep[0];
    assert.ok(
      syncRep > remus && syncRep < none * 1.2,
      `a synchronous standby: remus ${remus} < ${syncRep} ≲ none ${none}`,
    );
    assert.equal(j.held_pct.pg_sync_rep[0], 0, 'nothing buffered with PostgreSQL replicating');
    assert.ok(j.held_pct.remus[0] > 99, 'remus holds everything');
    assert.ok(j.held_pct.cp_pgwire[0] < 50, `pgwire holds a minority of packets (${j.held_pct.cp_pgwire[0]}%)`);
    if (loadAddon().parts.bpf) {
      const k = j.tps.cp_pgwire_kernel[0];
      assert.ok(k > remus, `cp_pgwire_kernel ${k} > remus ${remus}`);
      assert.ok(
        j.held_pct.cp_pgwire_kernel[0] < 50,
        `the kernel holds a minority (${j.held_pct.cp_pgwire_kernel[0]}%)`,
      );
    }
    assert.ok(j.latency_ms.cp_pgwire[0] < j.latency_ms.remus[0]);
    for (const m of ['none', 'remus', 'cp_pgwire']) {
      const [p50, p99] = [j.latency_p50_ms[m][0], j.latency_p99_ms[m][0]];
      assert.ok(p50 > 0 && p50 <= p99, `${m}: 0 < p50 ${p50} ≤ p99 ${p99} (pgbench's per-transaction log)`);
    }
    assert.ok(j.latency_p50_ms.cp_pgwire[0] < j.latency_p50_ms.remus[0], 'a commit waits less than all output');
    const plot = fs.readFileSync(svg, 'utf8');
    assert.ok(plot.startsWith('<svg') && plot.includes('CP (pgwire)') && plot.includes('<polyline'));
    assert.deepEqual(listTestbedNamespaces('rdbnb'), [], 'namespaces removed');
  });
});

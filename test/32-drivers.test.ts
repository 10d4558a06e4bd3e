// 32 drivers: the domain-driver registry (dom0/hypervisor/driver.ts, registry.ts). README's
// feature × driver table is exactly what the drivers declare; every feature a driver lacks
// is refused by protect or backup with the driver's reason; options of one driver are
// refused for another; both drivers get their engine options from one function. A driver that
// reports a crashed run of protect (its domain ran on) makes the service start holding outputs.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FEATURES, type Feature, requireFeature } from '../dom0/hypervisor/driver';
import { TABLE_BEGIN, TABLE_END, featureTable } from '../dom0/hypervisor/feature-table';
import { DRIVERS, driverForHello, driverOf, resolveDomain } from '../dom0/hypervisor/registry';
import { engineOptions } from '../dom0/service/engine-options';
import { DEVICE_STATE_BYTES_MAX } from '../dom0/limits';
import { RECORD_BODY_MAX } from '../dom0/protocol/records';
import { isRemusError, ErrorCode } from '../dom0/errors';
import { protectSimInProcess } from '../dom0/bench/bench-protect';
import { runCli, tmpDir } from './support/helpers';

const README = path.join(__dirname, '..', '..', 'README.md');

describe('32 domain drivers', () => {
  it('32.1 README carries the feature table the drivers declare, byte for byte', () => {
    const text = fs.readFileSync(README, 'utf8');
    const a = text.indexOf(TABLE_BEGIN),
      b = text.indexOf(TABLE_END);
    assert.ok(a >= 0 && b > a, 'README has the table markers');
    assert.equal(
      text.slice(a, b + TABLE_END.length),
      featureTable(),
      'README is stale: paste the output of `remusdb doctor --features`',
    );
  });

  it('32.2 every driver states every feature, and each missing one has a reason', () => {
    for (const d of DRIVERS) {
      for (const f of Object.keys(FEATURES) as Feature[]) {
        const s = d.features[f];
        assert.ok(s === true || (typeof s.reason === 'string' && s.reason.length > 10), `${d.kind} ${f}`);
        if (s === true) {
          requireFeature(d, f);
          continue;
        }
        assert.throws(
          () => requireFeature(d, f),
          (e: unknown) =>
            isRemusError(e, ErrorCode.BAD_ARGUMENT) && e.message.includes(d.kind) && e.message.includes(s.reason),
        );
      }
    }
  });

  it('32.3 the registry resolves names and HELLO kinds, and refuses what it does not know', () => {
    assert.equal(resolveDomain('sim:db-1').driver.kind, 'sim');
    assert.equal(resolveDomain('sim:db-1').name, 'db-1');
    assert.throws(
      () => resolveDomain('sim:../x'),
      (e: unknown) => isRemusError(e, ErrorCode.BAD_ARGUMENT),
    );
    if (!fs.existsSync('/dev/xen/privcmd')) {
      assert.throws(
        () => resolveDomain('db'),
        (e: unknown) => isRemusError(e, ErrorCode.NO_XEN),
      );
    }
    assert.equal(driverForHello('sim').kind, 'sim');
    assert.equal(driverForHello('xen').kind, 'xen-pv');
    assert.throws(
      () => driverForHello('hvm' as 'sim'),
      (e: unknown) => isRemusError(e, ErrorCode.HANDSHAKE),
    );
    for (const d of DRIVERS)
      assert.equal(driverForHello(d.wireKind).wireKind, d.wireKind, `${d.kind}'s replicas are served`);
  });

  it('32.4 one engineOptions: the driver supplies only what differs (heartbeat, device state)', () => {
    const c = {
      intervalMs: 50,
      compressor: 'zstd' as const,
      cache: '10%',
      maxInFlight: 2,
      diskBufferBytesMax: 2 ** 28,
      verifyDisk: true,
    };
    const sim = engineOptions(driverOf('sim'), 65536, c),
      xen = engineOptions(driverOf('xen-pv'), 65536, c);
    assert.deepEqual([sim.heartbeatTimeoutMs, xen.heartbeatTimeoutMs], [200, 3000]);
    assert.deepEqual([sim.deviceStateMax, xen.deviceStateMax], [65536, 2 ** 20 + 4 * 65536]);
    const huge = engineOptions(driverOf('xen-pv'), 2 ** 24, c).deviceStateMax;
    assert.equal(huge, DEVICE_STATE_BYTES_MAX, 'a Xen skeleton is bounded by one record');
    assert.ok(DEVICE_STATE_BYTES_MAX + 8 <= RECORD_BODY_MAX, 'a DEVICE_STATE body (epoch + state) fits a record');
    const strip = (o: object): object => ({ ...o, heartbeatTimeoutMs: 0, deviceStateMax: 0 });
    assert.deepEqual(strip(sim), strip(xen), 'nothing else differs');
    assert.equal(sim.cachePages, 6553);
    assert.equal(engineOptions(driverOf('sim'), 65536, { ...c, compressor: 'none' }).cachePages, 0, 'raw: no cache');
    assert.equal(engineOptions(driverOf('sim'), 65536, { ...c, heartbeatTimeoutMs: 999 }).heartbeatTimeoutMs, 999);
  });

  it("32.5 protect refuses another driver's options, naming the driver they belong to", () => {
    const r = runCli(['protect', 'sim:x', '--blackhole', '--disk-image', __filename], 20_000);
    assert.equal(r.status, 2, r.stderr);
    assert.match(
      r.stderr,
      /--disk-image is for xen-pv domains, not sim ones: a simulated domain's disk is --disk <size>/,
    );
  });

  it('32.6 doctor names each driver with whether this host can run it', () => {
    const r = runCli(['doctor', '--json'], 30_000);
    assert.equal(r.status, 0, r.stderr);
    const caps = JSON.parse(r.stdout).capabilities as Array<{ name: string; available: boolean; reason: string }>;
    for (const d of DRIVERS) {
      const c = caps.find((x) => x.name === d.kind);
      assert.ok(c && typeof c.available === 'boolean' && c.reason.length > 0, d.kind);
    }
    assert.equal(caps.find((x) => x.name === 'sim')!.available, true, 'the addon loads here');
    assert.match(caps.find((x) => x.name === 'xen-hvm')!.reason, /device model/, 'HVM is named, with why not');
    if (!fs.existsSync('/dev/xen/privcmd')) {
      assert.match(caps.find((x) => x.name === 'xen-pv')!.reason, /privcmd is absent/);
      assert.equal(caps.find((x) => x.name === 'xen-pv')!.available, false);
    }
  });

  it('32.7 a crashed run the driver reports: protect starts holding outputs and says why; else not', async () => {
    const saved = process.env.REMUSDB_RUN_DIR;
    process.env.REMUSDB_RUN_DIR = tmpDir('run32');
    const startAs = async (crashedRunPid: number | null): Promise<{ state: string; lines: string[] }> => {
      const lines: string[] = [];
      const log = (l: string): void => void lines.push(l);
      const guest = { memoryBytes: 16 * 2 ** 20, workload: 'oltp' as const, seed: 1, stepsPerSec: 100, diskBytes: 0 };
      const svc = await protectSimInProcess({
        name: `c${crashedRunPid ?? 0}`,
        backup: { host: '127.0.0.1', port: 1 }, // nobody answers: no HELLO, no TAKEOVER
        intervalMs: 50,
        readTracking: false,
        guest,
        crashedRunPid,
        log,
      });
      const state = svc.primary.stats().state;
      await svc.stop();
      return { state, lines };
    };
    try {
      const crashed = await startAs(4242);
      assert.equal(crashed.state, 'holding');
      assert.ok(
        crashed.lines.some((l) => /pid 4242\) ended without stopping.*held until the backup answers/.test(l)),
        crashed.lines.join('\n'),
      );
      const clean = await startAs(null);
      assert.equal(clean.state, 'connecting', 'no crashed run: outputs pass until a backup answers');
      assert.ok(!clean.lines.some((l) => /ended without stopping/.test(l)));
    } finally {
      if (saved === undefined) delete process.env.REMUSDB_RUN_DIR;
      else process.env.REMUSDB_RUN_DIR = saved;
    }
  });
});

// 55 reconnect without a full copy (docs/protocol.md "Reconnect"): a real `remusdb backup` and
// `remusdb protect sim:rc` (256 MiB) talk through a TCP proxy inside this test. The proxy cuts
// the link for 2 s the way a middlebox reset does: the primary's connection is destroyed and
// new ones are refused, while the backup's connection stays open and silent (half-open); the
// heartbeat timeout (8 s) outlasts the cut, so the backup does not fail over. The primary
// reconnects through the proxy, the backup sees its lineage on the new connection, and the
// session continues: one checkpoint of the pages written since the last acknowledgement,
// verified by digests, and no full copy. A later failover resumes a state that replays exactly.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MemModelDisk, replayGuest, type Workload } from '../dom0/hypervisor/sim/guest-program';
import { loadAddon } from '../dom0/native';
import { CuttableProxy } from '../dom0/util/cuttable-proxy';
import { regionDigests, UnackedPages } from '../dom0/engine/continuation';
import { ImageCrcs } from '../dom0/engine/image-crcs';
import { GuestMemory } from '../dom0/memory/guest-memory';
import { freePort, processWorld, runCli, until } from './support/helpers';

describe('55 reconnect without a full copy', function () {
  this.timeout(180_000);
  const { dir, start, status } = processWorld('reconnect');
  const psk = path.join(dir, 'k.psk');
  let proxy: CuttableProxy | null = null;
  after(() => {
    proxy?.close();
  });

  it(
    "55.1 a 2 s cut of a 256 MiB guest's link: the session continues (no full copy), then a failover resumes a " +
      'verified state',
    async () => {
      assert.equal(runCli(['keygen', '--out', psk]).status, 0);
      const port = await freePort();
      start(['backup', '--listen', `127.0.0.1:${port}`, '--psk-file', psk, '--checksum-on-failover'], 'backup.log');
      const backupSock = `backup-${port}.sock`;
      await until(async () => fs.existsSync(path.join(dir, backupSock)), 10000, 'backup');
      proxy = new CuttableProxy(port);
      await proxy.listen();
      const journal = path.join(dir, 'primary.journal');
      const primary = start(
        [
          'protect',
          'sim:rc',
          `127.0.0.1:${proxy.port}`,
          '--psk-file',
          psk,
          '--memory',
          '256MiB',
          '--heartbeat-timeout',
          '8000',
          '--journal',
          journal,
        ],
        'primary.log',
      );
      const before = await until(
        async () => {
          const s = await status('primary-rc.sock');
          return Number(s.ackedEpoch) > 10 ? s : null;
        },
        90_000,
        'protection',
      );
      assert.equal((before.lastSessionStart as Record<string, unknown>).kind, 'full', 'the first session copies all');

      await proxy.cut(2000);
      const st = await until(
        async () => {
          const s = await status('primary-rc.sock');
          const start = s.lastSessionStart as Record<string, unknown> | null;
          return Number(s.sessions) === 2 && start?.verified === true ? s : null;
        },
        30_000,
        'a second session, acknowledged',
      );
      const start2 = st.lastSessionStart as {
        kind: string;
        reason: string;
        pages: number;
        bytes: number;
        keptEpoch: number;
        ackedEpoch: number;
      };
      assert.equal(start2.kind, 'continued', `the second session copied all: ${start2.reason}`);
      assert.ok(start2.pages > 0 && start2.keptEpoch >= start2.ackedEpoch, JSON.stringify(start2));
      // Every page written since the last ack, compressed or not, and a few records: never a copy of 256 MiB.
      const bound = 1.05 * start2.pages * 4096 + 64 * 1024;
      assert.ok(
        start2.bytes <= bound,
        `the continued checkpoint sent ${start2.bytes} bytes for ${start2.pages} pages (bound ${bound})`,
      );
      const b = await status(backupSock);
      assert.equal(b.state, 'receiving', 'the backup did not fail over');
      assert.equal((b.lastSessionStart as Record<string, unknown>).kind, 'continued');
      assert.equal(b.sessions, 2);
      assert.equal(b.continuedSessions, 1);
      assert.equal(b.replacedSessions, 1, 'the new connection replaced the half-open one');
      assert.ok(Number(b.memoryVerifiedEpoch) > 0);
      assert.match(
        fs.readFileSync(path.join(dir, 'primary.log'), 'utf8'),
        /session continues: the backup keeps checkpoint \d+/,
      );

      const acked = Number(
        (
          await until(
            async () => {
              const s = await status('primary-rc.sock');
              return Number(s.ackedEpoch) > Number(st.ackedEpoch) + 5 ? s : null;
            },
            20_000,
            'checkpoints after the reconnect',
          )
        ).ackedEpoch,
      );
      primary.kill('SIGKILL');
      const after = await until(
        async () => {
          const s = await status(backupSock);
          return s.state === 'failed-over' ? s : null;
        },
        20_000,
        'failover',
      );
      const resumed = after.resumed as { epoch: number; info: Record<string, unknown> };
      assert.ok(resumed.epoch >= acked, `resumed ${resumed.epoch}, acknowledged ${acked}`);
      const info = resumed.info;
      // the guest's 16 MiB default disk
      const disk = new MemModelDisk(Number((st.disk as { sizeBytes: number }).sizeBytes) / 4096);
      const expected = replayGuest(
        256 * 256,
        info.workload as Workload,
        Number(info.seed),
        Number(info.steps),
        undefined,
        disk,
      );
      assert.equal(
        expected.crc32c(),
        Number(info.imageCrc32c),
        'the resumed memory is the replayed guest at that checkpoint',
      );
      assert.equal(loadAddon().crc32c(disk.bytes), Number(info.diskCrc32c), 'and so is the resumed disk');
      const entry = fs
        .readFileSync(journal, 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Record<string, unknown>)
        .find((e) => e.epoch === resumed.epoch && e.seq !== undefined);
      assert.ok(
        entry && entry.steps === info.steps && entry.stateHash === info.stateHash,
        'the journal has that checkpoint',
      );
    },
  );

  it("55.3 the backup's page CRCs: read back as pages land, kept by commits, equal to reading the image", () => {
    const pages = 37,
      regionPages = 8;
    const image = GuestMemory.allocate(pages, 5); // segments of 5 pages: runs cross them
    const read = (): Uint32Array => {
      const crcs = new Uint32Array(pages);
      loadAddon().crc32cPages(
        Uint8Array.from({ length: pages * 4096 }, (_, i) => image.page(Math.floor(i / 4096))[i % 4096]),
        crcs,
      );
      return crcs;
    };
    const same = (): void =>
      assert.deepEqual(Array.from(table.digests(regionPages)), Array.from(regionDigests(read(), regionPages)));
    const land = (pfns: number[], salt: number): void => {
      for (const p of pfns) image.page(p).fill((p * 7 + salt) & 0xff);
      table.readPages(image, Uint32Array.from(pfns));
    };
    const table = new ImageCrcs(pages);
    assert.throws(() => table.digests(regionPages), /whole/, 'a new image: no FULL checkpoint yet');
    // A FULL checkpoint in place: round 0 in runs, a later round repeats some pages out of order.
    table.beginFull();
    land([...Array(pages).keys()], 1);
    land([30, 4, 5, 6, 0], 2);
    assert.equal(table.complete, false, 'whole only once it commits');
    table.fullCommitted();
    same();
    // An incremental commit writes pages 2 and 30 from a buffer: their CRCs follow.
    const written = new Uint8Array(2 * 4096).fill(0xab);
    image.setPage(2, written.subarray(0, 4096));
    image.setPage(30, written.subarray(4096));
    table.update([2n, 30n], 2, written);
    same();
    // A continued checkpoint decodes in place: the table stays whole.
    land([9, 10, 36], 3);
    same();
    // The next FULL checkpoint: not whole until it commits.
    table.beginFull();
    assert.throws(() => table.digests(regionPages), /whole/);
  });

  it("55.5 bench scale's row: one session, then a 2 s cut: continued, its figures read after the ack", () => {
    const r = runCli(['bench', 'scale', '--min', '256MiB', '--max', '256MiB', '--seconds', '1', '--json'], 150_000);
    assert.equal(r.status, 0, r.stderr);
    const row = JSON.parse(r.stdout.trim().split('\n').at(-1)!).rows[0];
    assert.equal(row.error, null);
    assert.equal(row.sessions, 1, 'the first copy took one session');
    assert.equal(row.reconnect, 'continued');
    assert.ok(row.reconnect_bytes > 0 && row.reconnect_dirty_bytes > 0, 'the continued checkpoint sent pages');
    const back = row.after_cut_reprotected_ms,
      hold = row.after_cut_first_hold_ms;
    assert.ok(Number.isFinite(back) && back > 0, `protected again ${back} ms after the link came back`);
    assert.ok(Number.isFinite(hold) && hold >= 0 && hold <= back, `its first hold: ${hold} ms`);
    assert.ok(Number.isFinite(row.after_cut_loop_delay_ms_max_own_backup), 'the backup read after the cut');
  });

  it('55.4 pages collected before a continued checkpoint go with it, each once, whatever is acknowledged', () => {
    const u = new UnackedPages(100, 4);
    u.add(5, Uint32Array.from([3, 40, 7]), 3);
    u.addCollected(Uint32Array.from([90, 7, 12, 0]), 4);
    u.addCollected(Uint32Array.from([12, 64, 65]), 2); // only the first two count
    assert.equal(u.pageEntries, 3 + 5);
    assert.deepEqual(Array.from(u.missingFrom(Uint32Array.from([40, 90]), 2)), [0, 3, 7, 12, 64]);
    u.acked(5); // the list of epoch 5 goes; what was collected belongs to no epoch yet
    assert.deepEqual(Array.from(u.missingFrom(new Uint32Array(0), 0)), [0, 7, 12, 64, 90]);
    u.add(6, Uint32Array.from([1, 2]), 2, true); // a continued checkpoint carries them all
    assert.deepEqual(Array.from(u.missingFrom(new Uint32Array(0), 0)), [1, 2]);
    u.addCollected(Uint32Array.from([99]), 1);
    u.clear(); // a full copy
    assert.equal(u.pageEntries, 0);
  });
});

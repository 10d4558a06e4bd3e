// 53 replicated NBD disk: the protected domain's disk served to a real NBD client (qemu-io),
// with the replicator as the server's tap. Writes reach the backup's epoch buffer tagged by
// the disk barrier, with FUA kept; applying them yields the served image; reads are tracked
// and a page equal to a read block becomes a disk reference, until a write begins there.
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { realClock } from '../dom0/engine/clock';
import { EpochBuffer } from '../blktap/epoch-buffer';
import { serveReplicatedDisk } from '../blktap/serve';
import { DW_AT_ONCE, DW_FLUSH, DW_FUA, Rec, parseDiskWrite } from '../dom0/protocol/records';
import { MemDiskTarget } from './support/sim-world';
import { tmpDir } from './support/helpers';

const MiB = 1024 * 1024;
const haveQemuIo = spawnSync('qemu-io', ['--version']).status === 0;

function qemuIo(port: number, cmds: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const args = ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), `nbd://127.0.0.1:${port}/remusdb`];
    const p = require('node:child_process').spawn('qemu-io', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    p.stderr.on('data', (d: Buffer) => {
      out += d.toString();
    });
    p.on('close', (code: number) =>
      code === 0 ? resolve(out) : reject(new Error(`qemu-io ${cmds.join('; ')}: ${out}`)),
    );
  });
}

describe('53 replicated NBD disk', function () {
  this.timeout(60000);
  before(function () {
    if (!haveQemuIo) this.skip();
  });

  it(
    '53.1 writes are forwarded tagged by epoch (FUA kept); ' + 'the backup rebuilds the image; reads become references',
    async () => {
      const dir = tmpDir('rdb-53-');
      const image = path.join(dir, 'disk.img');
      fs.writeFileSync(image, Buffer.alloc(8 * MiB));
      const d = await serveReplicatedDisk({
        image,
        host: '127.0.0.1',
        port: 0,
        clock: realClock,
        replication: { unackedBytesMax: 64 * MiB, inSync: true, readTrackingBlocksMax: 1024 },
      });
      const sent: Array<{ type: number; body: Buffer }> = [];
      try {
        await new Promise<void>((ready) =>
          d.replicator.connect(
            { backlogBytes: 0, send: (type, body) => sent.push({ type, body: Buffer.from(body) }) },
            1,
            { continues: true, differing: [] },
            ready,
            () => assert.fail('overflow'),
          ),
        );
        await qemuIo(d.port, ['write -P 0x11 1M 64k', 'write -f -P 0x22 2M 4k']);
        d.replicator.barrier(1);
        await qemuIo(d.port, ['write -P 0x33 3M 8k', 'write -z 4M 1M']);
        const all = sent.filter((s) => s.type === Rec.DISK_WRITE).map((s) => parseDiskWrite(s.body, 8 * MiB));
        assert.ok(
          all.every((w) => (w.flags & DW_AT_ONCE) === (w.epoch === 1 ? DW_AT_ONCE : 0)),
          "the session's first checkpoint's writes go at once, no later one",
        );
        for (const w of all) w.flags &= ~DW_AT_ONCE; // the epoch buffer below holds them all
        assert.ok(
          all.some((w) => w.flags === DW_FLUSH && w.epoch === 1) &&
            all.some((w) => w.flags === DW_FLUSH && w.epoch === 2),
          "the client's flushes travel too",
        );
        const writes = all.filter((w) => w.flags !== DW_FLUSH);
        assert.deepEqual(
          writes.map((w) => [w.epoch, w.offsetBytes, w.lengthBytes]),
          [
            [1, MiB, 65536],
            [1, 2 * MiB, 4096],
            [2, 3 * MiB, 8192],
            [2, 4 * MiB, MiB],
          ],
        );
        assert.equal(writes[1].flags & DW_FUA, DW_FUA, 'FUA travels with the write');
        // The backup: buffer, commit epochs 1 and 2, compare with the served image.
        const backup = new MemDiskTarget(8 * MiB);
        const buf = new EpochBuffer(64 * MiB);
        for (const w of all) buf.add(w, null);
        buf.commit(1, backup);
        assert.equal(backup.bytes[3 * MiB], 0, 'epoch 2 waits for its checkpoint');
        buf.commit(2, backup);
        assert.ok(Buffer.from(backup.bytes).equals(fs.readFileSync(image)), 'the backup disk equals the served image');
        // Read tracking through the server: a read block becomes a reference for a page equal to it.
        await qemuIo(d.port, ['read -P 0x11 1M 4k']);
        const page = fs.readFileSync(image).subarray(MiB, MiB + 4096);
        assert.deepEqual(d.replicator.references(page, 2)?.[0]?.offsetBytes, MiB);
        await qemuIo(d.port, ['write -P 0x44 1M 4k']);
        assert.equal(d.replicator.references(page, 3)?.[0] ?? null, null, 'written since: no reference');
      } finally {
        await d.close();
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  );
});

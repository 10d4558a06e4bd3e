// 48 xen disk: the replicated disk of a Xen domU off Xen — the domain configuration in the
// xl stream preamble is re-pointed at the backup's NBD device (and only its one /dev/nbdN
// disk), a free NBD device is found from sysfs, and the replica serves + attaches its disk
// at failover before the receiver's stream ends (xl creates the devices at that end).
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ErrorCode, RemusError } from '../dom0/errors';
import { REC } from '../dom0/hypervisor/xen/libxc-stream';
import { CheckpointCollector } from '../dom0/hypervisor/xen/xen-checkpoint';
import { XenReplica } from '../dom0/hypervisor/xen/xen-replica';
import type { TapEvent } from '../dom0/hypervisor/xen/disk-worker';
import { xenPvDriver } from '../dom0/hypervisor/xen/xen-driver';
import type { HelloInfo } from '../dom0/engine/hello';
import type { XenDomainInfo } from '../dom0/hypervisor/xen/xen-addon';
import { RECEIVER_BANNER, libxlStreamHeader, xlSavefileHeader } from '../dom0/hypervisor/xen/xl-stream';
import {
  flushAfterCapture,
  nbdDiskBackend,
  openXenProtectDisk,
  retargetNbdDisk,
  retargetPreamble,
  splitXlPreamble,
  waitForXenDomain,
} from '../dom0/hypervisor/xen/xen-disk';
import { freeNbdDevice } from '../dom0/hypervisor/xen/nbd-device';
import { realClock } from '../dom0/engine/clock';
import { spawnSync } from 'node:child_process';
import { Rec, parseDiskWrite } from '../dom0/protocol/records';
import { servePrimaryDisk } from '../dom0/hypervisor/xen/xen-disk';
import type { Capture, Domain } from '../dom0/ports';
import { BlockFile } from '../blktap/block-file';
import { xenRecord as record } from './support/xen-records';
import { PAGE_BYTES } from '../dom0/limits';
import { capturedPages } from '../dom0/engine/captured-pages';

const CONFIG = {
  c_info: { type: 'pv', name: 'vm' },
  disks: [
    { pdev_path: '/dev/nbd0', vdev: 'xvdb', backend: 'qdisk', format: 'raw', readwrite: 1, direct_io_safe: true },
    { pdev_path: '/tmp/hook.img', vdev: 'xvdc', backend: 'qdisk', format: 'raw' },
  ],
};

describe('48 xen disk', () => {
  it("48.1 re-points the one /dev/nbdN disk of the preamble's configuration, the rest byte for byte", () => {
    const tail = Buffer.concat([libxlStreamHeader(), Buffer.from('libxc headers follow')]);
    const pre = Buffer.concat([xlSavefileHeader(JSON.stringify(CONFIG)), tail]);
    const r = retargetPreamble(pre, '/dev/nbd3');
    assert.equal(r.vdev, 'xvdb');
    assert.equal(r.from, '/dev/nbd0');
    const { json, rest } = splitXlPreamble(r.preamble);
    assert.deepEqual(rest, tail);
    const cfg = JSON.parse(json) as typeof CONFIG;
    assert.equal(cfg.disks[0].pdev_path, '/dev/nbd3');
    assert.equal(cfg.disks[1].pdev_path, '/tmp/hook.img', 'other disks untouched');
    assert.deepEqual({ ...cfg, disks: [] }, { ...CONFIG, disks: [] }, 'the rest of the configuration is kept');
    assert.equal(r.preamble.readUInt32LE(44), Buffer.byteLength(json) + 1 + 4, 'optional data length re-framed');
  });

  it('48.2 refuses configurations without exactly one NBD disk, non-NBD targets and broken headers', () => {
    const none = JSON.stringify({ disks: [{ pdev_path: '/tmp/a.img', vdev: 'xvda' }] });
    assert.throws(
      () => retargetNbdDisk(none, '/dev/nbd1'),
      (e: RemusError) => e.code === ErrorCode.XEN && /0 disks on \/dev\/nbdN/.test(e.message),
    );
    const two = JSON.stringify({ disks: [{ pdev_path: '/dev/nbd0' }, { pdev_path: '/dev/nbd1' }] });
    assert.throws(() => retargetNbdDisk(two, '/dev/nbd2'), /2 disks on \/dev\/nbdN/);
    assert.throws(
      () => retargetNbdDisk(JSON.stringify(CONFIG), '/dev/sda'),
      (e: RemusError) => e.code === ErrorCode.BAD_ARGUMENT,
    );
    assert.throws(() => retargetNbdDisk('{not json', '/dev/nbd1'), /not JSON/);
    const good = xlSavefileHeader(JSON.stringify(CONFIG));
    const badMagic = Buffer.from(good);
    badMagic[0] ^= 1;
    assert.throws(() => splitXlPreamble(badMagic), /magic/);
    assert.throws(() => splitXlPreamble(good.subarray(0, 60)), /optional data/);
    const badLen = Buffer.from(good);
    badLen.writeUInt32LE(7, 48);
    assert.throws(() => splitXlPreamble(badLen), /configuration of 7/);
  });

  it('48.3 finds the first NBD device with no connection, in numeric order', () => {
    const sys = fs.mkdtempSync(path.join(os.tmpdir(), 'remusdb-48-'));
    const dev = (n: string, size: number, pid: boolean): void => {
      fs.mkdirSync(path.join(sys, n));
      fs.writeFileSync(path.join(sys, n, 'size'), `${size}\n`);
      if (pid) fs.writeFileSync(path.join(sys, n, 'pid'), '123\n');
    };
    assert.throws(() => freeNbdDevice(sys), /modprobe nbd/);
    dev('nbd0', 131072, true);
    dev('nbd10', 0, false);
    dev('nbd2', 0, false);
    dev('sda', 0, false);
    assert.equal(freeNbdDevice(sys), '/dev/nbd2');
    assert.equal(freeNbdDevice(sys, ['/dev/nbd2']), '/dev/nbd10');
    assert.throws(() => freeNbdDevice(sys, ['/dev/nbd2', '/dev/nbd10']), /all 3 NBD devices are in use/);
    fs.rmSync(sys, { recursive: true, force: true });
  });

  it('48.4 the replica sends the re-pointed configuration and attaches its disk before the stream ends', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'remusdb-48-'));
    const out = path.join(dir, 'stream'),
      ended = path.join(dir, 'ended');
    let paused = true;
    const addon = {
      xenDomainInfo: (d: string | number): XenDomainInfo => {
        if (d !== 'vm--incoming' && d !== 41) throw new RemusError(ErrorCode.NO_DOMAIN, 'no');
        return {
          domid: 41,
          dying: false,
          shutdown: false,
          shutdownReason: 0,
          paused,
          hvm: false,
          maxMemKb: 0,
          pages: 0,
          vcpus: 1,
        };
      },
    };
    const calls: string[] = [];
    let tap: ((e: TapEvent) => void) | null = null;
    const disk = BlockFile.create(path.join(dir, 'replica.disk'), 1 << 20);
    const rx = new XenReplica('vm', 4, {
      receiver: [
        'sh',
        '-c',
        `printf '${RECEIVER_BANNER.replace('\n', '\\n')}'; cat > '${out}'; touch '${ended}'; sleep 0.3`,
      ],
      addon,
      resumeTimeoutMs: 5000,
      disk,
      diskAccess: {
        freeDevice: () => {
          calls.push('free');
          return '/dev/nbd5';
        },
        serve: async (image) => {
          calls.push(`serve ${path.basename(image)}`);
          return {
            port: 4321,
            exportName: 'remusdb',
            feed: (apply) => {
              tap = apply;
              return { drain: () => {} };
            },
            close: async () => {
              calls.push('close');
            },
          };
        },
        attach: async (port, device) => {
          calls.push(`attach ${port} ${device} ended=${fs.existsSync(ended)}`);
        },
      },
    });
    assert.equal(rx.diskFile, disk, 'the replica keeps the file it was given');
    assert.equal(rx.disk?.sizeBytes, disk.sizeBytes, 'and the engine sees it through its ReplicaDisk');
    const c = new CheckpointCollector(4);
    c.startSave(Buffer.concat([xlSavefileHeader(JSON.stringify(CONFIG)), libxlStreamHeader()]));
    const pd = Buffer.alloc(16 + PAGE_BYTES, 7);
    pd.writeUInt32LE(1, 0);
    pd.writeUInt32LE(0, 4);
    pd.writeUInt32LE(2, 8);
    pd.writeUInt32LE(0, 12);
    let ck = null;
    for (const r of [record(REC.PAGE_DATA, pd), record(REC.CHECKPOINT, Buffer.alloc(0))]) {
      ck = c.add({ type: r.readUInt32LE(0), bodyLength: r.readUInt32LE(4), bytes: r }) ?? ck;
    }
    assert.ok(ck, 'one checkpoint');
    for (let i = 0; i < ck.capture.count; i++) rx.image.setPage(ck.capture.pfns[i], capturedPages(ck.capture, i, 1));
    rx.commitDeviceState(ck.capture.deviceState);
    assert.deepEqual(calls, ['free']);
    setTimeout(() => {
      paused = false;
    }, 100);
    assert.equal(rx.resumedDomain(), null, 'nothing to adopt before the failover');
    const info = await rx.resume({ lostDiskRanges: [{ offsetBytes: 3 * 4096, lengthBytes: 2 * 4096 }] });
    assert.equal(info.diskDevice, '/dev/nbd5');
    assert.equal(info.lostDiskBlocks, 2, "the discarded epochs' blocks are to be copied back");
    const resumed = rx.resumedDomain();
    assert.deepEqual([resumed?.domid, resumed?.device], [41, '/dev/nbd5'], 'a reprotection adopts domain 41');
    assert.ok(tap, "the guest's writes on the served disk reach the replica");
    (tap as (e: TapEvent) => void)({ k: 'w', off: 9 * 4096, data: new Uint8Array(4096).fill(1), fua: false });
    resumed?.disk?.barrier(1); // drains the tap, as a reprotection's first checkpoint does
    assert.equal(resumed?.disk?.replicator.bitmap.count, 3, 'a write after the failover joins the resync bitmap');
    assert.deepEqual(calls, ['free', 'serve replica.disk', 'attach 4321 /dev/nbd5 ended=false']);
    const { json } = splitXlPreamble(fs.readFileSync(out));
    assert.equal((JSON.parse(json) as typeof CONFIG).disks[0].pdev_path, '/dev/nbd5', "xl gets the backup's device");
    rx.close();
    assert.deepEqual(calls.slice(-1), ['close']);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('48.5 waits for the domain to run (not paused), bounded', async () => {
    let n = 0;
    const addon = {
      xenDomainInfo: (): XenDomainInfo => {
        n++;
        if (n < 2) throw new RemusError(ErrorCode.NO_DOMAIN, 'no');
        return {
          domid: 3,
          dying: false,
          shutdown: false,
          shutdownReason: 0,
          paused: n < 3,
          hvm: false,
          maxMemKb: 0,
          pages: 0,
          vcpus: 1,
        };
      },
    };
    await waitForXenDomain('vm', 5000, () => {}, addon);
    assert.equal(n, 3);
    const never = {
      xenDomainInfo: (): XenDomainInfo => {
        throw new RemusError(ErrorCode.NO_DOMAIN, 'no');
      },
    };
    await assert.rejects(
      waitForXenDomain('vm', 300, () => {}, never),
      (e: RemusError) => e.code === ErrorCode.NO_DOMAIN,
    );
  });

  it('48.6 with a qdisk NBD disk the capture is followed by a flush; phy needs none', async () => {
    assert.deepEqual(nbdDiskBackend(JSON.stringify(CONFIG)), { device: '/dev/nbd0', backend: 'qdisk' });
    assert.equal(nbdDiskBackend(JSON.stringify({ disks: [] })), null);
    const order: string[] = [];
    const cap: Capture = {
      pfns: new Uint32Array(0),
      count: 0,
      pages: new Uint8Array(0),
      deviceState: new Uint8Array(0),
    };
    const inner: Domain = {
      kind: 'xen',
      name: 'vm',
      pageCount: 4,
      suspend: () => {
        order.push('suspend');
      },
      resume: () => {
        order.push('resume');
      },
      capture: async () => {
        order.push('capture');
        return cap;
      },
      describe: () => ({ d: 1 }),
      fence: () => {
        order.push('fence');
      },
    };
    const d = flushAfterCapture(inner, async () => {
      await new Promise((r) => setTimeout(r, 20));
      order.push('flush');
    });
    await d.suspend();
    assert.equal(await d.capture(false), cap);
    await d.resume();
    d.fence();
    assert.deepEqual(order, ['suspend', 'capture', 'flush', 'resume', 'fence']);
    assert.deepEqual([d.kind, d.name, d.pageCount, d.describe()], ['xen', 'vm', 4, { d: 1 }]);

    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'remusdb-48-'));
    const image = path.join(dir, 'disk.img');
    fs.writeFileSync(image, Buffer.alloc(1 << 20));
    for (const backend of ['qdisk', 'phy']) {
      const cfg = JSON.stringify({ disks: [{ pdev_path: '/dev/nbd0', vdev: 'xvdb', backend }] });
      const addon = {
        xenDomainInfo: (): XenDomainInfo => ({
          domid: 9,
          dying: false,
          shutdown: false,
          shutdownReason: 0,
          paused: false,
          hvm: false,
          maxMemKb: 0,
          pages: 0,
          vcpus: 1,
        }),
        xenDomainConfigJson: (domid: number): string => {
          assert.equal(domid, 9);
          return cfg;
        },
      };
      const lines: string[] = [];
      const disk = await openXenProtectDisk(
        {
          domain: 'vm',
          waitMs: 1000,
          image,
          host: '127.0.0.1',
          port: 0,
          clock: realClock,
          unackedBytesMax: 1 << 20,
          log: (l) => lines.push(l),
        },
        addon,
      );
      assert.equal(disk.replicator.sizeBytes, 1 << 20);
      assert.equal(disk.flush !== null, backend === 'qdisk', `${backend}: flush per checkpoint`);
      assert.ok(
        lines.some((l) => l.includes(`/dev/nbd0 (${backend})`)),
        lines.join('\n'),
      );
      await disk.close();
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it(
    "48.7 the primary's NBD server answers while the main thread is blocked, and the barrier tags those " + 'writes',
    async function () {
      if (spawnSync('qemu-io', ['--version']).status !== 0) this.skip();
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'remusdb-48-'));
      const image = path.join(dir, 'disk.img');
      fs.writeFileSync(image, Buffer.alloc(1 << 20));
      const disk = await servePrimaryDisk({
        image,
        host: '127.0.0.1',
        port: 0,
        clock: realClock,
        unackedBytesMax: 4 << 20,
        log: () => {},
      });
      try {
        const sent: Array<{ type: number; body: Buffer }> = [];
        await new Promise<void>((resolve, reject) => {
          disk.replicator.connect(
            {
              send: (type, body) => {
                sent.push({ type, body: Buffer.from(body) });
              },
              backlogBytes: 0,
            },
            1,
            { continues: false },
            resolve,
            reject,
          );
        });
        // Blocks this thread (as a busy main thread would) while a client writes through the server.
        const r = spawnSync(
          'qemu-io',
          ['-f', 'raw', `nbd://127.0.0.1:${disk.port}/remusdb`, '-c', 'write -P 0xab 8192 4096'],
          { timeout: 20000 },
        );
        assert.equal(r.status, 0, `qemu-io wrote while the main thread was blocked: ${String(r.stderr)}`);
        disk.replicator.barrier(1); // drains the worker's writes first: they belong to epoch 1
        const all = sent.filter((x) => x.type === Rec.DISK_WRITE).map((x) => parseDiskWrite(x.body, 1 << 20));
        assert.deepEqual(
          all.map((w) => w.epoch),
          all.map(() => 1),
          "every record (the write, qemu-io's flush) tagged before the barrier moved the tag",
        );
        const writes = all.filter((w) => w.lengthBytes > 0);
        assert.equal(writes.length, 1);
        assert.equal(writes[0].offsetBytes, 8192);
        assert.deepEqual(writes[0].data, Buffer.alloc(4096, 0xab));
        assert.equal(
          fs
            .readFileSync(image)
            .subarray(8192, 8192 + 4096)
            .every((b) => b === 0xab),
          true,
          'written locally',
        );
      } finally {
        await disk.close();
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  );
  it('48.8 a Xen backup reuses its old disk copy of the right size only, and adopts only a resumed domain', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'remusdb-48-'));
    const old = path.join(dir, 'old.disk');
    BlockFile.create(old, 1 << 20).close();
    const hello = { kind: 'xen', domain: 'vm', pageCount: 4, pageSize: 4096, diskBytes: 1 << 20 } as HelloInfo;
    const req = { hello, diskFile: null, reuseDisk: old, checksumOnFailover: false, diskBufferBytesMax: 1 << 20 };
    const rx = xenPvDriver.replicaFor({ ...req, log: () => {} }) as XenReplica;
    try {
      assert.equal(rx.diskContinues, true, 'the session continues the old copy (only changed blocks travel)');
      assert.equal(rx.diskFile?.path, old);
      assert.throws(
        () => xenPvDriver.adopt!(rx, () => {}),
        (e: unknown) => e instanceof RemusError && e.code === ErrorCode.NO_DOMAIN && /has not resumed/.test(e.message),
        'nothing to reprotect before the failover',
      );
    } finally {
      rx.close();
    }
    const bigger = { ...hello, diskBytes: 2 << 20 };
    assert.throws(
      () => xenPvDriver.replicaFor({ ...req, hello: bigger, log: () => {} }),
      (e: unknown) =>
        e instanceof RemusError && e.code === ErrorCode.HANDSHAKE && /holds 1048576 bytes/.test(e.message),
      'an old copy of another size is refused at the handshake',
    );
    const fresh = xenPvDriver.replicaFor({
      ...req,
      reuseDisk: null,
      diskFile: path.join(dir, 'new.disk'),
      log: () => {},
    });
    assert.equal((fresh as XenReplica).diskContinues, false, 'a new disk file is copied whole');
    fresh.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

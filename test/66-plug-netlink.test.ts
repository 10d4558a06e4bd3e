// 66 plug driver plumbing: the rtnetlink messages the `plug` output buffer sends (byte
// layout), and the addon's netlinkRoute against the real kernel — a qdisc created, seen by
// tc, deleted — plus the clear error this kernel gives for sch_plug itself (it lacks the
// module; the Xen lab's dom0 kernel has it, where the plug driver's own scenario runs).
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as os from 'node:os';
import { ErrorCode, isRemusError } from '../dom0/errors';
import {
  NLM_F_ACK,
  NLM_F_CREATE,
  NLM_F_EXCL,
  NLM_F_REQUEST,
  RTM_DELQDISC,
  RTM_NEWQDISC,
  TC_H_ROOT,
  TCQ_PLUG_RELEASE_ONE,
  ifindexOf,
  plugOptions,
  qdiscMessage,
  qdiscRequest,
} from '../dom0/net/rtnetlink';
import { PlugBuffer } from '../dom0/net/plug-buffer';

const root = process.getuid?.() === 0;
const sh = (cmd: string): { status: number | null; out: string } => {
  const r = spawnSync('sh', ['-c', cmd], { encoding: 'utf8' });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
};

describe('66 plug driver plumbing', () => {
  it("66.1 a qdisc change message has the kernel's layout", () => {
    const m = qdiscMessage({
      type: RTM_NEWQDISC,
      flags: 0,
      ifindex: 7,
      handle: 0x10000,
      parent: TC_H_ROOT,
      kind: 'plug',
      options: plugOptions(TCQ_PLUG_RELEASE_ONE),
    });
    assert.equal(os.endianness(), 'LE');
    assert.equal(m.readUInt32LE(0), m.length);
    assert.equal(m.length, 16 + 20 + 12 + 12); // nlmsghdr, tcmsg, "plug\0" attr (4+5 → 12), options (4+8)
    assert.deepEqual([m.readUInt16LE(4), m.readUInt16LE(6)], [RTM_NEWQDISC, NLM_F_REQUEST | NLM_F_ACK]);
    assert.deepEqual([m.readInt32LE(20), m.readUInt32LE(24), m.readUInt32LE(28)], [7, 0x10000, TC_H_ROOT]);
    assert.deepEqual([m.readUInt16LE(36), m.readUInt16LE(38), m.toString('latin1', 40, 44), m[44]], [9, 1, 'plug', 0]);
    assert.deepEqual(
      [m.readUInt16LE(48), m.readUInt16LE(50), m.readInt32LE(52), m.readUInt32LE(56)],
      [12, 2, TCQ_PLUG_RELEASE_ONE, 0],
    );
  });

  describe('66.2 against the kernel (root)', () => {
    before(function () {
      if (!root) this.skip();
      sh('ip link del rdb66a');
      assert.equal(sh('ip link add rdb66a type veth peer name rdb66b').status, 0);
    });
    after(() => {
      if (root) sh('ip link del rdb66a');
    });

    it('creates, shows and deletes a qdisc over netlink', () => {
      const ifindex = ifindexOf('rdb66a');
      const limit = Buffer.alloc(4);
      limit.writeUInt32LE(77, 0);
      qdiscRequest(
        {
          type: RTM_NEWQDISC,
          flags: NLM_F_CREATE | NLM_F_EXCL,
          ifindex,
          handle: 0x10000,
          parent: TC_H_ROOT,
          kind: 'pfifo',
          options: limit,
        },
        'add pfifo',
      );
      assert.match(sh('tc qdisc show dev rdb66a').out, /pfifo 1: root .*limit 77p/);
      assert.throws(
        () =>
          qdiscRequest(
            {
              type: RTM_NEWQDISC,
              flags: NLM_F_CREATE | NLM_F_EXCL,
              ifindex,
              handle: 0x10000,
              parent: TC_H_ROOT,
              kind: 'pfifo',
              options: limit,
            },
            'add pfifo again',
          ),
        (e: unknown) => isRemusError(e, ErrorCode.NETBUF) && /add pfifo again: EEXIST/.test((e as Error).message),
      );
      qdiscRequest(
        { type: RTM_DELQDISC, flags: 0, ifindex, handle: 0x10000, parent: TC_H_ROOT, kind: 'pfifo', options: null },
        'delete pfifo',
      );
      assert.doesNotMatch(sh('tc qdisc show dev rdb66a').out, /pfifo 1:/);
    });

    it('a kernel without sch_plug gets a clear ERR_NETBUF; one with it holds until RELEASE_ONE', () => {
      const hasPlug = sh('tc qdisc add dev rdb66b root plug limit 1000 && tc qdisc del dev rdb66b root').status === 0;
      const gate = new PlugBuffer('rdb66a', 1 << 20);
      if (!hasPlug) {
        assert.throws(
          () => gate.install(),
          (e: unknown) => isRemusError(e, ErrorCode.NETBUF) && /no sch_plug/.test((e as Error).message),
        );
        return;
      }
      gate.install();
      gate.setPassThrough(false);
      gate.barrier(1);
      assert.equal(gate.held, 1);
      assert.throws(() => gate.barrier(2), /--max-in-flight 1/);
      gate.release(1);
      assert.equal(gate.held, 0);
      gate.close();
    });
  });
});

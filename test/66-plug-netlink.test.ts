// 66 plug driver plumbing: the rtnetlink messages the `plug` output buffer sends (byte
// layout), and the addon's netlinkRoute against the real kernel — a qdisc created, seen by
// tc, deleted — plus the clear error this kernel gives for sch_plug itself (it lacks the
// module; the Xen lab's dom0 kernel has it, where the plug driver's own scenario runs), and a
// root qdisc replaced under a stream of packets without letting one through (66.3).
import { strict as assert } from 'node:assert';
import { spawn, spawnSync } from 'node:child_process';
import * as dgram from 'node:dgram';
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
  replaceRootQdisc,
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

  // A replaced plug must never open: the guest's packets go to a closed qdisc before, during
  // and after. A pfifo with limit 0 drops whatever reaches it, so a packet that reaches the
  // receiver passed while the root had no qdisc of ours (the default one forwards).
  describe('66.3 replacing the root qdisc lets nothing pass (root)', () => {
    const NS = 'rdb66g';
    before(function () {
      if (!root) this.skip();
      sh(`ip link del rdb66c; ip link del rdb-66; ip netns del ${NS}`);
      const setup = [
        `ip netns add ${NS}`,
        `ip link add rdb66c type veth peer name rdb66d netns ${NS}`,
        'ip addr add 10.66.0.1/24 dev rdb66c && ip link set rdb66c up',
        `ip -n ${NS} addr add 10.66.0.2/24 dev rdb66d && ip -n ${NS} link set rdb66d up`,
        // ARP would be dropped too: the sender knows the receiver's address
        `ip -n ${NS} neigh add 10.66.0.1 lladdr $(cat /sys/class/net/rdb66c/address) dev rdb66d`,
        'ip link add rdb-66 type ifb && ip link set rdb-66 up',
        'tc qdisc add dev rdb-66 root handle 1: pfifo limit 0',
        'tc qdisc add dev rdb66c ingress',
        'tc filter add dev rdb66c parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev rdb-66',
      ];
      for (const c of setup) assert.equal(sh(c).status, 0, c);
    });
    after(() => {
      if (root) sh(`ip link del rdb66c; ip link del rdb-66; ip netns del ${NS}`);
    });

    it('40 replacements under a stream of packets: none reaches the receiver, the handles alternate', async () => {
      const rx = dgram.createSocket('udp4');
      let received = 0;
      rx.on('message', () => received++);
      await new Promise<void>((r) => rx.bind(9066, '10.66.0.1', r));
      const tx = spawn('ip', ['netns', 'exec', NS, process.execPath, '-e', UDP_FLOOD, '10.66.0.1']);
      try {
        await new Promise((r) => setTimeout(r, 300)); // the stream runs, and the closed pfifo drops it
        assert.equal(received, 0, 'the closed qdisc drops everything');
        const ifindex = ifindexOf('rdb-66');
        const closed = Buffer.alloc(4); // tc_fifo_qopt.limit = 0 packets
        const handles: number[] = [];
        for (let i = 0; i < 40; i++) {
          handles.push(replaceRootQdisc(ifindex, 'pfifo', closed, 'replace the pfifo'));
          await new Promise((r) => setImmediate(r));
        }
        await new Promise((r) => setTimeout(r, 200));
        assert.equal(received, 0, 'no packet passed while a qdisc was replaced');
        assert.deepEqual(handles.slice(0, 4), [0x20000, 0x10000, 0x20000, 0x10000]);
        const qdiscs = sh('tc qdisc show dev rdb-66').out.trim().split('\n');
        assert.deepEqual(
          qdiscs.map((l) => l.replace(/ refcnt \d+/, '').split(' limit')[0]),
          ['qdisc pfifo 1: root'],
        );
        // the stream did run: without the closed qdisc, it arrives
        qdiscRequest(
          { type: RTM_DELQDISC, flags: 0, ifindex, handle: 0x10000, parent: TC_H_ROOT, kind: 'pfifo', options: null },
          'delete the pfifo',
        );
        await new Promise((r) => setTimeout(r, 200));
        assert.ok(received > 0, 'the stream reaches the receiver once the pfifo is gone');
      } finally {
        tx.kill();
        rx.close();
      }
    });
  });
});

// UDP datagrams of 200 bytes, as fast as the event loop sends them, until killed.
const UDP_FLOOD = `const s = require('dgram').createSocket('udp4'); const b = Buffer.alloc(200);
const next = () => s.send(b, 9066, process.argv[1], () => setImmediate(next)); next();`;

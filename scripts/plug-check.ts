// plug-check: proves the `plug` output buffer on a kernel that has sch_plug and ifb (the
// Xen lab's dom0; this CI machine's kernel lacks sch_plug). A "guest" network namespace
// sends UDP over IPv4 and IPv6 to dom0 through a veth whose dom0 end plays the vif; the plug
// driver holds the guest's output per epoch. Checks: pass-through releases at once; nothing
// arrives while the epoch is unacknowledged (IPv4, IPv6 and the ARP/ND that must precede
// them — all protocols are redirected); after a few acknowledged checkpoints everything has
// arrived, in order. Prints one JSON line; exit 0 when every check passed. Run as root.
import { spawnSync } from 'node:child_process';
import * as dgram from 'node:dgram';
import { setupPlug } from '../dom0/net/plug-buffer';

const NS = 'rdbplug',
  VIF = 'rdbplug-h',
  GUEST_IF = 'rdbplug-g',
  IFB = 'rdbplugifb';
const sh = (cmd: string): void => {
  const r = spawnSync('sh', ['-c', cmd], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd}: ${r.stderr}`);
};
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function setupNetns(): void {
  spawnSync('sh', ['-c', `ip netns del ${NS}; ip link del ${VIF}`]);
  sh(`ip netns add ${NS} && ip link add ${VIF} type veth peer name ${GUEST_IF} && ip link set ${GUEST_IF} netns ${NS}`);
  sh(`ip addr add 10.77.0.1/24 dev ${VIF} && ip -6 addr add fd77::1/64 dev ${VIF} nodad && ip link set ${VIF} up`);
  sh(
    `ip netns exec ${NS} sh -c 'ip link set lo up; ip addr add 10.77.0.2/24 dev ${GUEST_IF}; ip -6 addr add ` +
      `fd77::2/64 dev ${GUEST_IF} nodad; ip link set ${GUEST_IF} up'`,
  );
}

/** The guest sends n datagrams per family (numbered), in the background. */
function guestSend(tag: string, n: number): void {
  const js =
    `const d=require('dgram');const s4=d.createSocket('udp4'),s6=d.createSocket('udp6');let i=0;` +
    `const t=setInterval(()=>{s4.send('${tag}4-'+i,7770,'10.77.0.1');s6.send('${tag}6-'+i,7770,'fd77::1');` +
    `if(++i>=${n}){clearInterval(t);setTimeout(()=>process.exit(0),200);}},5);`;
  spawnSync('sh', ['-c', `ip netns exec ${NS} ${process.execPath} -e "${js}" &`]);
}

async function main(): Promise<void> {
  const got: string[] = [];
  const results: Record<string, boolean | number | string> = {};
  setupNetns();
  const dev = setupPlug({ vif: VIF, ifb: IFB });
  const s4 = dgram.createSocket('udp4'),
    s6 = dgram.createSocket({ type: 'udp6', ipv6Only: true });
  await new Promise<void>((r) => s4.bind(7770, '10.77.0.1', r));
  await new Promise<void>((r) => s6.bind(7770, 'fd77::1', r));
  s4.on('message', (m) => got.push(m.toString()));
  s6.on('message', (m) => got.push(m.toString()));
  try {
    dev.gate.setPassThrough(true);
    guestSend('p', 10);
    await sleep(800);
    results.pass_through_arrived = got.length;
    dev.gate.setPassThrough(false);
    got.length = 0;
    spawnSync('sh', ['-c', `ip neigh flush dev ${VIF}; ip netns exec ${NS} ip neigh flush dev ${GUEST_IF}`]);
    guestSend('e', 20);
    await sleep(800);
    results.held_before_ack = got.length;
    // Checkpoints: suspend (barrier) then ack (release), one epoch at a time. The datagrams
    // wait in the guest for ARP/ND, which the plug held: they leave in a later epoch.
    for (let epoch = 1; epoch <= 6; epoch++) {
      dev.gate.barrier(epoch);
      dev.gate.release(epoch);
      await sleep(300);
    }
    const v4 = got.filter((g) => g.startsWith('e4-')).map((g) => Number(g.slice(3)));
    const v6 = got.filter((g) => g.startsWith('e6-')).map((g) => Number(g.slice(3)));
    results.released_v4 = v4.length;
    results.released_v6 = v6.length;
    results.in_order = v4.every((x, i) => x === i) && v6.every((x, i) => x === i);
  } finally {
    s4.close();
    s6.close();
    dev.close();
    spawnSync('sh', ['-c', `ip netns del ${NS}`]);
  }
  const ok =
    results.pass_through_arrived === 20 &&
    results.held_before_ack === 0 &&
    results.released_v4 === 20 &&
    results.released_v6 === 20 &&
    results.in_order === true;
  console.log(JSON.stringify({ ok, ...results }));
  process.exit(ok ? 0 : 1);
}

main().catch((e) => {
  console.log(JSON.stringify({ ok: false, error: (e as Error).message }));
  process.exit(1);
});

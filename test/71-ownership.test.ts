// 71 ownership: a domain's owner key in a real etcd (Debian's etcd-server), bound to the
// owner's lease — one owner at a time, a successor only once the old lease provably ended,
// ownership provable in the owner's monotonic time only, and lost for good when etcd says so.
import { strict as assert } from 'node:assert';
import { etcdClaimer } from '../dom0/coordination/etcd-claimer';
import { claimOwnership, ownerKey } from '../dom0/coordination/etcd-ownership';
import { LeaseValidity } from '../dom0/coordination/lease-validity';
import { ErrorCode, isRemusError } from '../dom0/errors';
import type { Ownership, OwnershipEvent } from '../dom0/ports';
import { type EtcdMember, haveEtcd, startEtcd, startEtcdCluster } from './support/etcd';
import { sleep, until } from './support/helpers';

describe('71 ownership', () => {
  it('71.1 a renewal proves ownership from its send instant, less drift and margin; never shortened', () => {
    const v = new LeaseValidity({ driftRateMax: 0.01, safetyMarginMs: 1000 });
    assert.equal(v.validAt(0), false, 'nothing before the first renewal');
    v.renewed(100, 5);
    assert.equal(v.validUntilMs, 100 + 5000 * 0.99 - 1000);
    assert.ok(v.validAt(4049) && !v.validAt(4050), 'valid strictly before 100 + 4950 − 1000');
    v.renewed(200, 1); // a later answer with less left does not take back what was proven
    assert.equal(v.validUntilMs, 4050);
    v.renewed(3000, 5);
    assert.equal(v.validUntilMs, 3000 + 4950 - 1000);
    v.revoked();
    assert.equal(v.validAt(3001), false, 'a revoked lease proves nothing');
  });

  describe('with a real etcd', function () {
    this.timeout(60_000);
    let etcd: EtcdMember;
    const owners: Ownership[] = [];
    before(async function () {
      if (!haveEtcd()) this.skip(); // scripts/setup.sh installs etcd-server; CI always has it
      etcd = await startEtcd('t71');
    });
    after(async () => {
      etcd?.freeze(false); // a test that failed while etcd was frozen must not hold the releases
      for (const o of owners) await o.release();
      await etcd?.stop();
    });
    const claim = async (domain: string, role: 'primary' | 'backup', more = {}): Promise<Ownership> => {
      const o = await claimOwnership({ endpoints: [etcd.endpoint], domain, role, ttlSeconds: 3, ...more });
      owners.push(o);
      return o;
    };

    it('71.2 one owner: a second claim fails with ERR_NOT_OWNER naming the holder; released, one wins', async () => {
      const a = await claim('d712', 'primary');
      assert.equal(a.key, ownerKey('d712'));
      assert.ok(a.validAt(performance.now()));
      await assert.rejects(claim('d712', 'backup'), (e: unknown) => {
        assert.ok(isRemusError(e, ErrorCode.NOT_OWNER));
        assert.match((e as Error).message, /owned by primary on .* \(pid \d+/);
        return true;
      });
      await a.release();
      assert.equal(a.validAt(performance.now()), false, 'a released owner proves nothing');
      const b = await claim('d712', 'backup');
      assert.ok(b.validAt(performance.now()));
    });

    it('71.3 the owner renews: provable well past one TTL while etcd answers', async () => {
      const a = await claim('d713', 'primary');
      const renewed: OwnershipEvent[] = [];
      a.onChange((e) => renewed.push(e));
      await sleep(4000); // more than the 3 s TTL
      assert.ok(a.validAt(performance.now()), 'still the owner');
      assert.ok(renewed.filter((e) => e.kind === 'renewed').length >= 3, `${renewed.length} renewals in 4 s`);
    });

    it('71.4 etcd frozen: the owner lapses before a successor can claim; never two owners at once', async () => {
      const a = await claim('d714', 'primary');
      const events: OwnershipEvent[] = [];
      a.onChange((e) => events.push(e));
      const waiting = claim('d714', 'backup', { waitFreeMs: 30_000 });
      etcd.freeze(true);
      const frozenAt = performance.now();
      try {
        await until(async () => !a.validAt(performance.now()), 5000, 'the owner stops proving ownership');
        // The last renewal answered was sent before the freeze: its proof ends by TTL less drift and margin
        // after that. Checked at that instant, not by when this loop noticed (a loaded host polls late).
        const proofEndsBy = frozenAt + 3 * 1000 * 0.99 - 1000;
        assert.equal(a.validAt(proofEndsBy), false, `proven past ${(a.validUntilMs - frozenAt).toFixed(0)} ms`);
        await sleep(4000); // etcd's clock moves on while frozen: the old lease is past its TTL
      } finally {
        etcd.freeze(false);
      }
      const b = await waiting;
      const at = performance.now();
      assert.ok(b.validAt(at), 'the successor owns');
      assert.equal(a.validAt(at), false, 'and the old owner proves nothing at that instant');
      await until(async () => events.some((e) => e.kind === 'lost'), 10_000, "the old owner hears it 'lost'");
      assert.equal(a.validAt(performance.now()), false, 'lost for good');
    });

    it('71.8 release with etcd frozen returns within one renewal period; the lease ends by itself', async () => {
      const a = await claim('d718', 'primary');
      etcd.freeze(true);
      const startedAt = performance.now();
      try {
        await Promise.race([a.release(), sleep(5000)]); // a hung release fails here, not by mocha's timeout
        const tookMs = performance.now() - startedAt;
        assert.ok(tookMs < 3000 / 4 + 1000, `release took ${tookMs.toFixed(0)} ms against a frozen etcd`);
        assert.equal(a.validAt(performance.now()), false, 'released: proves nothing');
        await sleep(3500); // past the TTL on etcd's clock
      } finally {
        etcd.freeze(false);
      }
      const b = await claim('d718', 'backup', { waitFreeMs: 10_000 });
      assert.ok(b.validAt(performance.now()), 'the key is free once the lease expired');
    });

    it('71.7 a takeover claim gives up when a new owner (a restarted primary) takes the key first', async () => {
      const a = await claim('d717', 'primary');
      const ended = new Promise<{ won: Ownership | null; why: string }>((resolve) =>
        etcdClaimer([etcd.endpoint], 3, () => {}).claim('d717', (won, why) => resolve({ won, why })),
      );
      await sleep(600); // the claim waits on a's lease
      await a.release();
      const c = await claim('d717', 'primary'); // the restarted primary claims at once
      const r = await ended;
      assert.equal(r.won, null, 'the takeover gave up');
      assert.match(r.why, /has a new owner, primary on .* since this claim began/);
      assert.ok(c.validAt(performance.now()), 'and the new primary owns');
    });

    it('71.5 etcd unreachable at claim time: ERR_COORDINATION, not a hang', async () => {
      await assert.rejects(
        claimOwnership({ endpoints: ['http://127.0.0.1:1'], domain: 'd715', role: 'primary', ttlSeconds: 3 }),
        (e: unknown) => isRemusError(e, ErrorCode.COORDINATION),
      );
    });
  });

  describe('with a real 3-member etcd cluster', function () {
    this.timeout(90_000);
    let members: EtcdMember[] = [];
    const owners: Ownership[] = [];
    before(async function () {
      if (!haveEtcd()) this.skip();
      members = await startEtcdCluster('c71', 3);
    });
    after(async () => {
      for (const o of owners) await o.release();
      for (const m of members) await m.stop();
    });

    it('71.6 a member crashes: no lapse; quorum lost: lapse, no claim; quorum back: renewed', async () => {
      const endpoints = members.map((m) => m.endpoint);
      // The default TTL (5 s): the member killed may be the leader, and an election under load takes a while.
      const a = await claimOwnership({ endpoints, domain: 'd716', role: 'primary', ttlSeconds: 5 });
      owners.push(a);
      const watch = async (ms: number): Promise<number> => {
        let lapses = 0;
        for (const end = performance.now() + ms; performance.now() < end; await sleep(25)) {
          if (!a.validAt(performance.now())) lapses++;
        }
        return lapses;
      };
      await members[0].kill();
      assert.equal(await watch(5000), 0, 'one member down (quorum kept): ownership provable throughout');
      await members[1].kill(); // 1 of 3: no quorum, no renewal can commit
      await until(async () => !a.validAt(performance.now()), 8000, 'the owner stops proving ownership');
      await assert.rejects(
        claimOwnership({ endpoints, domain: 'd716', role: 'backup', ttlSeconds: 3 }),
        (e: unknown) => isRemusError(e, ErrorCode.COORDINATION) || isRemusError(e, ErrorCode.NOT_OWNER),
        'no claim succeeds without quorum',
      );
      members[0].restart();
      members[1].restart();
      await until(async () => a.validAt(performance.now()), 20_000, 'renewed once quorum is back');
      // Retried for 2 s (a restarted member may miss a call's deadline); the key stays the owner's.
      await assert.rejects(
        claimOwnership({ endpoints, domain: 'd716', role: 'backup', ttlSeconds: 3, waitFreeMs: 2000 }),
        (e: unknown) => isRemusError(e, ErrorCode.NOT_OWNER) || isRemusError(e, ErrorCode.COORDINATION),
        'no claim while the owner renews',
      );
      assert.ok(a.validAt(performance.now()), "the key is still the owner's");
    });
  });
});

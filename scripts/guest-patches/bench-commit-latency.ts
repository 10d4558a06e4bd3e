// bench-commit-latency: client-side latency of a single-statement (autocommit) commit on
// the stock PostgreSQL 15.18 and on the RemusDB-patched one (commit protection = one
// protect/deprotect setsockopt pair per commit; on a stock kernel also a getsockopt and
// an SIOCOUTQNSD ioctl), both built by build-postgresql.sh, same settings, over TCP on
// loopback, no dom0 buffering. Rounds alternate between the servers; prints medians,
// 90th percentiles and the patched/stock ratio. Usage (root):
//   node dist/scripts/guest-patches/bench-commit-latency.js [commits per server, 600]
import * as path from 'node:path';
import { PgCluster } from '../../test/support/guest-pg';
import type { PgClient } from '../../test/support/guest-pgclient';

const CACHE = process.env.REMUSDB_GUEST_CACHE ?? '/var/cache/remusdb-guest';
const ROUNDS = 6;

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

async function commits(c: PgClient, n: number, tag: string, out: number[]): Promise<void> {
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    const r = await c.query(`INSERT INTO bench VALUES ('${tag}-${i}')`);
    out.push(Number(process.hrtime.bigint() - t0) / 1000);
    if (r.errors.length) throw new Error(r.errors.join('; '));
  }
}

async function main(): Promise<void> {
  const total = Number(process.argv[2] ?? 600);
  const bins = { stock: path.join(CACHE, 'pg/base-install/bin'), patched: path.join(CACHE, 'pg/patched/bin') };
  const settings = ['synchronous_commit=off'];
  const servers = {
    stock: await PgCluster.start({ bin: bins.stock, settings }),
    patched: await PgCluster.start({ bin: bins.patched, settings }),
  };
  try {
    const clients = { stock: await servers.stock.connect(), patched: await servers.patched.connect() };
    const us: Record<string, number[]> = { stock: [], patched: [] };
    for (const k of ['stock', 'patched'] as const) {
      await clients[k].query('CREATE TABLE bench (k text)');
      await commits(clients[k], 50, `warm-${k}`, []);
    }
    for (let r = 0; r < ROUNDS; r++) {
      for (const k of (r % 2 ? ['patched', 'stock'] : ['stock', 'patched']) as Array<'stock' | 'patched'>) {
        await commits(clients[k], Math.ceil(total / ROUNDS), `r${r}`, us[k]);
      }
    }
    const line = (k: string): string => {
      const s = [...us[k]].sort((a, b) => a - b);
      return (
        `${k.padEnd(8)} n=${s.length} median ${quantile(s, 0.5).toFixed(1)} µs  ` +
        `p90 ${quantile(s, 0.9).toFixed(1)} µs`
      );
    };
    console.log(line('stock'));
    console.log(line('patched'));
    const med = (k: string): number =>
      quantile(
        [...us[k]].sort((a, b) => a - b),
        0.5,
      );
    console.log(
      `patched/stock median ratio ${(med('patched') / med('stock')).toFixed(3)} ` +
        `(+${(med('patched') - med('stock')).toFixed(1)} µs)`,
    );
    clients.stock.close();
    clients.patched.close();
  } finally {
    await servers.stock.stop();
    await servers.patched.stop();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

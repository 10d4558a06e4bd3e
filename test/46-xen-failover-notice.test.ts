// 46 Xen failover notice: after a failover the backup writes the epoch it resumed from to
// the guest's xenstore key data/remusdb/failover (what the guest agent watches); a missing
// or failing xenstore-write is reported, never fatal; bad domids are programmer errors.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { announceFailover, FAILOVER_KEY } from '../dom0/hypervisor/xen/failover-notice';
import { tmpDir } from './support/helpers';

describe('46 Xen failover notice', () => {
  it('46.1 writes /local/domain/<domid>/data/remusdb/failover = epoch', () => {
    const dir = tmpDir('t46');
    const fake = path.join(dir, 'xenstore-write');
    fs.writeFileSync(fake, `#!/bin/sh\necho "$@" > ${dir}/args\n`, { mode: 0o755 });
    const lines: string[] = [];
    assert.equal(
      announceFailover(7, 1234, (l) => lines.push(l), fake),
      true,
    );
    assert.equal(fs.readFileSync(path.join(dir, 'args'), 'utf8').trim(), `/local/domain/7/${FAILOVER_KEY} 1234`);
    assert.match(lines[0], /told domain 7 it failed over/);
  });

  it('46.2 a failing or missing xenstore-write is logged, not thrown; bad arguments are assertions', () => {
    const lines: string[] = [];
    assert.equal(
      announceFailover(7, 1, (l) => lines.push(l), 'false'),
      false,
    );
    assert.equal(
      announceFailover(7, 1, (l) => lines.push(l), '/nonexistent/xenstore-write'),
      false,
    );
    assert.equal(lines.length, 2);
    assert.ok(lines.every((l) => /guest agent will not start database recovery/.test(l)));
    assert.throws(() => announceFailover(0, 1, () => {}), /domid/);
    assert.throws(() => announceFailover(7, -1, () => {}), /epoch/);
  });
});

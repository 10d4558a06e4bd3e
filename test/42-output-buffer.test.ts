// 42 output buffer: output commit semantics — per-epoch holding, strictly ordered release,
// pass-through when unprotected, a bound that drops rather than leaks, discard when fenced.
import { strict as assert } from 'node:assert';
import { OutputBuffer } from '../dom0/engine/output-buffer';

describe('42 output buffer', () => {
  it('42.1 holds outputs until their epoch is released, in order', () => {
    const out: Array<[string, number]> = [];
    const b = new OutputBuffer<string>((x, e) => out.push([x, e]));
    b.push('a');
    b.push('b');
    b.barrier(1);
    b.push('c');
    b.barrier(2);
    b.push('d');
    assert.deepEqual(out, []);
    assert.equal(b.held, 4);
    b.release(1);
    assert.deepEqual(out, [
      ['a', 1],
      ['b', 1],
    ]);
    b.release(2);
    assert.deepEqual(
      out.map((o) => o[0]),
      ['a', 'b', 'c'],
    );
    assert.equal(b.held, 1, 'd belongs to epoch 3, not released');
  });

  it('42.2 releasing a later epoch releases all earlier ones first', () => {
    const out: string[] = [];
    const b = new OutputBuffer<string>((x) => out.push(x));
    b.push('1');
    b.barrier(1);
    b.push('2');
    b.barrier(2);
    b.push('3');
    b.barrier(3);
    b.release(3);
    assert.deepEqual(out, ['1', '2', '3']);
  });

  it('42.3 barriers must come in epoch order (programmer error)', () => {
    const b = new OutputBuffer<string>(() => {});
    b.barrier(1);
    assert.throws(() => b.barrier(3), /out of order/);
  });

  it('42.4 pass-through releases everything held, then delivers at once', () => {
    const out: string[] = [];
    const b = new OutputBuffer<string>((x) => out.push(x));
    b.push('a');
    b.barrier(1);
    b.push('b');
    b.setPassThrough(true);
    assert.deepEqual(out, ['a', 'b']);
    b.push('c');
    assert.deepEqual(out, ['a', 'b', 'c']);
    assert.equal(b.held, 0);
  });

  it('42.5 past its bound it drops new outputs and counts them, never releases early', () => {
    const out: string[] = [];
    const b = new OutputBuffer<string>((x) => out.push(x), 3);
    for (const x of ['a', 'b', 'c', 'd', 'e']) b.push(x);
    assert.deepEqual(out, []);
    assert.equal(b.stats.dropped, 2);
    b.barrier(1);
    b.release(1);
    assert.deepEqual(out, ['a', 'b', 'c']);
  });

  it('42.6 discard (fenced) drops everything held', () => {
    const out: string[] = [];
    const b = new OutputBuffer<string>((x) => out.push(x));
    b.push('a');
    b.barrier(1);
    b.push('b');
    b.discard();
    b.release(5);
    assert.deepEqual(out, []);
    assert.equal(b.held, 0);
  });
});

// 01 errors: one error class with stable codes, the same from TypeScript and from C++.
import { AssertionError, strict as assert } from 'node:assert';
import { ErrorCode, errorCodeOf, isRemusError, RemusError } from '../dom0/errors';
import { checkAddonErrorCodes, loadAddon } from '../dom0/native';

describe('01 errors', () => {
  it('01.1 RemusError carries a stable code, a message and details', () => {
    const e = new RemusError(ErrorCode.BAD_TRACE, 'x: bad', { offset: 3 });
    assert.equal(e.code, 'ERR_BAD_TRACE');
    assert.equal(e.name, 'RemusError');
    assert.equal(e.details.offset, 3);
    assert.ok(isRemusError(e, ErrorCode.BAD_TRACE));
    assert.ok(!isRemusError(e, ErrorCode.IO));
    assert.ok(!isRemusError(new Error('plain')));
  });

  it('01.2 the addon throws the injected RemusError class for operating errors', () => {
    const addon = loadAddon();
    const bad = new Uint8Array(12); // header only: RAW with length 0
    assert.throws(
      () => addon.decodeBatch(bad, new Uint8Array(4096)),
      (e: unknown) =>
        e instanceof RemusError &&
        e.code === ErrorCode.BAD_PAGE_RECORD &&
        /RAW payload is not one page long/.test(e.message),
    );
  });

  it('01.3 the addon treats wrong argument types as programmer errors (TypeError)', () => {
    const addon = loadAddon();
    assert.throws(() => (addon.decodeBatch as unknown as (a: unknown) => void)('nope'), TypeError);
    assert.throws(() => new addon.SlotStore(0), RangeError);
  });

  it('01.4 a code that arrives as text becomes an ErrorCode only when it is one', () => {
    assert.equal(errorCodeOf('ERR_PEER_GONE'), ErrorCode.PEER_GONE);
    assert.equal(errorCodeOf('ERR_NO_SUCH_THING'), ErrorCode.INTERNAL);
    assert.equal(errorCodeOf(42, ErrorCode.CONTROL), ErrorCode.CONTROL);
  });

  it('01.5 RemusError chains the error it explains as cause', () => {
    const inner = new Error('ENOENT: no such file');
    const e = new RemusError(ErrorCode.IO, 'cannot open x: ENOENT', {}, { cause: inner });
    assert.equal(e.cause, inner);
    assert.ok(!('cause' in new RemusError(ErrorCode.IO, 'no cause')));
  });

  it("01.6 the addon's error codes are checked against ErrorCode at load", () => {
    const addon = loadAddon();
    assert.ok(addon.errorCodes.includes(ErrorCode.BAD_PAGE_RECORD));
    assert.doesNotThrow(() => checkAddonErrorCodes(addon.errorCodes));
    assert.throws(
      () => checkAddonErrorCodes([...addon.errorCodes, 'ERR_FROM_A_NEWER_ADDON', 'ERR_OTHER']),
      (e: unknown) => e instanceof AssertionError && /ERR_FROM_A_NEWER_ADDON, ERR_OTHER/.test(e.message),
    );
    assert.throws(() => checkAddonErrorCodes(undefined), AssertionError);
  });
});

describe('01b addon parts', () => {
  it('01b.1 the Xen part, when built, links libxenctrl and answers without Xen (no crash)', function () {
    const addon = loadAddon();
    if (!addon.parts.xen) this.skip();
    const r = addon.xenProbe!();
    assert.equal(typeof r.ok, 'boolean');
    if (!require('node:fs').existsSync('/dev/xen/privcmd')) {
      assert.equal(r.ok, false);
      assert.equal(r.errno, 2, 'ENOENT: /dev/xen/privcmd is absent');
    }
  });
});

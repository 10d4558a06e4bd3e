// xen-records: the tests' own builder of libxc migration-stream records (docs/specs
// libxc-migration-stream: u32 type, u32 body length, body padded to 8 octets), written
// independently of dom0/hypervisor/xen so that the tests check the adapter against the spec.

/** One record: type, length, body, zero padding to a multiple of 8. */
export function xenRecord(type: number, body: Buffer): Buffer {
  const r = Buffer.alloc(8 + ((body.length + 7) & ~7));
  r.writeUInt32LE(type, 0);
  r.writeUInt32LE(body.length, 4);
  body.copy(r, 8);
  return r;
}

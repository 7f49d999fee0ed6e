// NBD extended headers end to end against `vblk serve`, on an 8 GiB
// memory export and an 8 GiB sparse raw file, driven by the fuzzer's
// Session (which checks every reply: extended magic, the offset echoed,
// no simple replies, BLOCK_STATUS_EXT only when negotiated). A 5 GiB
// WRITE_ZEROES goes to the device in one request (a 64-bit effect
// length) and BLOCK_STATUS reports the zeroed range as one 5 GiB extent;
// BLOCK_STATUS with PAYLOAD_LEN answers only the context it names. A
// client that does not ask for extended headers on the same server gets
// compact replies, with extents cut below 2^32. Debian 12's qemu and
// libnbd do not speak extended headers, so no real client is used here.

import path from 'node:path';
import t, { type Test } from 'tap';
import { CMD, CMD_FLAG, NBD_ERR, STATE_HOLE, STATE_ZERO, TF } from '../src/protocol/nbd/constants.js';
import { encodeExtendedRequest, encodeRequest } from '../src/protocol/nbd/transmission-codec.js';
import type { RequestCase } from '../src/fuzz/arbitraries.js';
import { PLAIN_HANDSHAKE, Session } from '../src/fuzz/session.js';
import { serve, tempDir, vblk, type Served } from './helpers/server.js';

const GiB = 2 ** 30;
const SIZE = 8 * GiB;
const TIMEOUT = 60_000;

async function open(srv: Served, extended: boolean): Promise<Session> {
  const s = await Session.open({ path: srv.socket }, '', { ...PLAIN_HANDSHAKE, extended, meta: 'all' }, { timeoutMs: TIMEOUT });
  return s!;
}

/** A request as the session sends it (PAYLOAD_LEN where extended headers want it). */
function req(s: Session, fields: Partial<RequestCase> & Pick<RequestCase, 'type' | 'offset' | 'length'>): RequestCase {
  return s.adapt({ flags: 0, cookie: s.nextCookie(), label: `${fields.type} at ${fields.offset}`, ...fields });
}

async function one(s: Session, fields: Partial<RequestCase> & Pick<RequestCase, 'type' | 'offset' | 'length'>) {
  const [o] = await s.exchange([req(s, fields)]);
  return o;
}

async function exports(t: Test): Promise<[string, string[]][]> {
  const dir = tempDir(t);
  const found: [string, string[]][] = [['memory', [`memory:${SIZE}`]]];
  for (const format of ['raw', 'qcow2']) {
    const file = path.join(dir, `disk.${format}`);
    const r = await vblk(['create', file, '--size', String(SIZE), '--format', format]);
    if (r.code !== 0) throw new Error(r.stderr);
    found.push([format === 'raw' ? 'sparse raw' : 'qcow2', [file]]);
  }
  return found;
}

t.test('extended headers: 64-bit WRITE_ZEROES and BLOCK_STATUS, context filtering, compact clients unchanged', async (t) => {
  for (const [kind, args] of await exports(t)) {
    await t.test(kind, async (t) => {
      const srv = await serve(t, args);
      const s = await open(srv, true);
      t.teardown(() => s.close());
      t.equal(s.terms.extended, true, 'extended headers negotiated');
      t.ok(s.terms.flags & TF.BLOCK_STATUS_PAYLOAD, 'BLOCK_STATUS_PAYLOAD advertised');
      t.equal(s.terms.contexts.length, 2, 'base:allocation and qemu:allocation-depth');
      const [base, depth] = s.terms.contexts;

      const data = Buffer.alloc(64 << 10, 0xab);
      for (const offset of [4 * GiB - 32768, 6 * GiB]) {
        t.equal((await one(s, { type: CMD.WRITE, offset, length: data.length, payload: data })).errno, 0, `WRITE at ${offset}`);
        t.same((await one(s, { type: CMD.READ, offset, length: data.length })).data, data, 'reads back');
      }

      // 16 MiB arrive in pieces: the payload is put together from the queue and the socket.
      const large = Buffer.alloc(16 << 20);
      for (let i = 0; i < large.length; i += 4096) large[i] = (i >> 12) & 0xff;
      t.equal((await one(s, { type: CMD.WRITE, offset: 5 * GiB, length: large.length, payload: large })).errno, 0, 'a 16 MiB WRITE');
      t.ok((await one(s, { type: CMD.READ, offset: 5 * GiB, length: large.length })).data?.equals(large), 'reads back');

      const zeroed = await one(s, { type: CMD.WRITE_ZEROES, offset: 2 * GiB, length: 5 * GiB });
      t.equal(zeroed.errno, 0, 'one WRITE_ZEROES of 5 GiB');
      for (const offset of [4 * GiB - 32768, 6 * GiB]) {
        t.same((await one(s, { type: CMD.READ, offset, length: data.length })).data, Buffer.alloc(data.length), `zeroes at ${offset}`);
      }

      const status = await one(s, { type: CMD.BLOCK_STATUS, offset: 2 * GiB, length: 5 * GiB });
      t.equal(status.errno, 0, 'BLOCK_STATUS over 5 GiB');
      const extents = status.extents!.get(base.id)!;
      t.same(extents[0], { length: 5 * GiB, flags: STATE_HOLE | STATE_ZERO }, 'one BLOCK_STATUS_EXT extent for the whole 5 GiB hole');
      t.ok(status.extents!.has(depth.id), 'and the depth context answers too');

      const cache = s.terms.flags & TF.SEND_CACHE;
      t.equal((await one(s, { type: CMD.CACHE, offset: GiB, length: 6 * GiB })).errno, cache ? 0 : NBD_ERR.EINVAL, `CACHE of 6 GiB (${cache ? 'advertised' : 'not advertised: EINVAL'})`);
      t.equal((await one(s, { type: CMD.TRIM, offset: 2 * GiB, length: 5 * GiB })).errno, 0, 'TRIM of 5 GiB');
      t.same((await one(s, { type: CMD.READ, offset: 7 * GiB - 4096, length: 8192 })).data?.subarray(4096), Buffer.alloc(4096), 'the bytes past it are untouched (zero)');

      const onlyDepth = await one(s, { type: CMD.BLOCK_STATUS, offset: 2 * GiB, length: 5 * GiB, contextIds: [depth.id] });
      t.equal(onlyDepth.errno, 0, 'BLOCK_STATUS with PAYLOAD_LEN naming one context');
      t.same([...onlyDepth.extents!.keys()], [depth.id], 'only that context answers');
      t.same(onlyDepth.extents!.get(depth.id)!.map((e) => e.length), [5 * GiB], 'one 5 GiB extent there too (no backing chain: one depth)');
      const onlyBase = await one(s, { type: CMD.BLOCK_STATUS, offset: 0, length: SIZE, contextIds: [base.id] });
      t.same([...onlyBase.extents!.keys()], [base.id], 'or the other one');

      t.equal((await one(s, { type: CMD.BLOCK_STATUS, offset: 0, length: 4096, contextIds: [99] })).errno, NBD_ERR.EINVAL, 'an unknown context: EINVAL');
      t.equal((await one(s, { type: CMD.BLOCK_STATUS, offset: 0, length: 4096, contextIds: [base.id, base.id] })).errno, NBD_ERR.EINVAL, 'a context twice: EINVAL');
      t.equal(
        (await one(s, { type: CMD.TRIM, offset: 0, length: 64, flags: CMD_FLAG.PAYLOAD_LEN })).errno,
        NBD_ERR.EINVAL,
        'a payload on TRIM is consumed and refused',
      );
      t.equal((await one(s, { type: CMD.WRITE_ZEROES, offset: 4 * GiB, length: 5 * GiB })).errno, NBD_ERR.ENOSPC, '64-bit length past the end: ENOSPC, not wrapped');
      t.equal((await one(s, { type: CMD.READ, offset: 0, length: 4 * GiB + 512 })).errno, NBD_ERR.EINVAL, 'a READ past the maximum payload: EINVAL');
      t.equal((await one(s, { type: CMD.READ, offset: 6 * GiB, length: 4096 })).errno, 0, 'and the connection carries on');

      // Without extended headers, on the same server: compact replies as before.
      const c = await open(srv, false);
      t.teardown(() => c.close());
      t.notOk(c.terms.extended, 'no extended headers');
      t.notOk(c.terms.flags & TF.BLOCK_STATUS_PAYLOAD, 'no BLOCK_STATUS_PAYLOAD');
      const compact = await one(c, { type: CMD.BLOCK_STATUS, offset: 2 * GiB, length: 2 ** 32 - 512 });
      t.equal(compact.errno, 0, 'compact BLOCK_STATUS (a BLOCK_STATUS chunk, or the session would have thrown)');
      const first = compact.extents!.get(c.terms.contexts[0].id)![0];
      t.same(first, { length: 2 ** 32 - 512, flags: STATE_HOLE | STATE_ZERO }, 'the hole, cut at the 32-bit request');
      t.same((await one(c, { type: CMD.READ, offset: 6 * GiB, length: 512 })).data, Buffer.alloc(512), 'compact READ');
      await c.disconnect(TIMEOUT);
      await s.disconnect(TIMEOUT);
    });
  }
});

t.test('with extended headers a compact request, or a payload past the maximum, ends the connection', async (t) => {
  const srv = await serve(t, ['memory:64M']);
  const compact = await open(srv, true);
  const header = Buffer.alloc(28);
  encodeRequest(header, 0, { type: CMD.READ, flags: 0, cookie: 1n, offset: 0, length: 512 });
  compact.client.send(header, Buffer.alloc(4));
  t.ok(await compact.client.closesWithin(TIMEOUT), 'a 28-byte request after EXTENDED_HEADERS: hard disconnect');
  t.equal(compact.client.buffered, 0, 'with no reply');
  compact.close();

  const big = await open(srv, true);
  const ext = Buffer.alloc(32);
  encodeExtendedRequest(ext, 0, { type: CMD.WRITE, flags: CMD_FLAG.PAYLOAD_LEN, cookie: 1n, offset: 0, length: big.terms.maxPayload + 1 });
  big.client.send(ext);
  t.ok(await big.client.closesWithin(TIMEOUT), 'a PAYLOAD_LEN past the maximum payload: hard disconnect');
  big.close();

  // Control: the same server still serves, and a WRITE without PAYLOAD_LEN is only refused.
  const s = await open(srv, true);
  const [o] = await s.exchange([{ type: CMD.WRITE, flags: 0, cookie: s.nextCookie(), offset: 0, length: 512, label: 'WRITE without PAYLOAD_LEN' }]);
  t.equal(o.errno, NBD_ERR.EINVAL, 'WRITE without PAYLOAD_LEN: EINVAL, the connection stays');
  t.equal((await one(s, { type: CMD.READ, offset: 0, length: 512 })).errno, 0);
  await s.disconnect(TIMEOUT);
});

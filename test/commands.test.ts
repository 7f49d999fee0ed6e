// checkRequest: the protocol's own checks on a request header (unknown
// commands and flags, what was not advertised), and the device Request
// it builds; transmissionFlags: what an export's capabilities advertise.

import fc from 'fast-check';
import t from 'tap';
import { CMD, CMD_FLAG, NBD_ERR, TF } from '../src/protocol/nbd/constants.js';
import { blockStatusPayload, checkRequest, commandName, transmissionFlags, type Checked, type TransmissionTerms } from '../src/protocol/nbd/commands.js';
import { blockStatusPayloadSize, encodeBlockStatusPayload, type RequestHeader } from '../src/protocol/nbd/transmission-codec.js';
import type { Request } from '../src/device/types.js';

const ALL_CAPS = { readOnly: false, trim: true, fastZero: true, cache: true, multiConn: true };
const RO_CAPS = { readOnly: true, trim: false, fastZero: false, cache: true, multiConn: true };

/** A writable export with everything advertised, structured replies and one context. */
const FULL: TransmissionTerms = { flags: transmissionFlags(ALL_CAPS, true), structuredReplies: true, extendedHeaders: false, metaContextCount: 1 };
const READ_ONLY: TransmissionTerms = { flags: transmissionFlags(RO_CAPS, true), structuredReplies: true, extendedHeaders: false, metaContextCount: 1 };

const COMMANDS = [CMD.READ, CMD.WRITE, CMD.FLUSH, CMD.TRIM, CMD.CACHE, CMD.WRITE_ZEROES, CMD.BLOCK_STATUS];
/** Flags each command takes besides FUA. */
const VALID: Record<number, number> = {
  [CMD.READ]: CMD_FLAG.DF,
  [CMD.WRITE]: 0,
  [CMD.FLUSH]: 0,
  [CMD.TRIM]: 0,
  [CMD.CACHE]: 0,
  [CMD.WRITE_ZEROES]: CMD_FLAG.NO_HOLE | CMD_FLAG.FAST_ZERO,
  [CMD.BLOCK_STATUS]: CMD_FLAG.REQ_ONE,
};

function header(type: number, flags = 0, offset = type === CMD.FLUSH ? 0 : 4096, length = type === CMD.FLUSH ? 0 : 512): RequestHeader {
  return { magic: 0x25609513, flags, type, cookie: 1n, offset, length };
}

function errno(c: Checked): number | undefined {
  return 'errno' in c ? c.errno : undefined;
}

function request(c: Checked): Request {
  if ('errno' in c) throw new Error(`refused: ${c.message}`);
  return c.request;
}

t.test('unknown commands, RESIZE and DISC are EINVAL here', async (t) => {
  for (const type of [CMD.RESIZE, 9, 100, 0xffff]) {
    const c = checkRequest(header(type), FULL);
    t.equal(errno(c), NBD_ERR.EINVAL, `command ${type}`);
    t.ok('message' in c && c.message.length > 0, 'with a message');
  }
  // DISC never reaches the gateway: the session handles it before checkRequest.
  t.equal(errno(checkRequest(header(CMD.DISC), FULL)), NBD_ERR.EINVAL, 'DISC is not a device request');
});

t.test('every flag not valid on a command is EINVAL', async (t) => {
  for (const type of COMMANDS) {
    for (let bit = 0; bit < 16; bit++) {
      const flag = 1 << bit;
      if (flag === CMD_FLAG.FUA || VALID[type] & flag) continue;
      t.equal(errno(checkRequest(header(type, flag), FULL)), NBD_ERR.EINVAL, `${commandName(type)} with flag bit ${bit}`);
    }
  }
  t.equal(errno(checkRequest(header(CMD.WRITE, CMD_FLAG.PAYLOAD_LEN), FULL)), NBD_ERR.EINVAL, 'PAYLOAD_LEN without extended headers');
  t.equal(errno(checkRequest(header(CMD.READ, CMD_FLAG.DF | CMD_FLAG.NO_HOLE), FULL)), NBD_ERR.EINVAL, 'a valid flag does not excuse an invalid one');
});

t.test('valid flags pass on their commands', async (t) => {
  for (const type of COMMANDS) {
    for (let bit = 0; bit < 16; bit++) {
      const flag = 1 << bit;
      if (!(VALID[type] & flag)) continue;
      t.notOk(errno(checkRequest(header(type, flag), FULL)), `${commandName(type)} with flag bit ${bit}`);
    }
    t.notOk(errno(checkRequest(header(type, VALID[type] | CMD_FLAG.FUA), FULL)), `${commandName(type)} with all its flags`);
  }
});

t.test('FUA is accepted on every command', async (t) => {
  for (const type of COMMANDS) {
    const c = checkRequest(header(type, CMD_FLAG.FUA), FULL);
    t.equal(request(c).fua, true, commandName(type));
  }
  for (const type of [CMD.READ, CMD.WRITE, CMD.FLUSH, CMD.CACHE, CMD.BLOCK_STATUS]) {
    t.notOk(errno(checkRequest(header(type, CMD_FLAG.FUA), READ_ONLY)), `${commandName(type)} on a read-only export`);
  }
  const noFua = { ...FULL, flags: FULL.flags & ~TF.SEND_FUA };
  t.equal(errno(checkRequest(header(CMD.WRITE, CMD_FLAG.FUA), noFua)), NBD_ERR.EINVAL, 'but not when FUA was not advertised');
});

t.test('DF needs SEND_DF', async (t) => {
  const plain: TransmissionTerms = { flags: transmissionFlags(ALL_CAPS, false), structuredReplies: false, extendedHeaders: false, metaContextCount: 0 };
  t.notOk(plain.flags & TF.SEND_DF, 'no DF advertised without structured replies');
  t.equal(errno(checkRequest(header(CMD.READ, CMD_FLAG.DF), plain)), NBD_ERR.EINVAL, 'DF without SEND_DF');
  t.equal(request(checkRequest(header(CMD.READ, CMD_FLAG.DF), FULL)).df, true, 'DF with SEND_DF');
});

t.test('FAST_ZERO when not advertised is EINVAL', async (t) => {
  const slow = { ...FULL, flags: transmissionFlags({ ...ALL_CAPS, fastZero: false }, true) };
  t.notOk(slow.flags & TF.SEND_FAST_ZERO);
  t.equal(errno(checkRequest(header(CMD.WRITE_ZEROES, CMD_FLAG.FAST_ZERO), slow)), NBD_ERR.EINVAL);
  t.notOk(errno(checkRequest(header(CMD.WRITE_ZEROES), slow)), 'plain WRITE_ZEROES still fine');
  t.notOk(errno(checkRequest(header(CMD.WRITE_ZEROES, CMD_FLAG.NO_HOLE), slow)), 'NO_HOLE needs no advertisement');
  t.equal(errno(checkRequest(header(CMD.WRITE_ZEROES, CMD_FLAG.FAST_ZERO), READ_ONLY)), NBD_ERR.EINVAL, 'nor on a read-only export');
});

t.test('BLOCK_STATUS needs a meta context', async (t) => {
  t.equal(errno(checkRequest(header(CMD.BLOCK_STATUS), { ...FULL, metaContextCount: 0 })), NBD_ERR.EINVAL);
  t.equal(request(checkRequest(header(CMD.BLOCK_STATUS), FULL)).op, 'blockStatus');
  t.notOk(errno(checkRequest(header(CMD.BLOCK_STATUS), { ...FULL, metaContextCount: 3 })), 'any number of contexts');
});

t.test('commands not advertised are EINVAL, but writes on a read-only export pass on', async (t) => {
  const without = (flag: number): TransmissionTerms => ({ ...FULL, flags: FULL.flags & ~flag });
  t.equal(errno(checkRequest(header(CMD.FLUSH), without(TF.SEND_FLUSH))), NBD_ERR.EINVAL, 'FLUSH');
  t.equal(errno(checkRequest(header(CMD.TRIM), without(TF.SEND_TRIM))), NBD_ERR.EINVAL, 'TRIM');
  t.equal(errno(checkRequest(header(CMD.CACHE), without(TF.SEND_CACHE))), NBD_ERR.EINVAL, 'CACHE');
  t.equal(errno(checkRequest(header(CMD.WRITE_ZEROES), without(TF.SEND_WRITE_ZEROES))), NBD_ERR.EINVAL, 'WRITE_ZEROES');

  t.notOk(READ_ONLY.flags & (TF.SEND_TRIM | TF.SEND_WRITE_ZEROES), 'read-only advertises neither TRIM nor WRITE_ZEROES');
  for (const type of [CMD.WRITE, CMD.TRIM, CMD.WRITE_ZEROES]) {
    const c = checkRequest(header(type), READ_ONLY);
    t.notOk(errno(c), `${commandName(type)} on read-only goes on to the gateway (for EPERM)`);
  }
  const roNoFlush = { ...READ_ONLY, flags: READ_ONLY.flags & ~TF.SEND_FLUSH };
  t.equal(errno(checkRequest(header(CMD.FLUSH), roNoFlush)), NBD_ERR.EINVAL, 'FLUSH not advertised on read-only is still EINVAL');
  const roNoCache = { ...READ_ONLY, flags: READ_ONLY.flags & ~TF.SEND_CACHE };
  t.equal(errno(checkRequest(header(CMD.CACHE), roNoCache)), NBD_ERR.EINVAL, 'CACHE not advertised on read-only is still EINVAL');
});

t.test('FLUSH must have offset and length zero', async (t) => {
  t.notOk(errno(checkRequest(header(CMD.FLUSH, 0, 0, 0), FULL)));
  t.equal(errno(checkRequest(header(CMD.FLUSH, 0, 1, 0), FULL)), NBD_ERR.EINVAL, 'offset 1');
  t.equal(errno(checkRequest(header(CMD.FLUSH, 0, 0, 1), FULL)), NBD_ERR.EINVAL, 'length 1');
  t.equal(errno(checkRequest(header(CMD.FLUSH, 0, 2 ** 63, 0), FULL)), NBD_ERR.EINVAL, 'offset 2^63');
});

t.test('the Request it builds', async (t) => {
  const ops: [number, Request['op']][] = [
    [CMD.READ, 'read'],
    [CMD.WRITE, 'write'],
    [CMD.FLUSH, 'flush'],
    [CMD.TRIM, 'trim'],
    [CMD.CACHE, 'cache'],
    [CMD.WRITE_ZEROES, 'writeZeroes'],
    [CMD.BLOCK_STATUS, 'blockStatus'],
  ];
  for (const [type, op] of ops) t.equal(request(checkRequest(header(type), FULL)).op, op, `${commandName(type)} -> ${op}`);

  t.same(request(checkRequest(header(CMD.READ, 0, 123456789, 65536), FULL)), {
    op: 'read',
    offset: 123456789,
    length: 65536,
    fua: false,
    noHole: false,
    fastZero: false,
    reqOne: false,
    df: false,
  }, 'a plain structured read');
  t.same(request(checkRequest(header(CMD.WRITE_ZEROES, CMD_FLAG.FUA | CMD_FLAG.NO_HOLE | CMD_FLAG.FAST_ZERO, 0, 2 ** 32), FULL)), {
    op: 'writeZeroes',
    offset: 0,
    length: 2 ** 32,
    fua: true,
    noHole: true,
    fastZero: true,
    reqOne: false,
    df: false,
  }, 'write zeroes with every flag');
  const one = request(checkRequest(header(CMD.BLOCK_STATUS, CMD_FLAG.REQ_ONE), FULL));
  t.equal(one.reqOne, true, 'REQ_ONE');
  t.equal(one.df, false);
  t.equal(request(checkRequest(header(CMD.READ, CMD_FLAG.DF), FULL)).df, true, 'DF');

  const simple: TransmissionTerms = { flags: transmissionFlags(ALL_CAPS, false), structuredReplies: false, extendedHeaders: false, metaContextCount: 0 };
  t.equal(request(checkRequest(header(CMD.READ), simple)).df, true, 'without structured replies every read is DF');
  t.equal(request(checkRequest(header(CMD.READ), FULL)).df, false, 'with them only when asked');

  fc.assert(
    fc.property(fc.constantFrom(...COMMANDS), fc.nat(0xffff), fc.nat(), fc.nat(), (type, flags, offset, length) => {
      const c = checkRequest(header(type, flags, offset, length), FULL);
      if ('errno' in c) return c.errno === NBD_ERR.EINVAL;
      // Anything accepted carries only valid flags and maps them faithfully.
      const r = c.request;
      return (
        (flags & ~(CMD_FLAG.FUA | VALID[type])) === 0 &&
        r.offset === offset &&
        r.length === length &&
        r.fua === !!(flags & CMD_FLAG.FUA) &&
        r.noHole === !!(flags & CMD_FLAG.NO_HOLE) &&
        r.fastZero === !!(flags & CMD_FLAG.FAST_ZERO) &&
        r.reqOne === !!(flags & CMD_FLAG.REQ_ONE) &&
        r.df === !!(flags & CMD_FLAG.DF)
      );
    }),
    { seed: 42, numRuns: 500 },
  );
});

t.test('transmissionFlags', async (t) => {
  t.equal(
    transmissionFlags(ALL_CAPS, true),
    TF.HAS_FLAGS | TF.SEND_FLUSH | TF.SEND_FUA | TF.SEND_TRIM | TF.SEND_WRITE_ZEROES | TF.SEND_FAST_ZERO | TF.SEND_CACHE | TF.CAN_MULTI_CONN | TF.SEND_DF,
    'everything',
  );
  t.equal(transmissionFlags(RO_CAPS, false), TF.HAS_FLAGS | TF.SEND_FLUSH | TF.SEND_FUA | TF.READ_ONLY | TF.SEND_CACHE | TF.CAN_MULTI_CONN, 'read-only');
  t.equal(
    transmissionFlags({ readOnly: true, trim: true, fastZero: true, cache: false, multiConn: false }, false),
    TF.HAS_FLAGS | TF.SEND_FLUSH | TF.SEND_FUA | TF.READ_ONLY,
    'read-only hides trim and fast zero even if the device has them',
  );
  fc.assert(
    fc.property(fc.boolean(), fc.boolean(), fc.boolean(), fc.boolean(), fc.boolean(), fc.boolean(), (readOnly, trim, fastZero, cache, multiConn, sr) => {
      const f = transmissionFlags({ readOnly, trim, fastZero, cache, multiConn }, sr);
      const has = (flag: number): boolean => (f & flag) !== 0;
      return (
        has(TF.HAS_FLAGS) &&
        has(TF.SEND_FLUSH) &&
        has(TF.SEND_FUA) &&
        has(TF.READ_ONLY) === readOnly &&
        has(TF.SEND_WRITE_ZEROES) === !readOnly &&
        has(TF.SEND_TRIM) === (!readOnly && trim) &&
        has(TF.SEND_FAST_ZERO) === (!readOnly && fastZero) &&
        has(TF.SEND_CACHE) === cache &&
        has(TF.CAN_MULTI_CONN) === multiConn &&
        has(TF.SEND_DF) === sr &&
        !has(TF.ROTATIONAL | TF.SEND_RESIZE | TF.BLOCK_STATUS_PAYLOAD) &&
        f < 1 << 16
      );
    }),
    { seed: 42, numRuns: 200 },
  );
});

t.test('transmissionFlags: BLOCK_STATUS_PAYLOAD only with extended headers', async (t) => {
  t.notOk(transmissionFlags(ALL_CAPS, true) & TF.BLOCK_STATUS_PAYLOAD, 'structured replies alone');
  const ext = transmissionFlags(ALL_CAPS, true, true);
  t.ok(ext & TF.BLOCK_STATUS_PAYLOAD, 'extended headers');
  t.ok(ext & TF.SEND_DF, 'extended headers imply structured replies, so DF');
  t.equal(ext & ~TF.BLOCK_STATUS_PAYLOAD, transmissionFlags(ALL_CAPS, true), 'nothing else changes');
});

const EXTENDED: TransmissionTerms = { flags: transmissionFlags(ALL_CAPS, true, true), structuredReplies: true, extendedHeaders: true, metaContextCount: 2 };

t.test('PAYLOAD_LEN: only with extended headers, required on WRITE, allowed on BLOCK_STATUS', async (t) => {
  const P = CMD_FLAG.PAYLOAD_LEN;
  for (const type of COMMANDS) {
    t.equal(errno(checkRequest(header(type, P), FULL)), NBD_ERR.EINVAL, `${commandName(type)} with PAYLOAD_LEN, compact headers`);
  }
  t.notOk(errno(checkRequest(header(CMD.WRITE, P), EXTENDED)), 'WRITE with PAYLOAD_LEN');
  t.notOk(errno(checkRequest(header(CMD.WRITE, P | CMD_FLAG.FUA), EXTENDED)), 'and FUA');
  t.equal(errno(checkRequest(header(CMD.WRITE), EXTENDED)), NBD_ERR.EINVAL, 'WRITE without PAYLOAD_LEN');
  t.notOk(errno(checkRequest(header(CMD.BLOCK_STATUS, P), EXTENDED)), 'BLOCK_STATUS with PAYLOAD_LEN');
  t.notOk(errno(checkRequest(header(CMD.BLOCK_STATUS), EXTENDED)), 'and without');
  const noPayloadForm = { ...EXTENDED, flags: EXTENDED.flags & ~TF.BLOCK_STATUS_PAYLOAD };
  t.equal(errno(checkRequest(header(CMD.BLOCK_STATUS, P), noPayloadForm)), NBD_ERR.EINVAL, 'BLOCK_STATUS payload form not advertised');
  for (const type of [CMD.READ, CMD.FLUSH, CMD.TRIM, CMD.CACHE, CMD.WRITE_ZEROES]) {
    t.equal(errno(checkRequest(header(type, P), EXTENDED)), NBD_ERR.EINVAL, `${commandName(type)} takes no payload`);
    t.notOk(errno(checkRequest(header(type), EXTENDED)), `${commandName(type)} without one is fine`);
  }
  const big = request(checkRequest(header(CMD.WRITE_ZEROES, 0, 0, 5 * 2 ** 30), EXTENDED));
  t.equal(big.length, 5 * 2 ** 30, 'a 64-bit effect length reaches the device unchanged');
  t.equal(request(checkRequest(header(CMD.READ), EXTENDED)).df, false, 'DF only when asked, as with structured replies');
});

function bsPayload(length: number | bigint, contextIds: number[]): Buffer {
  const buf = Buffer.alloc(blockStatusPayloadSize(contextIds.length));
  encodeBlockStatusPayload(buf, 0, { length, contextIds });
  return buf;
}

t.test('blockStatusPayload: effect length and the negotiated contexts it names', async (t) => {
  const negotiated = [{ id: 1, name: 'base:allocation' }, { id: 2, name: 'qemu:allocation-depth' }];
  t.same(blockStatusPayload(bsPayload(5 * 2 ** 30, [2]), negotiated), { length: 5 * 2 ** 30, contexts: [negotiated[1]] }, 'one of two');
  t.same(blockStatusPayload(bsPayload(512, [2, 1]), negotiated), { length: 512, contexts: [negotiated[1], negotiated[0]] }, 'both, in the order asked');
  t.equal(errno(blockStatusPayload(bsPayload(512, [3]), negotiated) as Checked), NBD_ERR.EINVAL, 'an id never negotiated');
  t.equal(errno(blockStatusPayload(bsPayload(512, [1, 1]), negotiated) as Checked), NBD_ERR.EINVAL, 'an id twice');
  t.equal(errno(blockStatusPayload(bsPayload(512, []), negotiated) as Checked), NBD_ERR.EINVAL, 'no id at all');
  t.equal(errno(blockStatusPayload(Buffer.alloc(13), negotiated) as Checked), NBD_ERR.EINVAL, 'a partial id');
  t.equal(errno(blockStatusPayload(bsPayload(512, [1]), []) as Checked), NBD_ERR.EINVAL, 'nothing negotiated');
});

t.test('commandName', async (t) => {
  t.equal(commandName(CMD.WRITE_ZEROES), 'NBD_CMD_WRITE_ZEROES');
  t.equal(commandName(CMD.DISC), 'NBD_CMD_DISC');
  t.equal(commandName(42), 'command 42');
});

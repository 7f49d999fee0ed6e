// The handshake state table, driven directly with decoded events and a
// fake catalog: a writable default export '' and a read-only 'ro'. Every
// transition is checked by decoding what the table says to send.

import t, { type Test } from 'tap';
import {
  EXPORT_NAME_PADDING,
  EXPORT_NAME_REPLY_SIZE,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  INFO,
  MAX_STRING,
  META_BASE_ALLOCATION,
  OPT,
  OPTION_REPLY_HEADER_SIZE,
  OPTION_REPLY_MAGIC,
  REP,
  TF,
} from '../src/protocol/nbd/constants.js';
import {
  decodeExportNameReply,
  decodeGreeting,
  decodeInfoReply,
  decodeMetaContextReply,
  decodeOptionReplyHeader,
  decodeServerReply,
  encodeInfoRequest,
  encodeMetaContextRequest,
  isMalformed,
  type InfoReply,
  type MetaContextReply,
} from '../src/protocol/nbd/handshake-codec.js';
import { Handshake, type ExportCatalog, type ExportSummary, type Step, type TlsPolicy } from '../src/protocol/nbd/handshake.js';

const BLOCK_SIZES = { minimum: 1, preferred: 4096, maximum: 32 << 20 };

function summary(name: string, description: string, size: number, readOnly: boolean): ExportSummary {
  return {
    name,
    description,
    size,
    capabilities: { readOnly, trim: !readOnly, fastZero: !readOnly, cache: true, multiConn: true, blockSizes: { ...BLOCK_SIZES } },
  };
}

const RW = summary('', 'the default export', 64 << 20, false);
const RO = summary('ro', 'a read-only export', (1 << 20) + 512, true);

function catalog(): ExportCatalog {
  const all = [RW, RO];
  return { list: () => all, find: (name) => all.find((e) => e.name === name) };
}

interface Reply {
  option: number;
  type: number;
  payload: Buffer;
}

/** Each buffer of an options-phase step is exactly one option reply. */
function replies(step: Step): Reply[] {
  return step.send.map((buf) => {
    const h = decodeOptionReplyHeader(buf);
    if (!h || h.magic !== OPTION_REPLY_MAGIC) throw new Error('not an option reply');
    if (buf.length !== OPTION_REPLY_HEADER_SIZE + h.length) throw new Error('reply length field does not match the frame');
    return { option: h.option, type: h.type, payload: buf.subarray(OPTION_REPLY_HEADER_SIZE) };
  });
}

function infos(rs: Reply[]): InfoReply[] {
  return rs
    .filter((r) => r.type === REP.INFO)
    .map((r) => {
      const d = decodeInfoReply(r.payload);
      if (isMalformed(d)) throw new Error(d.malformed);
      return d;
    });
}

function contexts(rs: Reply[]): MetaContextReply[] {
  return rs
    .filter((r) => r.type === REP.META_CONTEXT)
    .map((r) => {
      const d = decodeMetaContextReply(r.payload);
      if (isMalformed(d)) throw new Error(d.malformed);
      return d;
    });
}

/** A handshake past the client flags. */
function options(flags = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, tls: TlsPolicy = 'off'): Handshake {
  const hs = new Handshake(catalog(), tls);
  const step = hs.receiveClientFlags(flags);
  if (step.phase !== 'options') throw new Error('client flags refused');
  return hs;
}

/** ...and with structured replies negotiated. */
function structured(): Handshake {
  const hs = options();
  const [r] = replies(hs.receiveOption(OPT.STRUCTURED_REPLY, Buffer.alloc(0)));
  if (r.type !== REP.ACK) throw new Error('structured replies refused');
  return hs;
}

const infoReq = (name: string, requests: number[] = []): Buffer => encodeInfoRequest({ name, requests });
const metaReq = (name: string, queries: string[]): Buffer => encodeMetaContextRequest({ name, queries });

/** Checks a single error reply that leaves the handshake in options. */
function expectError(t: Test, step: Step, option: number, type: number, what: string): void {
  t.equal(step.phase, 'options', `${what}: still in options`);
  const rs = replies(step);
  t.equal(rs.length, 1, `${what}: one reply`);
  t.equal(rs[0]?.option, option, `${what}: echoes the option`);
  t.equal(rs[0]?.type, type, `${what}: reply type 0x${type.toString(16)}`);
  t.ok(rs[0]?.payload.length > 0, `${what}: carries a message`);
}

function flagsOf(step: Step): number {
  const exp = infos(replies(step)).find((i) => i.type === INFO.EXPORT) as { flags: number } | undefined;
  if (!exp) throw new Error('no INFO_EXPORT');
  return exp.flags;
}

// --- greeting and client flags ----------------------------------------------

t.test('greeting offers fixed newstyle and no zeroes', async (t) => {
  const g = decodeGreeting(new Handshake(catalog()).greeting());
  t.equal(g?.handshakeFlags, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
});

t.test('known client flags lead to options', async (t) => {
  for (const flags of [0, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES]) {
    const hs = new Handshake(catalog());
    t.equal(hs.phase, 'client-flags');
    const step = hs.receiveClientFlags(flags);
    t.equal(step.phase, 'options', `flags ${flags}`);
    t.equal(hs.phase, 'options');
    t.same(step.send, [], 'nothing to send');
    t.equal(hs.noZeroes, (flags & FLAG_NO_ZEROES) !== 0, 'noZeroes remembered');
  }
});

t.test('an unknown client flag closes', async (t) => {
  for (const flags of [1 << 2, 3 | (1 << 5), 0x80000000, 0xffffffff]) {
    const hs = new Handshake(catalog());
    const step = hs.receiveClientFlags(flags);
    t.equal(step.phase, 'closed', `flags 0x${flags.toString(16)}`);
    t.equal(hs.phase, 'closed');
    t.same(step.send, []);
    t.ok(step.reason, 'with a reason for the log');
  }
});

// --- EXPORT_NAME ---------------------------------------------------------------

t.test('EXPORT_NAME of a known export enters transmission', async (t) => {
  for (const noZeroes of [true, false]) {
    const hs = options(FLAG_FIXED_NEWSTYLE | (noZeroes ? FLAG_NO_ZEROES : 0));
    const step = hs.receiveOption(OPT.EXPORT_NAME, Buffer.from(''));
    t.equal(step.phase, 'transmission');
    t.equal(hs.phase, 'transmission');
    t.equal(step.send.length, 1, 'one reply');
    const reply = step.send[0];
    t.equal(reply.length, EXPORT_NAME_REPLY_SIZE + (noZeroes ? 0 : EXPORT_NAME_PADDING), `padding ${noZeroes ? 'left out' : 'sent'}`);
    t.ok(reply.subarray(EXPORT_NAME_REPLY_SIZE).every((b) => b === 0), 'padding is zeroes');
    const d = decodeExportNameReply(reply);
    t.equal(d?.size, RW.size, 'size');
    t.ok(step.agreement, 'agreement handed over');
    t.equal(d?.flags, step.agreement?.flags, 'flags sent are the agreed flags');
    t.equal(step.agreement?.export, RW);
    t.equal(step.agreement?.structuredReplies, false);
    t.same(step.agreement?.metaContexts, []);
  }
  const ro = options().receiveOption(OPT.EXPORT_NAME, Buffer.from('ro'));
  t.equal(ro.phase, 'transmission');
  t.equal(decodeExportNameReply(ro.send[0])?.size, RO.size, "'ro' by name");
  t.ok(decodeExportNameReply(ro.send[0])!.flags & TF.READ_ONLY, "'ro' is read-only");
});

t.test('EXPORT_NAME of an unknown export closes without a reply', async (t) => {
  for (const name of ['nope', 'RO', 'x'.repeat(5000)]) {
    const hs = options();
    const step = hs.receiveOption(OPT.EXPORT_NAME, Buffer.from(name));
    t.equal(step.phase, 'closed', `'${name.slice(0, 8)}'`);
    t.same(step.send, []);
    t.ok(step.reason);
    t.notOk(step.agreement);
  }
});

// --- ABORT, LIST, unsupported options -------------------------------------------

t.test('ABORT is acknowledged and closes', async (t) => {
  const step = options().receiveOption(OPT.ABORT, Buffer.alloc(0));
  t.equal(step.phase, 'closed');
  t.same(replies(step).map((r) => [r.option, r.type, r.payload.length]), [[OPT.ABORT, REP.ACK, 0]]);
});

t.test('ABORT with data is acknowledged all the same', async (t) => {
  const step = options().receiveOption(OPT.ABORT, Buffer.from('ignored'));
  t.equal(step.phase, 'closed');
  t.same(replies(step).map((r) => [r.option, r.type]), [[OPT.ABORT, REP.ACK]], 'the spec says to ignore the data');
});

t.test('LIST names every export, then ACK', async (t) => {
  const hs = options();
  const step = hs.receiveOption(OPT.LIST, Buffer.alloc(0));
  t.equal(step.phase, 'options');
  const rs = replies(step);
  t.same(rs.map((r) => r.type), [REP.SERVER, REP.SERVER, REP.ACK]);
  t.ok(rs.every((r) => r.option === OPT.LIST), 'all for LIST');
  const servers = rs.slice(0, 2).map((r) => decodeServerReply(r.payload));
  t.same(servers, [
    { name: '', details: RW.description },
    { name: 'ro', details: RO.description },
  ]);
  t.equal(rs[2].payload.length, 0, 'ACK is empty');
  const again = hs.receiveOption(OPT.LIST, Buffer.alloc(0));
  t.equal(replies(again).length, 3, 'may be asked again');
});

t.test('LIST with data is INVALID', async (t) => {
  expectError(t, options().receiveOption(OPT.LIST, Buffer.from([0])), OPT.LIST, REP.ERR_INVALID, 'LIST with data');
});

t.test('with TLS off, STARTTLS and unknown options are UNSUP', async (t) => {
  const hs = options();
  expectError(t, hs.receiveOption(OPT.STARTTLS, Buffer.alloc(0)), OPT.STARTTLS, REP.ERR_UNSUP, 'STARTTLS');
  expectError(t, hs.receiveOption(OPT.PEEK_EXPORT, Buffer.alloc(0)), OPT.PEEK_EXPORT, REP.ERR_UNSUP, 'PEEK_EXPORT');
  expectError(t, hs.receiveOption(999, Buffer.from('payload')), 999, REP.ERR_UNSUP, 'option 999');
  expectError(t, hs.receiveOption(0, Buffer.alloc(0)), 0, REP.ERR_UNSUP, 'option 0');
  expectError(t, hs.receiveOption(0xffffffff, Buffer.alloc(0)), 0xffffffff, REP.ERR_UNSUP, 'option 2^32-1');
  const go = hs.receiveOption(OPT.GO, infoReq(''));
  t.equal(go.phase, 'transmission', 'the handshake still completes afterwards');
});

t.test('an oversized option is TOO_BIG, an oversized EXPORT_NAME closes', async (t) => {
  const hs = options();
  for (const option of [OPT.INFO, OPT.GO, OPT.LIST, OPT.SET_META_CONTEXT, 999]) {
    expectError(t, hs.receiveOption(option, null), option, REP.ERR_TOO_BIG, `option ${option}`);
  }
  const step = hs.receiveOption(OPT.EXPORT_NAME, null);
  t.equal(step.phase, 'closed');
  t.same(step.send, []);
});

// --- INFO and GO -------------------------------------------------------------------

t.test('INFO answers and stays in options; GO answers the same and enters transmission', async (t) => {
  const hs = options();
  const info = hs.receiveOption(OPT.INFO, infoReq(''));
  t.equal(info.phase, 'options');
  t.notOk(info.agreement, 'INFO agrees on nothing');
  const ri = replies(info);
  t.ok(ri.every((r) => r.option === OPT.INFO), 'replies name INFO');
  t.equal(ri[0].type, REP.INFO, 'first reply is INFO');
  t.equal(infos(ri)[0].type, INFO.EXPORT, 'and it is INFO_EXPORT');
  t.equal(ri[ri.length - 1].type, REP.ACK, 'ACK last');
  t.equal(ri.filter((r) => r.type === REP.ACK).length, 1, 'one ACK');
  const expected = TF.HAS_FLAGS | TF.SEND_FLUSH | TF.SEND_FUA | TF.SEND_TRIM | TF.SEND_WRITE_ZEROES | TF.SEND_FAST_ZERO | TF.SEND_CACHE | TF.CAN_MULTI_CONN;
  t.same(infos(ri)[0], { type: INFO.EXPORT, size: RW.size, flags: expected }, 'size and flags of the export');

  const go = hs.receiveOption(OPT.GO, infoReq(''));
  t.equal(go.phase, 'transmission');
  t.equal(hs.phase, 'transmission');
  const rg = replies(go);
  t.ok(rg.every((r) => r.option === OPT.GO), 'replies name GO');
  t.equal(infos(rg)[0].type, INFO.EXPORT, 'INFO_EXPORT first');
  t.equal(rg[rg.length - 1].type, REP.ACK, 'ACK last');
  t.same(rg[0].payload, ri[0].payload, 'INFO then GO give identical INFO_EXPORT');
  t.same(infos(rg), infos(ri), 'and identical information overall');
  t.equal(go.agreement?.export, RW);
  t.equal(go.agreement?.flags, flagsOf(go), 'the agreement has the flags the client was told');
});

t.test('INFO then GO agree after structured replies too, and for the read-only export', async (t) => {
  const hs = structured();
  const info = hs.receiveOption(OPT.INFO, infoReq('ro', [INFO.NAME]));
  const go = hs.receiveOption(OPT.GO, infoReq('ro', [INFO.NAME]));
  t.same(infos(replies(go)), infos(replies(info)));
  t.same(infos(replies(go))[0], { type: INFO.EXPORT, size: RO.size, flags: go.agreement!.flags });
});

t.test('NAME and DESCRIPTION only when asked', async (t) => {
  const types = (requests: number[]): number[] => infos(replies(options().receiveOption(OPT.INFO, infoReq('ro', requests)))).map((i) => i.type);
  t.notOk(types([]).includes(INFO.NAME), 'no NAME unasked');
  t.notOk(types([]).includes(INFO.DESCRIPTION), 'no DESCRIPTION unasked');
  t.ok(types([INFO.NAME]).includes(INFO.NAME), 'NAME when asked');
  t.notOk(types([INFO.NAME]).includes(INFO.DESCRIPTION), 'only NAME');
  t.ok(types([INFO.DESCRIPTION]).includes(INFO.DESCRIPTION), 'DESCRIPTION when asked');
  t.notOk(types([INFO.DESCRIPTION]).includes(INFO.NAME), 'only DESCRIPTION');
  t.equal(types([INFO.NAME, INFO.NAME]).filter((x) => x === INFO.NAME).length, 1, 'NAME once even if asked twice');
  t.equal(types([INFO.EXPORT]).filter((x) => x === INFO.EXPORT).length, 1, 'INFO_EXPORT once even if asked for');
  t.notOk(types([77]).includes(77), 'unknown information requests are ignored');

  const all = infos(replies(options().receiveOption(OPT.GO, infoReq('ro', [INFO.DESCRIPTION, INFO.NAME]))));
  t.same(all.find((i) => i.type === INFO.NAME), { type: INFO.NAME, name: 'ro' });
  t.same(all.find((i) => i.type === INFO.DESCRIPTION), { type: INFO.DESCRIPTION, description: RO.description });
  t.equal(all[0].type, INFO.EXPORT, 'INFO_EXPORT still first');
});

t.test('BLOCK_SIZE is 1/4096/32MiB', async (t) => {
  for (const option of [OPT.INFO, OPT.GO]) {
    const bs = infos(replies(options().receiveOption(option, infoReq('')))).filter((i) => i.type === INFO.BLOCK_SIZE);
    t.same(bs, [{ type: INFO.BLOCK_SIZE, minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024 }], `option ${option}`);
  }
});

t.test('GO or INFO for an unknown export is UNKNOWN, malformed is INVALID', async (t) => {
  const hs = options();
  expectError(t, hs.receiveOption(OPT.GO, infoReq('nope')), OPT.GO, REP.ERR_UNKNOWN, 'GO unknown');
  expectError(t, hs.receiveOption(OPT.INFO, infoReq('nope')), OPT.INFO, REP.ERR_UNKNOWN, 'INFO unknown');
  const past = infoReq('');
  past.writeUInt32BE(10, 0);
  expectError(t, hs.receiveOption(OPT.GO, past), OPT.GO, REP.ERR_INVALID, 'name length past the payload');
  expectError(t, hs.receiveOption(OPT.GO, Buffer.alloc(3)), OPT.GO, REP.ERR_INVALID, 'too short');
  expectError(t, hs.receiveOption(OPT.GO, Buffer.concat([infoReq(''), Buffer.alloc(1)])), OPT.GO, REP.ERR_INVALID, 'stray byte');
  expectError(t, hs.receiveOption(OPT.INFO, Buffer.alloc(0)), OPT.INFO, REP.ERR_INVALID, 'INFO without data');
  t.equal(hs.receiveOption(OPT.GO, infoReq('')).phase, 'transmission', 'a good GO still works');
});

// --- structured replies and flags ------------------------------------------------------

t.test('STRUCTURED_REPLY: ACK once, INVALID with data or twice', async (t) => {
  const hs = options();
  expectError(t, hs.receiveOption(OPT.STRUCTURED_REPLY, Buffer.from([1])), OPT.STRUCTURED_REPLY, REP.ERR_INVALID, 'with data');
  t.equal(hs.structuredReplies, false, 'not negotiated by the refused request');
  const first = replies(hs.receiveOption(OPT.STRUCTURED_REPLY, Buffer.alloc(0)));
  t.same(first.map((r) => [r.option, r.type]), [[OPT.STRUCTURED_REPLY, REP.ACK]]);
  t.equal(hs.structuredReplies, true);
  expectError(t, hs.receiveOption(OPT.STRUCTURED_REPLY, Buffer.alloc(0)), OPT.STRUCTURED_REPLY, REP.ERR_INVALID, 'twice');
  t.equal(hs.receiveOption(OPT.GO, infoReq('')).agreement?.structuredReplies, true, 'agreement says so');
});

/** ...and with extended headers negotiated. */
function extended(hs = options()): Handshake {
  const [r] = replies(hs.receiveOption(OPT.EXTENDED_HEADERS, Buffer.alloc(0)));
  if (r.type !== REP.ACK) throw new Error('extended headers refused');
  return hs;
}

t.test('EXTENDED_HEADERS: ACK once, INVALID with data or twice; implies structured replies', async (t) => {
  const hs = options();
  expectError(t, hs.receiveOption(OPT.EXTENDED_HEADERS, Buffer.from([0])), OPT.EXTENDED_HEADERS, REP.ERR_INVALID, 'with data');
  t.equal(hs.extendedHeaders, false, 'not negotiated by the refused request');
  const first = replies(hs.receiveOption(OPT.EXTENDED_HEADERS, Buffer.alloc(0)));
  t.same(first.map((r) => [r.option, r.type]), [[OPT.EXTENDED_HEADERS, REP.ACK]]);
  t.equal(first[0].payload.length, 0, 'the ACK has no data');
  t.equal(hs.extendedHeaders, true);
  t.equal(hs.structuredReplies, true, 'structured replies come with it');
  expectError(t, hs.receiveOption(OPT.EXTENDED_HEADERS, Buffer.alloc(0)), OPT.EXTENDED_HEADERS, REP.ERR_INVALID, 'twice');
  expectError(t, hs.receiveOption(OPT.STRUCTURED_REPLY, Buffer.alloc(0)), OPT.STRUCTURED_REPLY, REP.ERR_EXT_HEADER_REQD, 'STRUCTURED_REPLY after it');
  const go = hs.receiveOption(OPT.GO, infoReq(''));
  t.equal(go.phase, 'transmission');
  t.equal(go.agreement?.extendedHeaders, true, 'the agreement says so');
  t.equal(go.agreement?.structuredReplies, true);
  t.ok(flagsOf(go) & TF.BLOCK_STATUS_PAYLOAD, 'BLOCK_STATUS_PAYLOAD advertised');
  t.ok(flagsOf(go) & TF.SEND_DF, 'and DF');
  t.equal(flagsOf(go), go.agreement?.flags, 'the flags sent are the agreed ones');
});

t.test('EXTENDED_HEADERS after STRUCTURED_REPLY takes precedence', async (t) => {
  const hs = extended(structured());
  t.equal(hs.extendedHeaders, true);
  const go = hs.receiveOption(OPT.GO, infoReq(''));
  t.equal(go.agreement?.extendedHeaders, true);
});

t.test('without EXTENDED_HEADERS nothing changes: no BLOCK_STATUS_PAYLOAD, extendedHeaders false', async (t) => {
  for (const hs of [options(), structured()]) {
    const go = hs.receiveOption(OPT.GO, infoReq(''));
    t.notOk(flagsOf(go) & TF.BLOCK_STATUS_PAYLOAD);
    t.equal(go.agreement?.extendedHeaders, false);
  }
  t.equal(options().receiveOption(OPT.EXPORT_NAME, Buffer.alloc(0)).agreement?.extendedHeaders, false, 'EXPORT_NAME too');
});

t.test('EXPORT_NAME after EXTENDED_HEADERS closes (the client MUST NOT send it)', async (t) => {
  const step = extended().receiveOption(OPT.EXPORT_NAME, Buffer.alloc(0));
  t.equal(step.phase, 'closed');
  t.same(step.send, []);
  t.match(step.reason, /EXTENDED_HEADERS/);
});

t.test('meta contexts with extended headers alone, and INFO then GO agree', async (t) => {
  const hs = extended();
  const rs = replies(hs.receiveOption(OPT.SET_META_CONTEXT, metaReq('', [META_BASE_ALLOCATION])));
  t.same(rs.map((r) => r.type), [REP.META_CONTEXT, REP.ACK], 'SET works without STRUCTURED_REPLY');
  const info = hs.receiveOption(OPT.INFO, infoReq(''));
  const go = hs.receiveOption(OPT.GO, infoReq(''));
  t.same(infos(replies(go)), infos(replies(info)), 'the same answer');
  t.equal(go.agreement?.metaContexts.length, 1);
});

t.test('DF only with structured replies', async (t) => {
  const plain = options().receiveOption(OPT.GO, infoReq(''));
  t.notOk(flagsOf(plain) & TF.SEND_DF, 'no DF without structured replies');
  t.notOk(plain.agreement!.flags & TF.SEND_DF);
  const sr = structured().receiveOption(OPT.GO, infoReq(''));
  t.ok(flagsOf(sr) & TF.SEND_DF, 'DF with structured replies');
  t.ok(sr.agreement!.flags & TF.SEND_DF);
  const hs = structured();
  const en = hs.receiveOption(OPT.EXPORT_NAME, Buffer.alloc(0));
  t.ok(decodeExportNameReply(en.send[0])!.flags & TF.SEND_DF, 'EXPORT_NAME after structured replies too');
  t.equal(en.agreement?.structuredReplies, true);
});

t.test("'ro' is READ_ONLY without TRIM, WRITE_ZEROES or FAST_ZERO; '' is the opposite", async (t) => {
  const ro = flagsOf(structured().receiveOption(OPT.GO, infoReq('ro')));
  t.ok(ro & TF.HAS_FLAGS, 'HAS_FLAGS');
  t.ok(ro & TF.READ_ONLY, 'READ_ONLY');
  t.notOk(ro & TF.SEND_TRIM, 'no TRIM');
  t.notOk(ro & TF.SEND_WRITE_ZEROES, 'no WRITE_ZEROES');
  t.notOk(ro & TF.SEND_FAST_ZERO, 'no FAST_ZERO');
  const rw = flagsOf(structured().receiveOption(OPT.GO, infoReq('')));
  t.ok(rw & TF.HAS_FLAGS, 'HAS_FLAGS');
  t.notOk(rw & TF.READ_ONLY, 'writable');
  t.ok(rw & TF.SEND_TRIM, 'TRIM');
  t.ok(rw & TF.SEND_WRITE_ZEROES, 'WRITE_ZEROES');
  t.ok(rw & TF.SEND_FAST_ZERO, 'FAST_ZERO');
  t.ok(rw & TF.SEND_FLUSH && rw & TF.SEND_FUA, 'FLUSH and FUA');
});

// --- meta contexts --------------------------------------------------------------------------

t.test('meta-context options need structured replies', async (t) => {
  const hs = options();
  expectError(t, hs.receiveOption(OPT.LIST_META_CONTEXT, metaReq('', [])), OPT.LIST_META_CONTEXT, REP.ERR_INVALID, 'LIST');
  expectError(t, hs.receiveOption(OPT.SET_META_CONTEXT, metaReq('', [META_BASE_ALLOCATION])), OPT.SET_META_CONTEXT, REP.ERR_INVALID, 'SET');
  t.same(hs.receiveOption(OPT.GO, infoReq('')).agreement?.metaContexts, [], 'nothing selected');
});

t.test('SET selects base:allocation with a nonzero id, and GO carries it', async (t) => {
  const hs = structured();
  const step = hs.receiveOption(OPT.SET_META_CONTEXT, metaReq('', [META_BASE_ALLOCATION]));
  t.equal(step.phase, 'options');
  const rs = replies(step);
  t.same(rs.map((r) => r.type), [REP.META_CONTEXT, REP.ACK]);
  t.ok(rs.every((r) => r.option === OPT.SET_META_CONTEXT));
  const [ctx] = contexts(rs);
  t.equal(ctx.name, META_BASE_ALLOCATION);
  t.not(ctx.id, 0, 'nonzero id');
  const go = hs.receiveOption(OPT.GO, infoReq(''));
  t.same(go.agreement?.metaContexts, [{ id: ctx.id, name: META_BASE_ALLOCATION }], 'the agreement has the same id');
});

t.test('SET selects qemu:allocation-depth beside base:allocation, with distinct ids', async (t) => {
  const hs = structured();
  const rs = contexts(replies(hs.receiveOption(OPT.SET_META_CONTEXT, metaReq('', ['qemu:allocation-depth', META_BASE_ALLOCATION]))));
  t.same(rs.map((c) => c.name), ['qemu:allocation-depth', META_BASE_ALLOCATION]);
  t.not(rs[0].id, rs[1].id, 'each has its own id');
  t.ok(rs.every((c) => c.id !== 0), 'nonzero ids');
  t.same(hs.receiveOption(OPT.GO, infoReq('')).agreement?.metaContexts, rs, 'both reach the agreement');
});

t.test('SET ignores unknown namespaces and contexts, and the bare namespace', async (t) => {
  const hs = structured();
  const rs = replies(hs.receiveOption(OPT.SET_META_CONTEXT, metaReq('', ['qemu:dirty-bitmap:b', 'base:other', 'base:', META_BASE_ALLOCATION, 'x:y'])));
  t.same(contexts(rs).map((c) => c.name), [META_BASE_ALLOCATION], 'only base:allocation');
  t.equal(rs[rs.length - 1].type, REP.ACK);

  const none = replies(structured().receiveOption(OPT.SET_META_CONTEXT, metaReq('', ['base:'])));
  t.same(none.map((r) => r.type), [REP.ACK], "'base:' selects nothing in SET");
  const empty = replies(structured().receiveOption(OPT.SET_META_CONTEXT, metaReq('', [])));
  t.same(empty.map((r) => r.type), [REP.ACK], 'zero queries select nothing in SET');
  const twice = contexts(replies(structured().receiveOption(OPT.SET_META_CONTEXT, metaReq('', [META_BASE_ALLOCATION, META_BASE_ALLOCATION]))));
  t.equal(twice.length, 1, 'a context named twice is selected once');
});

t.test('LIST: zero queries list everything, base: and qemu: are wildcards, ids are zero', async (t) => {
  const hs = structured();
  const all = replies(hs.receiveOption(OPT.LIST_META_CONTEXT, metaReq('', [])));
  t.same(all.map((r) => r.type), [REP.META_CONTEXT, REP.META_CONTEXT, REP.ACK]);
  t.same(contexts(all), [
    { id: 0, name: META_BASE_ALLOCATION },
    { id: 0, name: 'qemu:allocation-depth' },
  ]);
  const qemu = replies(hs.receiveOption(OPT.LIST_META_CONTEXT, metaReq('', ['qemu:'])));
  t.same(contexts(qemu), [{ id: 0, name: 'qemu:allocation-depth' }], "'qemu:' lists qemu:allocation-depth");
  const wild = replies(hs.receiveOption(OPT.LIST_META_CONTEXT, metaReq('', ['base:'])));
  t.same(contexts(wild), [{ id: 0, name: META_BASE_ALLOCATION }], "'base:' lists base:allocation");
  const exact = replies(hs.receiveOption(OPT.LIST_META_CONTEXT, metaReq('ro', [META_BASE_ALLOCATION])));
  t.same(contexts(exact), [{ id: 0, name: META_BASE_ALLOCATION }]);
  const other = replies(hs.receiveOption(OPT.LIST_META_CONTEXT, metaReq('', ['x-unknown:'])));
  t.same(other.map((r) => r.type), [REP.ACK], 'an unknown namespace lists nothing');
  t.equal(hs.metaSelection, null, 'LIST selects nothing');
  t.same(hs.receiveOption(OPT.GO, infoReq('')).agreement?.metaContexts, [], 'and GO has no contexts');
});

t.test('a query without a namespace is INVALID', async (t) => {
  for (const option of [OPT.LIST_META_CONTEXT, OPT.SET_META_CONTEXT]) {
    for (const q of ['base', '', ':allocation']) {
      expectError(t, structured().receiveOption(option, metaReq('', [META_BASE_ALLOCATION, q])), option, REP.ERR_INVALID, `option ${option} query '${q}'`);
    }
  }
});

t.test('meta-context options: unknown export and malformed payloads', async (t) => {
  for (const option of [OPT.LIST_META_CONTEXT, OPT.SET_META_CONTEXT]) {
    const hs = structured();
    expectError(t, hs.receiveOption(option, metaReq('nope', [META_BASE_ALLOCATION])), option, REP.ERR_UNKNOWN, `option ${option} unknown export`);
    expectError(t, hs.receiveOption(option, Buffer.alloc(7)), option, REP.ERR_INVALID, `option ${option} short`);
    const lying = metaReq('', []);
    lying.writeUInt32BE(5, 4);
    expectError(t, hs.receiveOption(option, lying), option, REP.ERR_INVALID, `option ${option} query count that cannot fit`);
  }
});

t.test('SET replaces the previous selection, even when it fails', async (t) => {
  const failures: [string, Buffer][] = [
    ['malformed', Buffer.alloc(3)],
    ['unknown export', metaReq('nope', [META_BASE_ALLOCATION])],
    ['query without namespace', metaReq('', ['bad'])],
  ];
  for (const [what, payload] of failures) {
    const hs = structured();
    t.equal(contexts(replies(hs.receiveOption(OPT.SET_META_CONTEXT, metaReq('', [META_BASE_ALLOCATION])))).length, 1);
    const [r] = replies(hs.receiveOption(OPT.SET_META_CONTEXT, payload));
    t.ok(r.type >= 0x80000000, `${what}: an error`);
    t.same(hs.receiveOption(OPT.GO, infoReq('')).agreement?.metaContexts, [], `${what}: the old selection is gone`);
  }
  const hs = structured();
  hs.receiveOption(OPT.SET_META_CONTEXT, metaReq('', [META_BASE_ALLOCATION]));
  hs.receiveOption(OPT.SET_META_CONTEXT, metaReq('', ['x-nothing:here']));
  t.same(hs.receiveOption(OPT.GO, infoReq('')).agreement?.metaContexts, [], 'a successful SET that selects nothing also replaces');
  const again = structured();
  again.receiveOption(OPT.SET_META_CONTEXT, metaReq('', ['qemu:x']));
  again.receiveOption(OPT.SET_META_CONTEXT, metaReq('', [META_BASE_ALLOCATION]));
  t.equal(again.receiveOption(OPT.GO, infoReq('')).agreement?.metaContexts.length, 1, 'and a later SET selects again');
});

t.test('an oversized SET_META_CONTEXT fails and so also replaces the previous selection', async (t) => {
  const hs = structured();
  hs.receiveOption(OPT.SET_META_CONTEXT, metaReq('', [META_BASE_ALLOCATION]));
  const [tooBig] = replies(hs.receiveOption(OPT.SET_META_CONTEXT, null));
  t.equal(tooBig.type, REP.ERR_TOO_BIG, 'TOO_BIG');
  t.same(hs.receiveOption(OPT.GO, infoReq('')).agreement?.metaContexts, [], 'the old selection is gone');
});

t.test('a failed SET without structured replies still clears the selection', async (t) => {
  // Structured replies cannot be taken back, so the only way to reach this
  // is a selection made on one handshake object; check the clearing itself.
  const hs = options();
  hs.metaSelection = { exportName: '', contexts: [{ id: 1, name: META_BASE_ALLOCATION }] };
  const [r] = replies(hs.receiveOption(OPT.SET_META_CONTEXT, metaReq('', [META_BASE_ALLOCATION])));
  t.equal(r.type, REP.ERR_INVALID);
  t.equal(hs.metaSelection, null);
});

t.test('meta contexts reach the agreement only if SET named the export GO chose', async (t) => {
  const other = structured();
  other.receiveOption(OPT.SET_META_CONTEXT, metaReq('ro', [META_BASE_ALLOCATION]));
  t.same(other.receiveOption(OPT.GO, infoReq('')).agreement?.metaContexts, [], "SET 'ro', GO ''");
  const same = structured();
  same.receiveOption(OPT.SET_META_CONTEXT, metaReq('ro', [META_BASE_ALLOCATION]));
  t.equal(same.receiveOption(OPT.GO, infoReq('ro')).agreement?.metaContexts.length, 1, "SET 'ro', GO 'ro'");
  const last = structured();
  last.receiveOption(OPT.SET_META_CONTEXT, metaReq('', [META_BASE_ALLOCATION]));
  last.receiveOption(OPT.SET_META_CONTEXT, metaReq('ro', [META_BASE_ALLOCATION]));
  t.same(last.receiveOption(OPT.GO, infoReq('')).agreement?.metaContexts, [], 'only the last SET counts');
  const info = structured();
  info.receiveOption(OPT.SET_META_CONTEXT, metaReq('', [META_BASE_ALLOCATION]));
  info.receiveOption(OPT.INFO, infoReq('ro'));
  t.equal(info.receiveOption(OPT.GO, infoReq('')).agreement?.metaContexts.length, 1, 'INFO in between changes nothing');
});

t.test('error messages stay within the 4096-byte string limit even when they quote the client', async (t) => {
  // The longest name or query the decoders accept is 4096 bytes; an error
  // message is a string too, so quoting one whole breaks the limit.
  const name = 'n'.repeat(MAX_STRING);
  const query = 'q'.repeat(MAX_STRING);
  const cases: [string, Handshake, number, Buffer][] = [
    ['GO for an unknown 4096-byte name', options(), OPT.GO, infoReq(name)],
    ['INFO for an unknown 4096-byte name', options(), OPT.INFO, infoReq(name)],
    ['SET_META_CONTEXT for an unknown 4096-byte name', structured(), OPT.SET_META_CONTEXT, metaReq(name, [])],
    ['LIST_META_CONTEXT with a 4096-byte query without namespace', structured(), OPT.LIST_META_CONTEXT, metaReq('', [query])],
    ['SET_META_CONTEXT with a 4096-byte query without namespace', structured(), OPT.SET_META_CONTEXT, metaReq('', [query])],
  ];
  for (const [what, hs, option, payload] of cases) {
    const [r] = replies(hs.receiveOption(option, payload));
    t.ok(r.type >= 0x80000000, `${what}: an error`);
    t.ok(r.payload.length <= MAX_STRING, `${what}: message of ${r.payload.length} bytes`);
  }
  const wide = options();
  const [r] = replies(wide.receiveOption(OPT.GO, infoReq('€'.repeat(Math.floor(MAX_STRING / 3)))));
  t.ok(r.payload.length <= MAX_STRING, `multi-byte name: message of ${r.payload.length} bytes`);
  t.notOk(r.payload.toString('utf8').includes('\uFFFD'), 'and not cut inside a character');
});

// --- shutting down, wrong phase ---------------------------------------------------------

t.test('shutting down: options get SHUTDOWN, ABORT still ACKs, EXPORT_NAME closes', async (t) => {
  const hs = options();
  hs.shuttingDown = true;
  for (const [option, payload] of [
    [OPT.GO, infoReq('')],
    [OPT.INFO, infoReq('')],
    [OPT.LIST, Buffer.alloc(0)],
    [OPT.STRUCTURED_REPLY, Buffer.alloc(0)],
    [999, Buffer.alloc(0)],
  ] as [number, Buffer][]) {
    expectError(t, hs.receiveOption(option, payload), option, REP.ERR_SHUTDOWN, `option ${option}`);
  }
  t.equal(hs.structuredReplies, false, 'nothing was negotiated');
  const abort = hs.receiveOption(OPT.ABORT, Buffer.alloc(0));
  t.equal(abort.phase, 'closed');
  t.same(replies(abort).map((r) => [r.option, r.type]), [[OPT.ABORT, REP.ACK]]);

  const en = options();
  en.shuttingDown = true;
  const step = en.receiveOption(OPT.EXPORT_NAME, Buffer.alloc(0));
  t.equal(step.phase, 'closed', 'EXPORT_NAME cannot be answered with an error');
  t.same(step.send, []);
});

t.test('events in the wrong phase throw', async (t) => {
  const fresh = new Handshake(catalog());
  t.throws(() => fresh.receiveOption(OPT.GO, infoReq('')), /phase/, 'option before client flags');
  const opts = options();
  t.throws(() => opts.receiveClientFlags(1), /phase/, 'client flags twice');
  const tx = options();
  tx.receiveOption(OPT.GO, infoReq(''));
  t.throws(() => tx.receiveOption(OPT.LIST, Buffer.alloc(0)), /phase/, 'option in transmission');
  t.throws(() => tx.receiveClientFlags(1), /phase/, 'client flags in transmission');
  const closed = options();
  closed.receiveOption(OPT.ABORT, Buffer.alloc(0));
  t.throws(() => closed.receiveOption(OPT.LIST, Buffer.alloc(0)), /phase/, 'option after close');
  const refused = new Handshake(catalog());
  refused.receiveClientFlags(1 << 9);
  t.throws(() => refused.receiveOption(OPT.LIST, Buffer.alloc(0)), /phase/, 'option after refused flags');
});

// --- TLS ---------------------------------------------------------------------

const NO_DATA = Buffer.alloc(0);

/** STARTTLS answered ACK in a step that tells the connection to upgrade. */
function startTls(t: Test, hs: Handshake): void {
  const step = hs.receiveOption(OPT.STARTTLS, NO_DATA);
  t.equal(step.startTls, true, 'the step says: upgrade after sending');
  t.equal(step.phase, 'options', 'still in options');
  t.same(replies(step).map((r) => [r.option, r.type]), [[OPT.STARTTLS, REP.ACK]], 'one ACK');
}

t.test('TLS on: STARTTLS is acknowledged once; again, or with data, it is INVALID', async (t) => {
  const hs = options(undefined, 'on');
  expectError(t, hs.receiveOption(OPT.STARTTLS, Buffer.from([1])), OPT.STARTTLS, REP.ERR_INVALID, 'STARTTLS with data');
  t.equal(hs.tlsStarted, false, 'a refused STARTTLS starts nothing');
  startTls(t, hs);
  t.equal(hs.tlsStarted, true);
  const again = hs.receiveOption(OPT.STARTTLS, NO_DATA);
  expectError(t, again, OPT.STARTTLS, REP.ERR_INVALID, 'second STARTTLS');
  t.notOk(again.startTls, 'and no second upgrade');
  t.equal(hs.receiveOption(OPT.GO, infoReq('')).phase, 'transmission', 'the handshake completes over TLS');
});

t.test('TLS on: a client that never upgrades is served in plain text', async (t) => {
  const hs = options(undefined, 'on');
  t.equal(replies(hs.receiveOption(OPT.LIST, NO_DATA)).length, 3, 'LIST answers');
  t.equal(hs.receiveOption(OPT.GO, infoReq('ro')).phase, 'transmission');
});

t.test('TLS off: STARTTLS is UNSUP, and TLS_REQD is never sent', async (t) => {
  const hs = options(undefined, 'off');
  const step = hs.receiveOption(OPT.STARTTLS, NO_DATA);
  expectError(t, step, OPT.STARTTLS, REP.ERR_UNSUP, 'STARTTLS');
  t.notOk(step.startTls);
  t.equal(replies(hs.receiveOption(OPT.LIST, NO_DATA)).at(-1)?.type, REP.ACK);
});

t.test('TLS require: before STARTTLS every option but ABORT is TLS_REQD and tells nothing', async (t) => {
  const hs = options(undefined, 'require');
  const before: [number, Buffer][] = [
    [OPT.LIST, NO_DATA],
    [OPT.INFO, infoReq('', [INFO.NAME, INFO.DESCRIPTION])],
    [OPT.INFO, infoReq('no-such-export')],
    [OPT.GO, infoReq('')],
    [OPT.STRUCTURED_REPLY, NO_DATA],
    [OPT.LIST_META_CONTEXT, metaReq('', [])],
    [OPT.SET_META_CONTEXT, metaReq('', [META_BASE_ALLOCATION])],
    [OPT.EXTENDED_HEADERS, NO_DATA],
    [OPT.PEEK_EXPORT, NO_DATA],
    [999, Buffer.from('unknown')],
  ];
  for (const [option, payload] of before) {
    const step = hs.receiveOption(option, payload);
    expectError(t, step, option, REP.ERR_TLS_REQD, `option ${option}`);
    t.notOk(replies(step)[0].payload.includes('default export'), `option ${option}: no description leaks`);
  }
  expectError(t, hs.receiveOption(OPT.GO, null), OPT.GO, REP.ERR_TLS_REQD, 'an oversized GO');
  t.equal(hs.structuredReplies, false, 'STRUCTURED_REPLY was refused, not half taken');
  startTls(t, hs);
  const [sr] = replies(hs.receiveOption(OPT.STRUCTURED_REPLY, NO_DATA));
  t.equal(sr.type, REP.ACK, 'after STARTTLS options work');
  const list = replies(hs.receiveOption(OPT.LIST, NO_DATA));
  t.same(list.map((r) => r.type), [REP.SERVER, REP.SERVER, REP.ACK], 'LIST names both exports');
  const go = hs.receiveOption(OPT.GO, infoReq(''));
  t.equal(go.phase, 'transmission');
  t.notOk(replies(go).some((r) => r.type === REP.ERR_TLS_REQD), 'never TLS_REQD after TLS');
});

t.test('TLS require: EXPORT_NAME before STARTTLS closes without a reply; ABORT is acknowledged', async (t) => {
  const hs = options(undefined, 'require');
  const step = hs.receiveOption(OPT.EXPORT_NAME, Buffer.from(''));
  t.equal(step.phase, 'closed');
  t.equal(step.send.length, 0, 'nothing sent: no export size, no flags');
  const other = options(undefined, 'require');
  const abort = other.receiveOption(OPT.ABORT, NO_DATA);
  t.equal(abort.phase, 'closed');
  t.same(replies(abort).map((r) => r.type), [REP.ACK]);
});

t.test('TLS require: EXPORT_NAME after STARTTLS enters transmission', async (t) => {
  const hs = options(undefined, 'require');
  startTls(t, hs);
  const step = hs.receiveOption(OPT.EXPORT_NAME, Buffer.from('ro'));
  t.equal(step.phase, 'transmission');
  t.equal(step.agreement?.export.name, 'ro');
});

t.test('TLS require: a client without fixed newstyle is closed at its flags', async (t) => {
  const hs = new Handshake(catalog(), 'require');
  t.equal(hs.receiveClientFlags(FLAG_NO_ZEROES).phase, 'closed');
});

t.test('TLS on: STARTTLS from a client without fixed newstyle is POLICY', async (t) => {
  const hs = options(FLAG_NO_ZEROES, 'on');
  expectError(t, hs.receiveOption(OPT.STARTTLS, NO_DATA), OPT.STARTTLS, REP.ERR_POLICY, 'STARTTLS');
  t.equal(hs.tlsStarted, false);
});

t.test('STARTTLS forgets structured replies and the meta-context selection made before it', async (t) => {
  const hs = options(undefined, 'on');
  t.equal(replies(hs.receiveOption(OPT.STRUCTURED_REPLY, NO_DATA))[0].type, REP.ACK);
  const set = replies(hs.receiveOption(OPT.SET_META_CONTEXT, metaReq('', [META_BASE_ALLOCATION])));
  t.equal(contexts(set).length, 1, 'a context was selected before TLS');
  startTls(t, hs);
  t.equal(hs.structuredReplies, false);
  t.equal(hs.metaSelection, null);
  const go = hs.receiveOption(OPT.GO, infoReq(''));
  t.equal(go.agreement?.structuredReplies, false, 'GO without structured replies');
  t.same(go.agreement?.metaContexts, [], 'and without the old meta context');
  t.equal(flagsOf(go) & TF.SEND_DF, 0, 'DF is not offered');

  const again = options(undefined, 'on');
  startTls(t, again);
  t.equal(replies(again.receiveOption(OPT.STRUCTURED_REPLY, NO_DATA))[0].type, REP.ACK, 'structured replies may be asked for again');
  replies(again.receiveOption(OPT.SET_META_CONTEXT, metaReq('', [META_BASE_ALLOCATION])));
  const go2 = again.receiveOption(OPT.GO, infoReq(''));
  t.equal(go2.agreement?.structuredReplies, true);
  t.equal(go2.agreement?.metaContexts.length, 1, 'a selection made after TLS counts');
});

t.test('STARTTLS forgets extended headers negotiated before it', async (t) => {
  const hs = options(undefined, 'on');
  t.equal(replies(hs.receiveOption(OPT.EXTENDED_HEADERS, NO_DATA))[0].type, REP.ACK);
  startTls(t, hs);
  t.equal(hs.extendedHeaders, false);
  t.equal(replies(hs.receiveOption(OPT.STRUCTURED_REPLY, NO_DATA))[0].type, REP.ACK, 'structured replies may be chosen instead');
  const go = hs.receiveOption(OPT.GO, infoReq(''));
  t.equal(go.agreement?.extendedHeaders, false, 'GO: compact headers');
  t.equal(flagsOf(go) & TF.BLOCK_STATUS_PAYLOAD, 0, 'BLOCK_STATUS_PAYLOAD is not offered');
});

t.test('STARTTLS during shutdown is SHUTDOWN', async (t) => {
  const hs = options(undefined, 'on');
  hs.shuttingDown = true;
  const step = hs.receiveOption(OPT.STARTTLS, NO_DATA);
  expectError(t, step, OPT.STARTTLS, REP.ERR_SHUTDOWN, 'STARTTLS');
  t.notOk(step.startTls);
});

// The control socket's codec (protocol/control/codec.ts): frames survive
// any split of the byte stream; a frame over the limit is refused from
// its header alone; bad MessagePack and values that are not requests are
// ControlErrors with the request's id where one can be read, never
// anything else thrown.

import fc from 'fast-check';
import { Packr } from 'msgpackr';
import t from 'tap';
import { ControlError, decodeValue, encodeFrame, FrameReader, MAX_FRAME, parseRequest, parseResponse, requestId } from '../src/protocol/control/codec.js';

const plain = new Packr({ useRecords: false });

/** Cuts `data` at the given points (any order, duplicates allowed). */
function split(data: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (data.length + 1)))].sort((a, b) => a - b);
  const parts: Buffer[] = [];
  let from = 0;
  for (const p of [...points, data.length]) {
    parts.push(data.subarray(from, p));
    from = p;
  }
  return parts;
}

// Any key but __proto__, which msgpackr renames on decoding (see the test of it below).
const argName = fc.string({ maxLength: 10 }).filter((k) => k !== '__proto__');
const request = fc.record({
  id: fc.oneof(fc.integer(), fc.string({ maxLength: 20 })),
  command: fc.string({ minLength: 1, maxLength: 30 }),
  args: fc.dictionary(argName, fc.oneof(fc.integer(), fc.string(), fc.boolean(), fc.array(fc.string(), { maxLength: 3 }))),
});

t.test('requests framed and cut anywhere come out whole and in order', async (t) => {
  fc.assert(
    fc.property(fc.array(request, { minLength: 1, maxLength: 8 }), fc.array(fc.nat(), { maxLength: 20 }), (requests, cuts) => {
      const stream = Buffer.concat(requests.map((r) => encodeFrame(r)));
      const reader = new FrameReader();
      const frames = split(stream, cuts).flatMap((part) => reader.push(part));
      t.equal(reader.partial, 0);
      return JSON.stringify(frames.map((f) => parseRequest(decodeValue(f)))) === JSON.stringify(requests);
    }),
  );
});

t.test('a __proto__ key cannot reach an object\'s prototype: msgpackr decodes it as __proto_', async (t) => {
  const hostile = JSON.parse('{"id":1,"command":"stats","args":{"__proto__":{"polluted":true}}}') as object;
  const [frame] = new FrameReader().push(encodeFrame(hostile));
  const req = parseRequest(decodeValue(frame));
  t.same(Object.keys(req.args), ['__proto_'], 'the key arrives renamed (a command then refuses it as unknown)');
  t.equal(Object.getPrototypeOf(req.args), Object.prototype, 'args keeps the plain prototype');
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'and Object.prototype is untouched');
});

t.test('a frame over MAX_FRAME is refused from its header, before its body arrives', async (t) => {
  const header = Buffer.alloc(4);
  header.writeUInt32BE(MAX_FRAME + 1);
  t.throws(() => new FrameReader().push(header), { name: 'ControlError', code: 'too-large' });
  header.writeUInt32BE(0xffffffff);
  t.throws(() => new FrameReader().push(Buffer.concat([encodeFrame({ id: 1, command: 'x' }), header])), { code: 'too-large' }, 'also after a good frame');
  header.writeUInt32BE(MAX_FRAME);
  t.same(new FrameReader().push(header), [], 'exactly MAX_FRAME is allowed (and waits for its body)');
  t.throws(() => encodeFrame({ blob: Buffer.alloc(MAX_FRAME) }), { code: 'too-large' }, 'and the encoder will not make one');
});

t.test('an empty frame and bad MessagePack are malformed, not crashes', async (t) => {
  for (const hex of ['', 'c1', 'dc0002', 'df00000001a1', '92']) {
    t.throws(() => parseRequest(decodeValue(Buffer.from(hex, 'hex'))), { name: 'ControlError', code: 'malformed' }, `0x${hex || '(empty)'}`);
  }
});

t.test('values that are not requests are malformed; the id is kept where it can be read', async (t) => {
  const cases: [unknown, RegExp, unknown][] = [
    [42, /a request is a map/, null],
    [[1, 'exports'], /a request is a map/, null],
    [{ command: 'exports' }, /id must be/, null],
    [{ id: 1.5, command: 'exports' }, /id must be/, null],
    [{ id: 'x'.repeat(257), command: 'exports' }, /id must be/, null],
    [{ id: 7 }, /command must be/, 7],
    [{ id: 7, command: '' }, /command must be/, 7],
    [{ id: 'a', command: 'exports', args: [1] }, /args must be a map/, 'a'],
    [{ id: 3, command: 'exports', extra: 1 }, /unknown request field 'extra'/, 3],
  ];
  for (const [value, message, id] of cases) {
    const decoded = decodeValue(plain.pack(value));
    t.throws(() => parseRequest(decoded), { code: 'malformed', message }, JSON.stringify(value).slice(0, 60));
    t.equal(requestId(decoded), id);
  }
  t.same(parseRequest(decodeValue(plain.pack({ id: 1, command: 'exports' }))), { id: 1, command: 'exports', args: {} }, 'args may be left out');
});

t.test('any bytes in a frame: a request or a ControlError, nothing else', async () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
      try {
        parseRequest(decodeValue(Buffer.from(bytes)));
      } catch (err) {
        if (!(err instanceof ControlError)) throw err;
      }
    }),
    { numRuns: 2000 },
  );
});

t.test('responses: success, error with and without id', async (t) => {
  t.same(parseResponse(decodeValue(plain.pack({ id: 1, ok: true, result: [1] }))), { id: 1, ok: true, result: [1] });
  t.same(parseResponse(decodeValue(plain.pack({ id: null, ok: false, error: { code: 'malformed', message: 'm' } }))), {
    id: null,
    ok: false,
    error: { code: 'malformed', message: 'm' },
  });
  t.throws(() => parseResponse({ id: null, ok: true }), { code: 'malformed' });
  t.throws(() => parseResponse({ id: 1, ok: false }), { code: 'malformed' });
});
